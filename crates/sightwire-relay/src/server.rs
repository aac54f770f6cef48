//! The tokio driver: one UDP socket, and optionally a TCP/TLS stream listener
//! (`spec/stream.md`), feeding the sans-IO [`Relay`]. A stream connection is one more
//! peer address to the core (its virtual address), so binds, challenges and forwarding
//! work alike for UDP and stream peers, and between them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sightwire_ops::metrics::Metrics;
use sightwire_stream::tls::{StreamListener, recv_optional, send_if_stream};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::batch::{BatchIo, Flushed};
use crate::core::{Action, Relay, RelayStats};
use crate::wire::CHALLENGE_LEN;

/// Largest datagram the server reads; anything longer is truncated by the socket and
/// then refused by the decoder as too long.
const RECV_BUFFER_LEN: usize = 2048;

/// A relay bound to a UDP socket.
#[derive(Debug)]
pub struct RelayServer {
    socket: UdpSocket,
    stream: Option<StreamListener>,
    relay: Relay,
    metrics: Option<Arc<Metrics<Relay>>>,
    batched_io: bool,
}

impl RelayServer {
    /// Binds the relay's socket (with the system's default buffers; a busy relay wants
    /// [`RelayServer::from_socket`] with a socket from `sightwire_ops::udp::bind_udp`).
    pub async fn bind(addr: SocketAddr, relay: Relay) -> std::io::Result<Self> {
        Ok(Self::from_socket(UdpSocket::bind(addr).await?, relay))
    }

    /// A relay on a socket the caller bound.
    pub fn from_socket(socket: UdpSocket, relay: Relay) -> Self {
        Self {
            socket,
            stream: None,
            relay,
            metrics: None,
            batched_io: true,
        }
    }

    /// Batched socket I/O (spec/relay.md, "Socket I/O"): `recvmmsg` with GRO, and runs of
    /// datagrams to one destination in one `sendmsg` with GSO, where the kernel offers
    /// them. On by default; `false` reads and sends one datagram per syscall (the
    /// reference the benchmark compares against). Where the socket cannot be set up for
    /// it, the relay says so in its log and uses the plain path.
    pub fn with_batched_io(mut self, enabled: bool) -> Self {
        self.batched_io = enabled;
        self
    }

    /// Publishes counters to `metrics` after each datagram and timer, and marks it ready
    /// while [`RelayServer::run`] serves.
    pub fn with_metrics(mut self, metrics: Arc<Metrics<Relay>>) -> Self {
        self.metrics = Some(metrics);
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

    /// The address the relay listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serves until `shutdown` turns true (or its sender is dropped), then returns the
    /// counters. Send errors (an unreachable peer) are counted in logs, never fatal.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> std::io::Result<RelayStats> {
        let mut buf = vec![0u8; RECV_BUFFER_LEN];
        let mut reply = [0u8; CHALLENGE_LEN];
        let mut batch = if self.batched_io {
            match BatchIo::new(&self.socket, RECV_BUFFER_LEN) {
                Ok(batch) => {
                    tracing::info!(
                        gso_segments = batch.gso_segments(),
                        gro = batch.gro(),
                        "batched socket I/O"
                    );
                    Some(batch)
                }
                Err(error) => {
                    tracing::warn!(%error, "no batched socket I/O: one datagram per syscall");
                    None
                }
            }
        } else {
            None
        };
        let mut sent = Flushed::default();
        if let Some(metrics) = &self.metrics {
            metrics.publish(&self.relay);
            metrics.set_ready(true);
        }
        loop {
            if let Some(metrics) = &self.metrics {
                // Relaxed stores of the last turn's counters: no lock on the hot path.
                metrics.publish(&self.relay);
            }
            if *shutdown.borrow() {
                break;
            }
            let wake = self.relay.poll_timeout();
            tokio::select! {
                readable = readable(&self.socket, batch.is_some()) => {
                    if let (Ok(()), Some(batch)) = (readable, batch.as_mut()) {
                        self.handle_batch(batch, &mut reply, &mut sent).await;
                    }
                }
                received = self.socket.recv_from(&mut buf), if batch.is_none() => {
                    let (len, from) = match received {
                        Ok(received) => received,
                        // ICMP errors from earlier sends surface here on some systems.
                        Err(error) => {
                            tracing::debug!(%error, "recv_from failed");
                            continue;
                        }
                    };
                    let datagram = &buf[..len];
                    self.handle(from, datagram, &mut reply).await;
                }
                Some((from, datagram)) = recv_optional(&mut self.stream) => {
                    self.handle(from, &datagram, &mut reply).await;
                }
                () = sleep_until(wake) => self.relay.handle_timeout(Instant::now()),
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.set_ready(false);
        }
        if batch.is_some() {
            tracing::debug!(
                gso_sends = sent.gso_sends,
                gso_datagrams = sent.gso_datagrams,
                send_errors = sent.errors,
                "batched socket I/O"
            );
        }
        Ok(self.relay.stats().clone())
    }

    /// One batch from the socket through the core, its forwards sent grouped by
    /// destination. A reply (a bind's answer) first sends the forwards before it, so
    /// nothing overtakes what was queued to the same address.
    async fn handle_batch(&mut self, batch: &mut BatchIo, reply: &mut [u8], sent: &mut Flushed) {
        match batch.recv(&self.socket) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(error) => {
                tracing::debug!(%error, "recvmmsg failed");
                return;
            }
        }
        // One clock reading for the batch: its datagrams arrived together.
        let (now, unix) = (Instant::now(), unix_now());
        let mut index = 0;
        while let Some((from, range)) = batch.received(index) {
            index += 1;
            let datagram = batch.bytes(range.clone());
            match self.relay.handle_datagram(now, unix, from, datagram, reply) {
                Action::Forward(to) => {
                    if !send_if_stream(self.stream.as_ref(), to, datagram) {
                        batch.forward(to, range);
                    }
                }
                Action::Reply(len) => {
                    add(sent, batch.flush(&self.socket).await);
                    self.send(&reply[..len], from).await;
                }
                Action::Drop(reason) => tracing::trace!(?reason, %from, "dropped"),
            }
        }
        add(sent, batch.flush(&self.socket).await);
    }

    async fn handle(&mut self, from: SocketAddr, datagram: &[u8], reply: &mut [u8]) {
        match self
            .relay
            .handle_datagram(Instant::now(), unix_now(), from, datagram, reply)
        {
            Action::Forward(to) => self.send(datagram, to).await,
            Action::Reply(len) => self.send(&reply[..len], from).await,
            Action::Drop(reason) => tracing::trace!(?reason, %from, "dropped"),
        }
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) {
        if send_if_stream(self.stream.as_ref(), to, bytes) {
            return;
        }
        if let Err(error) = self.socket.send_to(bytes, to).await {
            tracing::debug!(%error, %to, "send_to failed");
        }
    }
}

fn add(total: &mut Flushed, more: Flushed) {
    total.gso_sends += more.gso_sends;
    total.gso_datagrams += more.gso_datagrams;
    total.errors += more.errors;
}

/// The socket's readiness for the batched path; never when it is off.
async fn readable(socket: &UdpSocket, batched: bool) -> std::io::Result<()> {
    if batched {
        socket.readable().await
    } else {
        std::future::pending().await
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Seconds since the Unix epoch, for grant expiry.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
