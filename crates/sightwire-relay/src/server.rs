//! The tokio driver: one UDP socket feeding the sans-IO [`Relay`].

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
    relay: Relay,
}

impl RelayServer {
    /// Binds the relay's socket.
    pub async fn bind(addr: SocketAddr, relay: Relay) -> std::io::Result<Self> {
        Ok(Self {
            socket: UdpSocket::bind(addr).await?,
            relay,
        })
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
        loop {
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
                    match self.relay.handle_datagram(Instant::now(), unix_now(), from, datagram, &mut reply) {
                        Action::Forward(to) => send(&self.socket, datagram, to).await,
                        Action::Reply(len) => send(&self.socket, &reply[..len], from).await,
                        Action::Drop(reason) => tracing::trace!(?reason, %from, "dropped"),
                    }
                }
                () = sleep_until(wake) => self.relay.handle_timeout(Instant::now()),
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        Ok(self.relay.stats().clone())
    }
}

async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    if let Err(error) = socket.send_to(bytes, to).await {
        tracing::debug!(%error, %to, "send_to failed");
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
