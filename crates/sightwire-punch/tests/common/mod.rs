//! Test harness: two punch agents in a `sightwire-netsim` network, with a minimal
//! rendezvous (observes server-reflexive addresses, starts both sides together, carries
//! signals with a delay) and a minimal relay (forwards between the two sides).
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
    /// Error of the rendezvous' start synchronisation for side B (added to its start_in).
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

pub struct Side {
    pub host: HostId,
    pub nat: Option<NatId>,
    pub local: SocketAddr,
    pub agent: Agent,
    pub events: Vec<(Duration, Event)>,
    pub reflexive: Option<SocketAddr>,
    /// Signals (from the peer or the rendezvous) in flight to this side.
    inbox: VecDeque<(Instant, PunchSignal)>,
}

pub struct World {
    pub sim: Sim,
    pub epoch: Instant,
    pub sides: [Side; 2],
    pub start_at: Instant,
    relay_bindings: [Option<SocketAddr>; 2],
    pub relay_forwarded: u64,
    pub key: PunchKey,
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test ip")
}

impl World {
    pub fn new(setup: Setup) -> World {
        let epoch = Instant::now();
        let mut sim = Sim::new(epoch, setup.sim);
        sim.add_public_host(addr(RENDEZVOUS).ip());
        sim.add_public_host(addr(RELAY).ip());
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
                place(&mut sim, ma, "203.0.113.1", "192.168.1.10"),
                place(&mut sim, mb, "203.0.113.2", "10.0.0.20"),
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
        let side = |(host, nat, address): (HostId, Option<NatId>, IpAddr), port: u16, seed: u64| {
            let local = SocketAddr::new(address, port);
            Side {
                host,
                nat,
                local,
                agent: Agent::new(Config {
                    host_candidates: vec![local],
                    seed,
                }),
                events: Vec::new(),
                reflexive: None,
                inbox: VecDeque::new(),
            }
        };
        let seed = setup.sim.seed;
        let mut world = World {
            sim,
            epoch,
            sides: [side(a, 5000, seed ^ 0xA), side(b, 6000, seed ^ 0xB)],
            start_at: epoch,
            relay_bindings: [None, None],
            relay_forwarded: 0,
            key: PunchKey::new([seed as u8; 32]),
        };
        world.register_both();
        if setup.with_relay {
            // The driver allocates at the relay: one packet binds the side's address.
            for i in 0..2 {
                let local = world.sides[i].local;
                world
                    .sim
                    .send(local, addr(RELAY), None, vec![TO_RELAY, i as u8]);
            }
            world.run_network_only(Duration::from_millis(400));
        }
        world.start(setup.with_relay, setup.start_skew);
        world
    }

    /// Each side sends a packet to the rendezvous, which notes the source address.
    fn register_both(&mut self) {
        for i in 0..2 {
            self.sides[i].reflexive = None;
            let local = self.sides[i].local;
            self.sim
                .send(local, addr(RENDEZVOUS), None, vec![REGISTER, i as u8]);
        }
        self.run_network_only(Duration::from_millis(400));
    }

    fn register(&mut self, i: usize) {
        self.sides[i].reflexive = None;
        let local = self.sides[i].local;
        self.sim
            .send(local, addr(RENDEZVOUS), None, vec![REGISTER, i as u8]);
    }

    fn run_network_only(&mut self, span: Duration) {
        let until = self.sim.now() + span;
        while let Some(t) = self.sim.next_event_time().filter(|&t| t <= until) {
            self.sim.advance_to(t);
            self.handle_deliveries();
        }
        self.sim.advance_to(until);
    }

    fn start(&mut self, with_relay: bool, skew: Duration) {
        let now = self.sim.now();
        // The rendezvous sends Start to both; each arrives after SIGNAL_DELAY / 2 and
        // starts at the same absolute time.
        let arrive = now + SIGNAL_DELAY / 2;
        self.start_at = arrive + START_MARGIN;
        for i in 0..2 {
            let peer = &self.sides[1 - i];
            let mut candidates = vec![Candidate::new(CandidateKind::Host, peer.local)];
            if let Some(r) = peer.reflexive {
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
                start_in: START_MARGIN + if i == 1 { skew } else { Duration::ZERO },
                local_reflexive: self.sides[i].reflexive,
                relay: with_relay.then(|| addr(RELAY)),
                remote: CandidateSet {
                    generation: 0,
                    candidates,
                },
            };
            self.sides[i]
                .inbox
                .push_back((arrive, PunchSignal::Start(start)));
        }
    }

    fn handle_deliveries(&mut self) {
        while let Some(d) = self.sim.poll_delivery() {
            let (first, rest) = match d.payload.split_first() {
                Some((f, r)) => (*f, r),
                None => continue,
            };
            if d.to == addr(RENDEZVOUS) && first == REGISTER {
                if let Some(&i) = rest.first() {
                    let i = usize::from(i);
                    self.sides[i].reflexive = Some(d.from);
                    // Rendezvous → client: "you are seen at" (only meaningful after a
                    // network change; harmless otherwise).
                    let at = d.at + SIGNAL_DELAY / 2;
                    self.sides[i]
                        .inbox
                        .push_back((at, PunchSignal::LocalReflexive(d.from)));
                }
            } else if d.to == addr(RELAY) && first == TO_RELAY {
                if let Some((&i, inner)) = rest.split_first() {
                    let i = usize::from(i) & 1;
                    self.relay_bindings[i] = Some(d.from);
                    if !inner.is_empty()
                        && let Some(dest) = self.relay_bindings[1 - i]
                    {
                        let mut out = vec![FROM_RELAY];
                        out.extend_from_slice(inner);
                        self.relay_forwarded += 1;
                        self.sim.send(addr(RELAY), dest, None, out);
                    }
                }
            } else if let Some(i) = self.sides.iter().position(|s| s.host == d.host) {
                let now = d.at;
                if first == FROM_RELAY && d.from == addr(RELAY) {
                    self.sides[i].agent.handle_datagram(now, addr(RELAY), rest);
                } else if sightwire_punch::is_punch_packet(&d.payload) {
                    self.sides[i].agent.handle_datagram(now, d.from, &d.payload);
                }
                self.drain(i, now);
            }
        }
    }

    fn drain(&mut self, i: usize, now: Instant) {
        let local = self.sides[i].local;
        while let Some(t) = self.sides[i].agent.poll_transmit() {
            if t.via_relay {
                let mut out = vec![TO_RELAY, i as u8];
                out.extend_from_slice(t.payload());
                self.sim.send(local, t.destination, t.ttl, out);
            } else {
                self.sim
                    .send(local, t.destination, t.ttl, t.payload().to_vec());
            }
        }
        while let Some(signal) = self.sides[i].agent.poll_signal() {
            if matches!(signal, PunchSignal::Candidates(_)) {
                self.sides[1 - i]
                    .inbox
                    .push_back((now + SIGNAL_DELAY, signal));
            }
        }
        let since = now.saturating_duration_since(self.start_at);
        while let Some(event) = self.sides[i].agent.poll_event() {
            self.sides[i].events.push((since, event));
        }
    }

    /// Runs agents and network until `until` (absolute virtual time).
    pub fn run_until(&mut self, until: Instant) {
        let mut steps = 0u64;
        loop {
            steps += 1;
            assert!(steps < 2_000_000, "simulation does not make progress");
            let mut next = self.sim.next_event_time();
            let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
            for side in &self.sides {
                if let Some(t) = side.agent.poll_timeout() {
                    consider(t);
                }
                if let Some(&(t, _)) = side.inbox.front() {
                    consider(t);
                }
            }
            let Some(next) = next else { break };
            if next > until {
                break;
            }
            let now = next.max(self.sim.now());
            self.sim.advance_to(now);
            self.handle_deliveries();
            for i in 0..2 {
                while self.sides[i].inbox.front().is_some_and(|&(t, _)| t <= now) {
                    if let Some((_, signal)) = self.sides[i].inbox.pop_front() {
                        self.sides[i].agent.handle_signal(now, signal);
                        self.drain(i, now);
                    }
                }
                if self.sides[i].agent.poll_timeout().is_some_and(|t| t <= now) {
                    self.sides[i].agent.handle_timeout(now);
                    self.drain(i, now);
                }
            }
        }
        self.sim.advance_to(until);
    }

    /// Runs for `span` after the synchronized start.
    pub fn run_for(&mut self, span: Duration) {
        let until = self.start_at + span;
        self.run_until(until);
    }

    /// Runs `span` more virtual time.
    pub fn run_more(&mut self, span: Duration) {
        let until = self.sim.now() + span;
        self.run_until(until);
    }

    /// Moves side `i` to a new attachment and tells its agent, then re-registers with
    /// the rendezvous and re-binds the relay, like a driver would.
    pub fn move_side(&mut self, i: usize, attachment: Attachment, new_local: SocketAddr) {
        let now = self.sim.now();
        self.sim.attach(self.sides[i].host, attachment);
        self.sides[i].local = new_local;
        self.sides[i].agent.network_changed(now, vec![new_local]);
        self.drain(i, now);
        self.register(i);
        self.sim
            .send(new_local, addr(RELAY), None, vec![TO_RELAY, i as u8]);
    }

    /// First `Connected` of side `i`: (time since start, path kind).
    pub fn connected(&self, i: usize) -> Option<(Duration, PathKind)> {
        self.sides[i].events.iter().find_map(|(t, e)| match e {
            Event::Connected(p) => Some((*t, p.kind)),
            _ => None,
        })
    }

    /// The path kind side `i` has selected now.
    pub fn selected_kind(&self, i: usize) -> Option<PathKind> {
        self.sides[i].agent.selected_path().map(|p| p.kind)
    }

    /// A compact, deterministic trace of both sides' events (for same-seed checks).
    pub fn trace(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, side) in self.sides.iter().enumerate() {
            for (t, e) in &side.events {
                out.push(format!("{i} {:?} {e:?}", t));
            }
        }
        out
    }
}
