//! The driver: one UDP socket, one clock, one timer, feeding the sans-IO cores.
//!
//! Every datagram is classified by its first byte (`spec/README.md`): session packets go
//! to the [`SessionTable`], punch checks to the [`Agent`] of the connection whose key
//! authenticates them, relay packets are unwrapped and classified again. Decrypted
//! plaintext from the rendezvous session is signaling; from a peer session it is either
//! viewer authorization (`sightwire_session::auth`) or media (`sightwire_media`). After
//! every input the driver drains every core's output, then sleeps until the earliest
//! deadline any core asked for.
//!
//! Relayed sessions: the session table identifies peers by address, but every peer
//! reached through one relay shares that relay's address. So a datagram relayed on
//! channel `c` is given to the table as coming from a *virtual* address that encodes `c`
//! (`[100::c]:0`, inside the IPv6 discard prefix `100::/64`, RFC 6666), and a transmit to
//! such an address is wrapped for channel `c` and sent to the relay.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::{RngCore, SeedableRng};
use sightwire_media::{Event as MediaEvent, Frame, MediaConnection, PacketizedFrame};
use sightwire_punch::{
    Agent, Candidate as PunchCandidate, CandidateKind as PunchKind, CandidateSet as PunchSet,
    Config as AgentConfig, Event as PunchEvent, PunchKey, PunchSignal, StartAttempt, probe::Probe,
};
use sightwire_relay::wire::{DATA_HEADER_LEN, RelayPacket, write_data_header};
use sightwire_relay::{channel_of, unix_now};
use sightwire_session::auth::{
    AuthRequest, AuthResponse, MAX_AUTH_MESSAGE_LEN, PasswordKey, ViewerAuthorizer,
};
use sightwire_session::{
    Config as SessionConfig, Event as SessionEvent, HandshakeFailure, Input, PublicKey, SessionId,
    SessionKind, SessionTable, TRANSPORT_HEADER_LEN,
};
use sightwire_signal::cert::{IdCertificate, TrustedIssuers};
use sightwire_signal::grant::{GRANT_TOKEN_LEN, RelayGrantToken};
use sightwire_signal::{
    Body, Candidate as SignalCandidate, CandidateSet as SignalSet, CandidateUpdate, Close,
    CloseReason, ConnectId, ConnectOffer, ConnectRequest, ConnectResponse, Envelope, ErrorCode,
    MAX_MESSAGE_LEN, Register, RelayGrant,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::config::{PathPolicy, RendezvousServer, Target};
use crate::error::ConnectError;
use crate::events::{Event, Path, PeerClosedReason, PeerId, PeerStats};

/// Largest datagram read or written.
const DATAGRAM_BUFFER: usize = 2048;
/// A keepalive to the rendezvous unanswered this long is retried, then the link is
/// declared dead and re-established (which re-registers a device).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Keepalive retries before the rendezvous link is declared dead.
const KEEPALIVE_RETRIES: u32 = 2;
/// Until the rendezvous says otherwise.
const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Backoff between attempts to reach the rendezvous: doubles up to the maximum.
const RENDEZVOUS_RETRY_MIN: Duration = Duration::from_millis(500);
const RENDEZVOUS_RETRY_MAX: Duration = Duration::from_secs(8);
/// A request to the rendezvous (register, connect) unanswered this long is sent again.
const REQUEST_RETRY: Duration = Duration::from_secs(1);
/// How long to wait for the relay grant that follows a connect response or offer before
/// starting to punch without it.
const GRANT_WAIT: Duration = Duration::from_millis(300);
/// Relay binds are retransmitted at this interval until the relay answers.
const RELAY_BIND_RETRY: Duration = Duration::from_millis(400);
/// Most relay bind transmissions per grant.
const RELAY_BIND_ATTEMPTS: u32 = 25;
/// Viewer authorization requests are retransmitted at this interval.
const AUTH_RETRY: Duration = Duration::from_millis(500);
/// Most authorization requests sent.
const AUTH_ATTEMPTS: u32 = 10;
/// A connection that is not established and authorized by then is dropped.
const PEER_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// A connected peer silent for this long is dropped.
const PEER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A viewer whose path has been lost this long (or whose network changed) connects
/// again through the rendezvous: a fresh punch from both sides, as after a move to
/// another network, where the device's NAT would filter the viewer's new mapping.
const REPATH_WAIT: Duration = Duration::from_secs(3);
/// Peers exchange media reports every 200 ms even when no frame flows; a viewer that
/// hears nothing from its device for this long treats the path as broken (a NAT
/// mapping moved or expired under it) and reconnects, without waiting for the punch
/// agent's slower keepalive-based liveness check.
const SILENCE_REPATH: Duration = Duration::from_secs(2);
/// A reconnect the rendezvous refused is tried again after this long.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(2);
/// How often per-peer figures are reported.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the local address is checked for a network change.
const NETWORK_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Connect requests are padded to this size so the rendezvous may answer them in full
/// (it never answers an unregistered client with more than it sent).
const CONNECT_REQUEST_PADDED_LEN: usize = MAX_MESSAGE_LEN;

/// What the application asks of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a frame: to every authorized viewer (device) or to the device (viewer).
    SendFrame(Frame),
    /// Send a control message to one peer, or to all if `None`.
    SendControl(Option<PeerId>, Bytes),
    /// Trust (or stop trusting) a viewer key (device only).
    SetTrusted(PublicKey, bool),
    /// Close the endpoint.
    Shutdown,
}

/// Which side this endpoint is.
pub(crate) enum Side {
    Device {
        certificate: IdCertificate,
        authorizer: ViewerAuthorizer,
        max_viewers: usize,
    },
    Viewer {
        target: Target,
        issuers: TrustedIssuers,
        password: Option<PasswordKey>,
        remember: bool,
        want_relay: bool,
        /// Told once the connection is up (or failed).
        ready: Option<oneshot::Sender<Result<PeerId, ConnectError>>>,
        connect_deadline: Instant,
        /// Connect request not yet answered: (request id, next retry).
        request: Option<(u64, Instant)>,
        /// A connect request should go out as soon as the rendezvous session is up
        /// (first connect, or a reconnect after a lost path or a network change).
        want_connect: Option<Instant>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthState {
    /// Waiting for the handshake.
    NotStarted,
    /// Viewer: request sent `attempts` times; device: waiting for a request.
    Pending {
        attempts: u32,
        next: Instant,
    },
    Accepted,
}

#[derive(Debug)]
struct RelayLink {
    server: SocketAddr,
    token: RelayGrantToken,
    channel: u64,
    bound: bool,
    attempts: u32,
    next_bind: Instant,
}

struct Peer {
    id: PeerId,
    device_id: [u8; 6],
    /// The other end's static key (device key for a viewer, viewer key for a device).
    remote_key: PublicKey,
    agent: Agent,
    punch_key: PunchKey,
    /// Start signal held back until the relay grant arrives (or `GRANT_WAIT` passes).
    pending_start: Option<(StartAttempt, Instant)>,
    relay: Option<RelayLink>,
    path: Option<Path>,
    session: Option<SessionId>,
    auth: AuthState,
    media: MediaConnection,
    created: Instant,
    last_heard: Instant,
    /// When the punch agent lost the path, if no new one was found since.
    lost_at: Option<Instant>,
    /// A newer connection to the same peer is being set up to replace this one.
    superseded: bool,
    frames_delivered: u64,
    bytes_delivered: u64,
}

struct RendezvousLink {
    server: RendezvousServer,
    session: Option<SessionId>,
    ready: bool,
    retry_at: Option<Instant>,
    retry_backoff: Duration,
    keepalive_interval: Duration,
    next_keepalive: Option<Instant>,
    keepalive_sent: Option<(Instant, u32)>,
    /// Device: register not yet acknowledged: (request id, next retry).
    register: Option<(u64, Instant)>,
    registered: bool,
    next_request_id: u64,
    observed: Option<SocketAddr>,
}

pub(crate) struct Driver {
    socket: UdpSocket,
    side: Side,
    sessions: SessionTable,
    rendezvous: RendezvousLink,
    peers: HashMap<PeerId, Peer>,
    by_session: HashMap<SessionId, PeerId>,
    by_channel: HashMap<u64, PeerId>,
    media_config: sightwire_media::Config,
    path_policy: PathPolicy,
    /// Packetizes device frames once for all viewers.
    packetizer: MediaConnection,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    events_dropped: u64,
    /// `events_dropped` at the last report, so each new loss is logged once.
    events_dropped_logged: u64,
    out: Vec<u8>,
    /// Scratch list of connection ids, reused by `flush`.
    peer_ids: Vec<PeerId>,
    encode: BytesMut,
    rng: rand::rngs::StdRng,
    local_port: u16,
    host_ip: Option<IpAddr>,
    next_network_check: Instant,
    next_stats: Instant,
    shutting_down: bool,
}

pub(crate) struct DriverSetup {
    pub(crate) socket: UdpSocket,
    pub(crate) side: Side,
    pub(crate) keypair: sightwire_session::StaticKeypair,
    pub(crate) rendezvous: RendezvousServer,
    pub(crate) media: sightwire_media::Config,
    pub(crate) path_policy: PathPolicy,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) events: mpsc::Sender<Event>,
}

impl Driver {
    pub(crate) fn new(setup: DriverSetup) -> Result<Self, sightwire_media::ConfigError> {
        let now = Instant::now();
        let mut seed_rng = rand::rngs::StdRng::from_entropy();
        let session_rng = Box::new(
            rand::rngs::StdRng::from_rng(&mut seed_rng)
                .unwrap_or_else(|_| rand::rngs::StdRng::seed_from_u64(seed_rng.next_u64())),
        );
        let sessions = match &setup.side {
            Side::Device { certificate, .. } => SessionTable::with_responder(
                setup.keypair,
                SessionKind::Peer {
                    device_id: certificate.device_id(),
                },
                SessionConfig::default(),
                session_rng,
            ),
            Side::Viewer { .. } => {
                SessionTable::new(setup.keypair, SessionConfig::default(), session_rng)
            }
        };
        let local_port = setup.socket.local_addr().map(|a| a.port()).unwrap_or(0);
        Ok(Self {
            socket: setup.socket,
            side: setup.side,
            sessions,
            rendezvous: RendezvousLink {
                server: setup.rendezvous,
                session: None,
                ready: false,
                retry_at: Some(now),
                retry_backoff: RENDEZVOUS_RETRY_MIN,
                keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
                next_keepalive: None,
                keepalive_sent: None,
                register: None,
                registered: false,
                next_request_id: 1,
                observed: None,
            },
            peers: HashMap::new(),
            by_session: HashMap::new(),
            by_channel: HashMap::new(),
            packetizer: MediaConnection::new(setup.media.clone(), now)?,
            media_config: setup.media,
            path_policy: setup.path_policy,
            commands: setup.commands,
            events: setup.events,
            events_dropped: 0,
            events_dropped_logged: 0,
            out: vec![0; DATAGRAM_BUFFER],
            peer_ids: Vec::new(),
            encode: BytesMut::with_capacity(MAX_MESSAGE_LEN),
            rng: seed_rng,
            local_port,
            host_ip: None,
            next_network_check: now,
            next_stats: now + STATS_INTERVAL,
            shutting_down: false,
        })
    }

    /// Runs until shut down (the command channel closes or says so).
    pub(crate) async fn run(mut self) {
        let mut buf = vec![0u8; DATAGRAM_BUFFER];
        self.host_ip = local_ip_towards(self.rendezvous.server.address);
        self.handle_timeout(Instant::now());
        while !self.shutting_down {
            let wake = self.poll_timeout();
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    if let Ok((len, from)) = received {
                        let now = Instant::now();
                        self.handle_datagram(now, from, &mut buf[..len]);
                        self.flush(now);
                    }
                }
                command = self.commands.recv() => {
                    let now = Instant::now();
                    match command {
                        Some(command) => self.handle_command(now, command),
                        None => self.shutdown(now),
                    }
                    self.flush(now);
                }
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    self.handle_timeout(now);
                }
            }
        }
    }

    fn emit(&mut self, event: Event) {
        if self.events.try_send(event).is_err() {
            // The application is not keeping up (or went away); never block the network.
            self.events_dropped += 1;
        }
    }

    // ---------------------------------------------------------------- input

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        let Some(&first) = datagram.first() else {
            return;
        };
        match first {
            0x01..=0x0F => self.handle_session_packet(now, from, datagram),
            0x20..=0x2F => self.handle_punch_packet(now, from, datagram, None),
            0x30..=0x3F => self.handle_relay_packet(now, from, datagram),
            _ => tracing::trace!(%from, first, "dropped datagram with unknown first byte"),
        }
    }

    fn handle_relay_packet(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        let channel = match RelayPacket::decode(datagram) {
            Ok(RelayPacket::Data { channel, .. }) => channel,
            Ok(RelayPacket::Bound { channel, .. }) => {
                if let Some(peer) = self.peer_by_channel(channel, from)
                    && let Some(relay) = &mut peer.relay
                {
                    relay.bound = true;
                }
                return;
            }
            Ok(RelayPacket::BindRefused { reason }) => {
                tracing::warn!(relay = %from, ?reason, "relay refused our bind");
                return;
            }
            Ok(RelayPacket::Bind { .. }) | Err(_) => return,
        };
        let Some(peer_id) = self.peer_by_channel(channel, from).map(|p| p.id) else {
            return;
        };
        let inner = &mut datagram[DATA_HEADER_LEN..];
        match inner.first() {
            Some(0x01..=0x0F) => self.handle_session_packet(now, virtual_addr(channel), inner),
            Some(0x20..=0x2F) => self.handle_punch_packet(now, from, inner, Some(peer_id)),
            _ => {}
        }
    }

    fn peer_by_channel(&mut self, channel: u64, relay: SocketAddr) -> Option<&mut Peer> {
        let id = self.by_channel.get(&channel)?;
        self.peers
            .get_mut(id)
            .filter(|p| p.relay.as_ref().is_some_and(|r| r.server == relay))
    }

    fn handle_punch_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        relayed_for: Option<PeerId>,
    ) {
        if relayed_for.is_none() && self.path_policy == PathPolicy::RelayOnly {
            return;
        }
        // Only the connection whose attempt key authenticates the probe gets it, so a
        // stranger's probes cost at most one MAC check per connection and touch no state.
        let target = match relayed_for {
            Some(id) => Some(id),
            None => self
                .peers
                .values()
                .find(|p| Probe::decode(datagram, &p.punch_key).is_ok())
                .map(|p| p.id),
        };
        if let Some(peer) = target.and_then(|id| self.peers.get_mut(&id)) {
            peer.agent.handle_datagram(now, from, datagram);
            peer.last_heard = now;
        }
    }

    fn handle_session_packet(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        let input = match self.sessions.handle_input(now, from, datagram) {
            Ok(input) => input,
            Err(error) => {
                tracing::trace!(%from, %error, "session packet dropped");
                return;
            }
        };
        match input {
            Input::Data {
                session,
                plaintext,
                endpoint_changed,
                ..
            } => {
                if Some(session) == self.rendezvous.session {
                    self.rendezvous.keepalive_sent = None;
                    match Envelope::decode(plaintext) {
                        Ok(envelope) => self.handle_signal(now, envelope),
                        Err(error) => tracing::debug!(%error, "bad signaling message"),
                    }
                } else if let Some(&peer_id) = self.by_session.get(&session) {
                    // The plaintext borrows the receive buffer, not `self`: no copy.
                    self.handle_peer_plaintext(now, peer_id, from, endpoint_changed, plaintext);
                }
            }
            Input::Keepalive {
                session,
                endpoint_changed,
                ..
            } => {
                if let Some(&peer_id) = self.by_session.get(&session) {
                    self.note_peer_heard(now, peer_id, from, endpoint_changed);
                } else if Some(session) == self.rendezvous.session {
                    self.rendezvous.keepalive_sent = None;
                }
            }
            Input::Handshake { .. } => {}
            _ => {}
        }
    }

    fn note_peer_heard(
        &mut self,
        now: Instant,
        peer_id: PeerId,
        from: SocketAddr,
        endpoint_changed: bool,
    ) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        peer.last_heard = now;
        // The session table already moved the peer's address (authenticated packets
        // only); `route` follows it for direct paths.
        if endpoint_changed {
            tracing::debug!(peer = peer_id.0, %from, "peer now sends from a new address");
        }
    }

    fn handle_peer_plaintext(
        &mut self,
        now: Instant,
        peer_id: PeerId,
        from: SocketAddr,
        endpoint_changed: bool,
        plaintext: &[u8],
    ) {
        self.note_peer_heard(now, peer_id, from, endpoint_changed);
        let Some(&first) = plaintext.first() else {
            return;
        };
        match first {
            0x01..=0x0F => self.device_handle_auth_request(now, peer_id, plaintext),
            0x80..=0x8F => self.viewer_handle_auth_response(now, peer_id, plaintext),
            _ => {
                let Some(peer) = self.peers.get_mut(&peer_id) else {
                    return;
                };
                if peer.auth != AuthState::Accepted {
                    return;
                }
                if let Err(error) = peer.media.handle_input(now, plaintext) {
                    tracing::trace!(%error, "bad media packet");
                }
            }
        }
    }

    fn device_handle_auth_request(&mut self, now: Instant, peer_id: PeerId, plaintext: &[u8]) {
        let Side::Device { authorizer, .. } = &mut self.side else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let Some(session) = peer.session else {
            return;
        };
        let (Ok(request), Some(hash)) = (
            AuthRequest::decode(plaintext),
            self.sessions.handshake_hash(session),
        ) else {
            return;
        };
        let Some(remote) = self.sessions.remote_static(session).copied() else {
            return;
        };
        let response = authorizer.authorize(now, &remote, hash, &request);
        let mut wire = [0u8; MAX_AUTH_MESSAGE_LEN];
        let Some(len) = response.encode(&mut wire) else {
            return;
        };
        let newly_accepted =
            matches!(response, AuthResponse::Accepted { .. }) && peer.auth != AuthState::Accepted;
        if matches!(response, AuthResponse::Accepted { .. }) {
            peer.auth = AuthState::Accepted;
        }
        let path = peer.path;
        self.send_plaintext(now, peer_id, &wire[..len]);
        match response {
            AuthResponse::Accepted { .. } if newly_accepted => {
                tracing::info!(peer = peer_id.0, "viewer authorized");
                // The same viewer reconnected (it moved, or lost its path): the older
                // connection's address is stale, stop sending there.
                let stale: Vec<PeerId> = self
                    .peers
                    .values()
                    .filter(|p| p.id != peer_id && p.remote_key == remote)
                    .map(|p| p.id)
                    .collect();
                for id in stale {
                    self.remove_peer(id, PeerClosedReason::Closed, true);
                }
                self.emit(Event::PeerConnected {
                    peer: peer_id,
                    key: remote,
                    path,
                });
            }
            AuthResponse::Rejected(reason) => {
                tracing::info!(peer = peer_id.0, ?reason, "viewer refused");
            }
            _ => {}
        }
    }

    fn viewer_handle_auth_response(&mut self, _now: Instant, peer_id: PeerId, plaintext: &[u8]) {
        let Ok(response) = AuthResponse::decode(plaintext) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        if !matches!(peer.auth, AuthState::Pending { .. }) {
            return;
        }
        match response {
            AuthResponse::Accepted { .. } => {
                peer.auth = AuthState::Accepted;
                let (key, path) = (peer.remote_key, peer.path);
                let first = match &mut self.side {
                    Side::Viewer { ready, .. } => match ready.take() {
                        Some(ready) => {
                            let _ = ready.send(Ok(peer_id));
                            true
                        }
                        None => false,
                    },
                    Side::Device { .. } => true,
                };
                if first {
                    self.emit(Event::PeerConnected {
                        peer: peer_id,
                        key,
                        path,
                    });
                } else {
                    // A reconnect: to the application the stream just changed path.
                    let replaced: Vec<PeerId> = self
                        .peers
                        .keys()
                        .copied()
                        .filter(|id| *id != peer_id)
                        .collect();
                    for id in replaced {
                        self.drop_peer_quietly(id);
                    }
                    tracing::info!(peer = peer_id.0, "reconnected");
                    if let Some(path) = path {
                        self.emit(Event::PathChanged {
                            peer: peer_id,
                            path,
                        });
                    }
                }
            }
            AuthResponse::Rejected(reason) => {
                self.fail_viewer(ConnectError::NotAuthorized(reason));
                self.remove_peer(peer_id, PeerClosedReason::Rejected(reason), true);
            }
        }
    }

    // ---------------------------------------------------------------- signaling

    fn handle_signal(&mut self, now: Instant, envelope: Envelope) {
        match envelope.body {
            Body::RegisterAck(ack) => {
                self.rendezvous.register = None;
                self.rendezvous.registered = true;
                self.rendezvous.keepalive_interval =
                    ack.keepalive_interval.max(Duration::from_secs(1));
                self.rendezvous.next_keepalive = Some(now + self.rendezvous.keepalive_interval);
                self.rendezvous.retry_backoff = RENDEZVOUS_RETRY_MIN;
                self.note_observed(now, ack.observed);
                tracing::info!(observed = %ack.observed, "registered with the rendezvous");
                self.emit(Event::Registered {
                    observed: ack.observed,
                });
            }
            Body::KeepaliveAck { observed } => self.note_observed(now, observed),
            Body::ConnectOffer(offer) => self.device_handle_offer(now, offer),
            Body::ConnectResponse(response) => self.viewer_handle_response(now, response),
            Body::RelayGrant(grant) => self.handle_grant(now, grant),
            Body::CandidateUpdate(update) => {
                let candidates = self.remote_candidates(&update.candidates);
                if let Some(peer) = self.peers.get_mut(&PeerId(update.connect_id.0)) {
                    peer.agent
                        .handle_signal(now, PunchSignal::Candidates(candidates));
                }
            }
            Body::Close(Close {
                connect_id: Some(connect_id),
                ..
            }) => {
                let id = PeerId(connect_id.0);
                // Only a connection that never came up is ended by the rendezvous: a
                // working peer session outlives the rendezvous's bookkeeping.
                if self
                    .peers
                    .get(&id)
                    .is_some_and(|p| p.auth != AuthState::Accepted)
                {
                    self.remove_peer(id, PeerClosedReason::Closed, false);
                }
            }
            Body::Close(Close {
                connect_id: None, ..
            }) => self.rendezvous_lost(now),
            Body::Error(reply) => {
                self.handle_rendezvous_error(now, envelope.request_id, reply.code)
            }
            _ => {}
        }
    }

    fn note_observed(&mut self, now: Instant, observed: SocketAddr) {
        if self.rendezvous.observed != Some(observed) {
            let changed = self.rendezvous.observed.is_some();
            self.rendezvous.observed = Some(observed);
            if changed {
                for peer in self.peers.values_mut() {
                    peer.agent
                        .handle_signal(now, PunchSignal::LocalReflexive(observed));
                }
            }
        }
    }

    fn handle_rendezvous_error(&mut self, now: Instant, request_id: u64, code: ErrorCode) {
        tracing::warn!(?code, request_id, "rendezvous error");
        match code {
            ErrorCode::NotRegistered => {
                // Presence expired or the server restarted: register again now.
                self.rendezvous.registered = false;
                self.send_register(now);
            }
            _ => {
                if let Side::Viewer {
                    request,
                    ready,
                    want_connect,
                    ..
                } = &mut self.side
                    && request.is_some_and(|(id, _)| id == request_id)
                {
                    *request = None;
                    if ready.is_some() {
                        self.fail_viewer(ConnectError::Rendezvous(code));
                    } else {
                        // A reconnect (the device may be rebooting): keep trying.
                        *want_connect = Some(now + RECONNECT_BACKOFF);
                    }
                }
                self.emit(Event::RendezvousError { code });
            }
        }
    }

    fn new_peer(
        &mut self,
        now: Instant,
        id: PeerId,
        device_id: [u8; 6],
        remote_key: PublicKey,
        punch_key: [u8; 32],
    ) -> Option<Peer> {
        let media = MediaConnection::new(self.media_config.clone(), now).ok()?;
        let agent = Agent::new(AgentConfig {
            host_candidates: self.host_candidates(),
            seed: self.rng.next_u64(),
        });
        Some(Peer {
            id,
            device_id,
            remote_key,
            agent,
            punch_key: PunchKey::new(punch_key),
            pending_start: None,
            relay: None,
            path: None,
            session: None,
            auth: AuthState::NotStarted,
            media,
            created: now,
            last_heard: now,
            lost_at: None,
            superseded: false,
            frames_delivered: 0,
            bytes_delivered: 0,
        })
    }

    fn device_handle_offer(&mut self, now: Instant, offer: ConnectOffer) {
        let Side::Device {
            certificate,
            max_viewers,
            ..
        } = &self.side
        else {
            return;
        };
        let id = PeerId(offer.connect_id.0);
        if self.peers.contains_key(&id) {
            return;
        }
        let device_id = certificate.device_id();
        if self.peers.len() >= *max_viewers {
            tracing::warn!(limit = *max_viewers, "refusing a viewer: table full");
            self.send_signal(
                now,
                Body::Close(Close {
                    connect_id: Some(offer.connect_id),
                    reason: CloseReason::Rejected,
                }),
                0,
                None,
            );
            return;
        }
        let Some(mut peer) =
            self.new_peer(now, id, device_id, offer.viewer_key, offer.punch.punch_key)
        else {
            return;
        };
        let mut start = offer.to_punch_start(None);
        start.remote = self.remote_candidates(&offer.candidates);
        peer.pending_start = Some((start, now + GRANT_WAIT.min(offer.punch.start_in)));
        tracing::info!(peer = id.0, "connect offer from a viewer");
        self.peers.insert(id, peer);
    }

    fn viewer_handle_response(&mut self, now: Instant, response: ConnectResponse) {
        let Side::Viewer {
            target,
            issuers,
            request,
            ..
        } = &mut self.side
        else {
            return;
        };
        if request.is_none() {
            return;
        }
        *request = None;
        let target = *target;
        let fields = match response.certificate.verify(issuers, unix_now()) {
            Ok(fields) => *fields,
            Err(error) => {
                tracing::warn!(%error, "device certificate refused");
                return self.fail_viewer(ConnectError::CertificateInvalid);
            }
        };
        if fields.device_id != *target.device_id().as_bytes() {
            return self.fail_viewer(ConnectError::CertificateInvalid);
        }
        if !target.accepts_key(&fields.device_key) {
            tracing::warn!("the device key in the certificate is not the pinned key");
            return self.fail_viewer(ConnectError::KeyMismatch);
        }
        let id = PeerId(response.connect_id.0);
        let Some(mut peer) = self.new_peer(
            now,
            id,
            fields.device_id,
            fields.device_key,
            response.punch.punch_key,
        ) else {
            return;
        };
        let mut start = response.to_punch_start(None);
        start.remote = self.remote_candidates(&response.candidates);
        peer.pending_start = Some((start, now + GRANT_WAIT.min(response.punch.start_in)));
        self.note_observed(now, response.observed);
        self.peers.insert(id, peer);
    }

    fn handle_grant(&mut self, now: Instant, grant: RelayGrant) {
        let id = PeerId(grant.connect_id.0);
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let mut allocation = [0u8; 16];
        allocation.copy_from_slice(&grant.token.0[1..17]);
        let channel = channel_of(&allocation);
        peer.relay = Some(RelayLink {
            server: grant.relay,
            token: grant.token,
            channel,
            bound: false,
            attempts: 0,
            next_bind: now,
        });
        // Start now: the grant was the last thing we were waiting for. (A grant that
        // arrives after `GRANT_WAIT` is too late for this attempt's relay candidate.)
        if let Some((mut start, _)) = peer.pending_start.take() {
            start.relay = Some(grant.relay);
            peer.agent.handle_signal(now, PunchSignal::Start(start));
        }
        self.by_channel.insert(channel, id);
        self.send_relay_binds(now);
    }

    // ---------------------------------------------------------------- commands

    fn handle_command(&mut self, now: Instant, command: Command) {
        match command {
            Command::SendFrame(frame) => self.send_frame(now, frame),
            Command::SendControl(to, message) => {
                let ids: Vec<PeerId> = match to {
                    Some(id) => vec![id],
                    None => self.peers.keys().copied().collect(),
                };
                for id in ids {
                    if let Some(peer) = self.peers.get_mut(&id)
                        && peer.auth == AuthState::Accepted
                    {
                        let _ = peer.media.send_control(now, message.clone());
                    }
                }
            }
            Command::SetTrusted(key, trusted) => {
                if let Side::Device { authorizer, .. } = &mut self.side {
                    if trusted {
                        let _ = authorizer.trust(key);
                    } else {
                        authorizer.revoke(&key);
                    }
                }
            }
            Command::Shutdown => self.shutdown(now),
        }
    }

    fn send_frame(&mut self, now: Instant, frame: Frame) {
        let packetized: PacketizedFrame = match self.packetizer.packetize(frame) {
            Ok(packetized) => packetized,
            Err(error) => {
                tracing::warn!(%error, "frame not sent");
                return;
            }
        };
        // Fragmented once; every viewer's sender state shares the same `Bytes`.
        for peer in self.peers.values_mut() {
            if peer.auth == AuthState::Accepted {
                let _ = peer.media.send_frame(now, &packetized);
            }
        }
    }

    fn shutdown(&mut self, now: Instant) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.remove_peer(id, PeerClosedReason::Closed, true);
        }
        if self.rendezvous.ready && matches!(self.side, Side::Device { .. }) {
            self.send_signal(
                now,
                Body::Close(Close {
                    connect_id: None,
                    reason: CloseReason::Shutdown,
                }),
                0,
                None,
            );
        }
        self.flush(now);
        self.shutting_down = true;
    }

    fn fail_viewer(&mut self, error: ConnectError) {
        if let Side::Viewer { ready, .. } = &mut self.side
            && let Some(ready) = ready.take()
        {
            let _ = ready.send(Err(error));
        }
    }

    fn remove_peer(&mut self, id: PeerId, reason: PeerClosedReason, tell_rendezvous: bool) {
        if self.detach_peer(id, tell_rendezvous) {
            tracing::info!(peer = id.0, ?reason, "connection closed");
            self.emit(Event::PeerClosed { peer: id, reason });
        }
    }

    /// Ends a connection that a newer one replaced, without a `PeerClosed` event (the
    /// application sees one continuous stream).
    fn drop_peer_quietly(&mut self, id: PeerId) {
        self.detach_peer(id, true);
    }

    /// Forgets a connection: its session keys, its relay channel and, when asked, its
    /// connect attempt at the rendezvous. Returns whether it existed.
    fn detach_peer(&mut self, id: PeerId, tell_rendezvous: bool) -> bool {
        let Some(peer) = self.peers.remove(&id) else {
            return false;
        };
        if let Some(session) = peer.session {
            self.by_session.remove(&session);
            self.sessions.close(session);
        }
        if let Some(relay) = &peer.relay {
            self.by_channel.remove(&relay.channel);
        }
        if tell_rendezvous && self.rendezvous.ready {
            self.send_signal(
                Instant::now(),
                Body::Close(Close {
                    connect_id: Some(ConnectId(id.0)),
                    reason: CloseReason::Done,
                }),
                0,
                None,
            );
        }
        true
    }

    /// Viewer: connect again through the rendezvous (keeping the current connection
    /// until the new one is authorized).
    fn start_reconnect(&mut self, now: Instant, why: &str) {
        let Side::Viewer {
            ready,
            request,
            want_connect,
            ..
        } = &mut self.side
        else {
            return;
        };
        if ready.is_some() || request.is_some() || want_connect.is_some() {
            return;
        }
        tracing::info!(why, "reconnecting to the device");
        *want_connect = Some(now);
        for peer in self.peers.values_mut() {
            peer.superseded = true;
        }
    }

    // ---------------------------------------------------------------- timers

    fn poll_timeout(&self) -> Option<Instant> {
        let mut earliest = self.sessions.poll_timeout();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        };
        consider(self.rendezvous.retry_at);
        consider(self.rendezvous.next_keepalive);
        consider(
            self.rendezvous
                .keepalive_sent
                .map(|(t, _)| t + KEEPALIVE_TIMEOUT),
        );
        consider(self.rendezvous.register.map(|(_, t)| t));
        consider(Some(self.next_network_check));
        consider(Some(self.next_stats));
        if let Side::Viewer {
            request,
            connect_deadline,
            ready,
            ..
        } = &self.side
        {
            consider(request.map(|(_, t)| t));
            if let Side::Viewer {
                want_connect: Some(at),
                request: None,
                ..
            } = &self.side
            {
                consider(Some(*at));
            }
            if ready.is_some() {
                consider(Some(*connect_deadline));
            }
        }
        for peer in self.peers.values() {
            consider(peer.agent.poll_timeout());
            consider(peer.media.poll_timeout());
            consider(peer.pending_start.as_ref().map(|(_, t)| *t));
            consider(
                peer.relay
                    .as_ref()
                    .filter(|r| !r.bound && r.attempts < RELAY_BIND_ATTEMPTS)
                    .map(|r| r.next_bind),
            );
            if let AuthState::Pending { next, .. } = peer.auth
                && matches!(self.side, Side::Viewer { .. })
            {
                consider(Some(next));
            }
            consider(Some(peer.last_heard + PEER_IDLE_TIMEOUT));
            if !peer.superseded && matches!(self.side, Side::Viewer { .. }) {
                consider(peer.lost_at.map(|at| at + REPATH_WAIT));
                if peer.auth == AuthState::Accepted {
                    consider(Some(peer.last_heard + SILENCE_REPATH));
                }
            }
            if peer.auth != AuthState::Accepted {
                consider(Some(peer.created + PEER_SETUP_TIMEOUT));
            }
        }
        earliest
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.sessions.handle_timeout(now);
        self.rendezvous_timers(now);
        if now >= self.next_network_check {
            self.next_network_check = now + NETWORK_CHECK_INTERVAL;
            self.check_network(now);
        }
        let mut expired = Vec::new();
        let mut starts = Vec::new();
        for peer in self.peers.values_mut() {
            peer.agent.handle_timeout(now);
            peer.media.handle_timeout(now);
            if peer
                .pending_start
                .as_ref()
                .is_some_and(|(_, at)| *at <= now)
            {
                starts.push(peer.id);
            }
            let silent = now.saturating_duration_since(peer.last_heard) >= PEER_IDLE_TIMEOUT;
            let setup_over = peer.auth != AuthState::Accepted
                && now.saturating_duration_since(peer.created) >= PEER_SETUP_TIMEOUT;
            if silent || setup_over {
                expired.push(peer.id);
            }
        }
        for id in starts {
            if let Some(peer) = self.peers.get_mut(&id)
                && let Some((start, _)) = peer.pending_start.take()
            {
                peer.agent.handle_signal(now, PunchSignal::Start(start));
            }
        }
        for id in expired {
            self.remove_peer(id, PeerClosedReason::Timeout, true);
        }
        self.send_relay_binds(now);
        self.viewer_timers(now);
        if now >= self.next_stats {
            self.next_stats = now + STATS_INTERVAL;
            self.report_stats();
        }
        self.flush(now);
    }

    fn viewer_timers(&mut self, now: Instant) {
        let mut retry_connect = false;
        if let Side::Viewer {
            request,
            connect_deadline,
            ready,
            ..
        } = &mut self.side
        {
            if ready.is_some() && now >= *connect_deadline {
                let error = if self.peers.is_empty() {
                    ConnectError::Timeout
                } else {
                    ConnectError::NoPath
                };
                self.fail_viewer(error);
                let ids: Vec<PeerId> = self.peers.keys().copied().collect();
                for id in ids {
                    self.remove_peer(id, PeerClosedReason::NoPath, true);
                }
                return;
            }
            retry_connect = request.is_some_and(|(_, at)| at <= now);
        }
        if let Side::Viewer {
            want_connect: Some(at),
            request: None,
            ..
        } = &self.side
        {
            retry_connect |= *at <= now;
        }
        if retry_connect && self.rendezvous.ready {
            self.send_connect_request(now);
        }
        let lost = self.peers.values().any(|p| {
            p.auth == AuthState::Accepted
                && !p.superseded
                && p.lost_at
                    .is_some_and(|at| now.saturating_duration_since(at) >= REPATH_WAIT)
        });
        let silent = self.peers.values().any(|p| {
            p.auth == AuthState::Accepted
                && !p.superseded
                && now.saturating_duration_since(p.last_heard) >= SILENCE_REPATH
        });
        if lost {
            self.start_reconnect(now, "path lost");
        } else if silent {
            self.start_reconnect(now, "device silent");
        }
        // Authorization retransmissions.
        let ids: Vec<PeerId> = self
            .peers
            .values()
            .filter(|p| matches!(p.auth, AuthState::Pending { next, .. } if next <= now))
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.send_auth_request(now, id);
        }
    }

    fn rendezvous_timers(&mut self, now: Instant) {
        if self.rendezvous.retry_at.is_some_and(|t| t <= now) {
            self.rendezvous.retry_at = None;
            self.connect_rendezvous(now);
        }
        if let Some((sent, retries)) = self.rendezvous.keepalive_sent
            && now >= sent + KEEPALIVE_TIMEOUT
        {
            if retries >= KEEPALIVE_RETRIES {
                tracing::warn!("rendezvous stopped answering");
                self.rendezvous_lost(now);
                return;
            }
            self.rendezvous.keepalive_sent = Some((now, retries + 1));
            self.send_signal(now, Body::Keepalive, 0, None);
        }
        if self.rendezvous.next_keepalive.is_some_and(|t| t <= now) && self.rendezvous.ready {
            self.rendezvous.next_keepalive = Some(now + self.rendezvous.keepalive_interval);
            if self.rendezvous.keepalive_sent.is_none() {
                self.rendezvous.keepalive_sent = Some((now, 0));
                let id = self.next_request_id();
                self.send_signal(now, Body::Keepalive, id, None);
            }
        }
        if self.rendezvous.register.is_some_and(|(_, at)| at <= now) {
            self.send_register(now);
        }
    }

    fn rendezvous_lost(&mut self, now: Instant) {
        if let Some(session) = self.rendezvous.session.take() {
            self.sessions.close(session);
        }
        let was_registered = self.rendezvous.registered;
        self.rendezvous.ready = false;
        self.rendezvous.registered = false;
        self.rendezvous.keepalive_sent = None;
        self.rendezvous.next_keepalive = None;
        self.rendezvous.register = None;
        self.rendezvous.retry_at = Some(now);
        if was_registered {
            self.emit(Event::RendezvousLost);
        }
    }

    fn connect_rendezvous(&mut self, now: Instant) {
        let server = self.rendezvous.server;
        match self.sessions.connect(
            now,
            server.address,
            SessionKind::Rendezvous,
            server.public_key,
        ) {
            Ok(session) => {
                self.rendezvous.session = Some(session);
                self.rendezvous.ready = false;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start a rendezvous session");
                self.schedule_rendezvous_retry(now);
            }
        }
    }

    fn schedule_rendezvous_retry(&mut self, now: Instant) {
        self.rendezvous.retry_at = Some(now + self.rendezvous.retry_backoff);
        self.rendezvous.retry_backoff =
            (self.rendezvous.retry_backoff * 2).min(RENDEZVOUS_RETRY_MAX);
    }

    fn check_network(&mut self, now: Instant) {
        let ip = local_ip_towards(self.rendezvous.server.address);
        if ip.is_some() && ip != self.host_ip {
            let first = self.host_ip.is_none();
            self.host_ip = ip;
            if !first {
                tracing::info!(?ip, "local address changed");
                let hosts = self.host_candidates();
                for peer in self.peers.values_mut() {
                    peer.agent.network_changed(now, hosts.clone());
                }
                match self.side {
                    Side::Device { .. } => self.send_register(now),
                    Side::Viewer { .. } => self.start_reconnect(now, "local address changed"),
                }
            }
        }
    }

    /// The peer's candidates as the agent should see them: under the relay-only policy
    /// none but relay candidates, so the agent goes to the relay at once.
    fn remote_candidates(&self, set: &SignalSet) -> PunchSet {
        let mut candidates = PunchSet::from(set.clone());
        if self.path_policy == PathPolicy::RelayOnly {
            candidates.candidates.retain(|c| c.kind == PunchKind::Relay);
        }
        candidates
    }

    fn host_candidates(&self) -> Vec<SocketAddr> {
        if self.path_policy == PathPolicy::RelayOnly {
            return Vec::new();
        }
        self.host_ip
            .map(|ip| SocketAddr::new(ip, self.local_port))
            .into_iter()
            .collect()
    }

    fn report_stats(&mut self) {
        if self.events_dropped > self.events_dropped_logged {
            tracing::warn!(
                dropped = self.events_dropped - self.events_dropped_logged,
                total = self.events_dropped,
                "the application is not reading events fast enough; events were dropped"
            );
            self.events_dropped_logged = self.events_dropped;
        }
        let reports: Vec<(PeerId, PeerStats)> = self
            .peers
            .values()
            .filter(|p| p.auth == AuthState::Accepted)
            .map(|p| {
                let stats = p.media.stats();
                (
                    p.id,
                    PeerStats {
                        path: p.path,
                        rtt: stats.rtt,
                        loss: stats.receive_loss.max(stats.send_loss),
                        frames_delivered: p.frames_delivered,
                        frames_late: stats.frames_late,
                        frames_dropped: stats.frames_evicted,
                        frames_skipped: stats.frames_discarded_awaiting_keyframe,
                        bytes_delivered: p.bytes_delivered,
                        target_bitrate_bps: stats.target_bitrate_bps,
                    },
                )
            })
            .collect();
        for (peer, stats) in reports {
            self.emit(Event::Stats { peer, stats });
        }
    }

    // ---------------------------------------------------------------- output

    fn next_request_id(&mut self) -> u64 {
        let id = self.rendezvous.next_request_id;
        self.rendezvous.next_request_id = id.wrapping_add(1).max(1);
        id
    }

    fn send_register(&mut self, now: Instant) {
        let Side::Device { certificate, .. } = &self.side else {
            return;
        };
        let register = Register {
            certificate: *certificate,
            candidates: SignalSet::new(to_signal_candidates(&self.host_candidates())),
        };
        let id = self
            .rendezvous
            .register
            .map_or_else(|| self.next_request_id(), |(id, _)| id);
        self.rendezvous.register = Some((id, now + REQUEST_RETRY));
        if self.rendezvous.ready {
            self.send_signal(now, Body::Register(register), id, None);
        }
    }

    fn send_connect_request(&mut self, now: Instant) {
        let Side::Viewer {
            target, want_relay, ..
        } = &self.side
        else {
            return;
        };
        let request = ConnectRequest {
            device_id: *target.device_id().as_bytes(),
            candidates: SignalSet::new(to_signal_candidates(&self.host_candidates())),
            want_relay: *want_relay,
        };
        let id = match &self.side {
            Side::Viewer {
                request: Some((id, _)),
                ..
            } => *id,
            _ => self.next_request_id(),
        };
        if let Side::Viewer {
            request: pending,
            want_connect,
            ..
        } = &mut self.side
        {
            *pending = Some((id, now + REQUEST_RETRY));
            *want_connect = None;
        }
        self.send_signal(
            now,
            Body::ConnectRequest(request),
            id,
            Some(CONNECT_REQUEST_PADDED_LEN),
        );
    }

    /// Seals a signaling message on the rendezvous session and sends it.
    fn send_signal(&mut self, now: Instant, body: Body, request_id: u64, pad_to: Option<usize>) {
        let Some(session) = self.rendezvous.session.filter(|_| self.rendezvous.ready) else {
            return;
        };
        self.encode.clear();
        let envelope = Envelope::new(request_id, body);
        let encoded = match pad_to {
            Some(len) => envelope.encode_padded(len, &mut self.encode),
            None => envelope.encode(&mut self.encode),
        };
        if let Err(error) = encoded {
            tracing::error!(%error, "cannot encode a signaling message");
            return;
        }
        match self
            .sessions
            .seal(session, now, &self.encode, &mut self.out)
        {
            Ok(transmit) => {
                let _ = self
                    .socket
                    .try_send_to(&self.out[..transmit.len], transmit.destination);
            }
            Err(error) => tracing::debug!(%error, "cannot seal a signaling message"),
        }
    }

    fn send_relay_binds(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            let Some(relay) = &mut peer.relay else {
                continue;
            };
            if relay.bound || relay.attempts >= RELAY_BIND_ATTEMPTS || relay.next_bind > now {
                continue;
            }
            relay.attempts += 1;
            relay.next_bind = now + RELAY_BIND_RETRY;
            let mut bind = [0u8; 1 + GRANT_TOKEN_LEN];
            if let Some(len) = (RelayPacket::Bind { token: relay.token }).encode(&mut bind) {
                let _ = self.socket.try_send_to(&bind[..len], relay.server);
            }
        }
    }

    fn send_auth_request(&mut self, now: Instant, id: PeerId) {
        let Side::Viewer {
            password, remember, ..
        } = &self.side
        else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(session) = peer.session else {
            return;
        };
        let attempts = match peer.auth {
            AuthState::Pending { attempts, .. } => attempts,
            _ => 0,
        };
        if attempts >= AUTH_ATTEMPTS {
            self.fail_viewer(ConnectError::Timeout);
            self.remove_peer(id, PeerClosedReason::Timeout, true);
            return;
        }
        peer.auth = AuthState::Pending {
            attempts: attempts + 1,
            next: now + AUTH_RETRY,
        };
        let Some(hash) = self.sessions.handshake_hash(session) else {
            return;
        };
        let request = match password {
            Some(key) => AuthRequest::password(key, hash, *remember),
            None => AuthRequest::TrustedKey,
        };
        let mut wire = [0u8; MAX_AUTH_MESSAGE_LEN];
        if let Some(len) = request.encode(&mut wire) {
            self.send_plaintext(now, id, &wire[..len]);
        }
    }

    /// Where packets for `peer` go now: (destination, relay channel if relayed).
    fn route(&self, peer: &Peer) -> Option<(SocketAddr, Option<u64>)> {
        let relayed = |peer: &Peer| peer.relay.as_ref().map(|r| (r.server, Some(r.channel)));
        match peer.path {
            Some(path) if path.kind_is_relay() => relayed(peer),
            // A direct path goes to the address the peer's packets last *authenticated*
            // from (the session follows a roaming peer, WireGuard-style); the agent's
            // address only until the peer has sent on the path.
            Some(path) => match peer.session.and_then(|s| self.sessions.remote_addr(s)) {
                Some(addr) if !is_virtual(addr) => Some((addr, None)),
                _ => Some((path.remote, None)),
            },
            None => {
                let addr = self.sessions.remote_addr(peer.session?)?;
                match virtual_channel(addr) {
                    Some(_) => relayed(peer),
                    None => Some((addr, None)),
                }
            }
        }
    }

    /// Seals `plaintext` for `peer` and sends it on its current route.
    fn send_plaintext(&mut self, now: Instant, id: PeerId, plaintext: &[u8]) {
        self.send_sealed(now, id, |buf| {
            let dst = buf.get_mut(..plaintext.len())?;
            dst.copy_from_slice(plaintext);
            Some(plaintext.len())
        });
    }

    fn send_sealed(
        &mut self,
        now: Instant,
        id: PeerId,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let (Some(session), Some((destination, channel))) = (peer.session, self.route(peer)) else {
            return;
        };
        let header = if channel.is_some() {
            DATA_HEADER_LEN
        } else {
            0
        };
        let plain_start = header + TRANSPORT_HEADER_LEN;
        let Some(len) = self.out.get_mut(plain_start..).and_then(write) else {
            return;
        };
        let Ok(transmit) = self
            .sessions
            .seal_in_place(session, now, &mut self.out[header..], len)
        else {
            return;
        };
        if let Some(channel) = channel {
            write_data_header(&mut self.out, channel);
        }
        let _ = self
            .socket
            .try_send_to(&self.out[..header + transmit.len], destination);
    }

    /// Drains every core's output after an input: session handshakes, punch checks,
    /// agent signals and events, session events, media packets and events.
    fn flush(&mut self, now: Instant) {
        // Session handshake messages (and cookie replies).
        while let Some(transmit) = self
            .sessions
            .poll_transmit(&mut self.out[DATA_HEADER_LEN..])
        {
            match virtual_channel(transmit.destination) {
                Some(channel) => {
                    let server = self
                        .by_channel
                        .get(&channel)
                        .and_then(|id| self.peers.get(id))
                        .and_then(|p| p.relay.as_ref())
                        .map(|r| r.server);
                    if let Some(server) = server {
                        write_data_header(&mut self.out, channel);
                        let _ = self
                            .socket
                            .try_send_to(&self.out[..DATA_HEADER_LEN + transmit.len], server);
                    }
                }
                None => {
                    let _ = self.socket.try_send_to(
                        &self.out[DATA_HEADER_LEN..DATA_HEADER_LEN + transmit.len],
                        transmit.destination,
                    );
                }
            }
        }
        while let Some(event) = self.sessions.poll_event() {
            self.handle_session_event(now, event);
        }
        // Runs after every datagram: reuse one id buffer instead of allocating.
        let mut ids = std::mem::take(&mut self.peer_ids);
        ids.clear();
        ids.extend(self.peers.keys().copied());
        for &id in &ids {
            self.flush_peer(now, id);
        }
        self.peer_ids = ids;
    }

    fn handle_session_event(&mut self, now: Instant, event: SessionEvent) {
        match event {
            SessionEvent::Established {
                session,
                remote_static,
                ..
            } => {
                if Some(session) == self.rendezvous.session {
                    self.rendezvous.ready = true;
                    self.rendezvous.retry_backoff = RENDEZVOUS_RETRY_MIN;
                    tracing::debug!("rendezvous session established");
                    match self.side {
                        Side::Device { .. } => {
                            self.rendezvous.register = None;
                            self.send_register(now);
                        }
                        Side::Viewer {
                            want_connect: Some(_),
                            ..
                        }
                        | Side::Viewer {
                            request: Some(_), ..
                        } => self.send_connect_request(now),
                        Side::Viewer { .. } => {}
                    }
                    return;
                }
                // A peer session: the device learns which connection it belongs to by
                // the viewer key the rendezvous introduced; the viewer started it itself.
                let peer_id = self.by_session.get(&session).copied().or_else(|| {
                    self.peers
                        .values()
                        .filter(|p| p.session.is_none() && p.remote_key == remote_static)
                        .max_by_key(|p| p.created)
                        .map(|p| p.id)
                });
                let Some(peer_id) = peer_id else {
                    tracing::info!("closing a session from a viewer nobody introduced");
                    self.sessions.close(session);
                    return;
                };
                self.by_session.insert(session, peer_id);
                let is_viewer = matches!(self.side, Side::Viewer { .. });
                if let Some(peer) = self.peers.get_mut(&peer_id) {
                    peer.session = Some(session);
                    peer.last_heard = now;
                    peer.auth = AuthState::Pending {
                        attempts: 0,
                        next: now,
                    };
                }
                if is_viewer {
                    self.send_auth_request(now, peer_id);
                }
            }
            SessionEvent::HandshakeFailed { session, reason } => {
                if Some(session) == self.rendezvous.session {
                    tracing::warn!(?reason, "rendezvous handshake failed");
                    self.rendezvous.session = None;
                    self.rendezvous.ready = false;
                    self.schedule_rendezvous_retry(now);
                } else if let Some(peer_id) = self.by_session.remove(&session) {
                    let error = match reason {
                        HandshakeFailure::RemoteKeyMismatch { .. } => ConnectError::KeyMismatch,
                        _ => ConnectError::HandshakeFailed,
                    };
                    self.fail_viewer(error);
                    self.remove_peer(peer_id, PeerClosedReason::HandshakeFailed, true);
                }
            }
            SessionEvent::Closed { session, .. } => {
                if Some(session) == self.rendezvous.session {
                    self.rendezvous_lost(now);
                } else if let Some(peer_id) = self.by_session.remove(&session) {
                    self.remove_peer(peer_id, PeerClosedReason::Closed, true);
                }
            }
            _ => {}
        }
    }

    fn flush_peer(&mut self, now: Instant, id: PeerId) {
        // Punch: probes, signals and events.
        let mut signals = Vec::new();
        let mut punch_events = Vec::new();
        {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            while let Some(transmit) = peer.agent.poll_transmit() {
                let payload = transmit.payload();
                if transmit.via_relay {
                    let Some(relay) = peer.relay.as_ref().filter(|r| r.bound) else {
                        continue;
                    };
                    let len = DATA_HEADER_LEN + payload.len();
                    write_data_header(&mut self.out, relay.channel);
                    self.out[DATA_HEADER_LEN..len].copy_from_slice(payload);
                    let _ = self.socket.try_send_to(&self.out[..len], relay.server);
                } else if self.path_policy == PathPolicy::Any {
                    send_with_ttl(&self.socket, payload, transmit.destination, transmit.ttl);
                }
            }
            while let Some(signal) = peer.agent.poll_signal() {
                signals.push(signal);
            }
            while let Some(event) = peer.agent.poll_event() {
                punch_events.push(event);
            }
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
            self.handle_punch_event(now, id, event);
        }
        // Media: packets to send and events for the application.
        loop {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            if peer.session.is_none() || peer.auth != AuthState::Accepted {
                // Nothing may leave before the viewer is authorized; drop what queued.
                while peer.media.poll_transmit().is_some() {}
                break;
            }
            let Some(transmit) = peer.media.poll_transmit() else {
                break;
            };
            self.send_sealed(now, id, |buf| transmit.write_to(buf));
        }
        let mut events = Vec::new();
        if let Some(peer) = self.peers.get_mut(&id) {
            while let Some(event) = peer.media.poll_event() {
                if let MediaEvent::Frame(frame) = &event {
                    peer.frames_delivered += 1;
                    peer.bytes_delivered += frame.frame.data.len() as u64;
                }
                events.push(event);
            }
        }
        for event in events {
            let event = match event {
                MediaEvent::Frame(frame) => Event::Frame { peer: id, frame },
                MediaEvent::Control(message) => Event::Control { peer: id, message },
                MediaEvent::KeyframeRequested { stream } => {
                    Event::KeyframeRequested { peer: id, stream }
                }
                _ => continue,
            };
            self.emit(event);
        }
    }

    fn handle_punch_event(&mut self, now: Instant, id: PeerId, event: PunchEvent) {
        let is_viewer = matches!(self.side, Side::Viewer { .. });
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match event {
            PunchEvent::Connected(info) | PunchEvent::PathChanged(info) => {
                let path = Path {
                    kind: info.kind,
                    remote: info.remote,
                    rtt: info.rtt,
                };
                let changed = peer.path.is_some() || peer.lost_at.is_some();
                peer.lost_at = None;
                peer.path = Some(path);
                tracing::info!(peer = id.0, path = path.kind_name(), remote = %path.remote, "path selected");
                if is_viewer && peer.session.is_none() {
                    // The viewer starts the Noise handshake on the first working path.
                    let destination = match (info.via_relay, &peer.relay) {
                        (true, Some(relay)) => virtual_addr(relay.channel),
                        _ => info.remote,
                    };
                    let kind = SessionKind::Peer {
                        device_id: peer.device_id,
                    };
                    match self
                        .sessions
                        .connect(now, destination, kind, peer.remote_key)
                    {
                        Ok(session) => {
                            peer.session = Some(session);
                            self.by_session.insert(session, id);
                        }
                        Err(error) => tracing::warn!(%error, "cannot start the peer handshake"),
                    }
                }
                if changed || peer.auth == AuthState::Accepted {
                    self.emit(Event::PathChanged { peer: id, path });
                }
            }
            PunchEvent::PathLost(_) => {
                peer.path = None;
                peer.lost_at = Some(now);
                self.emit(Event::PathLost { peer: id });
            }
            PunchEvent::Failed(_) if peer.auth != AuthState::Accepted => {
                self.fail_viewer(ConnectError::NoPath);
                self.remove_peer(id, PeerClosedReason::NoPath, true);
            }
            _ => {}
        }
    }
}

impl Path {
    fn kind_is_relay(&self) -> bool {
        self.kind == sightwire_punch::PathKind::Relay
    }
}

fn send_with_ttl(socket: &UdpSocket, payload: &[u8], to: SocketAddr, ttl: Option<u8>) {
    match ttl {
        Some(ttl) if to.is_ipv4() => {
            // NAT-opening packets: low TTL opens our NAT without reaching the peer's.
            let previous = socket.ttl().unwrap_or(64);
            let _ = socket.set_ttl(u32::from(ttl));
            let _ = socket.try_send_to(payload, to);
            let _ = socket.set_ttl(previous);
        }
        _ => {
            let _ = socket.try_send_to(payload, to);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The local address the OS would use to reach `remote` (no packet is sent).
fn local_ip_towards(remote: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if remote.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(bind).ok()?;
    probe.connect(remote).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

/// The virtual address standing for relay channel `channel` (see the module docs).
fn virtual_addr(channel: u64) -> SocketAddr {
    let high = 0x0100_0000_0000_0000u64;
    let ip = Ipv6Addr::from((u128::from(high) << 64) | u128::from(channel));
    SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, 0))
}

fn virtual_channel(addr: SocketAddr) -> Option<u64> {
    match addr {
        SocketAddr::V6(v6) if v6.port() == 0 => {
            let bits = u128::from(*v6.ip());
            ((bits >> 64) as u64 == 0x0100_0000_0000_0000).then_some(bits as u64)
        }
        _ => None,
    }
}

fn is_virtual(addr: SocketAddr) -> bool {
    virtual_channel(addr).is_some()
}

/// Host candidates as signaling carries them.
fn to_signal_candidates(hosts: &[SocketAddr]) -> Vec<SignalCandidate> {
    hosts
        .iter()
        .map(|a| SignalCandidate::from(PunchCandidate::new(PunchKind::Host, *a)))
        .collect()
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
