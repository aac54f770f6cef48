//! Sightwire's stream framing: the datagrams an endpoint would send over UDP, carried over
//! one TCP connection (inside TLS) for networks that let no UDP out.
//!
//! Some networks (hotels, offices, some mobile carriers) block UDP and allow only TCP to
//! ports 80 and 443. There an endpoint reaches the rendezvous and the relay over TLS on
//! port 443 and sends them *the same datagrams* it would send over UDP, one per frame:
//!
//! ```text
//! client → server:  "SWS" 0x01            (the 4-byte preamble, once)
//! both ways:        len u16 (big-endian) ‖ datagram[len]     len = 1 … 2048
//! ```
//!
//! The wire format and the fallback rules are in `spec/stream.md`.
//!
//! What this crate is: the codec, sans-IO — [`encode_frame`] and an incremental
//! [`Decoder`] with a fixed bound on what it buffers ([`MAX_BUFFERED`]) and a typed
//! error for every malformed input ([`DecodeError`]), after which the connection is
//! closed. With the `tls` feature, the `tls` module adds the tokio and rustls glue the
//! servers and the endpoint driver share (a listener that presents each connection as a
//! virtual peer address, and a client).
//!
//! What it is not: a security layer. End-to-end security is Noise, as over UDP; TLS is
//! there so that middleboxes see ordinary HTTPS on 443, and the client does not verify
//! the server's certificate (the rendezvous is authenticated by its pinned Noise key).
//!
//! ```
//! use bytes::BytesMut;
//! use sightwire_stream::{Decoder, PREAMBLE, encode_frame};
//!
//! // The client writes the preamble, then one frame per datagram.
//! let mut wire = BytesMut::new();
//! wire.extend_from_slice(&PREAMBLE);
//! encode_frame(b"\x01handshake", &mut wire)?;
//! encode_frame(b"\x30bind", &mut wire)?;
//!
//! // The server decodes them however the bytes arrive (here one at a time).
//! let mut decoder = Decoder::server();
//! let mut datagrams = Vec::new();
//! for byte in wire.chunks(1) {
//!     assert_eq!(decoder.push(byte), 1);
//!     while let Some(datagram) = decoder.next_datagram()? {
//!         datagrams.push(datagram);
//!     }
//! }
//! assert_eq!(datagrams, [&b"\x01handshake"[..], &b"\x30bind"[..]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

#[cfg(feature = "tls")]
pub mod tls;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What a client sends first: `"SWS"` and the framing version 1.
pub const PREAMBLE: [u8; 4] = *b"SWS\x01";
/// Length of the big-endian length field in front of each datagram.
pub const LENGTH_LEN: usize = 2;
/// Largest datagram a frame may carry (the endpoint's `MAX_DATAGRAM_LEN`).
pub const MAX_FRAME_LEN: usize = 2048;
/// Most bytes a [`Decoder`] holds: a preamble and one largest frame. Whenever it is full,
/// a whole frame (or an error) is waiting, so a decoder always makes progress.
pub const MAX_BUFFERED: usize = PREAMBLE.len() + LENGTH_LEN + MAX_FRAME_LEN;

/// The first 32 bits of every [`stream_peer_addr`].
const STREAM_PEER_PREFIX: u32 = 0x0100_5357;

/// The virtual address a server gives stream connection number `id` from `remote`, so
/// its datagram code can treat the connection as one more UDP peer. It is
/// `[0100:5357:hh:hh:id]:port` (in the reserved `0100::/8`, never a real peer): the next
/// 32 bits are the client's IPv4 address (for IPv6, its /64 prefix folded to 32 bits), so
/// a server that keys limits on a source's /64 charges every stream connection to its
/// real source; the low 64 bits tell connections apart; the port is the client's TCP
/// port (never 0, so signaling that reports it as an observed address can encode it).
/// Nobody can send UDP to it: a server never offers it as a candidate, and an endpoint
/// that is told it as its own observed address ignores it.
pub fn stream_peer_addr(remote: SocketAddr, id: u64) -> SocketAddr {
    let source: u32 = match remote.ip() {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u32::from(v4),
            None => {
                let prefix = (u128::from(v6) >> 64) as u64;
                (prefix >> 32) as u32 ^ prefix as u32
            }
        },
    };
    let bits = (u128::from(STREAM_PEER_PREFIX) << 96) | (u128::from(source) << 64) | u128::from(id);
    SocketAddr::V6(SocketAddrV6::new(
        Ipv6Addr::from(bits),
        remote.port().max(1),
        0,
        0,
    ))
}

/// Whether `addr` is a [`stream_peer_addr`] (so not an address to tell anyone, for
/// example as a server-reflexive candidate).
pub fn is_stream_peer(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(v6) => (u128::from(*v6.ip()) >> 96) as u32 == STREAM_PEER_PREFIX,
        SocketAddr::V4(_) => false,
    }
}

/// Why a datagram cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// An empty datagram (length 0 is not allowed on the wire).
    #[error("empty datagram")]
    Empty,
    /// Longer than [`MAX_FRAME_LEN`].
    #[error("datagram of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its length.
        size: usize,
        /// [`MAX_FRAME_LEN`].
        limit: usize,
    },
}

/// Why a stream is malformed. Every one ends the connection: after an error the decoder
/// returns it again and yields nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The client's first 4 bytes are not [`PREAMBLE`] (another protocol, or another
    /// version of this one).
    #[error("bad preamble {found:02x?}")]
    BadPreamble {
        /// What came instead.
        found: [u8; 4],
    },
    /// A frame of length 0.
    #[error("empty frame")]
    EmptyFrame,
    /// A frame longer than [`MAX_FRAME_LEN`].
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// The length field.
        size: usize,
        /// [`MAX_FRAME_LEN`].
        limit: usize,
    },
}

/// Appends one frame carrying `datagram` to `out`.
pub fn encode_frame(datagram: &[u8], out: &mut BytesMut) -> Result<(), EncodeError> {
    let len = check_len(datagram.len())?;
    out.reserve(LENGTH_LEN + datagram.len());
    out.put_u16(len);
    out.put_slice(datagram);
    Ok(())
}

fn check_len(size: usize) -> Result<u16, EncodeError> {
    match size {
        0 => Err(EncodeError::Empty),
        1..=MAX_FRAME_LEN => Ok(size as u16),
        _ => Err(EncodeError::TooLarge {
            size,
            limit: MAX_FRAME_LEN,
        }),
    }
}

/// An incremental decoder of one direction of a stream. Bytes go in with
/// [`Decoder::push`] as they arrive, in any split; datagrams come out of
/// [`Decoder::next_datagram`]. It never holds more than [`MAX_BUFFERED`] bytes.
#[derive(Debug)]
pub struct Decoder {
    buffer: BytesMut,
    /// Still waiting for the client's preamble (a server's decoder).
    preamble: bool,
    failed: Option<DecodeError>,
}

impl Decoder {
    /// The decoder of a server: the stream starts with [`PREAMBLE`].
    pub fn server() -> Self {
        Self::new(true)
    }

    /// The decoder of a client: frames from the first byte.
    pub fn client() -> Self {
        Self::new(false)
    }

    fn new(preamble: bool) -> Self {
        Self {
            buffer: BytesMut::with_capacity(MAX_BUFFERED),
            preamble,
            failed: None,
        }
    }

    /// How many more bytes [`Decoder::push`] takes now.
    pub fn space(&self) -> usize {
        MAX_BUFFERED - self.buffer.len()
    }

    /// Takes as many of `bytes` as fit (see [`Decoder::space`]) and returns how many.
    /// Take the datagrams out with [`Decoder::next_datagram`] before pushing the rest.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let taken = bytes.len().min(self.space());
        self.buffer.extend_from_slice(&bytes[..taken]);
        taken
    }

    /// The next complete datagram; `Ok(None)` when more bytes are needed. An error is
    /// final: the connection must be closed.
    pub fn next_datagram(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        match self.decode() {
            Err(error) => {
                self.failed = Some(error);
                self.buffer.clear();
                Err(error)
            }
            ok => ok,
        }
    }

    fn decode(&mut self) -> Result<Option<Bytes>, DecodeError> {
        if self.preamble {
            let Some(found) = self.buffer.get(..PREAMBLE.len()) else {
                // A prefix of something else is refused as early as it shows.
                if !PREAMBLE.starts_with(&self.buffer) {
                    let mut found = [0u8; 4];
                    found[..self.buffer.len()].copy_from_slice(&self.buffer);
                    return Err(DecodeError::BadPreamble { found });
                }
                return Ok(None);
            };
            let found: [u8; 4] = [found[0], found[1], found[2], found[3]];
            if found != PREAMBLE {
                return Err(DecodeError::BadPreamble { found });
            }
            self.buffer.advance(PREAMBLE.len());
            self.preamble = false;
        }
        let Some(header) = self.buffer.get(..LENGTH_LEN) else {
            return Ok(None);
        };
        let size = usize::from(u16::from_be_bytes([header[0], header[1]]));
        match size {
            0 => return Err(DecodeError::EmptyFrame),
            1..=MAX_FRAME_LEN => {}
            _ => {
                return Err(DecodeError::FrameTooLarge {
                    size,
                    limit: MAX_FRAME_LEN,
                });
            }
        }
        if self.buffer.len() < LENGTH_LEN + size {
            return Ok(None);
        }
        self.buffer.advance(LENGTH_LEN);
        Ok(Some(self.buffer.split_to(size).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Bytes>, DecodeError> {
        let mut out = Vec::new();
        let mut rest = bytes;
        loop {
            let taken = decoder.push(rest);
            rest = &rest[taken..];
            while let Some(datagram) = decoder.next_datagram()? {
                out.push(datagram);
            }
            if rest.is_empty() {
                return Ok(out);
            }
            assert!(taken > 0 || decoder.space() > 0, "no progress");
        }
    }

    #[test]
    fn stream_peer_addresses_are_recognizable_and_keep_the_source() {
        let a = stream_peer_addr("203.0.113.7:40000".parse().unwrap(), 1);
        let b = stream_peer_addr("203.0.113.7:40000".parse().unwrap(), 2);
        let c = stream_peer_addr("[::ffff:203.0.113.7]:40000".parse().unwrap(), 2);
        assert_ne!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.port(), 40000);
        assert!(is_stream_peer(a));
        let v6 = stream_peer_addr("[2001:db8::1]:0".parse().unwrap(), 9);
        assert!(is_stream_peer(v6));
        assert_ne!(v6.port(), 0);
        assert!(!is_stream_peer("203.0.113.7:0".parse().unwrap()));
        assert!(!is_stream_peer("[100::5]:0".parse().unwrap()));
        // Same /64 for one source: per-/64 limits charge the real client.
        let (SocketAddr::V6(a), SocketAddr::V6(b)) = (a, b) else {
            panic!()
        };
        assert_eq!(u128::from(*a.ip()) >> 64, u128::from(*b.ip()) >> 64);
    }

    #[test]
    fn frames_round_trip() {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&PREAMBLE);
        let big = vec![7u8; MAX_FRAME_LEN];
        for datagram in [&b"a"[..], &big, b"\x30\x00"] {
            encode_frame(datagram, &mut wire).unwrap();
        }
        let got = decode_all(&mut Decoder::server(), &wire).unwrap();
        assert_eq!(got, [&b"a"[..], &big[..], b"\x30\x00"]);
    }

    #[test]
    fn empty_and_oversize_datagrams_are_not_framed() {
        let mut wire = BytesMut::new();
        assert_eq!(encode_frame(b"", &mut wire), Err(EncodeError::Empty));
        assert_eq!(
            encode_frame(&[0; MAX_FRAME_LEN + 1], &mut wire),
            Err(EncodeError::TooLarge {
                size: MAX_FRAME_LEN + 1,
                limit: MAX_FRAME_LEN
            })
        );
        assert!(wire.is_empty());
    }

    #[test]
    fn a_zero_length_frame_ends_the_stream() {
        let mut decoder = Decoder::client();
        assert_eq!(decoder.push(&[0, 1, 9, 0, 0, 0, 1, 5]), 8);
        assert_eq!(decoder.next_datagram(), Ok(Some(Bytes::from_static(&[9]))));
        assert_eq!(decoder.next_datagram(), Err(DecodeError::EmptyFrame));
        // Final: the frame after it is never yielded.
        assert_eq!(decoder.next_datagram(), Err(DecodeError::EmptyFrame));
    }

    #[test]
    fn an_oversize_length_is_refused_before_its_bytes_arrive() {
        let mut decoder = Decoder::client();
        decoder.push(&[0x08, 0x01]);
        assert_eq!(
            decoder.next_datagram(),
            Err(DecodeError::FrameTooLarge {
                size: 2049,
                limit: MAX_FRAME_LEN
            })
        );
    }

    #[test]
    fn a_wrong_preamble_is_refused_at_its_first_wrong_byte() {
        let mut decoder = Decoder::server();
        decoder.push(b"GE");
        assert_eq!(
            decoder.next_datagram(),
            Err(DecodeError::BadPreamble {
                found: [b'G', b'E', 0, 0]
            })
        );
        let mut decoder = Decoder::server();
        decoder.push(b"SWS\x02");
        assert!(matches!(
            decoder.next_datagram(),
            Err(DecodeError::BadPreamble { .. })
        ));
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut decoder = Decoder::server();
        let flood = vec![b'S'; 10 * MAX_BUFFERED];
        assert_eq!(decoder.push(&flood[..3]), 3);
        // "SSS" is not a prefix of the preamble.
        assert!(decoder.next_datagram().is_err());
        let mut decoder = Decoder::client();
        // A frame that is announced in full but arrives slowly holds at most one frame.
        let mut wire = BytesMut::new();
        encode_frame(&[1; MAX_FRAME_LEN], &mut wire).unwrap();
        encode_frame(&[2; MAX_FRAME_LEN], &mut wire).unwrap();
        let taken = decoder.push(&wire);
        assert_eq!(taken, MAX_BUFFERED);
        assert_eq!(decoder.space(), 0);
        assert_eq!(decoder.push(&wire[taken..]), 0);
        assert!(decoder.next_datagram().unwrap().is_some());
        assert!(decoder.space() >= LENGTH_LEN + MAX_FRAME_LEN);
    }
}
