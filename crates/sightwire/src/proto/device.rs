//! What only a device does: register under its certified ID, accept the viewers the
//! rendezvous introduces (up to a limit), and decide itself who may watch.

use std::time::{Duration, Instant};

use sightwire_media::StreamSet;
use sightwire_session::auth::{
    AuthRequest, AuthResponse, MAX_AUTH_MESSAGE_LEN, PasswordKey, ViewerAuthorizer,
};
use sightwire_session::login::LoginThrottle;
use sightwire_session::{PublicKey, SessionId};
use sightwire_signal::cert::IdCertificate;
use sightwire_signal::{Body, Close, CloseReason, ConnectOffer, Register};

use super::connection::{AuthState, virtual_addr};
use super::consent::Consents;
use super::gop::GopCache;
use super::rendezvous::REQUEST_RETRY;
use super::{CommandError, Endpoint, EndpointTimer, Role};
use crate::config::GopCacheConfig;
use crate::events::{Event, PeerClosedReason, PeerId};

/// How long to wait for the relay grant that follows a connect offer (or response)
/// before starting to punch without it, at most…
pub(crate) const GRANT_WAIT: Duration = Duration::from_millis(300);
/// …and at least, whatever the offer's `start_in`: the rendezvous sends the grant right
/// behind the offer, but a `start_in` of a few milliseconds (spec/punch.md §3) must not
/// make a little jitter cost the attempt its relay candidate.
pub(crate) const GRANT_WAIT_MIN: Duration = Duration::from_millis(50);

/// How long a connection waits for its relay grant, given the offer's `start_in`: the
/// punch start, but within [`GRANT_WAIT_MIN`]..=[`GRANT_WAIT`]. The start itself keeps
/// its moment: what the wait used is taken off `start_in` when the punch starts.
pub(crate) fn grant_wait(start_in: Duration) -> Duration {
    start_in.clamp(GRANT_WAIT_MIN, GRANT_WAIT)
}

/// What a device endpoint needs besides the common configuration.
#[non_exhaustive]
pub struct DeviceSettings {
    /// "Device ID X belongs to device key K", signed by the operator's issuer.
    pub certificate: IdCertificate,
    /// The device password viewers may prove. `None`: only trusted keys are admitted.
    pub password: Option<String>,
    /// Viewer static keys trusted from the start.
    pub trusted_viewers: Vec<PublicKey>,
    /// Most viewers served at once; further connect offers are refused.
    pub max_viewers: usize,
    /// Limits of the GOP cache viewers joining mid-GOP are served from (§4.1 of
    /// `spec/endpoint.md`).
    pub gop_cache: GopCacheConfig,
    /// The streams a new viewer is subscribed to until [`Endpoint::set_subscription`]
    /// says otherwise (§4.2 of `spec/endpoint.md`); [`StreamSet::ALL`]: every frame the
    /// device sends to all.
    pub default_streams: StreamSet,
}

impl DeviceSettings {
    /// The settings of the device `certificate` names, with the defaults: no password
    /// (only trusted keys), no trusted keys yet, at most
    /// [`crate::DEFAULT_MAX_VIEWERS`] viewers, the default GOP cache, every stream for
    /// a new viewer.
    pub fn new(certificate: IdCertificate) -> Self {
        Self {
            certificate,
            password: None,
            trusted_viewers: Vec::new(),
            max_viewers: crate::DEFAULT_MAX_VIEWERS,
            gop_cache: GopCacheConfig::default(),
            default_streams: StreamSet::ALL,
        }
    }
}

impl std::fmt::Debug for DeviceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSettings")
            .field("device_id", &self.certificate.device_id())
            .field("password", &self.password.as_ref().map(|_| "redacted"))
            .field("trusted_viewers", &self.trusted_viewers.len())
            .field("max_viewers", &self.max_viewers)
            .field("gop_cache", &self.gop_cache)
            .field("default_streams", &self.default_streams)
            .finish()
    }
}

pub(crate) struct DeviceRole {
    pub(crate) certificate: IdCertificate,
    pub(crate) authorizer: ViewerAuthorizer,
    max_viewers: usize,
    /// The password login key (`None`: only trusted keys are admitted).
    pub(crate) password: Option<PasswordKey>,
    /// Per-key backoff and a global budget for password logins.
    pub(crate) throttle: LoginThrottle,
    /// Introductions being consented to.
    pub(crate) consents: Consents,
    /// The newest GOP of each video stream, for viewers joining mid-GOP.
    pub(crate) gop: GopCache,
    /// A new viewer's subscription.
    default_streams: StreamSet,
}

impl std::fmt::Debug for DeviceRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("device_id", &self.certificate.device_id())
            .field("max_viewers", &self.max_viewers)
            .finish_non_exhaustive()
    }
}

impl DeviceRole {
    pub(crate) fn new(settings: DeviceSettings) -> Self {
        let device_id = settings.certificate.device_id();
        let password = settings
            .password
            .as_deref()
            .map(|p| PasswordKey::derive(p.as_bytes(), &device_id));
        let mut authorizer = ViewerAuthorizer::new(password.clone());
        for key in &settings.trusted_viewers {
            if authorizer.trust(*key).is_err() {
                tracing::warn!("trusted viewer list full; ignoring the rest");
                break;
            }
        }
        Self {
            certificate: settings.certificate,
            authorizer,
            max_viewers: settings.max_viewers,
            password,
            throttle: LoginThrottle::new(),
            consents: Consents::default(),
            gop: GopCache::new(settings.gop_cache),
            default_streams: settings.default_streams,
        }
    }
}

impl Endpoint {
    /// Trusts a viewer key (it may then connect without the password), or revokes it.
    pub fn set_trusted(&mut self, key: PublicKey, trusted: bool) -> Result<(), CommandError> {
        let Role::Device(device) = &mut self.role else {
            return Err(CommandError::NotADevice);
        };
        if trusted {
            // A full list keeps the keys it has; the viewer can still use the password.
            let _ = device.authorizer.trust(key);
        } else {
            device.authorizer.revoke(&key);
        }
        Ok(())
    }

    /// Sends (or resends) the registration.
    pub(crate) fn send_register(&mut self, now: Instant) {
        let Role::Device(device) = &self.role else {
            return;
        };
        let register = Register {
            certificate: device.certificate,
            candidates: self.signal_host_candidates(),
        };
        let id = match self.rendezvous.register {
            Some(id) => id,
            None => self.next_request_id(),
        };
        self.rendezvous.register = Some(id);
        self.timers
            .set(EndpointTimer::RegisterRetry, now + REQUEST_RETRY);
        if self.rendezvous.ready {
            self.send_signal(now, Body::Register(register), id, None);
            self.expect_answer(now);
        }
    }

    pub(crate) fn device_on_offer(&mut self, now: Instant, offer: ConnectOffer) {
        let id = PeerId(offer.connect_id.0);
        if offer.ack_requested {
            // Every copy is acknowledged (an acknowledgement may be lost too); only the
            // first makes a connection: the rendezvous resends the offer until it hears
            // this (spec/signaling.md §4.6).
            self.send_signal(
                now,
                Body::OfferAck {
                    connect_id: offer.connect_id,
                },
                0,
                None,
            );
        }
        if self.conns.contains_key(&id) {
            return;
        }
        let Role::Device(device) = &mut self.role else {
            return;
        };
        // Only a viewer this device admitted (its key trusted, or its password login
        // confirmed) gets a connection, and with it a viewer slot.
        if !device
            .consents
            .take_accepted(offer.connect_id, &offer.viewer_key)
        {
            tracing::warn!(
                connect = offer.connect_id.0,
                "offer without consent ignored"
            );
            return;
        }
        let (device_id, max_viewers, default_streams) = (
            device.certificate.device_id(),
            device.max_viewers,
            device.default_streams,
        );
        if self.conns.len() >= max_viewers {
            tracing::warn!(limit = max_viewers, "refusing a viewer: table full");
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
        let Some(mut conn) = self.new_connection(
            now,
            id,
            None,
            device_id,
            offer.viewer_key,
            offer.punch.punch_key,
        ) else {
            return;
        };
        conn.gop.subscribe(default_streams);
        let mut start = offer.to_punch_start(None);
        start.remote = self.remote_candidates(&offer.candidates);
        conn.early_source = start
            .remote
            .candidates
            .iter()
            // The rendezvous appends the address it saw last (and drops any a viewer
            // claimed itself).
            .rfind(|c| c.kind == sightwire_punch::CandidateKind::ServerReflexive)
            .map(|c| c.address);
        tracing::info!(peer = id.0, "connect offer from a viewer");
        // The rendezvous grants the device a relay whenever the viewer asked for one,
        // which the offer does not say: wait for it.
        self.insert_connection(now, conn, start, true);
    }

    pub(crate) fn device_on_auth_request(&mut self, now: Instant, id: PeerId, plaintext: &[u8]) {
        if !matches!(self.role, Role::Device(_)) {
            return;
        }
        let Ok(request) = AuthRequest::decode(plaintext) else {
            return;
        };
        // Every device connection comes from an offer the device consented to (a
        // trusted key, or a confirmed password login), so the request is always
        // accepted and only says whether to remember the key. Its proof field is not
        // checked: the login replaced it.
        let remember = matches!(request, AuthRequest::Password { remember: true, .. });
        self.device_authorize(now, id, remember);
    }

    /// Device: the session table answered a Noise initiation. If it comes from a viewer
    /// this device admitted, for a connection that has no session yet, and from the IP
    /// address of the viewer's server-reflexive address as the rendezvous saw it (any
    /// port: a symmetric NAT maps the viewer's socket to a new port per destination, but
    /// keeps its address), or through the connection's relay channel, the handshake is
    /// complete now and the viewer is served at once: its first picture leaves with the
    /// handshake response instead of a round trip later (0.5-RTT data,
    /// `spec/endpoint.md` §2, `spec/session.md` §3.4). Anything else waits for the
    /// viewer's confirmation as before.
    pub(crate) fn device_on_initiation(&mut self, session: SessionId, from: std::net::SocketAddr) {
        if !matches!(self.role, Role::Device(_)) || self.by_session.contains_key(&session) {
            return;
        }
        let Some(remote) = self.sessions.remote_static(session).copied() else {
            return;
        };
        let Some(id) = self
            .conns
            .values()
            .filter(|c| c.session.is_none() && c.remote_key == remote)
            .max_by_key(|c| c.created)
            .map(|c| c.id)
        else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let through_relay = conn
            .relay
            .as_ref()
            .is_some_and(|relay| virtual_addr(relay.channel) == from);
        // Only the viewer's own public address: a replayed initiation from a spoofed
        // source can at worst send one GOP to the viewer's network, never elsewhere.
        let from_viewer_address = conn.early_source.map(|a| a.ip()) == Some(from.ip());
        if !from_viewer_address && !through_relay {
            return;
        }
        conn.early_accept = true;
        if !self.sessions.establish_early(session) {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.early_accept = false;
            }
            return;
        }
        tracing::debug!(peer = id.0, %from, "serving the viewer on its initiation");
    }

    /// Device: a viewer that has a session is served (its consent was given before the
    /// offer): the authorization response, then media from the GOP cache. `remember`
    /// trusts its key from now on. Called on its authorization request, and on an early
    /// session before that request (`remember` false; the request follows).
    pub(crate) fn device_authorize(&mut self, now: Instant, id: PeerId, remember: bool) {
        let Role::Device(device) = &mut self.role else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(session) = conn.session else {
            return;
        };
        let Some(remote) = self.sessions.remote_static(session).copied() else {
            return;
        };
        let remembered = device.authorizer.is_trusted(&remote)
            || (remember && device.authorizer.trust(remote).is_ok());
        let mut wire = [0u8; MAX_AUTH_MESSAGE_LEN];
        let Some(len) = (AuthResponse::Accepted { remembered }).encode(&mut wire) else {
            return;
        };
        let newly_accepted = conn.auth != AuthState::Accepted;
        if newly_accepted {
            conn.accepted(now);
        }
        // The viewer's raced early handshake came through the relay before our own agent
        // selected anything: we serve it through the relay, so that is its path.
        self.assume_relay_path(id);
        let path = self.conns.get(&id).and_then(|c| c.path);
        self.send_plaintext(now, id, &wire[..len]);
        if newly_accepted {
            tracing::info!(peer = id.0, "viewer authorized");
            // The same viewer reconnected (it moved, or lost its path): the older
            // connection's address is stale, stop sending there.
            let stale: Vec<(PeerId, StreamSet)> = self
                .conns
                .values()
                .filter(|c| c.id != id && c.remote_key == remote)
                .map(|c| (c.id, c.gop.streams()))
                .collect();
            // It keeps the streams it chose (§4.2 of spec/endpoint.md).
            if let (Some(&(_, streams)), Some(conn)) = (stale.first(), self.conns.get_mut(&id)) {
                conn.gop.subscribe(streams);
            }
            for (stale, _) in stale {
                self.close_connection(now, stale, PeerClosedReason::Closed, true);
            }
            self.emit(
                None,
                Event::PeerConnected {
                    peer: id,
                    key: remote,
                    path,
                },
            );
            self.gop_join(now, id);
        }
    }
}
