//! The sans-IO endpoint core: everything a camera or a viewer does, with no socket, no
//! clock and no task.
//!
//! [`Endpoint`] composes the session table (`sightwire-session`), one punch agent and one
//! media connection per peer (`sightwire-punch`, `sightwire-media`) and the signaling
//! with the rendezvous (`sightwire-signal`). It is driven the way quinn-proto and str0m
//! are:
//!
//! - inputs: [`Endpoint::handle_datagram`] (a datagram and where it came from),
//!   [`Endpoint::handle_timeout`], commands ([`Endpoint::connect`],
//!   [`Endpoint::send_frame`], [`Endpoint::network_changed`], ...), the local address the
//!   OS would use ([`Endpoint::set_local_ip`]), the wall clock for certificate checks
//!   ([`Endpoint::set_unix_time`]), send failures ([`Endpoint::handle_send_error`]) and
//!   the addresses a rendezvous host name resolved to ([`Endpoint::handle_resolved`]);
//! - outputs: [`Endpoint::poll_transmit`] (datagrams, each with the TTL to send it with),
//!   [`Endpoint::poll_event`], [`Endpoint::poll_timeout`] and [`Endpoint::poll_resolve`]
//!   (a host name to resolve: the core does no DNS).
//!
//! After every input, poll transmits and events until both are empty, then sleep until
//! `poll_timeout`. The tokio driver (`crate::driver`) does exactly that on a UDP socket;
//! the tests do it in `sightwire-netsim`'s virtual time.
//!
//! ```
//! use std::time::Instant;
//! use rand::SeedableRng;
//! use sightwire::proto::{Endpoint, EndpointConfig, WatchRequest};
//! use sightwire::{Credentials, RendezvousServer};
//! use sightwire_session::StaticKeypair;
//! use sightwire_signal::cert::{IssuerKey, TrustedIssuers};
//!
//! let mut rng = rand::rngs::StdRng::seed_from_u64(7);
//! let now = Instant::now();
//! let address: std::net::SocketAddr = "198.51.100.1:3478".parse()?;
//! let rendezvous = RendezvousServer::new(address, [1; 32].into());
//! let config = EndpointConfig::new(StaticKeypair::generate(&mut rng), rendezvous.clone(), Box::new(rng));
//! let issuers = TrustedIssuers::single(IssuerKey::from_seed(&[2; 32]).public());
//! let mut viewer = Endpoint::viewer(config, issuers, now)?;
//! let watch = viewer.connect(now, WatchRequest::new("1C:C3:16:AB:CD:EF".parse()?, Credentials::password("admin123")))?;
//!
//! // First thing out: the Noise handshake with the rendezvous.
//! viewer.handle_timeout(now);
//! let transmit = viewer.poll_transmit().expect("a handshake");
//! assert_eq!(Some(transmit.destination), rendezvous.address.socket_addr());
//! # let _ = watch;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod connection;
mod consent;
mod device;
mod gop;
mod mapping;
mod outbox;
mod rendezvous;
pub(crate) mod timer;
mod viewer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sightwire_media::{Frame, MediaConnection, PacketizeError, StreamSet};
use sightwire_relay_wire::{DATA_HEADER_LEN, RelayPacket, write_data_header};
use sightwire_session::{
    Config as SessionConfig, Event as SessionEvent, Input, PublicKey, SessionKind, SessionRng,
    SessionTable, StaticKeypair,
};
use sightwire_signal::MAX_MESSAGE_LEN;
use sightwire_signal::cert::TrustedIssuers;

use crate::config::{PathPolicy, RendezvousServer};
use crate::error::ResolveError;
use crate::events::{Event, PeerId};
use sightwire_signal::server_addr::HostPort;

use connection::{AuthState, Connection, GOODBYE, PATH_CHALLENGE, PATH_RESPONSE, virtual_channel};
pub use consent::MAX_PENDING_CONSENTS;
use device::DeviceRole;
pub use device::DeviceSettings;
pub use gop::GopCacheUsage;
use gop::{Placement, Route};
pub use mapping::{MAX_PROBES, MIN_KEEPALIVE_INTERVAL, PROBE_RESOLUTION};
use outbox::Outbox;
pub use outbox::{MAX_DATAGRAM_LEN, MAX_QUEUED_TRANSMITS, Transmit};
use rendezvous::RendezvousLink;
pub use rendezvous::{ADDRESS_TRY, MAX_SERVER_ADDRESSES, RENDEZVOUS_UNREACHABLE_AFTER};
use timer::{TimerTable, timers};
use viewer::ViewerRole;
pub use viewer::{MAX_WATCHES, WatchId, WatchRequest};

/// Most events queued for the application; beyond it events are dropped and counted
/// ([`EndpointStats::events_dropped`]) rather than grow without bound.
pub const MAX_QUEUED_EVENTS: usize = 4096;
/// How often per-peer figures are reported.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// Media datagrams pulled into the transmit queue per refill (round robin over peers,
/// so one viewer's keyframe does not hold back the others).
const MEDIA_REFILL: usize = 64;
/// Rounds of [`Endpoint::flush`] per input: sessions, then connections, then the
/// sessions again for what the connections started (a handshake), and once more for
/// what that produced. Bounded so that no input can keep the core busy.
const FLUSH_PASSES: usize = 3;
/// Media datagrams taken from one peer per round of a refill.
const MEDIA_PER_PEER_ROUND: usize = 8;
/// With no rendezvous session over UDP this long after the endpoint started trying, UDP
/// is taken to be blocked and the rendezvous and the relay are reached over TCP/TLS
/// (`spec/stream.md` §1). Two handshake retransmissions: a working path answers in one
/// round trip.
pub const STREAM_FALLBACK_AFTER: Duration = Duration::from_secs(2);
/// Most relay addresses whose stream ports are remembered (one per relay seen in a
/// grant; beyond, the oldest are forgotten and the next grant tells them again).
const MAX_RELAY_STREAM_PORTS: usize = 16;

/// What both kinds of endpoint need to start.
#[non_exhaustive]
pub struct EndpointConfig {
    /// The endpoint's static key pair.
    pub keypair: StaticKeypair,
    /// The rendezvous server.
    pub rendezvous: RendezvousServer,
    /// Media framing parameters.
    pub media: sightwire_media::Config,
    /// Which paths to peers may be used.
    pub path_policy: PathPolicy,
    /// The local UDP port (host candidates are the local IP with this port).
    pub local_port: u16,
    /// The deployment's rendezvous nodes, when there are several (`spec/multinode.md`):
    /// a device registers with its ID's home among them, moving to the successor when
    /// the home stops answering. `None`: [`EndpointConfig::rendezvous`] alone.
    pub nodes: Option<crate::nodes::RendezvousNodes>,
    /// A device registered with its successor tries its home again after this long (and
    /// up to as long again at random), doubling after each failed try
    /// ([`crate::nodes::HOME_RETRY_MIN`] by default).
    pub home_retry: Duration,
    /// Randomness for handshakes (ephemeral keys, session indices) and punch agents. The
    /// driver passes an OS-seeded generator; tests pass a seeded one and replay exactly.
    pub rng: Box<dyn SessionRng>,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("rendezvous", &self.rendezvous)
            .field("path_policy", &self.path_policy)
            .field("local_port", &self.local_port)
            .finish_non_exhaustive()
    }
}

impl EndpointConfig {
    /// A configuration with the default media parameters and path policy, and local
    /// port 0 (no host candidates until [`Endpoint::set_local_ip`] and a real port).
    pub fn new(
        keypair: StaticKeypair,
        rendezvous: RendezvousServer,
        rng: Box<dyn SessionRng>,
    ) -> Self {
        Self {
            keypair,
            rendezvous,
            media: crate::config::default_media_config(),
            path_policy: PathPolicy::Any,
            local_port: 0,
            nodes: None,
            home_retry: crate::nodes::HOME_RETRY_MIN,
            rng,
        }
    }
}

/// An event, with the watch it concerns (viewer endpoints; `None` on a device).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointEvent {
    /// The watch (one camera a viewer endpoint watches), if any.
    pub watch: Option<WatchId>,
    /// What happened.
    pub event: Event,
}

/// Who a frame or control message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recipients {
    /// Every authorized peer (a device's viewers; every camera a viewer watches).
    All,
    /// One connection.
    Peer(PeerId),
    /// The connection currently serving one watch (viewer).
    Watch(WatchId),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command is for a viewer endpoint.
    #[error("only a viewer endpoint can do this")]
    NotAViewer,
    /// The command is for a device endpoint.
    #[error("only a device endpoint can do this")]
    NotADevice,
    /// No such watch (never existed, or it ended).
    #[error("no such watch")]
    UnknownWatch,
    /// The endpoint watches [`MAX_WATCHES`] cameras already.
    #[error("too many watches (limit {limit})")]
    TooManyWatches {
        /// The limit.
        limit: usize,
    },
    /// The frame cannot be framed (for example larger than the media limit).
    #[error("frame not sent: {0}")]
    Frame(#[from] PacketizeError),
    /// The endpoint has shut down.
    #[error("the endpoint has shut down")]
    ShutDown,
    /// No connection with that peer (never existed, or it ended).
    #[error("no such peer")]
    UnknownPeer,
}

/// Endpoint-wide counters: what was dropped or failed, so nothing is lost silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Datagrams whose first byte belongs to no protocol, dropped.
    pub datagrams_unknown: u64,
    /// Datagrams handed to the driver.
    pub transmits: u64,
    /// Datagrams dropped because the transmit queue was full.
    pub transmits_dropped: u64,
    /// Sends the driver reported as failed ([`Endpoint::handle_send_error`]).
    pub send_errors: u64,
    /// Packets that could not be sealed (session gone or keys expired).
    pub seal_failures: u64,
    /// Events dropped because the application did not poll them.
    pub events_dropped: u64,
    /// Peer connections opened.
    pub connections_opened: u64,
    /// Peer connections closed.
    pub connections_closed: u64,
    /// Device: viewers served from the GOP cache (a catch-up began).
    pub catch_ups: u64,
    /// Device: frames handed to viewers from the GOP cache.
    pub catch_up_frames: u64,
    /// Device: catch-ups that ended before reaching live (the cache let go of the GOP,
    /// or the viewer fell too far behind); those viewers wait for a keyframe.
    pub catch_ups_abandoned: u64,
    /// Device: frames not given to a viewer because it could not decode them (it waits
    /// for a keyframe) or gets them from the GOP cache in order.
    pub frames_withheld: u64,
    /// Device: GOPs the cache let go of because they outgrew a limit.
    pub gop_cache_overflows: u64,
    /// Frames handed to `send_frame` that a peer's media connection refused, counted
    /// per peer, or that could not be framed at all, counted once (each is also an
    /// [`Event::FrameNotSent`]).
    pub frames_not_sent: u64,
    /// Viewer: frames a new connection replayed from the device's GOP cache that its
    /// watch had already delivered, not delivered twice.
    pub replayed_frames_skipped: u64,
}

timers! {
    /// Endpoint-wide deadlines.
    pub(crate) enum EndpointTimer {
        /// Try (again) to open the rendezvous session.
        RendezvousRetry,
        /// The rendezvous address being tried has not answered: try the next.
        RendezvousNextAddress,
        /// Send the next keepalive to the rendezvous.
        Keepalive,
        /// The last keepalive (or registration) went unanswered.
        KeepaliveTimeout,
        /// Resend the registration.
        RegisterRetry,
        /// Report per-peer figures.
        Stats,
        /// Nothing heard from the rendezvous since the endpoint started trying to reach
        /// it: report it unreachable.
        RendezvousSilent,
        /// The keepalive probe's answer is overdue.
        ProbeTimeout,
        /// No rendezvous session over UDP yet: fall back to the stream.
        StreamFallback,
        /// A device registered with its successor node tries its home again.
        NodeHome,
    }
}

/// The device- or viewer-specific part.
#[derive(Debug)]
enum Role {
    Device(Box<DeviceRole>),
    Viewer(ViewerRole),
}

/// The endpoint core. See the module docs.
pub struct Endpoint {
    now: Instant,
    unix_now: u64,
    role: Role,
    sessions: SessionTable,
    rendezvous: RendezvousLink,
    /// Ordered so every walk over connections is deterministic (simulation replays).
    conns: BTreeMap<PeerId, Connection>,
    by_session: HashMap<sightwire_session::SessionId, PeerId>,
    by_channel: HashMap<u64, PeerId>,
    media_config: sightwire_media::Config,
    path_policy: PathPolicy,
    /// Fragments a device's frames once for all viewers.
    packetizer: MediaConnection,
    outbox: Outbox,
    events: VecDeque<EndpointEvent>,
    timers: TimerTable<EndpointTimer, 10>,
    encode: BytesMut,
    agent_rng: StdRng,
    local_port: u16,
    host_ip: Option<IpAddr>,
    /// Where the last media refill stopped, so the next starts after it.
    media_cursor: Option<PeerId>,
    /// Scratch list of connection ids, reused instead of allocating per datagram.
    scratch_ids: Vec<PeerId>,
    stats: EndpointStats,
    /// `send_errors` and `events_dropped` at the last report.
    reported: (u64, u64),
    last_send_error: Option<std::io::ErrorKind>,
    /// The device's last reported encoder target.
    last_target_bps: Option<u64>,
    /// UDP got no answer from the rendezvous: it and the relay are reached over TCP/TLS
    /// streams, peers through the relay only (`spec/stream.md`).
    udp_blocked: bool,
    /// A rendezvous session was established over UDP since start or the last network
    /// change: a silence after that is an outage, not a block, so no fallback.
    udp_worked: bool,
    /// The stream ports of the relays in the grants received (oldest first).
    relay_stream_ports: VecDeque<(SocketAddr, u16)>,
    shut_down: bool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("role", &self.role)
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A camera endpoint: registers under its certified ID and serves viewers.
    pub fn device(
        config: EndpointConfig,
        settings: DeviceSettings,
        now: Instant,
    ) -> Result<Self, sightwire_media::ConfigError> {
        let role = Role::Device(Box::new(DeviceRole::new(settings)));
        Self::new(config, role, now)
    }

    /// A viewer endpoint: watches any number of cameras (up to [`MAX_WATCHES`]) over one
    /// socket and one rendezvous session. `issuers` are the ID-certificate issuers it
    /// believes.
    pub fn viewer(
        config: EndpointConfig,
        issuers: TrustedIssuers,
        now: Instant,
    ) -> Result<Self, sightwire_media::ConfigError> {
        Self::new(config, Role::Viewer(ViewerRole::new(issuers)), now)
    }

    fn new(
        config: EndpointConfig,
        role: Role,
        now: Instant,
    ) -> Result<Self, sightwire_media::ConfigError> {
        let mut rng = config.rng;
        let agent_rng = StdRng::from_rng(&mut rng).unwrap_or_else(|_| StdRng::seed_from_u64(0));
        let sessions = match &role {
            Role::Device(device) => SessionTable::with_responder(
                config.keypair,
                SessionKind::Peer {
                    device_id: device.certificate.device_id(),
                },
                SessionConfig::default(),
                rng,
            ),
            Role::Viewer(_) => SessionTable::new(config.keypair, SessionConfig::default(), rng),
        };
        // A device with several nodes starts at its ID's home (spec/multinode.md §3).
        let route = match (&role, &config.nodes) {
            (Role::Device(device), Some(nodes)) if nodes.len() > 1 => {
                Some(crate::nodes::NodeRoute::new(
                    nodes,
                    device.certificate.device_id(),
                    config.home_retry,
                ))
            }
            _ => None,
        };
        let rendezvous = match &route {
            Some(route) => route.current().clone(),
            None => config.rendezvous,
        };
        let mut timers = TimerTable::default();
        timers.set(EndpointTimer::RendezvousRetry, now);
        timers.set(EndpointTimer::Stats, now + STATS_INTERVAL);
        Ok(Self {
            now,
            unix_now: 0,
            role,
            sessions,
            rendezvous: RendezvousLink::new(rendezvous, route),
            conns: BTreeMap::new(),
            by_session: HashMap::new(),
            by_channel: HashMap::new(),
            packetizer: MediaConnection::new(config.media.clone(), now)?,
            media_config: config.media,
            path_policy: config.path_policy,
            outbox: Outbox::default(),
            events: VecDeque::new(),
            timers,
            encode: BytesMut::with_capacity(MAX_MESSAGE_LEN),
            agent_rng,
            local_port: config.local_port,
            host_ip: None,
            media_cursor: None,
            scratch_ids: Vec::new(),
            stats: EndpointStats::default(),
            reported: (0, 0),
            last_send_error: None,
            last_target_bps: None,
            udp_blocked: false,
            udp_worked: false,
            relay_stream_ports: VecDeque::new(),
            shut_down: false,
        })
    }

    // ------------------------------------------------------------------ inputs

    /// The current wall clock, as time since the Unix epoch: certificate validity, and
    /// the timestamp that makes each handshake initiation unique (`spec/session.md`
    /// §3.3). Call before inputs; the driver does so before each one.
    pub fn set_unix_time(&mut self, since_epoch: Duration) {
        self.unix_now = since_epoch.as_secs();
        let nanos = u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX);
        self.sessions.set_unix_time(nanos);
    }

    /// A datagram arrived from `from`. The buffer is decrypted in place.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        self.now = now;
        if self.shut_down {
            return;
        }
        self.stats.datagrams_received += 1;
        match datagram.first() {
            Some(0x01..=0x0F) => self.on_session_packet(now, from, datagram),
            Some(0x20..=0x2F) => self.on_punch_packet(now, from, datagram, None),
            Some(0x30..=0x3F) => self.on_relay_packet(now, from, datagram),
            _ => self.stats.datagrams_unknown += 1,
        }
        self.flush(now);
    }

    /// Time passed: fire every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.shut_down {
            return;
        }
        self.sessions.handle_timeout(now);
        while let Some(timer) = self.timers.pop_expired(now) {
            self.on_endpoint_timer(now, timer);
        }
        self.viewer_timers(now);
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        ids.extend(self.conns.keys().copied());
        for &id in &ids {
            self.connection_timers(now, id);
        }
        self.scratch_ids = ids;
        self.flush(now);
    }

    /// The local IP address the OS would use towards the rendezvous (the driver asks the
    /// OS; `None` when there is no route). A change from a previously known address is a
    /// network change (see [`Endpoint::network_changed`]).
    pub fn set_local_ip(&mut self, now: Instant, ip: Option<IpAddr>) {
        self.now = now;
        if ip.is_none() || ip == self.host_ip {
            return;
        }
        let first = self.host_ip.is_none();
        self.host_ip = ip;
        if !first {
            tracing::info!(?ip, "local address changed");
            self.network_changed(now);
        } else if let Role::Device(_) = self.role
            && self.rendezvous.ready
        {
            // Host candidates became known after registering: tell the rendezvous.
            self.send_register(now);
            self.flush(now);
        }
    }

    /// The network moved under the endpoint (an app that knows: Android's
    /// `ConnectivityManager`, iOS's `NWPathMonitor`): every punch agent re-gathers, a
    /// device registers again, a viewer reconnects each watch through the rendezvous.
    pub fn network_changed(&mut self, now: Instant) {
        self.now = now;
        if self.shut_down {
            return;
        }
        // The new network may block UDP, or let it through again: find out afresh.
        self.udp_worked = false;
        if self.udp_blocked {
            self.udp_blocked = false;
            self.timers.set(EndpointTimer::RendezvousRetry, now);
        }
        let hosts = self.host_candidates();
        for conn in self.conns.values_mut() {
            conn.agent.network_changed(now, hosts.clone());
        }
        match self.role {
            Role::Device(_) => {
                self.rendezvous.tuner.restart();
                self.send_register(now);
            }
            Role::Viewer(_) => self.reconnect_all_watches(now, "network changed"),
        }
        self.flush(now);
    }

    /// The rendezvous host name to resolve, when the core wants it resolved: at start, after
    /// a round through its addresses went unanswered, and when the established link is
    /// lost. Returned once per request; answer with [`Endpoint::handle_resolved`]. Never
    /// anything for a rendezvous configured by IP address.
    pub fn poll_resolve(&mut self) -> Option<HostPort> {
        self.rendezvous_poll_resolve()
    }

    /// The answer to [`Endpoint::poll_resolve`]: the addresses, in order of preference
    /// (at most [`MAX_SERVER_ADDRESSES`] are kept), or why there are none. A failure with
    /// no earlier addresses to fall back on is reported as [`Event::RendezvousUnresolved`]
    /// and fails the watches waiting for the rendezvous.
    pub fn handle_resolved(&mut self, now: Instant, result: Result<Vec<SocketAddr>, ResolveError>) {
        self.now = now;
        if self.shut_down {
            return;
        }
        self.rendezvous_resolved(now, result);
        self.flush(now);
    }

    /// The rendezvous address in use or being tried, if any yet (the driver asks the OS
    /// for the local address towards it).
    pub fn rendezvous_address(&self) -> Option<SocketAddr> {
        self.rendezvous_current()
    }

    /// The rendezvous's host name, when it was configured by name (the driver sends it
    /// as the TLS server name of a stream to the rendezvous, `spec/stream.md` §4).
    pub fn rendezvous_host(&self) -> Option<&str> {
        self.rendezvous.server.address.name().map(HostPort::host)
    }

    /// The driver could not send a datagram to `destination`. Counted, and reported to
    /// the application once per [`STATS_INTERVAL`] as [`Event::SendErrors`].
    pub fn handle_send_error(
        &mut self,
        _now: Instant,
        destination: SocketAddr,
        kind: std::io::ErrorKind,
    ) {
        self.stats.send_errors += 1;
        self.last_send_error = Some(kind);
        tracing::debug!(%destination, ?kind, "send failed");
    }

    /// The driver's TCP/TLS stream for `destination` (a transmit's destination, sent with
    /// [`Transmit::stream_port`]) could not be opened, or ended. A stream to the
    /// rendezvous that fails before its session is up means neither UDP nor the stream
    /// reaches it: the watches waiting for it fail with
    /// [`ConnectError::RendezvousUnreachable`]
    /// and the next try starts on UDP again, unless peers are being served over the
    /// relay's stream (`spec/stream.md` §1). One that ends later is a lost link. A stream
    /// to a relay is left to the paths' own checks.
    ///
    /// [`ConnectError::RendezvousUnreachable`]: crate::ConnectError::RendezvousUnreachable
    pub fn handle_stream_closed(&mut self, now: Instant, destination: SocketAddr) {
        self.now = now;
        if self.shut_down || !self.udp_blocked || self.rendezvous_current() != Some(destination) {
            return;
        }
        if self.rendezvous.ready {
            tracing::warn!(%destination, "the stream to the rendezvous ended");
            self.rendezvous_lost(now);
        } else {
            tracing::warn!(%destination, "the rendezvous is unreachable over UDP and TCP/TLS");
            // Peers served over the relay's stream keep it: a rendezvous outage must not
            // move their media back onto blocked UDP. Otherwise the next try is on UDP.
            if !self.conns.values().any(|c| c.auth == AuthState::Accepted) {
                self.udp_blocked = false;
            }
            if let Some(session) = self.rendezvous.session.take() {
                self.sessions.close(session);
            }
            self.viewer_rendezvous_failed(now, crate::error::ConnectError::RendezvousUnreachable);
            self.timers.stop(EndpointTimer::RendezvousNextAddress);
            self.schedule_rendezvous_retry(now);
        }
        self.flush(now);
    }

    /// Whether UDP was found blocked and the endpoint uses TCP/TLS streams
    /// (`spec/stream.md`).
    pub fn udp_blocked(&self) -> bool {
        self.udp_blocked
    }

    // ---------------------------------------------------------------- commands

    /// Sends a frame: from a device to its viewers, from a viewer to its cameras
    /// (talk-back). Fragmented once; every recipient shares the fragments. Returns how
    /// many connections it was queued for.
    ///
    /// A frame that is not sent to a peer (refused by its media connection: too large,
    /// queue full, dropped by policy) or to anyone (it cannot be framed, which is also
    /// the returned error) is reported as [`Event::FrameNotSent`] and counted; the peer
    /// sees the gap, and a frame later frames may refer to breaks its stream until the
    /// next keyframe (`spec/media.md` 4.7).
    ///
    /// A device's frames for [`Recipients::All`] on an H.264 or H.265 stream go through
    /// its GOP cache (`spec/endpoint.md` §4.1): a viewer that could not decode a frame,
    /// or that is still catching up from the cache, does not get it now. Frames for one
    /// [`Recipients::Peer`] bypass the cache; their decodability is the caller's.
    pub fn send_frame(
        &mut self,
        now: Instant,
        to: Recipients,
        frame: Frame,
    ) -> Result<usize, CommandError> {
        self.now = now;
        if self.shut_down {
            return Err(CommandError::ShutDown);
        }
        let only = self.recipient(to)?;
        let stream = frame.stream;
        // A cheap clone (reference counts): what a refusal needs to know of the frame.
        let packetized = match self.packetizer.packetize(frame.clone()) {
            Ok(packetized) => packetized,
            Err(error) => {
                self.frame_not_packetized(now, to, only, &frame, &error);
                return Err(error.into());
            }
        };
        // A device's frames for all its viewers go through its GOP cache (§4.1 of
        // spec/endpoint.md): each viewer gets a frame only when it can decode it, and a
        // viewer still catching up gets it later, from the cache, in order.
        let placement = match (&mut self.role, to) {
            (Role::Device(device), Recipients::All) => device.gop.push(now, &packetized),
            _ => Placement::Untracked,
        };
        let cache = match &self.role {
            Role::Device(device) if placement != Placement::Untracked => Some(&device.gop),
            _ => None,
        };
        // A device's frames for all go only to the viewers subscribed to their stream
        // (§4.2 of spec/endpoint.md); the others' media layers never see them, so their
        // sequence numbers, gaps and congestion control know nothing of them.
        let by_subscription = matches!((&self.role, to), (Role::Device(_), Recipients::All));
        let mut queued = 0;
        let conns = self.conns.values_mut().filter(|c| {
            c.auth == AuthState::Accepted
                && only.is_none_or(|id| id == Some(c.id))
                && (!by_subscription || c.gop.streams().contains(stream))
        });
        for conn in conns {
            let route = cache.map_or(Route::Send, |cache| {
                conn.gop.route(cache, stream, placement)
            });
            match route {
                Route::Send => {
                    let sent = conn.media.send_frame(now, &packetized);
                    let accepted = sent.is_ok();
                    queued += usize::from(accepted);
                    conn.gop.on_sent(stream, placement, accepted);
                    if let Err(error) = sent {
                        self.stats.frames_not_sent += 1;
                        tracing::debug!(peer = conn.id.0, %error, "frame not sent");
                        let event = Event::FrameNotSent {
                            peer: Some(conn.id),
                            stream,
                            error: error.into(),
                        };
                        push_event(&mut self.events, &mut self.stats, conn.watch, event);
                    }
                }
                Route::Withhold { ask } => {
                    self.stats.frames_withheld += 1;
                    if conn.gop.withheld_is_gap(stream, placement) {
                        conn.media.mark_gap(stream);
                    }
                    if ask && conn.gop.should_ask(stream, now) {
                        let event = Event::KeyframeRequested {
                            peer: conn.id,
                            stream,
                        };
                        push_event(&mut self.events, &mut self.stats, None, event);
                    }
                }
            }
        }
        self.flush(now);
        Ok(queued)
    }

    /// `frame` could not be packetized, so no recipient gets it: each recipient's stream
    /// (for a device's frames for all, each viewer subscribed to it) shows the gap and
    /// breaks if later frames may refer to it, and so does the device's GOP cache; the
    /// application is told.
    fn frame_not_packetized(
        &mut self,
        now: Instant,
        to: Recipients,
        only: Option<Option<PeerId>>,
        frame: &Frame,
        error: &PacketizeError,
    ) {
        if let (Role::Device(device), Recipients::All) = (&mut self.role, to) {
            device.gop.not_sent(frame);
        }
        // Only the viewers that would have had it see the gap (§4.2).
        let by_subscription = matches!((&self.role, to), (Role::Device(_), Recipients::All));
        let recipients = self
            .accepted_conns(only)
            .filter(|c| !by_subscription || c.gop.streams().contains(frame.stream));
        for conn in recipients {
            conn.media.frame_not_sent(now, frame);
        }
        self.stats.frames_not_sent += 1;
        tracing::warn!(stream = frame.stream.get(), %error, "frame not sent");
        let event = Event::FrameNotSent {
            peer: None,
            stream: frame.stream,
            error: error.clone().into(),
        };
        self.emit(None, event);
        self.flush(now);
    }

    /// Device: subscribes viewer `peer` to `streams` instead of the streams it had
    /// (`spec/endpoint.md` §4.2; a new viewer has [`DeviceSettings::default_streams`]).
    /// From now on the device's frames for [`Recipients::All`] go to it only on those
    /// streams. On each stream added it catches up from the GOP cache at once, from the
    /// cached keyframe, as a joining viewer does (§4.1); where the cache cannot serve it,
    /// the application is asked for a keyframe for it ([`Event::KeyframeRequested`]).
    /// Frames of a stream it leaves that its media layer holds already still go out.
    pub fn set_subscription(
        &mut self,
        now: Instant,
        peer: PeerId,
        streams: StreamSet,
    ) -> Result<(), CommandError> {
        self.now = now;
        if self.shut_down {
            return Err(CommandError::ShutDown);
        }
        if !matches!(self.role, Role::Device(_)) {
            return Err(CommandError::NotADevice);
        }
        let conn = self.conns.get_mut(&peer).ok_or(CommandError::UnknownPeer)?;
        let added = conn.gop.subscribe(streams);
        tracing::debug!(peer = peer.0, ?streams, ?added, "viewer subscription");
        // A viewer not authorized yet starts on its subscription when it is (gop_join).
        if conn.auth == AuthState::Accepted {
            self.gop_start(now, peer, added, true);
            self.flush(now);
        }
        Ok(())
    }

    /// Device: the streams viewer `peer` is subscribed to (`None`: no such connection).
    pub fn subscription(&self, peer: PeerId) -> Option<StreamSet> {
        match self.role {
            Role::Device(_) => self.conns.get(&peer).map(|c| c.gop.streams()),
            Role::Viewer(_) => None,
        }
    }

    /// Sends a control message (PTZ, settings...) reliably and in order. Returns how many
    /// connections it was queued for.
    pub fn send_control(
        &mut self,
        now: Instant,
        to: Recipients,
        message: Bytes,
    ) -> Result<usize, CommandError> {
        self.now = now;
        if self.shut_down {
            return Err(CommandError::ShutDown);
        }
        let only = self.recipient(to)?;
        let mut queued = 0;
        for conn in self.accepted_conns(only) {
            if conn.media.send_control(now, message.clone()).is_ok() {
                queued += 1;
            }
        }
        self.flush(now);
        Ok(queued)
    }

    /// Which connections `to` names, resolved without allocating: this runs for every
    /// frame. `None`: all of them.
    fn recipient(&self, to: Recipients) -> Result<Option<Option<PeerId>>, CommandError> {
        Ok(match to {
            Recipients::All => None,
            Recipients::Peer(id) => Some(Some(id)),
            // A watch between connections names nobody (`Some(None)`).
            Recipients::Watch(watch) => {
                let Role::Viewer(viewer) = &self.role else {
                    return Err(CommandError::NotAViewer);
                };
                let watch = viewer
                    .watches
                    .get(&watch)
                    .ok_or(CommandError::UnknownWatch)?;
                Some(watch.current)
            }
        })
    }

    /// The authorized connections among those [`Endpoint::recipient`] resolved.
    fn accepted_conns(
        &mut self,
        only: Option<Option<PeerId>>,
    ) -> impl Iterator<Item = &mut Connection> + '_ {
        self.conns.values_mut().filter(move |c| {
            c.auth == AuthState::Accepted && only.is_none_or(|id| id == Some(c.id))
        })
    }

    /// Closes every connection, deregisters a device and stops. Transmits (the goodbyes)
    /// may still be polled; nothing else happens afterwards.
    pub fn shutdown(&mut self, now: Instant) {
        self.now = now;
        if self.shut_down {
            return;
        }
        let ids: Vec<PeerId> = self.conns.keys().copied().collect();
        for id in ids {
            self.send_plaintext(now, id, &[GOODBYE]);
            self.close_connection(now, id, crate::events::PeerClosedReason::Closed, true);
        }
        if let Role::Device(_) = self.role {
            self.send_deregister(now);
        }
        self.flush(now);
        self.shut_down = true;
    }

    /// Whether [`Endpoint::shutdown`] ran.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    // ----------------------------------------------------------------- outputs

    /// The next datagram to send. It borrows the endpoint until the next call.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        if self.outbox.len() == 0 && !self.shut_down {
            self.refill_media();
        }
        self.stats.transmits_dropped = self.outbox.dropped;
        let stream_port = |destination: SocketAddr| {
            if !self.udp_blocked {
                return None;
            }
            if self.rendezvous_current() == Some(destination) {
                return self.rendezvous.server.stream_port;
            }
            self.relay_stream_ports
                .iter()
                .find(|(relay, _)| *relay == destination)
                .map(|(_, port)| *port)
        };
        let next = self.outbox.peek_destination()?;
        let port = stream_port(next);
        let mut transmit = self.outbox.pop()?;
        transmit.stream_port = port;
        self.stats.transmits += 1;
        Some(transmit)
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.shut_down {
            return None;
        }
        let mut earliest = self.sessions.poll_timeout();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                earliest = Some(earliest.map_or(t, |e: Instant| e.min(t)));
            }
        };
        consider(self.timers.next());
        if let Role::Viewer(viewer) = &self.role {
            for watch in viewer.watches.values() {
                consider(watch.timers.next());
            }
        }
        for conn in self.conns.values() {
            consider(conn.poll_timeout());
        }
        earliest
    }

    /// Endpoint-wide counters.
    pub fn stats(&self) -> EndpointStats {
        let gop_cache_overflows = match &self.role {
            Role::Device(device) => device.gop.overflows,
            Role::Viewer(_) => 0,
        };
        EndpointStats {
            transmits_dropped: self.outbox.dropped,
            gop_cache_overflows,
            ..self.stats
        }
    }

    /// Open peer connections (including ones still being set up).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether the device is registered (always `false` on a viewer).
    pub fn is_registered(&self) -> bool {
        self.rendezvous.registered
    }

    /// The connection ids currently open.
    pub fn connections(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.conns.keys().copied()
    }

    /// What a device's GOP cache holds (nothing on a viewer).
    pub fn gop_cache_usage(&self) -> GopCacheUsage {
        match &self.role {
            Role::Device(device) => device.gop.usage(),
            Role::Viewer(_) => GopCacheUsage::default(),
        }
    }

    // ---------------------------------------------------------------- internals

    pub(crate) fn emit(&mut self, watch: Option<WatchId>, event: Event) {
        push_event(&mut self.events, &mut self.stats, watch, event);
    }

    fn on_endpoint_timer(&mut self, now: Instant, timer: EndpointTimer) {
        match timer {
            EndpointTimer::RendezvousRetry => self.connect_rendezvous(now),
            EndpointTimer::StreamFallback => self.stream_fallback(now),
            EndpointTimer::RendezvousNextAddress => self.rendezvous_address_silent(now),
            EndpointTimer::Keepalive => self.send_keepalive(now),
            EndpointTimer::KeepaliveTimeout => self.keepalive_timed_out(now),
            EndpointTimer::RegisterRetry => self.send_register(now),
            EndpointTimer::RendezvousSilent => self.rendezvous_silent(now),
            EndpointTimer::ProbeTimeout => self.probe_timed_out(now),
            EndpointTimer::NodeHome => self.try_home_node(now),
            EndpointTimer::Stats => {
                self.timers.set(EndpointTimer::Stats, now + STATS_INTERVAL);
                self.report_stats();
            }
        }
    }

    fn on_relay_packet(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        let channel = match RelayPacket::decode(datagram) {
            Ok(RelayPacket::Data { channel, .. }) => channel,
            Ok(RelayPacket::Bound { channel, .. }) => {
                if let Some(conn) = self.conn_by_channel(channel, from) {
                    conn.relay_bound();
                }
                return;
            }
            Ok(RelayPacket::BindRefused { reason }) => {
                tracing::warn!(relay = %from, ?reason, "relay refused our bind");
                return;
            }
            Ok(RelayPacket::Challenge {
                channel, cookie, ..
            }) => {
                if let Some(id) = self.conn_by_channel(channel, from).map(|c| c.id) {
                    self.answer_relay_challenge(now, id, cookie);
                }
                return;
            }
            Ok(RelayPacket::Bind { .. }) | Err(_) => return,
        };
        let Some(id) = self.conn_by_channel(channel, from).map(|c| c.id) else {
            return;
        };
        let Some(inner) = datagram.get_mut(DATA_HEADER_LEN..) else {
            return;
        };
        match inner.first() {
            Some(0x01..=0x0F) => {
                self.on_session_packet(now, connection::virtual_addr(channel), inner)
            }
            Some(0x20..=0x2F) => self.on_punch_packet(now, from, inner, Some(id)),
            _ => {}
        }
    }

    fn conn_by_channel(&mut self, channel: u64, relay: SocketAddr) -> Option<&mut Connection> {
        let id = self.by_channel.get(&channel)?;
        self.conns
            .get_mut(id)
            .filter(|c| c.relay.as_ref().is_some_and(|r| r.server == relay))
    }

    fn on_punch_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        relayed_for: Option<PeerId>,
    ) {
        if relayed_for.is_none() && self.relay_only() {
            return;
        }
        // Only the connection whose attempt key authenticates the probe gets it, so a
        // stranger's probes cost at most one MAC check per connection and touch no state.
        let target = relayed_for.or_else(|| {
            self.conns
                .values()
                .find(|c| c.authenticates_probe(datagram))
                .map(|c| c.id)
        });
        if let Some(conn) = target.and_then(|id| self.conns.get_mut(&id)) {
            conn.agent.handle_datagram(now, from, datagram);
            conn.heard(now);
        }
    }

    fn on_session_packet(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        let input = match self.sessions.handle_input(now, from, datagram) {
            Ok(input) => input,
            Err(error) => {
                tracing::trace!(%from, %error, "session packet dropped");
                return;
            }
        };
        match input {
            Input::Data {
                session, plaintext, ..
            } => {
                if Some(session) == self.rendezvous.session {
                    self.rendezvous_heard(now);
                    self.on_signal(now, plaintext);
                } else if let Some(&id) = self.by_session.get(&session) {
                    // The plaintext borrows the receive buffer, not `self`: no copy.
                    self.on_peer_plaintext(now, id, from, plaintext);
                }
            }
            Input::Keepalive { session, .. } => {
                if let Some(&id) = self.by_session.get(&session) {
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.session_unconfirmed = false;
                        conn.heard(now);
                    }
                } else if Some(session) == self.rendezvous.session {
                    self.rendezvous_heard(now);
                }
            }
            Input::Handshake {
                session: Some(session),
            } => self.device_on_initiation(session, from),
            _ => {}
        }
    }

    fn on_peer_plaintext(&mut self, now: Instant, id: PeerId, from: SocketAddr, plaintext: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.heard(now);
        // The viewer confirmed the session (the device's early one included).
        conn.session_unconfirmed = false;
        self.check_peer_address(now, id, from);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match plaintext.first() {
            Some(&(PATH_CHALLENGE | PATH_RESPONSE)) => {
                self.on_path_validation(now, id, from, plaintext);
            }
            Some(0x01..=0x0F) => self.device_on_auth_request(now, id, plaintext),
            Some(0x80..=0x8F) => self.viewer_on_auth_response(now, id, plaintext),
            // Authenticated by the session, so only the peer itself can say it.
            Some(&GOODBYE) => {
                tracing::info!(peer = id.0, "the peer said goodbye");
                self.close_connection(now, id, crate::events::PeerClosedReason::Closed, false);
            }
            Some(_) if conn.auth == AuthState::Accepted => {
                if let Err(error) = conn.media.handle_input(now, plaintext) {
                    tracing::trace!(%error, "bad media packet");
                }
            }
            _ => {}
        }
    }

    fn on_session_event(&mut self, now: Instant, event: SessionEvent) {
        match event {
            SessionEvent::Established {
                session,
                remote_static,
                ..
            } => {
                if Some(session) == self.rendezvous.session {
                    self.udp_worked |= !self.udp_blocked;
                    self.rendezvous_established(now);
                } else {
                    self.peer_session_established(now, session, remote_static);
                }
            }
            SessionEvent::HandshakeFailed { session, reason } => {
                if Some(session) == self.rendezvous.session {
                    tracing::warn!(?reason, "rendezvous handshake failed");
                    self.rendezvous.session = None;
                    self.rendezvous.ready = false;
                    self.timers.stop(EndpointTimer::RendezvousNextAddress);
                    self.want_resolve();
                    self.schedule_rendezvous_retry(now);
                    if let sightwire_session::HandshakeFailure::KeyRefused
                    | sightwire_session::HandshakeFailure::RemoteKeyMismatch { .. } = reason
                    {
                        self.rendezvous_key_refused(now);
                    }
                    // A node that cannot complete a handshake is as good as gone.
                    self.next_node(now, "handshake failed");
                } else if let Some(id) = self.by_session.remove(&session) {
                    // A raced early handshake that failed leaves the other one running.
                    if !self.keep_handshake(id, |other, _| other != session) {
                        self.connection_failed(now, id, connection::Failure::Handshake(reason));
                    }
                }
            }
            SessionEvent::Closed { session, .. } => {
                if Some(session) == self.rendezvous.session {
                    self.rendezvous_lost(now);
                } else if let Some(id) = self.by_session.remove(&session) {
                    self.close_connection(now, id, crate::events::PeerClosedReason::Closed, true);
                }
            }
            _ => {}
        }
    }

    /// A peer session completed its handshake: attach it to its connection.
    fn peer_session_established(
        &mut self,
        now: Instant,
        session: sightwire_session::SessionId,
        remote_static: PublicKey,
    ) {
        // The device learns which connection a session belongs to by the viewer key the
        // rendezvous introduced; the viewer started the session itself.
        let id = self.by_session.get(&session).copied().or_else(|| {
            self.conns
                .values()
                .filter(|c| c.session.is_none() && c.remote_key == remote_static)
                .max_by_key(|c| c.created)
                .map(|c| c.id)
        });
        // A device that served an early session the viewer then did not keep (it raced
        // two initiations and completed the other first) moves to the confirmed one.
        let id = id.or_else(|| {
            let conn = self
                .conns
                .values()
                .filter(|c| c.session_unconfirmed && c.remote_key == remote_static)
                .max_by_key(|c| c.created)?;
            let (id, stale) = (conn.id, conn.session?);
            self.by_session.remove(&stale);
            self.sessions.close(stale);
            Some(id)
        });
        let Some(id) = id else {
            tracing::info!("closing a session from a peer nobody introduced");
            self.sessions.close(session);
            return;
        };
        // Of two raced early handshakes, the one established first is kept.
        self.keep_handshake(id, |kept, _| kept == session);
        self.by_session.insert(session, id);
        let mut early = false;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.session = Some(session);
            conn.heard(now);
            if conn.auth != AuthState::Accepted {
                conn.auth = AuthState::Pending { attempts: 0 };
            }
            early = std::mem::take(&mut conn.early_accept);
            conn.session_unconfirmed = early;
        }
        match self.role {
            Role::Viewer(_) => self.send_auth_request(now, id),
            // Served at once: the viewer's authorization request, a round trip later,
            // only says whether to remember its key.
            Role::Device(_) if early => self.device_authorize(now, id, false),
            Role::Device(_) => {}
        }
    }

    /// Drains every core's queued output after an input: session handshakes and events,
    /// then each connection's probes, signals, path events and media events. Media
    /// datagrams stay in their connection until [`Endpoint::poll_transmit`] pulls them.
    /// A connection event may start a handshake (the viewer's, on the first working
    /// path), so the sessions are drained again after the connections: otherwise that
    /// initiation would wait for the next input or timer.
    fn flush(&mut self, now: Instant) {
        for pass in 0..FLUSH_PASSES {
            let sent = self.drain_session_transmits();
            let mut session_events = false;
            while let Some(event) = self.sessions.poll_event() {
                session_events = true;
                self.on_session_event(now, event);
            }
            if pass > 0 && !sent && !session_events {
                break;
            }
            let mut ids = std::mem::take(&mut self.scratch_ids);
            ids.clear();
            ids.extend(self.conns.keys().copied());
            for &id in &ids {
                self.flush_connection(now, id);
            }
            self.scratch_ids = ids;
        }
    }

    /// Moves the session table's queued datagrams (handshakes, cookie replies, sealed
    /// signaling) into the transmit queue. Returns whether there were any.
    fn drain_session_transmits(&mut self) -> bool {
        let mut any = false;
        loop {
            if self.outbox.is_full() {
                break;
            }
            let (sessions, conns, by_channel) = (&mut self.sessions, &self.conns, &self.by_channel);
            let mut produced = false;
            self.outbox.push_with(None, |buf| {
                let transmit = sessions.poll_transmit(buf.get_mut(DATA_HEADER_LEN..)?)?;
                produced = true;
                let len = transmit.len;
                match virtual_channel(transmit.destination) {
                    Some(channel) => {
                        let server = by_channel
                            .get(&channel)
                            .and_then(|id| conns.get(id))
                            .and_then(|c| c.relay.as_ref())
                            .map(|r| r.server)?;
                        write_data_header(buf, channel);
                        Some((server, DATA_HEADER_LEN + len))
                    }
                    None => {
                        buf.copy_within(DATA_HEADER_LEN..DATA_HEADER_LEN + len, 0);
                        Some((transmit.destination, len))
                    }
                }
            });
            if !produced {
                break;
            }
            any = true;
        }
        any
    }

    /// Pulls media datagrams into the transmit queue, a few per connection per round.
    fn refill_media(&mut self) {
        let now = self.now;
        let mut ids = std::mem::take(&mut self.scratch_ids);
        ids.clear();
        ids.extend(self.conns.keys().copied());
        // Start after the connection served last.
        if let Some(cursor) = self.media_cursor {
            let split = ids.partition_point(|id| *id <= cursor);
            ids.rotate_left(split);
        }
        let mut pulled = 0;
        'rounds: loop {
            let mut any = false;
            for &id in &ids {
                for _ in 0..MEDIA_PER_PEER_ROUND {
                    if pulled >= MEDIA_REFILL {
                        self.media_cursor = Some(id);
                        break 'rounds;
                    }
                    let Some(conn) = self.conns.get_mut(&id) else {
                        break;
                    };
                    if !conn.may_send_media() {
                        // Nothing may leave before the viewer is authorized.
                        while conn.media.poll_transmit(now).is_some() {}
                        break;
                    }
                    let Some(transmit) = conn.media.poll_transmit(now) else {
                        // Its queue may have run dry: the next frame of a catch-up from
                        // the GOP cache goes in now (§4.1).
                        if self.feed_catch_up(now, id) {
                            continue;
                        }
                        break;
                    };
                    any = true;
                    pulled += 1;
                    self.send_sealed(now, id, |buf| transmit.write_to(buf));
                }
            }
            if !any {
                break;
            }
        }
        self.scratch_ids = ids;
    }

    /// A viewer was authorized: on every stream it is subscribed to with a cached GOP it
    /// catches up from the keyframe (§4.1).
    fn gop_join(&mut self, now: Instant, id: PeerId) {
        if let Some(conn) = self.conns.get(&id) {
            let streams = conn.gop.streams();
            self.gop_start(now, id, streams, false);
        }
    }

    /// Viewer `id` catches up from the cache on each of `streams` the cache can serve it
    /// (§4.1). The application is asked for a keyframe where replaying the GOP costs
    /// more than a fresh keyframe would, and, with `ask_uncached`, on a stream the cache
    /// cannot serve (the viewer would wait for the encoder's next one).
    fn gop_start(&mut self, now: Instant, id: PeerId, streams: StreamSet, ask_uncached: bool) {
        let Role::Device(device) = &self.role else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let budget = self.media_config.latency_budget;
        for stream in streams.iter() {
            let ask = match conn.gop.start(&device.gop, stream, now, budget) {
                Some(catch_up) => {
                    self.stats.catch_ups += 1;
                    tracing::debug!(
                        peer = id.0,
                        stream = stream.get(),
                        frames = catch_up.frames,
                        "viewer catches up from the GOP cache"
                    );
                    catch_up.ask
                }
                None => ask_uncached,
            };
            if ask && conn.gop.should_ask(stream, now) {
                let event = Event::KeyframeRequested { peer: id, stream };
                push_event(&mut self.events, &mut self.stats, None, event);
            }
        }
    }

    /// Hands the next catch-up frame from the GOP cache to connection `id`'s media layer
    /// if that connection's transmit queue is empty (one frame at a time: what the media
    /// layer holds decides how fast a catch-up goes, and its frame-drop policy sees an
    /// empty queue, spec/media.md 4.7). Returns whether a frame was handed over.
    fn feed_catch_up(&mut self, now: Instant, id: PeerId) -> bool {
        let Role::Device(device) = &self.role else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        if !conn.may_send_media()
            || conn.media.memory().transmit_queue_packets > 0
            || !conn.gop.catching_up(&device.gop)
        {
            return false;
        }
        let budget = self.media_config.latency_budget;
        let mut abandoned = 0u16;
        let fed = match conn.gop.next_feed(&device.gop, now, budget, &mut abandoned) {
            Some((stream, frame)) => {
                let accepted = conn.media.send_frame(now, frame).is_ok();
                conn.gop.fed(&device.gop, stream, now, accepted);
                self.stats.catch_up_frames += u64::from(accepted);
                true
            }
            None => false,
        };
        for index in 0..sightwire_media::MAX_STREAMS as u8 {
            if abandoned & (1 << index) == 0 {
                continue;
            }
            self.stats.catch_ups_abandoned += 1;
            let Some(stream) = sightwire_media::StreamId::new(index) else {
                continue;
            };
            tracing::debug!(peer = id.0, stream = index, "catch-up abandoned");
            if conn.gop.should_ask(stream, now) {
                let event = Event::KeyframeRequested { peer: id, stream };
                push_event(&mut self.events, &mut self.stats, None, event);
            }
        }
        fed
    }

    fn report_stats(&mut self) {
        if self.stats.events_dropped > self.reported.1 {
            tracing::warn!(
                dropped = self.stats.events_dropped - self.reported.1,
                total = self.stats.events_dropped,
                "the application is not reading events fast enough; events were dropped"
            );
            self.reported.1 = self.stats.events_dropped;
        }
        if self.stats.send_errors > self.reported.0 {
            let count = self.stats.send_errors - self.reported.0;
            self.reported.0 = self.stats.send_errors;
            let last = self.last_send_error.unwrap_or(std::io::ErrorKind::Other);
            tracing::warn!(count, ?last, "datagrams could not be sent");
            self.emit(None, Event::SendErrors { count, last });
        }
        let reports: Vec<(Option<WatchId>, PeerId, crate::events::PeerStats)> = self
            .conns
            .values()
            .filter(|c| c.auth == AuthState::Accepted)
            .map(|c| (c.watch, c.id, c.peer_stats()))
            .collect();
        for (watch, peer, stats) in reports {
            self.emit(watch, Event::Stats { peer, stats });
        }
    }

    /// Peers through the relay only: the relay-only policy, or UDP is blocked.
    pub(crate) fn relay_only(&self) -> bool {
        self.path_policy == PathPolicy::RelayOnly || self.udp_blocked
    }

    /// No rendezvous session over UDP [`STREAM_FALLBACK_AFTER`] after the endpoint
    /// started trying: UDP is taken to be blocked, and the rendezvous handshake starts
    /// again, over a stream to the same address (`spec/stream.md` §1).
    fn stream_fallback(&mut self, now: Instant) {
        if self.rendezvous.ready
            || self.udp_blocked
            || self.udp_worked
            || self.rendezvous.server.stream_port.is_none()
        {
            return;
        }
        tracing::warn!("no answer from the rendezvous over UDP: falling back to TCP/TLS");
        self.udp_blocked = true;
        self.emit(None, Event::UdpBlocked);
        self.viewer_rendezvous_over_stream(now);
        self.timers.stop(EndpointTimer::RendezvousRetry);
        self.connect_rendezvous(now);
    }

    /// Remembers the stream port of a relay from a grant.
    pub(crate) fn note_relay_stream_port(&mut self, relay: SocketAddr, port: Option<u16>) {
        self.relay_stream_ports.retain(|(known, _)| *known != relay);
        if let Some(port) = port {
            if self.relay_stream_ports.len() >= MAX_RELAY_STREAM_PORTS {
                self.relay_stream_ports.pop_front();
            }
            self.relay_stream_ports.push_back((relay, port));
        }
    }

    fn host_candidates(&self) -> Vec<SocketAddr> {
        if self.relay_only() || self.local_port == 0 {
            return Vec::new();
        }
        self.host_ip
            .map(|ip| SocketAddr::new(ip, self.local_port))
            .into_iter()
            .collect()
    }
}

/// Queues an event for the application, or counts it as dropped when
/// [`MAX_QUEUED_EVENTS`] are waiting.
fn push_event(
    events: &mut VecDeque<EndpointEvent>,
    stats: &mut EndpointStats,
    watch: Option<WatchId>,
    event: Event,
) {
    if events.len() >= MAX_QUEUED_EVENTS {
        stats.events_dropped += 1;
        return;
    }
    events.push_back(EndpointEvent { watch, event });
}
