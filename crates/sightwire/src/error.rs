//! Why a viewer could not connect, and why a command was not taken.

use std::sync::Arc;

use sightwire_session::auth::AuthRejection;
use sightwire_signal::ErrorCode;

/// Why [`crate::Viewer::connect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The local UDP socket could not be set up (the bind address is taken or not
    /// local, the process may not open sockets...): the operating system's error.
    #[error("cannot open the UDP socket")]
    Socket(#[source] SocketError),
    /// Nothing answered in time (rendezvous unreachable, or the device never answered).
    #[error("timed out")]
    Timeout,
    /// The rendezvous refused: unknown ID, device offline, rate limited...
    #[error("the rendezvous refused: {0:?}")]
    Rendezvous(ErrorCode),
    /// The device's ID certificate does not verify under a trusted issuer, or is for
    /// another ID.
    #[error("the device's ID certificate is not valid")]
    CertificateInvalid,
    /// The device key is not the one the viewer pinned (QR code fingerprint or a key
    /// remembered from before), or the device could not prove it holds the certified key:
    /// a wrong device or a man in the middle.
    #[error("the device key does not match the pinned or certified key")]
    KeyMismatch,
    /// No path (direct or relayed) to the device worked.
    #[error("no path to the device")]
    NoPath,
    /// The peer handshake failed.
    #[error("the handshake with the device failed")]
    HandshakeFailed,
    /// The device refused this viewer (wrong password, key not trusted...).
    #[error("the device refused this viewer: {0:?}")]
    NotAuthorized(AuthRejection),
    /// The camera cannot be reached with these credentials: its ID is unknown, it is
    /// offline, or it did not accept the password or key. The rendezvous deliberately
    /// does not say which (a stranger must not learn whether an ID exists).
    #[error("the camera is unknown, offline, or did not accept these credentials")]
    Unavailable,
    /// The device serves as many viewers as it may and refused another.
    #[error("the device serves as many viewers as it may")]
    DeviceBusy,
    /// The viewer endpoint watches as many cameras as it may.
    #[error("too many cameras watched from one endpoint")]
    TooManyWatches,
    /// The endpoint stopped before the connection was up.
    #[error("the endpoint stopped")]
    Stopped,
    /// The rendezvous host name does not resolve to an address this endpoint can use.
    #[error("cannot resolve the rendezvous: {0}")]
    RendezvousUnresolved(ResolveError),
    /// The rendezvous answered that the viewer's handshake was not made for its key: the
    /// rendezvous public key configured here is not the server's (a typo, or a rotated
    /// server key). Reported within one round trip (`spec/session.md` §2.5).
    #[error("the rendezvous key configured here does not match the server's key")]
    RendezvousKeyMismatch,
    /// Nothing at all answered from the rendezvous address (server stopped, wrong host or
    /// port, or UDP to it blocked) within [`crate::proto::RENDEZVOUS_UNREACHABLE_AFTER`]
    /// of the watch needing it; where the rendezvous has a TCP/TLS stream port
    /// (`spec/stream.md`), the stream failed too (at once when its connection is refused,
    /// else within `RENDEZVOUS_UNREACHABLE_AFTER` of falling back to it).
    #[error("the rendezvous does not answer")]
    RendezvousUnreachable,
}

/// Why a server's host name gave no address to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The resolver found no such name, or failed (it does not say which; the driver logs
    /// its message).
    #[error("the name does not resolve")]
    NotFound,
    /// The name has addresses, but none of the socket's IP family (an IPv6-only name for
    /// an IPv4 socket).
    #[error("the name has no address of the socket's IP family")]
    NoUsableAddress,
    /// The name resolved to no address at all.
    #[error("the name has no address")]
    NoAddress,
    /// The resolver did not answer in time.
    #[error("the resolver did not answer in time")]
    Timeout,
}

/// The operating system's error behind [`ConnectError::Socket`]. It is shared so the
/// error stays `Clone`; two compare equal when their [`std::io::ErrorKind`]s do.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct SocketError(Arc<std::io::Error>);

impl SocketError {
    /// The I/O error itself.
    pub fn io_error(&self) -> &std::io::Error {
        &self.0
    }
}

impl From<std::io::Error> for SocketError {
    fn from(error: std::io::Error) -> Self {
        Self(Arc::new(error))
    }
}

impl PartialEq for SocketError {
    fn eq(&self, other: &Self) -> bool {
        self.0.kind() == other.0.kind()
    }
}

impl Eq for SocketError {}

/// A command given to a [`crate::Device`] or [`crate::Viewer`] after its endpoint
/// stopped (shut down, or its task ended): nothing was sent or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the endpoint has stopped")]
#[non_exhaustive]
pub struct EndpointStopped;
