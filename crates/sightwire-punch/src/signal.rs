//! Messages that travel between the peers through the rendezvous (never directly).
//!
//! These are plain Rust types on purpose: `sightwire-signal` maps them to protobuf. Every
//! field is documented with its meaning and limit so the mapping is mechanical.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::probe::PunchKey;
use crate::role::Role;

/// Most candidates a [`CandidateSet`] may carry; extra candidates are ignored (the
/// lowest-priority ones, after sorting by priority).
pub const MAX_CANDIDATES_PER_SET: usize = 16;

/// How a candidate address was learned.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub enum CandidateKind {
    /// An address of a local interface.
    Host,
    /// The address the rendezvous saw our packets come from (our NAT's mapping).
    ServerReflexive,
    /// An address learned from an authenticated check that arrived from an address we
    /// did not know. Never signaled; learned by the receiving agent itself.
    PeerReflexive,
    /// A relay allocation. `address` is the relay server; datagrams to it are wrapped in
    /// relay framing by the driver (see [`crate::Transmit::via_relay`]).
    Relay,
}

/// One address at which a peer may be reachable.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Candidate {
    /// How it was learned.
    pub kind: CandidateKind,
    /// The transport address (UDP).
    pub address: SocketAddr,
    /// Higher is tried (and preferred) first among candidates of equal path kind.
    /// [`Candidate::new`] computes a default from the kind and address.
    pub priority: u32,
}

impl Candidate {
    /// A candidate with the default priority for its kind and address: host addresses
    /// on private networks first, then public host, server-reflexive, peer-reflexive,
    /// relay.
    pub fn new(kind: CandidateKind, address: SocketAddr) -> Self {
        let type_preference: u32 = match kind {
            CandidateKind::Host if is_private(address.ip()) => 126,
            CandidateKind::Host => 110,
            CandidateKind::PeerReflexive => 100,
            CandidateKind::ServerReflexive => 90,
            CandidateKind::Relay => 0,
        };
        let family: u32 = if address.is_ipv4() { 1 } else { 0 };
        Candidate {
            kind,
            address,
            priority: (type_preference << 24) | (family << 16),
        }
    }
}

/// True for addresses that only make sense on a local network: RFC 1918, loopback,
/// link-local, IPv6 unique-local and link-local. A working pair to a peer's *host*
/// candidate at such an address is a LAN path.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// A peer's full candidate list for one network generation.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct CandidateSet {
    /// Increases by one each time the sender's network changes. A receiver replaces its
    /// view of the sender's candidates when the generation grows, merges when it is
    /// equal and ignores an older one.
    pub generation: u32,
    /// At most [`MAX_CANDIDATES_PER_SET`] candidates.
    pub candidates: Vec<Candidate>,
}

/// What the rendezvous tells each side to begin an attempt.
#[derive(Clone, PartialEq, Eq, Debug)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct StartAttempt {
    /// This agent's role in the attempt.
    pub role: Role,
    /// Secret shared by both sides for this attempt; authenticates every probe.
    pub key: PunchKey,
    /// How long after *receiving* this message to start punching. The rendezvous picks
    /// it per side (allowing for the signaling delay it measured to each) so that both
    /// sides start together.
    pub start_in: Duration,
    /// Our own address as the rendezvous saw it, if known.
    pub local_reflexive: Option<SocketAddr>,
    /// Our relay allocation (the relay server address), if the rendezvous granted one.
    pub relay: Option<SocketAddr>,
    /// The peer's candidates as the rendezvous knows them (host candidates from the
    /// peer's request, its server-reflexive address, its relay).
    pub remote: CandidateSet,
}

/// A message between an agent and the rendezvous or, through it, the peer.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum PunchSignal {
    /// Rendezvous → agent: begin the attempt.
    Start(StartAttempt),
    /// Agent → peer (through the rendezvous): the sender's candidates.
    Candidates(CandidateSet),
    /// Rendezvous → agent: the address the rendezvous now sees us at (sent again after
    /// the driver re-registers following a network change).
    LocalReflexive(SocketAddr),
}
