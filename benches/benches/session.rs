//! Per-packet cost of a Sightwire session (seal on one table + open on the other, the
//! whole path: table lookup, header, counter, replay window, in-place AEAD) next to the
//! raw ChaCha20-Poly1305 AEADs on the same bytes, and next to snow's own stateless
//! transport (which copies) with its default (RustCrypto) and ring resolvers.
//!
//! `cargo bench -p sightwire-benches --bench session -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use chacha20poly1305::aead::{AeadInPlace, KeyInit, generic_array::GenericArray};
use chacha20poly1305::{ChaCha20Poly1305, Tag};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sightwire_session::{
    Config, Event, Footprint, Input, SessionId, SessionKind, SessionTable, StaticKeypair,
    TRANSPORT_OVERHEAD,
};

const SIZES: [usize; 3] = [200, 1200, 1400];

fn established_pair(footprint: Footprint) -> (SessionTable, SessionTable, SessionId, SocketAddr) {
    let mut config = Config::default();
    config.footprint = footprint;
    let device_id = sightwire_session::DeviceId::from_bytes([0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e])
        .expect("a unicast address");
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let camera_key = StaticKeypair::generate(&mut rng);
    let camera_public = *camera_key.public();
    let mut camera = SessionTable::with_responder(
        camera_key,
        SessionKind::Peer { device_id },
        config.clone(),
        Box::new(ChaCha20Rng::seed_from_u64(2)),
    );
    let mut viewer = SessionTable::new(
        StaticKeypair::generate(&mut rng),
        config.clone(),
        Box::new(ChaCha20Rng::seed_from_u64(3)),
    );
    let camera_addr: SocketAddr = "192.0.2.10:7000".parse().unwrap();
    let viewer_addr: SocketAddr = "198.51.100.20:5000".parse().unwrap();
    let now = Instant::now();
    let session = viewer
        .connect(
            now,
            camera_addr,
            SessionKind::Peer { device_id },
            camera_public,
        )
        .unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        while let Some(t) = viewer.poll_transmit(&mut buf) {
            let _ = camera.handle_input(now, viewer_addr, &mut buf[..t.len]);
        }
        while let Some(t) = camera.poll_transmit(&mut buf) {
            let _ = viewer.handle_input(now, camera_addr, &mut buf[..t.len]);
        }
    }
    assert!(matches!(
        camera.poll_event(),
        Some(Event::Established { .. })
    ));
    (viewer, camera, session, viewer_addr)
}

fn nonce(counter: u64) -> GenericArray<u8, chacha20poly1305::consts::U12> {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n.into()
}

fn seal_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("session/seal+open");
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));

        // The session: seal in place on the viewer, open in place on the camera. The
        // plaintext lands back where seal_in_place expects it, so the loop never copies.
        // "sightwire-compact": both tables store raw keys and a small window
        // (`Footprint::Compact`, as the rendezvous does): the key is expanded per packet.
        for (name, footprint) in [
            ("sightwire", Footprint::Fast),
            ("sightwire-compact", Footprint::Compact),
        ] {
            let (mut viewer, mut camera, session, viewer_addr) = established_pair(footprint);
            let now = Instant::now();
            let mut packet = vec![0x5au8; size + TRANSPORT_OVERHEAD];
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, &size| {
                b.iter(|| {
                    let t = viewer
                        .seal_in_place(session, now, &mut packet, size)
                        .unwrap();
                    match camera.handle_input(now, viewer_addr, &mut packet[..t.len]) {
                        Ok(Input::Data { plaintext, .. }) => black_box(plaintext.len()),
                        other => panic!("unexpected {other:?}"),
                    }
                })
            });
        }

        // Raw RustCrypto ChaCha20-Poly1305, the same backend, the same bytes, in place.
        let sender = ChaCha20Poly1305::new(GenericArray::from_slice(&[7u8; 32]));
        let receiver = sender.clone();
        let mut body = vec![0x5au8; size];
        let mut counter = 0u64;
        group.bench_with_input(
            BenchmarkId::new("raw-chacha20poly1305", size),
            &size,
            |b, _| {
                b.iter(|| {
                    let tag = sender
                        .encrypt_in_place_detached(&nonce(counter), &[], &mut body)
                        .unwrap();
                    receiver
                        .decrypt_in_place_detached(&nonce(counter), &[], &mut body, &Tag::from(tag))
                        .unwrap();
                    counter += 1;
                    black_box(body.len())
                })
            },
        );

        // Raw ring ChaCha20-Poly1305 (assembly), in place.
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &[7u8; 32]).unwrap(),
        );
        let mut ring_buf = vec![0x5au8; size + 16];
        let mut counter = 0u64;
        group.bench_with_input(BenchmarkId::new("raw-ring", size), &size, |b, &size| {
            b.iter(|| {
                let n = || ring::aead::Nonce::assume_unique_for_key(nonce(counter).into());
                let tag = key
                    .seal_in_place_separate_tag(
                        n(),
                        ring::aead::Aad::empty(),
                        &mut ring_buf[..size],
                    )
                    .unwrap();
                ring_buf[size..].copy_from_slice(tag.as_ref());
                let opened = key
                    .open_in_place(n(), ring::aead::Aad::empty(), &mut ring_buf)
                    .unwrap();
                counter += 1;
                black_box(opened.len())
            })
        });

        // Raw ring with the key expanded per packet from stored bytes (what a transport
        // that keeps only zeroizable key bytes pays).
        let key_bytes = [7u8; 32];
        let mut counter = 0u64;
        group.bench_with_input(
            BenchmarkId::new("raw-ring-key-per-packet", size),
            &size,
            |b, &size| {
                b.iter(|| {
                    let n = || ring::aead::Nonce::assume_unique_for_key(nonce(counter).into());
                    let key = || {
                        ring::aead::LessSafeKey::new(
                            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key_bytes)
                                .unwrap(),
                        )
                    };
                    let tag = key()
                        .seal_in_place_separate_tag(
                            n(),
                            ring::aead::Aad::empty(),
                            &mut ring_buf[..size],
                        )
                        .unwrap();
                    ring_buf[size..].copy_from_slice(tag.as_ref());
                    let opened = key()
                        .open_in_place(n(), ring::aead::Aad::empty(), &mut ring_buf)
                        .unwrap();
                    counter += 1;
                    black_box(opened.len())
                })
            },
        );

        // snow's stateless transport (copies plaintext/ciphertext), both resolvers.
        for (name, resolver) in [
            (
                "snow-default",
                Box::new(snow::resolvers::DefaultResolver) as snow::resolvers::BoxedCryptoResolver,
            ),
            (
                "snow-ring",
                Box::new(snow::resolvers::FallbackResolver::new(
                    Box::new(snow::resolvers::RingResolver),
                    Box::new(snow::resolvers::DefaultResolver),
                )),
            ),
        ] {
            let (initiator, responder) = snow_pair(resolver);
            let plaintext = vec![0x5au8; size];
            let mut wire = vec![0u8; size + 16];
            let mut out = vec![0u8; size + 16];
            let mut counter = 0u64;
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    let len = initiator
                        .write_message(counter, &plaintext, &mut wire)
                        .unwrap();
                    let n = responder
                        .read_message(counter, &wire[..len], &mut out)
                        .unwrap();
                    counter += 1;
                    black_box(n)
                })
            });
        }
    }
    group.finish();
}

fn snow_pair(
    resolver: snow::resolvers::BoxedCryptoResolver,
) -> (snow::StatelessTransportState, snow::StatelessTransportState) {
    let params: snow::params::NoiseParams = sightwire_session::NOISE_PATTERN.parse().unwrap();
    let second = snow::resolvers::FallbackResolver::new(
        Box::new(snow::resolvers::DefaultResolver),
        Box::new(snow::resolvers::DefaultResolver),
    );
    let builder = snow::Builder::with_resolver(params.clone(), resolver);
    let responder_keys = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let initiator_keys = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let mut initiator = builder
        .local_private_key(&initiator_keys.private)
        .unwrap()
        .remote_public_key(&responder_keys.public)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut responder = snow::Builder::with_resolver(params, Box::new(second))
        .local_private_key(&responder_keys.private)
        .unwrap()
        .build_responder()
        .unwrap();
    let mut m1 = [0u8; 256];
    let mut m2 = [0u8; 256];
    let mut p = [0u8; 256];
    let len = initiator.write_message(&[], &mut m1).unwrap();
    responder.read_message(&m1[..len], &mut p).unwrap();
    let len = responder.write_message(&[], &mut m2).unwrap();
    initiator.read_message(&m2[..len], &mut p).unwrap();
    (
        initiator.into_stateless_transport_mode().unwrap(),
        responder.into_stateless_transport_mode().unwrap(),
    )
}

criterion_group!(benches, seal_open);
criterion_main!(benches);
