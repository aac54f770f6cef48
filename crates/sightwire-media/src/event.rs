//! What a connection hands the application ([`Event`]) and the bounded queue that holds it.
//! A leaf module: the receiver fills the queue, the connection drains it.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::frame::Frame;
use crate::stats::Stats;
use crate::stream::StreamId;

/// Most events waiting for [`MediaConnection::poll_event`](crate::MediaConnection::poll_event); further events are dropped
/// and counted in [`Stats::events_dropped`].
pub const MAX_PENDING_EVENTS: usize = 1024;
/// A frame delivered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceivedFrame {
    /// The frame, with its payload reassembled in one `Bytes`.
    pub frame: Frame,
    /// The frame's sequence number on its stream.
    pub frame_seq: u32,
    /// A frame of this stream was lost since the previous delivered frame (a decoder may
    /// want to conceal; with `hold_until_keyframe` a dependent frame is never flagged).
    pub after_loss: bool,
}

/// Why a frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameLossReason {
    /// Its deadline passed before all fragments arrived.
    Late,
    /// A receive memory limit forced it out.
    Evicted,
    /// It was complete but depends on a lost frame; discarded until a keyframe arrives.
    AwaitingKeyframe,
}

/// Something the application must act on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A complete frame, in order within its stream.
    Frame(ReceivedFrame),
    /// A frame will not be delivered.
    FrameLost {
        /// Its stream.
        stream: StreamId,
        /// Its sequence number.
        frame_seq: u32,
        /// Why.
        reason: FrameLossReason,
    },
    /// The peer asks for a keyframe on one of our streams: the encoder should make the
    /// next frame a keyframe.
    KeyframeRequested {
        /// The stream.
        stream: StreamId,
    },
    /// A control message from the peer, in order.
    Control(Bytes),
    /// The target bitrate the encoder should follow changed by at least
    /// [`BITRATE_EVENT_THRESHOLD`](crate::BITRATE_EVENT_THRESHOLD).
    TargetBitrate {
        /// New target in bits per second.
        bps: u64,
    },
}

/// The bounded event queue.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    events: VecDeque<Event>,
}

impl EventQueue {
    pub(crate) fn push(&mut self, event: Event, stats: &mut Stats) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            stats.events_dropped += 1;
            return;
        }
        self.events.push_back(event);
    }

    pub(crate) fn pop(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }
}
