//! Test harness: two punch agents in a `sightwire-netsim` network driven by
//! `sightwire-testkit`, with a minimal rendezvous (observes server-reflexive addresses,
//! starts both sides together, carries signals with a delay) and a minimal relay
//! (forwards between the two sides), each a testkit `Node` on its own host.
//!
//! Signals travel out of band (the rendezvous' TCP connection, not simulated): each node
//! queues the signals it emits, and `World` moves them to the receiving side's inbox
//! between steps; a side's next timeout includes its earliest inbox entry.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sightwire_netsim::{
    Attachment, Filtering, HostId, LinuxInput, Mapping, NatBehavior, NatConfig, NatId,
    PortAllocation, Sim, SimConfig,
};
use sightwire_punch::{
    Agent, Candidate, CandidateKind, CandidateSet, Config, Event, PathKind, PunchKey, PunchSignal,
    Role, StartAttempt,
};
use sightwire_testkit::{Network, Node, NodeId, SimTransmit};

pub const RENDEZVOUS: &str = "198.51.100.10:3478";
pub const RELAY: &str = "198.51.100.20:3478";
/// Harness-only first bytes (outside every range the protocol uses).
const REGISTER: u8 = 0xF0;
const TO_RELAY: u8 = 0xF1;
const FROM_RELAY: u8 = 0xF2;
/// Delay of a signal through the rendezvous (client → rendezvous → client).
pub const SIGNAL_DELAY: Duration = Duration::from_millis(60);
/// Margin the rendezvous adds so both Start messages have arrived before the start.
pub const START_MARGIN: Duration = Duration::from_millis(50);

/// A NAT model of the matrix (or no NAT).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Model {
    Public,
    FullCone,
    Restricted,
    PortRestricted,
    AddressDependentMapping,
    SymmetricSequential,
    SymmetricRandom,
    LinuxBare,
    LinuxFirewall,
}

impl Model {
    pub const ALL: [Model; 9] = [
        Model::Public,
        Model::FullCone,
        Model::Restricted,
        Model::PortRestricted,
        Model::AddressDependentMapping,
        Model::SymmetricSequential,
        Model::SymmetricRandom,
        Model::LinuxBare,
        Model::LinuxFirewall,
    ];

    pub fn short(self) -> &'static str {
        match self {
            Model::Public => "public",
            Model::FullCone => "EIM/EIF",
            Model::Restricted => "EIM/ADF",
            Model::PortRestricted => "EIM/APDF",
            Model::AddressDependentMapping => "ADM/ADF",
            Model::SymmetricSequential => "APDM-seq",
            Model::SymmetricRandom => "APDM-rand",
            Model::LinuxBare => "linux-bare",
            Model::LinuxFirewall => "linux-fw",
        }
    }

    pub fn nat(self) -> Option<NatConfig> {
        let rfc = |mapping, filtering, ports| {
            NatConfig::new(NatBehavior::Rfc4787 {
                mapping,
                filtering,
                ports,
            })
        };
        use Filtering as F;
        use Mapping as M;
        use PortAllocation as P;
        Some(match self {
            Model::Public => return None,
            Model::FullCone => rfc(M::EndpointIndependent, F::EndpointIndependent, P::Preserve),
            Model::Restricted => rfc(M::EndpointIndependent, F::AddressDependent, P::Preserve),
            Model::PortRestricted => rfc(
                M::EndpointIndependent,
                F::AddressAndPortDependent,
                P::Preserve,
            ),
            Model::AddressDependentMapping => {
                rfc(M::AddressDependent, F::AddressDependent, P::Sequential)
            }
            Model::SymmetricSequential => rfc(
                M::AddressAndPortDependent,
                F::AddressAndPortDependent,
                P::Sequential,
            ),
            Model::SymmetricRandom => rfc(
                M::AddressAndPortDependent,
                F::AddressAndPortDependent,
                P::Random,
            ),
            Model::LinuxBare => NatConfig::new(NatBehavior::Linux(LinuxInput::BareMasquerade)),
            Model::LinuxFirewall => NatConfig::new(NatBehavior::Linux(LinuxInput::CtStateNewDrop)),
        })
    }
}

/// Where the two peers are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Topology {
    /// Each peer on its own site.
    Apart(Model, Model),
    /// Both on one LAN behind one NAT of this model, hairpinning on or off.
    SameLan(Model, bool),
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Apart(a, b) => write!(f, "{} x {}", a.short(), b.short()),
            Topology::SameLan(m, hairpin) => {
                write!(
                    f,
                    "same LAN ({}, hairpin {})",
                    m.short(),
                    if *hairpin { "on" } else { "off" }
                )
            }
        }
    }
}

/// Knobs of one simulated run.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub topology: Topology,
    pub sim: SimConfig,
    pub with_relay: bool,
    /// How much later side B's `Start` arrives than side A's (the difference of the two
    /// one-way delays from the rendezvous), so side B starts that much later too.
    pub start_skew: Duration,
}

impl Setup {
    pub fn new(topology: Topology) -> Self {
        Setup {
            topology,
            sim: SimConfig::default(),
            with_relay: true,
            start_skew: Duration::ZERO,
        }
    }
}

/// One side: a punch agent on its host, with what the test checks.
pub struct Side {
    pub host: HostId,
    pub nat: Option<NatId>,
    pub local: SocketAddr,
    pub agent: Agent,
    pub events: Vec<(Duration, Event)>,
    /// 0 for A, 1 for B (the harness' relay framing names the side).
    index: u8,
    /// Event times are measured from here (the synchronized start).
    start_at: Instant,
    /// Signals (from the peer or the rendezvous) in flight to this side.
    inbox: VecDeque<(Instant, PunchSignal)>,
    /// Signals this side sends to the peer, with their arrival time.
    to_peer: Vec<(Instant, PunchSignal)>,
    outbox: VecDeque<SimTransmit>,
}

impl Side {
    /// Moves what the agent wants done after an input into the side's queues.
    fn drain(&mut self, now: Instant) {
        while let Some(t) = self.agent.poll_transmit() {
            let payload = if t.via_relay {
                let mut out = vec![TO_RELAY, self.index];
                out.extend_from_slice(t.payload());
                out
            } else {
                t.payload().to_vec()
            };
            self.outbox.push_back(SimTransmit {
                from: self.local,
                to: t.destination,
                ttl: t.ttl,
                payload,
            });
        }
        while let Some(signal) = self.agent.poll_signal() {
            if matches!(signal, PunchSignal::Candidates(_)) {
                self.to_peer.push((now + SIGNAL_DELAY, signal));
            }
        }
        let since = now.saturating_duration_since(self.start_at);
        while let Some(event) = self.agent.poll_event() {
            self.events.push((since, event));
        }
    }
}

impl Node for Side {
    fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        _to: SocketAddr,
        _ttl: u8,
        payload: &[u8],
    ) {
        let Some((&first, rest)) = payload.split_first() else {
            return;
        };
        if first == FROM_RELAY && from == addr(RELAY) {
            self.agent.handle_datagram(now, addr(RELAY), rest);
        } else if sightwire_punch::is_punch_packet(payload) {
            self.agent.handle_datagram(now, from, payload);
        }
        self.drain(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        while self.inbox.front().is_some_and(|&(t, _)| t <= now) {
            if let Some((_, signal)) = self.inbox.pop_front() {
                self.agent.handle_signal(now, signal);
                self.drain(now);
            }
        }
        if self.agent.poll_timeout().is_some_and(|t| t <= now) {
            self.agent.handle_timeout(now);
            self.drain(now);
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let inbox = self.inbox.front().map(|&(t, _)| t);
        [self.agent.poll_timeout(), inbox]
            .into_iter()
            .flatten()
            .min()
    }

    fn poll_transmit(&mut self, _now: Instant) -> Option<SimTransmit> {
        self.outbox.pop_front()
    }
}

/// The rendezvous: notes each side's server-reflexive address and tells the side.
#[derive(Default)]
struct RendezvousNode {
    reflexive: [Option<SocketAddr>; 2],
    /// (side, arrival, signal) for the sides.
    to_sides: Vec<(usize, Instant, PunchSignal)>,
}

impl Node for RendezvousNode {
    fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        _to: SocketAddr,
        _ttl: u8,
        payload: &[u8],
    ) {
        if let [REGISTER, i, ..] = *payload {
            let i = usize::from(i) & 1;
            self.reflexive[i] = Some(from);
            // Rendezvous → client: "you are seen at" (only meaningful after a network
            // change; harmless otherwise).
            self.to_sides
                .push((i, now + SIGNAL_DELAY / 2, PunchSignal::LocalReflexive(from)));
        }
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
    fn poll_transmit(&mut self, _now: Instant) -> Option<SimTransmit> {
        None
    }
}

/// The relay: binds each side's address and forwards between the two.
#[derive(Default)]
struct RelayNode {
    bindings: [Option<SocketAddr>; 2],
    forwarded: u64,
    outbox: VecDeque<SimTransmit>,
}

impl Node for RelayNode {
    fn handle_datagram(
        &mut self,
        _now: Instant,
        from: SocketAddr,
        _to: SocketAddr,
        _ttl: u8,
        payload: &[u8],
    ) {
        let Some((&TO_RELAY, rest)) = payload.split_first() else {
            return;
        };
        if let Some((&i, inner)) = rest.split_first() {
            let i = usize::from(i) & 1;
            self.bindings[i] = Some(from);
            if !inner.is_empty()
                && let Some(dest) = self.bindings[1 - i]
            {
                let mut out = vec![FROM_RELAY];
                out.extend_from_slice(inner);
                self.forwarded += 1;
                self.outbox.push_back(SimTransmit {
                    from: addr(RELAY),
                    to: dest,
                    ttl: None,
                    payload: out,
                });
            }
        }
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
    fn poll_transmit(&mut self, _now: Instant) -> Option<SimTransmit> {
        self.outbox.pop_front()
    }
}

pub struct World {
    pub net: Network,
    pub epoch: Instant,
    pub start_at: Instant,
    pub key: PunchKey,
    sides: [NodeId; 2],
    rendezvous: NodeId,
    relay: NodeId,
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

impl World {
    pub fn new(setup: Setup) -> World {
        let mut net = Network::new(setup.sim);
        let epoch = net.epoch();
        let sim = net.sim_mut();
        let rendezvous_host = sim.add_public_host(addr(RENDEZVOUS).ip());
        let relay_host = sim.add_public_host(addr(RELAY).ip());
        let place = |sim: &mut Sim, model: Model, public: &str, private: &str| match model.nat() {
            None => (sim.add_public_host(ip(public)), None, ip(public)),
            Some(config) => {
                let nat = sim.add_nat(ip(public), config);
                (
                    sim.add_host_behind(nat, ip(private)),
                    Some(nat),
                    ip(private),
                )
            }
        };
        let (a, b) = match setup.topology {
            Topology::Apart(ma, mb) => (
                place(sim, ma, "203.0.113.1", "192.168.1.10"),
                place(sim, mb, "203.0.113.2", "10.0.0.20"),
            ),
            Topology::SameLan(model, hairpin) => {
                let config = model.nat().unwrap_or(NatConfig::new(NatBehavior::Linux(
                    LinuxInput::CtStateNewDrop,
                )));
                let nat = sim.add_nat(ip("203.0.113.1"), config.with_hairpinning(hairpin));
                let ha = sim.add_host_behind(nat, ip("192.168.1.10"));
                let hb = sim.add_host_behind(nat, ip("192.168.1.20"));
                (
                    (ha, Some(nat), ip("192.168.1.10")),
                    (hb, Some(nat), ip("192.168.1.20")),
                )
            }
        };
        let side = |(host, nat, address): (HostId, Option<NatId>, IpAddr), index: u8, seed: u64| {
            let local = SocketAddr::new(address, 5000 + 1000 * u16::from(index));
            Side {
                host,
                nat,
                local,
                index,
                agent: Agent::new(Config::new(vec![local], seed)),
                events: Vec::new(),
                start_at: epoch,
                inbox: VecDeque::new(),
                to_peer: Vec::new(),
                outbox: VecDeque::new(),
            }
        };
        let seed = setup.sim.seed;
        // Sides first: at one instant their timers fire in this order.
        let side_a = side(a, 0, seed ^ 0xA);
        let side_b = side(b, 1, seed ^ 0xB);
        let sides = [
            net.add_node(side_a.host, Box::new(side_a)),
            net.add_node(side_b.host, Box::new(side_b)),
        ];
        let rendezvous = net.add_node(rendezvous_host, Box::new(RendezvousNode::default()));
        let relay = net.add_node(relay_host, Box::new(RelayNode::default()));
        let mut world = World {
            net,
            epoch,
            start_at: epoch,
            key: PunchKey::new([seed as u8; 32]),
            sides,
            rendezvous,
            relay,
        };
        world.register_both();
        if setup.with_relay {
            // The driver allocates at the relay: one packet binds the side's address.
            for i in 0..2 {
                world.send_from_side(i, addr(RELAY), vec![TO_RELAY, i as u8]);
            }
            world.run_more(Duration::from_millis(400));
        }
        world.start(setup.with_relay, setup.start_skew);
        world
    }

    /// The simulator.
    pub fn sim(&self) -> &Sim {
        self.net.sim()
    }

    /// The simulator, to change the network under the agents.
    pub fn sim_mut(&mut self) -> &mut Sim {
        self.net.sim_mut()
    }

    /// Side `i` (0 is A, the controlling side).
    pub fn side(&self, i: usize) -> &Side {
        self.net.node::<Side>(self.sides[i])
    }

    fn side_mut(&mut self, i: usize) -> &mut Side {
        self.net.node_mut::<Side>(self.sides[i])
    }

    /// Datagrams the relay forwarded between the sides.
    pub fn relay_forwarded(&self) -> u64 {
        self.net.node::<RelayNode>(self.relay).forwarded
    }

    /// Queues a harness datagram from side `i`'s local address.
    fn send_from_side(&mut self, i: usize, to: SocketAddr, payload: Vec<u8>) {
        let side = self.side_mut(i);
        let from = side.local;
        side.outbox.push_back(SimTransmit {
            from,
            to,
            ttl: None,
            payload,
        });
    }

    /// Each side sends a packet to the rendezvous, which notes the source address.
    fn register_both(&mut self) {
        for i in 0..2 {
            self.register(i);
        }
        self.run_more(Duration::from_millis(400));
    }

    fn register(&mut self, i: usize) {
        self.net
            .node_mut::<RendezvousNode>(self.rendezvous)
            .reflexive[i] = None;
        self.send_from_side(i, addr(RENDEZVOUS), vec![REGISTER, i as u8]);
    }

    fn start(&mut self, with_relay: bool, skew: Duration) {
        let now = self.net.now();
        // The rendezvous sends Start to both; each arrives after SIGNAL_DELAY / 2 and
        // starts at the same absolute time.
        let arrive = now + SIGNAL_DELAY / 2;
        self.start_at = arrive + START_MARGIN;
        let reflexive = self.net.node::<RendezvousNode>(self.rendezvous).reflexive;
        for i in 0..2 {
            let peer = self.side(1 - i);
            let mut candidates = vec![Candidate::new(CandidateKind::Host, peer.local)];
            if let Some(r) = reflexive[1 - i] {
                candidates.push(Candidate::new(CandidateKind::ServerReflexive, r));
            }
            if with_relay {
                candidates.push(Candidate::new(CandidateKind::Relay, addr(RELAY)));
            }
            let start = StartAttempt {
                role: if i == 0 {
                    Role::Controlling
                } else {
                    Role::Controlled
                },
                key: self.key.clone(),
                start_in: START_MARGIN,
                local_reflexive: reflexive[i],
                relay: with_relay.then(|| addr(RELAY)),
                remote: CandidateSet {
                    generation: 0,
                    candidates,
                },
            };
            let start_at = self.start_at;
            let side = self.side_mut(i);
            side.start_at = start_at;
            let arrive = if i == 1 { arrive + skew } else { arrive };
            side.inbox.push_back((arrive, PunchSignal::Start(start)));
        }
    }

    /// Moves the out-of-band signals the nodes emitted to the sides' inboxes.
    fn route_signals(net: &mut Network, sides: [NodeId; 2], rendezvous: NodeId) {
        let from_rendezvous =
            std::mem::take(&mut net.node_mut::<RendezvousNode>(rendezvous).to_sides);
        for (i, at, signal) in from_rendezvous {
            net.node_mut::<Side>(sides[i]).inbox.push_back((at, signal));
        }
        for i in 0..2 {
            let signals = std::mem::take(&mut net.node_mut::<Side>(sides[i]).to_peer);
            net.node_mut::<Side>(sides[1 - i]).inbox.extend(signals);
        }
    }

    /// Runs agents and network until `until` (absolute virtual time).
    pub fn run_until(&mut self, until: Instant) {
        let (sides, rendezvous) = (self.sides, self.rendezvous);
        self.net.run_until_condition(until, |net| {
            World::route_signals(net, sides, rendezvous);
            false
        });
    }

    /// Runs for `span` after the synchronized start.
    pub fn run_for(&mut self, span: Duration) {
        let until = self.start_at + span;
        self.run_until(until);
    }

    /// Runs `span` more virtual time.
    pub fn run_more(&mut self, span: Duration) {
        let until = self.net.now() + span;
        self.run_until(until);
    }

    /// Moves side `i` to a new attachment and tells its agent, then re-registers with
    /// the rendezvous and re-binds the relay, like a driver would.
    pub fn move_side(&mut self, i: usize, attachment: Attachment, new_local: SocketAddr) {
        let now = self.net.now();
        let host = self.side(i).host;
        self.net.sim_mut().attach(host, attachment);
        let side = self.side_mut(i);
        side.local = new_local;
        side.agent.network_changed(now, vec![new_local]);
        side.drain(now);
        self.register(i);
        self.send_from_side(i, addr(RELAY), vec![TO_RELAY, i as u8]);
    }

    /// First `Connected` of side `i`: (time since start, path kind).
    pub fn connected(&self, i: usize) -> Option<(Duration, PathKind)> {
        self.side(i).events.iter().find_map(|(t, e)| match e {
            Event::Connected(p) => Some((*t, p.kind)),
            _ => None,
        })
    }

    /// When side `i` first had a path of `kind` (`Connected` or `PathChanged`).
    pub fn reached(&self, i: usize, kind: PathKind) -> Option<Duration> {
        self.side(i).events.iter().find_map(|(t, e)| match e {
            Event::Connected(p) | Event::PathChanged(p) if p.kind == kind => Some(*t),
            _ => None,
        })
    }

    /// The path kind side `i` has selected now.
    pub fn selected_kind(&self, i: usize) -> Option<PathKind> {
        self.side(i).agent.selected_path().map(|p| p.kind)
    }

    /// A compact, deterministic trace of both sides' events (for same-seed checks).
    pub fn trace(&self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..2 {
            for (t, e) in &self.side(i).events {
                out.push(format!("{i} {:?} {e:?}", t));
            }
        }
        out
    }
}
