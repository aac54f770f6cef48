//! Configuration: every limit and timer of a [`crate::MediaConnection`], with defaults.

use std::time::Duration;

use crate::wire::{CONTROL_DATA_HEADER_LEN, FRAGMENT_HEADER_LEN, MAX_CONTROL_MESSAGE_LEN};

/// Session transport overhead assumed for the default packet size: 1 type byte, 4 bytes
/// receiver index, 8 bytes counter and a 16-byte Poly1305 tag (`spec/session.md`).
pub const SESSION_OVERHEAD: usize = 29;
/// IPv6 (40) plus UDP (8) header bytes.
pub const IPV6_UDP_HEADERS: usize = 48;
/// The IPv6 minimum link MTU every path must carry without fragmentation.
pub const IPV6_MIN_MTU: usize = 1280;
/// Default largest media packet (session plaintext): `1280 - 48 - 29 = 1203`, rounded down
/// to 1200 to leave three bytes of slack should the session header grow.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 1200;
/// Smallest allowed `max_packet_size`: a largest control message must fit one packet.
pub const MIN_PACKET_SIZE: usize = 1024;
/// Largest allowed `max_packet_size` (jumbo-frame paths).
pub const MAX_PACKET_SIZE: usize = 9000;

const _: () =
    assert!(IPV6_MIN_MTU - IPV6_UDP_HEADERS - SESSION_OVERHEAD >= DEFAULT_MAX_PACKET_SIZE);
const _: () = assert!(MIN_PACKET_SIZE >= CONTROL_DATA_HEADER_LEN + MAX_CONTROL_MESSAGE_LEN);
const _: () = assert!(MIN_PACKET_SIZE > FRAGMENT_HEADER_LEN);

/// Longest value any configured timer may take; keeps every `Instant` sum far from
/// overflow.
pub const MAX_TIMER: Duration = Duration::from_secs(60);

/// Limits and timers of one media connection. `Config::default()` is what `spec/media.md`
/// lists as defaults; both ends of a connection may use different values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Largest media packet this side sends ([`MIN_PACKET_SIZE`]..=[`MAX_PACKET_SIZE`]).
    /// Default [`DEFAULT_MAX_PACKET_SIZE`].
    pub max_packet_size: usize,
    /// End-to-end latency budget: a frame must be delivered within this time after the
    /// sender handed it to `send_frame`, or it is dropped. Default 200 ms.
    pub latency_budget: Duration,
    /// RTT assumed before the first measurement. Default 100 ms.
    pub initial_rtt: Duration,
    /// Largest frame the sender sends and the receiver reassembles; larger frames are
    /// refused by `send_frame` and rejected on receipt. Default
    /// [`DEFAULT_MAX_FRAME_SIZE`] (4 MiB).
    ///
    /// `max_buffered_bytes` and `max_history_bytes` should be above it (a frame that
    /// alone exceeds the receive buffer is rejected), and `max_transmit_queue` above its
    /// fragment count.
    pub max_frame_size: usize,
    /// Most frames (all streams together) the receiver holds incomplete or waiting for
    /// in-order delivery. Default 64.
    pub max_frames_in_flight: usize,
    /// Most bytes the receiver holds in reassembly buffers. Default 8 MiB (a largest
    /// frame and the frames behind it).
    pub max_buffered_bytes: usize,
    /// Most payload bytes the sender keeps for retransmission. Default 8 MiB (a largest
    /// frame and the frames after it stay retransmittable).
    pub max_history_bytes: usize,
    /// Most frames the sender keeps for retransmission. Default 256.
    pub max_history_frames: usize,
    /// Longest the sender keeps a frame for retransmission; `None` means the latency
    /// budget (a frame older than that can no longer arrive in time). Default `None`.
    pub max_history_age: Option<Duration>,
    /// Most packets waiting in the transmit queue; `send_frame` fails beyond. Default 8192
    /// (a largest frame needs 3 579 fragments at the default packet size, 4 211 at the
    /// smallest).
    pub max_transmit_queue: usize,
    /// How long the receiver waits after a frame's last fragment arrived before it NACKs
    /// what is missing (absorbs reordering). Default 5 ms.
    pub reorder_delay: Duration,
    /// Least time between two NACK packets (rate limit; entries due meanwhile are batched).
    /// Default 5 ms.
    pub nack_interval: Duration,
    /// Least time between two keyframe requests for the same stream. Default 100 ms.
    pub keyframe_request_interval: Duration,
    /// After a lost frame on a stream whose codec has inter-frame dependencies, discard
    /// non-key frames until a keyframe arrives (they would decode to garbage). Default true.
    pub hold_until_keyframe: bool,
    /// Time between reports. Default 200 ms.
    pub report_interval: Duration,
    /// Most control messages queued behind the window; `send_control` fails beyond.
    /// Default 256.
    pub max_control_queue: usize,
    /// Target bitrate before the first report. Default 2 Mbit/s.
    pub initial_bitrate_bps: u64,
    /// Lower bound of the target bitrate. Default 100 kbit/s.
    pub min_bitrate_bps: u64,
    /// Upper bound of the target bitrate. Default 20 Mbit/s.
    pub max_bitrate_bps: u64,
    /// Fragments leave at most at this percentage of the target bitrate (floored at
    /// [`MIN_PACING_TARGET_BPS`](crate::MIN_PACING_TARGET_BPS), capped at
    /// `max_bitrate_bps`), plus a small burst; see `spec/media.md`, "Pacing". `0` turns
    /// pacing off (every fragment leaves at once; for drivers that pace elsewhere).
    /// At most [`MAX_PACING_FACTOR_PERCENT`](crate::MAX_PACING_FACTOR_PERCENT).
    /// Default [`DEFAULT_PACING_FACTOR_PERCENT`](crate::DEFAULT_PACING_FACTOR_PERCENT)
    /// (2.5 ×).
    pub pacing_factor_percent: u32,
    /// Packets of `max_packet_size` a new connection's pacer sends at once before the
    /// pacing rate applies, once (`spec/media.md` 4.5, "Initial window"): a joining
    /// viewer's first keyframe starts without waiting for the rate. `0` paces from the
    /// first packet. At most
    /// [`MAX_PACING_INITIAL_WINDOW_PACKETS`](crate::MAX_PACING_INITIAL_WINDOW_PACKETS).
    /// Default [`PACER_INITIAL_WINDOW_PACKETS`](crate::PACER_INITIAL_WINDOW_PACKETS) (10).
    pub pacing_initial_window_packets: u32,
    /// Estimate the path from one-way delay as well as loss (`spec/media.md` 4.6): the
    /// receiver sends feedback packets with arrival times and the sender's target is the
    /// lower of both estimates. Default true; off leaves the loss-based estimate alone in
    /// charge (for comparison, and for peers that pace elsewhere).
    pub delay_based_estimation: bool,
}

/// Default [`Config::max_frame_size`]: 4 MiB. A 4K stream at 20 Mbit/s makes keyframes of
/// 1.0–1.3 MB, and high-quality or 8 MP encoders up to about 3 MB; 4 MiB leaves room for
/// them at 3 579 fragments of the default packet size, far below
/// [`MAX_FRAGMENT_COUNT`](crate::wire::MAX_FRAGMENT_COUNT).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 4 * 1024 * 1024;

impl Default for Config {
    fn default() -> Config {
        Config {
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            latency_budget: Duration::from_millis(200),
            initial_rtt: Duration::from_millis(100),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_frames_in_flight: 64,
            max_buffered_bytes: 2 * DEFAULT_MAX_FRAME_SIZE,
            max_history_bytes: 2 * DEFAULT_MAX_FRAME_SIZE,
            max_history_frames: 256,
            max_history_age: None,
            max_transmit_queue: 8192,
            reorder_delay: Duration::from_millis(5),
            nack_interval: Duration::from_millis(5),
            keyframe_request_interval: Duration::from_millis(100),
            hold_until_keyframe: true,
            report_interval: Duration::from_millis(200),
            max_control_queue: 256,
            initial_bitrate_bps: 2_000_000,
            min_bitrate_bps: 100_000,
            max_bitrate_bps: 20_000_000,
            pacing_factor_percent: crate::pacer::DEFAULT_PACING_FACTOR_PERCENT,
            pacing_initial_window_packets: crate::pacer::PACER_INITIAL_WINDOW_PACKETS,
            delay_based_estimation: true,
        }
    }
}

/// A configuration value out of its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_packet_size` outside [`MIN_PACKET_SIZE`]..=[`MAX_PACKET_SIZE`].
    #[error("max_packet_size {0} outside {MIN_PACKET_SIZE}..={MAX_PACKET_SIZE}")]
    PacketSize(usize),
    /// A limit that must be at least one is zero.
    #[error("{0} must be at least 1")]
    ZeroLimit(&'static str),
    /// `max_frame_size` above the protocol limit.
    #[error("max_frame_size {0} above the protocol limit")]
    FrameSize(usize),
    /// `min_bitrate_bps <= initial_bitrate_bps <= max_bitrate_bps` does not hold.
    #[error("bitrates must satisfy min <= initial <= max")]
    Bitrates,
    /// A timer that must be positive is zero.
    #[error("{0} must be positive")]
    ZeroDuration(&'static str),
    /// `pacing_factor_percent` above
    /// [`MAX_PACING_FACTOR_PERCENT`](crate::MAX_PACING_FACTOR_PERCENT).
    #[error("pacing_factor_percent {0} above the limit")]
    PacingFactor(u32),
    /// `pacing_initial_window_packets` above
    /// [`MAX_PACING_INITIAL_WINDOW_PACKETS`](crate::MAX_PACING_INITIAL_WINDOW_PACKETS).
    #[error("pacing_initial_window_packets {0} above the limit")]
    PacingInitialWindow(u32),
    /// A timer is longer than [`MAX_TIMER`].
    #[error("{0} exceeds the 60 s timer limit")]
    DurationTooLong(&'static str),
}

impl Config {
    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_PACKET_SIZE..=MAX_PACKET_SIZE).contains(&self.max_packet_size) {
            return Err(ConfigError::PacketSize(self.max_packet_size));
        }
        if self.max_frame_size > crate::wire::MAX_FRAME_SIZE_LIMIT {
            return Err(ConfigError::FrameSize(self.max_frame_size));
        }
        for (name, value) in [
            ("max_frame_size", self.max_frame_size),
            ("max_frames_in_flight", self.max_frames_in_flight),
            ("max_buffered_bytes", self.max_buffered_bytes),
            ("max_history_frames", self.max_history_frames),
            ("max_transmit_queue", self.max_transmit_queue),
            ("max_control_queue", self.max_control_queue),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        for (name, value, must_be_positive) in [
            ("latency_budget", self.latency_budget, true),
            ("initial_rtt", self.initial_rtt, true),
            ("report_interval", self.report_interval, true),
            (
                "keyframe_request_interval",
                self.keyframe_request_interval,
                true,
            ),
            // A positive NACK interval guarantees every NACK timer moves forward.
            ("nack_interval", self.nack_interval, true),
            ("reorder_delay", self.reorder_delay, false),
            (
                "max_history_age",
                self.max_history_age.unwrap_or_default(),
                false,
            ),
        ] {
            if must_be_positive && value.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
            if value > MAX_TIMER {
                return Err(ConfigError::DurationTooLong(name));
            }
        }
        if !(self.min_bitrate_bps <= self.initial_bitrate_bps
            && self.initial_bitrate_bps <= self.max_bitrate_bps)
        {
            return Err(ConfigError::Bitrates);
        }
        if self.pacing_factor_percent > crate::pacer::MAX_PACING_FACTOR_PERCENT {
            return Err(ConfigError::PacingFactor(self.pacing_factor_percent));
        }
        if self.pacing_initial_window_packets > crate::pacer::MAX_PACING_INITIAL_WINDOW_PACKETS {
            return Err(ConfigError::PacingInitialWindow(
                self.pacing_initial_window_packets,
            ));
        }
        Ok(())
    }
}
