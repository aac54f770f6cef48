//! The frame-drop policy (`spec/media.md` 4.7): which frames `send_frame` turns away
//! when the path cannot carry them within the latency budget.
//!
//! The connection estimates how long a new frame would wait before its last byte
//! arrives: the queuing delay the peer's feedback shows on the path, plus the sender's
//! own pacer queue, plus the frame's own transmission time at the path rate. A frame that
//! would wait longer than the budget is late before it starts, so it is not sent: a frame
//! nothing refers to goes alone; a reference frame takes every later frame of its stream
//! with it until a keyframe, since they would decode to garbage, and the application is
//! asked for that keyframe at once. Keyframes, audio and metadata are always sent.

use std::time::Duration;

use crate::frame::Frame;
#[cfg(test)]
use crate::stream::StreamId;
use crate::stream::{Codec, MAX_STREAMS};

/// Why `send_frame` did not send a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The path cannot carry it within the latency budget (`spec/media.md` 4.7).
    Congested,
    /// An earlier frame of its stream was dropped and this one may refer to it; the
    /// stream resumes at the next keyframe.
    AwaitingKeyframe,
}

/// What the policy decided about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Send,
    /// Drop it; `breaks_chain` when this drop breaks the stream's reference chain (the
    /// stream now needs a keyframe).
    Drop {
        reason: DropReason,
        breaks_chain: bool,
    },
}

#[derive(Debug, Default)]
pub(crate) struct FrameAdmission {
    /// Bit per stream: a reference frame was dropped, wait for a keyframe.
    awaiting_keyframe: u16,
}

/// Whether the codec's frames may refer to earlier frames (dropping one breaks the chain).
fn has_references(codec: Codec) -> bool {
    matches!(codec, Codec::H264 | Codec::H265)
}

/// Whether the policy may drop frames of this codec at all.
fn droppable(codec: Codec) -> bool {
    matches!(codec, Codec::H264 | Codec::H265 | Codec::Mjpeg)
}

impl FrameAdmission {
    /// Decides about `frame`, whose last byte would arrive after `wait`, when a frame may
    /// wait at most `budget`.
    pub(crate) fn admit(&mut self, frame: &Frame, wait: Duration, budget: Duration) -> Admission {
        let bit = 1u16 << (frame.stream.index() % MAX_STREAMS);
        if frame.keyframe || !droppable(frame.codec) {
            if frame.keyframe {
                self.awaiting_keyframe &= !bit;
            }
            return Admission::Send;
        }
        if self.awaiting_keyframe & bit != 0 {
            return Admission::Drop {
                reason: DropReason::AwaitingKeyframe,
                breaks_chain: false,
            };
        }
        if wait <= budget {
            return Admission::Send;
        }
        let breaks_chain = has_references(frame.codec) && !frame.is_discardable();
        if breaks_chain {
            self.awaiting_keyframe |= bit;
        }
        Admission::Drop {
            reason: DropReason::Congested,
            breaks_chain,
        }
    }

    /// `frame` was not sent for another reason (the transmit queue was full): if later
    /// frames may refer to it (a keyframe or a reference frame), its stream now waits for
    /// a keyframe too. Returns whether it did break the chain.
    pub(crate) fn not_sent(&mut self, frame: &Frame) -> bool {
        let breaks_chain =
            has_references(frame.codec) && (frame.keyframe || !frame.is_discardable());
        if breaks_chain {
            self.awaiting_keyframe |= 1u16 << (frame.stream.index() % MAX_STREAMS);
        }
        breaks_chain
    }

    /// Streams waiting for a keyframe after a dropped reference.
    #[cfg(test)]
    pub(crate) fn awaiting_keyframe(&self, stream: StreamId) -> bool {
        self.awaiting_keyframe & (1u16 << (stream.index() % MAX_STREAMS)) != 0
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn frame(codec: Codec, keyframe: bool, discardable: bool) -> Frame {
        let slice = if discardable { 0x01 } else { 0x41 };
        Frame {
            stream: if matches!(codec, Codec::Opus) {
                StreamId::AUDIO
            } else {
                StreamId::VIDEO
            },
            codec,
            keyframe,
            codec_config: false,
            capture_time_us: 0,
            data: Bytes::from(vec![0, 0, 1, slice, 0x9A]),
        }
    }

    const BUDGET: Duration = Duration::from_millis(150);
    const LATE: Duration = Duration::from_millis(151);
    const ON_TIME: Duration = Duration::from_millis(150);

    #[test]
    fn a_dropped_reference_drops_its_stream_until_the_next_keyframe() {
        let mut policy = FrameAdmission::default();
        let p = frame(Codec::H264, false, false);
        assert_eq!(policy.admit(&p, ON_TIME, BUDGET), Admission::Send);
        assert_eq!(
            policy.admit(&p, LATE, BUDGET),
            Admission::Drop {
                reason: DropReason::Congested,
                breaks_chain: true
            }
        );
        // Even once the path is clear again, P-frames wait for the keyframe…
        assert_eq!(
            policy.admit(&p, Duration::ZERO, BUDGET),
            Admission::Drop {
                reason: DropReason::AwaitingKeyframe,
                breaks_chain: false,
            }
        );
        // …audio is never held…
        let audio = frame(Codec::Opus, false, false);
        assert_eq!(policy.admit(&audio, LATE, BUDGET), Admission::Send);
        // …and the keyframe goes, however late, and resumes the stream.
        let key = frame(Codec::H264, true, false);
        assert_eq!(policy.admit(&key, LATE, BUDGET), Admission::Send);
        assert!(!policy.awaiting_keyframe(StreamId::VIDEO));
        assert_eq!(policy.admit(&p, ON_TIME, BUDGET), Admission::Send);
    }

    #[test]
    fn a_non_reference_frame_is_dropped_alone() {
        let mut policy = FrameAdmission::default();
        let b = frame(Codec::H264, false, true);
        assert_eq!(
            policy.admit(&b, LATE, BUDGET),
            Admission::Drop {
                reason: DropReason::Congested,
                breaks_chain: false
            }
        );
        assert!(!policy.awaiting_keyframe(StreamId::VIDEO));
        let p = frame(Codec::H264, false, false);
        assert_eq!(policy.admit(&p, ON_TIME, BUDGET), Admission::Send);
        // MJPEG images stand alone too.
        let jpeg = frame(Codec::Mjpeg, false, false);
        assert!(matches!(
            policy.admit(&jpeg, LATE, BUDGET),
            Admission::Drop {
                breaks_chain: false,
                ..
            }
        ));
        assert!(!policy.awaiting_keyframe(StreamId::VIDEO));
    }

    proptest! {
        /// Whatever the waits, the frames sent on a stream form a decodable sequence:
        /// after a dropped reference frame nothing but a keyframe is sent; every non-key
        /// frame sent was on time; keyframes are never dropped.
        #[test]
        fn sent_frames_are_always_decodable(
            steps in proptest::collection::vec((0u8..10, 0u64..400), 1..300)
        ) {
            let mut policy = FrameAdmission::default();
            let mut broken = false;
            for (kind, wait_ms) in steps {
                let keyframe = kind == 0;
                let discardable = kind == 1;
                let f = frame(Codec::H264, keyframe, discardable);
                let wait = Duration::from_millis(wait_ms);
                match policy.admit(&f, wait, BUDGET) {
                    Admission::Send => {
                        if keyframe {
                            broken = false;
                        } else {
                            prop_assert!(!broken, "P-frame sent after its reference was dropped");
                            prop_assert!(wait <= BUDGET);
                        }
                    }
                    Admission::Drop { breaks_chain, .. } => {
                        prop_assert!(!keyframe, "keyframes are never dropped");
                        prop_assert!(!(breaks_chain && (broken || discardable)));
                        if !discardable {
                            broken = true;
                        }
                    }
                }
            }
        }
    }
}
