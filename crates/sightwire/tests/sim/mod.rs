//! The endpoint core in `sightwire-netsim`: a real rendezvous core (behind its Noise
//! session table), a real relay core, cameras and viewers as `sightwire::proto::Endpoint`s,
//! all on simulated hosts behind simulated NATs, in virtual time. Nothing here is a mock
//! of the protocol: the only difference from production is the socket and the clock.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sightwire::proto::{
    DeviceSettings, Endpoint, EndpointConfig, EndpointEvent, Recipients, WatchId, WatchRequest,
};
use sightwire::{
    Codec, ConnectError, Credentials, Event, Frame, GopCacheConfig, PathKind, PeerId,
    RendezvousServer, ResolveError, ServerAddr, StreamId, StreamSet, Target,
};
use sightwire_id::DeviceId;
use sightwire_relay::{Action, Relay, RelayConfig};
use sightwire_rendezvous::{CoreConfig, MemoryRegistry, Peer, Rendezvous};
use sightwire_session::{
    Event as SessionEvent, Input, SessionId, SessionKind, SessionTable, StaticKeypair,
};
use sightwire_signal::cert::{CertificateFields, IdCertificate, IssuerKey, TrustedIssuers};
use sightwire_signal::grant::RelayGrantKey;
use sightwire_signal::{Body, Envelope};
use sightwire_testkit::sightwire_netsim::{
    Attachment, Filtering, HostId, LinuxInput, Mapping, NatBehavior, NatConfig, NatId,
    PortAllocation, SimConfig,
};
use sightwire_testkit::{Network, Node, NodeId, SimTransmit, TestRng};

pub const RENDEZVOUS: &str = "198.51.100.10:3478";
pub const RELAY: &str = "198.51.100.20:3478";
pub const PORT: u16 = 40_000;
pub const PASSWORD: &str = "correct horse";
/// Wall clock at the simulation's epoch (certificates are checked against it).
pub const UNIX_EPOCH_OFFSET: u64 = 1_800_000_000;
/// Frames per second the simulated cameras send.
pub const FPS: u64 = 25;
/// Bytes of a keyframe and of a delta frame (a small sub stream).
pub const KEYFRAME_BYTES: usize = 12_000;
pub const DELTA_BYTES: usize = 2_000;
/// A keyframe every this many frames.
pub const GOP: u64 = 25;

/// The bytes of frame `seq` of a camera's sub stream ([`EndpointNode::sub_stream`]):
/// its number, then a fill byte no main-stream frame has; half the main stream's sizes.
pub fn sub_frame_bytes(seq: u64, keyframe: bool) -> Vec<u8> {
    let len = if keyframe {
        KEYFRAME_BYTES
    } else {
        DELTA_BYTES
    } / 2;
    let mut data = vec![0xAB; len];
    data[..8].copy_from_slice(&seq.to_be_bytes());
    data
}

fn unix_at(epoch: Instant, now: Instant) -> u64 {
    unix_time_at(epoch, now).as_secs()
}

/// The simulated wall clock: [`UNIX_EPOCH_OFFSET`] at the epoch, advancing with virtual
/// time.
fn unix_time_at(epoch: Instant, now: Instant) -> Duration {
    Duration::from_secs(UNIX_EPOCH_OFFSET) + now.saturating_duration_since(epoch)
}

// ---------------------------------------------------------------------- servers

/// The rendezvous: session table + core, composed as `sightwire-rendezvous`'s server does.
pub struct RendezvousNode {
    address: SocketAddr,
    epoch: Instant,
    sessions: SessionTable,
    core: Rendezvous<SessionId>,
    /// Answers the core's registry queries at once (an in-memory registry is instant).
    registry: MemoryRegistry,
    outbox: VecDeque<SimTransmit>,
    buf: Vec<u8>,
    /// A lossy link for one kind of message: this many `CONNECT_OFFER`s the core sends
    /// are lost on their way out, and this many `OFFER_ACK`s on their way in.
    pub drop_offers: u32,
    pub drop_offer_acks: u32,
    /// What was lost that way.
    pub offers_dropped: u32,
    pub offer_acks_dropped: u32,
}

impl RendezvousNode {
    pub fn new(
        epoch: Instant,
        now: Instant,
        key: &StaticKeypair,
        issuer: &IssuerKey,
        relay_key: RelayGrantKey,
        seed: u64,
    ) -> Self {
        Self::with_probes(epoch, now, key, issuer, relay_key, seed, true)
    }

    /// Same, answering keepalive probes or not (`false`: as a rendezvous that predates
    /// them).
    pub fn with_probes(
        epoch: Instant,
        now: Instant,
        key: &StaticKeypair,
        issuer: &IssuerKey,
        relay_key: RelayGrantKey,
        seed: u64,
        keepalive_probes: bool,
    ) -> Self {
        let config = {
            let mut value = CoreConfig::default();
            value.relay = Some(sightwire_rendezvous::RelayConfig::new(
                RELAY.parse().unwrap(),
                None,
                relay_key,
            ));
            value.keepalive_probes = keepalive_probes;
            value
        };
        let core = Rendezvous::new(
            config,
            TrustedIssuers::single(issuer.public()),
            Box::new(StdRng::seed_from_u64(seed)),
            now,
            unix_at(epoch, now),
        );
        // As the rendezvous binary configures it (`sightwire-rendezvous`'s
        // `Config::session`): a client with another key gets a key-mismatch notice.
        let mut session_config = sightwire_session::Config::default();
        session_config.key_mismatch_notices_per_second =
            sightwire_session::KEY_MISMATCH_NOTICES_PER_SECOND;
        let sessions = SessionTable::with_responder(
            key.clone(),
            SessionKind::Rendezvous,
            session_config,
            Box::new(StdRng::seed_from_u64(seed ^ 0x5eed)),
        );
        Self {
            address: RENDEZVOUS.parse().unwrap(),
            epoch,
            sessions,
            core,
            registry: MemoryRegistry::default(),
            outbox: VecDeque::new(),
            buf: vec![0; 2048],
            drop_offers: 0,
            drop_offer_acks: 0,
            offers_dropped: 0,
            offer_acks_dropped: 0,
        }
    }

    pub fn online(&self) -> usize {
        self.core.online()
    }

    pub fn stats(&self) -> sightwire_rendezvous::Stats {
        self.core.stats()
    }

    /// The same server answering at `address` instead of [`RENDEZVOUS`].
    pub fn at(mut self, address: SocketAddr) -> Self {
        self.address = address;
        self
    }

    fn flush(&mut self, now: Instant) {
        while let Some(event) = self.sessions.poll_event() {
            if let SessionEvent::Closed { session, .. }
            | SessionEvent::HandshakeFailed { session, .. } = event
            {
                self.core.handle_session_closed(session);
            }
        }
        while let Some(t) = self.sessions.poll_transmit(&mut self.buf) {
            self.outbox.push_back(SimTransmit {
                from: self.address,
                to: t.destination,
                ttl: None,
                payload: self.buf[..t.len].to_vec(),
            });
        }
        while let Some(t) = self.core.poll_transmit() {
            if self.drop_offers > 0 && is_body(&t.payload, |b| matches!(b, Body::ConnectOffer(_))) {
                self.drop_offers -= 1;
                self.offers_dropped += 1;
                continue;
            }
            if let Ok(sealed) = self
                .sessions
                .seal(t.session, now, &t.payload, &mut self.buf)
            {
                self.outbox.push_back(SimTransmit {
                    from: self.address,
                    to: sealed.destination,
                    ttl: None,
                    payload: self.buf[..sealed.len].to_vec(),
                });
            }
        }
    }
}

impl Node for RendezvousNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _: SocketAddr, _: u8, p: &[u8]) {
        let mut datagram = p.to_vec();
        if let Ok(Input::Data {
            session, plaintext, ..
        }) = self.sessions.handle_input(now, from, &mut datagram)
            && let Some(remote_static) = self.sessions.remote_static(session).copied()
        {
            let peer = Peer::new(session, remote_static, from);
            if self.drop_offer_acks > 0
                && is_body(plaintext, |b| matches!(b, Body::OfferAck { .. }))
            {
                self.drop_offer_acks -= 1;
                self.offer_acks_dropped += 1;
            } else {
                self.core.handle_message(now, &peer, plaintext);
                while let Some(query) = self.core.poll_registry_query() {
                    let answer = query.run(&mut self.registry);
                    self.core.handle_registry_answer(now, answer);
                }
            }
        }
        self.flush(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.sessions.handle_timeout(now);
        let wall = unix_time_at(self.epoch, now);
        self.sessions
            .set_unix_time(u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX));
        self.core.set_wall_clock(now, unix_at(self.epoch, now));
        self.core.handle_timeout(now);
        self.flush(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        [self.sessions.poll_timeout(), self.core.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    fn poll_transmit(&mut self, _: Instant) -> Option<SimTransmit> {
        self.outbox.pop_front()
    }
}

/// Whether a signaling plaintext is a message `test` picks.
fn is_body(plaintext: &[u8], test: impl Fn(&Body) -> bool) -> bool {
    Envelope::decode(plaintext).is_ok_and(|e| test(&e.body))
}

/// The relay core on a public host.
pub struct RelayNode {
    address: SocketAddr,
    epoch: Instant,
    relay: Relay,
    outbox: VecDeque<SimTransmit>,
    reply: Vec<u8>,
    pub forwarded: u64,
}

impl RelayNode {
    pub fn new(epoch: Instant, key: RelayGrantKey) -> Self {
        Self {
            address: RELAY.parse().unwrap(),
            epoch,
            relay: Relay::new(RelayConfig::default(), key),
            outbox: VecDeque::new(),
            reply: vec![0; 2048],
            forwarded: 0,
        }
    }
}

impl Node for RelayNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _: SocketAddr, _: u8, p: &[u8]) {
        let unix = unix_at(self.epoch, now);
        match self
            .relay
            .handle_datagram(now, unix, from, p, &mut self.reply)
        {
            Action::Forward(to) => {
                self.forwarded += 1;
                self.outbox.push_back(SimTransmit {
                    from: self.address,
                    to,
                    ttl: None,
                    payload: p.to_vec(),
                });
            }
            Action::Reply(len) => self.outbox.push_back(SimTransmit {
                from: self.address,
                to: from,
                ttl: None,
                payload: self.reply[..len].to_vec(),
            }),
            Action::Drop(_) => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.relay.handle_timeout(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.relay.poll_timeout()
    }

    fn poll_transmit(&mut self, _: Instant) -> Option<SimTransmit> {
        self.outbox.pop_front()
    }
}

/// A host that only counts what reaches it (a third party, a victim of spoofing).
#[derive(Default)]
pub struct CounterNode {
    pub received: u64,
    pub bytes: u64,
}

impl Node for CounterNode {
    fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: SocketAddr, _: u8, p: &[u8]) {
        self.received += 1;
        self.bytes += p.len() as u64;
    }
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
    fn poll_transmit(&mut self, _: Instant) -> Option<SimTransmit> {
        None
    }
}

// -------------------------------------------------------------------- endpoints

/// What a viewer saw of one watch.
#[derive(Debug, Default, Clone)]
pub struct WatchLog {
    pub connected_at: Option<Instant>,
    pub failed: Option<ConnectError>,
    pub failed_at: Option<Instant>,
    pub peer: Option<PeerId>,
    pub path: Option<PathKind>,
    pub frames: u64,
    pub first_frame_at: Option<Instant>,
    pub last_frame_at: Option<Instant>,
    /// Longest time between two delivered frames after the first one.
    pub longest_gap: Duration,
    pub closed: u64,
}

/// A camera or a viewer: the endpoint core on a simulated host, and what it reported.
pub struct EndpointNode {
    pub endpoint: Endpoint,
    pub local: SocketAddr,
    epoch: Instant,
    buf: Vec<u8>,
    /// Every event, in order.
    pub events: Vec<EndpointEvent>,
    /// Poll events at all (a test of the event bound turns this off).
    pub drain_events: bool,
    /// Per watch (viewer) or `None` (device).
    pub watches: BTreeMap<Option<WatchId>, WatchLog>,
    /// Camera: the next frame to send, and how many were sent.
    next_frame: Option<Instant>,
    /// Camera: bytes of a keyframe and of a delta frame.
    pub keyframe_bytes: usize,
    pub delta_bytes: usize,
    /// Camera: a keyframe every this many frames.
    pub gop: u64,
    /// Camera: make the next frame a keyframe when a viewer asks (an encoder that can;
    /// a file or an RTSP source cannot).
    pub honour_keyframe_requests: bool,
    force_keyframe: bool,
    /// Camera: the frames sent, by number: (keyframe, capture time).
    pub sent_frames: Vec<(bool, u64)>,
    /// Camera: a second video stream sent beside the first, frame for frame (a sub
    /// stream): its id and GOP length.
    pub sub_stream: Option<(StreamId, u64)>,
    /// Camera: the sub stream's frames sent, by number: whether each was a keyframe.
    pub sub_sent: Vec<bool>,
    pub frames_sent: u64,
    pub registrations: u64,
    /// Datagrams sent, per destination.
    pub sent_to: BTreeMap<SocketAddr, u64>,
    /// The simulated resolver: what each host name resolves to (answered at once).
    pub dns: BTreeMap<String, Result<Vec<SocketAddr>, ResolveError>>,
    /// When the endpoint asked for a name to be resolved.
    pub lookups: Vec<Instant>,
}

impl EndpointNode {
    fn new(endpoint: Endpoint, local: SocketAddr, epoch: Instant) -> Self {
        Self {
            endpoint,
            local,
            epoch,
            buf: vec![0; 2048],
            events: Vec::new(),
            drain_events: true,
            watches: BTreeMap::new(),
            next_frame: None,
            keyframe_bytes: KEYFRAME_BYTES,
            delta_bytes: DELTA_BYTES,
            gop: GOP,
            honour_keyframe_requests: false,
            force_keyframe: false,
            sent_frames: Vec::new(),
            sub_stream: None,
            sub_sent: Vec::new(),
            frames_sent: 0,
            registrations: 0,
            sent_to: BTreeMap::new(),
            dns: BTreeMap::new(),
            lookups: Vec::new(),
        }
    }

    /// Answers the endpoint's lookup, if it asked for one, as the driver would.
    fn resolve(&mut self, now: Instant) {
        while let Some(name) = self.endpoint.poll_resolve() {
            self.lookups.push(now);
            let answer = self
                .dns
                .get(name.host())
                .cloned()
                .unwrap_or(Err(ResolveError::NotFound))
                .map(|ips| {
                    ips.into_iter()
                        .map(|a| SocketAddr::new(a.ip(), name.port()))
                        .collect()
                });
            self.endpoint.handle_resolved(now, answer);
        }
    }

    /// Starts sending frames at [`FPS`].
    pub fn start_camera(&mut self, now: Instant) {
        self.next_frame = Some(now);
    }

    /// The host got a new address (the driver would notice within a second).
    pub fn renumber(&mut self, now: Instant, ip: IpAddr) {
        self.local = SocketAddr::new(ip, self.local.port());
        self.endpoint.set_unix_time(unix_time_at(self.epoch, now));
        self.endpoint.set_local_ip(now, Some(ip));
    }

    pub fn watch(&self, watch: WatchId) -> WatchLog {
        self.watches.get(&Some(watch)).cloned().unwrap_or_default()
    }

    /// Forgets the longest gap so far, so the next one measures an outage from now.
    pub fn reset_gaps(&mut self) {
        for log in self.watches.values_mut() {
            log.longest_gap = Duration::ZERO;
        }
    }

    pub fn connected_peers(&self) -> usize {
        self.endpoint.connection_count()
    }

    fn record(&mut self, now: Instant) {
        if !self.drain_events {
            return;
        }
        while let Some(routed) = self.endpoint.poll_event() {
            let log = self.watches.entry(routed.watch).or_default();
            match &routed.event {
                Event::PeerConnected { peer, path, .. } => {
                    log.connected_at.get_or_insert(now);
                    log.peer = Some(*peer);
                    log.path = path.map(|p| p.kind);
                }
                Event::PathChanged { path, .. } => log.path = Some(path.kind),
                Event::Frame { .. } => {
                    log.frames += 1;
                    log.first_frame_at.get_or_insert(now);
                    if let Some(last) = log.last_frame_at {
                        log.longest_gap = log.longest_gap.max(now - last);
                    }
                    log.last_frame_at = Some(now);
                }
                Event::ConnectFailed { error } => {
                    log.failed = Some(error.clone());
                    log.failed_at = Some(now);
                }
                Event::PeerClosed { .. } => log.closed += 1,
                Event::Registered { .. } => self.registrations += 1,
                Event::KeyframeRequested { .. } if self.honour_keyframe_requests => {
                    self.force_keyframe = true;
                }
                _ => {}
            }
            self.events.push(routed);
        }
    }

    fn send_frame(&mut self, now: Instant) {
        let seq = self.frames_sent;
        let forced = std::mem::take(&mut self.force_keyframe);
        let keyframe = forced || seq.is_multiple_of(self.gop);
        let len = if keyframe {
            self.keyframe_bytes
        } else {
            self.delta_bytes
        };
        let mut data = vec![0u8; len];
        data[..8].copy_from_slice(&seq.to_be_bytes());
        let frame = Frame::new(
            StreamId::VIDEO,
            Codec::H264,
            seq * 1_000_000 / FPS,
            Bytes::from(data),
        )
        .with_keyframe(keyframe)
        .with_codec_config(keyframe);
        self.sent_frames
            .push((frame.keyframe, frame.capture_time_us));
        self.endpoint
            .send_frame(now, Recipients::All, frame)
            .expect("frame accepted");
        if let Some((stream, gop)) = self.sub_stream {
            let keyframe = seq.is_multiple_of(gop);
            let frame = Frame::new(
                stream,
                Codec::H264,
                seq * 1_000_000 / FPS,
                Bytes::from(sub_frame_bytes(seq, keyframe)),
            )
            .with_keyframe(keyframe)
            .with_codec_config(keyframe);
            self.sub_sent.push(keyframe);
            self.endpoint
                .send_frame(now, Recipients::All, frame)
                .expect("sub frame accepted");
        }
        self.frames_sent += 1;
    }
}

impl Node for EndpointNode {
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, _: SocketAddr, _: u8, p: &[u8]) {
        let datagram = &mut self.buf[..p.len()];
        datagram.copy_from_slice(p);
        self.endpoint.set_unix_time(unix_time_at(self.epoch, now));
        self.endpoint.handle_datagram(now, from, datagram);
        self.resolve(now);
        self.record(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.endpoint.set_unix_time(unix_time_at(self.epoch, now));
        if self.endpoint.is_shut_down() {
            self.next_frame = None;
        }
        if let Some(at) = self.next_frame
            && at <= now
        {
            self.send_frame(now);
            self.next_frame = Some(at + Duration::from_micros(1_000_000 / FPS));
        }
        if self.endpoint.poll_timeout().is_some_and(|at| at <= now) {
            self.endpoint.handle_timeout(now);
        }
        self.resolve(now);
        self.record(now);
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        [self.endpoint.poll_timeout(), self.next_frame]
            .into_iter()
            .flatten()
            .min()
    }

    fn poll_transmit(&mut self, _: Instant) -> Option<SimTransmit> {
        let t = self.endpoint.poll_transmit()?;
        *self.sent_to.entry(t.destination).or_default() += 1;
        Some(SimTransmit {
            from: self.local,
            to: t.destination,
            ttl: t.ttl,
            payload: t.contents.to_vec(),
        })
    }
}

// ------------------------------------------------------------------------ sites

/// A network site of the matrix, as the NAT lab builds them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Site {
    /// A public address, no NAT, no firewall.
    Public,
    /// A home router: masquerade with `ct state new drop` on input.
    Home,
    /// Bare masquerade, no input firewall (conntrack collisions).
    BareMasquerade,
    /// Symmetric: a new random external port per destination.
    Symmetric,
    /// A home router behind a carrier-grade NAT (masquerade behind masquerade).
    DoubleNat,
}

impl Site {
    pub const ALL: [Site; 5] = [
        Site::Public,
        Site::Home,
        Site::BareMasquerade,
        Site::Symmetric,
        Site::DoubleNat,
    ];

    pub fn short(self) -> &'static str {
        match self {
            Site::Public => "public",
            Site::Home => "home",
            Site::BareMasquerade => "bare",
            Site::Symmetric => "symmetric",
            Site::DoubleNat => "double",
        }
    }

    fn nat(self) -> Option<NatConfig> {
        Some(match self {
            Site::Public => return None,
            Site::Home | Site::DoubleNat => {
                NatConfig::new(NatBehavior::Linux(LinuxInput::CtStateNewDrop))
            }
            Site::BareMasquerade => NatConfig::new(NatBehavior::Linux(LinuxInput::BareMasquerade)),
            Site::Symmetric => NatConfig::new(NatBehavior::Rfc4787 {
                mapping: Mapping::AddressAndPortDependent,
                filtering: Filtering::AddressAndPortDependent,
                ports: PortAllocation::Random,
            }),
        })
    }
}

/// A placed site: the NAT the endpoint sits behind (if any) and its address there.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub host: HostId,
    pub nat: Option<NatId>,
    pub ip: IpAddr,
}

// ------------------------------------------------------------------------ world

/// Issuer, rendezvous, relay and any number of cameras and viewers.
pub struct World {
    pub net: Network,
    pub rendezvous: NodeId,
    pub relay: NodeId,
    pub rendezvous_host: HostId,
    pub relay_host: HostId,
    rendezvous_key: StaticKeypair,
    relay_key: RelayGrantKey,
    issuer: IssuerKey,
    rng: TestRng,
    seed: u64,
    sites: u8,
    pub cameras: Vec<(NodeId, DeviceId, Placement)>,
    identities: Vec<(StaticKeypair, IdCertificate)>,
    /// Media parameters of the cameras added from now on (default: the endpoint's).
    pub camera_media: Option<sightwire_media::Config>,
    /// GOP cache limits of the cameras added from now on.
    pub camera_gop_cache: GopCacheConfig,
    /// The streams a new viewer of the cameras added from now on is subscribed to.
    pub camera_default_streams: StreamSet,
    /// How endpoints added from now on are told where the rendezvous is (default:
    /// [`RENDEZVOUS`]), and the resolver they get for it.
    pub rendezvous_address: ServerAddr,
    pub dns: BTreeMap<String, Result<Vec<SocketAddr>, ResolveError>>,
    pub viewers: Vec<(NodeId, Placement)>,
    /// The rendezvous public key endpoints added from now on are given (default: the
    /// server's own; a test of a misconfigured endpoint changes it).
    pub rendezvous_public_key: Option<sightwire_session::PublicKey>,
}

impl World {
    pub fn new(seed: u64, loss_per_million: u32) -> Self {
        // RUST_LOG=sightwire=debug shows what the cores do (virtual time is not shown).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .without_time()
            .try_init();
        let config = SimConfig {
            seed,
            loss_per_million,
            ..SimConfig::default()
        };
        let mut net = Network::new(config);
        let mut rng = TestRng::new(seed);
        let epoch = net.epoch();
        let rendezvous_key = keypair(&mut rng);
        let mut issuer_seed = [0u8; 32];
        rng.fill(&mut issuer_seed);
        let issuer = IssuerKey::from_seed(&issuer_seed);
        let mut grant = [0u8; 32];
        rng.fill(&mut grant);
        let relay_key = RelayGrantKey::from_bytes(grant);
        let rendezvous_host = net
            .sim_mut()
            .add_public_host(RENDEZVOUS.parse::<SocketAddr>().unwrap().ip());
        let relay_host = net
            .sim_mut()
            .add_public_host(RELAY.parse::<SocketAddr>().unwrap().ip());
        let node = RendezvousNode::new(
            epoch,
            epoch,
            &rendezvous_key,
            &issuer,
            relay_key.clone(),
            seed,
        );
        let rendezvous = net.add_node(rendezvous_host, Box::new(node));
        let relay = net.add_node(
            relay_host,
            Box::new(RelayNode::new(epoch, relay_key.clone())),
        );
        Self {
            net,
            rendezvous,
            relay,
            rendezvous_host,
            relay_host,
            rendezvous_key,
            relay_key,
            issuer,
            rng,
            seed,
            sites: 0,
            cameras: Vec::new(),
            identities: Vec::new(),
            camera_media: None,
            camera_gop_cache: GopCacheConfig::default(),
            camera_default_streams: StreamSet::ALL,
            rendezvous_address: RENDEZVOUS.parse().unwrap(),
            dns: BTreeMap::new(),
            viewers: Vec::new(),
            rendezvous_public_key: None,
        }
    }

    pub fn now(&self) -> Instant {
        self.net.now()
    }

    fn server(&self) -> RendezvousServer {
        RendezvousServer::new(
            self.rendezvous_address.clone(),
            self.rendezvous_public_key
                .unwrap_or(*self.rendezvous_key.public()),
        )
    }

    /// A new site of `kind`; returns a host on it (or behind `on_lan_of`'s NAT).
    pub fn place(&mut self, kind: Site) -> Placement {
        self.sites += 1;
        let n = self.sites;
        let sim = self.net.sim_mut();
        let public: IpAddr = format!("203.0.{n}.1").parse().unwrap();
        let private: IpAddr = format!("10.{n}.0.2").parse().unwrap();
        match kind {
            Site::Public => Placement {
                host: sim.add_public_host(public),
                nat: None,
                ip: public,
            },
            Site::DoubleNat => {
                let cgn = sim.add_nat(
                    public,
                    NatConfig::new(NatBehavior::Linux(LinuxInput::BareMasquerade)),
                );
                let wan: IpAddr = format!("100.64.{n}.2").parse().unwrap();
                let home = sim.add_nat_behind(cgn, wan, kind.nat().unwrap());
                Placement {
                    host: sim.add_host_behind(home, private),
                    nat: Some(home),
                    ip: private,
                }
            }
            _ => {
                let nat = sim.add_nat(public, kind.nat().unwrap());
                Placement {
                    host: sim.add_host_behind(nat, private),
                    nat: Some(nat),
                    ip: private,
                }
            }
        }
    }

    /// Another host on the LAN of `placement`'s NAT.
    pub fn place_beside(&mut self, placement: Placement) -> Placement {
        self.sites += 1;
        let nat = placement.nat.expect("a LAN");
        let ip: IpAddr = match placement.ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                IpAddr::from([o[0], o[1], o[2], o[3] + 1 + self.sites])
            }
            IpAddr::V6(_) => unreachable!(),
        };
        let host = self.net.sim_mut().add_host_behind(nat, ip);
        Placement {
            host,
            nat: Some(nat),
            ip,
        }
    }

    fn endpoint_config(&mut self) -> EndpointConfig {
        let mut config = EndpointConfig::new(
            keypair(&mut self.rng),
            self.server(),
            Box::new(StdRng::seed_from_u64(self.rng.next_u64())),
        );
        config.local_port = PORT;
        config
    }

    /// A camera on `placement`, registering at once and streaming at [`FPS`].
    pub fn add_camera(&mut self, placement: Placement) -> usize {
        let index = self.cameras.len();
        let id: DeviceId = format!("1C:C3:16:00:00:{:02X}", index + 1).parse().unwrap();
        let keypair = keypair(&mut self.rng);
        let unix = unix_at(self.net.epoch(), self.now());
        let certificate = self
            .issuer
            .issue(CertificateFields {
                device_id: id,
                device_key: *keypair.public(),
                not_before: unix - 60,
                not_after: unix + 365 * 24 * 3600,
                serial: 1,
            })
            .unwrap();
        let endpoint = self.camera_endpoint(keypair.clone(), certificate, placement);
        let node = self.net.add_node(placement.host, Box::new(endpoint));
        self.cameras.push((node, id, placement));
        self.identities.push((keypair, certificate));
        index
    }

    fn camera_endpoint(
        &mut self,
        keypair: StaticKeypair,
        certificate: IdCertificate,
        placement: Placement,
    ) -> EndpointNode {
        let now = self.now();
        let mut config = self.endpoint_config();
        config.keypair = keypair;
        if let Some(media) = self.camera_media.clone() {
            config.media = media;
        }
        let mut settings = DeviceSettings::new(certificate);
        settings.password = Some(PASSWORD.into());
        settings.max_viewers = 16;
        settings.gop_cache = self.camera_gop_cache;
        settings.default_streams = self.camera_default_streams;
        let mut endpoint = Endpoint::device(config, settings, now).unwrap();
        endpoint.set_unix_time(unix_time_at(self.net.epoch(), now));
        endpoint.set_local_ip(now, Some(placement.ip));
        let mut node = EndpointNode::new(
            endpoint,
            SocketAddr::new(placement.ip, PORT),
            self.net.epoch(),
        );
        node.start_camera(now);
        node.dns = self.dns.clone();
        node
    }

    /// The camera power-cycles: a fresh endpoint with the same identity (key and
    /// certificate) and no memory of its viewers.
    pub fn restart_camera(&mut self, camera: usize) {
        let (node, _, placement) = self.cameras[camera];
        let (keypair, certificate) = self.identities[camera].clone();
        let fresh = self.camera_endpoint(keypair, certificate, placement);
        self.net.replace_node(node, Box::new(fresh));
    }

    pub fn add_viewer(&mut self, placement: Placement) -> usize {
        let now = self.now();
        let config = self.endpoint_config();
        let issuers = TrustedIssuers::single(self.issuer.public());
        let mut endpoint = Endpoint::viewer(config, issuers, now).unwrap();
        endpoint.set_unix_time(unix_time_at(self.net.epoch(), now));
        endpoint.set_local_ip(now, Some(placement.ip));
        let mut node = EndpointNode::new(
            endpoint,
            SocketAddr::new(placement.ip, PORT),
            self.net.epoch(),
        );
        node.dns = self.dns.clone();
        let id = self.net.add_node(placement.host, Box::new(node));
        self.viewers.push((id, placement));
        self.viewers.len() - 1
    }

    /// Viewer `viewer` starts watching camera `camera`.
    pub fn watch(&mut self, viewer: usize, camera: usize) -> WatchId {
        self.watch_with(viewer, camera, PASSWORD)
    }

    /// Viewer `viewer` starts watching camera `camera` with `password`.
    pub fn watch_with(&mut self, viewer: usize, camera: usize, password: &str) -> WatchId {
        let id = self.cameras[camera].1;
        self.watch_id(viewer, id, password)
    }

    /// Viewer `viewer` starts watching device ID `id` (registered or not).
    pub fn watch_id(&mut self, viewer: usize, id: DeviceId, password: &str) -> WatchId {
        let now = self.now();
        let request = WatchRequest::new(Target::Id(id), Credentials::password(password));
        self.viewer_mut(viewer)
            .endpoint
            .connect(now, request)
            .expect("watch accepted")
    }

    pub fn viewer(&self, viewer: usize) -> &EndpointNode {
        self.net.node::<EndpointNode>(self.viewers[viewer].0)
    }

    pub fn viewer_mut(&mut self, viewer: usize) -> &mut EndpointNode {
        self.net.node_mut::<EndpointNode>(self.viewers[viewer].0)
    }

    pub fn camera(&self, camera: usize) -> &EndpointNode {
        self.net.node::<EndpointNode>(self.cameras[camera].0)
    }

    pub fn camera_mut(&mut self, camera: usize) -> &mut EndpointNode {
        self.net.node_mut::<EndpointNode>(self.cameras[camera].0)
    }

    pub fn run_for(&mut self, duration: Duration) {
        self.net.run_for(duration);
    }

    /// Runs until `done` holds or `limit` passes; returns how long it took.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&World) -> bool,
    ) -> Option<Duration> {
        let start = self.now();
        let deadline = start + limit;
        while self.now() < deadline {
            if done(self) {
                return Some(self.now() - start);
            }
            let step = (deadline - self.now()).min(Duration::from_millis(10));
            self.net.run_for(step);
        }
        done(self).then(|| self.now() - start)
    }

    /// Cameras registered at the rendezvous.
    pub fn online(&self) -> usize {
        self.net.node::<RendezvousNode>(self.rendezvous).online()
    }

    /// The rendezvous process restarts: every session and all presence are lost.
    pub fn restart_rendezvous(&mut self) {
        let now = self.now();
        let seed = self.rng.next_u64();
        let node = RendezvousNode::new(
            self.net.epoch(),
            now,
            &self.rendezvous_key,
            &self.issuer,
            self.relay_key.clone(),
            seed,
        );
        self.net.replace_node(self.rendezvous, Box::new(node));
    }

    /// The rendezvous restarts answering keepalive probes or not (`false`: as one that
    /// predates them). Call before adding endpoints.
    pub fn set_keepalive_probes(&mut self, on: bool) {
        let now = self.now();
        let node = RendezvousNode::with_probes(
            self.net.epoch(),
            now,
            &self.rendezvous_key,
            &self.issuer,
            self.relay_key.clone(),
            self.seed,
            on,
        );
        self.net.replace_node(self.rendezvous, Box::new(node));
    }

    /// A new site behind a NAT configured as `config` (for example a short mapping
    /// timeout); returns a host on it.
    pub fn place_behind(&mut self, config: NatConfig) -> Placement {
        self.sites += 1;
        let n = self.sites;
        let public: IpAddr = format!("203.0.{n}.1").parse().unwrap();
        let private: IpAddr = format!("10.{n}.0.2").parse().unwrap();
        let sim = self.net.sim_mut();
        let nat = sim.add_nat(public, config);
        Placement {
            host: sim.add_host_behind(nat, private),
            nat: Some(nat),
            ip: private,
        }
    }

    /// A new LAN of `kind` (its NAT, and an unused address on it).
    pub fn new_lan(&mut self, kind: Site) -> (NatId, IpAddr) {
        let placement = self.place(kind);
        let nat = placement.nat.expect("a NAT site");
        let ip = match placement.ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                IpAddr::from([o[0], o[1], o[2], o[3] + 100])
            }
            IpAddr::V6(_) => unreachable!(),
        };
        (nat, ip)
    }

    /// Moves viewer `viewer` to address `ip` behind `nat` (the same NAT: renumbered; another:
    /// moved), as the OS would report it.
    pub fn move_viewer_to(&mut self, viewer: usize, nat: NatId, ip: IpAddr) {
        let now = self.now();
        let (node, placement) = self.viewers[viewer];
        self.net
            .sim_mut()
            .attach(placement.host, Attachment::BehindNat(nat, ip));
        self.viewers[viewer].1 = Placement {
            host: placement.host,
            nat: Some(nat),
            ip,
        };
        self.net.node_mut::<EndpointNode>(node).renumber(now, ip);
    }

    /// The rendezvous stops answering (its host stays; whatever it receives is counted).
    pub fn silence_rendezvous(&mut self) {
        self.net
            .replace_node(self.rendezvous, Box::new(CounterNode::default()));
    }

    /// A second instance of the rendezvous (same key, its own state) at `address`.
    pub fn add_rendezvous_at(&mut self, address: SocketAddr) -> NodeId {
        let epoch = self.net.epoch();
        let now = self.now();
        let node = RendezvousNode::new(
            epoch,
            now,
            &self.rendezvous_key,
            &self.issuer,
            self.relay_key.clone(),
            self.seed ^ 2,
        )
        .at(address);
        let host = self.net.sim_mut().add_public_host(address.ip());
        self.net.add_node(host, Box::new(node))
    }

    /// A public host that counts what it receives.
    pub fn add_counter(&mut self, ip: IpAddr) -> NodeId {
        let host = self.net.sim_mut().add_public_host(ip);
        self.net.add_node(host, Box::new(CounterNode::default()))
    }

    pub fn relay_forwarded(&self) -> u64 {
        self.net.node::<RelayNode>(self.relay).forwarded
    }
}

pub fn keypair(rng: &mut TestRng) -> StaticKeypair {
    let mut seed = [0u8; 32];
    rng.fill(&mut seed);
    StaticKeypair::generate(&mut StdRng::from_seed(seed))
}
