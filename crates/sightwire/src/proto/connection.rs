//! One viewer ↔ device connection: its punch agent, relay allocation, Noise session,
//! authorization state, media state and timers, and how its packets are routed.
//!
//! Relayed sessions: the session table identifies peers by address, but every peer
//! reached through one relay shares that relay's address. So a datagram relayed on
//! channel `c` is given to the table as coming from a *virtual* address that encodes `c`
//! (`[100::c]:0`, inside the IPv6 discard prefix `100::/64`, RFC 6666), and a transmit to
//! such an address is wrapped for channel `c` and sent to the relay.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use sightwire_id::DeviceId;
use sightwire_media::{Event as MediaEvent, MediaConnection};
use sightwire_punch::probe::Probe;
use sightwire_punch::{Agent, Event as PunchEvent, PathKind, PunchKey, PunchSignal, StartAttempt};
use sightwire_relay_wire::{
    BIND_ECHO_LEN, COOKIE_LEN, DATA_HEADER_LEN, RelayPacket, write_data_header,
};
use sightwire_session::auth::AuthRejection;
use sightwire_session::{
    HandshakeFailure, PublicKey, SessionId, SessionKind, TRANSPORT_HEADER_LEN,
};
use sightwire_signal::grant::RelayGrantToken;
use sightwire_signal::{
    Body, CandidateSet as SignalSet, CandidateUpdate, Close, CloseReason, ConnectId,
};

use super::device::grant_wait;
use super::gop::{ConnectionResume, ViewerGop};
use super::timer::{TimerTable, timers};
use super::{Endpoint, Role, WatchId};
use crate::error::ConnectError;
use crate::events::{Event, Path, PeerClosedReason, PeerId, PeerStats, Transport};

/// Relay binds are retransmitted at this interval until the relay answers.
/// Peer-session plaintext saying "I am closing this connection" (`spec/endpoint.md` §3),
/// so the other side stops at once instead of after the idle timeout.
pub(crate) const GOODBYE: u8 = 0x90;
/// Peer-session plaintext `[PATH_CHALLENGE, token[8]]`: "answer this from where you
/// are" (`spec/endpoint.md` §3). A direct path only moves to a new peer address once the
/// peer answers from it, so one spoofed (even authenticated) packet cannot point a
/// stream at a third party.
pub(crate) const PATH_CHALLENGE: u8 = 0x91;
/// Peer-session plaintext `[PATH_RESPONSE, token[8]]`, sent to where the challenge came
/// from.
pub(crate) const PATH_RESPONSE: u8 = 0x92;
/// Least time between two challenges of one connection (bounds what a spoofer can make
/// us send to a victim: one 39-byte datagram per interval).
pub(crate) const PATH_CHALLENGE_INTERVAL: Duration = Duration::from_millis(200);
pub(crate) const RELAY_BIND_RETRY: Duration = Duration::from_millis(400);
/// Most relay bind transmissions per grant.
pub(crate) const RELAY_BIND_ATTEMPTS: u32 = 25;
/// A connection that is not established and authorized by then is dropped.
pub(crate) const PEER_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A connected peer silent for this long is dropped.
pub(crate) const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A viewer whose path has been lost this long connects again through the rendezvous:
/// a fresh punch from both sides, as after a move to another network, where the
/// device's NAT would filter the viewer's new mapping.
pub(crate) const REPATH_WAIT: Duration = Duration::from_secs(3);
/// Peers exchange media reports every 200 ms even when no frame flows; a viewer that
/// hears nothing from its device for this long treats the path as broken (a NAT mapping
/// moved or expired under it) and reconnects, without waiting for the punch agent's
/// slower keepalive-based liveness check.
pub(crate) const SILENCE_REPATH: Duration = Duration::from_secs(2);
/// Viewer: an early handshake towards the selected path gets the path's round trip plus
/// this long to finish before it starts again.
pub(crate) const HANDSHAKE_SLACK: Duration = Duration::from_millis(50);

timers! {
    /// Per-connection deadlines.
    pub(crate) enum ConnTimer {
        /// Start punching (the relay grant came, or waiting for it is over).
        Start,
        /// Resend the relay bind.
        RelayBind,
        /// Resend the authorization request (viewer).
        AuthRetry,
        /// Nothing heard from the peer for [`PEER_IDLE_TIMEOUT`].
        Idle,
        /// Not up and authorized within [`PEER_SETUP_TIMEOUT`].
        Setup,
        /// The path has been lost for [`REPATH_WAIT`] (viewer).
        Repath,
        /// Nothing heard for [`SILENCE_REPATH`] on an authorized connection (viewer).
        Silence,
        /// Viewer: (re)start the Noise handshake if it is not up yet: at the punch start
        /// (early, towards the device's public address), and a round trip after a path
        /// was selected while an early initiation was still unanswered.
        Handshake,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthState {
    /// Waiting for the handshake.
    NotStarted,
    /// Viewer: request sent `attempts` times; device: waiting for a request.
    Pending {
        attempts: u32,
    },
    Accepted,
}

#[derive(Debug)]
pub(crate) struct RelayLink {
    pub(crate) server: SocketAddr,
    pub(crate) token: RelayGrantToken,
    pub(crate) channel: u64,
    pub(crate) bound: bool,
    pub(crate) attempts: u32,
}

/// Why a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Handshake(HandshakeFailure),
    NoPath,
    SetupTimeout,
    Idle,
    Rejected(AuthRejection),
    AuthTimeout,
    /// The device refused the connect offer: it serves all the viewers it may.
    DeviceBusy,
    /// The other side (through the rendezvous) ended the attempt.
    ClosedByPeer,
}

impl Failure {
    pub(crate) fn closed_reason(self) -> PeerClosedReason {
        match self {
            Failure::Handshake(_) => PeerClosedReason::HandshakeFailed,
            Failure::NoPath => PeerClosedReason::NoPath,
            Failure::SetupTimeout | Failure::Idle | Failure::AuthTimeout => {
                PeerClosedReason::Timeout
            }
            Failure::Rejected(reason) => PeerClosedReason::Rejected(reason),
            Failure::DeviceBusy => PeerClosedReason::TooManyViewers,
            Failure::ClosedByPeer => PeerClosedReason::Closed,
        }
    }

    /// Whether another attempt may succeed where this one failed (a path or a timing
    /// problem), as opposed to an answer (refused, wrong key, busy).
    pub(crate) fn is_transient(self) -> bool {
        match self {
            Failure::Handshake(HandshakeFailure::RemoteKeyMismatch { .. })
            | Failure::Rejected(_)
            | Failure::DeviceBusy => false,
            Failure::Handshake(_)
            | Failure::NoPath
            | Failure::SetupTimeout
            | Failure::Idle
            | Failure::AuthTimeout
            | Failure::ClosedByPeer => true,
        }
    }

    pub(crate) fn connect_error(self) -> ConnectError {
        match self {
            Failure::Handshake(HandshakeFailure::RemoteKeyMismatch { .. }) => {
                ConnectError::KeyMismatch
            }
            Failure::Handshake(_) => ConnectError::HandshakeFailed,
            Failure::NoPath => ConnectError::NoPath,
            Failure::SetupTimeout | Failure::Idle | Failure::AuthTimeout => ConnectError::Timeout,
            Failure::Rejected(reason) => ConnectError::NotAuthorized(reason),
            Failure::DeviceBusy => ConnectError::DeviceBusy,
            Failure::ClosedByPeer => ConnectError::NoPath,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) id: PeerId,
    /// The viewer's watch this connection serves (`None` on a device).
    pub(crate) watch: Option<WatchId>,
    pub(crate) device_id: DeviceId,
    /// The other end's static key (device key for a viewer, viewer key for a device).
    pub(crate) remote_key: PublicKey,
    pub(crate) agent: Agent,
    punch_key: PunchKey,
    /// Start signal held back until the relay grant arrives (or the wait is over), and
    /// when it arrived (its `start_in` counts from then).
    pub(crate) pending_start: Option<(StartAttempt, Instant)>,
    pub(crate) relay: Option<RelayLink>,
    pub(crate) path: Option<Path>,
    /// The peer's direct address that has proven it receives what we send (the punch
    /// check's address, or a path challenge answered from it).
    pub(crate) validated: Option<SocketAddr>,
    /// The outstanding path challenge: (address, token, when sent).
    pub(crate) challenge: Option<(SocketAddr, [u8; 8], Instant)>,
    pub(crate) session: Option<SessionId>,
    /// Viewer: where the handshake of `session` was started (a relay channel's virtual
    /// address when relayed).
    pub(crate) handshake_to: Option<SocketAddr>,
    /// Viewer: the device's server-reflexive address, where the handshake starts at the
    /// punch start before any path is selected (`spec/endpoint.md` §2).
    pub(crate) early_handshake_to: Option<SocketAddr>,
    /// Viewer: a second early handshake, through the relay, raced against `session`
    /// until one of them is established or a path is selected: (session, its virtual
    /// address).
    pub(crate) spare_session: Option<(SessionId, SocketAddr)>,
    /// Device: the viewer's server-reflexive address as the rendezvous saw it. A Noise
    /// initiation from its IP address (any port), or through this connection's relay
    /// channel, is served at once, without waiting for the viewer's confirmation
    /// (`spec/endpoint.md` §2).
    pub(crate) early_source: Option<SocketAddr>,
    /// Device: `session` was established early and the viewer is served before its
    /// authorization request arrives.
    pub(crate) early_accept: bool,
    /// Device: `session` was established early and nothing has arrived on it yet. A
    /// raced initiation of the same viewer that the viewer confirms instead replaces it.
    pub(crate) session_unconfirmed: bool,
    pub(crate) auth: AuthState,
    pub(crate) media: MediaConnection,
    pub(crate) created: Instant,
    /// A newer connection for the same watch is being set up to replace this one.
    pub(crate) superseded: bool,
    frames_delivered: u64,
    bytes_delivered: u64,
    pub(crate) timers: TimerTable<ConnTimer, 8>,
    /// Device: where this viewer is in each stream's GOP (`spec/endpoint.md` §4.1).
    pub(crate) gop: ViewerGop,
    /// Viewer: whether this connection's frames resume a GOP its watch delivered.
    pub(crate) resume: ConnectionResume,
}

impl Connection {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        now: Instant,
        id: PeerId,
        watch: Option<WatchId>,
        device_id: DeviceId,
        remote_key: PublicKey,
        punch_key: [u8; 32],
        agent: Agent,
        media: MediaConnection,
    ) -> Self {
        let mut timers = TimerTable::default();
        timers.set(ConnTimer::Idle, now + PEER_IDLE_TIMEOUT);
        timers.set(ConnTimer::Setup, now + PEER_SETUP_TIMEOUT);
        Self {
            id,
            watch,
            device_id,
            remote_key,
            agent,
            punch_key: PunchKey::new(punch_key),
            pending_start: None,
            relay: None,
            path: None,
            validated: None,
            challenge: None,
            session: None,
            handshake_to: None,
            early_handshake_to: None,
            spare_session: None,
            early_source: None,
            early_accept: false,
            session_unconfirmed: false,
            auth: AuthState::NotStarted,
            media,
            created: now,
            superseded: false,
            frames_delivered: 0,
            bytes_delivered: 0,
            timers,
            gop: ViewerGop::default(),
            resume: ConnectionResume::default(),
        }
    }

    /// Whether this connection's attempt key authenticates the probe.
    pub(crate) fn authenticates_probe(&self, datagram: &[u8]) -> bool {
        Probe::decode(datagram, &self.punch_key).is_ok()
    }

    /// Something authenticated arrived from the peer.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.timers.set(ConnTimer::Idle, now + PEER_IDLE_TIMEOUT);
        if self.watch.is_some() && self.auth == AuthState::Accepted && !self.superseded {
            self.timers.set(ConnTimer::Silence, now + SILENCE_REPATH);
        }
    }

    pub(crate) fn relay_bound(&mut self) {
        if let Some(relay) = &mut self.relay {
            relay.bound = true;
        }
        self.timers.stop(ConnTimer::RelayBind);
    }

    /// Authorized and with a session: media may leave.
    pub(crate) fn may_send_media(&self) -> bool {
        self.session.is_some() && self.auth == AuthState::Accepted
    }

    pub(crate) fn accepted(&mut self, now: Instant) {
        self.auth = AuthState::Accepted;
        self.timers.stop(ConnTimer::Setup);
        self.timers.stop(ConnTimer::AuthRetry);
        self.heard(now);
    }

    pub(crate) fn supersede(&mut self) {
        self.superseded = true;
        self.timers.stop(ConnTimer::Silence);
        self.timers.stop(ConnTimer::Repath);
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [
            self.timers.next(),
            self.agent.poll_timeout(),
            self.media.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(crate) fn peer_stats(&self) -> PeerStats {
        let stats = self.media.stats();
        PeerStats {
            path: self.path,
            rtt: stats.rtt,
            loss: stats.receive_loss.max(stats.send_loss),
            frames_delivered: self.frames_delivered,
            frames_late: stats.frames_late,
            frames_dropped: stats.frames_evicted,
            frames_skipped: stats.frames_discarded_awaiting_keyframe,
            bytes_delivered: self.bytes_delivered,
            target_bitrate_bps: stats.target_bitrate_bps,
            media: Box::new(stats),
        }
    }
}

impl Endpoint {
    /// A new connection with its own punch agent and media state.
    pub(crate) fn new_connection(
        &mut self,
        now: Instant,
        id: PeerId,
        watch: Option<WatchId>,
        device_id: DeviceId,
        remote_key: PublicKey,
        punch_key: [u8; 32],
    ) -> Option<Connection> {
        let media = MediaConnection::new(self.media_config.clone(), now).ok()?;
        let agent = Agent::new(sightwire_punch::Config::new(
            self.host_candidates(),
            rand::RngCore::next_u64(&mut self.agent_rng),
        ));
        self.stats.connections_opened += 1;
        Some(Connection::new(
            now, id, watch, device_id, remote_key, punch_key, agent, media,
        ))
    }

    /// Holds the punch start until the relay grant (or `wait`) and registers `conn`.
    /// Holds `start` until the relay grant arrives when one is expected (`grant_expected`),
    /// at most [`grant_wait`] of its `start_in`, then starts punching.
    pub(crate) fn insert_connection(
        &mut self,
        now: Instant,
        mut conn: Connection,
        mut start: StartAttempt,
        grant_expected: bool,
    ) {
        // Over a TCP/TLS stream the rendezvous observed a virtual address: no candidate.
        if start
            .local_reflexive
            .is_some_and(sightwire_stream::is_stream_peer)
        {
            start.local_reflexive = None;
        }
        let wait = if grant_expected {
            grant_wait(start.start_in)
        } else {
            start.start_in
        };
        conn.pending_start = Some((start, now));
        conn.timers.set(ConnTimer::Start, now + wait);
        self.conns.insert(conn.id, conn);
    }

    /// A relay grant for a connection: bind, and start punching now that the relay
    /// candidate is known.
    pub(crate) fn on_relay_grant(&mut self, now: Instant, grant: sightwire_signal::RelayGrant) {
        let id = PeerId(grant.connect_id.0);
        if !self.conns.contains_key(&id) {
            return;
        }
        self.note_relay_stream_port(grant.relay, grant.relay_stream_port);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        // The token is sealed for the relay; only its channel is readable.
        let channel = grant.token.channel();
        if let Some(old) = conn.relay.take() {
            self.by_channel.remove(&old.channel);
        }
        conn.relay = Some(RelayLink {
            server: grant.relay,
            token: grant.token,
            channel,
            bound: false,
            attempts: 0,
        });
        // Start now: the grant was the last thing we were waiting for. (A grant that
        // arrives after the wait is too late for this attempt's relay candidate.)
        if let Some((mut start, received)) = conn.pending_start.take() {
            start.relay = Some(grant.relay);
            start.start_in = start.start_in.saturating_sub(now - received);
            conn.timers.stop(ConnTimer::Start);
            self.start_punch(now, id, start);
        }
        self.by_channel.insert(channel, id);
        self.send_relay_bind(now, id);
    }

    /// Hands the start to the punch agent. A viewer also arms its early handshake for
    /// the punch start, towards the device's server-reflexive address: that is where a
    /// direct path through endpoint-independent NATs ends up, and the initiation then
    /// travels with the first checks instead of after a path was selected. It leaves at
    /// the punch start, not before, so that the device's opening packets have left
    /// (spec/punch.md §5) and it cannot land on the device's NAT first.
    fn start_punch(&mut self, now: Instant, id: PeerId, start: StartAttempt) {
        let early = !self.relay_only() && matches!(self.role, Role::Viewer(_));
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if early && conn.session.is_none() {
            conn.early_handshake_to = start
                .remote
                .candidates
                .iter()
                .find(|c| c.kind == sightwire_punch::CandidateKind::ServerReflexive)
                .map(|c| c.address);
            if conn.early_handshake_to.is_some() || conn.relay.is_some() {
                conn.timers.set(ConnTimer::Handshake, now + start.start_in);
            }
        }
        conn.agent.handle_signal(now, PunchSignal::Start(start));
    }

    /// Viewer: starts the Noise handshake towards `destination`, replacing any that has
    /// not completed (their late answers are then dropped by the session table).
    fn start_peer_handshake(&mut self, now: Instant, id: PeerId, destination: SocketAddr) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let old = [
            conn.session.take(),
            conn.spare_session.take().map(|(s, _)| s),
        ];
        for old in old.into_iter().flatten() {
            // Forgotten first, so the session's end does not end the connection.
            self.by_session.remove(&old);
            self.sessions.close(old);
        }
        if let Some(session) = self.new_peer_session(now, id, destination)
            && let Some(conn) = self.conns.get_mut(&id)
        {
            conn.session = Some(session);
            conn.handshake_to = Some(destination);
        }
    }

    /// Viewer: a Noise initiation towards `destination` for connection `id`.
    fn new_peer_session(
        &mut self,
        now: Instant,
        id: PeerId,
        destination: SocketAddr,
    ) -> Option<SessionId> {
        let conn = self.conns.get(&id)?;
        let kind = SessionKind::Peer {
            device_id: conn.device_id,
        };
        match self
            .sessions
            .connect(now, destination, kind, conn.remote_key)
        {
            Ok(session) => {
                self.by_session.insert(session, id);
                Some(session)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start the peer handshake");
                None
            }
        }
    }

    /// Viewer: settles the connection's raced early handshakes (session, destination):
    /// the spare is kept instead of the primary if `keep` picks it, and forgotten
    /// otherwise. Returns whether the handshake left is one `keep` picks. Used when a
    /// path is selected (keep the one towards it), when one is established (keep that
    /// one) and when one fails (keep the other).
    pub(crate) fn keep_handshake(
        &mut self,
        id: PeerId,
        keep: impl Fn(SessionId, SocketAddr) -> bool,
    ) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        let primary = conn.session.zip(conn.handshake_to);
        let dropped = match conn.spare_session.take() {
            Some((spare, to)) if keep(spare, to) => {
                conn.session = Some(spare);
                conn.handshake_to = Some(to);
                primary.map(|(session, _)| session)
            }
            spare => spare.map(|(session, _)| session),
        };
        let kept = conn
            .session
            .zip(conn.handshake_to)
            .is_some_and(|(session, to)| keep(session, to));
        if let Some(dropped) = dropped {
            // Forgotten first, so the session's end does not end the connection.
            self.by_session.remove(&dropped);
            self.sessions.close(dropped);
        }
        kept
    }

    /// Viewer: the handshake timer fired. Starts the handshake (towards the selected
    /// path, or early towards the device's public address), or starts it again towards
    /// the current route if an earlier initiation went unanswered.
    fn viewer_handshake_due(&mut self, now: Instant, id: PeerId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if conn.auth != AuthState::NotStarted || conn.watch.is_none() {
            return;
        }
        let destination = match (conn.path, &conn.relay) {
            (Some(path), Some(relay)) if path.kind == PathKind::Relay => {
                virtual_addr(relay.channel)
            }
            (Some(path), _) => path.remote,
            (None, relay) if conn.session.is_none() => {
                // Early: towards the device's public address, and raced through the
                // relay when there is one (a pair that ends up relayed then needs no
                // handshake after the relay is selected).
                let relay = relay.as_ref().map(|r| virtual_addr(r.channel));
                let (first, spare) = match (conn.early_handshake_to, relay) {
                    (Some(direct), relay) => (direct, relay),
                    (None, Some(relay)) => (relay, None),
                    (None, None) => return,
                };
                tracing::debug!(peer = id.0, %first, ?spare, "early peer handshake");
                self.start_peer_handshake(now, id, first);
                if let Some(spare) = spare
                    && let Some(session) = self.new_peer_session(now, id, spare)
                    && let Some(conn) = self.conns.get_mut(&id)
                {
                    conn.spare_session = Some((session, spare));
                }
                return;
            }
            // An early initiation is in flight and no path is selected yet: the
            // selection re-arms this timer.
            (None, _) => return,
        };
        tracing::debug!(peer = id.0, %destination, "starting the peer handshake");
        self.start_peer_handshake(now, id, destination);
    }

    fn send_relay_bind(&mut self, now: Instant, id: PeerId) {
        self.send_relay_bind_with(now, id, None);
    }

    /// The relay challenged our BIND (our side is bound at another address, e.g. our NAT
    /// mapping changed between retransmissions): bind again echoing its cookie, which
    /// proves we receive at this address (spec/relay.md 3). Counts as a bind attempt.
    pub(crate) fn answer_relay_challenge(
        &mut self,
        now: Instant,
        id: PeerId,
        cookie: [u8; COOKIE_LEN],
    ) {
        self.send_relay_bind_with(now, id, Some(cookie));
    }

    fn send_relay_bind_with(&mut self, now: Instant, id: PeerId, cookie: Option<[u8; COOKIE_LEN]>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(relay) = &mut conn.relay else {
            return;
        };
        if relay.bound || relay.attempts >= RELAY_BIND_ATTEMPTS {
            return;
        }
        relay.attempts += 1;
        conn.timers
            .set(ConnTimer::RelayBind, now + RELAY_BIND_RETRY);
        let (token, server) = (relay.token, relay.server);
        self.outbox.push_with(None, |buf| {
            let buf = buf.get_mut(..BIND_ECHO_LEN)?;
            Some((server, (RelayPacket::Bind { token, cookie }).encode(buf)?))
        });
    }

    /// Fires the connection's due timers and its cores' timeouts.
    pub(crate) fn connection_timers(&mut self, now: Instant, id: PeerId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.agent.handle_timeout(now);
            conn.media.handle_timeout(now);
        }
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let Some(timer) = conn.timers.pop_expired(now) else {
                return;
            };
            let watch = conn.watch;
            match timer {
                ConnTimer::Start => {
                    if let Some((mut start, received)) = conn.pending_start.take() {
                        start.start_in = start.start_in.saturating_sub(now - received);
                        self.start_punch(now, id, start);
                    }
                }
                ConnTimer::Handshake => self.viewer_handshake_due(now, id),
                ConnTimer::RelayBind => self.send_relay_bind(now, id),
                ConnTimer::AuthRetry => self.send_auth_request(now, id),
                ConnTimer::Idle => return self.connection_failed(now, id, Failure::Idle),
                ConnTimer::Setup => return self.connection_failed(now, id, Failure::SetupTimeout),
                ConnTimer::Repath => {
                    if let Some(watch) = watch {
                        self.reconnect_watch(now, watch, "path lost");
                    }
                }
                ConnTimer::Silence => {
                    if let Some(watch) = watch {
                        self.reconnect_watch(now, watch, "device silent");
                    }
                }
            }
        }
    }

    /// A connection failed: the device closes it; the viewer lets its watch decide.
    pub(crate) fn connection_failed(&mut self, now: Instant, id: PeerId, failure: Failure) {
        tracing::info!(peer = id.0, ?failure, "connection failed");
        match self.conns.get(&id).and_then(|c| c.watch) {
            Some(watch) => self.watch_connection_failed(now, watch, id, failure),
            None => self.close_connection(now, id, failure.closed_reason(), true),
        }
    }

    /// Ends a connection and tells the application why.
    pub(crate) fn close_connection(
        &mut self,
        now: Instant,
        id: PeerId,
        reason: PeerClosedReason,
        tell_rendezvous: bool,
    ) {
        if let Some(conn) = self.detach_connection(now, id, tell_rendezvous) {
            tracing::info!(peer = id.0, ?reason, "connection closed");
            self.emit(conn.watch, Event::PeerClosed { peer: id, reason });
            if let Some(watch) = conn.watch {
                self.watch_connection_gone(now, watch, id);
            }
        }
    }

    /// Forgets a connection: its session keys, its relay channel and, when asked, its
    /// connect attempt at the rendezvous.
    pub(crate) fn detach_connection(
        &mut self,
        now: Instant,
        id: PeerId,
        tell_rendezvous: bool,
    ) -> Option<Connection> {
        let conn = self.conns.remove(&id)?;
        self.stats.connections_closed += 1;
        let sessions = [conn.session, conn.spare_session.map(|(s, _)| s)];
        for session in sessions.into_iter().flatten() {
            self.by_session.remove(&session);
            self.sessions.close(session);
        }
        if let Some(relay) = &conn.relay {
            self.by_channel.remove(&relay.channel);
        }
        if tell_rendezvous {
            self.send_signal(
                now,
                Body::Close(Close {
                    connect_id: Some(ConnectId(id.0)),
                    reason: CloseReason::Done,
                }),
                0,
                None,
            );
        }
        Some(conn)
    }

    /// Where packets for `conn` go now: (destination, relay channel if relayed).
    fn route(&self, conn: &Connection) -> Option<(SocketAddr, Option<u64>)> {
        let relayed = |conn: &Connection| conn.relay.as_ref().map(|r| (r.server, Some(r.channel)));
        match conn.path {
            Some(path) if path.kind == PathKind::Relay => relayed(conn),
            // A direct path goes to the address the peer's packets last *authenticated*
            // from (the session follows a roaming peer, WireGuard-style); the agent's
            // address only until the peer has sent on the path.
            // Only to an address that has proven it receives (a roaming peer's new
            // address is challenged first, see `check_peer_address`).
            Some(path) => match conn.session.and_then(|s| self.sessions.remote_addr(s)) {
                Some(addr)
                    if virtual_channel(addr).is_none()
                        && conn.validated.is_none_or(|v| v == addr) =>
                {
                    Some((addr, None))
                }
                _ => Some((conn.validated.unwrap_or(path.remote), None)),
            },
            None => {
                let addr = self.sessions.remote_addr(conn.session?)?;
                match virtual_channel(addr) {
                    Some(_) => relayed(conn),
                    None => Some((addr, None)),
                }
            }
        }
    }

    /// Seals `plaintext` for connection `id` and queues it on its current route.
    pub(crate) fn send_plaintext(&mut self, now: Instant, id: PeerId, plaintext: &[u8]) {
        self.send_sealed(now, id, |buf| {
            buf.get_mut(..plaintext.len())?.copy_from_slice(plaintext);
            Some(plaintext.len())
        });
    }

    /// Seals what `write` puts in the plaintext area and queues it for connection `id`.
    pub(crate) fn send_sealed(
        &mut self,
        now: Instant,
        id: PeerId,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        self.send_sealed_to(now, id, None, write);
    }

    /// As [`Endpoint::send_sealed`], to `to` instead of the current route when given (a
    /// direct address: path challenges and their answers).
    pub(crate) fn send_sealed_to(
        &mut self,
        now: Instant,
        id: PeerId,
        to: Option<SocketAddr>,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let route = match to {
            Some(addr) => Some((addr, None)),
            None => self.route(conn),
        };
        let (Some(session), Some((destination, channel))) = (conn.session, route) else {
            return;
        };
        let header = if channel.is_some() {
            DATA_HEADER_LEN
        } else {
            0
        };
        let sessions = &mut self.sessions;
        let mut sealed = false;
        self.outbox.push_with(None, |buf| {
            let len = write(buf.get_mut(header + TRANSPORT_HEADER_LEN..)?)?;
            let transmit = sessions
                .seal_in_place(session, now, buf.get_mut(header..)?, len)
                .ok()?;
            sealed = true;
            if let Some(channel) = channel {
                write_data_header(buf, channel);
            }
            Some((destination, header + transmit.len))
        });
        if !sealed {
            self.stats.seal_failures += 1;
        }
    }

    /// Drains a connection's probes, punch signals and events, and media events.
    pub(crate) fn flush_connection(&mut self, now: Instant, id: PeerId) {
        let relay_only = self.relay_only();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        while let Some(transmit) = conn.agent.poll_transmit() {
            let payload = transmit.payload();
            if transmit.via_relay {
                let Some(relay) = conn.relay.as_ref().filter(|r| r.bound) else {
                    continue;
                };
                let (server, channel) = (relay.server, relay.channel);
                self.outbox.push_with(None, |buf| {
                    let len = DATA_HEADER_LEN + payload.len();
                    buf.get_mut(DATA_HEADER_LEN..len)?.copy_from_slice(payload);
                    write_data_header(buf, channel);
                    Some((server, len))
                });
            } else if !relay_only {
                self.outbox
                    .push(transmit.destination, transmit.ttl, payload);
            }
        }
        let mut signals = Vec::new();
        while let Some(signal) = conn.agent.poll_signal() {
            signals.push(signal);
        }
        let mut punch_events = Vec::new();
        while let Some(event) = conn.agent.poll_event() {
            punch_events.push(event);
        }
        for signal in signals {
            if let PunchSignal::Candidates(set) = signal {
                match SignalSet::try_from(set) {
                    Ok(candidates) => {
                        let update = CandidateUpdate {
                            connect_id: ConnectId(id.0),
                            candidates,
                        };
                        self.send_signal(now, Body::CandidateUpdate(update), 0, None);
                    }
                    Err(error) => tracing::warn!(%error, "candidate update not sent"),
                }
            }
        }
        for event in punch_events {
            self.on_punch_event(now, id, event);
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let watch = conn.watch;
        let mut target_changed = false;
        let latency_budget = self.media_config.latency_budget;
        while let Some(event) = conn.media.poll_event() {
            let event = match event {
                MediaEvent::TargetBitrate { .. } => {
                    target_changed = true;
                    continue;
                }
                MediaEvent::Frame(frame) => {
                    // A GOP the device replays to a new connection (§4.1): what the watch
                    // already delivered is not given twice.
                    if let (Role::Viewer(viewer), Some(watch)) = (&mut self.role, watch)
                        && let Some(watch) = viewer.watches.get_mut(&watch)
                        && !watch.frames.admit(&mut conn.resume, &frame.frame)
                    {
                        self.stats.replayed_frames_skipped += 1;
                        continue;
                    }
                    conn.frames_delivered += 1;
                    conn.bytes_delivered += frame.frame.data.len() as u64;
                    Event::Frame { peer: id, frame }
                }
                MediaEvent::Control(message) => Event::Control { peer: id, message },
                MediaEvent::KeyframeRequested { stream } => {
                    if let Role::Device(device) = &self.role {
                        // The viewer left that stream (a request sent before it did):
                        // a keyframe would be for nobody.
                        if !conn.gop.streams().contains(stream) {
                            continue;
                        }
                        conn.gop.asked(stream, now);
                        // No keyframe is on its way to this viewer: serve it the cached
                        // GOP if it may have it (§4.1), and still pass the request on,
                        // since a fresh keyframe may come sooner.
                        if conn
                            .gop
                            .start(&device.gop, stream, now, latency_budget)
                            .is_some()
                        {
                            self.stats.catch_ups += 1;
                        }
                    }
                    Event::KeyframeRequested { peer: id, stream }
                }
                _ => continue,
            };
            if self.events.len() >= super::MAX_QUEUED_EVENTS {
                self.stats.events_dropped += 1;
            } else {
                self.events.push_back(super::EndpointEvent { watch, event });
            }
        }
        if target_changed {
            self.report_target_bitrate(watch);
        }
    }

    /// Tells the application the encoder's new target: a device's is the lowest among its
    /// authorized viewers (one encoder serves them all), a viewer's is per watch.
    fn report_target_bitrate(&mut self, watch: Option<WatchId>) {
        let targets = self
            .conns
            .values()
            .filter(|c| c.auth == AuthState::Accepted && (watch.is_none() || c.watch == watch))
            .map(|c| c.media.target_bitrate_bps());
        let Some(bps) = targets.min() else {
            return;
        };
        if watch.is_none() {
            if self.last_target_bps == Some(bps) {
                return;
            }
            self.last_target_bps = Some(bps);
        }
        self.emit(watch, Event::TargetBitrate { bps });
    }

    /// A session established through the relay channel before the punch agent selected
    /// any path (the raced early handshake, served at once): the relay is the path. The
    /// agent's later selection of the same relay is then no change to report.
    pub(crate) fn assume_relay_path(&mut self, id: PeerId) {
        let transport = if self.udp_blocked {
            Transport::Stream
        } else {
            Transport::Udp
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let through_relay = conn
            .session
            .and_then(|session| self.sessions.remote_addr(session))
            .and_then(virtual_channel)
            .is_some();
        if conn.path.is_none()
            && through_relay
            && let Some(relay) = &conn.relay
        {
            conn.path = Some(Path {
                kind: PathKind::Relay,
                remote: relay.server,
                rtt: Duration::ZERO,
                transport,
            });
        }
    }

    fn on_punch_event(&mut self, now: Instant, id: PeerId, event: PunchEvent) {
        let is_viewer = matches!(self.role, Role::Viewer(_));
        let udp_blocked = self.udp_blocked();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let watch = conn.watch;
        match event {
            PunchEvent::Connected(info) | PunchEvent::PathChanged(info) => {
                let transport = if info.via_relay && udp_blocked {
                    Transport::Stream
                } else {
                    Transport::Udp
                };
                let path = Path {
                    kind: info.kind,
                    remote: info.remote,
                    rtt: info.rtt,
                    transport,
                };
                let changed = conn.path.is_some() || conn.timers.is_set(ConnTimer::Repath);
                // A path the device assumed (it served a relayed early handshake) that the
                // agent now confirms is no change to report.
                let confirmed = conn.path.is_some_and(|old| {
                    (old.kind, old.remote, old.transport)
                        == (path.kind, path.remote, path.transport)
                });
                conn.timers.stop(ConnTimer::Repath);
                conn.path = Some(path);
                if !info.via_relay {
                    // The punch check was a request and its answer: return-routable.
                    conn.validated = Some(info.remote);
                }
                tracing::info!(peer = id.0, path = path.kind_name(), remote = %path.remote, "path selected");
                let destination = match (info.via_relay, &conn.relay) {
                    (true, Some(relay)) => virtual_addr(relay.channel),
                    _ => info.remote,
                };
                // The viewer's Noise handshake: started on the first working path, or
                // already under way since the punch start towards the device's public
                // address. An early one towards another address starts again on the
                // path; one towards this path gets a round trip (plus slack) to finish
                // before it starts again (its initiation may have met a closed NAT).
                let unfinished = is_viewer && conn.auth == AuthState::NotStarted;
                let rtt = info.rtt;
                let emit_change = !confirmed && (changed || conn.auth == AuthState::Accepted);
                if unfinished {
                    if self.keep_handshake(id, |_, to| to == destination) {
                        if let Some(conn) = self.conns.get_mut(&id) {
                            conn.timers
                                .set(ConnTimer::Handshake, now + rtt + HANDSHAKE_SLACK);
                        }
                    } else {
                        if let Some(conn) = self.conns.get_mut(&id) {
                            conn.timers.stop(ConnTimer::Handshake);
                        }
                        self.start_peer_handshake(now, id, destination);
                    }
                }
                if emit_change {
                    self.emit(watch, Event::PathChanged { peer: id, path });
                }
            }
            PunchEvent::PathLost(_) => {
                conn.path = None;
                if conn.watch.is_some() && !conn.superseded {
                    conn.timers.set(ConnTimer::Repath, now + REPATH_WAIT);
                }
                self.emit(watch, Event::PathLost { peer: id });
            }
            PunchEvent::Failed(_) if conn.auth != AuthState::Accepted => {
                self.connection_failed(now, id, Failure::NoPath);
            }
            _ => {}
        }
    }
}

/// The virtual address standing for relay channel `channel` (see the module docs).
pub(crate) fn virtual_addr(channel: u64) -> SocketAddr {
    let high = 0x0100_0000_0000_0000u64;
    let ip = Ipv6Addr::from((u128::from(high) << 64) | u128::from(channel));
    SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, 0))
}

/// The relay channel a virtual address stands for, if it is one.
pub(crate) fn virtual_channel(addr: SocketAddr) -> Option<u64> {
    match addr {
        SocketAddr::V6(v6) if v6.port() == 0 => {
            let bits = u128::from(*v6.ip());
            ((bits >> 64) as u64 == 0x0100_0000_0000_0000).then_some(bits as u64)
        }
        _ => None,
    }
}

impl Endpoint {
    /// An authenticated packet of connection `id` came from `from`. On a direct path, an
    /// address other than the validated one is challenged; packets keep going to the
    /// validated address until the peer answers from the new one.
    pub(crate) fn check_peer_address(&mut self, now: Instant, id: PeerId, from: SocketAddr) {
        if virtual_channel(from).is_some() {
            return;
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let direct = conn.path.is_some_and(|p| p.kind != PathKind::Relay);
        if !direct || conn.validated.is_none_or(|v| v == from) {
            return;
        }
        if conn.challenge.is_some_and(|(_, _, sent)| {
            now.saturating_duration_since(sent) < PATH_CHALLENGE_INTERVAL
        }) {
            return;
        }
        let mut token = [0u8; 8];
        rand::RngCore::fill_bytes(&mut self.agent_rng, &mut token);
        conn.challenge = Some((from, token, now));
        tracing::debug!(peer = id.0, %from, "challenging a new peer address");
        self.send_sealed_to(now, id, Some(from), |buf| {
            let out = buf.get_mut(..9)?;
            out[0] = PATH_CHALLENGE;
            out[1..].copy_from_slice(&token);
            Some(9)
        });
    }

    /// A path challenge or response arrived on connection `id` from `from`.
    pub(crate) fn on_path_validation(
        &mut self,
        now: Instant,
        id: PeerId,
        from: SocketAddr,
        plaintext: &[u8],
    ) {
        let Some((&kind, token)) = plaintext.split_first() else {
            return;
        };
        let Ok(token) = <[u8; 8]>::try_from(token) else {
            return;
        };
        if virtual_channel(from).is_some() {
            return;
        }
        match kind {
            PATH_CHALLENGE => self.send_sealed_to(now, id, Some(from), |buf| {
                let out = buf.get_mut(..9)?;
                out[0] = PATH_RESPONSE;
                out[1..].copy_from_slice(&token);
                Some(9)
            }),
            PATH_RESPONSE => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                if conn.challenge.is_some_and(|(addr, expected, _)| {
                    addr == from && tokens_equal(&expected, &token)
                }) {
                    tracing::info!(peer = id.0, %from, "peer address validated");
                    conn.validated = Some(from);
                    conn.challenge = None;
                }
            }
            _ => {}
        }
    }
}

/// Compares two tokens without an early exit (no timing hint about a partial match).
fn tokens_equal(a: &[u8; 8], b: &[u8; 8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightwire_media::wire::TYPE_FRAGMENT;

    #[test]
    fn virtual_addresses_round_trip_and_never_collide_with_real_ones() {
        for channel in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(virtual_channel(virtual_addr(channel)), Some(channel));
        }
        assert_eq!(virtual_channel("[2001:db8::1]:0".parse().unwrap()), None);
        assert_eq!(virtual_channel("[100::1]:5".parse().unwrap()), None);
        assert_eq!(virtual_channel("192.0.2.1:0".parse().unwrap()), None);
    }

    #[test]
    fn media_and_auth_first_bytes_do_not_overlap() {
        // The peer plaintext demultiplexer relies on these ranges (spec/endpoint.md).
        assert!(!(0x01..=0x0F).contains(&TYPE_FRAGMENT));
        assert!(!(0x80..=0x8F).contains(&TYPE_FRAGMENT));
        assert!((0x01..=0x0F).contains(&sightwire_session::auth::REQUEST_PASSWORD));
        assert!((0x80..=0x8F).contains(&sightwire_session::auth::RESPONSE_REJECTED));
    }
}
