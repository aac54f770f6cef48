//! Frames the sender does not send (too large, queue full, dropped by policy) are a gap
//! the receiver sees (`spec/media.md` 4.7, FLAG_SKIPPED), never a silent hole in a
//! reference chain; and the default limits carry a 4K keyframe.

mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{drain_events, drain_packets, fragments};
use proptest::prelude::*;
use sightwire_media::wire::{self, FLAG_SKIPPED, Packet};
use sightwire_media::{
    Codec, Config, DEFAULT_MAX_FRAME_SIZE, DropReason, Event, Frame, MediaConnection,
    ReceivedFrame, SendError, StreamId,
};

/// What an H.264 frame is to the frames after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    /// A picture later pictures refer to (`nal_ref_idc` ≠ 0).
    Reference,
    /// A picture nothing refers to (`nal_ref_idc` = 0).
    NonReference,
}

/// An H.264-shaped frame of `size` bytes (at least 8) whose bytes 4..8 hold `index`, so a
/// delivered frame names the frame it was.
fn h264(kind: Kind, index: u32, size: usize) -> Frame {
    let nal = match kind {
        Kind::Key => 0x65,
        Kind::Reference => 0x41,
        Kind::NonReference => 0x01,
    };
    let mut data = BytesMut::with_capacity(size);
    data.put_slice(&[0, 0, 1, nal]);
    data.put_u32(index);
    data.resize(size.max(8), 0x5A);
    Frame::new(
        StreamId::VIDEO,
        Codec::H264,
        u64::from(index) * 33_333,
        data.freeze(),
    )
    .with_keyframe(kind == Kind::Key)
}

fn index_of(frame: &Frame) -> u32 {
    u32::from_be_bytes([frame.data[4], frame.data[5], frame.data[6], frame.data[7]])
}

/// No pacing and a budget no queue here reaches: only the limits under test refuse frames.
fn config(max_frame_size: usize) -> Config {
    {
        let mut value = common::unpaced();
        value.max_frame_size = max_frame_size;
        value.latency_budget = Duration::from_secs(10);
        value
    }
}

/// Offers `frame` to `sender`, hands every fragment to `receiver`; returns what
/// `send_frame` said and the fragments' flags.
fn offer(
    sender: &mut MediaConnection,
    receiver: &mut MediaConnection,
    now: Instant,
    frame: Frame,
) -> (Result<u32, SendError>, Vec<u8>) {
    let packetized = sender.packetize(frame).unwrap();
    let result = sender.send_frame(now, &packetized);
    let mut flags = Vec::new();
    for packet in fragments(&drain_packets(sender)) {
        if let Ok(Packet::Fragment { header, .. }) = wire::decode(&packet) {
            flags.push(header.flags);
        }
        receiver.handle_input(now, &packet).unwrap();
    }
    (result, flags)
}

fn delivered(events: &[Event]) -> Vec<ReceivedFrame> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Frame(frame) => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_oversized_keyframe_is_a_gap_the_receiver_sees() {
    let start = Instant::now();
    let mut sender = MediaConnection::new(config(10_000), start).unwrap();
    let mut receiver = MediaConnection::new(config(10_000), start).unwrap();
    assert!(
        offer(&mut sender, &mut receiver, start, h264(Kind::Key, 0, 5_000))
            .0
            .is_ok()
    );
    assert!(
        offer(
            &mut sender,
            &mut receiver,
            start,
            h264(Kind::Reference, 1, 900)
        )
        .0
        .is_ok()
    );
    // The next keyframe is over the limit: refused, and typed…
    let (refused, flags) = offer(
        &mut sender,
        &mut receiver,
        start,
        h264(Kind::Key, 2, 10_001),
    );
    assert_eq!(
        refused,
        Err(SendError::FrameTooLarge {
            size: 10_001,
            limit: 10_000
        })
    );
    assert!(flags.is_empty());
    // …the P-frames that refer to it are not sent either…
    assert_eq!(
        offer(
            &mut sender,
            &mut receiver,
            start,
            h264(Kind::Reference, 3, 900)
        )
        .0,
        Err(SendError::FrameDropped {
            reason: DropReason::AwaitingKeyframe
        })
    );
    // …and the next keyframe says that frames were skipped before it.
    let (sent, flags) = offer(&mut sender, &mut receiver, start, h264(Kind::Key, 4, 5_000));
    assert_eq!(sent, Ok(2), "skipped frames take no sequence number");
    assert!(!flags.is_empty() && flags.iter().all(|f| f & FLAG_SKIPPED != 0));
    let (_, flags) = offer(
        &mut sender,
        &mut receiver,
        start,
        h264(Kind::Reference, 5, 900),
    );
    assert!(flags.iter().all(|f| f & FLAG_SKIPPED == 0), "said once");

    let frames = delivered(&drain_events(&mut receiver));
    let got: Vec<_> = frames
        .iter()
        .map(|f| (index_of(&f.frame), f.after_loss))
        .collect();
    assert_eq!(got, [(0, false), (1, false), (4, true), (5, false)]);
    assert_eq!(receiver.stats().frames_after_peer_skip, 1);
}

#[test]
fn a_skipped_frame_nothing_refers_to_leaves_the_chain_whole() {
    let start = Instant::now();
    let mut sender = MediaConnection::new(config(10_000), start).unwrap();
    let mut receiver = MediaConnection::new(config(10_000), start).unwrap();
    offer(&mut sender, &mut receiver, start, h264(Kind::Key, 0, 2_000))
        .0
        .unwrap();
    // A frame that never reached `send_frame` (the application could not packetize it).
    sender.frame_not_sent(start, &h264(Kind::NonReference, 1, 900));
    let (sent, flags) = offer(
        &mut sender,
        &mut receiver,
        start,
        h264(Kind::Reference, 2, 900),
    );
    assert_eq!(
        sent,
        Ok(1),
        "the stream goes on: nothing referred to the skipped frame"
    );
    assert!(flags.iter().all(|f| f & FLAG_SKIPPED != 0));
    let frames = delivered(&drain_events(&mut receiver));
    let got: Vec<_> = frames
        .iter()
        .map(|f| (index_of(&f.frame), f.after_loss))
        .collect();
    assert_eq!(
        got,
        [(0, false), (2, true)],
        "delivered, marked as after a gap"
    );
    // A reference frame that was not sent breaks the stream until a keyframe.
    sender.frame_not_sent(start, &h264(Kind::Reference, 3, 900));
    assert_eq!(
        offer(
            &mut sender,
            &mut receiver,
            start,
            h264(Kind::Reference, 4, 900)
        )
        .0,
        Err(SendError::FrameDropped {
            reason: DropReason::AwaitingKeyframe
        })
    );
}

#[test]
fn the_default_limits_carry_4k_keyframes_up_to_4_mib() {
    let start = Instant::now();
    let mut sender = MediaConnection::new(common::unpaced(), start).unwrap();
    let mut receiver = MediaConnection::new(common::unpaced(), start).unwrap();
    // 1.3 MB (a 4K keyframe at 20 Mbit/s), then exactly the default limit.
    for (index, size) in [(0, 1_300_000), (1, DEFAULT_MAX_FRAME_SIZE)] {
        let frame = {
            let mut value = h264(Kind::Key, 0, 8);
            value.data = common::frame_bytes(index, size);
            value
        };
        let (sent, _) = offer(&mut sender, &mut receiver, start, frame.clone());
        assert_eq!(sent, Ok(index as u32));
        let got = delivered(&drain_events(&mut receiver));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].frame.data, frame.data, "byte for byte");
    }
    let over = {
        let mut value = h264(Kind::Key, 0, 8);
        value.data = Bytes::from(vec![0; DEFAULT_MAX_FRAME_SIZE + 1]);
        value
    };
    assert!(matches!(
        offer(&mut sender, &mut receiver, start, over).0,
        Err(SendError::FrameTooLarge { .. })
    ));
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => Just(Kind::Key),
        4 => Just(Kind::Reference),
        2 => Just(Kind::NonReference),
    ]
}

proptest! {
    /// Whatever the sender refuses (frames over the size limit, a full transmit queue,
    /// frames the application could not packetize), the receiver never delivers a frame
    /// whose references were not all delivered, and a delivered frame after any frame
    /// that was not sent says so (`after_loss`).
    #[test]
    fn refused_frames_never_leave_an_undecodable_frame(
        offers in proptest::collection::vec((kind(), 8usize..3_000, 0u8..10), 1..120),
    ) {
        let start = Instant::now();
        let limited = { let mut value = config(2_000); value.max_transmit_queue = 4; value };
        let mut sender = MediaConnection::new(limited, start).unwrap();
        let mut receiver = MediaConnection::new(config(2_000), start).unwrap();
        let mut offered = Vec::new();
        for (index, (kind, size, action)) in offers.into_iter().enumerate() {
            let frame = h264(kind, index as u32, size);
            offered.push(kind);
            match action {
                // The application could not hand it in.
                0 => sender.frame_not_sent(start, &frame),
                // The driver falls behind: the queue holds what is sent now.
                1 => {
                    if let Ok(packetized) = sender.packetize(frame) {
                        let _ = sender.send_frame(start, &packetized);
                    }
                }
                _ => {
                    let _ = offer(&mut sender, &mut receiver, start, frame);
                }
            }
        }
        for packet in fragments(&drain_packets(&mut sender)) {
            receiver.handle_input(start, &packet).unwrap();
        }
        let frames = delivered(&drain_events(&mut receiver));
        let indices: Vec<usize> = frames.iter().map(|f| index_of(&f.frame) as usize).collect();
        let mut previous: Option<usize> = None;
        for (frame, &index) in frames.iter().zip(&indices) {
            prop_assert!(previous.is_none_or(|p| p < index), "in order");
            if offered[index] != Kind::Key {
                // Every reference frame since the last keyframe was delivered.
                let key = (0..index).rev().find(|&i| offered[i] == Kind::Key);
                prop_assert!(key.is_some(), "a dependent frame before any keyframe");
                let key = key.unwrap_or_default();
                for (i, kind) in offered.iter().enumerate().take(index).skip(key) {
                    if *kind != Kind::NonReference {
                        prop_assert!(indices.contains(&i), "frame {index} misses reference {i}");
                    }
                }
            }
            let gap = previous.map_or(0, |p| p + 1) < index;
            if previous.is_some() && gap {
                prop_assert!(frame.after_loss, "frame {index} after a gap not marked");
            }
            previous = Some(index);
        }
    }
}
