//! What only a viewer does: watch cameras. Each watch is one camera: its connect
//! requests, the connection serving it and, while it reconnects, the attempt that will
//! replace that connection. Watches share the socket and the rendezvous session, and
//! never disturb each other.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sightwire_session::auth::{AuthRequest, AuthResponse, MAX_AUTH_MESSAGE_LEN, PasswordKey};
use sightwire_session::login::ViewerLogin;
use sightwire_signal::cert::TrustedIssuers;
use sightwire_signal::{Body, ConnectRequest, ConnectResponse, ErrorCode, MAX_MESSAGE_LEN};

use super::connection::{AuthState, ConnTimer, Failure};
use super::gop::WatchFrames;
use super::rendezvous::{RENDEZVOUS_UNREACHABLE_AFTER, REQUEST_RETRY};
use super::timer::{TimerTable, timers};
use super::{CommandError, Endpoint, Role};
use crate::config::{Credentials, DEFAULT_CONNECT_TIMEOUT, Target};
use crate::error::ConnectError;
use crate::events::{Event, PeerId};

/// Most cameras one viewer endpoint watches at once.
pub const MAX_WATCHES: usize = 64;
/// Viewer authorization requests are retransmitted at this interval.
pub(crate) const AUTH_RETRY: Duration = Duration::from_millis(500);
/// Most authorization requests sent.
pub(crate) const AUTH_ATTEMPTS: u32 = 10;
/// A reconnect the rendezvous refused (or that failed) is tried again after this long.
pub(crate) const RECONNECT_BACKOFF: Duration = Duration::from_secs(2);
/// Connect requests are padded to this size so the rendezvous may answer them in full
/// (it never answers an unregistered client with more than it sent).
const CONNECT_REQUEST_PADDED_LEN: usize = MAX_MESSAGE_LEN;
/// How long after `connect` a watch derives its password key: a timer due at once would
/// run in the same pass as the first rendezvous retry, before the driver sent the
/// initiation that pass queued, and the derivation would delay it instead of overlapping
/// its round trip.
const PASSWORD_DERIVE_DEFER: Duration = Duration::from_millis(1);

/// One camera a viewer endpoint watches; stable across reconnects (the [`PeerId`] of
/// the connection serving it changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct WatchId(pub u64);

/// What to watch and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WatchRequest {
    /// The camera: an ID, a scanned label, or a remembered key.
    pub target: Target,
    /// How the viewer proves it may watch.
    pub credentials: Credentials,
    /// Ask for a relay allocation up front (the fallback when no direct path works).
    pub want_relay: bool,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
}

impl WatchRequest {
    /// A request with the defaults (relay wanted, [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn new(target: Target, credentials: Credentials) -> Self {
        Self {
            target,
            credentials,
            want_relay: true,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

timers! {
    /// Per-watch deadlines.
    pub(crate) enum WatchTimer {
        /// Resend the unanswered connect request.
        RequestRetry,
        /// Connect (again) through the rendezvous.
        Reconnect,
        /// The first connect must be done by then.
        Deadline,
        /// The watch has waited this long for the rendezvous (no session with it): a
        /// first connect fails as unreachable.
        RendezvousWait,
        /// Derive the password key now that the rendezvous initiation has left.
        DerivePassword,
    }
}

/// A watch's password. Its key derivation (Argon2id, tens of milliseconds) runs on the
/// timer that fires right after `connect` returned, once the driver has sent the
/// rendezvous initiation: it then overlaps that round trip instead of delaying it (and
/// it happens once per watch, not per attempt).
enum WatchPassword {
    Underived(zeroize::Zeroizing<Vec<u8>>),
    Derived(PasswordKey),
}

impl std::fmt::Debug for WatchPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Underived(_) => "Underived(redacted)",
            Self::Derived(_) => "Derived(redacted)",
        })
    }
}

impl WatchPassword {
    fn key(&mut self, device_id: &sightwire_id::DeviceId) -> PasswordKey {
        if let Self::Underived(password) = self {
            *self = Self::Derived(PasswordKey::derive(&password[..], device_id));
        }
        match self {
            Self::Derived(key) => key.clone(),
            Self::Underived(password) => PasswordKey::derive(&password[..], device_id),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Watch {
    target: Target,
    password: Option<WatchPassword>,
    remember: bool,
    want_relay: bool,
    /// Connected at least once (the application has its handle).
    connected: bool,
    /// The unanswered connect request's id.
    request: Option<u64>,
    /// A connect request should go out as soon as the rendezvous session is up.
    want_connect: bool,
    /// The authorized connection serving the watch.
    pub(crate) current: Option<PeerId>,
    /// The connection being set up (the first one, or a replacement).
    attempt: Option<PeerId>,
    /// Why the last attempt of a first connect failed (reported at the deadline).
    last_failure: Option<ConnectError>,
    /// The password login of the connect request in flight, and its opening (resent with
    /// the request).
    pub(crate) login: Option<ViewerLogin>,
    login_opening: Bytes,
    /// Our confirmation of the device's login message (resent if that comes again).
    pub(crate) login_reply: Option<(sightwire_signal::ConnectId, Bytes)>,
    pub(crate) timers: TimerTable<WatchTimer, 5>,
    /// What the watch delivered, per stream (a reconnect's replayed GOP is not
    /// delivered twice).
    pub(crate) frames: WatchFrames,
}

#[derive(Debug)]
pub(crate) struct ViewerRole {
    issuers: TrustedIssuers,
    pub(crate) watches: BTreeMap<WatchId, Watch>,
    next_watch: u64,
}

impl ViewerRole {
    pub(crate) fn new(issuers: TrustedIssuers) -> Self {
        Self {
            issuers,
            watches: BTreeMap::new(),
            next_watch: 1,
        }
    }
}

impl Endpoint {
    /// Starts watching a camera: looks it up at the rendezvous, checks its certificate
    /// (and pinned key), punches or relays a path, runs the Noise handshake and proves
    /// the credentials. [`Event::PeerConnected`] (or [`Event::ConnectFailed`]) for the
    /// returned watch says how it went.
    pub fn connect(
        &mut self,
        now: Instant,
        request: WatchRequest,
    ) -> Result<WatchId, CommandError> {
        self.now = now;
        if self.shut_down {
            return Err(CommandError::ShutDown);
        }
        let Role::Viewer(viewer) = &mut self.role else {
            return Err(CommandError::NotAViewer);
        };
        if viewer.watches.len() >= MAX_WATCHES {
            return Err(CommandError::TooManyWatches { limit: MAX_WATCHES });
        }
        let id = WatchId(viewer.next_watch);
        viewer.next_watch += 1;
        let mut timers = TimerTable::default();
        timers.set(WatchTimer::Deadline, now + request.connect_timeout);
        if !self.rendezvous.ready {
            timers.set(
                WatchTimer::RendezvousWait,
                now + RENDEZVOUS_UNREACHABLE_AFTER,
            );
        }
        viewer.watches.insert(
            id,
            Watch {
                target: request.target,
                password: request.credentials.password.as_deref().map(|p| {
                    WatchPassword::Underived(zeroize::Zeroizing::new(p.as_bytes().to_vec()))
                }),
                remember: request.credentials.remember,
                want_relay: request.want_relay,
                connected: false,
                request: None,
                want_connect: true,
                current: None,
                attempt: None,
                last_failure: None,
                login: None,
                login_opening: Bytes::new(),
                login_reply: None,
                timers,
                frames: WatchFrames::default(),
            },
        );
        if self.rendezvous.ready {
            self.send_connect_request(now, id);
        } else {
            self.rendezvous_wanted();
            if let Some(watch) = self.watch_mut(id)
                && watch.password.is_some()
            {
                watch
                    .timers
                    .set(WatchTimer::DerivePassword, now + PASSWORD_DERIVE_DEFER);
            }
        }
        self.flush(now);
        Ok(id)
    }

    /// The rendezvous cannot be used (its name does not resolve and there is no address
    /// to try, or it holds another key): every watch still waiting for its first connect
    /// request fails with `error` now.
    pub(crate) fn viewer_rendezvous_failed(&mut self, now: Instant, error: ConnectError) {
        let Role::Viewer(viewer) = &self.role else {
            return;
        };
        let waiting: Vec<WatchId> = viewer
            .watches
            .iter()
            .filter(|(_, w)| !w.connected && w.current.is_none() && w.attempt.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.fail_watch(now, id, error.clone());
        }
    }

    /// Stops watching a camera: closes its connections (they end with
    /// [`Event::PeerClosed`]) and forgets the watch.
    pub fn close_watch(&mut self, now: Instant, watch: WatchId) -> Result<(), CommandError> {
        self.now = now;
        let Role::Viewer(viewer) = &mut self.role else {
            return Err(CommandError::NotAViewer);
        };
        let Some(removed) = viewer.watches.remove(&watch) else {
            return Err(CommandError::UnknownWatch);
        };
        for id in [removed.current, removed.attempt].into_iter().flatten() {
            self.send_plaintext(now, id, &[super::connection::GOODBYE]);
            if self.detach_connection(now, id, true).is_some() {
                self.emit(
                    Some(watch),
                    Event::PeerClosed {
                        peer: id,
                        reason: crate::events::PeerClosedReason::Closed,
                    },
                );
            }
        }
        self.flush(now);
        Ok(())
    }

    /// Whether `watch` is still open (it ends when its connection closes for good, when
    /// its first connect fails, or on [`Endpoint::close_watch`]).
    pub fn has_watch(&self, watch: WatchId) -> bool {
        matches!(&self.role, Role::Viewer(v) if v.watches.contains_key(&watch))
    }

    /// The first watch after `after` (or the first of all), in id order.
    fn next_watch_after(&self, after: Option<WatchId>) -> Option<WatchId> {
        let Role::Viewer(viewer) = &self.role else {
            return None;
        };
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        viewer
            .watches
            .range((from, std::ops::Bound::Unbounded))
            .next()
            .map(|(id, _)| *id)
    }

    /// How many watches are open.
    pub fn watch_count(&self) -> usize {
        match &self.role {
            Role::Viewer(viewer) => viewer.watches.len(),
            Role::Device(_) => 0,
        }
    }

    /// The open watches.
    pub fn watches(&self) -> Vec<WatchId> {
        match &self.role {
            Role::Viewer(viewer) => viewer.watches.keys().copied().collect(),
            Role::Device(_) => Vec::new(),
        }
    }

    /// The connection currently serving `watch`, once connected.
    pub fn watch_peer(&self, watch: WatchId) -> Option<PeerId> {
        match &self.role {
            Role::Viewer(viewer) => viewer.watches.get(&watch)?.current,
            Role::Device(_) => None,
        }
    }

    pub(crate) fn watch_mut(&mut self, watch: WatchId) -> Option<&mut Watch> {
        match &mut self.role {
            Role::Viewer(viewer) => viewer.watches.get_mut(&watch),
            Role::Device(_) => None,
        }
    }

    pub(crate) fn viewer_timers(&mut self, now: Instant) {
        // Walks the watches in key order without collecting them (this runs on every
        // timeout, which pacing makes frequent); a watch removed on the way is skipped.
        let mut next = self.next_watch_after(None);
        while let Some(id) = next {
            next = self.next_watch_after(Some(id));
            while let Some(timer) = self.watch_mut(id).and_then(|w| w.timers.pop_expired(now)) {
                match timer {
                    WatchTimer::RequestRetry => {
                        if self.watch_mut(id).is_some_and(|w| w.request.is_some())
                            && self.rendezvous.ready
                        {
                            self.send_connect_request(now, id);
                        }
                    }
                    WatchTimer::Reconnect => {
                        if let Some(watch) = self.watch_mut(id) {
                            watch.want_connect = true;
                            if let Some(conn) = watch.current.and_then(|c| self.conns.get_mut(&c)) {
                                conn.supersede();
                            }
                        }
                        if self.rendezvous.ready {
                            self.send_connect_request(now, id);
                        }
                    }
                    WatchTimer::DerivePassword => {
                        if let Some(watch) = self.watch_mut(id) {
                            let device_id = watch.target.device_id();
                            if let Some(password) = watch.password.as_mut() {
                                password.key(&device_id);
                            }
                        }
                    }
                    WatchTimer::RendezvousWait => {
                        let ready = self.rendezvous.ready;
                        // No address to have tried yet (the name is still being
                        // resolved): the resolver's answer decides, not this timer.
                        let resolving = self.rendezvous_addresses_unknown();
                        let error = if self.rendezvous.key_refused {
                            ConnectError::RendezvousKeyMismatch
                        } else {
                            ConnectError::RendezvousUnreachable
                        };
                        let Some(watch) = self.watch_mut(id) else {
                            break;
                        };
                        if resolving {
                            watch.timers.set(
                                WatchTimer::RendezvousWait,
                                now + RENDEZVOUS_UNREACHABLE_AFTER,
                            );
                            continue;
                        }
                        if !ready
                            && !watch.connected
                            && watch.current.is_none()
                            && watch.attempt.is_none()
                        {
                            self.fail_watch(now, id, error);
                            break;
                        }
                    }
                    WatchTimer::Deadline => {
                        let Some(watch) = self.watch_mut(id) else {
                            break;
                        };
                        if !watch.connected {
                            let error = match (watch.attempt, watch.last_failure.clone()) {
                                (Some(_), _) => ConnectError::NoPath,
                                (None, Some(last)) => last,
                                (None, None) => ConnectError::Timeout,
                            };
                            self.fail_watch(now, id, error);
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Sends the connect requests that waited for the rendezvous session.
    pub(crate) fn send_wanted_connect_requests(&mut self, now: Instant) {
        let Role::Viewer(viewer) = &self.role else {
            return;
        };
        let wanted: Vec<WatchId> = viewer
            .watches
            .iter()
            .filter(|(_, w)| w.want_connect || w.request.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in wanted {
            self.send_connect_request(now, id);
        }
    }

    /// UDP to the rendezvous was given up for a TCP/TLS stream: the watches waiting for
    /// the rendezvous give the stream its own [`RENDEZVOUS_UNREACHABLE_AFTER`] (a TCP and
    /// a TLS round trip come before the Noise one) rather than what was left of UDP's.
    pub(crate) fn viewer_rendezvous_over_stream(&mut self, now: Instant) {
        if let Role::Viewer(viewer) = &mut self.role {
            for watch in viewer.watches.values_mut() {
                if watch.timers.is_set(WatchTimer::RendezvousWait) {
                    watch.timers.set(
                        WatchTimer::RendezvousWait,
                        now + RENDEZVOUS_UNREACHABLE_AFTER,
                    );
                }
            }
        }
    }

    /// The rendezvous session died: the requests in flight go out again on the next. A
    /// first connect waits for it at most [`RENDEZVOUS_UNREACHABLE_AFTER`].
    pub(crate) fn viewer_requests_lost(&mut self, now: Instant) {
        if let Role::Viewer(viewer) = &mut self.role {
            for watch in viewer.watches.values_mut() {
                if watch.request.take().is_some() {
                    watch.want_connect = true;
                    watch.timers.stop(WatchTimer::RequestRetry);
                    if !watch.connected && !watch.timers.is_set(WatchTimer::RendezvousWait) {
                        watch.timers.set(
                            WatchTimer::RendezvousWait,
                            now + RENDEZVOUS_UNREACHABLE_AFTER,
                        );
                    }
                }
            }
        }
    }

    fn send_connect_request(&mut self, now: Instant, id: WatchId) {
        let candidates = self.signal_host_candidates();
        let fresh_id = self.next_request_id();
        let Some(watch) = self.watch_mut(id) else {
            return;
        };
        let device_id = watch.target.device_id();
        if watch.request.is_none() {
            // A new request: a new login (a retransmission resends the same opening).
            let password = watch.password.as_mut().map(|p| p.key(&device_id));
            let started = self.start_login(password.as_ref(), &device_id);
            let Some(watch) = self.watch_mut(id) else {
                return;
            };
            watch.login_reply = None;
            (watch.login, watch.login_opening) = match started {
                Some((login, opening)) => (Some(login), opening),
                None => (None, Bytes::new()),
            };
        }
        let Some(watch) = self.watch_mut(id) else {
            return;
        };
        let request = ConnectRequest {
            device_id,
            candidates,
            want_relay: watch.want_relay,
            login: watch.login_opening.clone(),
        };
        let request_id = *watch.request.get_or_insert(fresh_id);
        watch.want_connect = false;
        watch.timers.stop(WatchTimer::RendezvousWait);
        watch
            .timers
            .set(WatchTimer::RequestRetry, now + REQUEST_RETRY);
        self.send_signal(
            now,
            Body::ConnectRequest(request),
            request_id,
            Some(CONNECT_REQUEST_PADDED_LEN),
        );
        self.expect_answer(now);
    }

    pub(crate) fn watch_of_request(&self, request_id: u64) -> Option<WatchId> {
        let Role::Viewer(viewer) = &self.role else {
            return None;
        };
        viewer
            .watches
            .iter()
            .find(|(_, w)| w.request == Some(request_id))
            .map(|(id, _)| *id)
    }

    pub(crate) fn viewer_on_response(
        &mut self,
        now: Instant,
        request_id: u64,
        response: ConnectResponse,
    ) {
        let Some(watch_id) = self.watch_of_request(request_id) else {
            return;
        };
        let unix_now = self.unix_now;
        let Role::Viewer(viewer) = &mut self.role else {
            return;
        };
        let Some(watch) = viewer.watches.get_mut(&watch_id) else {
            return;
        };
        watch.request = None;
        watch.timers.stop(WatchTimer::RequestRetry);
        let target = watch.target;
        let checked = match response.certificate.verify(&viewer.issuers, unix_now) {
            Ok(fields) if fields.device_id != target.device_id() => {
                Err(ConnectError::CertificateInvalid)
            }
            Ok(fields) if !target.accepts_key(&fields.device_key) => {
                tracing::warn!("the device key in the certificate is not the pinned key");
                Err(ConnectError::KeyMismatch)
            }
            Ok(fields) => Ok(*fields),
            Err(error) => {
                tracing::warn!(%error, "device certificate refused");
                Err(ConnectError::CertificateInvalid)
            }
        };
        let fields = match checked {
            Ok(fields) => fields,
            Err(error) => return self.watch_attempt_refused(now, watch_id, error),
        };
        let id = PeerId(response.connect_id.0);
        if self.conns.contains_key(&id) {
            return;
        }
        let Some(conn) = self.new_connection(
            now,
            id,
            Some(watch_id),
            fields.device_id,
            fields.device_key,
            response.punch.punch_key,
        ) else {
            return;
        };
        // A newer attempt replaces an older one still being set up.
        let older = self.watch_mut(watch_id).and_then(|w| w.attempt.replace(id));
        if let Some(older) = older {
            self.detach_connection(now, older, true);
        }
        let mut start = response.to_punch_start(None);
        start.remote = self.remote_candidates(&response.candidates);
        self.note_observed(now, response.observed);
        let grant_expected = self.watch_mut(watch_id).is_some_and(|w| w.want_relay);
        self.insert_connection(now, conn, start, grant_expected);
    }

    /// The rendezvous refused a request. Returns the watch it was for, if any.
    pub(crate) fn viewer_on_request_refused(
        &mut self,
        now: Instant,
        request_id: u64,
        code: ErrorCode,
    ) -> Option<WatchId> {
        let id = self.watch_of_request(request_id)?;
        if let Some(watch) = self.watch_mut(id) {
            watch.request = None;
            watch.timers.stop(WatchTimer::RequestRetry);
        }
        self.emit(Some(id), Event::RendezvousError { code });
        let error = match code {
            ErrorCode::Unavailable => ConnectError::Unavailable,
            code => ConnectError::Rendezvous(code),
        };
        self.watch_attempt_refused(now, id, error);
        Some(id)
    }

    /// The rendezvous said "not now" (a rate limit or a full table) to a connect
    /// request: ask again after the hinted delay (at least [`RECONNECT_BACKOFF`]) if the
    /// watch's deadline allows. Returns whether it will.
    pub(crate) fn viewer_request_throttled(
        &mut self,
        now: Instant,
        request_id: u64,
        retry_after: Duration,
    ) -> bool {
        let Some(id) = self.watch_of_request(request_id) else {
            return false;
        };
        let Some(watch) = self.watch_mut(id) else {
            return false;
        };
        let retry_at = now + retry_after.max(RECONNECT_BACKOFF);
        let in_time = watch.connected
            || watch
                .timers
                .get(WatchTimer::Deadline)
                .is_some_and(|deadline| retry_at < deadline);
        if !in_time {
            return false;
        }
        tracing::info!(
            watch = id.0,
            ?retry_after,
            "connect request throttled; retrying"
        );
        watch.request = None;
        watch.timers.stop(WatchTimer::RequestRetry);
        watch.timers.set(WatchTimer::Reconnect, retry_at);
        true
    }

    /// A connect attempt was refused before a connection existed: a first connect
    /// fails; a reconnect (the camera may be rebooting) is tried again later.
    fn watch_attempt_refused(&mut self, now: Instant, id: WatchId, error: ConnectError) {
        let Some(watch) = self.watch_mut(id) else {
            return;
        };
        if watch.connected {
            watch
                .timers
                .set(WatchTimer::Reconnect, now + RECONNECT_BACKOFF);
        } else {
            self.fail_watch(now, id, error);
        }
    }

    pub(crate) fn send_auth_request(&mut self, now: Instant, id: PeerId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (Some(_), Some(watch_id)) = (conn.session, conn.watch) else {
            return;
        };
        let attempts = match conn.auth {
            AuthState::Pending { attempts } => attempts,
            _ => 0,
        };
        if attempts >= AUTH_ATTEMPTS {
            return self.connection_failed(now, id, Failure::AuthTimeout);
        }
        conn.auth = AuthState::Pending {
            attempts: attempts + 1,
        };
        conn.timers.set(ConnTimer::AuthRetry, now + AUTH_RETRY);
        let Role::Viewer(viewer) = &self.role else {
            return;
        };
        let Some(watch) = viewer.watches.get(&watch_id) else {
            return;
        };
        // The password was proven in the login before the introduction (consent); the
        // request only says whether the device should remember this key. No proof
        // travels any more: the proof field is zero.
        let request = match &watch.password {
            Some(_password) => AuthRequest::Password {
                proof: [0; sightwire_session::auth::PROOF_LEN],
                remember: watch.remember,
            },
            None => AuthRequest::TrustedKey,
        };
        let mut wire = [0u8; MAX_AUTH_MESSAGE_LEN];
        if let Some(len) = request.encode(&mut wire) {
            self.send_plaintext(now, id, &wire[..len]);
        }
    }

    pub(crate) fn viewer_on_auth_response(&mut self, now: Instant, id: PeerId, plaintext: &[u8]) {
        let Ok(response) = AuthResponse::decode(plaintext) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(watch_id) = conn.watch else {
            return;
        };
        if !matches!(conn.auth, AuthState::Pending { .. }) {
            return;
        }
        match response {
            AuthResponse::Accepted { .. } => {
                conn.accepted(now);
                // Served through the relay before our agent selected it: that is the path.
                self.assume_relay_path(id);
                let Some(conn) = self.conns.get(&id) else {
                    return;
                };
                let (key, path) = (conn.remote_key, conn.path);
                let Some(watch) = self.watch_mut(watch_id) else {
                    return;
                };
                if watch.attempt == Some(id) {
                    watch.attempt = None;
                }
                let replaced = watch.current.replace(id);
                let first = !watch.connected;
                watch.connected = true;
                watch.timers.stop(WatchTimer::Deadline);
                watch.timers.stop(WatchTimer::Reconnect);
                if let Some(old) = replaced.filter(|old| *old != id) {
                    // A reconnect: the application sees one stream that changed path.
                    self.detach_connection(now, old, true);
                }
                if first {
                    self.emit(
                        Some(watch_id),
                        Event::PeerConnected {
                            peer: id,
                            key,
                            path,
                        },
                    );
                } else {
                    tracing::info!(peer = id.0, "reconnected");
                    if let Some(path) = path {
                        self.emit(Some(watch_id), Event::PathChanged { peer: id, path });
                    }
                }
            }
            AuthResponse::Rejected(reason) => {
                self.watch_connection_failed(now, watch_id, id, Failure::Rejected(reason));
            }
        }
    }

    /// Connects `watch` again through the rendezvous, keeping its current connection
    /// until the new one is authorized.
    pub(crate) fn reconnect_watch(&mut self, now: Instant, id: WatchId, why: &str) {
        let ready = self.rendezvous.ready;
        let Some(watch) = self.watch_mut(id) else {
            return;
        };
        if !watch.connected
            || watch.request.is_some()
            || watch.want_connect
            || watch.attempt.is_some()
            || watch.timers.is_set(WatchTimer::Reconnect)
        {
            return;
        }
        tracing::info!(why, watch = id.0, "reconnecting to the device");
        watch.want_connect = true;
        if let Some(conn) = watch.current.and_then(|c| self.conns.get_mut(&c)) {
            conn.supersede();
        }
        if ready {
            self.send_connect_request(now, id);
        }
    }

    pub(crate) fn reconnect_all_watches(&mut self, now: Instant, why: &str) {
        for id in self.watches() {
            self.reconnect_watch(now, id, why);
        }
    }

    /// A connection of `watch` failed.
    pub(crate) fn watch_connection_failed(
        &mut self,
        now: Instant,
        watch_id: WatchId,
        id: PeerId,
        failure: Failure,
    ) {
        let Some(watch) = self.watch_mut(watch_id) else {
            self.close_connection(now, id, failure.closed_reason(), true);
            return;
        };
        if !watch.connected {
            let error = failure.connect_error();
            let retry_at = now + RECONNECT_BACKOFF;
            // After "no path" (every pair, the relay included, failed for
            // `sightwire_punch::FAIL_AFTER`), another attempt is worth it only if it can run
            // that long before the deadline; otherwise the answer is clear now.
            let needs = match failure {
                Failure::NoPath => sightwire_punch::FAIL_AFTER,
                _ => Duration::ZERO,
            };
            let before_deadline = watch
                .timers
                .get(WatchTimer::Deadline)
                .is_some_and(|deadline| retry_at + needs < deadline);
            if !failure.is_transient() || !before_deadline {
                return self.fail_watch(now, watch_id, error);
            }
            // The camera may be briefly unreachable (its NAT forgot it until its next
            // keepalive, or the path was lost while setting up): ask again until the
            // connect deadline rather than give up on the first attempt.
            tracing::info!(peer = id.0, ?failure, "connect attempt failed; retrying");
            watch.last_failure = Some(error);
            if watch.attempt == Some(id) {
                watch.attempt = None;
            }
            if watch.current == Some(id) {
                watch.current = None;
            }
            watch.timers.set(WatchTimer::Reconnect, retry_at);
            self.detach_connection(now, id, true);
            return;
        }
        if watch.attempt == Some(id) {
            // A replacement that did not work: keep the current connection, try again.
            watch.attempt = None;
            watch
                .timers
                .set(WatchTimer::Reconnect, now + RECONNECT_BACKOFF);
            tracing::info!(peer = id.0, ?failure, "reconnect attempt failed");
            self.detach_connection(now, id, true);
            return;
        }
        self.close_connection(now, id, failure.closed_reason(), true);
    }

    /// A connection of `watch` was closed (and the application told): the watch ends
    /// once nothing serves it and nothing is being set up.
    pub(crate) fn watch_connection_gone(&mut self, now: Instant, watch_id: WatchId, id: PeerId) {
        let Some(watch) = self.watch_mut(watch_id) else {
            return;
        };
        if watch.current == Some(id) {
            watch.current = None;
        }
        if watch.attempt == Some(id) {
            watch.attempt = None;
        }
        if watch.current.is_none() && watch.attempt.is_none() {
            if watch.connected {
                tracing::info!(watch = watch_id.0, "watch ended");
                self.forget_watch(now, watch_id);
            } else if watch.request.is_none() && !watch.want_connect {
                self.fail_watch(now, watch_id, ConnectError::NoPath);
            }
        }
    }

    /// Ends a watch that never connected: its connections go quietly.
    fn fail_watch(&mut self, now: Instant, watch_id: WatchId, error: ConnectError) {
        tracing::info!(watch = watch_id.0, %error, "connect failed");
        self.forget_watch(now, watch_id);
        self.emit(Some(watch_id), Event::ConnectFailed { error });
    }

    fn forget_watch(&mut self, now: Instant, watch_id: WatchId) {
        let Role::Viewer(viewer) = &mut self.role else {
            return;
        };
        viewer.watches.remove(&watch_id);
        let ids: Vec<PeerId> = self
            .conns
            .values()
            .filter(|c| c.watch == Some(watch_id))
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.detach_connection(now, id, true);
        }
    }
}
