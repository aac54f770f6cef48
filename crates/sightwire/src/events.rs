//! What an endpoint reports to the application.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sightwire_media::{PacketizeError, ReceivedFrame, SendError, StreamId};
use sightwire_punch::PathKind;
use sightwire_session::PublicKey;
use sightwire_session::auth::AuthRejection;
use sightwire_signal::ErrorCode;

use crate::error::ConnectError;

/// Identifies one viewer ↔ device connection at an endpoint (the rendezvous's connect id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(
    clippy::exhaustive_structs,
    reason = "the number the endpoint gave a peer; applications name peers by it in logs and tests"
)]
pub struct PeerId(pub u64);

/// How packets leave the endpoint on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Transport {
    /// UDP datagrams.
    #[default]
    Udp,
    /// A TCP/TLS stream to the relay, because UDP is blocked (`spec/stream.md`).
    Stream,
}

/// The path packets to a peer take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Path {
    /// LAN, direct over the internet, or through the relay.
    pub kind: PathKind,
    /// The peer's address, or the relay's.
    pub remote: SocketAddr,
    /// Round-trip time measured by the connectivity checks.
    pub rtt: Duration,
    /// UDP, or a TCP/TLS stream to the relay.
    pub transport: Transport,
}

impl Path {
    /// `lan`, `direct`, `relay`, or `relay-tcp` (the relay over a TCP/TLS stream).
    pub fn kind_name(&self) -> &'static str {
        match (self.kind, self.transport) {
            (PathKind::Relay, Transport::Stream) => "relay-tcp",
            (kind, _) => path_kind_name(kind),
        }
    }
}

/// `lan`, `direct` or `relay`.
pub fn path_kind_name(kind: PathKind) -> &'static str {
    kind.name()
}

/// Per-peer figures, reported about once a second.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Current path, if any.
    pub path: Option<Path>,
    /// Media round-trip time from receiver reports.
    pub rtt: Option<Duration>,
    /// Fraction of media packets the peer reported lost, 0.0–1.0.
    pub loss: f64,
    /// Frames delivered to the application so far.
    pub frames_delivered: u64,
    /// Frames that missed their deadline.
    pub frames_late: u64,
    /// Frames dropped because a memory limit was hit.
    pub frames_dropped: u64,
    /// Frames skipped while waiting for a keyframe (on joining a stream, or after a
    /// loss): they could not have been decoded.
    pub frames_skipped: u64,
    /// Bytes of frames delivered so far.
    pub bytes_delivered: u64,
    /// Target bitrate estimated for the sender's encoder, bits per second.
    pub target_bitrate_bps: u64,
    /// Every counter and estimate of the connection's media layer, both directions:
    /// what the sender accepted, paced and retransmitted, what the receiver delivered,
    /// gave up as late or evicted. The figures above are a digest of these; benchmarks
    /// and diagnostics attribute losses with them. (Boxed: one allocation a second per
    /// peer keeps every other [`Event`] small.)
    pub media: Box<sightwire_media::Stats>,
}

/// Why a connection to a peer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerClosedReason {
    /// The peer (or the local application) closed it.
    Closed,
    /// Nothing was heard from the peer for too long.
    Timeout,
    /// The device refused the viewer.
    Rejected(AuthRejection),
    /// The device's table of viewers is full.
    TooManyViewers,
    /// No path to the peer was found.
    NoPath,
    /// The peer could not complete the Noise handshake (wrong key or unreachable).
    HandshakeFailed,
}

/// Why a frame was not sent ([`Event::FrameNotSent`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame cannot be framed for any peer (empty, or over the protocol's 16 MiB).
    #[error(transparent)]
    Packetize(#[from] PacketizeError),
    /// The peer's media connection refused it: over its `max_frame_size`, its transmit
    /// queue full, or dropped by its frame-drop policy (`spec/media.md` 4.7).
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Something an endpoint reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The device is registered with the rendezvous (again, after a loss).
    Registered {
        /// The device's address as the rendezvous sees it.
        observed: SocketAddr,
    },
    /// The link to the rendezvous failed; the endpoint is reconnecting. Existing peer
    /// connections are not affected.
    RendezvousLost,
    /// No answer came from the rendezvous over UDP: the endpoint now talks to the
    /// rendezvous and the relay over TCP/TLS streams, and to peers through the relay only
    /// (`spec/stream.md`).
    UdpBlocked,
    /// The rendezvous host name did not resolve (the endpoint keeps trying: with the
    /// addresses it had, or by resolving again with backoff).
    RendezvousUnresolved {
        /// Why.
        error: crate::error::ResolveError,
    },
    /// The rendezvous holds another key than the one configured: it answered the
    /// handshake with a key-mismatch notice (`spec/session.md` §2.5). The endpoint keeps
    /// trying with backoff (a device may be waiting for a key update); reported once until
    /// a session with the rendezvous is established.
    RendezvousKeyMismatch,
    /// Nothing answered from the rendezvous for
    /// [`crate::proto::RENDEZVOUS_UNREACHABLE_AFTER`] while the endpoint tried to reach it.
    /// The endpoint keeps trying; reported once until a session is established.
    RendezvousUnreachable,
    /// A device's keepalive interval to the rendezvous changed: it learned how long its
    /// NAT keeps an idle mapping (`spec/registration.md` §7).
    KeepaliveInterval {
        /// The time between keepalives from now on.
        interval: Duration,
    },
    /// The rendezvous refused a request.
    RendezvousError {
        /// What it said.
        code: ErrorCode,
    },
    /// A peer is connected, authenticated and authorized; media may flow.
    PeerConnected {
        /// The connection.
        peer: PeerId,
        /// The peer's static key.
        key: PublicKey,
        /// The path in use.
        path: Option<Path>,
    },
    /// The path to a peer changed (for example relay → direct).
    PathChanged {
        /// The connection.
        peer: PeerId,
        /// The new path.
        path: Path,
    },
    /// The path to a peer stopped answering; a new one is being looked for.
    PathLost {
        /// The connection.
        peer: PeerId,
    },
    /// A complete media frame from a peer.
    Frame {
        /// The connection.
        peer: PeerId,
        /// The frame.
        frame: ReceivedFrame,
    },
    /// A control message from a peer, in order.
    Control {
        /// The connection.
        peer: PeerId,
        /// The message.
        message: Bytes,
    },
    /// A keyframe is wanted on a stream we send: the peer asked (once the path has room
    /// for one, `spec/media.md` 4.7), or, on a device, a viewer needs one that its GOP
    /// cache cannot give it or that would cost it less than catching up from the cache
    /// (`spec/endpoint.md` §4.1). An encoder that can should make its next frame a
    /// keyframe; a source that cannot (a file, an RTSP camera) may ignore it.
    KeyframeRequested {
        /// The connection.
        peer: PeerId,
        /// The stream.
        stream: StreamId,
    },
    /// Figures for a peer.
    Stats {
        /// The connection.
        peer: PeerId,
        /// The figures.
        stats: PeerStats,
    },
    /// A connection ended.
    PeerClosed {
        /// The connection.
        peer: PeerId,
        /// Why.
        reason: PeerClosedReason,
    },
    /// The bitrate the local encoder should aim for changed (estimated from the peers'
    /// reports). On a device it is the lowest target among its authorized viewers — one
    /// encoder serves them all; on a viewer it is the target for its talk-back to that
    /// camera. An RTSP camera switches between its main and sub stream on it; a file
    /// source drops frames.
    TargetBitrate {
        /// Bits per second.
        bps: u64,
    },
    /// A watch could not connect to its camera and has stopped trying (a viewer
    /// endpoint reports it for the watch; [`crate::Viewer::connect`] returns it as its
    /// error).
    ConnectFailed {
        /// Why.
        error: ConnectError,
    },
    /// A frame handed to `send_frame` was not sent: to one peer (`peer`), or to anyone
    /// (`peer: None`, the frame could not be framed at all). The peer sees the gap (its
    /// next frame on the stream is marked, `spec/media.md` 4.7); if later frames may refer
    /// to this one, they are not sent either until the stream's next keyframe, which is
    /// asked for with [`Event::KeyframeRequested`].
    FrameNotSent {
        /// The peer it was not sent to; `None`: not sent to any.
        peer: Option<PeerId>,
        /// The frame's stream.
        stream: StreamId,
        /// Why.
        error: FrameError,
    },
    /// Sending datagrams failed since the last report (for example no route after a
    /// network change). The endpoint keeps going; the paths' own checks recover.
    SendErrors {
        /// Sends that failed since the last report.
        count: u64,
        /// What the last failure was.
        last: std::io::ErrorKind,
    },
}
