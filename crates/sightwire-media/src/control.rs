//! The reliable, ordered control channel: small messages with a fixed window, cumulative
//! plus selective acknowledgements and RTO-driven retransmission.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Most control messages in flight (sent, not acknowledged). Also the receiver's reorder
/// window: a message more than this far ahead of the next expected one is dropped unacked.
pub const CONTROL_WINDOW: u32 = 32;
/// Longest retransmission timeout after exponential backoff.
pub const CONTROL_MAX_RTO: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct InFlight {
    seq: u32,
    message: Bytes,
    sent_at: Instant,
    retransmitted: bool,
    resend_at: Instant,
    backoff_shift: u32,
}

/// Sending half of the control channel.
#[derive(Debug, Default)]
pub(crate) struct ControlSender {
    next_seq: u32,
    in_flight: VecDeque<InFlight>,
    queued: VecDeque<Bytes>,
}

/// A control message ready to go on the wire.
#[derive(Debug)]
pub(crate) struct ControlOut {
    pub(crate) seq: u32,
    pub(crate) message: Bytes,
    pub(crate) retransmission: bool,
}

impl ControlSender {
    pub(crate) fn queued_len(&self) -> usize {
        self.in_flight.len() + self.queued.len()
    }

    pub(crate) fn push(&mut self, message: Bytes) {
        self.queued.push_back(message);
    }

    /// Moves queued messages into the window; returns those to send now. The window is a
    /// span of sequence numbers from the oldest unacknowledged message, so the receiver's
    /// reorder window of the same size always covers every message in flight.
    pub(crate) fn fill_window(&mut self, now: Instant, rto: Duration, out: &mut Vec<ControlOut>) {
        loop {
            let oldest = self
                .in_flight
                .front()
                .map_or(self.next_seq, |message| message.seq);
            if self.next_seq.wrapping_sub(oldest) >= CONTROL_WINDOW {
                break;
            }
            let Some(message) = self.queued.pop_front() else {
                break;
            };
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            out.push(ControlOut {
                seq,
                message: message.clone(),
                retransmission: false,
            });
            self.in_flight.push_back(InFlight {
                seq,
                message,
                sent_at: now,
                retransmitted: false,
                resend_at: now + rto,
                backoff_shift: 0,
            });
        }
    }

    /// Handles an ack; returns an RTT sample from a newly acknowledged message that was
    /// never retransmitted (Karn's rule).
    pub(crate) fn on_ack(
        &mut self,
        now: Instant,
        cumulative: u32,
        selective: u32,
    ) -> Option<Duration> {
        let mut sample = None;
        self.in_flight.retain(|message| {
            let behind = cumulative.wrapping_sub(message.seq);
            let acked_cumulative = behind != 0 && behind <= CONTROL_WINDOW;
            let ahead = message.seq.wrapping_sub(cumulative);
            let acked_selective = (1..=32).contains(&ahead) && selective & (1 << (ahead - 1)) != 0;
            if acked_cumulative || acked_selective {
                if !message.retransmitted {
                    sample = Some(now.saturating_duration_since(message.sent_at));
                }
                false
            } else {
                true
            }
        });
        sample
    }

    pub(crate) fn on_timeout(&mut self, now: Instant, rto: Duration, out: &mut Vec<ControlOut>) {
        for message in &mut self.in_flight {
            if message.resend_at <= now {
                message.retransmitted = true;
                message.backoff_shift = (message.backoff_shift + 1).min(8);
                let timeout = rto
                    .saturating_mul(1 << message.backoff_shift)
                    .min(CONTROL_MAX_RTO);
                message.resend_at = now + timeout;
                out.push(ControlOut {
                    seq: message.seq,
                    message: message.message.clone(),
                    retransmission: true,
                });
            }
        }
    }

    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        self.in_flight.iter().map(|message| message.resend_at).min()
    }
}

/// Receiving half of the control channel.
#[derive(Debug, Default)]
pub(crate) struct ControlReceiver {
    next_expected: u32,
    out_of_order: BTreeMap<u32, Bytes>,
    ack_pending: bool,
}

impl ControlReceiver {
    /// Accepts message `seq`; pushes messages now deliverable in order to `deliver`.
    pub(crate) fn on_data(&mut self, seq: u32, message: &[u8], deliver: &mut Vec<Bytes>) {
        let ahead = seq.wrapping_sub(self.next_expected);
        // Duplicates (behind the window) are acknowledged again; messages beyond the window
        // are dropped unacknowledged so the sender retransmits them later.
        if ahead >= CONTROL_WINDOW {
            if ahead > u32::MAX - CONTROL_WINDOW * 2 {
                self.ack_pending = true;
            }
            return;
        }
        self.ack_pending = true;
        if ahead == 0 {
            deliver.push(Bytes::copy_from_slice(message));
            self.next_expected = self.next_expected.wrapping_add(1);
            while let Some(next) = self.out_of_order.remove(&self.next_expected) {
                deliver.push(next);
                self.next_expected = self.next_expected.wrapping_add(1);
            }
        } else {
            self.out_of_order
                .entry(seq)
                .or_insert_with(|| Bytes::copy_from_slice(message));
        }
    }

    /// Returns `(cumulative, selective)` if an ack is owed.
    pub(crate) fn take_ack(&mut self) -> Option<(u32, u32)> {
        if !std::mem::take(&mut self.ack_pending) {
            return None;
        }
        let mut selective = 0u32;
        for &seq in self.out_of_order.keys() {
            let ahead = seq.wrapping_sub(self.next_expected);
            if (1..=32).contains(&ahead) {
                selective |= 1 << (ahead - 1);
            }
        }
        Some((self.next_expected, selective))
    }

    pub(crate) fn buffered(&self) -> usize {
        self.out_of_order.len()
    }
}
