//! The link to the rendezvous: one Noise session, kept alive, re-established with
//! backoff when it stops answering; signaling messages in and out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sightwire_session::SessionKind;
use sightwire_signal::{Body, Close, CloseReason, Envelope, ErrorCode};

use super::connection::{AuthState, Failure};
use super::{Endpoint, EndpointTimer, Role};
use crate::config::RendezvousServer;
use crate::events::{Event, PeerClosedReason, PeerId};

/// A request to the rendezvous unanswered this long is followed by a liveness retry;
/// after [`LINK_RETRIES`] of them the link is declared dead and re-established (which
/// re-registers a device).
pub(crate) const LINK_TIMEOUT: Duration = Duration::from_millis(1500);
/// Liveness retries before the rendezvous link is declared dead.
pub(crate) const LINK_RETRIES: u32 = 2;
/// Until the rendezvous says otherwise.
pub(crate) const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Backoff between attempts to reach the rendezvous: doubles up to the maximum.
pub(crate) const RENDEZVOUS_RETRY_MIN: Duration = Duration::from_millis(500);
pub(crate) const RENDEZVOUS_RETRY_MAX: Duration = Duration::from_secs(8);
/// A request to the rendezvous (register, connect) unanswered this long is sent again.
pub(crate) const REQUEST_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct RendezvousLink {
    pub(crate) server: RendezvousServer,
    pub(crate) session: Option<sightwire_session::SessionId>,
    /// The session is established: messages may be sent.
    pub(crate) ready: bool,
    retry_backoff: Duration,
    keepalive_interval: Duration,
    /// Liveness retries sent since the last message from the rendezvous.
    unanswered: u32,
    /// Device: register not yet acknowledged (its request id).
    pub(crate) register: Option<u64>,
    pub(crate) registered: bool,
    next_request_id: u64,
    observed: Option<SocketAddr>,
}

impl RendezvousLink {
    pub(crate) fn new(server: RendezvousServer) -> Self {
        Self {
            server,
            session: None,
            ready: false,
            retry_backoff: RENDEZVOUS_RETRY_MIN,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            unanswered: 0,
            register: None,
            registered: false,
            next_request_id: 1,
            observed: None,
        }
    }
}

impl Endpoint {
    pub(crate) fn next_request_id(&mut self) -> u64 {
        let id = self.rendezvous.next_request_id;
        self.rendezvous.next_request_id = id.wrapping_add(1).max(1);
        id
    }

    pub(crate) fn connect_rendezvous(&mut self, now: Instant) {
        if let Some(old) = self.rendezvous.session.take() {
            self.sessions.close(old);
        }
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

    pub(crate) fn schedule_rendezvous_retry(&mut self, now: Instant) {
        self.timers.set(
            EndpointTimer::RendezvousRetry,
            now + self.rendezvous.retry_backoff,
        );
        self.rendezvous.retry_backoff =
            (self.rendezvous.retry_backoff * 2).min(RENDEZVOUS_RETRY_MAX);
    }

    pub(crate) fn rendezvous_established(&mut self, now: Instant) {
        self.rendezvous.ready = true;
        self.rendezvous.retry_backoff = RENDEZVOUS_RETRY_MIN;
        tracing::debug!("rendezvous session established");
        match self.role {
            Role::Device(_) => {
                self.rendezvous.register = None;
                self.send_register(now);
            }
            Role::Viewer(_) => self.send_wanted_connect_requests(now),
        }
    }

    /// Any message on the rendezvous session: the link is alive.
    pub(crate) fn rendezvous_heard(&mut self, _now: Instant) {
        self.rendezvous.unanswered = 0;
        self.timers.stop(EndpointTimer::KeepaliveTimeout);
    }

    /// A request went out that the rendezvous answers: watch for the answer.
    pub(crate) fn expect_answer(&mut self, now: Instant) {
        if !self.timers.is_set(EndpointTimer::KeepaliveTimeout) {
            self.rendezvous.unanswered = 0;
            self.timers
                .set(EndpointTimer::KeepaliveTimeout, now + LINK_TIMEOUT);
        }
    }

    pub(crate) fn keepalive_timed_out(&mut self, now: Instant) {
        if !self.rendezvous.ready {
            return;
        }
        if self.rendezvous.unanswered >= LINK_RETRIES {
            tracing::warn!("rendezvous stopped answering");
            self.rendezvous_lost(now);
            return;
        }
        self.rendezvous.unanswered += 1;
        self.timers
            .set(EndpointTimer::KeepaliveTimeout, now + LINK_TIMEOUT);
        if self.rendezvous.registered {
            self.send_signal(now, Body::Keepalive, 0, None);
        }
    }

    pub(crate) fn send_keepalive(&mut self, now: Instant) {
        if !self.rendezvous.ready || !self.rendezvous.registered {
            return;
        }
        self.timers.set(
            EndpointTimer::Keepalive,
            now + self.rendezvous.keepalive_interval,
        );
        if !self.timers.is_set(EndpointTimer::KeepaliveTimeout) {
            let id = self.next_request_id();
            self.send_signal(now, Body::Keepalive, id, None);
            self.expect_answer(now);
        }
    }

    pub(crate) fn rendezvous_lost(&mut self, now: Instant) {
        if let Some(session) = self.rendezvous.session.take() {
            self.sessions.close(session);
        }
        let was_registered = self.rendezvous.registered;
        self.rendezvous.ready = false;
        self.rendezvous.registered = false;
        self.rendezvous.register = None;
        self.rendezvous.unanswered = 0;
        for timer in [
            EndpointTimer::Keepalive,
            EndpointTimer::KeepaliveTimeout,
            EndpointTimer::RegisterRetry,
        ] {
            self.timers.stop(timer);
        }
        self.timers.set(EndpointTimer::RendezvousRetry, now);
        // Requests in flight died with the session; they go out again once it is back.
        self.viewer_requests_lost(now);
        if was_registered {
            self.emit(None, Event::RendezvousLost);
        }
    }

    /// Seals a signaling message on the rendezvous session and queues it.
    pub(crate) fn send_signal(
        &mut self,
        now: Instant,
        body: Body,
        request_id: u64,
        pad_to: Option<usize>,
    ) {
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
        let (sessions, plaintext) = (&mut self.sessions, &self.encode);
        let mut sealed = false;
        self.outbox.push_with(None, |buf| {
            let transmit = sessions.seal(session, now, plaintext, buf).ok()?;
            sealed = true;
            Some((transmit.destination, transmit.len))
        });
        if !sealed {
            self.stats.seal_failures += 1;
        }
    }

    /// A decrypted signaling message.
    pub(crate) fn on_signal(&mut self, now: Instant, plaintext: &[u8]) {
        let envelope = match Envelope::decode(plaintext) {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::debug!(%error, "bad signaling message");
                return;
            }
        };
        match envelope.body {
            Body::RegisterAck(ack) => {
                self.rendezvous.register = None;
                self.rendezvous.registered = true;
                self.timers.stop(EndpointTimer::RegisterRetry);
                self.rendezvous.keepalive_interval =
                    ack.keepalive_interval.max(Duration::from_secs(1));
                self.timers.set(
                    EndpointTimer::Keepalive,
                    now + self.rendezvous.keepalive_interval,
                );
                self.rendezvous.retry_backoff = RENDEZVOUS_RETRY_MIN;
                self.note_observed(now, ack.observed);
                tracing::info!(observed = %ack.observed, "registered with the rendezvous");
                self.emit(
                    None,
                    Event::Registered {
                        observed: ack.observed,
                    },
                );
            }
            Body::KeepaliveAck { observed } => self.note_observed(now, observed),
            Body::ConnectOffer(offer) => self.device_on_offer(now, offer),
            Body::ConnectResponse(response) => {
                self.viewer_on_response(now, envelope.request_id, response)
            }
            Body::RelayGrant(grant) => self.on_relay_grant(now, grant),
            Body::Introduction(intro) => self.device_on_introduction(now, intro),
            Body::Consent(consent) => match self.role {
                Role::Device(_) => self.device_on_consent(now, consent),
                Role::Viewer(_) => self.viewer_on_consent(now, envelope.request_id, consent),
            },
            Body::CandidateUpdate(update) => {
                let candidates = self.remote_candidates(&update.candidates);
                if let Some(conn) = self.conns.get_mut(&PeerId(update.connect_id.0)) {
                    conn.agent
                        .handle_signal(now, sightwire_punch::PunchSignal::Candidates(candidates));
                }
            }
            Body::Close(Close {
                connect_id: Some(connect_id),
                reason,
            }) => {
                let id = PeerId(connect_id.0);
                // Only a connection that never came up is ended by the rendezvous: a
                // working peer session outlives the rendezvous's bookkeeping.
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| c.auth != AuthState::Accepted)
                {
                    let failure = match reason {
                        CloseReason::Rejected => Failure::DeviceBusy,
                        _ => Failure::ClosedByPeer,
                    };
                    // Told by the rendezvous: no need to tell it back.
                    match self.conns.get(&id).and_then(|c| c.watch) {
                        Some(watch) => self.watch_connection_failed(now, watch, id, failure),
                        None => self.close_connection(now, id, PeerClosedReason::Closed, false),
                    }
                }
            }
            Body::Close(Close {
                connect_id: None, ..
            }) => self.rendezvous_lost(now),
            Body::Error(reply) => {
                if let (Role::Viewer(_), ErrorCode::RateLimited | ErrorCode::Capacity) =
                    (&self.role, reply.code)
                    && self.viewer_request_throttled(now, envelope.request_id, reply.retry_after)
                {
                    return;
                }
                self.on_rendezvous_error(now, envelope.request_id, reply.code)
            }
            _ => {}
        }
    }

    pub(crate) fn note_observed(&mut self, now: Instant, observed: SocketAddr) {
        if self.rendezvous.observed != Some(observed) {
            let changed = self.rendezvous.observed.is_some();
            self.rendezvous.observed = Some(observed);
            if changed {
                for conn in self.conns.values_mut() {
                    conn.agent
                        .handle_signal(now, sightwire_punch::PunchSignal::LocalReflexive(observed));
                }
            }
        }
    }

    fn on_rendezvous_error(&mut self, now: Instant, request_id: u64, code: ErrorCode) {
        tracing::warn!(?code, request_id, "rendezvous error");
        match (&self.role, code) {
            (Role::Device(_), ErrorCode::NotRegistered) => {
                // Presence expired or the server restarted: register again now.
                self.rendezvous.registered = false;
                self.rendezvous.register = None;
                self.send_register(now);
            }
            (Role::Viewer(_), _) => {
                let watch = self.viewer_on_request_refused(now, request_id, code);
                if watch.is_none() {
                    self.emit(None, Event::RendezvousError { code });
                }
            }
            _ => self.emit(None, Event::RendezvousError { code }),
        }
    }

    /// The peer's candidates as the agent should see them: under the relay-only policy
    /// none but relay candidates, so the agent goes to the relay at once.
    pub(crate) fn remote_candidates(
        &self,
        set: &sightwire_signal::CandidateSet,
    ) -> sightwire_punch::CandidateSet {
        let mut candidates = sightwire_punch::CandidateSet::from(set.clone());
        if self.path_policy == crate::config::PathPolicy::RelayOnly {
            candidates
                .candidates
                .retain(|c| c.kind == sightwire_punch::CandidateKind::Relay);
        }
        candidates
    }

    /// Host candidates as signaling carries them.
    pub(crate) fn signal_host_candidates(&self) -> sightwire_signal::CandidateSet {
        sightwire_signal::CandidateSet::new(
            self.host_candidates()
                .iter()
                .map(|a| {
                    sightwire_signal::Candidate::from(sightwire_punch::Candidate::new(
                        sightwire_punch::CandidateKind::Host,
                        *a,
                    ))
                })
                .collect(),
        )
    }

    /// Tells the rendezvous a device is going away.
    pub(crate) fn send_deregister(&mut self, now: Instant) {
        if self.rendezvous.ready {
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
    }
}
