//! The hole-punch agent: a sans-IO state machine driven by `handle_*` inputs and drained
//! with `poll_*` outputs. The strategy and every timer are described in `spec/punch.md`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sightwire_limits::{Rate, TokenBucket};

use crate::probe::{MAX_PROBE_LEN, Probe, ProbeKind, PunchKey, TRANSACTION_ID_LEN, TransactionId};
use crate::role::Role;
use crate::signal::{
    Candidate, CandidateKind, CandidateSet, MAX_CANDIDATES_PER_SET, PunchSignal, StartAttempt,
    is_private,
};

/// TTL of NAT-opening packets: enough to leave our own NAT (one router), too little to
/// reach the peer's NAT, so the peer's NAT never sees an unsolicited packet from us.
pub const OPEN_TTL: u8 = 2;
/// Least delay between a pair's opening packet and its first check, so the opening
/// packets of both sides have passed their own NATs before either side's checks arrive.
/// The opening packets of the pairs known at `Start` leave when `Start` arrives, so the
/// rendezvous's `start_in` (50 ms) already provides this lead and the first checks leave
/// at the start itself.
pub const OPEN_LEAD: Duration = Duration::from_millis(50);
/// First retransmission timeout of a connectivity check; doubles per retransmission.
pub const CHECK_RTO_INITIAL: Duration = Duration::from_millis(100);
/// Largest retransmission timeout while connecting.
pub const CHECK_RTO_MAX: Duration = Duration::from_millis(1600);
/// Interval of background re-checks of a relay pair that stopped answering while a
/// direct path carries the call (the relay is the fallback, so it is kept in view).
pub const BACKGROUND_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// While a path is selected, pairs that could beat it are re-checked in synchronised
/// rounds this far apart rather than continuously: longer than the 30 s for which a
/// Linux conntrack entry (a colliding one included) outlives its last packet, so each
/// round starts from clean NAT state on both sides instead of refreshing a collision.
pub const REPUNCH_INTERVAL: Duration = Duration::from_secs(35);
/// Length of one re-punch round: connect-speed checks, with opening packets first.
pub const REPUNCH_WINDOW: Duration = Duration::from_secs(3);
/// Every this many checks on a pair, an opening packet is sent again first (the peer's
/// NAT may have reset, or a conntrack collision may have eaten the first one).
pub const REOPEN_EVERY: u32 = 3;
/// Time after the start at which port prediction begins (direct pairs had their chance).
pub const PREDICTION_AFTER: Duration = Duration::from_millis(500);
/// Ports above the peer's server-reflexive port probed per prediction round.
pub const PREDICTION_WINDOW: u16 = 16;
/// Interval between prediction rounds.
pub const PREDICTION_ROUND_INTERVAL: Duration = Duration::from_secs(1);
/// Hard cap on prediction probes per attempt (reset by a network change).
pub const MAX_PREDICTION_PROBES: u32 = 96;
/// The controlling agent waits this long after the start for a LAN pair before
/// nominating a direct public pair (unless no LAN pair is still being checked). LAN
/// checks start with the public ones and a LAN answers in a few milliseconds, so a LAN
/// path that exists has normally answered by then; a later one still wins through an
/// upgrade. Shorter than any internet round trip worth waiting for.
pub const LAN_WAIT: Duration = Duration::from_millis(50);
/// The controlling agent nominates a working relay pair once this long has passed since
/// the start without a working direct pair (at once when it has no direct pair to
/// check): long enough for a direct pair that works at once (one check round trip from
/// the start, on paths up to ~200 ms RTT) to be chosen without a detour, short enough
/// that a call that needs the relay starts on it at once.
/// Direct pairs keep being checked for [`DIRECT_WINDOW`] and take over when they work.
pub const RELAY_AFTER: Duration = Duration::from_millis(200);
/// While the relay carries a new call, direct pairs (and port prediction) are checked
/// until this long after the start, as if nothing were selected; the first that works is
/// nominated and the call moves to it (the session and the media stream do not notice).
/// Later chances are the re-punch rounds.
pub const DIRECT_WINDOW: Duration = Duration::from_secs(3);
/// Without a selected path this long after the start (or after a path was lost), the
/// attempt fails.
pub const FAIL_AFTER: Duration = Duration::from_secs(10);
/// Deadline instead of [`FAIL_AFTER`] after a selected path was lost. Longer than a
/// keepalive interval plus loss detection: if the peer's NAT rebooted, the peer can only
/// be reached again once it sends something, which it does at its next keepalive at the
/// latest (15 s), and it must then be given time to be checked and nominated.
pub const RECOVERY_FAIL_AFTER: Duration = Duration::from_secs(30);
/// Interval of keepalive checks on the selected pair and on a working relay pair;
/// below the ~30 s UDP mapping lifetime of common NATs.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// First retransmission timeout of a keepalive check; doubles per retransmission.
pub const LIVENESS_RTO: Duration = Duration::from_millis(500);
/// Keepalive checks sent without any answer before a working pair is declared dead
/// (0.5 s + 1 s + 2 s = 3.5 s after the first one).
pub const LIVENESS_RETRIES: u32 = 3;
/// Nominating checks sent without an answer before the controlling agent gives up on
/// that pair and nominates another (100+200+400+800+1600 ms ≈ 3.1 s).
pub const NOMINATION_RETRIES: u32 = 5;
/// Most local host candidates kept; extra ones are ignored.
pub const MAX_HOST_CANDIDATES: usize = 8;
/// Most remote candidates kept (signaled plus peer-reflexive).
pub const MAX_REMOTE_CANDIDATES: usize = 16;
/// Most peer-reflexive candidates learned per attempt.
pub const MAX_PEER_REFLEXIVE: usize = 8;
/// Most candidate pairs (one per remote address, plus the relay pair).
pub const MAX_PAIRS: usize = 32;
/// Most outstanding check transactions; the oldest is forgotten when full.
pub const MAX_PENDING_TRANSACTIONS: usize = 64;
/// Request transaction ids remembered to drop replays.
pub const REPLAY_WINDOW: usize = 64;
/// Most queued transmits; further transmits are dropped (and counted) until drained.
pub const MAX_TRANSMIT_QUEUE: usize = 64;
/// Most queued events; the oldest is dropped (and counted) when full.
pub const MAX_EVENT_QUEUE: usize = 16;
/// Sustained rate of probes an agent sends, all kinds together (packets per second).
pub const PROBE_RATE_PER_SECOND: u64 = 200;
/// Burst of probes an agent may send at once.
pub const PROBE_BURST: u64 = 32;

/// [`PROBE_RATE_PER_SECOND`] and [`PROBE_BURST`] as a bucket rate (both fit a `u32`).
const PROBE_RATE: Rate = Rate::new(PROBE_RATE_PER_SECOND as u32, PROBE_BURST as u32);
const _: () = assert!(PROBE_RATE_PER_SECOND <= u32::MAX as u64);
const _: () = assert!(PROBE_BURST <= u32::MAX as u64);

/// How a path reaches the peer, best first: LAN > direct public > relay.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PathKind {
    /// Relayed through the relay server.
    Relay,
    /// Direct over the public internet (through NATs).
    Direct,
    /// Direct on a local network (the peer's private host address answered).
    Lan,
}

impl PathKind {
    /// `lan`, `direct` or `relay`: how logs and reports name it.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Lan => "lan",
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
        }
    }
}

/// The path an event talks about.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct PathInfo {
    /// Where to send: the peer's address, or the relay server when `via_relay`.
    pub remote: SocketAddr,
    /// True when datagrams to `remote` must be wrapped in relay framing.
    pub via_relay: bool,
    /// LAN, direct or relay.
    pub kind: PathKind,
    /// Smoothed round-trip time of the path's checks.
    pub rtt: Duration,
}

/// Why an attempt failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum FailReason {
    /// No pair (relay included) worked within [`FAIL_AFTER`] (or
    /// [`RECOVERY_FAIL_AFTER`] after a loss).
    NoWorkingPath,
}

/// What the agent reports to its driver.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Event {
    /// The first path was selected: the session may start.
    Connected(PathInfo),
    /// The selected path changed (upgrade relay → direct, direct → LAN, or a new path
    /// after a loss or a network change). Send on the new path from now on.
    PathChanged(PathInfo),
    /// The selected path stopped answering. No path is selected until the next
    /// `PathChanged`; the agent is already checking for one.
    PathLost(PathInfo),
    /// Nothing worked within the deadline. The agent stays idle until
    /// `network_changed` or a new `Start`.
    Failed(FailReason),
}

/// A datagram to send. Probes are small, so the bytes live inline: no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Transmit {
    /// Destination address; the relay server when `via_relay`.
    pub destination: SocketAddr,
    /// Wrap the payload in relay framing for our relay allocation.
    pub via_relay: bool,
    /// Send with this IP TTL / hop limit (NAT-opening packets); `None` = socket default.
    pub ttl: Option<u8>,
    buffer: [u8; MAX_PROBE_LEN],
    len: u8,
}

impl Transmit {
    /// The datagram's bytes.
    pub fn payload(&self) -> &[u8] {
        self.buffer.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// Counters of what the agent dropped or limited; for logs and tests.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams received before a `Start` gave us a key.
    pub dropped_not_started: u64,
    /// Datagrams that failed to decode or authenticate.
    pub dropped_invalid: u64,
    /// Authenticated probes carrying our own role (reflected back at us).
    pub dropped_reflected: u64,
    /// Requests whose transaction id was seen recently (replays).
    pub dropped_replayed: u64,
    /// Responses matching no outstanding transaction from that address.
    pub dropped_unmatched: u64,
    /// Transmits dropped because the queue was full.
    pub transmit_queue_full: u64,
    /// Transmits dropped by the probe rate limit.
    pub rate_limited: u64,
    /// Peer-reflexive candidates not learned because the table was full.
    pub peer_reflexive_rejected: u64,
    /// Events dropped because the event queue was full.
    pub queue_overflow: u64,
    /// Probes sent (all kinds).
    pub probes_sent: u64,
    /// Prediction probes sent in the current attempt.
    pub prediction_probes: u32,
}

/// Construction parameters of an [`Agent`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Addresses of the local interfaces the socket is reachable at (at most
    /// [`MAX_HOST_CANDIDATES`] are used).
    pub host_candidates: Vec<SocketAddr>,
    /// Seed of the agent's random number generator (transaction ids). Give each agent
    /// a fresh random seed in production and a fixed one in tests.
    pub seed: u64,
}

impl Config {
    /// An agent reachable at `host_candidates`, its random numbers drawn from `seed`.
    pub fn new(host_candidates: Vec<SocketAddr>, seed: u64) -> Self {
        Self {
            host_candidates,
            seed,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Idle,
    Waiting { start_at: Instant },
    Running,
    Failed,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CheckMode {
    /// Initial checks with backoff up to `CHECK_RTO_MAX`.
    Connect,
    /// Slow checks on a pair better than the selected one.
    Background,
    /// Keepalive / liveness checks on a working pair.
    Liveness,
    /// Not checked.
    Idle,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct PairKey {
    remote: SocketAddr,
    via_relay: bool,
}

#[derive(Clone, Debug)]
struct Pair {
    key: PairKey,
    kind: PathKind,
    priority: u32,
    mode: CheckMode,
    next_check: Option<Instant>,
    /// Checks sent in the current series (reset by success or a mode change).
    sent: u32,
    /// Send an opening packet before the next check.
    open_pending: bool,
    /// When the opening packet sent on `Start` (before the attempt ran) left.
    opened_early: Option<Instant>,
    valid: bool,
    rtt: Option<Duration>,
    /// Controlling side: the next checks carry the nominate flag.
    nominating: bool,
}

impl Pair {
    fn new(key: PairKey, remote_kind: CandidateKind, priority: u32) -> Self {
        let kind = if key.via_relay {
            PathKind::Relay
        } else if remote_kind == CandidateKind::Host && is_private(key.remote.ip()) {
            PathKind::Lan
        } else {
            PathKind::Direct
        };
        Pair {
            key,
            kind,
            priority,
            mode: CheckMode::Idle,
            next_check: None,
            sent: 0,
            open_pending: false,
            opened_early: None,
            valid: false,
            rtt: None,
            nominating: false,
        }
    }

    /// NAT-opening packets only make sense towards public addresses of a NATed peer.
    fn wants_open(&self) -> bool {
        !self.key.via_relay && self.kind == PathKind::Direct
    }

    fn info(&self) -> PathInfo {
        PathInfo {
            remote: self.key.remote,
            via_relay: self.key.via_relay,
            kind: self.kind,
            rtt: self.rtt.unwrap_or(Duration::ZERO),
        }
    }

    fn start_checks(&mut self, mode: CheckMode, now: Instant) {
        self.mode = mode;
        self.sent = 0;
        self.open_pending = self.wants_open();
        self.next_check = Some(now);
        // Opened when `Start` arrived: check as soon as the opening packet has its lead.
        if let Some(opened) = self.opened_early.take()
            && self.open_pending
        {
            self.open_pending = false;
            self.next_check = Some(now.max(opened + OPEN_LEAD));
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    transaction: TransactionId,
    key: PairKey,
    sent_at: Instant,
    nominate: bool,
}

/// Deterministic generator for transaction ids (SplitMix64). Transaction ids need to be
/// unique, not secret: every probe is authenticated by the attempt key.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The hole-punch agent for one peer. See the crate docs for the run loop.
#[derive(Debug)]
pub struct Agent {
    rng: SplitMix64,
    phase: Phase,
    role: Role,
    key: Option<PunchKey>,
    /// When checking began (reset after a loss or a network change without a path).
    attempt_start: Option<Instant>,
    /// The current attempt follows the loss of a selected path.
    recovering: bool,
    local_hosts: Vec<SocketAddr>,
    local_reflexive: Option<SocketAddr>,
    local_relay: Option<SocketAddr>,
    generation: u32,
    remote_generation: Option<u32>,
    remote: Vec<Candidate>,
    pairs: Vec<Pair>,
    pending: VecDeque<Pending>,
    seen_requests: VecDeque<TransactionId>,
    selected: Option<PairKey>,
    /// Controlled side: the pair the controlling agent nominated last.
    nominated_by_peer: Option<PairKey>,
    ever_connected: bool,
    prediction_next: Option<Instant>,
    /// Start of the next re-punch round (while a path is selected).
    repunch_next: Option<Instant>,
    /// End of the current re-punch round or of checks triggered while a path is selected.
    repunch_until: Option<Instant>,
    observed: Option<SocketAddr>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    signals: VecDeque<PunchSignal>,
    /// Paces every probe sent; created full at the first probe (the agent has no clock
    /// before that).
    probe_bucket: Option<TokenBucket>,
    last_now: Option<Instant>,
    stats: Stats,
}

impl Agent {
    /// A new agent, idle until a [`PunchSignal::Start`] arrives through
    /// [`Agent::handle_signal`].
    pub fn new(config: Config) -> Self {
        let mut local_hosts = config.host_candidates;
        local_hosts.truncate(MAX_HOST_CANDIDATES);
        Agent {
            rng: SplitMix64(config.seed),
            phase: Phase::Idle,
            role: Role::Controlled,
            key: None,
            attempt_start: None,
            recovering: false,
            local_hosts,
            local_reflexive: None,
            local_relay: None,
            generation: 0,
            remote_generation: None,
            remote: Vec::new(),
            pairs: Vec::new(),
            pending: VecDeque::new(),
            seen_requests: VecDeque::new(),
            selected: None,
            nominated_by_peer: None,
            ever_connected: false,
            prediction_next: None,
            repunch_next: None,
            repunch_until: None,
            observed: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            signals: VecDeque::new(),
            probe_bucket: None,
            last_now: None,
            stats: Stats::default(),
        }
    }

    /// The selected path, if any: where the driver sends session packets.
    pub fn selected_path(&self) -> Option<PathInfo> {
        let key = self.selected?;
        self.pair(key).map(Pair::info)
    }

    /// Our address as the peer last saw it (from a check response), if any.
    pub fn observed_address(&self) -> Option<SocketAddr> {
        self.observed
    }

    /// Drop and rate counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Candidate pairs currently tracked (at most [`MAX_PAIRS`]); for diagnostics.
    pub fn pair_count(&self) -> usize {
        self.pairs.len()
    }

    /// The role assigned by the last `Start` (controlled before any).
    pub fn role(&self) -> Role {
        self.role
    }

    /// Our current candidates, as signaled to the peer.
    pub fn local_candidates(&self) -> CandidateSet {
        let mut candidates: Vec<Candidate> = self
            .local_hosts
            .iter()
            .map(|&a| Candidate::new(CandidateKind::Host, a))
            .collect();
        if let Some(a) = self.local_reflexive {
            candidates.push(Candidate::new(CandidateKind::ServerReflexive, a));
        }
        if let Some(a) = self.local_relay {
            candidates.push(Candidate::new(CandidateKind::Relay, a));
        }
        candidates.truncate(MAX_CANDIDATES_PER_SET);
        CandidateSet {
            generation: self.generation,
            candidates,
        }
    }

    /// A datagram whose first byte is in the punch range arrived from `from` (for a
    /// relayed datagram, the driver passes the relay server's address as `from` and the
    /// unwrapped payload). Costs at most one HMAC computation and bounded table scans.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.observe_now(now);
        let Some(key) = self.key.as_ref() else {
            self.stats.dropped_not_started += 1;
            return;
        };
        let probe = match Probe::decode(datagram, key) {
            Ok(p) => p,
            Err(_) => {
                self.stats.dropped_invalid += 1;
                return;
            }
        };
        if probe.sender == self.role {
            self.stats.dropped_reflected += 1;
            return;
        }
        let pair_key = PairKey {
            remote: from,
            via_relay: Some(from) == self.local_relay,
        };
        match probe.kind {
            ProbeKind::Request { nominate } => {
                self.on_request(now, pair_key, probe.transaction, nominate)
            }
            ProbeKind::Response { observed } => {
                self.on_response(now, pair_key, probe.transaction, observed)
            }
            ProbeKind::Open => {}
        }
        self.evaluate(now);
    }

    /// A signal from the rendezvous or, through it, from the peer.
    pub fn handle_signal(&mut self, now: Instant, signal: PunchSignal) {
        self.observe_now(now);
        match signal {
            PunchSignal::Start(start) => self.start(now, start),
            PunchSignal::Candidates(set) => self.merge_remote(now, set),
            PunchSignal::LocalReflexive(address) => {
                if self.local_reflexive != Some(address) {
                    self.local_reflexive = Some(address);
                    self.queue_candidates();
                }
            }
        }
        self.evaluate(now);
    }

    /// The local network changed (new interface addresses, e.g. Wi-Fi → LTE or a new
    /// DHCP lease). Forgets our server-reflexive address (the rendezvous sends the new
    /// one as [`PunchSignal::LocalReflexive`]), signals the new candidates to the peer,
    /// re-verifies every working pair and re-checks all others.
    pub fn network_changed(&mut self, now: Instant, host_candidates: Vec<SocketAddr>) {
        self.observe_now(now);
        self.local_hosts = host_candidates;
        self.local_hosts.truncate(MAX_HOST_CANDIDATES);
        self.local_reflexive = None;
        self.generation = self.generation.wrapping_add(1);
        self.queue_candidates();
        if matches!(self.phase, Phase::Idle | Phase::Waiting { .. }) {
            return;
        }
        self.phase = Phase::Running;
        if self.selected.is_none() {
            self.attempt_start = Some(now);
        }
        self.stats.prediction_probes = 0;
        self.prediction_next = None;
        for pair in &mut self.pairs {
            if pair.valid {
                pair.mode = CheckMode::Liveness;
                pair.sent = 0;
                pair.next_check = Some(now);
            } else {
                pair.start_checks(CheckMode::Connect, now);
            }
        }
        self.bound_checks_while_selected(now);
        self.evaluate(now);
    }

    /// Time passed; `now` is at or after the instant [`Agent::poll_timeout`] returned.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.observe_now(now);
        if let Phase::Waiting { start_at } = self.phase
            && now >= start_at
        {
            self.begin(now);
        }
        if self.phase != Phase::Running {
            return;
        }
        for index in 0..self.pairs.len() {
            let due = self
                .pairs
                .get(index)
                .and_then(|p| p.next_check)
                .is_some_and(|t| t <= now);
            if due {
                self.fire_pair(now, index);
            }
        }
        self.run_repunch_rounds(now);
        self.predict(now);
        self.evaluate(now);
        if self.selected.is_none()
            && self.fail_deadline().is_some_and(|d| now >= d)
            && self.phase == Phase::Running
        {
            self.phase = Phase::Failed;
            self.repunch_next = None;
            self.repunch_until = None;
            for pair in &mut self.pairs {
                pair.mode = CheckMode::Idle;
                pair.next_check = None;
            }
            self.push_event(Event::Failed(FailReason::NoWorkingPath));
        }
    }

    /// The next datagram to send, if any. Call until `None` after every input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next message for the rendezvous / the peer, if any.
    pub fn poll_signal(&mut self) -> Option<PunchSignal> {
        self.signals.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Agent::handle_timeout`] next; `None` when no timer is running.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let after = |t: Instant| self.last_now.is_none_or(|n| t > n);
        match self.phase {
            Phase::Idle | Phase::Failed => return None,
            Phase::Waiting { start_at } => return Some(start_at),
            Phase::Running => {}
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| {
            next = Some(next.map_or(t, |n| n.min(t)));
        };
        for pair in &self.pairs {
            if let Some(t) = pair.next_check {
                consider(t);
            }
        }
        for t in [self.prediction_next, self.repunch_next, self.repunch_until]
            .into_iter()
            .flatten()
        {
            consider(t);
        }
        // Port prediction also runs while a new call is on the relay (DIRECT_WINDOW).
        if let (Some(start), Some(PathKind::Relay), Some(_)) =
            (self.attempt_start, self.selected_kind(), self.repunch_until)
            && after(start + PREDICTION_AFTER)
        {
            consider(start + PREDICTION_AFTER);
        }
        if let (Some(start), None) = (self.attempt_start, self.selected) {
            for deadline in [
                start + LAN_WAIT,
                start + PREDICTION_AFTER,
                start + RELAY_AFTER,
                self.fail_deadline().unwrap_or(start + FAIL_AFTER),
            ] {
                if after(deadline) {
                    consider(deadline);
                }
            }
        }
        next
    }

    // ---- inputs -------------------------------------------------------------------

    fn observe_now(&mut self, now: Instant) {
        if self.last_now.is_none_or(|n| now > n) {
            self.last_now = Some(now);
        }
    }

    fn start(&mut self, now: Instant, start: StartAttempt) {
        self.role = start.role;
        self.key = Some(start.key);
        self.local_relay = start.relay;
        if start.local_reflexive.is_some() {
            self.local_reflexive = start.local_reflexive;
        }
        self.pairs.clear();
        self.pending.clear();
        self.seen_requests.clear();
        // Candidates the peer signaled before our Start arrived (its Start may have
        // come first) are kept and merged after the rendezvous' view below.
        let signaled_earlier = self.remote_generation.map(|generation| CandidateSet {
            generation,
            candidates: self
                .remote
                .iter()
                .filter(|c| c.kind != CandidateKind::PeerReflexive)
                .copied()
                .collect(),
        });
        self.remote.clear();
        self.remote_generation = None;
        self.selected = None;
        self.nominated_by_peer = None;
        self.ever_connected = false;
        self.prediction_next = None;
        self.repunch_next = None;
        self.repunch_until = None;
        self.stats.prediction_probes = 0;
        self.attempt_start = None;
        self.phase = Phase::Waiting {
            start_at: now + start.start_in,
        };
        self.merge_remote(now, start.remote);
        if let Some(earlier) = signaled_earlier {
            self.merge_remote(now, earlier);
        }
        self.queue_candidates();
        if start.start_in.is_zero() {
            self.begin(now);
        } else {
            self.open_early(now);
        }
    }

    /// Sends the opening packets of the direct pairs known at `Start` at once, so that
    /// the wait until the start is their lead and the first checks leave at the start.
    /// They reveal nothing to the peer (they die one hop past our NAT).
    fn open_early(&mut self, now: Instant) {
        for index in 0..self.pairs.len() {
            let Some(key) = self
                .pairs
                .get(index)
                .filter(|p| p.wants_open())
                .map(|p| p.key)
            else {
                continue;
            };
            let open = Probe {
                kind: ProbeKind::Open,
                sender: self.role,
                transaction: self.new_transaction(),
            };
            let before = self.stats.probes_sent;
            self.send_probe(now, key, Some(OPEN_TTL), &open);
            if self.stats.probes_sent > before
                && let Some(pair) = self.pairs.get_mut(index)
            {
                pair.opened_early = Some(now);
            }
        }
    }

    fn begin(&mut self, now: Instant) {
        self.phase = Phase::Running;
        self.attempt_start = Some(now);
        self.recovering = false;
        for pair in &mut self.pairs {
            pair.start_checks(CheckMode::Connect, now);
        }
    }

    fn merge_remote(&mut self, now: Instant, mut set: CandidateSet) {
        let mut peer_moved = false;
        match self.remote_generation {
            Some(g) if set.generation < g => return,
            Some(g) if set.generation > g => {
                peer_moved = true;
                // The peer's network changed: forget its old addresses, keeping pairs
                // that still work until liveness says otherwise.
                self.remote.clear();
                let selected = self.selected;
                self.pairs.retain(|p| p.valid || Some(p.key) == selected);
            }
            _ => {}
        }
        self.remote_generation = Some(set.generation);
        set.candidates
            .sort_by_key(|c| std::cmp::Reverse(c.priority));
        set.candidates.truncate(MAX_CANDIDATES_PER_SET);
        for candidate in set.candidates {
            if candidate.kind == CandidateKind::PeerReflexive {
                continue; // learned locally only, never trusted from signaling
            }
            if !self
                .remote
                .iter()
                .any(|c| c.address == candidate.address && c.kind == candidate.kind)
            {
                if self.remote.len() >= MAX_REMOTE_CANDIDATES {
                    break;
                }
                self.remote.push(candidate);
            }
            let key = if candidate.kind == CandidateKind::Relay {
                match self.local_relay {
                    Some(relay) => PairKey {
                        remote: relay,
                        via_relay: true,
                    },
                    None => continue,
                }
            } else {
                PairKey {
                    remote: candidate.address,
                    via_relay: false,
                }
            };
            self.add_pair(now, key, candidate.kind, candidate.priority);
        }
        if peer_moved && self.phase == Phase::Failed {
            // The peer is somewhere new: worth another attempt.
            self.phase = Phase::Running;
            self.attempt_start = Some(now);
            self.recovering = false;
        }
        if peer_moved && self.phase == Phase::Running {
            // Re-verify what works now and check every new address at full speed,
            // even ones no better than the current path: that path is probably gone.
            for pair in &mut self.pairs {
                if pair.valid {
                    pair.mode = CheckMode::Liveness;
                    pair.sent = 0;
                    pair.next_check = Some(now);
                } else {
                    pair.start_checks(CheckMode::Connect, now);
                }
            }
            self.bound_checks_while_selected(now);
        }
    }

    /// Adds a pair if it is new and the table has room; starts its checks if the attempt
    /// is running. Returns whether the pair exists afterwards.
    fn add_pair(&mut self, now: Instant, key: PairKey, kind: CandidateKind, priority: u32) -> bool {
        if self.pair(key).is_some() {
            return true;
        }
        if self.pairs.len() >= MAX_PAIRS {
            return false;
        }
        let mut pair = Pair::new(key, kind, priority);
        if self.phase == Phase::Running {
            match self.selected_kind() {
                Some(sel) if pair.kind <= sel => {}
                _ => pair.start_checks(CheckMode::Connect, now),
            }
        }
        self.pairs.push(pair);
        self.bound_checks_while_selected(now);
        true
    }

    fn on_request(
        &mut self,
        now: Instant,
        key: PairKey,
        transaction: TransactionId,
        nominate: bool,
    ) {
        if self.seen_requests.contains(&transaction) {
            self.stats.dropped_replayed += 1;
            return;
        }
        if self.seen_requests.len() >= REPLAY_WINDOW {
            self.seen_requests.pop_front();
        }
        self.seen_requests.push_back(transaction);

        let response = Probe {
            kind: ProbeKind::Response {
                observed: key.remote,
            },
            sender: self.role,
            transaction,
        };
        self.send_probe(now, key, None, &response);

        if self.pair(key).is_none() {
            // A check from an address we did not know: the peer's NAT mapped it there
            // (symmetric NAT, conntrack collision, roaming). Learn it.
            let learned = self
                .remote
                .iter()
                .filter(|c| c.kind == CandidateKind::PeerReflexive)
                .count();
            if learned >= MAX_PEER_REFLEXIVE || self.remote.len() >= MAX_REMOTE_CANDIDATES {
                self.stats.peer_reflexive_rejected += 1;
                return;
            }
            let candidate = Candidate::new(CandidateKind::PeerReflexive, key.remote);
            if !self.add_pair(now, key, candidate.kind, candidate.priority) {
                self.stats.peer_reflexive_rejected += 1;
                return;
            }
            self.remote.push(candidate);
        }
        if nominate && self.role == Role::Controlled {
            self.nominated_by_peer = Some(key);
        }
        let running = self.phase == Phase::Running;
        if let Some(pair) = self.pair_mut(key) {
            // Triggered check: the path works towards us, so check it back right away.
            if !pair.valid && running {
                if pair.mode == CheckMode::Idle {
                    pair.mode = CheckMode::Connect;
                    pair.sent = 0;
                }
                // No opening packet: the peer's packet just crossed our NAT.
                pair.open_pending = false;
                pair.next_check = Some(now);
            }
        }
        self.bound_checks_while_selected(now);
    }

    fn on_response(
        &mut self,
        now: Instant,
        key: PairKey,
        transaction: TransactionId,
        observed: SocketAddr,
    ) {
        let Some(index) = self
            .pending
            .iter()
            .position(|p| p.transaction == transaction && p.key == key)
        else {
            self.stats.dropped_unmatched += 1;
            return;
        };
        let Some(pending) = self.pending.remove(index) else {
            return;
        };
        if !key.via_relay {
            self.observed = Some(observed);
        }
        let sample = now.saturating_duration_since(pending.sent_at);
        if self.pair(key).is_none() {
            // Answer to a prediction probe: the peer is behind a NAT that mapped it to
            // this port; keep it as a peer-reflexive pair.
            let candidate = Candidate::new(CandidateKind::PeerReflexive, key.remote);
            if !self.add_pair(now, key, candidate.kind, candidate.priority) {
                self.stats.peer_reflexive_rejected += 1;
                return;
            }
        }
        let selected = self.selected;
        let Some(pair) = self.pair_mut(key) else {
            return;
        };
        pair.valid = true;
        pair.rtt = Some(match pair.rtt {
            Some(old) => (old * 7 + sample) / 8,
            None => sample,
        });
        pair.open_pending = false;
        if pair.nominating && !pending.nominate {
            // A late answer to an ordinary check: the nomination keeps its own
            // retransmission schedule.
        } else if Some(key) == selected || key.via_relay || pending.nominate {
            // Selected, relay fallback, or just nominated: keep it alive.
            pair.sent = 0;
            pair.mode = CheckMode::Liveness;
            pair.next_check = Some(now + KEEPALIVE_INTERVAL);
        } else {
            pair.sent = 0;
            pair.mode = CheckMode::Idle;
            pair.next_check = None;
        }
        if pending.nominate && self.role == Role::Controlling {
            if let Some(pair) = self.pair_mut(key) {
                pair.nominating = false;
            }
            // A late answer to an older nomination (the relay's, say, answered a round
            // trip after a direct pair was selected and nominated) must not undo the
            // newer selection: that flapped direct -> relay -> direct.
            if selected.is_none() || selected == Some(key) {
                self.select(now, key);
            }
        }
    }

    // ---- timers -------------------------------------------------------------------

    fn fire_pair(&mut self, now: Instant, index: usize) {
        let Some(pair) = self.pairs.get(index) else {
            return;
        };
        let key = pair.key;
        match pair.mode {
            CheckMode::Idle => {
                if let Some(p) = self.pairs.get_mut(index) {
                    p.next_check = None;
                }
                return;
            }
            CheckMode::Liveness if pair.sent >= LIVENESS_RETRIES => {
                self.pair_died(now, index);
                return;
            }
            _ if pair.nominating && pair.sent >= NOMINATION_RETRIES => {
                self.pair_died(now, index);
                return;
            }
            _ => {}
        }
        if pair.open_pending {
            let open = Probe {
                kind: ProbeKind::Open,
                sender: self.role,
                transaction: self.new_transaction(),
            };
            self.send_probe(now, key, Some(OPEN_TTL), &open);
            if let Some(p) = self.pairs.get_mut(index) {
                p.open_pending = false;
                p.next_check = Some(now + OPEN_LEAD);
            }
            return;
        }
        // The controlling agent's keepalives on the selected pair carry the nominate flag
        // too: after a change on either side (a move, a NAT reboot) the controlled agent
        // re-learns from the next keepalive which address the selection now uses.
        let keepalive_of_selected = pair.mode == CheckMode::Liveness && Some(key) == self.selected;
        let nominate = (pair.nominating || keepalive_of_selected) && self.role == Role::Controlling;
        let transaction = self.new_transaction();
        let request = Probe {
            kind: ProbeKind::Request { nominate },
            sender: self.role,
            transaction,
        };
        if self.pending.len() >= MAX_PENDING_TRANSACTIONS {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            transaction,
            key,
            sent_at: now,
            nominate,
        });
        self.send_probe(now, key, None, &request);
        let Some(p) = self.pairs.get_mut(index) else {
            return;
        };
        p.sent = p.sent.saturating_add(1);
        let backoff = |base: Duration, cap: Duration, n: u32| {
            base.saturating_mul(1u32 << n.saturating_sub(1).min(16))
                .min(cap)
        };
        let wait = match p.mode {
            CheckMode::Connect => backoff(CHECK_RTO_INITIAL, CHECK_RTO_MAX, p.sent),
            CheckMode::Background => {
                backoff(CHECK_RTO_INITIAL, BACKGROUND_CHECK_INTERVAL, p.sent).max(CHECK_RTO_MAX)
            }
            CheckMode::Liveness => backoff(LIVENESS_RTO, Duration::MAX, p.sent),
            CheckMode::Idle => Duration::ZERO,
        };
        p.next_check = Some(now + wait);
        if p.wants_open() && p.sent % REOPEN_EVERY == 0 && p.mode != CheckMode::Liveness {
            p.open_pending = true;
        }
    }

    fn pair_died(&mut self, now: Instant, index: usize) {
        let selected = self.selected;
        let has_other = self.selected.is_some();
        let Some(pair) = self.pairs.get_mut(index) else {
            return;
        };
        pair.valid = false;
        pair.nominating = false;
        let key = pair.key;
        let info = pair.info();
        let lost_selected = Some(key) == selected;
        // Keep looking for it. While something else carries the call, a relay pair is
        // re-checked slowly (it is the fallback) and any other pair waits for the next
        // re-punch round.
        if !has_other || lost_selected {
            pair.start_checks(CheckMode::Connect, now);
        } else if key.via_relay {
            pair.start_checks(CheckMode::Background, now);
        } else {
            pair.mode = CheckMode::Idle;
            pair.next_check = None;
        }
        if lost_selected {
            self.selected = None;
            self.push_event(Event::PathLost(info));
            // Re-selection: a fresh attempt window; every other non-working pair is
            // checked again at full speed.
            self.attempt_start = Some(now);
            self.recovering = true;
            self.stats.prediction_probes = 0;
            self.prediction_next = None;
            self.repunch_next = None;
            self.repunch_until = None;
            for pair in &mut self.pairs {
                if !pair.valid && pair.mode != CheckMode::Connect {
                    pair.start_checks(CheckMode::Connect, now);
                }
            }
        }
    }

    fn predict(&mut self, now: Instant) {
        let Some(start) = self.attempt_start else {
            return;
        };
        if now < start + PREDICTION_AFTER || self.selected_kind() >= Some(PathKind::Direct) {
            self.prediction_next = None;
            return;
        }
        if self.prediction_next.is_some_and(|t| now < t) {
            return;
        }
        let bases: Vec<SocketAddr> = self
            .remote
            .iter()
            .filter(|c| c.kind == CandidateKind::ServerReflexive)
            .map(|c| c.address)
            .take(2)
            .collect();
        let mut sent_any = false;
        for base in bases {
            for offset in 1..=PREDICTION_WINDOW {
                if self.stats.prediction_probes >= MAX_PREDICTION_PROBES {
                    break;
                }
                let Some(port) = base.port().checked_add(offset) else {
                    break;
                };
                let key = PairKey {
                    remote: SocketAddr::new(base.ip(), port),
                    via_relay: false,
                };
                if self.pair(key).is_some() {
                    continue;
                }
                let transaction = self.new_transaction();
                let request = Probe {
                    kind: ProbeKind::Request { nominate: false },
                    sender: self.role,
                    transaction,
                };
                if self.pending.len() >= MAX_PENDING_TRANSACTIONS {
                    self.pending.pop_front();
                }
                self.pending.push_back(Pending {
                    transaction,
                    key,
                    sent_at: now,
                    nominate: false,
                });
                self.send_probe(now, key, None, &request);
                self.stats.prediction_probes += 1;
                sent_any = true;
            }
        }
        self.prediction_next = if sent_any && self.stats.prediction_probes < MAX_PREDICTION_PROBES {
            Some(now + PREDICTION_ROUND_INTERVAL)
        } else {
            None
        };
    }

    // ---- selection ----------------------------------------------------------------

    fn evaluate(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        match self.role {
            Role::Controlled => {
                if let Some(key) = self.nominated_by_peer
                    && self.selected != Some(key)
                    && self.pair(key).is_some_and(|p| p.valid)
                {
                    self.select(now, key);
                } else if self.selected.is_none()
                    && self.ever_connected
                    && let Some(best) = self.best_valid()
                {
                    // We lost our path but the controlling agent may not have noticed
                    // (its own keepalive may still be 15 s away): carry on with the best
                    // working pair, usually the relay, until a nomination arrives. The
                    // nomination we had stands, so if that pair comes back we return to it.
                    self.select(now, best);
                }
            }
            Role::Controlling => {
                if self
                    .pairs
                    .iter()
                    .any(|p| p.nominating && p.next_check.is_some())
                {
                    return;
                }
                for pair in &mut self.pairs {
                    pair.nominating = false;
                }
                let Some(best) = self.best_valid() else {
                    return;
                };
                let Some(best_pair) = self.pair(best) else {
                    return;
                };
                let best_kind = best_pair.kind;
                let elapsed = self
                    .attempt_start
                    .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
                let ready = match self.selected_kind() {
                    Some(sel) => best_kind > sel,
                    None => match best_kind {
                        PathKind::Lan => true,
                        PathKind::Direct => {
                            elapsed >= LAN_WAIT
                                || !self.pairs.iter().any(|p| {
                                    p.kind == PathKind::Lan && p.mode == CheckMode::Connect
                                })
                        }
                        // At once when nothing better is being checked (the relay-only
                        // policy, a peer whose UDP is blocked: spec/stream.md).
                        PathKind::Relay => {
                            elapsed >= RELAY_AFTER
                                || !self
                                    .pairs
                                    .iter()
                                    .any(|p| !p.key.via_relay && p.mode == CheckMode::Connect)
                        }
                    },
                };
                if ready {
                    // Select at once: the pair answered our check, so it works both ways.
                    // The controlled agent follows when the nomination arrives, half a
                    // round trip later; waiting for the nomination's answer would only
                    // hold the session's first packet back by a round trip. A nomination
                    // that goes unanswered loses the path like any dead selected pair.
                    self.select(now, best);
                    if let Some(pair) = self.pair_mut(best) {
                        pair.nominating = true;
                        pair.mode = CheckMode::Connect;
                        pair.sent = 0;
                        pair.open_pending = false;
                        pair.next_check = Some(now);
                    }
                    if let Some(index) = self.pairs.iter().position(|p| p.key == best) {
                        self.fire_pair(now, index);
                    }
                }
            }
        }
    }

    fn best_valid(&self) -> Option<PairKey> {
        self.pairs
            .iter()
            .filter(|p| p.valid)
            .max_by(|a, b| {
                a.kind
                    .cmp(&b.kind)
                    .then_with(|| b.rtt.cmp(&a.rtt))
                    .then_with(|| a.priority.cmp(&b.priority))
            })
            .map(|p| p.key)
    }

    fn select(&mut self, now: Instant, key: PairKey) {
        if self.selected == Some(key) {
            return;
        }
        let Some(pair) = self.pair_mut(key) else {
            return;
        };
        pair.mode = CheckMode::Liveness;
        pair.sent = 0;
        pair.next_check = Some(now + KEEPALIVE_INTERVAL);
        let info = pair.info();
        let kind = pair.kind;
        self.selected = Some(key);
        self.attempt_start = self.attempt_start.or(Some(now));
        self.push_event(if self.ever_connected {
            Event::PathChanged(info)
        } else {
            Event::Connected(info)
        });
        self.ever_connected = true;
        // Stop checking every other pair (a working relay pair stays on keepalive as the
        // fallback). Pairs that could beat the selection are re-checked in re-punch
        // rounds, anchored on the same moment on both sides (below).
        // A call that starts on the relay keeps checking the direct pairs until
        // DIRECT_WINDOW after its start: they may only need a few more round trips, or
        // port prediction.
        let direct_window_end = self
            .attempt_start
            .map(|start| start + DIRECT_WINDOW)
            .filter(|end| kind == PathKind::Relay && now < *end);
        let mut better_exists = false;
        for pair in &mut self.pairs {
            if pair.key == key || (pair.valid && pair.key.via_relay) {
                continue;
            }
            let better = pair.kind > kind && !pair.key.via_relay;
            better_exists |= better;
            if better && direct_window_end.is_some() {
                continue;
            }
            pair.mode = CheckMode::Idle;
            pair.next_check = None;
        }
        // Both sides anchor re-punch rounds on the moment the controlled agent selected:
        // the controlling agent selects when it nominates, half a round trip before the
        // nomination arrives.
        let anchor = match self.role {
            Role::Controlling => now + info.rtt / 2,
            Role::Controlled => now,
        };
        self.repunch_until = direct_window_end;
        self.repunch_next = better_exists.then(|| anchor + REPUNCH_INTERVAL);
    }

    /// Ends checks that were started while a path is selected (a re-punch round, a
    /// triggered check, a network change) after [`REPUNCH_WINDOW`], so that nothing keeps
    /// refreshing a conntrack collision between rounds.
    fn bound_checks_while_selected(&mut self, now: Instant) {
        if self.selected.is_some() {
            let end = now + REPUNCH_WINDOW;
            self.repunch_until = Some(self.repunch_until.map_or(end, |t| t.max(end)));
            if self.repunch_next.is_none() {
                self.repunch_next = Some(now + REPUNCH_INTERVAL);
            }
        }
    }

    fn run_repunch_rounds(&mut self, now: Instant) {
        let selected = self.selected;
        let Some(selected_kind) = self.selected_kind() else {
            self.repunch_next = None;
            self.repunch_until = None;
            return;
        };
        if self.repunch_until.is_some_and(|t| now >= t) {
            self.repunch_until = None;
            for pair in &mut self.pairs {
                let checking = matches!(pair.mode, CheckMode::Connect | CheckMode::Background);
                if checking && !pair.valid && !pair.key.via_relay && Some(pair.key) != selected {
                    pair.mode = CheckMode::Idle;
                    pair.next_check = None;
                }
            }
        }
        if self.repunch_next.is_some_and(|t| now >= t) {
            let mut any = false;
            for pair in &mut self.pairs {
                if !pair.valid && !pair.key.via_relay && pair.kind > selected_kind {
                    pair.start_checks(CheckMode::Connect, now);
                    any = true;
                }
            }
            self.repunch_next = any.then(|| now + REPUNCH_INTERVAL);
            if any {
                self.repunch_until = Some(now + REPUNCH_WINDOW);
            }
        }
    }

    // ---- helpers ------------------------------------------------------------------

    fn fail_deadline(&self) -> Option<Instant> {
        let window = if self.recovering {
            RECOVERY_FAIL_AFTER
        } else {
            FAIL_AFTER
        };
        self.attempt_start.map(|s| s + window)
    }

    fn selected_kind(&self) -> Option<PathKind> {
        self.selected.and_then(|k| self.pair(k)).map(|p| p.kind)
    }

    fn pair(&self, key: PairKey) -> Option<&Pair> {
        self.pairs.iter().find(|p| p.key == key)
    }

    fn pair_mut(&mut self, key: PairKey) -> Option<&mut Pair> {
        self.pairs.iter_mut().find(|p| p.key == key)
    }

    fn new_transaction(&mut self) -> TransactionId {
        let mut id = [0u8; TRANSACTION_ID_LEN];
        id[..8].copy_from_slice(&self.rng.next_u64().to_be_bytes());
        id[8..].copy_from_slice(&self.rng.next_u64().to_be_bytes()[..4]);
        TransactionId(id)
    }

    fn take_token(&mut self, now: Instant) -> bool {
        self.probe_bucket
            .get_or_insert_with(|| TokenBucket::new(PROBE_RATE, now))
            .try_take(now)
    }

    fn send_probe(&mut self, now: Instant, key: PairKey, ttl: Option<u8>, probe: &Probe) {
        if self.key.is_none() {
            return;
        }
        if self.transmits.len() >= MAX_TRANSMIT_QUEUE {
            self.stats.transmit_queue_full += 1;
            return;
        }
        // Limit before encoding: under a flood the dropped responses cost no HMAC.
        if !self.take_token(now) {
            self.stats.rate_limited += 1;
            return;
        }
        let Some(punch_key) = self.key.as_ref() else {
            return;
        };
        let mut buffer = [0u8; MAX_PROBE_LEN];
        let len = probe.encode(punch_key, &mut buffer);
        self.stats.probes_sent += 1;
        self.transmits.push_back(Transmit {
            destination: key.remote,
            via_relay: key.via_relay,
            ttl,
            buffer,
            len: u8::try_from(len).unwrap_or(0),
        });
    }

    fn push_event(&mut self, event: Event) {
        if self.events.len() >= MAX_EVENT_QUEUE {
            self.events.pop_front();
            self.stats.queue_overflow += 1;
        }
        self.events.push_back(event);
    }

    /// The only signal an agent emits is its candidate set, and a newer set supersedes
    /// an unsent older one, so the signal queue never holds more than one message.
    fn queue_candidates(&mut self) {
        let set = self.local_candidates();
        self.signals.clear();
        self.signals.push_back(PunchSignal::Candidates(set));
    }
}
