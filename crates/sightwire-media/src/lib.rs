//! Media framing for Sightwire: live camera video, audio, metadata and a reliable control
//! channel over an unreliable, encrypted datagram session.
//!
//! A [`MediaConnection`] is the media state of one peer session, in both directions. It
//! splits frames into packets that fit the path ([`PacketizedFrame`], zero-copy `Bytes`
//! slices shared by every viewer), reassembles the peer's frames with bounded memory,
//! recovers losses with NACK-driven retransmission inside a latency budget, asks for
//! keyframes after a loss, carries small reliable control messages, and exchanges reports
//! from which it derives RTT, loss, jitter and a target bitrate for the encoder.
//!
//! What it is not for: it does no I/O, reads no clock and encrypts nothing. Its packets are
//! the plaintext of `sightwire-session` transport packets; a driver (the `sightwire`
//! endpoint, or a test) moves them. It does not parse codecs: a frame is opaque bytes plus
//! the flags the encoder reported. The wire format is specified in `spec/media.md`.
//!
//! The driver loop, sans-IO style: after every input, drain transmits and events, then
//! sleep until [`MediaConnection::poll_timeout`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use sightwire_media::{Codec, Config, Event, Frame, MediaConnection, StreamId};
//!
//! let start = Instant::now();
//! let mut camera = MediaConnection::new(Config::default(), start)?;
//! let mut viewer = MediaConnection::new(Config::default(), start)?;
//!
//! // Packetize once; the same fragments can go to many viewers.
//! let keyframe = Frame::new(StreamId::VIDEO, Codec::H264, 0, Bytes::from(vec![7u8; 50_000]))
//!     .with_keyframe(true)
//!     .with_codec_config(true);
//! let frame = camera.packetize(keyframe)?;
//! camera.send_frame(start, &frame)?;
//!
//! // The "network": hand every packet straight to the other side. Fragments leave as
//! // the pacer allows (2.5 × the 2 Mbit/s target): sleep until `poll_timeout` between.
//! let mut now = start;
//! let mut buf = [0u8; 1500];
//! let mut delivered = None;
//! while delivered.is_none() && now < start + Duration::from_secs(1) {
//!     camera.handle_timeout(now);
//!     while let Some(transmit) = camera.poll_transmit(now) {
//!         let len = transmit.write_to(&mut buf).expect("packet fits");
//!         // (a real driver encrypts `buf[..len]` with the session here)
//!         viewer.handle_input(now, &buf[..len])?;
//!     }
//!     viewer.handle_timeout(now);
//!     while let Some(event) = viewer.poll_event() {
//!         if let Event::Frame(received) = event {
//!             delivered = Some(received);
//!         }
//!     }
//!     now = camera.poll_timeout().map_or(now, |at| at.max(now + Duration::from_micros(1)));
//! }
//! let received = delivered.expect("frame delivered");
//! assert_eq!(received.frame.data, frame.frame().data);
//! assert!(viewer.poll_timeout().is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

mod admission;
mod bwe;
mod config;
mod connection;
mod control;
pub mod control_messages;
mod event;
mod frame;
mod pacer;
mod receiver;
mod sender;
mod stats;
mod stream;
pub mod wire;

pub use admission::DropReason;
pub use bwe::{
    ACKED_HEADROOM_BPS, ACKED_WINDOW, DECREASE_FACTOR, DELAY_BASE_WINDOW, FEEDBACK_INTERVAL,
    INCREASE_PER_SECOND, MAX_TARGET_OVER_ACKED, PACING_OVER_CAPACITY, PROBE_MIN_PACKETS,
    PROBE_USE_FRACTION, SEND_HISTORY_PACKETS, STANDING_QUEUE_LIMIT, TRENDLINE_WINDOW,
};
pub use config::{
    Config, ConfigError, DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_PACKET_SIZE, IPV6_MIN_MTU,
    IPV6_UDP_HEADERS, MAX_PACKET_SIZE, MAX_TIMER, MIN_PACKET_SIZE, SESSION_OVERHEAD,
};
pub use connection::{
    BITRATE_EVENT_MIN_INTERVAL, BITRATE_EVENT_THRESHOLD, ControlError, KEYFRAME_REASK_INTERVAL,
    LOSS_FLOOR_OF_DELIVERED, MAX_PENDING_SMALL_PACKETS, MIN_PACKETS_FOR_LOSS, MediaConnection,
    MemoryUse, PACING_OVER_DELIVERED_UNDER_LOSS, Transmit,
};
pub use control::{CONTROL_MAX_RTO, CONTROL_WINDOW};
pub use event::{Event, FrameLossReason, MAX_PENDING_EVENTS, ReceivedFrame};
pub use frame::{DISCARDABLE_SCAN_LIMIT, Frame, PacketizeError, PacketizedFrame};
pub use pacer::{
    DEFAULT_PACING_FACTOR_PERCENT, MAX_PACING_FACTOR_PERCENT, MAX_PACING_INITIAL_WINDOW_PACKETS,
    MIN_PACING_TARGET_BPS, PACER_BURST, PACER_INITIAL_WINDOW_PACKETS, PACER_MIN_BURST_PACKETS,
    PACER_MIN_QUEUE_TIME_DIVISOR, PACER_RECOVERY_ROUNDS,
};
pub use receiver::KEYFRAME_DEADLINE_FACTOR;
pub use sender::{RETRANSMIT_CREDIT_PER_BYTE, SendError};
pub use stats::{LOSS_DECREASE_INTERVAL, Stats};
pub use stream::{Codec, MAX_STREAMS, StreamId, StreamSet};
pub use wire::DecodeError;

/// Fuzzing entry points; not part of the stable API.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::{Duration, Instant};

    use crate::{Config, MediaConnection};

    /// Feeds `data` to a receiving connection as a sequence of packets (each prefixed by a
    /// one-byte length and a one-byte time step in milliseconds), running timers and
    /// draining output in between, and checks that the memory limits hold throughout.
    /// Panics on a violation, which is what a fuzzer wants.
    pub fn receive_packets(data: &[u8]) {
        let start = Instant::now();
        let config = Config {
            max_frames_in_flight: 8,
            max_buffered_bytes: 64 * 1024,
            max_frame_size: 32 * 1024,
            ..Config::default()
        };
        let Ok(mut connection) = MediaConnection::new(config.clone(), start) else {
            return;
        };
        let mut now = start;
        let mut rest = data;
        while let [len, step, tail @ ..] = rest {
            let len = usize::from(*len).min(tail.len());
            let (packet, tail) = tail.split_at(len);
            rest = tail;
            now += Duration::from_millis(u64::from(*step));
            let _ = connection.handle_input(now, packet);
            if connection.poll_timeout().is_some_and(|at| at <= now) {
                connection.handle_timeout(now);
            }
            while connection.poll_transmit(now).is_some() {}
            while connection.poll_event().is_some() {}
            let memory = connection.memory();
            assert!(memory.receive_buffered_bytes <= config.max_buffered_bytes);
            assert!(memory.receive_frames_in_flight <= config.max_frames_in_flight);
        }
        // Every timer must make progress: no wake-up that is already due after handling.
        for _ in 0..64 {
            let Some(at) = connection.poll_timeout() else {
                break;
            };
            now = now.max(at);
            connection.handle_timeout(now);
            while connection.poll_transmit(now).is_some() {}
            while connection.poll_event().is_some() {}
            assert!(connection.poll_timeout().is_none_or(|next| next > now));
        }
    }
}
