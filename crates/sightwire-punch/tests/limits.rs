//! Every table and queue of the agent is bounded: each test drives one limit past its
//! edge through the public API and checks the documented behaviour.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sightwire_punch::probe::{MAX_PROBE_LEN, Probe, ProbeKind, TRANSACTION_ID_LEN, TransactionId};
use sightwire_punch::{
    Agent, Candidate, CandidateKind, CandidateSet, Config, Event, FAIL_AFTER,
    MAX_CANDIDATES_PER_SET, MAX_EVENT_QUEUE, MAX_HOST_CANDIDATES, MAX_PAIRS, MAX_PEER_REFLEXIVE,
    MAX_PENDING_TRANSACTIONS, MAX_REMOTE_CANDIDATES, MAX_TRANSMIT_QUEUE, PROBE_BURST,
    PROBE_RATE_PER_SECOND, PunchKey, PunchSignal, REPLAY_WINDOW, Role, StartAttempt,
};

const KEY: [u8; 32] = [3; 32];

fn peer(n: u32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from(0xCB00_7100 + (n >> 16))),
        1000 + (n & 0xFFFF) as u16,
    )
}

fn start(role: Role, candidates: Vec<Candidate>) -> PunchSignal {
    PunchSignal::Start(StartAttempt {
        role,
        key: PunchKey::new(KEY),
        start_in: Duration::ZERO,
        local_reflexive: None,
        relay: None,
        remote: CandidateSet {
            generation: 0,
            candidates,
        },
    })
}

fn agent(role: Role, now: Instant, candidates: Vec<Candidate>) -> Agent {
    let mut agent = Agent::new(Config::new(vec!["192.168.1.5:5000".parse().unwrap()], 1));
    agent.handle_signal(now, start(role, candidates));
    agent
}

fn probe(kind: ProbeKind, sender: Role, id: u64) -> Vec<u8> {
    let mut transaction = [0u8; TRANSACTION_ID_LEN];
    transaction[..8].copy_from_slice(&id.to_be_bytes());
    let mut buf = [0u8; MAX_PROBE_LEN];
    let len = Probe {
        kind,
        sender,
        transaction: TransactionId(transaction),
    }
    .encode(&PunchKey::new(KEY), &mut buf);
    buf[..len].to_vec()
}

fn request(id: u64) -> Vec<u8> {
    probe(
        ProbeKind::Request { nominate: false },
        Role::Controlling,
        id,
    )
}

fn drain(agent: &mut Agent) -> Vec<sightwire_punch::Transmit> {
    std::iter::from_fn(|| agent.poll_transmit()).collect()
}

#[test]
fn peer_reflexive_candidates_are_capped() {
    let now = Instant::now();
    let mut a = agent(Role::Controlled, now, vec![]);
    for n in 0..(MAX_PEER_REFLEXIVE as u32 + 12) {
        a.handle_datagram(now, peer(n), &request(u64::from(n)));
        drain(&mut a);
    }
    assert_eq!(a.pair_count(), MAX_PEER_REFLEXIVE);
    assert_eq!(a.stats().peer_reflexive_rejected, 12);
}

#[test]
fn signaled_candidates_and_pairs_are_capped() {
    let now = Instant::now();
    let many: Vec<Candidate> = (0..40)
        .map(|n| Candidate::new(CandidateKind::ServerReflexive, peer(100 + n)))
        .collect();
    let mut a = agent(Role::Controlled, now, many.clone());
    assert_eq!(
        a.pair_count(),
        MAX_CANDIDATES_PER_SET.min(MAX_REMOTE_CANDIDATES)
    );
    // Make every pair work, then let the peer move twice: working pairs are kept until
    // liveness says otherwise, so pairs accumulate up to MAX_PAIRS and no further.
    let mut now = now;
    for generation in 1..4u32 {
        for _ in 0..4 {
            now = a.poll_timeout().unwrap_or(now).max(now) + Duration::from_millis(200);
            a.handle_timeout(now);
            for t in drain(&mut a) {
                if let Ok(p) = Probe::decode(t.payload(), &PunchKey::new(KEY))
                    && let ProbeKind::Request { .. } = p.kind
                {
                    let mut buf = [0u8; MAX_PROBE_LEN];
                    let response = Probe {
                        kind: ProbeKind::Response { observed: peer(0) },
                        sender: Role::Controlling,
                        transaction: p.transaction,
                    };
                    let len = response.encode(&PunchKey::new(KEY), &mut buf);
                    a.handle_datagram(now, t.destination, &buf[..len]);
                }
            }
        }
        let moved: Vec<Candidate> = (0..40)
            .map(|n| Candidate::new(CandidateKind::ServerReflexive, peer(1000 * generation + n)))
            .collect();
        a.handle_signal(
            now,
            PunchSignal::Candidates(CandidateSet {
                generation,
                candidates: moved,
            }),
        );
        assert!(a.pair_count() <= MAX_PAIRS);
    }
    assert_eq!(a.pair_count(), MAX_PAIRS);
}

#[test]
fn host_candidates_are_capped() {
    let hosts: Vec<SocketAddr> = (0..20)
        .map(|n| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)), 1))
        .collect();
    let mut a = Agent::new(Config::new(hosts.clone(), 0));
    assert_eq!(a.local_candidates().candidates.len(), MAX_HOST_CANDIDATES);
    a.network_changed(Instant::now(), hosts);
    assert_eq!(a.local_candidates().candidates.len(), MAX_HOST_CANDIDATES);
}

#[test]
fn pending_transactions_are_capped_oldest_first() {
    let now = Instant::now();
    let candidates = (0..16)
        .map(|n| Candidate::new(CandidateKind::ServerReflexive, peer(n)))
        .collect();
    let mut a = agent(Role::Controlled, now, candidates);
    // Run the checks (opens, then requests with backoff) without answering any.
    let mut requests = Vec::new();
    let mut t = now;
    while requests.len() < MAX_PENDING_TRANSACTIONS + 16 {
        a.handle_timeout(t);
        for tx in drain(&mut a) {
            let p = Probe::decode(tx.payload(), &PunchKey::new(KEY)).unwrap();
            if matches!(p.kind, ProbeKind::Request { .. }) {
                requests.push((tx.destination, p.transaction));
            }
        }
        t = a.poll_timeout().unwrap().max(t);
    }
    let answer = |a: &mut Agent, (dest, transaction): (SocketAddr, TransactionId)| {
        let mut buf = [0u8; MAX_PROBE_LEN];
        let response = Probe {
            kind: ProbeKind::Response { observed: peer(0) },
            sender: Role::Controlling,
            transaction,
        };
        let len = response.encode(&PunchKey::new(KEY), &mut buf);
        a.handle_datagram(t, dest, &buf[..len]);
    };
    answer(&mut a, requests[0]);
    assert_eq!(
        a.stats().dropped_unmatched,
        1,
        "the oldest transaction was forgotten"
    );
    answer(&mut a, *requests.last().unwrap());
    assert_eq!(
        a.stats().dropped_unmatched,
        1,
        "the newest is still matched"
    );
}

#[test]
fn replayed_requests_are_dropped_within_the_window() {
    let now = Instant::now();
    let mut a = agent(Role::Controlled, now, vec![]);
    a.handle_datagram(now, peer(1), &request(0));
    assert_eq!(drain(&mut a).len(), 1, "answered once");
    a.handle_datagram(now, peer(2), &request(0));
    assert!(
        drain(&mut a).is_empty(),
        "a replay from elsewhere is not answered"
    );
    assert_eq!(a.stats().dropped_replayed, 1);
    let mut t = now;
    for id in 1..=REPLAY_WINDOW as u64 {
        t += Duration::from_millis(10);
        a.handle_datagram(t, peer(1), &request(id));
        drain(&mut a);
    }
    a.handle_datagram(t, peer(1), &request(0));
    assert_eq!(
        a.stats().dropped_replayed,
        1,
        "forgotten after REPLAY_WINDOW newer ones"
    );
}

#[test]
fn transmit_queue_is_capped_when_not_drained() {
    let now = Instant::now();
    let mut a = agent(Role::Controlled, now, vec![]);
    // Spaced so the rate limit refills: only the queue limit can stop them.
    let spacing = Duration::from_nanos(1_000_000_000 / PROBE_RATE_PER_SECOND);
    let mut t = now;
    for id in 0..(MAX_TRANSMIT_QUEUE as u64 + 30) {
        t += spacing;
        a.handle_datagram(t, peer(1), &request(id));
    }
    assert_eq!(drain(&mut a).len(), MAX_TRANSMIT_QUEUE);
    assert!(a.stats().transmit_queue_full > 0);
}

#[test]
fn probe_rate_is_limited() {
    let now = Instant::now();
    let mut a = agent(Role::Controlled, now, vec![]);
    let mut sent = 0u64;
    // A flood of distinct valid requests over one second, drained as it goes.
    for id in 0..5_000u64 {
        let t = now + Duration::from_micros(id * 200);
        a.handle_datagram(t, peer(1), &request(id));
        sent += drain(&mut a).len() as u64;
    }
    assert!(
        sent <= PROBE_BURST + PROBE_RATE_PER_SECOND + 1,
        "sent {sent}"
    );
    assert!(sent >= PROBE_RATE_PER_SECOND, "sent {sent}");
    assert!(a.stats().rate_limited > 0);
}

#[test]
fn event_queue_is_capped() {
    let now = Instant::now();
    let mut a = Agent::new(Config::new(vec![], 0));
    let mut t = now;
    for _ in 0..(MAX_EVENT_QUEUE + 3) {
        a.handle_signal(t, start(Role::Controlling, vec![]));
        t += FAIL_AFTER;
        a.handle_timeout(t);
    }
    let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
    assert_eq!(events.len(), MAX_EVENT_QUEUE);
    assert_eq!(a.stats().queue_overflow, 3);
}

#[test]
fn signal_queue_holds_only_the_newest_candidates() {
    let now = Instant::now();
    let mut a = Agent::new(Config::new(vec![peer(1)], 0));
    for n in 0..50 {
        a.network_changed(now, vec![peer(n)]);
    }
    let signals: Vec<PunchSignal> = std::iter::from_fn(|| a.poll_signal()).collect();
    assert_eq!(signals.len(), 1);
    match &signals[0] {
        PunchSignal::Candidates(set) => {
            assert_eq!(set.generation, 50);
            assert_eq!(set.candidates[0].address, peer(49));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_flood_of_bogus_probes_changes_nothing() {
    let now = Instant::now();
    let mut a = agent(
        Role::Controlled,
        now,
        vec![Candidate::new(CandidateKind::ServerReflexive, peer(1))],
    );
    let pairs = a.pair_count();
    let wrong_key = PunchKey::new([4; 32]);
    let mut rng = 0x1234_5678_u64;
    for n in 0..20_000u32 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bytes = rng.to_be_bytes();
        let datagram: Vec<u8> = match n % 3 {
            // Random bytes in the punch range.
            0 => [
                &[0x20 + (bytes[0] & 0x0f)],
                &bytes[..],
                &bytes[..],
                &bytes[..],
            ]
            .concat(),
            // Well-formed probes under the wrong key.
            1 => {
                let mut buf = [0u8; MAX_PROBE_LEN];
                let p = Probe {
                    kind: ProbeKind::Request { nominate: true },
                    sender: Role::Controlling,
                    transaction: TransactionId([bytes[1]; TRANSACTION_ID_LEN]),
                };
                let len = p.encode(&wrong_key, &mut buf);
                buf[..len].to_vec()
            }
            // Our own role reflected back.
            _ => probe(
                ProbeKind::Request { nominate: false },
                Role::Controlled,
                u64::from(n),
            ),
        };
        a.handle_datagram(now, peer(n), &datagram);
    }
    assert!(drain(&mut a).is_empty(), "nothing is answered");
    assert_eq!(a.pair_count(), pairs, "nothing is learned");
    let stats = a.stats();
    assert_eq!(stats.dropped_invalid + stats.dropped_reflected, 20_000);
    assert!(std::iter::from_fn(|| a.poll_event()).next().is_none());
}

#[test]
fn datagrams_before_start_are_dropped() {
    let now = Instant::now();
    let mut a = Agent::new(Config::new(vec![], 0));
    a.handle_datagram(now, peer(1), &request(1));
    assert_eq!(a.stats().dropped_not_started, 1);
    assert!(a.poll_transmit().is_none());
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn candidates_signaled_before_start_are_kept() {
    let now = Instant::now();
    let mut a = Agent::new(Config::new(vec![], 0));
    let early = Candidate::new(CandidateKind::Host, "10.1.1.1:7000".parse().unwrap());
    a.handle_signal(
        now,
        PunchSignal::Candidates(CandidateSet {
            generation: 0,
            candidates: vec![early],
        }),
    );
    a.handle_signal(
        now,
        start(
            Role::Controlled,
            vec![Candidate::new(CandidateKind::ServerReflexive, peer(1))],
        ),
    );
    assert_eq!(
        a.pair_count(),
        2,
        "the rendezvous' candidate and the one signaled earlier"
    );
    a.handle_timeout(now);
    let destinations: Vec<SocketAddr> = drain(&mut a).iter().map(|t| t.destination).collect();
    assert!(destinations.contains(&early.address), "{destinations:?}");
}
