//! Sending media: frame sequence numbers, the transmit queue, the bounded retransmission
//! history and NACK handling with deadline checks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Config;
use crate::frame::PacketizedFrame;
use crate::stats::Stats;
use crate::stream::{MAX_STREAMS, StreamId};
use crate::wire::{
    FLAG_CODEC_CONFIG, FLAG_KEYFRAME, FLAG_RETRANSMISSION, FLAG_SKIPPED, FRAGMENT_HEADER_LEN,
    FragmentHeader, NACK_ALL_FRAGMENTS, NackEntry,
};

/// How many recent NACK sequence numbers the sender remembers to ignore repeated copies.
pub(crate) const NACK_DEDUP_MEMORY: usize = 8;

/// Retransmission credit earned per byte of first transmissions: retransmitted bytes never
/// exceed this many times the bytes first sent (two, so the deadline-aware second copy
/// of a wholly lost frame still fits).
pub const RETRANSMIT_CREDIT_PER_BYTE: u64 = 2;

/// When one fragment was last queued for retransmission.
#[derive(Debug, Clone, Copy)]
struct LastRetransmit {
    /// When it was queued.
    at: Instant,
    /// Its ticket in the retransmission queue (see `Sender::retransmit_tickets`).
    ticket: u64,
}

#[derive(Debug)]
struct SentFrame {
    stream: StreamId,
    frame_seq: u32,
    frame: PacketizedFrame,
    sent_at: Instant,
    /// How long after `sent_at` the receiver still accepts it (`spec/media.md` 5.3).
    budget: Duration,
    /// Per fragment, its last retransmission; empty until the frame is first NACKed.
    retransmitted: Vec<Option<LastRetransmit>>,
    /// Frames of its stream were skipped just before it (its fragments carry
    /// `FLAG_SKIPPED`, retransmissions too).
    after_skip: bool,
}

/// A fragment waiting in the transmit queue; `packet_seq` is assigned when it leaves.
#[derive(Debug, Clone)]
pub(crate) struct QueuedFragment {
    pub(crate) header: FragmentHeader,
    pub(crate) payload: Bytes,
}

impl QueuedFragment {
    /// Length of the packet it becomes.
    fn packet_len(&self) -> u64 {
        (FRAGMENT_HEADER_LEN + self.payload.len()) as u64
    }
}

/// Why `send_frame` refused a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The frame was packetized for larger packets than this connection sends.
    #[error("frame packetized for {packet_len}-byte packets, connection allows {max}")]
    PacketTooLarge {
        /// Largest packet the frame would produce.
        packet_len: usize,
        /// `Config::max_packet_size`.
        max: usize,
    },
    /// The frame is larger than `Config::max_frame_size`.
    #[error("frame of {size} bytes exceeds max_frame_size {limit}")]
    FrameTooLarge {
        /// Frame size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The frame-drop policy did not send it (`spec/media.md` 4.7); not an error of the
    /// caller's, and counted in [`Stats`](crate::Stats).
    #[error("frame dropped: {reason:?}")]
    FrameDropped {
        /// Why.
        reason: crate::DropReason,
    },
    /// The transmit queue cannot take the frame's fragments (the driver is not draining
    /// `poll_transmit`, or frames come faster than the path carries them).
    #[error("transmit queue full: {queued} queued, frame needs {needed}, limit {limit}")]
    TransmitQueueFull {
        /// Packets queued now.
        queued: usize,
        /// Fragments of the frame.
        needed: usize,
        /// `Config::max_transmit_queue`.
        limit: usize,
    },
}

#[derive(Debug)]
pub(crate) struct Sender {
    next_frame_seq: [u32; MAX_STREAMS],
    next_packet_seq: u32,
    history: VecDeque<SentFrame>,
    history_bytes: usize,
    /// First transmissions of other streams than audio, in order.
    pub(crate) queue: VecDeque<QueuedFragment>,
    /// First transmissions of [`StreamId::AUDIO`]: they leave ahead of everything else
    /// the pacer holds (small, and the most latency-sensitive).
    pub(crate) audio_queue: VecDeque<QueuedFragment>,
    pub(crate) retransmit_queue: VecDeque<QueuedFragment>,
    /// Packet bytes (header included) in the three queues.
    queued_bytes: u64,
    recent_nacks: VecDeque<u16>,
    /// Fragment bytes sent (header included) in the current report interval.
    pub(crate) interval_bytes_sent: u64,
    /// Bytes of retransmission the sender may still queue: earned by first transmissions
    /// ([`RETRANSMIT_CREDIT_PER_BYTE`] per byte), spent per queued copy, capped at
    /// `RETRANSMIT_CREDIT_PER_BYTE × max_history_bytes`.
    pub(crate) retransmit_credit: u64,
    /// Tickets handed to retransmissions queued so far, and taken by those sent: a
    /// fragment whose ticket is at least `retransmit_sent` is still in the queue.
    retransmit_tickets: u64,
    retransmit_sent: u64,
    /// Bit per stream: a frame of the stream was not sent since the last one that was;
    /// the next frame sent carries `FLAG_SKIPPED` (`spec/media.md` 4.7).
    skipped: u16,
}

impl Sender {
    pub(crate) fn new() -> Sender {
        Sender {
            next_frame_seq: [0; MAX_STREAMS],
            next_packet_seq: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            queue: VecDeque::new(),
            audio_queue: VecDeque::new(),
            retransmit_queue: VecDeque::new(),
            queued_bytes: 0,
            recent_nacks: VecDeque::new(),
            interval_bytes_sent: 0,
            retransmit_credit: 0,
            retransmit_tickets: 0,
            retransmit_sent: 0,
            skipped: 0,
        }
    }

    /// A frame of `stream` was not sent: the next one sent on it says so.
    pub(crate) fn mark_skipped(&mut self, stream: StreamId) {
        self.skipped |= 1u16 << (stream.index() % MAX_STREAMS);
    }

    /// Earns retransmission credit for a first transmission of `len` bytes.
    pub(crate) fn on_first_transmission(&mut self, len: usize, config: &Config) {
        let cap = RETRANSMIT_CREDIT_PER_BYTE.saturating_mul(config.max_history_bytes as u64);
        self.retransmit_credit = self
            .retransmit_credit
            .saturating_add(RETRANSMIT_CREDIT_PER_BYTE.saturating_mul(len as u64))
            .min(cap);
    }

    /// The next fragment to leave, in pacer priority order: audio first transmissions,
    /// then retransmissions (any stream), then other first transmissions. Returns its
    /// packet length and whether it is a retransmission.
    pub(crate) fn peek_next(&self) -> Option<(usize, bool)> {
        let (fragment, retransmission) = if let Some(f) = self.audio_queue.front() {
            (f, false)
        } else if let Some(f) = self.retransmit_queue.front() {
            (f, true)
        } else {
            (self.queue.front()?, false)
        };
        Some((FRAGMENT_HEADER_LEN + fragment.payload.len(), retransmission))
    }

    /// Takes the fragment [`peek_next`](Self::peek_next) names off its queue.
    pub(crate) fn pop_next(&mut self) -> Option<(QueuedFragment, bool)> {
        let (fragment, retransmission) = if let Some(f) = self.audio_queue.pop_front() {
            (f, false)
        } else if let Some(f) = self.retransmit_queue.pop_front() {
            self.retransmit_sent += 1;
            (f, true)
        } else {
            (self.queue.pop_front()?, false)
        };
        self.queued_bytes = self.queued_bytes.saturating_sub(fragment.packet_len());
        Some((fragment, retransmission))
    }

    /// Packet bytes waiting in the queues.
    pub(crate) fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    /// Packet bytes a retransmission queued now waits behind: audio and earlier
    /// retransmissions (they leave ahead of new video, 4.2).
    pub(crate) fn queued_ahead_of_retransmissions(&self) -> u64 {
        self.audio_queue
            .iter()
            .chain(&self.retransmit_queue)
            .map(QueuedFragment::packet_len)
            .sum()
    }

    pub(crate) fn history_bytes(&self) -> usize {
        self.history_bytes
    }

    pub(crate) fn history_frames(&self) -> usize {
        self.history.len()
    }

    /// Packets held by the pacer (all three queues); at most `max_transmit_queue`.
    pub(crate) fn queued_packets(&self) -> usize {
        self.queue.len() + self.audio_queue.len() + self.retransmit_queue.len()
    }

    /// Queues `frame`, which the receiver accepts until `budget` after now.
    pub(crate) fn send_frame(
        &mut self,
        now: Instant,
        frame: &PacketizedFrame,
        budget: Duration,
        config: &Config,
        stats: &mut Stats,
    ) -> Result<u32, SendError> {
        if frame.max_packet_len() > config.max_packet_size {
            return Err(SendError::PacketTooLarge {
                packet_len: frame.max_packet_len(),
                max: config.max_packet_size,
            });
        }
        let size = frame.frame().data.len();
        if size > config.max_frame_size {
            return Err(SendError::FrameTooLarge {
                size,
                limit: config.max_frame_size,
            });
        }
        let needed = usize::from(frame.fragment_count());
        if self.queued_packets() + needed > config.max_transmit_queue {
            return Err(SendError::TransmitQueueFull {
                queued: self.queued_packets(),
                needed,
                limit: config.max_transmit_queue,
            });
        }
        let stream = frame.frame().stream;
        let Some(next) = self.next_frame_seq.get_mut(stream.index()) else {
            return Ok(0);
        };
        let frame_seq = *next;
        *next = next.wrapping_add(1);
        let stream_bit = 1u16 << (stream.index() % MAX_STREAMS);
        let after_skip = self.skipped & stream_bit != 0;
        self.skipped &= !stream_bit;

        let mut header = header_for(frame, frame_seq, after_skip);
        let queue = if stream == StreamId::AUDIO {
            &mut self.audio_queue
        } else {
            &mut self.queue
        };
        for index in 0..frame.fragment_count() {
            if let Some(payload) = frame.fragment(index) {
                header.fragment_index = index;
                let fragment = QueuedFragment { header, payload };
                self.queued_bytes += fragment.packet_len();
                queue.push_back(fragment);
            }
        }
        self.history.push_back(SentFrame {
            stream,
            frame_seq,
            frame: frame.clone(),
            sent_at: now,
            budget,
            retransmitted: Vec::new(),
            after_skip,
        });
        self.history_bytes += size;
        self.prune_history(now, config);
        stats.frames_sent += 1;
        Ok(frame_seq)
    }

    /// Drops history beyond the byte, frame and age limits (oldest first). The age limit
    /// is `max_history_age`, or else each frame's own budget.
    pub(crate) fn prune_history(&mut self, now: Instant, config: &Config) {
        while let Some(oldest) = self.history.front() {
            let max_age = config.max_history_age.unwrap_or(oldest.budget);
            let too_old = now.saturating_duration_since(oldest.sent_at) > max_age;
            if !(too_old
                || self.history_bytes > config.max_history_bytes
                || self.history.len() > config.max_history_frames)
            {
                break;
            }
            self.history_bytes -= oldest.frame.frame().data.len();
            self.history.pop_front();
        }
    }

    /// Assigns the next packet sequence number.
    pub(crate) fn take_packet_seq(&mut self) -> u32 {
        let seq = self.next_packet_seq;
        self.next_packet_seq = self.next_packet_seq.wrapping_add(1);
        seq
    }

    /// Queues retransmissions for a NACK. `rtt` is the current estimate, `queue_delay` how
    /// long a packet queued now waits in the pacer and the path's queues.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_nack(
        &mut self,
        now: Instant,
        nack_seq: u16,
        entries: impl Iterator<Item = NackEntry>,
        rtt: Duration,
        queue_delay: Duration,
        config: &Config,
        stats: &mut Stats,
    ) {
        if self.recent_nacks.contains(&nack_seq) {
            return;
        }
        if self.recent_nacks.len() >= NACK_DEDUP_MEMORY {
            self.recent_nacks.pop_front();
        }
        self.recent_nacks.push_back(nack_seq);
        self.prune_history(now, config);

        // Each fragment is queued at most once per NACK packet (entries may overlap or
        // repeat), never while an earlier retransmission of it is still queued, and at
        // most once per half RTT (a receiver NACKs it again only a round later); every
        // copy is paid from the retransmission credit.
        let min_interval = rtt / 2;
        for entry in entries {
            let found = self
                .history
                .iter_mut()
                .rev()
                .find(|sent| sent.stream == entry.stream && sent.frame_seq == entry.frame_seq);
            let Some(sent) = found else {
                stats.retransmissions_skipped += 1;
                continue;
            };
            let deadline = sent.sent_at + sent.budget;
            let arrival = now + queue_delay + rtt / 2;
            if arrival > deadline {
                stats.retransmissions_skipped += 1;
                continue;
            }
            // Deadline-aware redundancy: when at most one more NACK round could complete
            // after this one, send two copies. Losing a late retransmission is what loses
            // frames; doubling only the last two rounds costs little bandwidth. Counted
            // against the latency budget even for a keyframe with a longer one (5.3): it
            // should arrive in time when the path allows, not merely before it is given up.
            let round = rtt + config.reorder_delay;
            let in_time = sent.sent_at + sent.budget.min(config.latency_budget);
            let copies = if arrival + round * 2 > in_time { 2 } else { 1 };
            let count = sent.frame.fragment_count();
            let end = if entry.fragment_count == NACK_ALL_FRAGMENTS {
                count
            } else {
                entry
                    .first_fragment
                    .saturating_add(entry.fragment_count)
                    .min(count)
            };
            if entry.first_fragment >= end {
                continue;
            }
            if sent.retransmitted.is_empty() {
                sent.retransmitted = vec![None; usize::from(count)];
            }
            let mut header = header_for(&sent.frame, sent.frame_seq, sent.after_skip);
            header.flags |= FLAG_RETRANSMISSION;
            for index in entry.first_fragment..end {
                let Some(payload) = sent.frame.fragment(index) else {
                    continue;
                };
                let Some(last) = sent.retransmitted.get_mut(usize::from(index)) else {
                    continue;
                };
                if let Some(previous) = *last {
                    let queued = previous.ticket >= self.retransmit_sent;
                    let recent = now.saturating_duration_since(previous.at) < min_interval;
                    if queued || recent {
                        stats.retransmissions_deduplicated += 1;
                        continue;
                    }
                }
                header.fragment_index = index;
                let cost = (FRAGMENT_HEADER_LEN + payload.len()) as u64;
                for _ in 0..copies {
                    let queued =
                        self.queue.len() + self.audio_queue.len() + self.retransmit_queue.len();
                    if queued >= config.max_transmit_queue {
                        stats.retransmissions_skipped += 1;
                        break;
                    }
                    if self.retransmit_credit < cost {
                        stats.retransmissions_over_budget += 1;
                        break;
                    }
                    self.retransmit_credit -= cost;
                    self.queued_bytes += cost;
                    self.retransmit_queue.push_back(QueuedFragment {
                        header,
                        payload: payload.clone(),
                    });
                    *last = Some(LastRetransmit {
                        at: now,
                        ticket: self.retransmit_tickets,
                    });
                    self.retransmit_tickets += 1;
                }
            }
        }
    }
}

fn header_for(frame: &PacketizedFrame, frame_seq: u32, after_skip: bool) -> FragmentHeader {
    let media = frame.frame();
    let mut flags = 0;
    if after_skip {
        flags |= FLAG_SKIPPED;
    }
    if media.keyframe {
        flags |= FLAG_KEYFRAME;
    }
    if media.codec_config {
        flags |= FLAG_CODEC_CONFIG;
    }
    FragmentHeader {
        stream: media.stream,
        codec: media.codec,
        flags,
        packet_seq: 0,
        frame_seq,
        capture_time_us: media.capture_time_us,
        frame_size: u32::try_from(media.data.len()).unwrap_or(u32::MAX),
        fragment_index: 0,
        fragment_count: frame.fragment_count(),
    }
}
