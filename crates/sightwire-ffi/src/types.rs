//! The plain C types both modes share, and their conversions from and to Rust.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use sightwire::{Codec, Event, Frame, PathKind, StreamId, Transport};

/// Largest datagram the endpoint writes: the buffer given to
/// `sightwire_device_poll_transmit` must hold at least this many bytes.
pub const SIGHTWIRE_MAX_DATAGRAM_LEN: usize = 2048;

/// Largest frame accepted (16 MiB, the media protocol's limit); larger frames are
/// refused before anything is copied.
pub const SIGHTWIRE_MAX_FRAME_LEN: usize = 16_777_216;

// Literals above so that cbindgen can write them into the header; the endpoint's own
// values must agree.
const _: () = assert!(SIGHTWIRE_MAX_DATAGRAM_LEN == sightwire::proto::MAX_DATAGRAM_LEN);
const _: () = assert!(SIGHTWIRE_MAX_FRAME_LEN == sightwire_media::wire::MAX_FRAME_SIZE_LIMIT);

/// [`SightwireAddress::family`] of an IPv4 address.
pub const SIGHTWIRE_FAMILY_IPV4: u8 = 4;
/// [`SightwireAddress::family`] of an IPv6 address.
pub const SIGHTWIRE_FAMILY_IPV6: u8 = 6;

/// What a call did. `SIGHTWIRE_RESULT_OK` is 0; every other value says what went wrong.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SightwireResult {
    /// Done.
    Ok = 0,
    /// Nothing to hand out: no datagram, event, deadline or name to resolve (not an
    /// error; stop polling).
    Empty = 1,
    /// A pointer that must not be null was null.
    NullPointer = 2,
    /// An argument is out of range: a length over its limit, a string that is not
    /// UTF-8 or has no terminating NUL within its limit, an unknown codec or family.
    InvalidArgument = 3,
    /// A key is not 32 bytes.
    InvalidKey = 4,
    /// The ID certificate does not decode, or it certifies another device key.
    InvalidCertificate = 5,
    /// The rendezvous address is neither `ip:port` nor `host:port`.
    InvalidAddress = 6,
    /// The output buffer is too small (see the function's documentation for the size
    /// it needs); nothing was lost, call again with a larger one.
    BufferTooSmall = 7,
    /// The frame cannot be sent to anyone (empty, or over the media limit).
    FrameRefused = 8,
    /// The camera's frame queue is full (its thread is behind): the frame was not sent.
    QueueFull = 9,
    /// The device has shut down (or the camera's thread has stopped).
    ShutDown = 10,
    /// The operating system refused (the camera could not bind its UDP socket or start
    /// its thread).
    Io = 11,
    /// The library panicked (a bug). The handle refuses further calls; free it.
    Panic = 12,
}

/// A socket address without `struct sockaddr_storage`: the family, the address bytes in
/// network order (IPv4 in the first 4 of the 16 bytes) and the port in host order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SightwireAddress {
    /// [`SIGHTWIRE_FAMILY_IPV4`] or [`SIGHTWIRE_FAMILY_IPV6`]; 0 in an event: no address.
    pub family: u8,
    /// The address, network byte order; IPv4 uses the first 4 bytes.
    pub address: [u8; 16],
    /// The port, host byte order.
    pub port: u16,
}

impl SightwireAddress {
    pub(crate) fn from_socket_addr(addr: SocketAddr) -> Self {
        let mut address = [0u8; 16];
        let family = match addr.ip() {
            IpAddr::V4(ip) => {
                address[..4].copy_from_slice(&ip.octets());
                SIGHTWIRE_FAMILY_IPV4
            }
            IpAddr::V6(ip) => {
                address = ip.octets();
                SIGHTWIRE_FAMILY_IPV6
            }
        };
        Self {
            family,
            address,
            port: addr.port(),
        }
    }

    /// `None` for an unknown family.
    pub(crate) fn to_socket_addr(self) -> Option<SocketAddr> {
        let ip = match self.family {
            SIGHTWIRE_FAMILY_IPV4 => {
                let [a, b, c, d, ..] = self.address;
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            }
            SIGHTWIRE_FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(self.address)),
            _ => return None,
        };
        Some(SocketAddr::new(ip, self.port))
    }
}

/// A frame's codec ([`SightwireFrame::codec`] takes these values).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SightwireCodec {
    /// One H.264 access unit, Annex-B (start codes included).
    H264 = 0,
    /// One H.265 access unit, Annex-B.
    H265 = 1,
    /// One JPEG image.
    Mjpeg = 2,
    /// One raw AAC access unit (no ADTS header).
    Aac = 3,
    /// G.711 µ-law samples.
    G711Mu = 4,
    /// G.711 A-law samples.
    G711A = 5,
    /// One Opus packet.
    Opus = 6,
    /// Application metadata.
    Metadata = 7,
}

/// The Rust codec of a C codec value (a `uint32_t`, so a value outside the enum is an
/// error here rather than undefined behaviour).
fn codec_of(value: u32) -> Option<Codec> {
    Some(match value {
        0 => Codec::H264,
        1 => Codec::H265,
        2 => Codec::Mjpeg,
        3 => Codec::Aac,
        4 => Codec::G711Mu,
        5 => Codec::G711A,
        6 => Codec::Opus,
        7 => Codec::Metadata,
        _ => return None,
    })
}

/// One frame to send. The library copies `data` before the call returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SightwireFrame {
    /// The payload: one access unit (video), one audio packet...
    pub data: *const u8,
    /// Its length, 1..=[`SIGHTWIRE_MAX_FRAME_LEN`].
    pub len: usize,
    /// A [`SightwireCodec`] value.
    pub codec: u32,
    /// Stream id: 0 video, 1 audio, 2 metadata; below 16.
    pub stream: u8,
    /// The frame decodes without any earlier one (H.264 IDR, H.265 IRAP, any audio).
    pub keyframe: bool,
    /// The frame carries the codec configuration (SPS/PPS/VPS, AudioSpecificConfig).
    pub codec_config: bool,
    /// Capture time in microseconds on the stream's clock; never goes backwards.
    pub capture_time_us: u64,
}

/// A checked copy of a [`SightwireFrame`].
///
/// # Safety
/// `frame.data` must point to `frame.len` readable bytes (it is not read when the length
/// is out of range).
pub(crate) unsafe fn frame_from_c(frame: &SightwireFrame) -> Result<Frame, SightwireResult> {
    if frame.data.is_null() {
        return Err(SightwireResult::NullPointer);
    }
    if frame.len == 0 || frame.len > SIGHTWIRE_MAX_FRAME_LEN {
        return Err(SightwireResult::FrameRefused);
    }
    let codec = codec_of(frame.codec).ok_or(SightwireResult::InvalidArgument)?;
    let stream = StreamId::new(frame.stream).ok_or(SightwireResult::InvalidArgument)?;
    // SAFETY: non-null, and the caller promises `len` readable bytes; the length is
    // bounded above.
    let data = unsafe { std::slice::from_raw_parts(frame.data, frame.len) };
    Ok(Frame::new(
        stream,
        codec,
        frame.capture_time_us,
        Bytes::copy_from_slice(data),
    )
    .with_keyframe(frame.keyframe)
    .with_codec_config(frame.codec_config))
}

/// A datagram to send, written by `sightwire_device_poll_transmit`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SightwireTransmit {
    /// Where to send it.
    pub destination: SightwireAddress,
    /// IP TTL (hop limit) to send it with; 0: the socket's default. Low TTLs open the
    /// local NAT without reaching the peer's (set `IP_TTL` for this one datagram).
    pub ttl: u8,
    /// Bytes written to the buffer.
    pub len: usize,
}

/// Which path carries a viewer's packets.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SightwirePathKind {
    /// No path (or not known).
    #[default]
    None = 0,
    /// Same local network.
    Lan = 1,
    /// Direct over the internet (a punched hole).
    Direct = 2,
    /// Through the relay, over UDP.
    Relay = 3,
    /// Through the relay over a TCP/TLS stream (UDP is blocked).
    RelayTcp = 4,
}

/// What an event reports.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SightwireEventKind {
    /// Registered with the rendezvous (again, after a loss). `address`: this device as
    /// the rendezvous sees it.
    #[default]
    Registered = 0,
    /// The link to the rendezvous failed; the device reconnects by itself.
    RendezvousLost = 1,
    /// Nothing answered from the rendezvous for a while; the device keeps trying.
    RendezvousUnreachable = 2,
    /// The rendezvous holds another key than the one configured.
    RendezvousKeyMismatch = 3,
    /// The rendezvous host name did not resolve; the device keeps trying.
    RendezvousUnresolved = 4,
    /// The rendezvous refused a request (the device logs why).
    RendezvousError = 5,
    /// UDP to the rendezvous looks blocked; the device uses TCP/TLS streams.
    UdpBlocked = 6,
    /// The keepalive interval changed. `value`: the interval in milliseconds.
    KeepaliveInterval = 7,
    /// A viewer is connected and authorized. `peer`, `path`, `address` (the viewer's or
    /// the relay's).
    ViewerConnected = 8,
    /// A viewer's connection ended. `peer`.
    ViewerClosed = 9,
    /// The path to a viewer changed. `peer`, `path`, `address`.
    PathChanged = 10,
    /// The path to a viewer stopped answering; another is looked for. `peer`.
    PathLost = 11,
    /// A keyframe is wanted on `stream` (make the next frame an IDR if the encoder can).
    KeyframeRequested = 12,
    /// The encoder should aim for `value` bits per second (lowest among the viewers).
    TargetBitrate = 13,
    /// A frame was not sent to `peer` (0: to anyone) on `stream`.
    FrameNotSent = 14,
    /// Sending datagrams failed `value` times since the last report.
    SendErrors = 15,
    /// Figures for `peer`, about once a second: `path`, `address`, `value` = target
    /// bitrate in bits per second.
    Stats = 16,
    /// A control message from `peer`; `value`: its length (the payload is not handed
    /// over by this version of the C ABI).
    Control = 17,
    /// A media frame from `peer` (talk-back) on `stream`; `value`: its length (the
    /// payload is not handed over by this version of the C ABI).
    Frame = 18,
    /// Something this version of the C ABI does not describe.
    Other = 19,
}

/// One event, written by the `*_poll_event` functions. Fields a kind does not use are 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SightwireEvent {
    /// What happened.
    pub kind: SightwireEventKind,
    /// The viewer connection it concerns (0: none).
    pub peer: u64,
    /// The path, for kinds that have one.
    pub path: SightwirePathKind,
    /// An address, for kinds that have one (`family` 0: none).
    pub address: SightwireAddress,
    /// The stream, for kinds that have one.
    pub stream: u8,
    /// A number whose meaning the kind gives.
    pub value: u64,
}

fn path_fields(event: &mut SightwireEvent, path: Option<&sightwire::Path>) {
    if let Some(path) = path {
        event.path = match (path.kind, path.transport) {
            (PathKind::Lan, _) => SightwirePathKind::Lan,
            (PathKind::Direct, _) => SightwirePathKind::Direct,
            (PathKind::Relay, Transport::Stream) => SightwirePathKind::RelayTcp,
            (PathKind::Relay, _) => SightwirePathKind::Relay,
            // A kind newer than this ABI: reported as unknown rather than guessed.
            _ => SightwirePathKind::None,
        };
        event.address = SightwireAddress::from_socket_addr(path.remote);
    }
}

impl SightwireEvent {
    /// The C description of `event`.
    pub(crate) fn from_event(event: &Event) -> Self {
        use SightwireEventKind as Kind;
        let mut out = Self::default();
        let len = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        out.kind = match event {
            Event::Registered { observed } => {
                out.address = SightwireAddress::from_socket_addr(*observed);
                Kind::Registered
            }
            Event::RendezvousLost => Kind::RendezvousLost,
            Event::RendezvousUnreachable => Kind::RendezvousUnreachable,
            Event::RendezvousKeyMismatch => Kind::RendezvousKeyMismatch,
            Event::RendezvousUnresolved { .. } => Kind::RendezvousUnresolved,
            Event::RendezvousError { .. } => Kind::RendezvousError,
            Event::UdpBlocked => Kind::UdpBlocked,
            Event::KeepaliveInterval { interval } => {
                out.value = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
                Kind::KeepaliveInterval
            }
            Event::PeerConnected { peer, path, .. } => {
                out.peer = peer.0;
                path_fields(&mut out, path.as_ref());
                Kind::ViewerConnected
            }
            Event::PeerClosed { peer, .. } => {
                out.peer = peer.0;
                Kind::ViewerClosed
            }
            Event::PathChanged { peer, path } => {
                out.peer = peer.0;
                path_fields(&mut out, Some(path));
                Kind::PathChanged
            }
            Event::PathLost { peer } => {
                out.peer = peer.0;
                Kind::PathLost
            }
            Event::KeyframeRequested { peer, stream } => {
                out.peer = peer.0;
                out.stream = stream.get();
                Kind::KeyframeRequested
            }
            Event::TargetBitrate { bps } => {
                out.value = *bps;
                Kind::TargetBitrate
            }
            Event::FrameNotSent { peer, stream, .. } => {
                out.peer = peer.map_or(0, |p| p.0);
                out.stream = stream.get();
                Kind::FrameNotSent
            }
            Event::SendErrors { count, .. } => {
                out.value = *count;
                Kind::SendErrors
            }
            Event::Stats { peer, stats } => {
                out.peer = peer.0;
                out.value = stats.target_bitrate_bps;
                path_fields(&mut out, stats.path.as_ref());
                Kind::Stats
            }
            Event::Control { peer, message } => {
                out.peer = peer.0;
                out.value = len(message.len());
                Kind::Control
            }
            Event::Frame { peer, frame } => {
                out.peer = peer.0;
                out.stream = frame.frame.stream.get();
                out.value = len(frame.frame.data.len());
                Kind::Frame
            }
            _ => Kind::Other,
        };
        out
    }
}

/// The UTF-8 string at `ptr`, which must end with a NUL within `max` bytes. Reads at
/// most `max + 1` bytes, so an unterminated string is an error, not a runaway scan.
///
/// # Safety
/// `ptr` must be readable up to its NUL or `max + 1` bytes, whichever comes first.
pub(crate) unsafe fn c_str<'a>(
    ptr: *const std::ffi::c_char,
    max: usize,
) -> Result<&'a str, SightwireResult> {
    if ptr.is_null() {
        return Err(SightwireResult::NullPointer);
    }
    let bytes = ptr.cast::<u8>();
    let mut len = 0;
    loop {
        if len > max {
            return Err(SightwireResult::InvalidArgument);
        }
        // SAFETY: the caller promises the bytes up to the NUL (or `max + 1`) are
        // readable, and no byte before this one was a NUL.
        if unsafe { *bytes.add(len) } == 0 {
            break;
        }
        len += 1;
    }
    // SAFETY: the `len` bytes before the NUL were just read.
    let slice = unsafe { std::slice::from_raw_parts(bytes, len) };
    std::str::from_utf8(slice).map_err(|_| SightwireResult::InvalidArgument)
}

/// The `len` bytes at `ptr`, which must be exactly `expected` long.
///
/// # Safety
/// `ptr` must point to `len` readable bytes.
pub(crate) unsafe fn fixed_bytes<const N: usize>(
    ptr: *const u8,
    len: usize,
    wrong_length: SightwireResult,
) -> Result<[u8; N], SightwireResult> {
    if ptr.is_null() {
        return Err(SightwireResult::NullPointer);
    }
    if len != N {
        return Err(wrong_length);
    }
    let mut out = [0u8; N];
    // SAFETY: non-null, and the caller promises `len` (= N) readable bytes.
    out.copy_from_slice(unsafe { std::slice::from_raw_parts(ptr, N) });
    Ok(out)
}

/// A C frame over `data`: an H.264 keyframe on stream 0 (for tests).
#[cfg(test)]
pub(crate) fn h264_keyframe(data: &[u8]) -> SightwireFrame {
    SightwireFrame {
        data: data.as_ptr(),
        len: data.len(),
        codec: SightwireCodec::H264 as u32,
        stream: 0,
        keyframe: true,
        codec_config: false,
        capture_time_us: 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_unknown_families_are_refused() {
        for text in ["192.0.2.7:3478", "[2001:db8::9]:443"] {
            let addr: SocketAddr = text.parse().unwrap();
            let c = SightwireAddress::from_socket_addr(addr);
            assert_eq!(c.to_socket_addr(), Some(addr));
        }
        let bad = SightwireAddress {
            family: 5,
            ..Default::default()
        };
        assert_eq!(bad.to_socket_addr(), None);
    }

    #[test]
    fn strings_must_end_within_their_limit() {
        let text = c"abc";
        // SAFETY: a NUL-terminated literal.
        let whole = unsafe { c_str(text.as_ptr(), 3) };
        assert_eq!(whole, Ok("abc"));
        // SAFETY: as above; the scan stops after `max + 1` bytes, within the literal.
        let too_long = unsafe { c_str(text.as_ptr(), 2) };
        assert_eq!(too_long, Err(SightwireResult::InvalidArgument));
        let not_utf8 = c"\xff";
        // SAFETY: as above.
        let not_utf8 = unsafe { c_str(not_utf8.as_ptr(), 8) };
        assert_eq!(not_utf8, Err(SightwireResult::InvalidArgument));
        // SAFETY: null is checked before any read.
        let null = unsafe { c_str(std::ptr::null(), 8) };
        assert_eq!(null, Err(SightwireResult::NullPointer));
    }

    #[test]
    fn frames_are_checked_before_they_are_copied() {
        let data = [0u8, 0, 0, 1, 0x65];
        let mut frame = h264_keyframe(&data);
        // SAFETY: `data` outlives every call below and holds `data.len()` bytes; the
        // lengths over it are refused before any read.
        let checked = |frame: &SightwireFrame| unsafe { frame_from_c(frame) }.err();
        assert_eq!(checked(&frame), None);
        frame.codec = 8;
        assert_eq!(checked(&frame), Some(SightwireResult::InvalidArgument));
        frame.codec = 0;
        frame.stream = 16;
        assert_eq!(checked(&frame), Some(SightwireResult::InvalidArgument));
        frame.stream = 0;
        frame.len = SIGHTWIRE_MAX_FRAME_LEN + 1;
        assert_eq!(checked(&frame), Some(SightwireResult::FrameRefused));
        frame.len = 0;
        assert_eq!(checked(&frame), Some(SightwireResult::FrameRefused));
        frame.len = data.len();
        frame.data = std::ptr::null();
        assert_eq!(checked(&frame), Some(SightwireResult::NullPointer));
        frame.data = data.as_ptr();
        // SAFETY: as above, with the true length.
        let copied = unsafe { frame_from_c(&frame) }.expect("a valid frame");
        assert_eq!(&copied.data[..], &data);
        assert!(copied.keyframe);
    }
}
