//! Cost of punch probes: encoding and decoding (one HMAC-SHA256 each), and what a flood
//! of datagrams costs a running agent — forged probes (rejected at the tag), our own
//! probes reflected back, and valid-looking requests beyond the rate limit.
//!
//! Run: `cargo bench -p sightwire-benches --bench punch -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sightwire_punch::probe::{MAX_PROBE_LEN, Probe, ProbeKind, TRANSACTION_ID_LEN, TransactionId};
use sightwire_punch::{
    Agent, Candidate, CandidateKind, CandidateSet, Config, PunchKey, PunchSignal, Role,
    StartAttempt,
};

const KEY: [u8; 32] = [9; 32];

fn encoded(kind: ProbeKind, sender: Role, key: &PunchKey, id: u64) -> ([u8; MAX_PROBE_LEN], usize) {
    let mut transaction = [0u8; TRANSACTION_ID_LEN];
    transaction[..8].copy_from_slice(&id.to_be_bytes());
    let mut buf = [0u8; MAX_PROBE_LEN];
    let len = Probe {
        kind,
        sender,
        transaction: TransactionId(transaction),
    }
    .encode(key, &mut buf);
    (buf, len)
}

fn codec(c: &mut Criterion) {
    let key = PunchKey::new(KEY);
    let observed: SocketAddr = "203.0.113.9:40000".parse().unwrap();
    let (request, request_len) = encoded(
        ProbeKind::Request { nominate: false },
        Role::Controlling,
        &key,
        1,
    );
    let (response, response_len) =
        encoded(ProbeKind::Response { observed }, Role::Controlled, &key, 1);
    let mut forged = request;
    forged[request_len - 1] ^= 1;

    let mut group = c.benchmark_group("punch/probe");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode request", |b| {
        let probe = Probe {
            kind: ProbeKind::Request { nominate: false },
            sender: Role::Controlling,
            transaction: TransactionId([7; TRANSACTION_ID_LEN]),
        };
        let mut out = [0u8; MAX_PROBE_LEN];
        b.iter(|| black_box(&probe).encode(&key, &mut out))
    });
    group.bench_function("decode request", |b| {
        b.iter(|| Probe::decode(black_box(&request[..request_len]), &key))
    });
    group.bench_function("decode response v4", |b| {
        b.iter(|| Probe::decode(black_box(&response[..response_len]), &key))
    });
    group.bench_function("reject bad tag", |b| {
        b.iter(|| Probe::decode(black_box(&forged[..request_len]), &key))
    });
    group.bench_function("reject not punch", |b| {
        b.iter(|| Probe::decode(black_box(&[0x01u8; 32][..]), &key))
    });
    group.finish();
}

fn running_agent(now: Instant) -> Agent {
    let mut agent = Agent::new(Config::new(vec!["192.168.1.5:5000".parse().unwrap()], 1));
    agent.handle_signal(
        now,
        PunchSignal::Start(StartAttempt {
            role: Role::Controlled,
            key: PunchKey::new(KEY),
            start_in: Duration::ZERO,
            local_reflexive: None,
            relay: None,
            remote: CandidateSet {
                generation: 0,
                candidates: vec![Candidate::new(
                    CandidateKind::ServerReflexive,
                    "203.0.113.2:6000".parse().unwrap(),
                )],
            },
        }),
    );
    while agent.poll_transmit().is_some() {}
    agent
}

fn flood(c: &mut Criterion) {
    let key = PunchKey::new(KEY);
    let wrong = PunchKey::new([8; 32]);
    let from: SocketAddr = "198.51.100.66:1234".parse().unwrap();
    let now = Instant::now();
    let mut group = c.benchmark_group("punch/agent flood");
    group.throughput(Throughput::Elements(1));

    let (forged, len) = encoded(
        ProbeKind::Request { nominate: true },
        Role::Controlling,
        &wrong,
        5,
    );
    let mut agent = running_agent(now);
    group.bench_function("forged request", |b| {
        b.iter(|| agent.handle_datagram(now, from, black_box(&forged[..len])))
    });

    let (reflected, len) = encoded(
        ProbeKind::Request { nominate: false },
        Role::Controlled,
        &key,
        5,
    );
    let mut agent = running_agent(now);
    group.bench_function("reflected request", |b| {
        b.iter(|| agent.handle_datagram(now, from, black_box(&reflected[..len])))
    });

    // Distinct valid requests from one source at one instant: each is authenticated and
    // answered until the token bucket is empty, then only authenticated.
    let mut agent = running_agent(now);
    let mut id = 1_000u64;
    group.bench_function("valid requests over the rate limit", |b| {
        b.iter(|| {
            id += 1;
            let (request, len) = encoded(
                ProbeKind::Request { nominate: false },
                Role::Controlling,
                &key,
                id,
            );
            agent.handle_datagram(now, from, black_box(&request[..len]));
            while agent.poll_transmit().is_some() {}
        })
    });
    group.finish();
}

criterion_group!(benches, codec, flood);
criterion_main!(benches);
