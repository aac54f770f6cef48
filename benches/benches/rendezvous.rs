//! Rendezvous core: keepalives per second on one core, and presence memory per online
//! device (targets: 100 000 keepalives/s, at most 300 bytes per device).
//!
//! Two keepalive figures: the signaling core alone (criterion: decode, presence update,
//! encode the ack), and the whole server path per datagram (open the Noise transport
//! packet, the core, seal the ack) over 2 000 real sessions, timed over 200 000 sealed
//! keepalives prepared beforehand (the clients' cost is not counted). Memory is
//! counted by a global allocator wrapper: the net bytes the core allocates while devices
//! register, with the registry already populated (it is the operator's record, not
//! presence).

use std::alloc::System;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use sightwire_rendezvous::{CoreConfig, MemoryRegistry, Peer, Registry, Rendezvous};
use sightwire_signal::PublicKey;
use sightwire_signal::cert::{CertificateFields, IdCertificate, IssuerKey, TrustedIssuers};
use sightwire_signal::{Body, Candidate, CandidateKind, CandidateSet, Envelope, Register};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const UNIX_NOW: u64 = 1_800_000_000;

fn issuer() -> IssuerKey {
    IssuerKey::from_seed(&[3; 32])
}

fn device_key(n: u32) -> PublicKey {
    let mut key = [0xD0; 32];
    key[..4].copy_from_slice(&n.to_be_bytes());
    PublicKey::from_bytes(key)
}

fn certificate(issuer: &IssuerKey, n: u32) -> IdCertificate {
    let b = n.to_be_bytes();
    issuer
        .issue(CertificateFields {
            device_id: sightwire_signal::DeviceId::from_bytes([0x02, 0, b[0], b[1], b[2], b[3]])
                .expect("a unicast address"),
            device_key: device_key(n),
            not_before: 0,
            not_after: u64::MAX,
            serial: 1,
        })
        .unwrap()
}

fn peer(n: u32) -> Peer<u64> {
    let b = n.to_be_bytes();
    Peer::new(
        u64::from(n),
        device_key(n),
        SocketAddr::from(([10, b[1], b[2], b[3]], 40_000)),
    )
}

fn register_message(certificate: IdCertificate) -> Vec<u8> {
    let candidates = vec![
        Candidate {
            kind: CandidateKind::Host,
            address: "192.168.1.20:5000".parse().unwrap(),
            priority: 1,
        },
        Candidate {
            kind: CandidateKind::Host,
            address: "[2001:db8::20]:5000".parse().unwrap(),
            priority: 2,
        },
    ];
    Envelope::new(
        1,
        Body::Register(Register {
            certificate,
            candidates: CandidateSet::new(candidates),
        }),
    )
    .to_bytes()
    .unwrap()
    .to_vec()
}

/// Answers the core's registry queries with `registry`, at once (it is in memory).
fn answer_queries<S: Copy + Eq + std::hash::Hash + std::fmt::Debug>(
    core: &mut Rendezvous<S>,
    registry: &mut MemoryRegistry,
    now: Instant,
) {
    while let Some(query) = core.poll_registry_query() {
        core.handle_registry_answer(now, query.run(registry));
    }
}

/// A core with `devices` registered (registry populated before registration), and the
/// net bytes the core holds for them once the registration rate-limit buckets (transient:
/// forgotten once refilled) have been swept. Returns the core and the time to use next.
fn populated(devices: u32, start: Instant) -> (Rendezvous<u64>, i64, Instant) {
    let now = start;
    let issuer = issuer();
    let certificates: Vec<_> = (0..devices).map(|n| certificate(&issuer, n)).collect();
    let messages: Vec<_> = certificates.iter().map(|c| register_message(*c)).collect();
    let mut registry = MemoryRegistry::default();
    for certificate in &certificates {
        registry.record(certificate).unwrap();
    }
    // Every device registers from its own address; let the rate limiter track them all.
    let config = {
        let mut value = CoreConfig::default();
        value.max_presence = devices as usize;
        value.max_rate_sources = devices as usize;
        value
    };
    let mut core = Rendezvous::new(
        config,
        TrustedIssuers::single(issuer.public()),
        Box::new(rand::rngs::StdRng::seed_from_u64(1)),
        now,
        UNIX_NOW,
    );
    let region = Region::new(GLOBAL);
    for (n, message) in messages.iter().enumerate() {
        core.handle_message(now, &peer(n as u32), message);
        answer_queries(&mut core, &mut registry, now);
        while core.poll_transmit().is_some() {}
    }
    assert_eq!(core.online(), devices as usize);
    // Well inside the presence TTL, after the buckets have refilled.
    let later = start + Duration::from_secs(10);
    core.handle_timeout(later);
    let change = region.change();
    let net = change.bytes_allocated as i64 - change.bytes_deallocated as i64
        + change.bytes_reallocated as i64;
    assert_eq!(core.online(), devices as usize);
    (core, net, later)
}

fn presence_memory() {
    let now = Instant::now();
    for devices in [10_000u32, 100_000] {
        let (core, net, _) = populated(devices, now);
        println!(
            "rendezvous/presence_memory: {devices} online devices, {net} bytes net allocated while registering = {:.1} bytes/device",
            net as f64 / f64::from(devices)
        );
        drop(core);
    }
}

/// Whole server path: Noise open + core + Noise seal, one thread.
fn keepalives_through_noise() {
    use sightwire_session::{Config, Input, SessionKind, SessionTable, StaticKeypair};
    const DEVICES: u32 = 2_000;
    const ROUNDS: u32 = 100;
    let now = Instant::now();
    let issuer = issuer();
    let server_key = StaticKeypair::from_private([0x5E; 32]);
    let server_public = *server_key.public();
    let mut session_config = Config::default();
    session_config.max_sessions = DEVICES as usize;
    let mut server = SessionTable::with_responder(
        server_key,
        SessionKind::Rendezvous,
        session_config,
        Box::new(rand::rngs::StdRng::seed_from_u64(9)),
    );
    let config = {
        let mut value = CoreConfig::default();
        value.max_rate_sources = DEVICES as usize;
        value
    };
    let mut registry = MemoryRegistry::default();
    let mut core: Rendezvous<sightwire_session::SessionId> = Rendezvous::new(
        config,
        TrustedIssuers::single(issuer.public()),
        Box::new(rand::rngs::StdRng::seed_from_u64(1)),
        now,
        UNIX_NOW,
    );
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let mut keepalive = Vec::new();
    Envelope::new(7, Body::Keepalive)
        .encode_padded(16, &mut keepalive)
        .unwrap();
    let mut packets: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let mut clients = Vec::new();
    let sessions_region = Region::new(GLOBAL);
    let mut now = now;
    for n in 0..DEVICES {
        // Handshakes arrive at 200/s, below the session layer's under-load threshold.
        now += Duration::from_millis(5);
        let key = StaticKeypair::from_private(device_key(n).to_bytes());
        let b = n.to_be_bytes();
        let from = SocketAddr::from(([10, b[1], b[2], b[3]], 40_000));
        let certificate = issuer
            .issue(CertificateFields {
                device_id: sightwire_signal::DeviceId::from_bytes([
                    0x02, 0, b[0], b[1], b[2], b[3],
                ])
                .expect("a unicast address"),
                device_key: *key.public(),
                not_before: 0,
                not_after: u64::MAX,
                serial: 1,
            })
            .unwrap();
        let mut client = SessionTable::new(
            key,
            Config::default(),
            Box::new(rand::rngs::StdRng::seed_from_u64(u64::from(n))),
        );
        let server_addr: SocketAddr = "192.0.2.1:7700".parse().unwrap();
        let session = client
            .connect(now, server_addr, SessionKind::Rendezvous, server_public)
            .unwrap();
        for _ in 0..2 {
            while let Some(t) = client.poll_transmit(&mut buf) {
                let _ = server.handle_input(now, from, &mut buf[..t.len]);
            }
            while let Some(t) = server.poll_transmit(&mut buf) {
                let _ = client.handle_input(now, server_addr, &mut buf[..t.len]);
            }
        }
        while server.poll_event().is_some() {}
        let register = register_message(certificate);
        let t = client.seal(session, now, &register, &mut buf).unwrap();
        if let Ok(Input::Data {
            session, plaintext, ..
        }) = server.handle_input(now, from, &mut buf[..t.len])
        {
            let remote_static = *server.remote_static(session).unwrap();
            core.handle_message(now, &Peer::new(session, remote_static, from), plaintext);
            answer_queries(&mut core, &mut registry, now);
        }
        while core.poll_transmit().is_some() {}
        clients.push((client, session, from));
    }
    assert_eq!(core.online(), DEVICES as usize);
    for _ in 0..ROUNDS {
        for (client, session, from) in &mut clients {
            let t = client.seal(*session, now, &keepalive, &mut buf).unwrap();
            packets.push((*from, buf[..t.len].to_vec()));
        }
    }
    // What the server keeps per device: everything still allocated since the first
    // handshake, once the clients are gone, minus the prepared packets.
    drop(clients);
    let packet_bytes: usize = packets.capacity() * size_of::<(SocketAddr, Vec<u8>)>()
        + packets.iter().map(|(_, p)| p.capacity()).sum::<usize>();
    let change = sessions_region.change();
    let net = change.bytes_allocated as i64 - change.bytes_deallocated as i64
        + change.bytes_reallocated as i64
        - packet_bytes as i64;
    println!(
        "rendezvous/server_memory: {DEVICES} devices registered through Noise: {:.0} bytes/device net (server session table + presence + core)",
        net as f64 / f64::from(DEVICES)
    );
    let started = Instant::now();
    let mut acks = 0u64;
    for (from, packet) in &packets {
        let datagram = &mut buf[..packet.len()];
        datagram.copy_from_slice(packet);
        if let Ok(Input::Data {
            session, plaintext, ..
        }) = server.handle_input(now, *from, datagram)
        {
            let remote_static = *server.remote_static(session).unwrap();
            core.handle_message(now, &Peer::new(session, remote_static, *from), plaintext);
        }
        while let Some(reply) = core.poll_transmit() {
            if server
                .seal(reply.session, now, &reply.payload, &mut out)
                .is_ok()
            {
                acks += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(acks, packets.len() as u64);
    println!(
        "rendezvous/keepalive_through_noise: {} keepalives over {DEVICES} sessions in {:?} = {:.0} keepalives/s on one core ({:.0} ns each)",
        packets.len(),
        elapsed,
        packets.len() as f64 / elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / packets.len() as f64,
    );
}

fn keepalives(c: &mut Criterion) {
    presence_memory();
    keepalives_through_noise();
    const DEVICES: u32 = 100_000;
    let (mut core, _, now) = populated(DEVICES, Instant::now());
    let mut keepalive = Vec::new();
    Envelope::new(7, Body::Keepalive)
        .encode_padded(16, &mut keepalive)
        .unwrap();
    let peers: Vec<_> = (0..DEVICES).map(peer).collect();

    let mut group = c.benchmark_group("rendezvous");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let mut next = 0usize;
    group.bench_function("keepalive", |b| {
        b.iter(|| {
            let peer = &peers[next % peers.len()];
            next += 1;
            core.handle_message(now, peer, black_box(&keepalive));
            black_box(core.poll_transmit())
        })
    });
    group.finish();

    // Allocations per keepalive on the hot path (amortised).
    let rounds = 100_000u32;
    let region = Region::new(GLOBAL);
    for i in 0..rounds {
        core.handle_message(now, &peers[i as usize % peers.len()], &keepalive);
        black_box(core.poll_transmit());
    }
    let change = region.change();
    println!(
        "rendezvous/keepalive: {:.3} allocations per keepalive",
        change.allocations as f64 / f64::from(rounds)
    );
}

criterion_group!(benches, keepalives);
criterion_main!(benches);
