//! A deterministic network simulator for Sightwire's tests: hosts, NATs and an internet
//! core, in virtual time, with seeded loss and jitter.
//!
//! NATs follow the RFC 4787 axes ([`Mapping`], [`Filtering`], [`PortAllocation`],
//! hairpinning, mapping timeout) and there is a model of Linux `masquerade` with its
//! conntrack collision ([`LinuxInput::BareMasquerade`]) and with the usual
//! `ct state new drop` input firewall ([`LinuxInput::CtStateNewDrop`]). Packets carry an
//! IP TTL that every router (each NAT, and each of [`SimConfig::internet_hops`] core
//! routers) decrements, so low-TTL packets expire before they cross the internet.
//!
//! NATs nest: [`Sim::add_nat_behind`] puts a NAT's WAN side on another NAT's LAN, for
//! double NAT (a home router behind an ISP router) and carrier-grade NAT (many homes
//! behind one CGN). A packet from behind the inner NAT is translated by it, crosses the
//! outer LAN, is translated again by the outer NAT and then crosses the internet; each
//! NAT decrements the TTL. Hosts on the outer LAN reach the inner NAT's WAN address
//! directly, as LAN traffic subject to the inner NAT's filtering.
//!
//! Bottlenecks are [`Link`]s: a capacity and a FIFO queue on a host's interface
//! ([`Sim::set_host_uplink`], [`Sim::set_host_downlink`]) or a NAT's WAN side
//! ([`Sim::set_nat_uplink`], [`Sim::set_nat_downlink`]), as a home uplink shaped to a few
//! Mbit/s with `tbf` or `htb` behaves. See [Bottleneck links](#bottleneck-links).
//!
//! What it is not for: it does no I/O and reads no clock (the caller owns virtual time),
//! models no fragmentation, ICMP or IPv6 NAT, and knows no protocols: a
//! rendezvous or relay is a public host whose packets the test handles itself.
//!
//! The same seed and the same calls give the same deliveries, bit for bit.
//!
//! # Bottleneck links
//!
//! Every link is unlimited until a setter gives it a [`Link`]. A packet entering a
//! limited link waits for the bytes queued before it to drain at
//! [`Link::capacity_bps`], takes its own serialization time (payload length × 8 /
//! capacity, rounded up to the nanosecond), and then the path's latency; if the queue
//! would hold more than [`Link::queue_bytes`] with it, it is dropped
//! ([`SimStats::queue_dropped`]). A host's links carry everything it sends and
//! receives; a NAT's carry what leaves and enters its WAN side, so the hosts behind it
//! share them (hairpinned packets cross neither). Uplinks queue before the latency,
//! downlinks after it (the shaper sits at the far end of the path). Calling a setter
//! again changes the capacity for packets that enter afterwards: the ones already
//! queued keep the departure time they were given.
//!
//! The model is one FIFO with tail drop per link and nothing more: no AQM (RED, CoDel,
//! PIE), no ECN marking, no per-flow fairness (fq_codel, SFQ), no token-bucket burst
//! allowance, no IP/UDP header bytes, and no cross traffic other than the packets a test
//! sends. Flows sharing a link get what the FIFO gives them: with strictly periodic
//! senders tail drop can lock one flow out (phase effects), so a fairness test should
//! vary its senders' timing.
//!
//! # Driving sans-IO cores
//!
//! The simulator owns virtual time; the test owns the protocol cores. One loop serves
//! any number of cores: take the earliest of [`Sim::next_event_time`] and every core's
//! own next timeout, [`Sim::advance_to`] it, hand each [`Delivery`] from
//! [`Sim::poll_delivery`] to the core on [`Delivery::host`] (with `at` as its `now`),
//! fire the cores whose timeout has come, and [`Sim::send`] whatever they want to send.
//! `sightwire-testkit`'s `Network` is that loop; use it rather than writing another.
//! `sightwire-punch`'s `tests/common/mod.rs` is a complete example, including a
//! rendezvous and a relay played by public hosts.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use sightwire_netsim::*;
//!
//! let epoch = Instant::now();
//! let mut sim = Sim::new(epoch, SimConfig::default());
//! let server = sim.add_public_host("198.51.100.1".parse()?);
//! let nat = sim.add_nat("203.0.113.1".parse()?, NatConfig::new(NatBehavior::Rfc4787 {
//!     mapping: Mapping::EndpointIndependent,
//!     filtering: Filtering::AddressAndPortDependent,
//!     ports: PortAllocation::Preserve,
//! }));
//! let client = sim.add_host_behind(nat, "192.168.1.2".parse()?);
//!
//! let from = "192.168.1.2:4000".parse()?;
//! let to = "198.51.100.1:3478".parse()?;
//! sim.send(from, to, None, b"hello".to_vec());
//! while let Some(at) = sim.next_event_time() {
//!     sim.advance_to(at);
//! }
//! let delivery = sim.poll_delivery().expect("delivered");
//! assert_eq!(delivery.host, server);
//! assert_eq!(delivery.from, "203.0.113.1:4000".parse()?); // port preserved
//! assert_eq!(delivery.payload, b"hello");
//! # let _ = client;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod link;
mod nat;
mod rng;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use link::Link;
pub use nat::{
    FIRST_DYNAMIC_PORT, Filtering, LinuxInput, MAX_CONTACTED_PER_MAPPING, MAX_NAT_ENTRIES, Mapping,
    NatBehavior, NatConfig, NatDrop, PortAllocation,
};
pub use rng::SplitMix64;

use link::LinkState;
use nat::NatState;

/// TTL of packets sent without an explicit one.
pub const DEFAULT_TTL: u8 = 64;
/// Most packets in flight; further sends are dropped (and counted) until some land.
pub const MAX_IN_FLIGHT: usize = 100_000;
/// Most delivered packets waiting for [`Sim::poll_delivery`]; further ones are dropped.
pub const MAX_UNPOLLED_DELIVERIES: usize = 100_000;

/// Simulator-wide settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SimConfig {
    /// Seed of every random choice (loss, jitter, random NAT ports).
    pub seed: u64,
    /// One-way latency between hosts on a LAN and between a host and its NAT.
    pub lan_latency: Duration,
    /// Default one-way latency of a site's uplink to the internet core; a packet across
    /// the internet takes the sender's plus the receiver's uplink latency.
    pub uplink_latency: Duration,
    /// Extra uniformly random delay in `0..=jitter` per internet crossing.
    pub jitter: Duration,
    /// Probability (per million) that a packet crossing the internet is lost.
    pub loss_per_million: u32,
    /// Routers in the internet core between any two sites; each decrements the TTL.
    pub internet_hops: u8,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            lan_latency: Duration::from_millis(1),
            uplink_latency: Duration::from_millis(20),
            jitter: Duration::ZERO,
            loss_per_million: 0,
            internet_hops: 4,
        }
    }
}

/// A host in the simulation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct HostId(pub usize);

/// A NAT in the simulation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct NatId(pub usize);

/// Where a host is attached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Attachment {
    /// Directly on the internet with this address.
    Public(IpAddr),
    /// On the LAN behind a NAT (top-level or nested), with this private address.
    BehindNat(NatId, IpAddr),
    /// Disconnected: everything to and from it is dropped.
    Detached,
}

/// Which direction of an interface's [`Link`]s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum LinkDirection {
    /// Packets leaving the host, or leaving a NAT through its WAN side.
    Up,
    /// Packets reaching the host, or arriving at a NAT's WAN side.
    Down,
}

/// A packet that reached a host.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Delivery {
    /// Virtual time of arrival.
    pub at: Instant,
    /// The receiving host.
    pub host: HostId,
    /// Source address as the receiver sees it (after any NAT).
    pub from: SocketAddr,
    /// Destination address (the receiver's own address and port).
    pub to: SocketAddr,
    /// TTL left on arrival.
    pub ttl: u8,
    /// The datagram.
    pub payload: Vec<u8>,
}

/// Counters of what happened to packets.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SimStats {
    /// Packets handed to [`Sim::send`].
    pub sent: u64,
    /// Packets delivered to a host.
    pub delivered: u64,
    /// Lost at random on the internet.
    pub lost: u64,
    /// Expired (TTL reached zero at a router).
    pub ttl_expired: u64,
    /// Dropped by a NAT: no mapping, filtered, no hairpin or ports exhausted.
    pub nat_dropped: u64,
    /// Of those, unsolicited inbound packets that created a Linux conntrack collision.
    pub conntrack_collisions: u64,
    /// No host or NAT owns the destination (e.g. a private address on the internet).
    pub unroutable: u64,
    /// Sent from an address no attached host owns, or to/from a detached host.
    pub detached: u64,
    /// Dropped because [`MAX_IN_FLIGHT`] or [`MAX_UNPOLLED_DELIVERIES`] was reached.
    pub overflow: u64,
    /// Tail-dropped at a full [`Link`] queue (or by a link of capacity 0).
    pub queue_dropped: u64,
}

#[derive(Debug)]
struct Host {
    attachment: Attachment,
    uplink_latency: Duration,
    /// Every packet the host sends.
    uplink: LinkState,
    /// Every packet that reaches the host.
    downlink: LinkState,
}

#[derive(Debug)]
struct Nat {
    /// `state.public_ip` is the WAN address: public for a top-level NAT, an address on
    /// the outer NAT's LAN for a nested one.
    state: NatState,
    uplink_latency: Duration,
    /// The NAT whose LAN this NAT's WAN side is on; `None` for one on the internet.
    outer: Option<NatId>,
    /// Packets the NAT forwards out of its WAN side.
    uplink: LinkState,
    /// Packets arriving at its WAN side.
    downlink: LinkState,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    /// Arrives at a host (destination already final).
    Host(HostId),
    /// Arrives at a NAT from its LAN.
    NatInside(NatId),
    /// Arrives at a NAT from its WAN side (the internet, or the outer NAT's LAN).
    NatOutside(NatId),
}

#[derive(Debug)]
struct Packet {
    from: SocketAddr,
    to: SocketAddr,
    ttl: u8,
    payload: Vec<u8>,
}

#[derive(Debug)]
struct InFlight {
    stop: Stop,
    packet: Packet,
    /// The packet has already crossed the downlink of its stop (or does not cross it,
    /// as a hairpinned packet does not cross its NAT's).
    past_downlink: bool,
}

/// The simulator. See the crate docs.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    now: Instant,
    rng: SplitMix64,
    hosts: Vec<Host>,
    nats: Vec<Nat>,
    /// Ordered by (arrival time, sequence number) so equal times keep send order.
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: std::collections::HashMap<u64, InFlight>,
    next_seq: u64,
    deliveries: VecDeque<Delivery>,
    blocked_routes: Vec<(IpAddr, IpAddr)>,
    stats: SimStats,
}

impl Sim {
    /// An empty network whose virtual clock starts at `epoch`.
    pub fn new(epoch: Instant, config: SimConfig) -> Self {
        Sim {
            config,
            now: epoch,
            rng: SplitMix64::new(config.seed),
            hosts: Vec::new(),
            nats: Vec::new(),
            queue: BinaryHeap::new(),
            in_flight: std::collections::HashMap::new(),
            next_seq: 0,
            deliveries: VecDeque::new(),
            blocked_routes: Vec::new(),
            stats: SimStats::default(),
        }
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Packet counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// The simulator's random generator, for tests that want seeded choices of their own.
    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }

    /// Adds a host directly on the internet.
    pub fn add_public_host(&mut self, ip: IpAddr) -> HostId {
        self.hosts.push(Host {
            attachment: Attachment::Public(ip),
            uplink_latency: self.config.uplink_latency,
            uplink: LinkState::default(),
            downlink: LinkState::default(),
        });
        HostId(self.hosts.len() - 1)
    }

    /// Adds a NAT with the public address `public_ip`.
    pub fn add_nat(&mut self, public_ip: IpAddr, config: NatConfig) -> NatId {
        self.nats.push(Nat {
            state: NatState::new(public_ip, config),
            uplink_latency: self.config.uplink_latency,
            outer: None,
            uplink: LinkState::default(),
            downlink: LinkState::default(),
        });
        NatId(self.nats.len() - 1)
    }

    /// Adds a NAT whose WAN side sits on the LAN of `outer` with the private address
    /// `wan_private_ip`: a home router behind an ISP router (double NAT) or a site behind
    /// carrier-grade NAT. Its outbound packets are translated by it, cross the outer LAN
    /// (`lan_latency`) and are translated again by `outer` (and by `outer`'s own outer
    /// NAT, if it is nested too). Hosts on `outer`'s LAN reach it at `wan_private_ip`
    /// without crossing the internet; from the internet that address is unroutable.
    ///
    /// # Panics
    ///
    /// If `outer` is not a NAT of this simulator. (A NAT can only be nested in one that
    /// already exists, so the nesting never forms a cycle.)
    pub fn add_nat_behind(
        &mut self,
        outer: NatId,
        wan_private_ip: IpAddr,
        config: NatConfig,
    ) -> NatId {
        assert!(
            outer.0 < self.nats.len(),
            "add_nat_behind: {outer:?} is not a NAT of this simulator"
        );
        self.nats.push(Nat {
            state: NatState::new(wan_private_ip, config),
            uplink_latency: self.config.uplink_latency,
            outer: Some(outer),
            uplink: LinkState::default(),
            downlink: LinkState::default(),
        });
        NatId(self.nats.len() - 1)
    }

    /// The NAT whose LAN `nat`'s WAN side is on, for a NAT added with
    /// [`Sim::add_nat_behind`]; `None` for a top-level NAT or an unknown id.
    pub fn nat_outer(&self, nat: NatId) -> Option<NatId> {
        self.nats.get(nat.0).and_then(|n| n.outer)
    }

    /// Adds a host on the LAN behind `nat`.
    pub fn add_host_behind(&mut self, nat: NatId, private_ip: IpAddr) -> HostId {
        self.hosts.push(Host {
            attachment: Attachment::BehindNat(nat, private_ip),
            uplink_latency: self.config.uplink_latency,
            uplink: LinkState::default(),
            downlink: LinkState::default(),
        });
        HostId(self.hosts.len() - 1)
    }

    /// Moves a host (Wi-Fi → LTE, new DHCP lease, cable pulled). Packets in flight to
    /// its old address are dropped on arrival.
    pub fn attach(&mut self, host: HostId, attachment: Attachment) {
        if let Some(h) = self.hosts.get_mut(host.0) {
            h.attachment = attachment;
        }
    }

    /// Where a host is attached.
    pub fn attachment(&self, host: HostId) -> Option<Attachment> {
        self.hosts.get(host.0).map(|h| h.attachment)
    }

    /// Sets the uplink latency of a public host's or a NAT's site.
    pub fn set_host_uplink_latency(&mut self, host: HostId, latency: Duration) {
        if let Some(h) = self.hosts.get_mut(host.0) {
            h.uplink_latency = latency;
        }
    }

    /// Sets the uplink latency of a NAT's site (used only by a top-level NAT: a nested
    /// NAT's packets reach the internet through its outer NAT's uplink).
    pub fn set_nat_uplink_latency(&mut self, nat: NatId, latency: Duration) {
        if let Some(n) = self.nats.get_mut(nat.0) {
            n.uplink_latency = latency;
        }
    }

    /// Sets the link of a host's own interface in the uplink direction: every packet the
    /// host sends (to the internet for a public host, onto the LAN for one behind a
    /// NAT) queues there first. Takes effect for packets sent from now on: call it
    /// again to model a capacity drop or rise; packets already queued keep their timing.
    pub fn set_host_uplink(&mut self, host: HostId, link: Link) {
        if let Some(h) = self.hosts.get_mut(host.0) {
            h.uplink.link = link;
        }
    }

    /// Sets the link of a host's own interface in the downlink direction: every packet
    /// that reaches the host queues there before it is delivered. Takes effect as
    /// [`Sim::set_host_uplink`] does.
    pub fn set_host_downlink(&mut self, host: HostId, link: Link) {
        if let Some(h) = self.hosts.get_mut(host.0) {
            h.downlink.link = link;
        }
    }

    /// Sets the link of a NAT's WAN side in the uplink direction: every packet the NAT
    /// forwards out of its WAN side (to the internet, or onto the outer LAN for a
    /// nested NAT) queues there after translation, so the hosts behind it share it.
    /// Hairpinned packets do not cross it. Takes effect as [`Sim::set_host_uplink`]
    /// does.
    pub fn set_nat_uplink(&mut self, nat: NatId, link: Link) {
        if let Some(n) = self.nats.get_mut(nat.0) {
            n.uplink.link = link;
        }
    }

    /// Sets the link of a NAT's WAN side in the downlink direction: every packet that
    /// arrives at the WAN side queues there before the NAT translates it (a shaper on
    /// the ISP's side). Hairpinned packets do not cross it. Takes effect as
    /// [`Sim::set_host_uplink`] does.
    pub fn set_nat_downlink(&mut self, nat: NatId, link: Link) {
        if let Some(n) = self.nats.get_mut(nat.0) {
            n.downlink.link = link;
        }
    }

    /// Bytes waiting in (or being serialized by) one of a host's links now; 0 for an
    /// unknown host.
    pub fn host_queued_bytes(&self, host: HostId, direction: LinkDirection) -> usize {
        self.hosts.get(host.0).map_or(0, |h| match direction {
            LinkDirection::Up => h.uplink.queued_bytes(self.now),
            LinkDirection::Down => h.downlink.queued_bytes(self.now),
        })
    }

    /// Bytes waiting in (or being serialized by) one of a NAT's WAN links now; 0 for
    /// an unknown NAT.
    pub fn nat_queued_bytes(&self, nat: NatId, direction: LinkDirection) -> usize {
        self.nats.get(nat.0).map_or(0, |n| match direction {
            LinkDirection::Up => n.uplink.queued_bytes(self.now),
            LinkDirection::Down => n.downlink.queued_bytes(self.now),
        })
    }

    /// Blocks (or unblocks) the internet route between two public addresses, in both
    /// directions: packets between them are dropped in the core (counted as lost). Models
    /// an outage or a firewall on one path while other paths keep working.
    pub fn set_route_blocked(&mut self, a: IpAddr, b: IpAddr, blocked: bool) {
        self.blocked_routes
            .retain(|&(x, y)| !((x, y) == (a, b) || (x, y) == (b, a)));
        if blocked {
            self.blocked_routes.push((a, b));
        }
    }

    /// Forgets every mapping of a NAT (a router reboot).
    pub fn flush_nat(&mut self, nat: NatId) {
        if let Some(n) = self.nats.get_mut(nat.0) {
            n.state.flush();
        }
    }

    /// Mappings and conntrack entries a NAT currently holds (expired ones included
    /// until pruned).
    pub fn nat_entries(&self, nat: NatId) -> usize {
        self.nats.get(nat.0).map_or(0, |n| n.state.entry_count())
    }

    /// The WAN address of a NAT: its public address, or for a NAT added with
    /// [`Sim::add_nat_behind`] its private address on the outer NAT's LAN.
    pub fn nat_public_ip(&self, nat: NatId) -> Option<IpAddr> {
        self.nats.get(nat.0).map(|n| n.state.public_ip)
    }

    /// Sends a datagram from `from` (an address of an attached host: its public or
    /// private IP) to `to`, with `ttl` or [`DEFAULT_TTL`]. Takes effect at the current
    /// virtual time.
    ///
    /// The sender is the first host attached at `from`'s IP, so give hosts on different
    /// LANs different private addresses if they are to send.
    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, ttl: Option<u8>, payload: Vec<u8>) {
        self.stats.sent += 1;
        let packet = Packet {
            from,
            to,
            ttl: ttl.unwrap_or(DEFAULT_TTL),
            payload,
        };
        let Some(sender) = self.host_at(from.ip()) else {
            self.stats.detached += 1;
            return;
        };
        let now = self.now;
        let Some(host) = self.hosts.get_mut(sender.0) else {
            self.stats.detached += 1;
            return;
        };
        let attachment = host.attachment;
        let latency = host.uplink_latency;
        if attachment == Attachment::Detached {
            self.stats.detached += 1;
            return;
        }
        // The host's own interface first.
        let Some(queued) = host.uplink.enqueue(now, packet.payload.len()) else {
            self.stats.queue_dropped += 1;
            return;
        };
        match attachment {
            Attachment::Public(_) => self.cross_internet(packet, queued + latency),
            Attachment::BehindNat(nat, _) => {
                // Same LAN (another host, or a nested NAT's WAN side): straight there.
                // Otherwise through the NAT.
                let stop = self.lan_stop(nat, to.ip()).unwrap_or(Stop::NatInside(nat));
                self.schedule(queued + self.config.lan_latency, stop, packet);
            }
            Attachment::Detached => self.stats.detached += 1,
        }
    }

    /// Time of the next packet arrival, if any packet is in flight.
    pub fn next_event_time(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    /// Moves virtual time to `until` (never backwards), processing every arrival due
    /// by then in order; deliveries queue up for [`Sim::poll_delivery`].
    pub fn advance_to(&mut self, until: Instant) {
        while let Some(&Reverse((at, seq))) = self.queue.peek() {
            if at > until {
                break;
            }
            self.queue.pop();
            if at > self.now {
                self.now = at;
            }
            if let Some(flight) = self.in_flight.remove(&seq) {
                self.arrive(flight);
            }
        }
        if until > self.now {
            self.now = until;
        }
    }

    /// The next delivered packet, oldest first.
    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        self.deliveries.pop_front()
    }

    // ---- internals ----------------------------------------------------------------

    fn host_at(&self, ip: IpAddr) -> Option<HostId> {
        self.hosts
            .iter()
            .position(|h| match h.attachment {
                Attachment::Public(a) | Attachment::BehindNat(_, a) => a == ip,
                Attachment::Detached => false,
            })
            .map(HostId)
    }

    /// What owns `ip` on the LAN of `nat`: a host attached there, or the WAN side of a
    /// NAT nested behind `nat`.
    fn lan_stop(&self, nat: NatId, ip: IpAddr) -> Option<Stop> {
        if let Some(h) = self
            .hosts
            .iter()
            .position(|h| h.attachment == Attachment::BehindNat(nat, ip))
        {
            return Some(Stop::Host(HostId(h)));
        }
        self.nats
            .iter()
            .position(|n| n.outer == Some(nat) && n.state.public_ip == ip)
            .map(|n| Stop::NatOutside(NatId(n)))
    }

    fn schedule(&mut self, delay: Duration, stop: Stop, packet: Packet) {
        self.schedule_flight(
            delay,
            InFlight {
                stop,
                packet,
                past_downlink: false,
            },
        );
    }

    fn schedule_flight(&mut self, delay: Duration, flight: InFlight) {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.stats.overflow += 1;
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.push(Reverse((self.now + delay, seq)));
        self.in_flight.insert(seq, flight);
    }

    /// Sends a packet across the internet core from a site with `source_uplink`.
    fn cross_internet(&mut self, mut packet: Packet, source_uplink: Duration) {
        if packet.ttl <= self.config.internet_hops {
            self.stats.ttl_expired += 1;
            return;
        }
        packet.ttl -= self.config.internet_hops;
        let (src, dst) = (packet.from.ip(), packet.to.ip());
        if self
            .blocked_routes
            .iter()
            .any(|&(x, y)| (x, y) == (src, dst) || (x, y) == (dst, src))
        {
            self.stats.lost += 1;
            return;
        }
        if self.rng.chance(self.config.loss_per_million) {
            self.stats.lost += 1;
            return;
        }
        let jitter_nanos = u64::try_from(self.config.jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(self.rng.below(jitter_nanos.saturating_add(1)));
        // Only top-level NATs are on the internet; a nested NAT's WAN address is private.
        let nat = self
            .nats
            .iter()
            .position(|n| n.outer.is_none() && n.state.public_ip == packet.to.ip());
        let (stop, dest_uplink) = match nat {
            Some(index) => (
                Stop::NatOutside(NatId(index)),
                self.nats[index].uplink_latency,
            ),
            None => match self.host_at(packet.to.ip()) {
                Some(h) if matches!(self.hosts[h.0].attachment, Attachment::Public(_)) => {
                    (Stop::Host(h), self.hosts[h.0].uplink_latency)
                }
                _ => {
                    self.stats.unroutable += 1;
                    return;
                }
            },
        };
        self.schedule(source_uplink + dest_uplink + jitter, stop, packet);
    }

    /// Puts an arriving packet through the downlink of its stop (a host's interface or
    /// a NAT's WAN side); returns it if it passes now, or `None` if it was dropped or
    /// has to wait in the queue (then it arrives again, past the downlink, later).
    fn through_downlink(&mut self, flight: InFlight) -> Option<InFlight> {
        if flight.past_downlink {
            return Some(flight);
        }
        let link = match flight.stop {
            Stop::Host(host) => self.hosts.get_mut(host.0).map(|h| &mut h.downlink),
            Stop::NatOutside(nat) => self.nats.get_mut(nat.0).map(|n| &mut n.downlink),
            Stop::NatInside(_) => None,
        };
        let Some(link) = link else {
            return Some(flight);
        };
        match link.enqueue(self.now, flight.packet.payload.len()) {
            None => {
                self.stats.queue_dropped += 1;
                None
            }
            Some(Duration::ZERO) => Some(flight),
            Some(wait) => {
                self.schedule_flight(
                    wait,
                    InFlight {
                        past_downlink: true,
                        ..flight
                    },
                );
                None
            }
        }
    }

    fn arrive(&mut self, flight: InFlight) {
        let Some(flight) = self.through_downlink(flight) else {
            return;
        };
        let InFlight {
            stop, mut packet, ..
        } = flight;
        match stop {
            Stop::Host(host) => {
                let owns = match self.hosts.get(host.0).map(|h| h.attachment) {
                    Some(Attachment::Public(ip) | Attachment::BehindNat(_, ip)) => {
                        ip == packet.to.ip()
                    }
                    _ => false,
                };
                if !owns {
                    self.stats.detached += 1;
                    return;
                }
                if self.deliveries.len() >= MAX_UNPOLLED_DELIVERIES {
                    self.stats.overflow += 1;
                    return;
                }
                self.stats.delivered += 1;
                self.deliveries.push_back(Delivery {
                    at: self.now,
                    host,
                    from: packet.from,
                    to: packet.to,
                    ttl: packet.ttl,
                    payload: packet.payload,
                });
            }
            Stop::NatInside(nat_id) => {
                // The sender (a host, or a nested NAT's WAN side) may have moved away
                // while the packet was on the LAN.
                if self.lan_stop(nat_id, packet.from.ip()).is_none() {
                    self.stats.detached += 1;
                    return;
                }
                if packet.ttl <= 1 {
                    self.stats.ttl_expired += 1;
                    return;
                }
                packet.ttl -= 1;
                let now = self.now;
                let Some(nat) = self.nats.get_mut(nat_id.0) else {
                    return;
                };
                let public_ip = nat.state.public_ip;
                let uplink = nat.uplink_latency;
                let outer = nat.outer;
                let port = match nat
                    .state
                    .outbound(now, packet.from, packet.to, &mut self.rng)
                {
                    Ok(port) => port,
                    Err(_) => {
                        self.stats.nat_dropped += 1;
                        return;
                    }
                };
                packet.from = SocketAddr::new(public_ip, port);
                if packet.to.ip() == public_ip {
                    if !nat.state.config.hairpinning {
                        self.stats.nat_dropped += 1;
                        return;
                    }
                    // Loop back in as if it came from outside, without crossing the
                    // WAN links.
                    self.schedule_flight(
                        Duration::ZERO,
                        InFlight {
                            stop: Stop::NatOutside(nat_id),
                            packet,
                            past_downlink: true,
                        },
                    );
                    return;
                }
                let Some(queued) = nat.uplink.enqueue(now, packet.payload.len()) else {
                    self.stats.queue_dropped += 1;
                    return;
                };
                match outer {
                    // A nested NAT's WAN side is on the outer LAN: to a neighbour there,
                    // or into the outer NAT.
                    Some(outer) => {
                        let stop = self
                            .lan_stop(outer, packet.to.ip())
                            .unwrap_or(Stop::NatInside(outer));
                        self.schedule(queued + self.config.lan_latency, stop, packet);
                    }
                    None => self.cross_internet(packet, queued + uplink),
                }
            }
            Stop::NatOutside(nat_id) => {
                if packet.ttl <= 1 {
                    self.stats.ttl_expired += 1;
                    return;
                }
                packet.ttl -= 1;
                let now = self.now;
                let Some(nat) = self.nats.get_mut(nat_id.0) else {
                    return;
                };
                match nat.state.inbound(now, packet.to.port(), packet.from) {
                    Ok(internal) => {
                        packet.to = internal;
                        match self.lan_stop(nat_id, internal.ip()) {
                            Some(stop) => self.schedule(self.config.lan_latency, stop, packet),
                            None => self.stats.detached += 1,
                        }
                    }
                    Err(reason) => {
                        self.stats.nat_dropped += 1;
                        if reason == NatDrop::ConntrackCollision {
                            self.stats.conntrack_collisions += 1;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
