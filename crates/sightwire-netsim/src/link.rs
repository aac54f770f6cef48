//! Bottleneck links: a FIFO queue drained at a fixed rate, with tail drop.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The capacity and queue of one direction of an interface (a host's or a NAT's WAN
/// side), like a home uplink shaped with `tbf` or `htb`.
///
/// A packet entering the link waits for the bytes queued before it to drain at
/// [`Link::capacity_bps`], then takes its own serialization time
/// (`payload length × 8 / capacity_bps`), then the path's latency. If admitting it
/// would put more than [`Link::queue_bytes`] bytes in the queue it is dropped instead
/// (tail drop, counted in [`SimStats::queue_dropped`](crate::SimStats::queue_dropped)).
/// Lengths are payload bytes; IP and UDP headers are not counted.
///
/// [`Link::unlimited`] (the default) adds no delay and drops nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Link {
    /// Drain rate in bits per second. `u64::MAX` means no serialization delay; `0`
    /// carries nothing (every packet is dropped).
    pub capacity_bps: u64,
    /// Most bytes queued at once, counting the packet being serialized: it must be at
    /// least one packet, or every packet is dropped.
    pub queue_bytes: usize,
}

impl Link {
    /// No capacity limit and no queue: packets pass without delay or loss.
    pub const fn unlimited() -> Self {
        Link {
            capacity_bps: u64::MAX,
            queue_bytes: usize::MAX,
        }
    }

    /// A link draining at `capacity_bps` with room for `queue_bytes`.
    pub const fn new(capacity_bps: u64, queue_bytes: usize) -> Self {
        Link {
            capacity_bps,
            queue_bytes,
        }
    }

    /// Whether this is [`Link::unlimited`].
    pub const fn is_unlimited(&self) -> bool {
        self.capacity_bps == u64::MAX && self.queue_bytes == usize::MAX
    }

    /// Time to put `len` bytes on the wire, rounded up to the nanosecond; `None` when
    /// the link carries nothing.
    pub fn serialization(&self, len: usize) -> Option<Duration> {
        match self.capacity_bps {
            0 => None,
            u64::MAX => Some(Duration::ZERO),
            bps => {
                let bits = (len as u128) * 8 * 1_000_000_000;
                let nanos = bits.div_ceil(u128::from(bps));
                Some(Duration::from_nanos(
                    u64::try_from(nanos).unwrap_or(u64::MAX),
                ))
            }
        }
    }
}

impl Default for Link {
    fn default() -> Self {
        Link::unlimited()
    }
}

/// A link and the packets in its queue.
#[derive(Debug, Default)]
pub(crate) struct LinkState {
    pub(crate) link: Link,
    /// When each queued packet finishes serializing, and its length; oldest first.
    queue: VecDeque<(Instant, usize)>,
    queued_bytes: usize,
}

impl LinkState {
    /// Puts a `len`-byte packet into the queue at `now`: the time until it has left
    /// the link (waiting plus serialization), or `None` if it is tail-dropped.
    ///
    /// Packets already queued keep the departure time they got when they entered, so a
    /// capacity change applies to packets entering after it.
    pub(crate) fn enqueue(&mut self, now: Instant, len: usize) -> Option<Duration> {
        while let Some(&(done, bytes)) = self.queue.front() {
            if done > now {
                break;
            }
            self.queue.pop_front();
            self.queued_bytes -= bytes;
        }
        if self.link.is_unlimited() && self.queue.is_empty() {
            return Some(Duration::ZERO);
        }
        let serialization = self.link.serialization(len)?;
        if self.queued_bytes.saturating_add(len) > self.link.queue_bytes {
            return None;
        }
        let start = self.queue.back().map_or(now, |&(done, _)| done.max(now));
        let done = start + serialization;
        self.queue.push_back((done, len));
        self.queued_bytes += len;
        Some(done - now)
    }

    /// Bytes queued at `now` (not yet serialized).
    pub(crate) fn queued_bytes(&self, now: Instant) -> usize {
        self.queue
            .iter()
            .filter(|&&(done, _)| done > now)
            .map(|&(_, bytes)| bytes)
            .sum()
    }
}
