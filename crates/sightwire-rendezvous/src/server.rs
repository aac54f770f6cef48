//! The tokio UDP server: one socket, Noise sessions (`sightwire-session`, responder for
//! [`SessionKind::Rendezvous`]), and the [`Rendezvous`] core.
//!
//! Everything that is not an authenticated transport packet is handled (and dropped) by
//! the session table, which answers handshakes and, under load, cookie replies; only the
//! plaintext of authenticated transport packets reaches the core, with the static key
//! the handshake proved.
//!
//! With a stream listener ([`Server::with_stream`], `spec/stream.md`), endpoints whose UDP
//! is blocked send the same datagrams over TCP/TLS; each connection is one more peer
//! address (its virtual address) to the session table and the core.
//!
//! The loop never waits for the registry: the core's registry queries go to a
//! [`RegistryPool`] (worker threads, one database connection each) and their answers come
//! back as one more input of the loop (spec/registration.md §9.1).

use sightwire_id::DeviceId;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sightwire_ops::metrics::Metrics;
use sightwire_session::{Event, Input, SessionId, SessionKind, SessionTable, StaticKeypair};
use sightwire_stream::tls::{StreamListener, recv_optional, send_if_stream};
use tokio::net::UdpSocket;

use crate::core::{Peer, Rendezvous};
use crate::metrics::Snapshot;
use crate::registry::{RegistryAnswer, RegistryPool};

/// Largest datagram the server reads (anything longer is truncated by the OS and then
/// rejected by the session layer).
pub const MAX_DATAGRAM_LEN: usize = 2048;

/// Seconds since the Unix epoch now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A server: socket, session table, core and registry workers.
#[derive(Debug)]
pub struct Server {
    socket: UdpSocket,
    stream: Option<StreamListener>,
    sessions: SessionTable,
    core: Rendezvous<SessionId>,
    registry: RegistryPool,
    revocations: Option<tokio::sync::mpsc::Receiver<DeviceId>>,
    metrics: Option<Arc<Metrics<Snapshot>>>,
}

impl Server {
    /// A server on `socket` answering Noise handshakes as `static_key`, asking `registry`
    /// what the core needs to know.
    pub fn new(
        socket: UdpSocket,
        static_key: StaticKeypair,
        session_config: sightwire_session::Config,
        core: Rendezvous<SessionId>,
        session_rng: Box<dyn sightwire_session::SessionRng>,
        registry: RegistryPool,
    ) -> Self {
        let sessions = SessionTable::with_responder(
            static_key,
            SessionKind::Rendezvous,
            session_config,
            session_rng,
        );
        Self {
            socket,
            stream: None,
            sessions,
            core,
            registry,
            revocations: None,
            metrics: None,
        }
    }

    /// Publishes counters to `metrics` after each turn of the loop, and marks it ready
    /// while [`Server::run`] serves (the socket is bound and the registry open by then).
    pub fn with_metrics(mut self, metrics: Arc<Metrics<Snapshot>>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Stores the counters of this turn: relaxed atomic stores, no lock.
    fn publish(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.publish(&Snapshot {
                core: self.core.stats(),
                sessions: self.sessions.stats(),
                online: self.core.online(),
                session_count: self.sessions.len(),
                pending_connects: self.core.pending_connects(),
            });
        }
    }

    /// Also drops devices from presence as soon as `revocations` announces them (the IDs
    /// a `crate::RevocationListener` hears, spec/registration.md §9.2).
    pub fn with_revocations(mut self, revocations: tokio::sync::mpsc::Receiver<DeviceId>) -> Self {
        self.revocations = Some(revocations);
        self
    }

    /// Also serves endpoints whose UDP is blocked, over TCP/TLS on `listener`.
    pub fn with_stream(mut self, listener: StreamListener) -> Self {
        self.stream = Some(listener);
        self
    }

    /// The TCP address of the stream listener, if any.
    pub fn stream_addr(&self) -> Option<SocketAddr> {
        self.stream.as_ref().map(StreamListener::local_addr)
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The core (counters, presence).
    pub fn core(&self) -> &Rendezvous<SessionId> {
        &self.core
    }

    /// Serves until `shutdown` completes, then tells online devices the server is going
    /// away and returns the core.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<Rendezvous<SessionId>> {
        tokio::pin!(shutdown);
        let mut receive = vec![0u8; MAX_DATAGRAM_LEN];
        let mut send = vec![0u8; MAX_DATAGRAM_LEN];
        self.publish();
        if let Some(metrics) = &self.metrics {
            metrics.set_ready(true);
        }
        loop {
            let deadline = [self.sessions.poll_timeout(), self.core.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                received = self.socket.recv_from(&mut receive) => {
                    match received {
                        Ok((len, from)) => self.on_datagram(from, &mut receive[..len]),
                        // ICMP errors from earlier sends surface here on some platforms.
                        Err(error) => tracing::debug!(%error, "recv_from failed"),
                    }
                }
                Some(answer) = self.registry.next_answer() => {
                    self.core.handle_registry_answer(Instant::now(), answer);
                }
                revoked = recv_revocation(&mut self.revocations) => match revoked {
                    Some(device_id) => self.core.handle_revoked(Instant::now(), device_id),
                    None => self.revocations = None,
                },
                Some((from, datagram)) = recv_optional(&mut self.stream) => {
                    let len = datagram.len().min(receive.len());
                    receive[..len].copy_from_slice(&datagram[..len]);
                    self.on_datagram(from, &mut receive[..len]);
                }
                () = sleep => {
                    let now = Instant::now();
                    self.sessions.handle_timeout(now);
                    self.core.set_wall_clock(now, unix_now());
                    self.sessions.set_unix_time(unix_now().saturating_mul(1_000_000_000));
                    self.core.handle_timeout(now);
                }
            }
            self.flush(&mut send).await;
            self.publish();
        }
        if let Some(metrics) = &self.metrics {
            metrics.set_ready(false);
        }
        tracing::info!(
            online = self.core.online(),
            "shutting down: telling devices"
        );
        while self.core.shutdown_step() > 0 {
            self.flush(&mut send).await;
        }
        Ok(self.core)
    }

    fn on_datagram(&mut self, from: SocketAddr, datagram: &mut [u8]) {
        let now = Instant::now();
        match self.sessions.handle_input(now, from, datagram) {
            Ok(Input::Data {
                session, plaintext, ..
            }) => {
                let Some(remote_static) = self.sessions.remote_static(session).copied() else {
                    return;
                };
                let peer = Peer {
                    session,
                    remote_static,
                    address: from,
                };
                self.core.handle_message(now, &peer, plaintext);
            }
            Ok(_) => {}
            Err(reason) => tracing::trace!(%from, %reason, "datagram dropped by the session layer"),
        }
    }

    async fn flush(&mut self, buf: &mut [u8]) {
        while let Some(event) = self.sessions.poll_event() {
            match event {
                Event::Established {
                    session,
                    remote_addr,
                    ..
                } => {
                    tracing::debug!(?session, %remote_addr, "session established");
                    // Charge the session's requests to the address its handshake proved.
                    self.core.handle_session_established(session, remote_addr);
                }
                Event::Closed { session, .. } | Event::HandshakeFailed { session, .. } => {
                    self.core.handle_session_closed(session);
                }
                _ => {}
            }
        }
        while let Some(query) = self.core.poll_registry_query() {
            if let Err(query) = self.registry.submit(query) {
                // Every worker stopped (a panic): the request is answered INTERNAL.
                tracing::error!("registry workers have stopped");
                let failure = std::io::Error::other("registry workers have stopped");
                self.core.handle_registry_answer(
                    Instant::now(),
                    RegistryAnswer::new(query.token, Err(Box::new(failure))),
                );
            }
        }
        while let Some(transmit) = self.sessions.poll_transmit(buf) {
            send_datagram(
                &self.socket,
                &self.stream,
                transmit.destination,
                transmit.len,
                buf,
            )
            .await;
        }
        let now = Instant::now();
        while let Some(transmit) = self.core.poll_transmit() {
            match self
                .sessions
                .seal(transmit.session, now, &transmit.payload, buf)
            {
                Ok(sealed) => {
                    send_datagram(
                        &self.socket,
                        &self.stream,
                        sealed.destination,
                        sealed.len,
                        buf,
                    )
                    .await
                }
                Err(reason) => tracing::debug!(%reason, "could not seal a reply (session gone)"),
            }
        }
    }
}

/// The next announced revocation, or never when there is no announcer.
async fn recv_revocation(
    revocations: &mut Option<tokio::sync::mpsc::Receiver<DeviceId>>,
) -> Option<DeviceId> {
    match revocations {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Takes the socket, not the server, so the server future stays `Send` without the core
/// having to be `Sync`.
async fn send_datagram(
    socket: &UdpSocket,
    stream: &Option<StreamListener>,
    to: SocketAddr,
    len: usize,
    buf: &[u8],
) {
    let Some(datagram) = buf.get(..len) else {
        return;
    };
    if send_if_stream(stream.as_ref(), to, datagram) {
        return;
    }
    if let Err(error) = socket.send_to(datagram, to).await {
        tracing::debug!(%to, %error, "send_to failed");
    }
}
