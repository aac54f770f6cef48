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
        }
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
                received = self.socket.recv_from(&mut buf) => {
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
        Ok(self.relay.stats().clone())
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
