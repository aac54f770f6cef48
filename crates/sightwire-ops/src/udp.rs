//! UDP sockets with kernel buffers sized for load.
//!
//! A server that is descheduled for a few milliseconds (a busy or shared machine, a
//! garbage-heavy neighbour) must find the datagrams that arrived meanwhile in its receive
//! buffer. Linux's default (`net.core.rmem_default`, 212 992 bytes: about 600 keepalives
//! with the kernel's per-datagram overhead) is not enough for a node of 100 000 devices:
//! `rendezvous-load` saw 1.2 % of keepalives dropped at the server socket with it
//! (benches/HISTORY.md). The kernel caps a request at `net.core.rmem_max`/`wmem_max`, so
//! [`bind_udp`] reports what it granted, and the operator docs (deploy/README.md) raise
//! the caps.

use std::net::SocketAddr;

/// Socket buffer size the servers ask for by default, each way: 8 MiB (about 25 000
/// small datagrams queued), what a node of a million devices needs to ride out a pause
/// of a few hundred milliseconds at its keepalive rate.
pub const DEFAULT_SERVER_SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// How much more than the request the kernel reports for a granted buffer.
const REPORTED_FACTOR: usize = if cfg!(target_os = "linux") { 2 } else { 1 };

/// The UDP socket buffer sizes the kernel granted (bytes; Linux reports twice what it
/// reserves for payload, and caps requests at `net.core.rmem_max`/`wmem_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a UDP socket has these two buffers and no others"
)]
pub struct SocketBuffers {
    /// Receive buffer (`SO_RCVBUF`).
    pub receive: usize,
    /// Send buffer (`SO_SNDBUF`).
    pub send: usize,
}

impl SocketBuffers {
    /// Whether the kernel granted all of `requested` bytes each way. Linux reports
    /// twice what it granted (the other half is its bookkeeping allowance), and a
    /// request capped at `rmem_max` reports twice the cap: so on Linux the request was
    /// granted whole only if twice of it is reported.
    pub fn satisfies(&self, requested: usize) -> bool {
        let reported = requested.saturating_mul(REPORTED_FACTOR);
        self.receive >= reported && self.send >= reported
    }
}

/// Binds a non-blocking UDP socket on `bind` with buffers of `buffer_bytes` each way.
///
/// Sizing is best effort: a refusal is logged, never fatal, and what the kernel granted
/// is returned (and logged at `info` when it is less than asked, with the sysctls to
/// raise). Binding errors are returned.
pub fn bind_udp(
    bind: SocketAddr,
    buffer_bytes: usize,
) -> std::io::Result<(std::net::UdpSocket, SocketBuffers)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(error) = socket.set_recv_buffer_size(buffer_bytes) {
        tracing::warn!(%error, buffer_bytes, "could not size the receive buffer");
    }
    if let Err(error) = socket.set_send_buffer_size(buffer_bytes) {
        tracing::warn!(%error, buffer_bytes, "could not size the send buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    let buffers = SocketBuffers {
        receive: socket.recv_buffer_size()?,
        send: socket.send_buffer_size()?,
    };
    if !buffers.satisfies(buffer_bytes) {
        tracing::info!(
            requested = buffer_bytes,
            receive = buffers.receive,
            send = buffers.send,
            "the kernel granted smaller socket buffers (raise net.core.rmem_max/wmem_max)"
        );
    }
    Ok((socket.into(), buffers))
}

/// [`bind_udp`] for tokio: the same socket registered with the current runtime.
pub fn bind_tokio_udp(
    bind: SocketAddr,
    buffer_bytes: usize,
) -> std::io::Result<(tokio::net::UdpSocket, SocketBuffers)> {
    let (socket, buffers) = bind_udp(bind, buffer_bytes)?;
    Ok((tokio::net::UdpSocket::from_std(socket)?, buffers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_request_is_granted_and_reported() {
        // 64 KiB is under every distribution's rmem_max/wmem_max.
        let (socket, buffers) = bind_udp("127.0.0.1:0".parse().unwrap(), 64 << 10).unwrap();
        assert!(buffers.satisfies(64 << 10), "{buffers:?}");
        assert!(socket.local_addr().unwrap().port() != 0);
    }

    #[test]
    fn a_request_above_the_cap_is_capped_not_refused() {
        // 1 GiB is above any sane rmem_max: the socket still binds, with what was granted.
        let (_socket, buffers) = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 30).unwrap();
        assert!(
            buffers.receive > 0 && buffers.receive < 1 << 30,
            "{buffers:?}"
        );
        assert!(!buffers.satisfies(1 << 30));
    }

    #[test]
    fn a_capped_grant_does_not_satisfy_the_request() {
        // What Linux reports for 8 MiB asked under a 4 MiB rmem_max: twice the cap.
        let capped = SocketBuffers {
            receive: 8 << 20,
            send: 8 << 20,
        };
        assert_eq!(capped.satisfies(8 << 20), !cfg!(target_os = "linux"));
        assert!(capped.satisfies(4 << 20));
    }

    #[test]
    fn binding_errors_are_returned() {
        let (taken, _) = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap();
        let addr = taken.local_addr().unwrap();
        assert!(bind_udp(addr, 1 << 16).is_err());
    }
}
