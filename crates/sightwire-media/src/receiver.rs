//! Receiving media: reassembly with bounded memory, in-order delivery per stream, latency
//! deadlines, NACK generation, keyframe requests and receive statistics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::config::Config;
use crate::event::{Event, EventQueue, FrameLossReason, ReceivedFrame};
use crate::frame::Frame;
use crate::stats::Stats;
use crate::stream::{Codec, MAX_STREAMS, StreamId};
use crate::wire::{
    FLAG_CODEC_CONFIG, FLAG_KEYFRAME, FLAG_RETRANSMISSION, FLAG_SKIPPED, FragmentHeader,
    NACK_ALL_FRAGMENTS, NackEntry,
};

/// Length of each window of the windowed-minimum transit filter that maps capture times to
/// local time. Two windows are kept, so the base follows a clock drift within 10 s.
pub(crate) const TRANSIT_WINDOW: Duration = Duration::from_secs(5);
/// A keyframe may take this many latency budgets to arrive before it is given up; the
/// frames queued behind it get a budget that shrinks back to one latency budget as their
/// capture time moves away from the keyframe's (`spec/media.md` 5.3).
pub const KEYFRAME_DEADLINE_FACTOR: u32 = 3;

/// The budget of a frame captured at `capture_us`, the newest keyframe of its stream
/// having been captured at `keyframe_us`: `max(B, F·B − Δ)` for `Δ = capture − keyframe
/// capture ≥ 0` (`B` the latency budget, `F` [`KEYFRAME_DEADLINE_FACTOR`]), else `B`. The
/// keyframe itself gets `F·B`; the frames behind it inherit its delay minus the time
/// that passed, so a queue that does not drain in real time still makes frames late.
/// Only streams whose codec has inter-frame dependencies track keyframes (`keyframe_us`
/// stays `None` for audio, MJPEG, metadata: every frame stands alone, none needs more).
/// Sender and receiver use the same rule.
pub(crate) fn frame_budget(
    keyframe_us: Option<u64>,
    capture_us: u64,
    latency_budget: Duration,
) -> Duration {
    let Some(since_keyframe) = keyframe_us.and_then(|key| capture_us.checked_sub(key)) else {
        return latency_budget;
    };
    (latency_budget * KEYFRAME_DEADLINE_FACTOR)
        .saturating_sub(Duration::from_micros(since_keyframe))
        .max(latency_budget)
}

/// What a frame looked like in its first fragment; later fragments must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameMeta {
    codec: Codec,
    flags: u8,
    capture_time_us: u64,
    frame_size: u32,
    fragment_count: u16,
}

#[derive(Debug)]
struct PendingFrame {
    /// `None` while no fragment of the frame has arrived (it is known only from a gap).
    meta: Option<FrameMeta>,
    buffer: BytesMut,
    received: Vec<u64>,
    received_count: u16,
    /// Bytes charged against `max_buffered_bytes`.
    charged: usize,
    deadline: Instant,
    /// When missing fragments become due for the first NACK; `None` once complete.
    nack_at: Option<Instant>,
    nack_rounds: u32,
    /// When the last NACK for this frame went out. The next one is due one RTT (as
    /// estimated when it is checked, so a fresh measurement applies at once) later.
    last_nacked: Option<Instant>,
    /// Where the current NACK round continues if the last NACK packet ran out of room.
    nack_resume: u16,
}

impl PendingFrame {
    fn placeholder(deadline: Instant, nack_at: Instant) -> PendingFrame {
        PendingFrame {
            meta: None,
            buffer: BytesMut::new(),
            received: Vec::new(),
            received_count: 0,
            charged: 0,
            deadline,
            nack_at: Some(nack_at),
            nack_rounds: 0,
            last_nacked: None,
            nack_resume: 0,
        }
    }

    /// When the missing fragments are next due for a NACK, given the retry interval.
    fn nack_due(&self, retry: Duration) -> Option<Instant> {
        let first = self.nack_at?;
        Some(self.last_nacked.map_or(first, |last| last + retry))
    }

    fn is_complete(&self) -> bool {
        self.meta
            .is_some_and(|meta| self.received_count == meta.fragment_count)
    }

    fn has_fragment(&self, index: u16) -> bool {
        let word = usize::from(index / 64);
        self.received
            .get(word)
            .is_some_and(|bits| bits & (1 << (index % 64)) != 0)
    }
}

#[derive(Debug, Default)]
struct StreamState {
    started: bool,
    /// Next frame to deliver (or give up) in order.
    next_seq: u32,
    /// Highest frame seen, if any since the last resync.
    highest_seen: Option<u32>,
    awaiting_keyframe: bool,
    loss_since_delivery: bool,
    interframe_codec: bool,
    last_keyframe_request: Option<Instant>,
    /// The last frame given up for exceeding a receive limit (counted once).
    last_rejected: Option<u32>,
    transit_min_current: Option<i128>,
    transit_min_previous: Option<i128>,
    transit_window_start: Option<Instant>,
    last_transit: Option<i128>,
    /// Capture time of the newest keyframe seen: it and the frames captured within
    /// its recovery window get the keyframe budget (5.3).
    keyframe_capture_us: Option<u64>,
}

impl StreamState {
    fn base_transit(&self) -> Option<i128> {
        match (self.transit_min_current, self.transit_min_previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Per-interval receive counters that go into the next report.
#[derive(Debug, Default)]
pub(crate) struct ReceiveCounters {
    highest_packet_seq: Option<i64>,
    highest_at_last_report: Option<i64>,
    pub(crate) packets_received: u32,
    pub(crate) bytes_received: u64,
    /// Jitter in microseconds, RFC 3550 estimator.
    pub(crate) jitter_us: i128,
}

impl ReceiveCounters {
    fn on_packet_seq(&mut self, seq: u32) {
        let extended = match self.highest_packet_seq {
            None => i64::from(seq),
            Some(highest) => {
                // Serial-number arithmetic: the nearest extension of `seq` to `highest`.
                let delta = seq.wrapping_sub(highest as u32) as i32;
                highest + i64::from(delta)
            }
        };
        if self.highest_at_last_report.is_none() {
            self.highest_at_last_report = Some(extended - 1);
        }
        if self
            .highest_packet_seq
            .is_none_or(|highest| extended > highest)
        {
            self.highest_packet_seq = Some(extended);
        }
    }

    /// Returns `(expected, received, bytes)` for the interval and starts a new one.
    pub(crate) fn take_interval(&mut self) -> (u32, u32, u64) {
        let expected = match (self.highest_packet_seq, self.highest_at_last_report) {
            (Some(highest), Some(last)) => {
                u32::try_from((highest - last).max(0)).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        self.highest_at_last_report = self.highest_packet_seq;
        let received = std::mem::take(&mut self.packets_received);
        let bytes = std::mem::take(&mut self.bytes_received);
        (expected, received, bytes)
    }
}

/// Everything the receiving half needs from the connection.
pub(crate) struct ReceiveContext<'a> {
    pub(crate) config: &'a Config,
    pub(crate) rtt: Duration,
    /// Whether `rtt` is a measurement rather than the configured initial value.
    pub(crate) rtt_measured: bool,
    pub(crate) epoch: Instant,
    pub(crate) stats: &'a mut Stats,
    pub(crate) events: &'a mut EventQueue,
    /// Bit `i` set: send a keyframe request for stream `i`.
    pub(crate) keyframe_requests: &'a mut u16,
}

/// The receiving half of a media connection.
#[derive(Debug)]
pub(crate) struct Receiver {
    streams: [StreamState; MAX_STREAMS],
    frames: BTreeMap<(u8, u32), PendingFrame>,
    buffered_bytes: usize,
    pub(crate) counters: ReceiveCounters,
    last_nack_sent: Option<Instant>,
}

/// Output of a NACK flush: the entries and whether to send the packet twice.
pub(crate) struct NackBatch {
    pub(crate) entries: Vec<NackEntry>,
    pub(crate) redundant: bool,
}

impl Receiver {
    pub(crate) fn new() -> Receiver {
        Receiver {
            streams: Default::default(),
            frames: BTreeMap::new(),
            buffered_bytes: 0,
            counters: ReceiveCounters::default(),
            last_nack_sent: None,
        }
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    pub(crate) fn frames_in_flight(&self) -> usize {
        self.frames.len()
    }

    /// One way delay estimate used to map capture times to local deadlines. Before the
    /// first RTT measurement it is zero: a lenient deadline, the sender's check is exact.
    fn one_way(cx: &ReceiveContext<'_>) -> Duration {
        if cx.rtt_measured {
            cx.rtt / 2
        } else {
            Duration::ZERO
        }
    }

    pub(crate) fn on_fragment(
        &mut self,
        now: Instant,
        header: &FragmentHeader,
        payload: &[u8],
        packet_len: usize,
        cx: &mut ReceiveContext<'_>,
    ) {
        cx.stats.fragments_received += 1;
        self.counters.on_packet_seq(header.packet_seq);
        self.counters.packets_received = self.counters.packets_received.saturating_add(1);
        self.counters.bytes_received = self
            .counters
            .bytes_received
            .saturating_add(packet_len as u64);

        let frame_size = header.frame_size as usize;
        let stream_index = header.stream.index();
        let retransmission = header.flags & FLAG_RETRANSMISSION != 0;
        let meta = FrameMeta {
            codec: header.codec,
            flags: header.flags & (FLAG_KEYFRAME | FLAG_CODEC_CONFIG | FLAG_SKIPPED),
            capture_time_us: header.capture_time_us,
            frame_size: header.frame_size,
            fragment_count: header.fragment_count,
        };

        let max_gap = u32::try_from(cx.config.max_frames_in_flight).unwrap_or(u32::MAX);
        let Some(stream) = self.streams.get_mut(stream_index) else {
            return;
        };
        if !stream.started {
            stream.started = true;
            stream.awaiting_keyframe = true;
            stream.next_seq = 0;
            if header.frame_seq > max_gap {
                stream.next_seq = header.frame_seq;
            }
        }
        stream.interframe_codec = header.codec.has_interframe_dependency();

        // Old or already finished frame.
        if header.frame_seq < stream.next_seq {
            cx.stats.fragments_duplicate += 1;
            return;
        }
        // A jump further than the frames-in-flight limit: the window slides so the new
        // frame fits, and the frames it leaves behind are lost. Frames already seen inside
        // the new window are kept (at a high frame rate one slow frame must not take the
        // whole window with it); if none were seen, everything before is lost.
        if header.frame_seq - stream.next_seq > max_gap {
            let window_start = header.frame_seq - max_gap;
            if stream
                .highest_seen
                .is_some_and(|highest| highest >= window_start)
            {
                self.slide_window(now, header.stream, window_start, cx);
            } else {
                self.resync_stream(now, header.stream, header.frame_seq, cx);
            }
        }

        // Deadline and jitter from the capture time (first transmissions only).
        let arrival_us = i128::try_from(now.saturating_duration_since(cx.epoch).as_micros())
            .unwrap_or(i128::MAX);
        let transit = arrival_us - i128::from(header.capture_time_us);
        let Some(stream) = self.streams.get_mut(stream_index) else {
            return;
        };
        let key = (header.stream.get(), header.frame_seq);
        let is_new_frame = self
            .frames
            .get(&key)
            .is_none_or(|frame| frame.meta.is_none());
        if !retransmission {
            update_transit(stream, now, transit);
            if is_new_frame {
                if let Some(last) = stream.last_transit {
                    let delta = (transit - last).abs();
                    let jitter = &mut self.counters.jitter_us;
                    *jitter += (delta - *jitter) / 16;
                }
                stream.last_transit = Some(transit);
            }
        }
        let lateness = stream
            .base_transit()
            .map_or(0, |base| (transit - base).max(0));
        let lateness = Duration::from_micros(u64::try_from(lateness).unwrap_or(u64::MAX));
        // A keyframe is the only way back to a picture, and on a slow path it takes longer
        // to transmit than the budget allows: late is better than never. The frames
        // queued behind it inherit its delay, so those captured within its recovery
        // window get the same budget (5.3).
        let interframe = header.codec.has_interframe_dependency();
        if interframe && header.flags & FLAG_KEYFRAME != 0 {
            stream.keyframe_capture_us = Some(
                stream
                    .keyframe_capture_us
                    .map_or(header.capture_time_us, |c| c.max(header.capture_time_us)),
            );
        }
        let budget = frame_budget(
            stream.keyframe_capture_us,
            header.capture_time_us,
            cx.config.latency_budget,
        );
        let allowance = budget
            .saturating_sub(Self::one_way(cx))
            .saturating_sub(lateness);
        let deadline = now + allowance;

        // Frames skipped over become placeholders so they are NACKed and delivered in order.
        let first_new = match stream.highest_seen {
            Some(highest) => highest.saturating_add(1),
            None => stream.next_seq,
        };
        let nack_at = now + cx.config.reorder_delay;
        for missing_seq in first_new..header.frame_seq {
            let still_wanted = self
                .streams
                .get(stream_index)
                .is_some_and(|stream| missing_seq >= stream.next_seq);
            if !still_wanted {
                continue;
            }
            if !self.make_room(now, 0, None, cx) {
                cx.stats.frames_evicted += 1;
                continue;
            }
            self.frames
                .entry((header.stream.get(), missing_seq))
                .or_insert_with(|| PendingFrame::placeholder(deadline, nack_at));
        }
        let Some(stream) = self.streams.get_mut(stream_index) else {
            return;
        };
        if header.frame_seq < stream.next_seq {
            // Evictions above delivered past this frame.
            cx.stats.fragments_over_limit += 1;
            return;
        }

        // Find or create the frame's entry, with its buffer.
        let needs_buffer = self
            .frames
            .get(&key)
            .is_none_or(|frame| frame.meta.is_none());
        if needs_buffer {
            let words = usize::from(header.fragment_count).div_ceil(64);
            let charge = frame_size + words * 8;
            if frame_size > cx.config.max_frame_size || charge > cx.config.max_buffered_bytes {
                // Can never be reassembled here: give it up now rather than NACK it.
                cx.stats.fragments_over_limit += 1;
                // Seen and given up: delivery in order passes it.
                self.note_seen(stream_index, header.frame_seq);
                self.reject_frame(now, key, cx);
                return;
            }
            if !self.make_room(now, charge, Some(key), cx) {
                cx.stats.fragments_over_limit += 1;
                return;
            }
            let entry = self
                .frames
                .entry(key)
                .or_insert_with(|| PendingFrame::placeholder(deadline, nack_at));
            entry.meta = Some(meta);
            entry.buffer = BytesMut::zeroed(frame_size);
            entry.received = vec![0; words];
            entry.charged = charge;
            entry.deadline = deadline;
            self.buffered_bytes += charge;
        }
        // Only now that the entry exists: an eviction above delivers in order up to the
        // highest frame seen, and would pass a frame that is not in the table yet as one
        // given up (losing it without a trace).
        self.note_seen(stream_index, header.frame_seq);
        let Some(frame) = self.frames.get_mut(&key) else {
            return;
        };
        if frame.meta != Some(meta) {
            // A fragment that disagrees with the frame's first fragment: drop it.
            cx.stats.packets_malformed += 1;
            return;
        }
        if frame.has_fragment(header.fragment_index) {
            cx.stats.fragments_duplicate += 1;
            return;
        }
        let Some(range) =
            crate::wire::fragment_range(frame_size, header.fragment_count, header.fragment_index)
        else {
            return;
        };
        let (Some(slot), Some(word)) = (
            frame.buffer.get_mut(range),
            frame
                .received
                .get_mut(usize::from(header.fragment_index / 64)),
        ) else {
            return;
        };
        slot.copy_from_slice(payload);
        *word |= 1 << (header.fragment_index % 64);
        frame.received_count += 1;
        if frame.is_complete() {
            frame.nack_at = None;
            self.deliver_in_order(now, header.stream, cx);
        } else if frame.nack_rounds == 0 {
            // Fragments are still streaming in: NACK only once the burst has ended.
            frame.nack_at = Some(nack_at);
        }
    }

    /// Frees space for a frame charging `charge` bytes (a new entry unless `keep` exists):
    /// evicts the frames closest to their deadline, never `keep`, until both limits hold.
    /// Returns false if nothing is left to evict.
    fn make_room(
        &mut self,
        now: Instant,
        charge: usize,
        keep: Option<(u8, u32)>,
        cx: &mut ReceiveContext<'_>,
    ) -> bool {
        let new_entry = keep.is_none_or(|key| !self.frames.contains_key(&key));
        loop {
            let frames_after = self.frames.len() + usize::from(new_entry);
            let bytes_after = self.buffered_bytes + charge;
            if frames_after <= cx.config.max_frames_in_flight
                && bytes_after <= cx.config.max_buffered_bytes
            {
                return true;
            }
            let victim = self
                .frames
                .iter()
                .filter(|(key, _)| Some(**key) != keep)
                .min_by_key(|(key, frame)| (frame.deadline, key.1))
                .map(|(key, _)| *key);
            let Some(victim) = victim else {
                return false;
            };
            self.give_up(now, victim, FrameLossReason::Evicted, cx);
        }
    }

    /// Removes an incomplete or undelivered frame, counting it as lost.
    fn give_up(
        &mut self,
        now: Instant,
        key: (u8, u32),
        reason: FrameLossReason,
        cx: &mut ReceiveContext<'_>,
    ) {
        let Some(frame) = self.frames.remove(&key) else {
            return;
        };
        self.buffered_bytes -= frame.charged;
        match reason {
            FrameLossReason::Late => cx.stats.frames_late += 1,
            FrameLossReason::Evicted => cx.stats.frames_evicted += 1,
            FrameLossReason::AwaitingKeyframe => cx.stats.frames_discarded_awaiting_keyframe += 1,
        }
        let Some(stream_id) = StreamId::new(key.0) else {
            return;
        };
        cx.events.push(
            Event::FrameLost {
                stream: stream_id,
                frame_seq: key.1,
                reason,
            },
            cx.stats,
        );
        self.mark_loss(now, stream_id, cx);
        self.deliver_in_order(now, stream_id, cx);
    }

    /// Gives up a frame that exceeds a receive limit (once per frame).
    fn reject_frame(&mut self, now: Instant, key: (u8, u32), cx: &mut ReceiveContext<'_>) {
        let Some(stream_id) = StreamId::new(key.0) else {
            return;
        };
        let Some(stream) = self.streams.get_mut(stream_id.index()) else {
            return;
        };
        if stream.last_rejected == Some(key.1) {
            return;
        }
        stream.last_rejected = Some(key.1);
        if self.frames.contains_key(&key) {
            self.give_up(now, key, FrameLossReason::Evicted, cx);
            return;
        }
        cx.stats.frames_evicted += 1;
        cx.events.push(
            Event::FrameLost {
                stream: stream_id,
                frame_seq: key.1,
                reason: FrameLossReason::Evicted,
            },
            cx.stats,
        );
        self.mark_loss(now, stream_id, cx);
        self.deliver_in_order(now, stream_id, cx);
    }

    fn mark_loss(&mut self, now: Instant, stream_id: StreamId, cx: &mut ReceiveContext<'_>) {
        let Some(stream) = self.streams.get_mut(stream_id.index()) else {
            return;
        };
        stream.loss_since_delivery = true;
        if stream.interframe_codec {
            if cx.config.hold_until_keyframe {
                stream.awaiting_keyframe = true;
            }
            request_keyframe(stream, stream_id, now, cx);
        }
    }

    /// Gives up the stream's frames before `window_start` (at most the frames in flight)
    /// and moves its next expected frame there.
    fn slide_window(
        &mut self,
        now: Instant,
        stream_id: StreamId,
        window_start: u32,
        cx: &mut ReceiveContext<'_>,
    ) {
        let Some(stream) = self.streams.get(stream_id.index()) else {
            return;
        };
        if window_start <= stream.next_seq {
            return;
        }
        self.give_up_late(stream_id, stream.next_seq..window_start, cx);
        if let Some(stream) = self.streams.get_mut(stream_id.index()) {
            stream.next_seq = window_start;
        }
        self.mark_loss(now, stream_id, cx);
        self.deliver_in_order(now, stream_id, cx);
    }

    /// Gives up the stream's held frames whose `frame_seq` is in `seqs` as late (at most
    /// the frames in flight), without delivering anything.
    fn give_up_late(
        &mut self,
        stream_id: StreamId,
        seqs: impl std::ops::RangeBounds<u32>,
        cx: &mut ReceiveContext<'_>,
    ) {
        use std::ops::Bound;
        let map = |bound: Bound<&u32>| match bound {
            Bound::Included(&seq) => Bound::Included((stream_id.get(), seq)),
            Bound::Excluded(&seq) => Bound::Excluded((stream_id.get(), seq)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let (start, end) = (map(seqs.start_bound()), map(seqs.end_bound()));
        let keys: Vec<(u8, u32)> = self
            .frames
            .range((start, end))
            .map(|(key, _)| *key)
            .filter(|key| key.0 == stream_id.get())
            .collect();
        for key in keys {
            if let Some(frame) = self.frames.remove(&key) {
                self.buffered_bytes -= frame.charged;
                cx.stats.frames_late += 1;
                cx.events.push(
                    Event::FrameLost {
                        stream: stream_id,
                        frame_seq: key.1,
                        reason: FrameLossReason::Late,
                    },
                    cx.stats,
                );
            }
        }
    }

    /// Raises the stream's `highest_seen` to `frame_seq`.
    fn note_seen(&mut self, stream_index: usize, frame_seq: u32) {
        if let Some(stream) = self.streams.get_mut(stream_index)
            && stream
                .highest_seen
                .is_none_or(|highest| frame_seq > highest)
        {
            stream.highest_seen = Some(frame_seq);
        }
    }

    /// Gives up every frame of a stream and restarts it at `frame_seq`.
    fn resync_stream(
        &mut self,
        now: Instant,
        stream_id: StreamId,
        frame_seq: u32,
        cx: &mut ReceiveContext<'_>,
    ) {
        self.give_up_late(stream_id, 0..=u32::MAX, cx);
        if let Some(stream) = self.streams.get_mut(stream_id.index()) {
            stream.next_seq = frame_seq;
            stream.highest_seen = None;
        }
        self.mark_loss(now, stream_id, cx);
    }

    /// Delivers (or discards) complete frames of a stream in order, skipping frames that
    /// were given up.
    fn deliver_in_order(&mut self, now: Instant, stream_id: StreamId, cx: &mut ReceiveContext<'_>) {
        let Some(stream) = self.streams.get_mut(stream_id.index()) else {
            return;
        };
        let Some(highest) = stream.highest_seen else {
            return;
        };
        // Bounded by the frames-in-flight gap limit enforced on input.
        while stream.next_seq <= highest {
            let key = (stream_id.get(), stream.next_seq);
            match self.frames.get(&key) {
                Some(frame) if !frame.is_complete() => break,
                Some(_) => {
                    let Some(frame) = self.frames.remove(&key) else {
                        break;
                    };
                    self.buffered_bytes -= frame.charged;
                    let Some(meta) = frame.meta else {
                        break;
                    };
                    let keyframe = meta.flags & FLAG_KEYFRAME != 0;
                    let dependent = meta.codec.has_interframe_dependency() && !keyframe;
                    if meta.flags & FLAG_SKIPPED != 0 {
                        // The sender did not send frames just before this one: a gap in
                        // the stream, though not in the sequence. After a skipped
                        // reference frame the sender's next frame is a keyframe (4.7), so
                        // a non-key frame here followed only skipped frames nothing
                        // refers to, and decodes.
                        cx.stats.frames_after_peer_skip += 1;
                        stream.loss_since_delivery = true;
                    }
                    if dependent && stream.awaiting_keyframe && cx.config.hold_until_keyframe {
                        cx.stats.frames_discarded_awaiting_keyframe += 1;
                        cx.events.push(
                            Event::FrameLost {
                                stream: stream_id,
                                frame_seq: key.1,
                                reason: FrameLossReason::AwaitingKeyframe,
                            },
                            cx.stats,
                        );
                        request_keyframe(stream, stream_id, now, cx);
                    } else {
                        if keyframe || !meta.codec.has_interframe_dependency() {
                            stream.awaiting_keyframe = false;
                        }
                        cx.stats.frames_delivered += 1;
                        let after_loss = std::mem::take(&mut stream.loss_since_delivery);
                        cx.events.push(
                            Event::Frame(ReceivedFrame {
                                frame: Frame {
                                    stream: stream_id,
                                    codec: meta.codec,
                                    keyframe,
                                    codec_config: meta.flags & FLAG_CODEC_CONFIG != 0,
                                    capture_time_us: meta.capture_time_us,
                                    data: frame.buffer.freeze(),
                                },
                                frame_seq: key.1,
                                after_loss,
                            }),
                            cx.stats,
                        );
                    }
                }
                // Given up earlier. Frames can be given up out of order (a keyframe has a
                // longer budget than the frames after it, 5.3), and the keyframe delivered
                // before this gap clears the wait its loss set: set it again here, where
                // the chain breaks.
                None => {
                    stream.loss_since_delivery = true;
                    if stream.interframe_codec && cx.config.hold_until_keyframe {
                        stream.awaiting_keyframe = true;
                    }
                }
            }
            stream.next_seq = stream.next_seq.wrapping_add(1);
            if stream.next_seq == 0 {
                // Delivered frame u32::MAX: the sequence wrapped. Forget the highest seen
                // too, or `next_seq <= highest` would hold again from 0 and the next call
                // would walk four billion sequence numbers (found by fuzzing).
                stream.highest_seen = None;
                break;
            }
        }
    }

    pub(crate) fn on_timeout(&mut self, now: Instant, cx: &mut ReceiveContext<'_>) {
        loop {
            let expired = self
                .frames
                .iter()
                .find(|(_, frame)| frame.deadline <= now && !frame.is_complete())
                .map(|(key, _)| *key);
            let Some(key) = expired else {
                break;
            };
            self.give_up(now, key, FrameLossReason::Late, cx);
        }
        // Repeat keyframe requests while a stream still waits for one.
        for index in 0..MAX_STREAMS {
            let (Some(stream), Some(stream_id)) =
                (self.streams.get_mut(index), StreamId::new(index as u8))
            else {
                continue;
            };
            if stream.awaiting_keyframe
                && stream.interframe_codec
                && stream.last_keyframe_request.is_some()
            {
                request_keyframe(stream, stream_id, now, cx);
            }
        }
    }

    /// Collects due NACK entries (rate limited); `None` if nothing is due or allowed.
    pub(crate) fn poll_nack(
        &mut self,
        now: Instant,
        max_entries: usize,
        cx: &ReceiveContext<'_>,
    ) -> Option<NackBatch> {
        if self
            .last_nack_sent
            .is_some_and(|last| now < last + cx.config.nack_interval)
        {
            return None;
        }
        let retry = cx.rtt + cx.config.reorder_delay;
        let mut entries = Vec::new();
        let mut redundant = false;
        for (&(stream, frame_seq), frame) in self.frames.iter_mut() {
            if entries.len() >= max_entries {
                break;
            }
            let Some(due) = frame.nack_due(retry) else {
                continue;
            };
            if due > now || frame.deadline <= now {
                continue;
            }
            let Some(stream) = StreamId::new(stream) else {
                continue;
            };
            let mut round_complete = true;
            match frame.meta {
                None => entries.push(NackEntry {
                    stream,
                    frame_seq,
                    first_fragment: 0,
                    fragment_count: NACK_ALL_FRAGMENTS,
                }),
                Some(meta) => {
                    let mut index = frame.nack_resume;
                    while index < meta.fragment_count && entries.len() < max_entries {
                        if frame.has_fragment(index) {
                            index += 1;
                            continue;
                        }
                        let start = index;
                        while index < meta.fragment_count && !frame.has_fragment(index) {
                            index += 1;
                        }
                        entries.push(NackEntry {
                            stream,
                            frame_seq,
                            first_fragment: start,
                            fragment_count: index - start,
                        });
                    }
                    if index < meta.fragment_count {
                        // Out of room: the next NACK packet continues this round here.
                        frame.nack_resume = index;
                        round_complete = false;
                    } else {
                        frame.nack_resume = 0;
                    }
                }
            }
            if round_complete {
                frame.nack_rounds += 1;
                frame.last_nacked = Some(now);
            }
            // Deadline-aware redundancy: when at most one more round could complete
            // before the deadline, send the NACK twice.
            if now + retry * 2 + cx.rtt > frame.deadline {
                redundant = true;
            }
        }
        if entries.is_empty() {
            return None;
        }
        self.last_nack_sent = Some(now);
        Some(NackBatch { entries, redundant })
    }

    pub(crate) fn next_timeout(&self, config: &Config, rtt: Duration) -> Option<Instant> {
        let retry = rtt + config.reorder_delay;
        let mut earliest: Option<Instant> = None;
        let mut consider = |at: Instant| {
            earliest = Some(earliest.map_or(at, |current| current.min(at)));
        };
        for frame in self.frames.values() {
            if frame.is_complete() {
                continue;
            }
            consider(frame.deadline);
            if let Some(nack_at) = frame.nack_due(retry) {
                let gate = self
                    .last_nack_sent
                    .map_or(nack_at, |last| nack_at.max(last + config.nack_interval));
                consider(gate);
            }
        }
        for stream in &self.streams {
            if let Some(last) = stream.last_keyframe_request
                && stream.awaiting_keyframe
                && stream.interframe_codec
            {
                consider(last + config.keyframe_request_interval);
            }
        }
        earliest
    }
}

fn update_transit(stream: &mut StreamState, now: Instant, transit: i128) {
    let window_start = *stream.transit_window_start.get_or_insert(now);
    if now.saturating_duration_since(window_start) >= TRANSIT_WINDOW {
        stream.transit_min_previous = stream.transit_min_current.take();
        stream.transit_window_start = Some(now);
    }
    stream.transit_min_current = Some(
        stream
            .transit_min_current
            .map_or(transit, |min| min.min(transit)),
    );
}

/// Queues a keyframe request for `stream` unless one was sent less than
/// `keyframe_request_interval` ago.
fn request_keyframe(
    stream: &mut StreamState,
    stream_id: StreamId,
    now: Instant,
    cx: &mut ReceiveContext<'_>,
) {
    if !stream.interframe_codec {
        return;
    }
    if stream
        .last_keyframe_request
        .is_some_and(|last| now < last + cx.config.keyframe_request_interval)
    {
        return;
    }
    stream.last_keyframe_request = Some(now);
    cx.stats.keyframe_requests_sent += 1;
    *cx.keyframe_requests |= 1 << stream_id.get();
}
