//! Media packet layouts (`spec/media.md`): one codec per packet type, symmetric, over
//! byte slices. Decoding borrows from the input and never allocates.

use bytes::{BufMut, BytesMut};

use crate::stream::{Codec, MAX_STREAMS, StreamId};

/// The first-byte range media reserves for its packet types (`spec/media.md` section 3).
pub const MEDIA_TYPE_RANGE: core::ops::RangeInclusive<u8> = 0x40..=0x4F;

/// Whether `packet` starts with a byte of the media type range: lets a driver route
/// session plaintext to [`crate::MediaConnection::handle_input`] without decoding it.
pub fn is_media_packet(packet: &[u8]) -> bool {
    packet
        .first()
        .is_some_and(|first| MEDIA_TYPE_RANGE.contains(first))
}

/// Packet type: one fragment of a frame.
pub const TYPE_FRAGMENT: u8 = 0x40;
/// Packet type: negative acknowledgement listing missing fragments.
pub const TYPE_NACK: u8 = 0x41;
/// Packet type: request for a keyframe on one stream (PLI-like).
pub const TYPE_KEYFRAME_REQUEST: u8 = 0x42;
/// Packet type: periodic report (RTT echo, loss, jitter, received bytes).
pub const TYPE_REPORT: u8 = 0x43;
/// Packet type: one reliable, ordered control message.
pub const TYPE_CONTROL_DATA: u8 = 0x44;
/// Packet type: acknowledgement of control messages.
pub const TYPE_CONTROL_ACK: u8 = 0x45;
/// Packet type: arrival times of received fragment packets (for delay-based bandwidth
/// estimation at the sender).
pub const TYPE_FEEDBACK: u8 = 0x46;

/// Length of the fragment header that precedes every fragment's payload.
pub const FRAGMENT_HEADER_LEN: usize = 28;
/// Length of a NACK packet before its entries.
pub const NACK_HEADER_LEN: usize = 4;
/// Length of one NACK entry.
pub const NACK_ENTRY_LEN: usize = 9;
/// Most entries one NACK packet may carry (fits the default packet size).
pub const MAX_NACK_ENTRIES: usize = 128;
/// `NackEntry::fragment_count` value meaning "every fragment from `first_fragment` on",
/// used when the receiver has not seen any fragment of the frame.
pub const NACK_ALL_FRAGMENTS: u16 = u16::MAX;
/// Length of a keyframe request packet.
pub const KEYFRAME_REQUEST_LEN: usize = 2;
/// Length of a report packet.
pub const REPORT_LEN: usize = 34;
/// Length of a control data packet before its message.
pub const CONTROL_DATA_HEADER_LEN: usize = 5;
/// Largest control message, in bytes. Fits every allowed packet size.
pub const MAX_CONTROL_MESSAGE_LEN: usize = 1000;
/// Length of a control ack packet.
pub const CONTROL_ACK_LEN: usize = 9;
/// Length of a feedback packet before its entries.
pub const FEEDBACK_HEADER_LEN: usize = 11;
/// Length of one feedback entry.
pub const FEEDBACK_ENTRY_LEN: usize = 4;
/// Most entries one feedback packet may carry (fits the smallest allowed packet size).
pub const MAX_FEEDBACK_ENTRIES: usize = 250;
/// Unit of a feedback entry's arrival offset, microseconds.
pub const FEEDBACK_TIME_UNIT_US: u64 = 100;
/// Largest `packet_seq` distance from a feedback's base a single entry can express.
pub const MAX_FEEDBACK_SEQ_SPAN: u32 = u16::MAX as u32;
/// Largest arrival offset from a feedback's reference time (6.5535 s).
pub const MAX_FEEDBACK_ARRIVAL_OFFSET_US: u64 = u16::MAX as u64 * FEEDBACK_TIME_UNIT_US;
/// Largest frame the protocol can describe (the `frame_size` field is a `u32`, and
/// implementations cap it further with `Config::max_frame_size`).
pub const MAX_FRAME_SIZE_LIMIT: usize = 16 * 1024 * 1024;
/// Most fragments one frame may have (`fragment_count` is a `u16`; `0xFFFF` is kept free).
pub const MAX_FRAGMENT_COUNT: usize = 0xFFFE;

/// Fragment flag: the frame is a keyframe.
pub const FLAG_KEYFRAME: u8 = 0x01;
/// Fragment flag: the frame carries codec configuration.
pub const FLAG_CODEC_CONFIG: u8 = 0x02;
/// Fragment flag: this packet is a retransmission (excluded from jitter).
pub const FLAG_RETRANSMISSION: u8 = 0x04;
/// Fragment flag: frames of this stream were handed to the sender after the previous
/// frame it sent on the stream and were not sent (dropped by policy, too large, queue
/// full; `spec/media.md` 4.7). If any of them was a frame others refer to, this frame
/// is a keyframe.
pub const FLAG_SKIPPED: u8 = 0x08;
const FRAGMENT_FLAGS_KNOWN: u8 =
    FLAG_KEYFRAME | FLAG_CODEC_CONFIG | FLAG_RETRANSMISSION | FLAG_SKIPPED;

/// Report flag: the echo fields are valid.
pub const REPORT_FLAG_ECHO: u8 = 0x01;

/// Why a media packet was rejected. Every variant is a malformed or unsupported packet;
/// the receiver drops it and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet has no bytes at all.
    #[error("empty media packet")]
    Empty,
    /// The first byte is not an assigned media packet type.
    #[error("unknown media packet type 0x{0:02x}")]
    UnknownType(u8),
    /// The packet ends before its fixed fields do.
    #[error("{packet} packet truncated: {len} bytes, need {needed}")]
    Truncated {
        /// Packet kind.
        packet: &'static str,
        /// Bytes present.
        len: usize,
        /// Bytes the layout needs.
        needed: usize,
    },
    /// The packet continues after its defined end.
    #[error("{packet} packet has {extra} trailing bytes")]
    TrailingBytes {
        /// Packet kind.
        packet: &'static str,
        /// Bytes after the end.
        extra: usize,
    },
    /// A stream id at or above [`MAX_STREAMS`].
    #[error("stream id {0} out of range")]
    InvalidStream(u8),
    /// A codec byte that is not assigned.
    #[error("unknown codec 0x{0:02x}")]
    UnknownCodec(u8),
    /// Flag bits that version 1 does not define are set.
    #[error("reserved flag bits set: 0x{0:02x}")]
    ReservedFlags(u8),
    /// Frame size, fragment count and index do not describe a valid even split, or the
    /// payload length does not match the fragment's slot.
    #[error(
        "bad fragment layout: frame {frame_size} bytes, fragment {index}/{count}, payload {payload_len}"
    )]
    BadFragmentLayout {
        /// `frame_size` field.
        frame_size: u32,
        /// `fragment_index` field.
        index: u16,
        /// `fragment_count` field.
        count: u16,
        /// Payload bytes present.
        payload_len: usize,
    },
    /// A NACK with zero entries or more than [`MAX_NACK_ENTRIES`].
    #[error("NACK entry count {0} out of range")]
    BadNackCount(u8),
    /// A feedback packet with zero entries or more than [`MAX_FEEDBACK_ENTRIES`].
    #[error("feedback with {0} entries")]
    BadFeedbackCount(u16),
    /// A control message longer than [`MAX_CONTROL_MESSAGE_LEN`].
    #[error("control message of {0} bytes exceeds the limit")]
    ControlMessageTooLong(usize),
}

/// The fixed header of a fragment packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct FragmentHeader {
    /// Stream the frame belongs to.
    pub stream: StreamId,
    /// Payload codec.
    pub codec: Codec,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Per-connection transmission counter (new for every packet, retransmissions too).
    pub packet_seq: u32,
    /// Per-stream frame counter, starting at 0.
    pub frame_seq: u32,
    /// Capture time in microseconds on the stream's media clock.
    pub capture_time_us: u64,
    /// Size of the whole frame.
    pub frame_size: u32,
    /// This fragment's index.
    pub fragment_index: u16,
    /// Number of fragments of the frame.
    pub fragment_count: u16,
}

impl FragmentHeader {
    /// Writes the header into its fixed-size form.
    pub fn encode(&self) -> [u8; FRAGMENT_HEADER_LEN] {
        let mut out = [0u8; FRAGMENT_HEADER_LEN];
        out[0] = TYPE_FRAGMENT;
        out[1] = self.stream.get();
        out[2] = self.codec.to_u8();
        out[3] = self.flags;
        out[4..8].copy_from_slice(&self.packet_seq.to_be_bytes());
        out[8..12].copy_from_slice(&self.frame_seq.to_be_bytes());
        out[12..20].copy_from_slice(&self.capture_time_us.to_be_bytes());
        out[20..24].copy_from_slice(&self.frame_size.to_be_bytes());
        out[24..26].copy_from_slice(&self.fragment_index.to_be_bytes());
        out[26..28].copy_from_slice(&self.fragment_count.to_be_bytes());
        out
    }
}

/// One NACK entry: a run of missing fragments of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct NackEntry {
    /// Stream of the frame.
    pub stream: StreamId,
    /// Frame sequence number.
    pub frame_seq: u32,
    /// First missing fragment.
    pub first_fragment: u16,
    /// Number of missing fragments from `first_fragment`, or [`NACK_ALL_FRAGMENTS`].
    pub fragment_count: u16,
}

/// A periodic report; see `spec/media.md` for how each field is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct Report {
    /// Sender's clock, milliseconds since its connection start (wraps).
    pub timestamp_ms: u32,
    /// `timestamp_ms` of the last report received from the peer, if any.
    pub echo: Option<ReportEcho>,
    /// Length of the measurement interval the counts below cover.
    pub interval_ms: u32,
    /// Fragment packets the peer sent in the interval, as seen from `packet_seq`.
    pub packets_expected: u32,
    /// Fragment packets actually received in the interval.
    pub packets_received: u32,
    /// Fragment bytes (header included) received in the interval.
    pub bytes_received: u32,
    /// Interarrival jitter estimate, microseconds (RFC 3550 style, over frames).
    pub jitter_us: u32,
}

/// The RTT echo part of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct ReportEcho {
    /// The peer's `timestamp_ms` being echoed.
    pub timestamp_ms: u32,
    /// Milliseconds between receiving that report and sending this one.
    pub delay_ms: u32,
}

/// One feedback entry: a fragment packet the receiver got, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_structs,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub struct FeedbackEntry {
    /// The packet's `packet_seq`.
    pub packet_seq: u32,
    /// Arrival time on the receiver's clock, microseconds since its connection start
    /// (wraps), at [`FEEDBACK_TIME_UNIT_US`] resolution.
    pub arrival_us: u32,
}

/// A decoded media packet, borrowing its payload from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a wire-format type: its fields are fixed by spec/; a change is a new protocol version"
)]
pub enum Packet<'a> {
    /// A fragment of a frame.
    Fragment {
        /// The fixed header.
        header: FragmentHeader,
        /// The fragment's bytes.
        payload: &'a [u8],
    },
    /// A NACK.
    Nack {
        /// Sequence number of this NACK packet; a repeated copy carries the same value.
        nack_seq: u16,
        /// Raw entries (each [`NACK_ENTRY_LEN`] bytes); iterate with [`nack_entries`].
        entries: &'a [u8],
    },
    /// A keyframe request for a stream.
    KeyframeRequest {
        /// The stream that needs a keyframe.
        stream: StreamId,
    },
    /// A report.
    Report(Report),
    /// A reliable control message.
    ControlData {
        /// Message sequence number.
        seq: u32,
        /// Message bytes.
        message: &'a [u8],
    },
    /// Arrival times of fragment packets.
    Feedback {
        /// `packet_seq` that entry sequence offsets are relative to.
        base_seq: u32,
        /// Receiver clock (microseconds, wraps) that arrival offsets are relative to.
        reference_us: u32,
        /// Raw entries (each [`FEEDBACK_ENTRY_LEN`] bytes); iterate with
        /// [`feedback_entries`].
        entries: &'a [u8],
    },
    /// A control acknowledgement.
    ControlAck {
        /// Every message with `seq < cumulative` was received.
        cumulative: u32,
        /// Bit `i` set: message `cumulative + 1 + i` was received.
        selective: u32,
    },
}

fn need(packet: &'static str, input: &[u8], needed: usize) -> Result<(), DecodeError> {
    if input.len() < needed {
        return Err(DecodeError::Truncated {
            packet,
            len: input.len(),
            needed,
        });
    }
    Ok(())
}

fn exact(packet: &'static str, input: &[u8], len: usize) -> Result<(), DecodeError> {
    need(packet, input, len)?;
    if input.len() > len {
        return Err(DecodeError::TrailingBytes {
            packet,
            extra: input.len() - len,
        });
    }
    Ok(())
}

fn u16_at(input: &[u8], at: usize) -> u16 {
    let mut raw = [0u8; 2];
    if let Some(bytes) = input.get(at..at + 2) {
        raw.copy_from_slice(bytes);
    }
    u16::from_be_bytes(raw)
}

fn u32_at(input: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    if let Some(bytes) = input.get(at..at + 4) {
        raw.copy_from_slice(bytes);
    }
    u32::from_be_bytes(raw)
}

fn u64_at(input: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    if let Some(bytes) = input.get(at..at + 8) {
        raw.copy_from_slice(bytes);
    }
    u64::from_be_bytes(raw)
}

fn byte_at(input: &[u8], at: usize) -> u8 {
    input.get(at).copied().unwrap_or(0)
}

fn stream_at(input: &[u8], at: usize) -> Result<StreamId, DecodeError> {
    let raw = byte_at(input, at);
    StreamId::new(raw).ok_or(DecodeError::InvalidStream(raw))
}

/// Decodes one media packet (the plaintext of one session transport packet).
pub fn decode(input: &[u8]) -> Result<Packet<'_>, DecodeError> {
    let Some(&packet_type) = input.first() else {
        return Err(DecodeError::Empty);
    };
    match packet_type {
        TYPE_FRAGMENT => decode_fragment(input),
        TYPE_NACK => {
            need("NACK", input, NACK_HEADER_LEN)?;
            let count = byte_at(input, 3);
            if count == 0 || usize::from(count) > MAX_NACK_ENTRIES {
                return Err(DecodeError::BadNackCount(count));
            }
            exact(
                "NACK",
                input,
                NACK_HEADER_LEN + usize::from(count) * NACK_ENTRY_LEN,
            )?;
            let entries = input.get(NACK_HEADER_LEN..).unwrap_or_default();
            // Validate every entry now so iteration cannot fail later.
            for raw in entries.chunks_exact(NACK_ENTRY_LEN) {
                stream_at(raw, 0)?;
            }
            Ok(Packet::Nack {
                nack_seq: u16_at(input, 1),
                entries,
            })
        }
        TYPE_KEYFRAME_REQUEST => {
            exact("keyframe request", input, KEYFRAME_REQUEST_LEN)?;
            Ok(Packet::KeyframeRequest {
                stream: stream_at(input, 1)?,
            })
        }
        TYPE_REPORT => {
            exact("report", input, REPORT_LEN)?;
            let flags = byte_at(input, 1);
            if flags & !REPORT_FLAG_ECHO != 0 {
                return Err(DecodeError::ReservedFlags(flags));
            }
            let echo = (flags & REPORT_FLAG_ECHO != 0).then(|| ReportEcho {
                timestamp_ms: u32_at(input, 6),
                delay_ms: u32_at(input, 10),
            });
            Ok(Packet::Report(Report {
                timestamp_ms: u32_at(input, 2),
                echo,
                interval_ms: u32_at(input, 14),
                packets_expected: u32_at(input, 18),
                packets_received: u32_at(input, 22),
                bytes_received: u32_at(input, 26),
                jitter_us: u32_at(input, 30),
            }))
        }
        TYPE_CONTROL_DATA => {
            need("control data", input, CONTROL_DATA_HEADER_LEN)?;
            let message = input.get(CONTROL_DATA_HEADER_LEN..).unwrap_or_default();
            if message.len() > MAX_CONTROL_MESSAGE_LEN {
                return Err(DecodeError::ControlMessageTooLong(message.len()));
            }
            Ok(Packet::ControlData {
                seq: u32_at(input, 1),
                message,
            })
        }
        TYPE_CONTROL_ACK => {
            exact("control ack", input, CONTROL_ACK_LEN)?;
            Ok(Packet::ControlAck {
                cumulative: u32_at(input, 1),
                selective: u32_at(input, 5),
            })
        }
        TYPE_FEEDBACK => {
            need("feedback", input, FEEDBACK_HEADER_LEN)?;
            let count = u16_at(input, 9);
            if count == 0 || usize::from(count) > MAX_FEEDBACK_ENTRIES {
                return Err(DecodeError::BadFeedbackCount(count));
            }
            exact(
                "feedback",
                input,
                FEEDBACK_HEADER_LEN + usize::from(count) * FEEDBACK_ENTRY_LEN,
            )?;
            Ok(Packet::Feedback {
                base_seq: u32_at(input, 1),
                reference_us: u32_at(input, 5),
                entries: input.get(FEEDBACK_HEADER_LEN..).unwrap_or_default(),
            })
        }
        other => Err(DecodeError::UnknownType(other)),
    }
}

fn decode_fragment(input: &[u8]) -> Result<Packet<'_>, DecodeError> {
    need("fragment", input, FRAGMENT_HEADER_LEN)?;
    let stream = stream_at(input, 1)?;
    let codec_raw = byte_at(input, 2);
    let codec = Codec::from_u8(codec_raw).ok_or(DecodeError::UnknownCodec(codec_raw))?;
    let flags = byte_at(input, 3);
    if flags & !FRAGMENT_FLAGS_KNOWN != 0 {
        return Err(DecodeError::ReservedFlags(flags));
    }
    let header = FragmentHeader {
        stream,
        codec,
        flags,
        packet_seq: u32_at(input, 4),
        frame_seq: u32_at(input, 8),
        capture_time_us: u64_at(input, 12),
        frame_size: u32_at(input, 20),
        fragment_index: u16_at(input, 24),
        fragment_count: u16_at(input, 26),
    };
    let payload = input.get(FRAGMENT_HEADER_LEN..).unwrap_or_default();
    let bad_layout = || DecodeError::BadFragmentLayout {
        frame_size: header.frame_size,
        index: header.fragment_index,
        count: header.fragment_count,
        payload_len: payload.len(),
    };
    let frame_size = usize::try_from(header.frame_size).map_err(|_| bad_layout())?;
    if frame_size > MAX_FRAME_SIZE_LIMIT
        || usize::from(header.fragment_count) > MAX_FRAGMENT_COUNT
        || !layout_is_valid(frame_size, header.fragment_count)
    {
        return Err(bad_layout());
    }
    let range = fragment_range(frame_size, header.fragment_count, header.fragment_index)
        .ok_or_else(bad_layout)?;
    if range.len() != payload.len() {
        return Err(bad_layout());
    }
    Ok(Packet::Fragment { header, payload })
}

/// Iterates the entries of a decoded NACK's `entries` bytes.
pub fn nack_entries(entries: &[u8]) -> impl Iterator<Item = NackEntry> + '_ {
    entries.chunks_exact(NACK_ENTRY_LEN).filter_map(|raw| {
        Some(NackEntry {
            stream: StreamId::new(byte_at(raw, 0))?,
            frame_seq: u32_at(raw, 1),
            first_fragment: u16_at(raw, 5),
            fragment_count: u16_at(raw, 7),
        })
    })
}

/// Iterates the entries of a decoded feedback packet, resolving the offsets against
/// `base_seq` and `reference_us`.
pub fn feedback_entries(
    base_seq: u32,
    reference_us: u32,
    entries: &[u8],
) -> impl Iterator<Item = FeedbackEntry> + '_ {
    entries
        .chunks_exact(FEEDBACK_ENTRY_LEN)
        .map(move |raw| FeedbackEntry {
            packet_seq: base_seq.wrapping_add(u32::from(u16_at(raw, 0))),
            arrival_us: reference_us
                .wrapping_add((u64::from(u16_at(raw, 2)) * FEEDBACK_TIME_UNIT_US) as u32),
        })
}

/// Appends a feedback packet to `out`. `entries` (1..=[`MAX_FEEDBACK_ENTRIES`]) must lie
/// within [`MAX_FEEDBACK_SEQ_SPAN`] at or after `base_seq` and within
/// [`MAX_FEEDBACK_ARRIVAL_OFFSET_US`] at or after `reference_us`; entries that do not are
/// left out. Returns how many entries were written.
pub fn encode_feedback(
    base_seq: u32,
    reference_us: u32,
    entries: &[FeedbackEntry],
    out: &mut BytesMut,
) -> usize {
    let fits = |entry: &&FeedbackEntry| {
        entry.packet_seq.wrapping_sub(base_seq) <= MAX_FEEDBACK_SEQ_SPAN
            && u64::from(entry.arrival_us.wrapping_sub(reference_us))
                <= MAX_FEEDBACK_ARRIVAL_OFFSET_US
    };
    let count = entries
        .iter()
        .take(MAX_FEEDBACK_ENTRIES)
        .filter(fits)
        .count();
    out.reserve(FEEDBACK_HEADER_LEN + count * FEEDBACK_ENTRY_LEN);
    out.put_u8(TYPE_FEEDBACK);
    out.put_u32(base_seq);
    out.put_u32(reference_us);
    out.put_u16(count as u16);
    for entry in entries.iter().take(MAX_FEEDBACK_ENTRIES).filter(fits) {
        out.put_u16(entry.packet_seq.wrapping_sub(base_seq) as u16);
        out.put_u16(
            (u64::from(entry.arrival_us.wrapping_sub(reference_us)) / FEEDBACK_TIME_UNIT_US) as u16,
        );
    }
    count
}

/// Appends a NACK packet with `entries` (1..=[`MAX_NACK_ENTRIES`]) to `out`.
pub fn encode_nack(nack_seq: u16, entries: &[NackEntry], out: &mut BytesMut) {
    debug_assert!(!entries.is_empty() && entries.len() <= MAX_NACK_ENTRIES);
    out.reserve(NACK_HEADER_LEN + entries.len() * NACK_ENTRY_LEN);
    out.put_u8(TYPE_NACK);
    out.put_u16(nack_seq);
    out.put_u8(u8::try_from(entries.len()).unwrap_or(u8::MAX));
    for entry in entries.iter().take(MAX_NACK_ENTRIES) {
        out.put_u8(entry.stream.get());
        out.put_u32(entry.frame_seq);
        out.put_u16(entry.first_fragment);
        out.put_u16(entry.fragment_count);
    }
}

/// Appends a keyframe request to `out`.
pub fn encode_keyframe_request(stream: StreamId, out: &mut BytesMut) {
    out.put_u8(TYPE_KEYFRAME_REQUEST);
    out.put_u8(stream.get());
}

/// Appends a report to `out`.
pub fn encode_report(report: &Report, out: &mut BytesMut) {
    out.reserve(REPORT_LEN);
    out.put_u8(TYPE_REPORT);
    out.put_u8(if report.echo.is_some() {
        REPORT_FLAG_ECHO
    } else {
        0
    });
    out.put_u32(report.timestamp_ms);
    let echo = report.echo.unwrap_or(ReportEcho {
        timestamp_ms: 0,
        delay_ms: 0,
    });
    out.put_u32(echo.timestamp_ms);
    out.put_u32(echo.delay_ms);
    out.put_u32(report.interval_ms);
    out.put_u32(report.packets_expected);
    out.put_u32(report.packets_received);
    out.put_u32(report.bytes_received);
    out.put_u32(report.jitter_us);
}

/// Appends a control data packet to `out`; `message` must be at most
/// [`MAX_CONTROL_MESSAGE_LEN`] bytes.
pub fn encode_control_data(seq: u32, message: &[u8], out: &mut BytesMut) {
    debug_assert!(message.len() <= MAX_CONTROL_MESSAGE_LEN);
    out.reserve(CONTROL_DATA_HEADER_LEN + message.len());
    out.put_u8(TYPE_CONTROL_DATA);
    out.put_u32(seq);
    out.put_slice(message);
}

/// Appends a control ack to `out`.
pub fn encode_control_ack(cumulative: u32, selective: u32, out: &mut BytesMut) {
    out.put_u8(TYPE_CONTROL_ACK);
    out.put_u32(cumulative);
    out.put_u32(selective);
}

/// Upper bound on the number of entries a NACK may carry in a packet of `max_packet_size`.
pub(crate) fn nack_entries_per_packet(max_packet_size: usize) -> usize {
    (max_packet_size.saturating_sub(NACK_HEADER_LEN) / NACK_ENTRY_LEN).clamp(1, MAX_NACK_ENTRIES)
}

/// The byte range of fragment `index` in a frame of `size` bytes split into `count` even
/// fragments, or `None` if the index is out of range or the layout is impossible.
pub(crate) fn fragment_range(
    size: usize,
    count: u16,
    index: u16,
) -> Option<core::ops::Range<usize>> {
    if index >= count || !layout_is_valid(size, count) {
        return None;
    }
    let chunk = size.div_ceil(usize::from(count));
    let start = chunk.checked_mul(usize::from(index))?;
    let end = start.checked_add(chunk)?.min(size);
    (start < end).then_some(start..end)
}

/// Whether `count` even fragments of a `size`-byte frame all carry at least one byte.
pub(crate) fn layout_is_valid(size: usize, count: u16) -> bool {
    if size == 0 || count == 0 || usize::from(count) > size {
        return false;
    }
    let chunk = size.div_ceil(usize::from(count));
    chunk
        .checked_mul(usize::from(count) - 1)
        .is_some_and(|before_last| before_last < size)
}

// Stream ids travel as one byte.
const _: () = assert!(MAX_STREAMS <= 256);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_layouts() {
        assert_eq!(fragment_range(10, 4, 0), Some(0..3));
        assert_eq!(fragment_range(10, 4, 3), Some(9..10));
        assert_eq!(fragment_range(10, 4, 4), None);
        // Six slots of two bytes would leave the last one empty.
        assert!(!layout_is_valid(10, 6));
        assert!(!layout_is_valid(2, 3));
        assert!(!layout_is_valid(0, 1));
        assert!(!layout_is_valid(5, 0));
        assert!(layout_is_valid(1, 1));
    }
}
