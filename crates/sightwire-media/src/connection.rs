//! [`MediaConnection`]: the sans-IO media state of one peer session, both directions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::{Config, ConfigError};
use crate::control::{ControlOut, ControlReceiver, ControlSender};
use crate::event::{Event, EventQueue};
use crate::frame::{Frame, PacketizeError, PacketizedFrame};
use crate::pacer::Pacer;
use crate::receiver::{ReceiveContext, Receiver};
use crate::sender::{SendError, Sender};
use crate::stats::{BitrateController, RttEstimator, Stats};
use crate::stream::{MAX_STREAMS, StreamId};
use crate::wire::{
    self, DecodeError, FRAGMENT_HEADER_LEN, MAX_CONTROL_MESSAGE_LEN, Packet, Report, ReportEcho,
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
    pub fn send_frame(&mut self, now: Instant, frame: &PacketizedFrame) -> Result<u32, SendError> {
        let seq = self
            .sender
            .send_frame(now, frame, &self.config, &mut self.stats)?;
        self.on_queued(now);
        Ok(seq)
    }

    /// Lets the pacer raise its rate if the queue would not drain in time.
    fn on_queued(&mut self, now: Instant) {
        if let Some(pacer) = &mut self.pacer {
            let window = crate::pacer::max_queue_time(&self.config, self.rtt.smoothed());
            pacer.on_queued(now, self.sender.queued_bytes(), window);
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
            }
            Packet::Nack { nack_seq, entries } => {
                self.stats.nacks_received += 1;
                self.sender.on_nack(
                    now,
                    nack_seq,
                    wire::nack_entries(entries),
                    self.rtt.smoothed(),
                    &self.config,
                    &mut self.stats,
                );
                self.on_queued(now);
            }
            Packet::KeyframeRequest { stream } => {
                self.stats.keyframe_requests_received += 1;
                self.events
                    .push(Event::KeyframeRequested { stream }, &mut self.stats);
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
            self.bitrate.on_report(loss, interval);
            let target = self.bitrate.target_bps();
            self.set_pacing_target(now, target);
            let change = target.abs_diff(self.last_bitrate_event) as f64;
            if self.stats.frames_sent > 0
                && change >= self.last_bitrate_event as f64 * BITRATE_EVENT_THRESHOLD
            {
                self.last_bitrate_event = target;
                self.events
                    .push(Event::TargetBitrate { bps: target }, &mut self.stats);
            }
        }
        self.peer_report = Some((report.timestamp_ms, now));
        if !self.echoed_peer {
            // Answer the first report at once so both ends learn the RTT within one round
            // trip instead of one report interval.
            self.next_report_at = now;
        }
    }

    /// Feeds the pacer a target bitrate. The loss-based controller calls this after every
    /// applied report; a delay-based estimator would call it with its own target.
    fn set_pacing_target(&mut self, now: Instant, target_bps: u64) {
        if let Some(pacer) = &mut self.pacer {
            pacer.set_target(now, target_bps, &self.config);
        }
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
        stats.target_bitrate_bps = self.bitrate.target_bps();
        stats.pacing_rate_bps = self.pacer.as_ref().map_or(0, Pacer::base_rate_bps);
        stats.pacing_burst_bytes = self.pacer.as_ref().map_or(0, Pacer::burst_bytes);
        stats
    }

    /// The current target bitrate for the encoder, bits per second.
    pub fn target_bitrate_bps(&self) -> u64 {
        self.bitrate.target_bps()
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
