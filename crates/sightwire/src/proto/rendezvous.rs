//! The link to the rendezvous: one Noise session, kept alive, re-established with
//! backoff when it stops answering; signaling messages in and out.
//!
//! A rendezvous configured by name has a list of addresses, resolved by the driver
//! (the core does no DNS: it asks through [`Endpoint::poll_resolve`] and is answered
//! through [`Endpoint::handle_resolved`]). The handshake goes to one address at a time;
//! one that has not answered within [`ADDRESS_TRY`] (doubling every round through the
//! list) is left for the next, and the one that answers is kept. The name is resolved
//! again after every round without an answer and whenever the established link is lost.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sightwire_session::SessionKind;
use sightwire_signal::{Body, Close, CloseReason, Envelope, ErrorCode};

use super::connection::{AuthState, Failure};
use super::mapping::{AckOutcome, KeepaliveTuner};
use super::{Endpoint, EndpointTimer, Role, STREAM_FALLBACK_AFTER};
use crate::config::RendezvousServer;
use crate::error::{ConnectError, ResolveError};
use crate::events::{Event, PeerClosedReason, PeerId};
use crate::nodes::NodeRoute;

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
/// An address of the rendezvous whose handshake has not been answered this long is left
/// for the next one (the handshake's first retransmission would come now anyway). Doubles
/// after every round through the list, up to 8 s (the rendezvous retry ceiling), so a
/// slow server is still reached.
pub const ADDRESS_TRY: Duration = Duration::from_secs(1);
/// Most addresses of a rendezvous name kept (the rest of a longer answer is ignored).
pub const MAX_SERVER_ADDRESSES: usize = 8;
/// Nothing heard from the rendezvous this long while trying to reach it: the endpoint
/// reports [`Event::RendezvousUnreachable`], and a watch that waited this long for it
/// fails with [`ConnectError::RendezvousUnreachable`]. The handshake has then been sent
/// three times (at 0, 1 and 3 s: `spec/session.md` §4.2), so one lost datagram does not
/// make a reachable server look down.
pub const RENDEZVOUS_UNREACHABLE_AFTER: Duration = Duration::from_millis(3500);

/// Where the resolution of the rendezvous name stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolution {
    /// Nothing to do (an IP address, or a list that is current).
    Idle,
    /// The driver should resolve the name ([`Endpoint::poll_resolve`]).
    Wanted,
    /// The driver is resolving it.
    InFlight,
}

#[derive(Debug)]
pub(crate) struct RendezvousLink {
    pub(crate) server: RendezvousServer,
    pub(crate) session: Option<sightwire_session::SessionId>,
    /// The session is established: messages may be sent.
    pub(crate) ready: bool,
    retry_backoff: Duration,
    /// The keepalive interval, learned from the NAT's mapping lifetime (mapping.rs).
    pub(crate) tuner: KeepaliveTuner,
    /// Liveness retries sent since the last message from the rendezvous.
    unanswered: u32,
    /// Device: register not yet acknowledged (its request id).
    pub(crate) register: Option<u64>,
    pub(crate) registered: bool,
    next_request_id: u64,
    observed: Option<SocketAddr>,
    /// The addresses to try: the configured one, or what the name resolved to.
    addresses: Vec<SocketAddr>,
    /// The one the session (or handshake) in progress goes to.
    current: Option<SocketAddr>,
    /// How long the next address gets to answer.
    address_try: Duration,
    resolution: Resolution,
    /// The last resolution failed (reported with the next connect failure).
    unresolved: Option<ResolveError>,
    /// Reported since the last established session: the server refused our key
    /// ([`Event::RendezvousKeyMismatch`]), nothing answered
    /// ([`Event::RendezvousUnreachable`]).
    key_refused_reported: bool,
    unreachable_reported: bool,
    /// The server holds another key (its last handshake answer said so).
    pub(crate) key_refused: bool,
    /// A device's home and successor among several nodes (`spec/multinode.md` §3).
    route: Option<NodeRoute>,
}

impl RendezvousLink {
    pub(crate) fn new(server: RendezvousServer, route: Option<NodeRoute>) -> Self {
        Self {
            route,
            addresses: server.address.socket_addr().into_iter().collect(),
            current: None,
            address_try: ADDRESS_TRY,
            resolution: Resolution::Idle,
            unresolved: None,
            key_refused_reported: false,
            unreachable_reported: false,
            key_refused: false,
            server,
            session: None,
            ready: false,
            retry_backoff: RENDEZVOUS_RETRY_MIN,
            tuner: KeepaliveTuner::new(DEFAULT_KEEPALIVE_INTERVAL),
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
        self.rendezvous.ready = false;
        self.timers.stop(EndpointTimer::RendezvousNextAddress);
        let link = &self.rendezvous;
        // The address tried last if it is still listed (it may be the one that worked),
        // else the first.
        let Some(address) = link
            .current
            .filter(|a| link.addresses.contains(a))
            .or_else(|| link.addresses.first().copied())
        else {
            // A name not resolved yet: the answer connects.
            self.want_resolve();
            return;
        };
        self.connect_rendezvous_at(now, address);
    }

    fn connect_rendezvous_at(&mut self, now: Instant, address: SocketAddr) {
        if let Some(old) = self.rendezvous.session.take() {
            self.sessions.close(old);
        }
        self.rendezvous.ready = false;
        self.rendezvous.current = Some(address);
        // Armed wherever a UDP handshake starts (a retry, a name that resolved, a new
        // address), not only on the retry timer: a name that resolves before the first
        // retry fires must not leave a UDP-blocked endpoint without its fallback. A
        // deadline already running is kept, so moving through addresses does not put it off.
        if !self.udp_blocked
            && !self.udp_worked
            && self.rendezvous.server.stream_port.is_some()
            && !self.timers.is_set(EndpointTimer::StreamFallback)
        {
            self.timers
                .set(EndpointTimer::StreamFallback, now + STREAM_FALLBACK_AFTER);
        }
        if !self.timers.is_set(EndpointTimer::RendezvousSilent)
            && !self.rendezvous.unreachable_reported
        {
            self.timers.set(
                EndpointTimer::RendezvousSilent,
                now + RENDEZVOUS_UNREACHABLE_AFTER,
            );
        }
        match self.sessions.connect(
            now,
            address,
            SessionKind::Rendezvous,
            self.rendezvous.server.public_key,
        ) {
            Ok(session) => {
                self.rendezvous.session = Some(session);
                // Another address to move to if this one is silent, or a name to
                // resolve again.
                if self.rendezvous.addresses.len() > 1
                    || self.rendezvous.server.address.name().is_some()
                    || self
                        .rendezvous
                        .route
                        .as_ref()
                        .is_some_and(NodeRoute::has_alternative)
                {
                    self.timers.set(
                        EndpointTimer::RendezvousNextAddress,
                        now + self.rendezvous.address_try,
                    );
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start a rendezvous session");
                self.schedule_rendezvous_retry(now);
            }
        }
    }

    /// The handshake with the current address went unanswered for
    /// [`RendezvousLink::address_try`]: on to the next address. After the last one, the
    /// next round waits twice as long per address, and a name is resolved again.
    pub(crate) fn rendezvous_address_silent(&mut self, now: Instant) {
        if self.rendezvous.ready {
            return;
        }
        let link = &self.rendezvous;
        let position = link
            .current
            .and_then(|c| link.addresses.iter().position(|a| *a == c));
        let next = match position {
            Some(p) if p + 1 < link.addresses.len() => p + 1,
            _ => {
                // Every address of this node went unanswered: a device with another
                // node moves there (spec/multinode.md §3).
                if self.next_node(now, "no answer") {
                    return;
                }
                // A round through the list went unanswered: slower next time, and the
                // name may point elsewhere by now.
                self.rendezvous.address_try =
                    (self.rendezvous.address_try * 2).min(RENDEZVOUS_RETRY_MAX);
                self.want_resolve();
                0
            }
        };
        match self.rendezvous.addresses.get(next).copied() {
            Some(address) if Some(address) != self.rendezvous.current => {
                tracing::info!(%address, "rendezvous address silent, trying the next");
                self.connect_rendezvous_at(now, address);
            }
            // One address: its handshake keeps retransmitting; only the name is re-read.
            _ => self.timers.set(
                EndpointTimer::RendezvousNextAddress,
                now + self.rendezvous.address_try,
            ),
        }
    }

    /// Asks the driver to resolve the rendezvous name (again), unless it is an address or
    /// a resolution is already under way.
    pub(crate) fn want_resolve(&mut self) {
        if self.rendezvous.server.address.name().is_some()
            && self.rendezvous.resolution == Resolution::Idle
        {
            self.rendezvous.resolution = Resolution::Wanted;
        }
    }

    /// The rendezvous name, once, when the driver should resolve it.
    pub(crate) fn rendezvous_poll_resolve(
        &mut self,
    ) -> Option<sightwire_signal::server_addr::HostPort> {
        if self.rendezvous.resolution != Resolution::Wanted {
            return None;
        }
        self.rendezvous.resolution = Resolution::InFlight;
        self.rendezvous.server.address.name().cloned()
    }

    /// What the name resolved to, or why it did not.
    pub(crate) fn rendezvous_resolved(
        &mut self,
        now: Instant,
        result: Result<Vec<SocketAddr>, ResolveError>,
    ) {
        if self.rendezvous.server.address.name().is_none() {
            return;
        }
        self.rendezvous.resolution = Resolution::Idle;
        let mut addresses = match result {
            Ok(addresses) => addresses,
            Err(error) => return self.rendezvous_unresolved(now, error),
        };
        // Bounded, and each address once, in the resolver's order of preference.
        let mut unique: Vec<SocketAddr> = Vec::with_capacity(MAX_SERVER_ADDRESSES);
        for address in addresses.drain(..) {
            if unique.len() == MAX_SERVER_ADDRESSES {
                break;
            }
            if !unique.contains(&address) {
                unique.push(address);
            }
        }
        if unique.is_empty() {
            return self.rendezvous_unresolved(now, ResolveError::NoAddress);
        }
        self.rendezvous.unresolved = None;
        if unique == self.rendezvous.addresses {
            return;
        }
        tracing::info!(addresses = ?unique, "rendezvous name resolved");
        self.rendezvous.addresses = unique;
        let link = &self.rendezvous;
        let current_listed = link.current.is_some_and(|c| link.addresses.contains(&c));
        // A working link stays where it is; a handshake to an address still listed goes
        // on; otherwise start on the new list now.
        let carry_on = link.ready || (link.session.is_some() && current_listed);
        if !carry_on {
            self.timers.stop(EndpointTimer::RendezvousRetry);
            if !current_listed {
                self.rendezvous.current = None;
            }
            self.connect_rendezvous(now);
        }
    }

    fn rendezvous_unresolved(&mut self, now: Instant, error: ResolveError) {
        tracing::warn!(name = %self.rendezvous.server.address, %error, "cannot resolve the rendezvous");
        self.rendezvous.unresolved = Some(error);
        self.emit(None, Event::RendezvousUnresolved { error });
        if self.rendezvous.addresses.is_empty() {
            // Nothing to try: the watches waiting for the rendezvous fail now, not at
            // their deadline; a device tries again with backoff.
            self.viewer_rendezvous_failed(now, ConnectError::RendezvousUnresolved(error));
            if !self.timers.is_set(EndpointTimer::RendezvousRetry) {
                self.schedule_rendezvous_retry(now);
            }
        }
        // Otherwise the addresses from before are still tried: a stale list beats none.
    }

    /// A watch was added while the rendezvous is not reachable: a name that did not
    /// resolve is tried again at once, so the watch does not wait for the backoff.
    pub(crate) fn rendezvous_wanted(&mut self) {
        if !self.rendezvous.ready && self.rendezvous.addresses.is_empty() {
            self.want_resolve();
        }
    }

    /// No address of the rendezvous is known yet (its name has not resolved).
    pub(crate) fn rendezvous_addresses_unknown(&self) -> bool {
        self.rendezvous.addresses.is_empty()
    }

    /// The rendezvous address in use (or being tried).
    pub(crate) fn rendezvous_current(&self) -> Option<SocketAddr> {
        self.rendezvous.current
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
        self.rendezvous.key_refused = false;
        self.rendezvous.key_refused_reported = false;
        self.rendezvous.unreachable_reported = false;
        self.timers.stop(EndpointTimer::RendezvousSilent);
        self.rendezvous.retry_backoff = RENDEZVOUS_RETRY_MIN;
        self.rendezvous.address_try = ADDRESS_TRY;
        self.timers.stop(EndpointTimer::RendezvousNextAddress);
        tracing::debug!("rendezvous session established");
        match self.role {
            Role::Device(_) => {
                self.rendezvous.register = None;
                self.send_register(now);
            }
            Role::Viewer(_) => self.send_wanted_connect_requests(now),
        }
    }

    /// The rendezvous answered our handshake with a key-mismatch notice: the key
    /// configured is not the server's. Waiting watches fail now; the endpoint keeps
    /// trying with backoff (the caller schedules it).
    pub(crate) fn rendezvous_key_refused(&mut self, now: Instant) {
        self.rendezvous.key_refused = true;
        // Something answered: not unreachable.
        self.timers.stop(EndpointTimer::RendezvousSilent);
        if !self.rendezvous.key_refused_reported {
            self.rendezvous.key_refused_reported = true;
            tracing::warn!(
                address = ?self.rendezvous.current,
                "the rendezvous does not hold the key configured here"
            );
            self.emit(None, Event::RendezvousKeyMismatch);
        }
        self.viewer_rendezvous_failed(now, ConnectError::RendezvousKeyMismatch);
    }

    /// Nothing was heard from the rendezvous for [`RENDEZVOUS_UNREACHABLE_AFTER`] while
    /// trying to reach it: say so once (the endpoint keeps trying).
    pub(crate) fn rendezvous_silent(&mut self, _now: Instant) {
        if self.rendezvous.ready || self.rendezvous.unreachable_reported {
            return;
        }
        self.rendezvous.unreachable_reported = true;
        tracing::warn!(address = ?self.rendezvous.current, "the rendezvous does not answer");
        self.emit(None, Event::RendezvousUnreachable);
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
        if self.rendezvous.tuner.probe_in_flight() {
            // The probe's answer (or its timeout) schedules what comes next.
            return;
        }
        let idle = !self.timers.is_set(EndpointTimer::KeepaliveTimeout) && self.conns.is_empty();
        if let Some(gap) = self.rendezvous.tuner.wanted_probe().filter(|_| idle) {
            // A probe (spec/registration.md §7): its answer comes `gap` later, if the NAT
            // kept the mapping that long. Nothing else is sent meanwhile.
            let id = self.next_request_id();
            self.send_signal(now, Body::KeepaliveProbe { ack_delay: gap }, id, None);
            self.rendezvous.tuner.probe_sent(now, id, gap);
            self.timers.stop(EndpointTimer::Keepalive);
            if let Some(deadline) = self.rendezvous.tuner.probe_deadline() {
                self.timers.set(EndpointTimer::ProbeTimeout, deadline);
            }
            tracing::debug!(?gap, "keepalive probe");
            return;
        }
        self.send_plain_keepalive(now);
    }

    /// A keepalive answered at once (the link check), and the next one scheduled.
    fn send_plain_keepalive(&mut self, now: Instant) {
        self.timers.set(
            EndpointTimer::Keepalive,
            now + self.rendezvous.tuner.interval(),
        );
        if !self.timers.is_set(EndpointTimer::KeepaliveTimeout) {
            let id = self.next_request_id();
            self.send_signal(now, Body::Keepalive, id, None);
            self.expect_answer(now);
        }
    }

    /// A probe's answer did not come: the mapping did not survive its gap. A plain
    /// keepalive goes out at once (it reopens the mapping and checks the link).
    pub(crate) fn probe_timed_out(&mut self, now: Instant) {
        let before = self.rendezvous.tuner.interval();
        if self.rendezvous.tuner.probe_timed_out() {
            self.keepalive_interval_changed(before);
            if self.rendezvous.ready && self.rendezvous.registered {
                self.send_plain_keepalive(now);
            }
        }
    }

    /// Reports a new keepalive interval to the application.
    fn keepalive_interval_changed(&mut self, before: Duration) {
        let interval = self.rendezvous.tuner.interval();
        if interval != before {
            tracing::info!(?interval, "keepalive interval");
            self.emit(None, Event::KeepaliveInterval { interval });
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
        self.rendezvous.tuner.abort();
        for timer in [
            EndpointTimer::Keepalive,
            EndpointTimer::KeepaliveTimeout,
            EndpointTimer::RegisterRetry,
            EndpointTimer::ProbeTimeout,
        ] {
            self.timers.stop(timer);
        }
        self.timers.set(EndpointTimer::RendezvousRetry, now);
        // The server went silent (or away): its name may point elsewhere now. The
        // address that worked is tried again meanwhile.
        self.want_resolve();
        // Requests in flight died with the session; they go out again once it is back.
        self.viewer_requests_lost(now);
        if was_registered {
            self.emit(None, Event::RendezvousLost);
        }
        // A device with several nodes registers with the other one at once.
        self.next_node(now, "link lost");
    }

    /// A device with several nodes moves to the other of its two (home → successor, or
    /// back): the link starts over on that node's addresses, at once. Returns whether it
    /// moved.
    pub(crate) fn next_node(&mut self, now: Instant, why: &str) -> bool {
        let Some(route) = self
            .rendezvous
            .route
            .as_mut()
            .filter(|r| r.has_alternative())
        else {
            return false;
        };
        let server = route.advance().clone();
        if route.at_home() {
            // Both nodes were tried: each gets longer to answer in the next round, as
            // the addresses of one node do, so two dead nodes are not hammered.
            self.rendezvous.address_try =
                (self.rendezvous.address_try * 2).min(RENDEZVOUS_RETRY_MAX);
        }
        tracing::info!(address = %server.address, why, "moving to the other rendezvous node");
        self.use_node(now, server);
        true
    }

    /// Registered with the successor: try the home again later (with jitter, so the
    /// devices of a node that comes back do not all return at once).
    fn schedule_home_retry(&mut self, now: Instant) {
        if let Some(route) = self.rendezvous.route.as_mut() {
            route.registered();
        }
        let Some(route) = self.rendezvous.route.as_ref() else {
            return;
        };
        if route.at_home() {
            self.timers.stop(EndpointTimer::NodeHome);
            if let Some(route) = self.rendezvous.route.as_mut() {
                route.registered_at_home();
            }
            return;
        }
        if !self.timers.is_set(EndpointTimer::NodeHome) {
            let delay = route.home_retry_delay(&mut self.agent_rng);
            self.timers.set(EndpointTimer::NodeHome, now + delay);
        }
    }

    /// Time to try the home again: the successor is told the device is leaving, and the
    /// link starts over on the home. If the home still does not answer, the device is
    /// back on the successor one address try later, and waits twice as long next time.
    pub(crate) fn try_home_node(&mut self, now: Instant) {
        let Some(route) = self.rendezvous.route.as_mut().filter(|r| !r.at_home()) else {
            return;
        };
        if !self.conns.is_empty() {
            // Viewers are being served or connected through this node: not now.
            let delay = route.home_retry_delay(&mut self.agent_rng);
            self.timers.set(EndpointTimer::NodeHome, now + delay);
            return;
        }
        let server = route.go_home().clone();
        tracing::info!(address = %server.address, "trying the home rendezvous node again");
        self.send_deregister(now);
        self.use_node(now, server);
    }

    /// Starts the link over on `server`.
    fn use_node(&mut self, now: Instant, server: RendezvousServer) {
        if let Some(session) = self.rendezvous.session.take() {
            self.sessions.close(session);
        }
        let was_registered = self.rendezvous.registered;
        let link = &mut self.rendezvous;
        link.ready = false;
        link.registered = false;
        link.register = None;
        link.unanswered = 0;
        link.tuner.abort();
        link.addresses = server.address.socket_addr().into_iter().collect();
        link.server = server;
        link.current = None;
        link.resolution = Resolution::Idle;
        link.unresolved = None;
        link.key_refused = false;
        link.retry_backoff = RENDEZVOUS_RETRY_MIN;
        for timer in [
            EndpointTimer::Keepalive,
            EndpointTimer::KeepaliveTimeout,
            EndpointTimer::RegisterRetry,
            EndpointTimer::ProbeTimeout,
            EndpointTimer::RendezvousNextAddress,
            EndpointTimer::NodeHome,
        ] {
            self.timers.stop(timer);
        }
        self.want_resolve();
        self.timers.set(EndpointTimer::RendezvousRetry, now);
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
        if !matches!(body, Body::KeepaliveProbe { .. }) {
            // Traffic to the rendezvous refreshes the mapping: a probe's gap is not idle.
            self.rendezvous.tuner.spoil();
        }
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
                let before = self.rendezvous.tuner.interval();
                self.rendezvous
                    .tuner
                    .set_ceiling(ack.keepalive_interval.max(Duration::from_secs(1)));
                self.keepalive_interval_changed(before);
                // The first keepalive (or probe) goes out at once: a probe measures from
                // here, a plain one checks the link.
                let first = match self.rendezvous.tuner.wanted_probe() {
                    Some(_) => now,
                    None => now + self.rendezvous.tuner.interval(),
                };
                self.timers.set(EndpointTimer::Keepalive, first);
                self.rendezvous.retry_backoff = RENDEZVOUS_RETRY_MIN;
                self.note_observed(now, ack.observed);
                tracing::info!(observed = %ack.observed, address = ?self.rendezvous.current, "registered with the rendezvous");
                self.schedule_home_retry(now);
                self.emit(
                    None,
                    Event::Registered {
                        observed: ack.observed,
                    },
                );
            }
            Body::KeepaliveAck { observed } => {
                let before = self.rendezvous.tuner.interval();
                let outcome = self.rendezvous.tuner.on_ack(now, envelope.request_id);
                if outcome == AckOutcome::Plain
                    && self.rendezvous.observed.is_some_and(|o| o != observed)
                {
                    // Same network, new address: the NAT replaced an idle mapping.
                    self.rendezvous.tuner.mapping_replaced();
                }
                self.note_observed(now, observed);
                self.keepalive_interval_changed(before);
                match outcome {
                    AckOutcome::Probe => {
                        self.timers.stop(EndpointTimer::ProbeTimeout);
                        self.send_keepalive(now);
                    }
                    AckOutcome::Plain if self.rendezvous.tuner.wanted_probe().is_some() => {
                        // The mapping was just refreshed and the link is fine: probe now.
                        self.timers.set(EndpointTimer::Keepalive, now);
                    }
                    AckOutcome::Plain => {}
                }
            }
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
        // Over a TCP/TLS stream the rendezvous sees the connection's virtual address:
        // no candidate (spec/stream.md §3).
        if sightwire_stream::is_stream_peer(observed) {
            return;
        }
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
            (Role::Device(_), ErrorCode::NotHome) if self.rendezvous.route.is_some() => {
                // Our list and the node's disagree: the other node of the two, after a
                // wait that grows while refusals go on (both nodes may refuse).
                self.emit(None, Event::RendezvousError { code });
                let wait = self.rendezvous.route.as_mut().map(NodeRoute::refused);
                if self.next_node(now, "not this ID's home") {
                    let wait = wait.unwrap_or(RENDEZVOUS_RETRY_MAX);
                    self.timers.set(EndpointTimer::RendezvousRetry, now + wait);
                } else {
                    self.schedule_rendezvous_retry(now);
                }
            }
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
        if self.relay_only() {
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
