use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sightwire_netsim::{
    Filtering, HostId, Mapping, NatBehavior, NatConfig, PortAllocation, SimConfig, SplitMix64,
};

use super::*;

const SERVER: &str = "198.51.100.1:7";
const CLIENT: &str = "192.168.1.2:5000";
const NAT_IP: &str = "203.0.113.1";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Answers every datagram with the same bytes, or stays silent.
#[derive(Default)]
struct Echo {
    silent: bool,
    outbox: Vec<SimTransmit>,
    received: Vec<(Instant, SocketAddr, SocketAddr, u8, Vec<u8>)>,
}

impl Node for Echo {
    fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        ttl: u8,
        payload: &[u8],
    ) {
        self.received.push((now, from, to, ttl, payload.to_vec()));
        if !self.silent {
            self.outbox.push(SimTransmit {
                from: to,
                to: from,
                ttl: None,
                payload: payload.to_vec(),
            });
        }
    }
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
    fn poll_transmit(&mut self, _: Instant) -> Option<SimTransmit> {
        self.outbox.pop()
    }
}

/// Sends a numbered ping every `interval` until `count`, and records the answers.
struct Pinger {
    local: SocketAddr,
    server: SocketAddr,
    interval: Duration,
    count: u32,
    sent: u32,
    next: Option<Instant>,
    fired: Vec<Instant>,
    outbox: Vec<SimTransmit>,
    answers: Vec<(Instant, SocketAddr, Vec<u8>)>,
}

impl Pinger {
    fn new(start: Instant, local: SocketAddr, server: SocketAddr, count: u32) -> Self {
        Pinger {
            local,
            server,
            interval: Duration::from_millis(10),
            count,
            sent: 0,
            next: Some(start),
            fired: Vec::new(),
            outbox: Vec::new(),
            answers: Vec::new(),
        }
    }
}

impl Node for Pinger {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _: SocketAddr, _: u8, p: &[u8]) {
        self.answers.push((now, from, p.to_vec()));
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.fired.push(now);
        self.outbox.push(SimTransmit {
            from: self.local,
            to: self.server,
            ttl: None,
            payload: self.sent.to_be_bytes().to_vec(),
        });
        self.sent += 1;
        self.next = (self.sent < self.count).then(|| now + self.interval);
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.next
    }
    fn poll_transmit(&mut self, _: Instant) -> Option<SimTransmit> {
        self.outbox.pop()
    }
}

fn port_restricted() -> NatConfig {
    NatConfig::new(NatBehavior::Rfc4787 {
        mapping: Mapping::EndpointIndependent,
        filtering: Filtering::AddressAndPortDependent,
        ports: PortAllocation::Sequential,
    })
}

/// A public echo server and a pinger behind a NAT.
fn echo_bed(config: SimConfig, pings: u32) -> (Network, NodeId, NodeId) {
    let mut net = Network::new(config);
    let server_host = net.sim_mut().add_public_host(addr(SERVER).ip());
    let nat = net
        .sim_mut()
        .add_nat(NAT_IP.parse().unwrap(), port_restricted());
    let client_host = net.sim_mut().add_host_behind(nat, addr(CLIENT).ip());
    let server = net.add_node(server_host, Box::new(Echo::default()));
    let start = net.epoch();
    let client = net.add_node(
        client_host,
        Box::new(Pinger::new(start, addr(CLIENT), addr(SERVER), pings)),
    );
    (net, server, client)
}

#[test]
fn echo_across_a_nat() {
    let (mut net, server, client) = echo_bed(SimConfig::default(), 5);
    net.run_for(Duration::from_secs(1));
    let one_way = Duration::from_millis(41); // LAN 1 ms + two uplinks of 20 ms
    let echo = net.node::<Echo>(server);
    assert_eq!(echo.received.len(), 5);
    let mapped = SocketAddr::new(NAT_IP.parse().unwrap(), 20_000);
    for (i, (at, from, to, ttl, payload)) in echo.received.iter().enumerate() {
        assert_eq!(
            *at - net.epoch(),
            one_way + i as u32 * Duration::from_millis(10)
        );
        assert_eq!(*from, mapped, "the server sees the NAT's mapping");
        assert_eq!(*to, addr(SERVER));
        assert_eq!(*ttl, 64 - 1 - 4);
        assert_eq!(payload, &(i as u32).to_be_bytes());
    }
    let pinger = net.node::<Pinger>(client);
    assert_eq!(pinger.answers.len(), 5, "every echo gets back in");
    for (i, (at, from, payload)) in pinger.answers.iter().enumerate() {
        assert_eq!(
            *at - net.epoch(),
            2 * one_way + i as u32 * Duration::from_millis(10)
        );
        assert_eq!(*from, addr(SERVER));
        assert_eq!(payload, &(i as u32).to_be_bytes());
    }
    assert_eq!(net.now() - net.epoch(), Duration::from_secs(1));
    assert!(!net.step(), "nothing left to do");
    assert_eq!(
        net.now() - net.epoch(),
        Duration::from_secs(1),
        "step did not move time"
    );
}

#[test]
fn timers_fire_on_time_and_run_until_stops_at_the_deadline() {
    let mut net = Network::new(SimConfig::default());
    let host = net.sim_mut().add_public_host(addr(SERVER).ip());
    let epoch = net.epoch();
    let id = net.add_node(
        host,
        Box::new(Pinger::new(
            epoch,
            addr(SERVER),
            addr("198.51.100.9:1"),
            100,
        )),
    );
    net.run_until(epoch + Duration::from_millis(95));
    let fired = &net.node::<Pinger>(id).fired;
    let expected: Vec<Instant> = (0..10)
        .map(|i| epoch + i * Duration::from_millis(10))
        .collect();
    assert_eq!(fired, &expected);
    assert_eq!(net.now(), epoch + Duration::from_millis(95));
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.node::<Pinger>(id).fired.len(), 100);
    // Packets to an unroutable address are counted, not delivered.
    assert_eq!(net.sim().stats().unroutable, 100);
}

#[test]
fn transmits_queued_from_outside_go_out_on_the_next_step() {
    let (mut net, server, client) = echo_bed(SimConfig::default(), 0);
    net.node_mut::<Pinger>(client).next = None;
    assert!(!net.step(), "nothing scheduled");
    net.node_mut::<Pinger>(client).outbox.push(SimTransmit {
        from: addr(CLIENT),
        to: addr(SERVER),
        ttl: Some(3),
        payload: vec![9],
    });
    net.run_for(Duration::from_secs(1));
    assert!(
        net.node::<Echo>(server).received.is_empty(),
        "TTL 3 dies in the core"
    );
    assert_eq!(net.sim().stats().ttl_expired, 1);
}

#[test]
fn run_until_condition_reports_whether_it_was_met() {
    let (mut net, _, client) = echo_bed(SimConfig::default(), 3);
    let deadline = net.epoch() + Duration::from_secs(5);
    let met = net.run_until_condition(deadline, |net| {
        net.node::<Pinger>(client).answers.len() == 3
    });
    assert!(met);
    assert_eq!(
        net.now() - net.epoch(),
        Duration::from_millis(82 + 20),
        "stops at the step that met it"
    );
    let met = net.run_until_condition(deadline, |net| {
        net.node::<Pinger>(client).answers.len() == 4
    });
    assert!(!met);
    assert_eq!(net.now(), deadline);
}

#[test]
fn a_restarted_server_loses_its_state() {
    let (mut net, server, client) = echo_bed(SimConfig::default(), 20);
    net.run_for(Duration::from_millis(100));
    let before = net.node::<Pinger>(client).answers.len();
    assert!(before > 0);
    net.replace_node(
        server,
        Box::new(Echo {
            silent: true,
            ..Echo::default()
        }),
    );
    net.run_for(Duration::from_secs(1));
    let received = net.node::<Echo>(server).received.len();
    assert!(received > 0, "the new server gets the later pings");
    assert!(
        net.node::<Pinger>(client).answers.len() < 20,
        "the silent server answers nothing"
    );
}

fn lossy_trace(seed: u64) -> (Vec<(Duration, Vec<u8>)>, sightwire_netsim::SimStats) {
    let config = SimConfig {
        seed,
        jitter: Duration::from_millis(15),
        loss_per_million: 200_000,
        ..SimConfig::default()
    };
    let (mut net, _, client) = echo_bed(config, 200);
    net.run_for(Duration::from_secs(5));
    let epoch = net.epoch();
    let trace = net
        .node::<Pinger>(client)
        .answers
        .iter()
        .map(|(at, _, p)| (*at - epoch, p.clone()))
        .collect();
    (trace, net.sim().stats())
}

#[test]
fn same_seed_same_trace() {
    for seed in [0, 1, 0xDEAD_BEEF] {
        let (a, stats_a) = lossy_trace(seed);
        let (b, stats_b) = lossy_trace(seed);
        assert_eq!(a, b, "seed {seed}");
        assert_eq!(stats_a, stats_b);
        assert!(
            stats_a.lost > 0 && a.len() > 80 && a.len() < 200,
            "{stats_a:?}"
        );
    }
    assert_ne!(lossy_trace(1).0, lossy_trace(2).0, "the seed matters");
}

/// Asks for a timeout in the past, `times` times (or forever).
struct Stuck {
    times: Option<u32>,
    fired: u32,
    at: Instant,
}

impl Node for Stuck {
    fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: SocketAddr, _: u8, _: &[u8]) {}
    fn handle_timeout(&mut self, _: Instant) {
        self.fired += 1;
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.times
            .is_none_or(|times| self.fired < times)
            .then_some(self.at)
    }
    fn poll_transmit(&mut self, _: Instant) -> Option<SimTransmit> {
        None
    }
}

fn stuck_bed(times: Option<u32>) -> (Network, NodeId) {
    let mut net = Network::new(SimConfig::default());
    let host = net.sim_mut().add_public_host(addr(SERVER).ip());
    net.run_for(Duration::from_secs(1));
    let at = net.epoch();
    let id = net.add_node(
        host,
        Box::new(Stuck {
            times,
            fired: 0,
            at,
        }),
    );
    (net, id)
}

#[test]
fn a_past_timeout_fires_at_the_current_time() {
    let (mut net, id) = stuck_bed(Some(3));
    let now = net.now();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.node::<Stuck>(id).fired, 3);
    assert_eq!(net.now(), now + Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "keep asking for a timeout at or before now")]
fn a_node_stuck_in_the_past_panics_instead_of_hanging() {
    let (mut net, _) = stuck_bed(None);
    net.run_for(Duration::from_secs(1));
}

#[test]
#[should_panic(expected = "is not a sightwire_testkit::tests::Pinger")]
fn wrong_node_type_panics() {
    let (net, server, _) = echo_bed(SimConfig::default(), 1);
    let _ = net.node::<Pinger>(server);
}

#[test]
#[should_panic(expected = "one node per host")]
fn one_node_per_host() {
    let mut net = Network::new(SimConfig::default());
    let host = net.sim_mut().add_public_host(addr(SERVER).ip());
    net.add_node(host, Box::new(Echo::default()));
    net.add_node(host, Box::new(Echo::default()));
}

#[test]
#[should_panic(expected = "is not a host of the simulator")]
fn nodes_need_a_host() {
    let mut net = Network::new(SimConfig::default());
    net.add_node(HostId(3), Box::new(Echo::default()));
}

#[test]
fn test_rng_is_netsim_splitmix_and_stays_in_range() {
    let mut rng = TestRng::new(42);
    let mut reference = SplitMix64::new(42);
    for _ in 0..100 {
        assert_eq!(rng.next_u64(), reference.next_u64());
    }
    assert_eq!(rng.below(0), 0);
    assert!((0..10_000).all(|_| rng.below(7) < 7));
    let hits = (0..10_000).filter(|_| rng.chance(0.25)).count();
    assert!((2_000..3_000).contains(&hits), "{hits}");
    assert!((0..1_000).all(|_| !rng.chance(0.0) && rng.chance(1.0)));
    assert!(!rng.chance(f64::NAN));

    let mut a = [0u8; 13];
    let mut b = [0u8; 13];
    TestRng::new(1).fill(&mut a);
    let mut words = TestRng::new(1);
    b[..8].copy_from_slice(&words.next_u64().to_le_bytes());
    b[8..].copy_from_slice(&words.next_u64().to_le_bytes()[..5]);
    assert_eq!(a, b);
    assert_ne!(a, [0; 13]);
}

/// Sends a `len`-byte datagram every `interval` until `count`, without listening.
struct Blaster {
    local: SocketAddr,
    server: SocketAddr,
    interval: Duration,
    len: usize,
    count: u32,
    sent: u32,
    next: Option<Instant>,
    outbox: Vec<SimTransmit>,
}

impl Node for Blaster {
    fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: SocketAddr, _: u8, _: &[u8]) {}
    fn handle_timeout(&mut self, now: Instant) {
        self.outbox.push(SimTransmit {
            from: self.local,
            to: self.server,
            ttl: None,
            payload: vec![0; self.len],
        });
        self.sent += 1;
        self.next = (self.sent < self.count).then(|| now + self.interval);
    }
    fn poll_timeout(&mut self) -> Option<Instant> {
        self.next
    }
    fn poll_transmit(&mut self, _: Instant) -> Option<SimTransmit> {
        self.outbox.pop()
    }
}

/// What the bottleneck model means for a sender that ignores congestion: pushing twice
/// a NAT uplink's capacity through its FIFO, about half arrives, at the capacity, and
/// the rest is tail-dropped, and the queue stays full.
#[test]
fn a_sender_pushing_twice_the_capacity_loses_half() {
    use sightwire_netsim::{Link, LinkDirection};

    const PKT: usize = 1250; // 10 ms at 1 Mbit/s
    let mut net = Network::new(SimConfig::default());
    let server_host = net.sim_mut().add_public_host(addr(SERVER).ip());
    let nat = net
        .sim_mut()
        .add_nat(NAT_IP.parse().unwrap(), port_restricted());
    let client_host = net.sim_mut().add_host_behind(nat, addr(CLIENT).ip());
    net.sim_mut()
        .set_nat_uplink(nat, Link::new(1_000_000, 16 * PKT));
    let server = net.add_node(
        server_host,
        Box::new(Echo {
            silent: true,
            ..Echo::default()
        }),
    );
    let start = net.epoch();
    net.add_node(
        client_host,
        Box::new(Blaster {
            local: addr(CLIENT),
            server: addr(SERVER),
            interval: Duration::from_millis(5), // 2 Mbit/s
            len: PKT,
            count: 2000,
            sent: 0,
            next: Some(start),
            outbox: Vec::new(),
        }),
    );
    net.run_for(Duration::from_secs(5));
    assert_eq!(
        net.sim().nat_queued_bytes(nat, LinkDirection::Up),
        16 * PKT,
        "a sender above capacity keeps the queue full"
    );
    net.run_for(Duration::from_secs(10));

    let stats = net.sim().stats();
    let received = &net.node::<Echo>(server).received;
    assert_eq!(stats.sent, 2000);
    assert_eq!(received.len() as u64, stats.delivered);
    assert_eq!(stats.sent, stats.delivered + stats.queue_dropped);
    // 10 s of sending at 100 packets/s through the link, plus the queue left at the end.
    assert!(
        (1000..=1017).contains(&stats.delivered),
        "{} of 2000 delivered",
        stats.delivered
    );
    // Once the queue is full, packets arrive at the capacity: 10 ms apart.
    let late: Vec<Duration> = received
        .windows(2)
        .skip(100)
        .take(100)
        .map(|w| w[1].0 - w[0].0)
        .collect();
    assert!(late.iter().all(|&gap| gap == Duration::from_millis(10)));
}
