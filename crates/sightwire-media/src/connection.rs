//! [`MediaConnection`]: the sans-IO media state of one peer session, both directions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::admission::{Admission, FrameAdmission};
use crate::bwe::{DelayBasedBwe, FeedbackRecorder};
use crate::config::{Config, ConfigError};
use crate::control::{ControlOut, ControlReceiver, ControlSender};
use crate::event::{Event, EventQueue};
use crate::frame::{Frame, PacketizeError, PacketizedFrame};
use crate::pacer::Pacer;
use crate::receiver::{ReceiveContext, Receiver};
use crate::sender::{SendError, Sender};
use crate::stats::{BitrateController, LOSS_LOW, RttEstimator, Stats};
use crate::stream::{MAX_STREAMS, StreamId};
use crate::wire::{
    self, DecodeError, FEEDBACK_ENTRY_LEN, FEEDBACK_HEADER_LEN, FRAGMENT_HEADER_LEN, FeedbackEntry,
    MAX_CONTROL_MESSAGE_LEN, MAX_FEEDBACK_ENTRIES, Packet, Report, ReportEcho,
};

/// Most small packets (NACK, report, keyframe request, control) waiting for
/// [`MediaConnection::poll_transmit`]; further ones are dropped (all are repeated by timers).
pub const MAX_PENDING_SMALL_PACKETS: usize = 256;
/// Reports are accumulated until they cover at least this many expected packets before
/// the loss fraction is computed and fed to the bitrate controller (fewer packets give a
/// meaningless fraction).
pub const MIN_PACKETS_FOR_LOSS: u64 = 32;
/// A target bitrate change smaller than this fraction raises no event.
pub const BITRATE_EVENT_THRESHOLD: f64 = 0.05;
/// The loss-based target never falls below this fraction of the rate the peer's feedback
/// says was delivered (spec/media.md 6.4).
pub const LOSS_FLOOR_OF_DELIVERED: f64 = 0.85;
/// Under heavy loss (above 10 %) fragments leave at most this multiple of the delivered
/// rate (spec/media.md 4.6): above a policer's rate by what a keyframe needs to keep its
/// burst under random loss, which is not congestion.
pub const PACING_OVER_DELIVERED_UNDER_LOSS: f64 = 2.0;
/// A keyframe asked for with [`Event::KeyframeRequested`] that has not been sent after
/// this long is asked for again (the application may have missed or refused it).
pub const KEYFRAME_REASK_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two [`Event::TargetBitrate`] events (the estimate may move with
/// every feedback packet; an encoder reconfigures far less often).
pub const BITRATE_EVENT_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Why `send_control` refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The message is longer than [`MAX_CONTROL_MESSAGE_LEN`].
    #[error("control message of {len} bytes exceeds {limit}")]
    MessageTooLong {
        /// Message length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// `Config::max_control_queue` messages are already waiting.
    #[error("control queue full ({limit} messages)")]
    QueueFull {
        /// The limit.
        limit: usize,
    },
}

/// One media packet to hand to the session for encryption: `header || payload`.
///
/// For fragments the header is the 28-byte fragment header written for this transmission
/// and the payload is a zero-copy slice of the frame shared by every viewer; the session
/// copies both into its ciphertext buffer as it encrypts, which is the only copy a frame
/// byte sees on the way out.
#[derive(Debug, Clone)]
pub struct Transmit {
    header: [u8; FRAGMENT_HEADER_LEN],
    header_len: usize,
    payload: Bytes,
}

impl Transmit {
    fn small(packet: Bytes) -> Transmit {
        Transmit {
            header: [0; FRAGMENT_HEADER_LEN],
            header_len: 0,
            payload: packet,
        }
    }

    /// The packet's first bytes (empty for packets that are all payload).
    pub fn header(&self) -> &[u8] {
        self.header.get(..self.header_len).unwrap_or_default()
    }

    /// The bytes after the header.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Total packet length.
    pub fn len(&self) -> usize {
        self.header_len + self.payload.len()
    }

    /// Whether the packet is empty (never true for packets this crate makes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the packet into `out`; returns the length, or `None` if `out` is too short.
    pub fn write_to(&self, out: &mut [u8]) -> Option<usize> {
        let len = self.len();
        let (head, rest) = out.get_mut(..len)?.split_at_mut(self.header_len);
        head.copy_from_slice(self.header());
        rest.copy_from_slice(&self.payload);
        Some(len)
    }

    /// The packet as one contiguous `Bytes` (copies fragments; for tests and simple
    /// drivers).
    pub fn to_bytes(&self) -> Bytes {
        if self.header_len == 0 {
            return self.payload.clone();
        }
        let mut out = BytesMut::with_capacity(self.len());
        out.extend_from_slice(self.header());
        out.extend_from_slice(&self.payload);
        out.freeze()
    }
}

/// The media state of one peer session: sends frames and control messages, receives and
/// reassembles the peer's, and runs loss recovery, keyframe requests and reports.
///
/// Sans-IO: feed it [`handle_input`](Self::handle_input) with each decrypted session
/// payload and [`handle_timeout`](Self::handle_timeout) when
/// [`poll_timeout`](Self::poll_timeout) is reached; after every call drain
/// [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event).
/// Fragments are paced (`spec/media.md` 4.5): `poll_transmit(now)` may return `None` while
/// fragments wait, and `poll_timeout` then includes the time the next one may leave.
#[derive(Debug)]
pub struct MediaConnection {
    config: Config,
    epoch: Instant,
    rtt: RttEstimator,
    stats: Stats,
    events: EventQueue,
    small_out: VecDeque<Bytes>,
    keyframe_requests: u16,
    sender: Sender,
    receiver: Receiver,
    control_sender: ControlSender,
    control_receiver: ControlReceiver,
    nack_seq: u16,
    bitrate: BitrateController,
    /// The delay-based estimate; `None` when `Config::delay_based_estimation` is off.
    delay_bwe: Option<DelayBasedBwe>,
    /// Whether the peer has sent feedback (a peer that does not leaves the loss-based
    /// estimate in charge).
    feedback_seen: bool,
    feedback: FeedbackRecorder,
    feedback_scratch: Vec<FeedbackEntry>,
    admission: FrameAdmission,
    /// Per stream, the capture time of the newest keyframe sent (for the recovery window).
    keyframe_capture_us: [Option<u64>; MAX_STREAMS],
    /// Per stream, when the newest keyframe sent would have been transmitted at the path
    /// rate had nothing been queued ahead of it: the frames behind it may be that much
    /// later than the latency budget (4.7).
    keyframe_drained_at: [Option<Instant>; MAX_STREAMS],
    /// Bit per stream: a keyframe is needed (peer request or dropped reference).
    keyframe_wanted: u16,
    /// Bit per stream: the application was asked for it, at `keyframe_asked_at`.
    keyframe_asked: u16,
    keyframe_asked_at: [Option<Instant>; MAX_STREAMS],
    last_bitrate_event_at: Option<Instant>,
    /// `None` when `pacing_factor_percent` is 0.
    pacer: Option<Pacer>,
    last_bitrate_event: u64,
    next_report_at: Instant,
    interval_start: Instant,
    peer_report: Option<(u32, Instant)>,
    echoed_peer: bool,
    /// Expected packets, received packets and milliseconds of reports not yet applied.
    loss_accumulator: (u64, u64, u64),
    control_scratch: Vec<ControlOut>,
}

impl MediaConnection {
    /// A connection whose clock starts at `now`. Fails if `config` is out of range.
    pub fn new(config: Config, now: Instant) -> Result<MediaConnection, ConfigError> {
        config.validate()?;
        let bitrate = BitrateController::new(
            config.initial_bitrate_bps,
            config.min_bitrate_bps,
            config.max_bitrate_bps,
        );
        Ok(MediaConnection {
            rtt: RttEstimator::new(config.initial_rtt),
            epoch: now,
            stats: Stats::default(),
            events: EventQueue::default(),
            small_out: VecDeque::new(),
            keyframe_requests: 0,
            sender: Sender::new(),
            receiver: Receiver::new(),
            control_sender: ControlSender::default(),
            control_receiver: ControlReceiver::default(),
            nack_seq: 0,
            last_bitrate_event: bitrate.target_bps(),
            pacer: (config.pacing_factor_percent > 0)
                .then(|| Pacer::new(now, bitrate.target_bps(), &config)),
            delay_bwe: config.delay_based_estimation.then(|| {
                DelayBasedBwe::new(
                    config.initial_bitrate_bps,
                    config.min_bitrate_bps,
                    config.max_bitrate_bps,
                )
            }),
            feedback_seen: false,
            feedback: FeedbackRecorder::default(),
            feedback_scratch: Vec::with_capacity(MAX_FEEDBACK_ENTRIES),
            admission: FrameAdmission::default(),
            keyframe_capture_us: [None; MAX_STREAMS],
            keyframe_drained_at: [None; MAX_STREAMS],
            keyframe_wanted: 0,
            keyframe_asked: 0,
            keyframe_asked_at: [None; MAX_STREAMS],
            last_bitrate_event_at: None,
            bitrate,
            next_report_at: now,
            interval_start: now,
            peer_report: None,
            echoed_peer: false,
            loss_accumulator: (0, 0, 0),
            control_scratch: Vec::new(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Splits `frame` for this connection's packet size. To send one frame to many
    /// viewers, packetize once (with the smallest packet size among them) and pass the same
    /// [`PacketizedFrame`] to each viewer's [`send_frame`](Self::send_frame).
    pub fn packetize(&self, frame: Frame) -> Result<PacketizedFrame, PacketizeError> {
        PacketizedFrame::new(frame, self.config.max_packet_size)
    }

    /// Queues every fragment of `frame` and keeps it for retransmission; returns the
    /// frame's sequence number on its stream.
    ///
    /// A video frame the path cannot carry within the latency budget is not sent
    /// ([`SendError::FrameDropped`], `spec/media.md` 4.7): after a dropped reference frame
    /// the stream's frames are dropped until its next keyframe, and an
    /// [`Event::KeyframeRequested`] asks the encoder for one.
    pub fn send_frame(&mut self, now: Instant, frame: &PacketizedFrame) -> Result<u32, SendError> {
        let wire_bytes =
            frame.frame().data.len() + usize::from(frame.fragment_count()) * FRAGMENT_HEADER_LEN;
        let transmission =
            Duration::from_secs_f64(wire_bytes as f64 * 8.0 / self.path_rate_bps() as f64);
        let media = frame.frame();
        if media.keyframe && media.codec.has_interframe_dependency() {
            let key = &mut self.keyframe_capture_us[media.stream.index() % MAX_STREAMS];
            *key = Some(key.map_or(media.capture_time_us, |c| c.max(media.capture_time_us)));
        }
        // The receiver's rule (5.3): frames behind a keyframe may be later, by less and
        // less as time passes.
        let frame_budget = crate::receiver::frame_budget(
            self.keyframe_capture_us[media.stream.index() % MAX_STREAMS],
            media.capture_time_us,
            self.config.latency_budget,
        );
        // The recovery window lets the frames behind a keyframe inherit its delay, but
        // that delay is the keyframe's own transmission time: admitting more than the
        // latency budget beyond it would fill the queue with frames that then crowd out
        // everything after them (4.7).
        let stream_index = media.stream.index() % MAX_STREAMS;
        let keyframe_delay = if media.keyframe {
            transmission
        } else {
            self.keyframe_drained_at[stream_index]
                .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
        };
        let budget = frame_budget
            .min(self.config.latency_budget + keyframe_delay)
            .saturating_sub(self.rtt.smoothed() / 2);
        let wait = self.queue_delay(now) + transmission;
        let stream_bit = 1u16 << (media.stream.index() % MAX_STREAMS);
        match self.admission.admit(media, wait, budget) {
            Admission::Send => {}
            Admission::Drop {
                reason,
                breaks_chain,
            } => {
                match reason {
                    crate::DropReason::Congested => self.stats.frames_dropped_congested += 1,
                    crate::DropReason::AwaitingKeyframe => {
                        self.stats.frames_dropped_awaiting_keyframe += 1;
                    }
                }
                if breaks_chain {
                    self.keyframe_wanted |= stream_bit;
                }
                self.sender.mark_skipped(media.stream);
                self.release_keyframe_requests(now);
                return Err(SendError::FrameDropped { reason });
            }
        }
        let keyframe = media.keyframe;
        let seq =
            match self
                .sender
                .send_frame(now, frame, frame_budget, &self.config, &mut self.stats)
            {
                Ok(seq) => seq,
                Err(error) => {
                    self.frame_not_sent(now, frame.frame());
                    return Err(error);
                }
            };
        if keyframe {
            // The keyframe's own transmission, not the queue ahead of it: that queue is
            // no excuse for the frames behind it.
            self.keyframe_drained_at[stream_index] = Some(now + transmission);
            self.keyframe_wanted &= !stream_bit;
            self.keyframe_asked &= !stream_bit;
        }
        self.on_queued(now);
        Ok(seq)
    }

    /// Records that `frame` was handed in for this connection but not sent (refused by
    /// [`send_frame`](Self::send_frame), or refused before it, as a frame that could not
    /// be packetized): the next frame sent on its stream carries the SKIPPED flag, so the
    /// peer sees the gap; and a frame later frames may refer to breaks its stream like a
    /// dropped one (`spec/media.md` 4.7): the stream's non-key frames are dropped until
    /// its next keyframe, which is asked for, since they would decode to garbage.
    pub fn frame_not_sent(&mut self, now: Instant, frame: &Frame) {
        self.sender.mark_skipped(frame.stream);
        if self.admission.not_sent(frame) {
            self.keyframe_wanted |= 1u16 << (frame.stream.index() % MAX_STREAMS);
            self.release_keyframe_requests(now);
        }
    }

    /// Marks a gap on `stream` without breaking it: frames the peer would have had were
    /// withheld before they reached this connection (a GOP cache holding a viewer that
    /// waits for a keyframe), so the next frame sent on the stream carries the SKIPPED
    /// flag. The caller keeps the stream decodable.
    pub fn mark_gap(&mut self, stream: StreamId) {
        self.sender.mark_skipped(stream);
    }

    /// Passes wanted keyframes (asked for by the peer, or needed after a dropped
    /// reference frame) to the application as [`Event::KeyframeRequested`], but only
    /// once the queues ahead have drained to half the latency budget: a keyframe is
    /// several P-frames, and one made while the path is still full joins the queue that
    /// caused the request and causes the next (`spec/media.md` 4.7). At most one request
    /// per stream until a keyframe is sent, repeated after [`KEYFRAME_REASK_INTERVAL`].
    fn release_keyframe_requests(&mut self, now: Instant) {
        if self.keyframe_wanted == 0 {
            return;
        }
        let budget = self
            .config
            .latency_budget
            .saturating_sub(self.rtt.smoothed() / 2);
        if self.queue_delay(now) > budget / 2 {
            return;
        }
        for index in 0..MAX_STREAMS {
            let bit = 1u16 << index;
            if self.keyframe_wanted & bit == 0 {
                continue;
            }
            let asked_recently = self.keyframe_asked & bit != 0
                && self.keyframe_asked_at[index]
                    .is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_REASK_INTERVAL);
            if asked_recently {
                continue;
            }
            let Some(stream) = StreamId::new(index as u8) else {
                continue;
            };
            self.keyframe_asked |= bit;
            self.keyframe_asked_at[index] = Some(now);
            self.events
                .push(Event::KeyframeRequested { stream }, &mut self.stats);
        }
    }

    /// How long a packet queued now waits before it leaves the path's queues: the
    /// queuing delay the peer's feedback shows (4.6) plus the sender's own pacer queue at
    /// the path rate (it drains into the path's bottleneck).
    fn queue_delay(&self, now: Instant) -> Duration {
        self.network_queue_delay(now) + self.drain_time(self.sender.queued_bytes())
    }

    /// The path's queuing delay from the peer's feedback (zero without feedback).
    fn network_queue_delay(&self, now: Instant) -> Duration {
        self.delay_bwe
            .as_ref()
            .map_or(Duration::ZERO, |bwe| bwe.queuing_delay(now))
    }

    /// How long `bytes` take to drain at the path rate.
    fn drain_time(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 * 8.0 / self.path_rate_bps() as f64)
    }

    /// The rate the frame-drop policy assumes the path drains at: the target, or the
    /// delivered rate when the path has shown it carries more.
    fn path_rate_bps(&self) -> u64 {
        let delivered = self
            .delay_bwe
            .as_ref()
            .and_then(DelayBasedBwe::acked_bps)
            .unwrap_or(0);
        self.target_bitrate_bps().max(delivered).max(1)
    }

    /// Lets the pacer raise its rate if the queue would not drain in time — once the
    /// peer's feedback shows what the path carries, to at most the pacing factor times
    /// that (4.5): faster would only move the queue into the path's bottleneck.
    fn on_queued(&mut self, now: Instant) {
        let max_rate = if self.feedback_seen {
            Pacer::rate_for(self.path_rate_bps(), &self.config)
                .min(self.pacing_cap_bps(self.target_bitrate_bps()))
        } else {
            u64::MAX
        };
        if let Some(pacer) = &mut self.pacer {
            let window = crate::pacer::max_queue_time(&self.config, self.rtt.smoothed());
            pacer.on_queued(now, self.sender.queued_bytes(), window, max_rate);
        }
    }

    /// Queues a reliable, ordered control message.
    pub fn send_control(&mut self, now: Instant, message: Bytes) -> Result<(), ControlError> {
        if message.len() > MAX_CONTROL_MESSAGE_LEN {
            return Err(ControlError::MessageTooLong {
                len: message.len(),
                limit: MAX_CONTROL_MESSAGE_LEN,
            });
        }
        if self.control_sender.queued_len() >= self.config.max_control_queue {
            return Err(ControlError::QueueFull {
                limit: self.config.max_control_queue,
            });
        }
        self.control_sender.push(message);
        self.flush_control(now, false);
        Ok(())
    }

    fn flush_control(&mut self, now: Instant, timeout: bool) {
        let mut out = std::mem::take(&mut self.control_scratch);
        let rto = self.rtt.rto();
        if timeout {
            self.control_sender.on_timeout(now, rto, &mut out);
        }
        self.control_sender.fill_window(now, rto, &mut out);
        for message in out.drain(..) {
            if message.retransmission {
                self.stats.control_retransmitted += 1;
            }
            let mut packet = BytesMut::new();
            wire::encode_control_data(message.seq, &message.message, &mut packet);
            self.push_small(packet.freeze());
        }
        self.control_scratch = out;
    }

    fn push_small(&mut self, packet: Bytes) {
        if self.small_out.len() < MAX_PENDING_SMALL_PACKETS {
            self.small_out.push_back(packet);
        }
    }

    fn receive_context(&mut self) -> (&mut Receiver, ReceiveContext<'_>) {
        (
            &mut self.receiver,
            ReceiveContext {
                config: &self.config,
                rtt: self.rtt.smoothed(),
                rtt_measured: self.rtt.has_sample(),
                epoch: self.epoch,
                stats: &mut self.stats,
                events: &mut self.events,
                keyframe_requests: &mut self.keyframe_requests,
            },
        )
    }

    /// Handles one media packet from the peer (the decrypted session payload). A packet
    /// that does not decode is dropped, counted, and its error returned for logging.
    pub fn handle_input(&mut self, now: Instant, packet: &[u8]) -> Result<(), DecodeError> {
        let decoded = match wire::decode(packet) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.stats.packets_malformed += 1;
                return Err(error);
            }
        };
        match decoded {
            Packet::Fragment { header, payload } => {
                let (receiver, mut cx) = self.receive_context();
                receiver.on_fragment(now, &header, payload, packet.len(), &mut cx);
                let arrival_us = now.saturating_duration_since(self.epoch).as_micros() as u32;
                let per_packet =
                    (self.config.max_packet_size - FEEDBACK_HEADER_LEN) / FEEDBACK_ENTRY_LEN;
                if self
                    .feedback
                    .record(now, header.packet_seq, arrival_us, per_packet)
                {
                    self.send_feedback();
                }
            }
            Packet::Feedback {
                base_seq,
                reference_us,
                entries,
            } => {
                self.stats.feedback_received += 1;
                if let Some(bwe) = &mut self.delay_bwe {
                    self.feedback_seen = true;
                    let entries = wire::feedback_entries(base_seq, reference_us, entries);
                    // Every feedback may move the path capacity, and with it the pacer.
                    bwe.on_feedback(now, entries, self.rtt.smoothed());
                    self.update_target(now);
                }
            }
            Packet::Nack { nack_seq, entries } => {
                self.stats.nacks_received += 1;
                // Retransmissions leave ahead of queued video: they wait only for audio,
                // earlier retransmissions and the path's own queue.
                let queue_delay = self.network_queue_delay(now)
                    + self.drain_time(self.sender.queued_ahead_of_retransmissions());
                self.sender.on_nack(
                    now,
                    nack_seq,
                    wire::nack_entries(entries),
                    self.rtt.smoothed(),
                    queue_delay,
                    &self.config,
                    &mut self.stats,
                );
                self.on_queued(now);
            }
            Packet::KeyframeRequest { stream } => {
                self.stats.keyframe_requests_received += 1;
                self.keyframe_wanted |= 1u16 << (stream.index() % MAX_STREAMS);
                self.release_keyframe_requests(now);
            }
            Packet::Report(report) => self.on_report(now, &report),
            Packet::ControlData { seq, message } => {
                let mut delivered = Vec::new();
                self.control_receiver.on_data(seq, message, &mut delivered);
                for message in delivered {
                    self.stats.control_delivered += 1;
                    self.events.push(Event::Control(message), &mut self.stats);
                }
            }
            Packet::ControlAck {
                cumulative,
                selective,
            } => {
                if let Some(sample) = self.control_sender.on_ack(now, cumulative, selective) {
                    self.rtt.sample(sample);
                }
                self.flush_control(now, false);
            }
        }
        Ok(())
    }

    fn now_ms(&self, now: Instant) -> u32 {
        // Wraps after 49 days; the echo arithmetic is modular.
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }

    fn on_report(&mut self, now: Instant, report: &Report) {
        if let Some(echo) = report.echo {
            let rtt_ms = self
                .now_ms(now)
                .wrapping_sub(echo.timestamp_ms)
                .wrapping_sub(echo.delay_ms);
            self.rtt.sample(Duration::from_millis(u64::from(rtt_ms)));
        }
        // Accumulate reports until they cover enough packets for a meaningful loss fraction.
        let (expected, received, interval_ms) = &mut self.loss_accumulator;
        *expected = expected.saturating_add(u64::from(report.packets_expected));
        *received = received.saturating_add(u64::from(
            report.packets_received.min(report.packets_expected),
        ));
        *interval_ms = interval_ms.saturating_add(u64::from(report.interval_ms));
        if *expected >= MIN_PACKETS_FOR_LOSS {
            let loss = 1.0 - *received as f64 / *expected as f64;
            let interval = Duration::from_millis(*interval_ms);
            self.loss_accumulator = (0, 0, 0);
            self.stats.send_loss = loss;
            self.bitrate
                .on_report(now, loss, interval, self.rtt.smoothed());
            // Whatever the losses, the path just delivered this much: the loss-based target
            // does not fall below a fraction of it (a policer drops what exceeds its rate
            // and queues nothing, and cutting per report would end at the floor).
            if let Some(delivered) = self.delay_bwe.as_ref().and_then(DelayBasedBwe::acked_bps) {
                self.bitrate
                    .raise_to((delivered as f64 * LOSS_FLOOR_OF_DELIVERED) as u64);
            }
            self.update_target(now);
        }
        self.peer_report = Some((report.timestamp_ms, now));
        if !self.echoed_peer {
            // Answer the first report at once so both ends learn the RTT within one round
            // trip instead of one report interval.
            self.next_report_at = now;
        }
    }

    /// Recomputes the target from both estimates (`spec/media.md` 4.6): the lower of the
    /// delay-based and the loss-based one. While loss is low the loss-based estimate follows
    /// the delay-based one up, so it only ever cuts. Feeds the pacer and tells the
    /// application about changes of at least [`BITRATE_EVENT_THRESHOLD`].
    fn update_target(&mut self, now: Instant) {
        if let Some(bwe) = self.delay_bwe.as_ref().filter(|_| self.feedback_seen)
            && self.stats.send_loss < LOSS_LOW
        {
            self.bitrate.raise_to(bwe.target_bps());
        }
        let target = self.target_bitrate_bps();
        self.set_pacing_target(now, target);
        let change = target.abs_diff(self.last_bitrate_event) as f64;
        let quiet = self
            .last_bitrate_event_at
            .is_none_or(|at| now.saturating_duration_since(at) >= BITRATE_EVENT_MIN_INTERVAL);
        if self.stats.frames_sent > 0
            && quiet
            && change >= self.last_bitrate_event as f64 * BITRATE_EVENT_THRESHOLD
        {
            self.last_bitrate_event = target;
            self.last_bitrate_event_at = Some(now);
            self.events
                .push(Event::TargetBitrate { bps: target }, &mut self.stats);
        }
    }

    /// Sends the pending arrival records as one feedback packet.
    fn send_feedback(&mut self) {
        let mut entries = std::mem::take(&mut self.feedback_scratch);
        if let Some((base_seq, reference_us)) = self.feedback.take(&mut entries) {
            let mut packet = BytesMut::new();
            if wire::encode_feedback(base_seq, reference_us, &entries, &mut packet) > 0 {
                self.stats.feedback_sent += 1;
                self.push_small(packet.freeze());
            }
        }
        entries.clear();
        self.feedback_scratch = entries;
    }

    /// Feeds the pacer a target bitrate, and the path's rate once probes measured it.
    fn set_pacing_target(&mut self, now: Instant, target_bps: u64) {
        let max_rate = self.pacing_cap_bps(target_bps);
        if let Some(pacer) = &mut self.pacer {
            pacer.set_target(now, target_bps, max_rate, &self.config);
        }
    }

    /// Fastest the pacer may send once the peer's feedback measured the path (4.5):
    /// `PACING_OVER_CAPACITY` times the probes' bottleneck rate, never below the target
    /// or the pacing floor; unlimited before.
    fn pacing_cap_bps(&self, target_bps: u64) -> u64 {
        let capacity = self
            .delay_bwe
            .as_ref()
            .filter(|_| self.feedback_seen)
            .and_then(DelayBasedBwe::path_capacity_bps);
        // Under heavy loss the delivered rate is the path's rate (a policer lets bursts
        // through, so probes overestimate it): pace at most a multiple of it. Not much
        // less: random loss is not congestion, and a keyframe needs its burst.
        let delivered = self
            .delay_bwe
            .as_ref()
            .filter(|_| self.stats.send_loss > crate::stats::LOSS_HIGH)
            .and_then(DelayBasedBwe::acked_bps)
            .map(|bps| (bps as f64 * PACING_OVER_DELIVERED_UNDER_LOSS) as u64);
        let cap = match (capacity, delivered) {
            (None, None) => return u64::MAX,
            (Some(capacity), delivered) => {
                let cap = (capacity as f64 * crate::bwe::PACING_OVER_CAPACITY) as u64;
                delivered.map_or(cap, |d| cap.min(d))
            }
            (None, Some(delivered)) => delivered,
        };
        cap.max(target_bps).max(crate::MIN_PACING_TARGET_BPS)
    }

    /// When the pacer lets the next queued fragment leave; `None` with nothing queued or
    /// pacing off (then fragments leave at once).
    fn pacer_deadline(&self) -> Option<Instant> {
        let (len, _) = self.sender.peek_next()?;
        Some(self.pacer.as_ref()?.next_send(len))
    }

    fn send_report(&mut self, now: Instant) {
        let (expected, received, bytes) = self.receiver.counters.take_interval();
        let interval = now.saturating_duration_since(self.interval_start);
        self.interval_start = now;
        let interval_secs = interval.as_secs_f64();
        if interval_secs > 0.0 {
            self.stats.receive_bitrate_bps = (bytes as f64 * 8.0 / interval_secs) as u64;
            let sent = std::mem::take(&mut self.sender.interval_bytes_sent);
            self.stats.send_bitrate_bps = (sent as f64 * 8.0 / interval_secs) as u64;
        }
        if expected > 0 {
            self.stats.receive_loss = 1.0 - f64::from(received.min(expected)) / f64::from(expected);
        }
        let jitter_us = u32::try_from(self.receiver.counters.jitter_us.max(0)).unwrap_or(u32::MAX);
        let echo = self
            .peer_report
            .map(|(timestamp_ms, received_at)| ReportEcho {
                timestamp_ms,
                delay_ms: now.saturating_duration_since(received_at).as_millis() as u32,
            });
        if echo.is_some() {
            self.echoed_peer = true;
        }
        let report = Report {
            timestamp_ms: self.now_ms(now),
            echo,
            interval_ms: interval.as_millis().min(u128::from(u32::MAX)) as u32,
            packets_expected: expected,
            packets_received: received,
            bytes_received: u32::try_from(bytes).unwrap_or(u32::MAX),
            jitter_us,
        };
        let mut packet = BytesMut::new();
        wire::encode_report(&report, &mut packet);
        self.push_small(packet.freeze());
        self.next_report_at = now + self.config.report_interval;
    }

    /// Runs every timer due at `now`: deadlines, NACKs, keyframe requests, control
    /// retransmissions, reports.
    pub fn handle_timeout(&mut self, now: Instant) {
        let max_entries = wire::nack_entries_per_packet(self.config.max_packet_size);
        let (receiver, mut cx) = self.receive_context();
        receiver.on_timeout(now, &mut cx);
        if let Some(batch) = receiver.poll_nack(now, max_entries, &cx) {
            let mut packet = BytesMut::new();
            wire::encode_nack(self.nack_seq, &batch.entries, &mut packet);
            self.nack_seq = self.nack_seq.wrapping_add(1);
            let packet = packet.freeze();
            let copies = if batch.redundant { 2 } else { 1 };
            for _ in 0..copies {
                self.stats.nacks_sent += 1;
                self.push_small(packet.clone());
            }
        }
        self.flush_control(now, true);
        self.release_keyframe_requests(now);
        if self.feedback.deadline().is_some_and(|at| at <= now) {
            self.send_feedback();
        }
        if now >= self.next_report_at {
            self.send_report(now);
        }
        self.sender.prune_history(now, &self.config);
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, or (the
    /// pacer's next send time) when [`poll_transmit`](Self::poll_transmit) has a paced
    /// fragment to give. A driver simply calls both at that time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.pacer_deadline(),
            self.receiver
                .next_timeout(&self.config, self.rtt.smoothed()),
            self.control_sender.next_timeout(),
            self.feedback.deadline(),
            Some(self.next_report_at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next packet to send at `now`, highest priority first: control acks, keyframe
    /// requests, NACKs, reports and control messages (never paced), then fragments as the
    /// pacer allows: audio, then retransmissions, then other new fragments. `None` means
    /// nothing may leave now; [`poll_timeout`](Self::poll_timeout) says when to ask again.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some((cumulative, selective)) = self.control_receiver.take_ack() {
            let mut packet = BytesMut::new();
            wire::encode_control_ack(cumulative, selective, &mut packet);
            return Some(Transmit::small(packet.freeze()));
        }
        if self.keyframe_requests != 0 {
            let stream = self.keyframe_requests.trailing_zeros() as u8;
            self.keyframe_requests &= self.keyframe_requests - 1;
            if let Some(stream) = StreamId::new(stream) {
                let mut packet = BytesMut::new();
                wire::encode_keyframe_request(stream, &mut packet);
                return Some(Transmit::small(packet.freeze()));
            }
        }
        if let Some(packet) = self.small_out.pop_front() {
            return Some(Transmit::small(packet));
        }
        let (len, _) = self.sender.peek_next()?;
        if let Some(pacer) = &mut self.pacer
            && !pacer.try_send(now, len)
        {
            return None;
        }
        let (mut fragment, retransmission) = self.sender.pop_next()?;
        if let Some(pacer) = &mut self.pacer
            && self.sender.queued_packets() == 0
        {
            pacer.on_empty(now);
        }
        fragment.header.packet_seq = self.sender.take_packet_seq();
        if let Some(bwe) = &mut self.delay_bwe {
            // The fragments of one frame leave back to back at the pacing rate: a packet
            // train whose receive rate shows what the path carries (a probe cluster).
            let cluster = if retransmission || fragment.header.stream == StreamId::AUDIO {
                0
            } else {
                (fragment.header.frame_seq << 4 | fragment.header.stream.index() as u32)
                    .wrapping_add(1)
                    .max(1)
            };
            let sent_us = now.saturating_duration_since(self.epoch).as_micros() as u64;
            let len = FRAGMENT_HEADER_LEN + fragment.payload.len();
            bwe.on_sent(fragment.header.packet_seq, sent_us, len, cluster);
        }
        if retransmission {
            self.stats.fragments_retransmitted += 1;
        } else {
            self.stats.fragments_sent += 1;
        }
        let transmit = Transmit {
            header: fragment.header.encode(),
            header_len: FRAGMENT_HEADER_LEN,
            payload: fragment.payload,
        };
        self.sender.interval_bytes_sent += transmit.len() as u64;
        if !retransmission {
            self.sender
                .on_first_transmission(transmit.len(), &self.config);
        }
        Some(transmit)
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// Counters and estimates.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats.clone();
        stats.rtt = self.rtt.has_sample().then(|| self.rtt.smoothed());
        stats.jitter = Duration::from_micros(
            u64::try_from(self.receiver.counters.jitter_us.max(0)).unwrap_or(u64::MAX),
        );
        stats.target_bitrate_bps = self.target_bitrate_bps();
        stats.loss_based_target_bps = self.bitrate.target_bps();
        stats.delay_based_target_bps = self
            .delay_bwe
            .as_ref()
            .filter(|_| self.feedback_seen)
            .map_or(0, DelayBasedBwe::target_bps);
        stats.path_capacity_bps = self
            .delay_bwe
            .as_ref()
            .filter(|_| self.feedback_seen)
            .and_then(DelayBasedBwe::path_capacity_bps)
            .unwrap_or(0);
        stats.queuing_delay = self
            .delay_bwe
            .as_ref()
            .map_or(Duration::ZERO, DelayBasedBwe::reported_queuing_delay);
        stats.delivered_bitrate_bps = self
            .delay_bwe
            .as_ref()
            .and_then(DelayBasedBwe::acked_bps)
            .unwrap_or(0);
        stats.pacing_rate_bps = self.pacer.as_ref().map_or(0, Pacer::base_rate_bps);
        stats.pacing_burst_bytes = self.pacer.as_ref().map_or(0, Pacer::burst_bytes);
        stats
    }

    /// The current target bitrate for the encoder, bits per second: the lower of the
    /// loss-based and (once the peer sends feedback) the delay-based estimate.
    pub fn target_bitrate_bps(&self) -> u64 {
        let loss_based = self.bitrate.target_bps();
        match self.delay_bwe.as_ref().filter(|_| self.feedback_seen) {
            Some(bwe) => loss_based.min(bwe.target_bps()),
            None => loss_based,
        }
    }

    /// Current memory use against the configured limits.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            receive_buffered_bytes: self.receiver.buffered_bytes(),
            receive_frames_in_flight: self.receiver.frames_in_flight(),
            history_bytes: self.sender.history_bytes(),
            history_frames: self.sender.history_frames(),
            transmit_queue_packets: self.sender.queued_packets(),
            pending_events: self.events.len(),
            control_queued: self.control_sender.queued_len(),
            control_out_of_order: self.control_receiver.buffered(),
        }
    }
}

/// Memory held by a connection, for checking limits (and for tests that do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryUse {
    /// Bytes in receive reassembly buffers (limit `max_buffered_bytes`).
    pub receive_buffered_bytes: usize,
    /// Frames held by the receiver (limit `max_frames_in_flight`).
    pub receive_frames_in_flight: usize,
    /// Frame bytes kept for retransmission (limit `max_history_bytes`).
    pub history_bytes: usize,
    /// Frames kept for retransmission (limit `max_history_frames`).
    pub history_frames: usize,
    /// Packets in the transmit queues (limit `max_transmit_queue`).
    pub transmit_queue_packets: usize,
    /// Events not yet polled (limit [`MAX_PENDING_EVENTS`](crate::MAX_PENDING_EVENTS)).
    pub pending_events: usize,
    /// Control messages queued or unacknowledged (limit `max_control_queue`).
    pub control_queued: usize,
    /// Control messages held out of order (limit `CONTROL_WINDOW`).
    pub control_out_of_order: usize,
}

const _: () = assert!(MAX_STREAMS <= u16::BITS as usize);
