//! Relay forwarding throughput on loopback, next to a trivial UDP forwarder (receive,
//! send to the fixed other side, nothing else) measured the same way in the same run.
//! The ratio of the two is the relay's cost: grant-less lookup, source check, metering.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sightwire_relay::wire::BIND_LEN;
use sightwire_relay::{Relay, RelayConfig, RelayPacket, RelayServer, unix_now};
use sightwire_signal::grant::{GrantClaims, GrantRole, RelayGrantKey};

/// Datagrams in flight per batch: small enough that loopback socket buffers never drop.
const WINDOW: usize = 32;
const PAYLOAD: usize = 1200;

/// Runs a future on its own single-threaded runtime in a background thread.
fn spawn_runtime<F: Future<Output = ()> + Send + 'static>(future: F) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future);
    });
}

/// The baseline: forwards every datagram from `a` to `b` and back, unchanged.
fn trivial_forwarder(a: SocketAddr, b: SocketAddr) -> SocketAddr {
    let std_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    std_socket.set_nonblocking(true).unwrap();
    let addr = std_socket.local_addr().unwrap();
    spawn_runtime(async move {
        let socket = tokio::net::UdpSocket::from_std(std_socket).unwrap();
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let to = if from == a { b } else { a };
            let _ = socket.send_to(&buf[..len], to).await;
        }
    });
    addr
}

fn relay_server(key: RelayGrantKey) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_runtime(async move {
        let config = {
            let mut value = RelayConfig::default();
            value.rate_bytes_per_sec = u64::MAX / 2;
            value.rate_burst_bytes = u64::MAX / 2;
            value
        };
        let server = RelayServer::bind("127.0.0.1:0".parse().unwrap(), Relay::new(config, key))
            .await
            .unwrap();
        tx.send(server.local_addr().unwrap()).unwrap();
        let (_keep, stopped) = tokio::sync::watch::channel(false);
        let _ = server.run(stopped).await;
    });
    rx.recv().unwrap()
}

fn endpoint() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket
}

/// Sends `iters` windows of datagrams from `a` through `via` to `b` and times it.
fn pump(a: &UdpSocket, b: &UdpSocket, via: SocketAddr, datagram: &[u8], iters: u64) -> Duration {
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    for _ in 0..iters {
        for _ in 0..WINDOW {
            a.send_to(datagram, via).unwrap();
        }
        for _ in 0..WINDOW {
            b.recv(&mut buf)
                .expect("loopback forwarder lost a datagram");
        }
    }
    start.elapsed()
}

fn forwarding(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay/forward");
    let datagram_len = PAYLOAD + sightwire_relay::wire::DATA_HEADER_LEN;
    group.throughput(Throughput::Bytes((WINDOW * datagram_len) as u64));

    // Baseline.
    let (a, b) = (endpoint(), endpoint());
    let trivial = trivial_forwarder(a.local_addr().unwrap(), b.local_addr().unwrap());
    let datagram = vec![0x32u8; datagram_len];
    group.bench_function("trivial_udp_forwarder", |bench| {
        bench.iter_custom(|iters| pump(&a, &b, trivial, &datagram, iters))
    });

    // The relay, with both sides bound.
    let key = RelayGrantKey::from_bytes([3; 32]);
    let relay = relay_server(key.clone());
    let (a, b) = (endpoint(), endpoint());
    let mut channel = 0;
    for (socket, role) in [(&a, GrantRole::Device), (&b, GrantRole::Viewer)] {
        let token = key.seal(
            &GrantClaims {
                allocation_id: [1; 16],
                role,
                expires_at: unix_now() + 3600,
                device_id: sightwire_signal::DeviceId::from_bytes([
                    0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef,
                ])
                .expect("a unicast address"),
                device_key: [1; 32].into(),
                viewer_key: [2; 32].into(),
            },
            [role as u8; 12],
        );
        let mut bind = [0u8; BIND_LEN];
        RelayPacket::Bind {
            token,
            cookie: None,
        }
        .encode(&mut bind)
        .unwrap();
        socket.send_to(&bind, relay).unwrap();
        let mut buf = [0u8; 64];
        let len = socket.recv(&mut buf).unwrap();
        if let Ok(RelayPacket::Bound { channel: c, .. }) = RelayPacket::decode(&buf[..len]) {
            channel = c;
        }
    }
    let mut datagram = vec![0u8; datagram_len];
    RelayPacket::Data {
        channel,
        payload: &[0xAB; PAYLOAD],
    }
    .encode(&mut datagram)
    .unwrap();
    group.bench_function("sightwire_relay", |bench| {
        bench.iter_custom(|iters| pump(&a, &b, relay, &datagram, iters))
    });
    group.finish();
}

criterion_group!(benches, forwarding);
criterion_main!(benches);
