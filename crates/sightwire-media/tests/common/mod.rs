//! Two media connections in a `sightwire-netsim` network, driven in virtual time by
//! `sightwire-testkit` (the one driver loop and seeded RNG of the workspace's tests).
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sightwire_media::{Config, Event, MediaConnection, Transmit};
use sightwire_testkit::sightwire_netsim::SimConfig;
use sightwire_testkit::{Network, Node, NodeId, SimTransmit, TestRng};

const A: &str = "198.51.100.1:5000";
const B: &str = "198.51.100.2:6000";
/// Largest datagram a connection may emit (the original harness' buffer).
const MAX_DATAGRAM: usize = 2048;

/// The path between the two connections, the same both ways.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// One-way delay.
    pub delay: Duration,
    /// Probability that a packet is lost.
    pub loss: f64,
}

/// A media connection on a simulated host, sending everything to its peer.
struct Endpoint {
    connection: MediaConnection,
    local: SocketAddr,
    peer: SocketAddr,
    events: Vec<(Instant, Event)>,
}

impl Node for Endpoint {
    fn handle_datagram(
        &mut self,
        now: Instant,
        _from: SocketAddr,
        _to: SocketAddr,
        _ttl: u8,
        payload: &[u8],
    ) {
        self.connection
            .handle_input(now, payload)
            .expect("well-formed packet");
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.connection.handle_timeout(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.connection.poll_timeout()
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<SimTransmit> {
        // Called after every input and before every step: log events as they happen.
        while let Some(event) = self.connection.poll_event() {
            self.events.push((now, event));
        }
        let transmit = self.connection.poll_transmit(now)?;
        Some(sim_transmit(self.local, self.peer, &transmit))
    }
}

/// A media packet as a datagram from `from` to `to`.
pub fn sim_transmit(from: SocketAddr, to: SocketAddr, transmit: &Transmit) -> SimTransmit {
    assert!(transmit.len() <= MAX_DATAGRAM, "packet fits a datagram");
    SimTransmit {
        from,
        to,
        ttl: None,
        payload: transmit.to_bytes().to_vec(),
    }
}

/// Two connections, `a` and `b`, on public hosts joined by a lossy delayed path,
/// stepped in virtual time.
pub struct Pair {
    pub net: Network,
    a: NodeId,
    b: NodeId,
}

impl Pair {
    /// A pair over `link` with loss seeded by `seed`; `make` builds the two connections
    /// (a, b) given the virtual start time.
    pub fn new(
        link: Link,
        seed: u64,
        make: impl FnOnce(Instant) -> (MediaConnection, MediaConnection),
    ) -> Pair {
        let mut net = Network::new(SimConfig {
            seed,
            jitter: Duration::ZERO,
            loss_per_million: (link.loss * 1e6).round() as u32,
            ..SimConfig::default()
        });
        let (a_addr, b_addr): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
        let sim = net.sim_mut();
        let a_host = sim.add_public_host(a_addr.ip());
        let b_host = sim.add_public_host(b_addr.ip());
        // A packet across the internet takes both uplinks' latency.
        sim.set_host_uplink_latency(a_host, link.delay / 2);
        sim.set_host_uplink_latency(b_host, link.delay - link.delay / 2);
        let (a, b) = make(net.epoch());
        let endpoint = |connection, local, peer| {
            Box::new(Endpoint {
                connection,
                local,
                peer,
                events: Vec::new(),
            })
        };
        let a = net.add_node(a_host, endpoint(a, a_addr, b_addr));
        let b = net.add_node(b_host, endpoint(b, b_addr, a_addr));
        Pair { net, a, b }
    }

    /// The virtual time the pair started at.
    pub fn start(&self) -> Instant {
        self.net.epoch()
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.net.now()
    }

    /// Connection `a` (what it queues goes out on the next run).
    pub fn a(&mut self) -> &mut MediaConnection {
        &mut self.net.node_mut::<Endpoint>(self.a).connection
    }

    /// Connection `b`.
    pub fn b(&mut self) -> &mut MediaConnection {
        &mut self.net.node_mut::<Endpoint>(self.b).connection
    }

    /// `a`'s events with the virtual time they happened at.
    pub fn a_events(&self) -> &[(Instant, Event)] {
        &self.net.node::<Endpoint>(self.a).events
    }

    /// `b`'s events.
    pub fn b_events(&self) -> &[(Instant, Event)] {
        &self.net.node::<Endpoint>(self.b).events
    }

    /// Packets either connection sent.
    pub fn packets_sent(&self) -> u64 {
        self.net.sim().stats().sent
    }

    /// Of those, packets the path lost.
    pub fn packets_lost(&self) -> u64 {
        self.net.sim().stats().lost
    }

    /// Runs the network and both timers up to `until` (exclusive of later events).
    pub fn run_until(&mut self, until: Instant) {
        self.net.run_until(until);
    }
}

/// Deterministic frame content: byte `i` of frame `n`.
pub fn frame_bytes(frame_index: u64, len: usize) -> Bytes {
    let mut data = vec![0; len];
    TestRng::new(frame_index ^ 0xA5A5_5A5A).fill(&mut data);
    Bytes::from(data)
}

/// The default configuration with pacing off, for tests of limits and loss recovery that
/// drain everything queued at once (pacing has its own tests in `tests/pacing.rs`).
pub fn unpaced() -> Config {
    {
        let mut value = Config::default();
        value.pacing_factor_percent = 0;
        value
    }
}

/// Drains every pending transmit of an unpaced `connection` (see [`unpaced`]) as contiguous
/// packets. Without a pacer `poll_transmit` ignores its time, so any instant will do.
pub fn drain_packets(connection: &mut MediaConnection) -> Vec<Bytes> {
    let now = Instant::now();
    let mut packets = Vec::new();
    while let Some(transmit) = connection.poll_transmit(now) {
        packets.push(transmit.to_bytes());
    }
    packets
}

/// Drains every pending event.
pub fn drain_events(connection: &mut MediaConnection) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(event) = connection.poll_event() {
        events.push(event);
    }
    events
}

/// Only the fragment packets (first byte 0x40).
pub fn fragments(packets: &[Bytes]) -> Vec<Bytes> {
    packets
        .iter()
        .filter(|packet| packet.first() == Some(&sightwire_media::wire::TYPE_FRAGMENT))
        .cloned()
        .collect()
}
