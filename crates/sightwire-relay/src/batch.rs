//! Batched socket I/O for the relay (spec/relay.md, "Socket I/O"): where a relay spends
//! its time in syscalls, one `recvmmsg` takes up to [`quinn_udp::BATCH_SIZE`] datagrams
//! (each slot possibly several, coalesced by GRO), and the forwards of a batch go out
//! grouped by destination, a run of equal-sized datagrams to one destination in one
//! `sendmsg` with GSO (`UDP_SEGMENT`), the kernel cutting it back into the same datagrams.
//!
//! The socket tricks, and their `unsafe`, live in `quinn-udp`; this module keeps to its
//! safe API. Everything is sized once: the receive slots, the forward list (at most one
//! entry per datagram a batch can hold) and the GSO run buffer; nothing is allocated per
//! datagram. Where the kernel offers no GSO ([`UdpSocketState::max_gso_segments`] is 1, or
//! drops to 1 after a send failed) every datagram goes out on its own, still from the
//! batch; where it offers no GRO a slot holds one datagram.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;

use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Bytes of one receive slot where the kernel may coalesce datagrams (GRO): the largest
/// UDP payload, so a coalesced train is never cut.
const GRO_SLOT_LEN: usize = 64 * 1024;
/// Most segments the kernel puts in one GSO send or GRO train (`UDP_MAX_SEGMENTS`,
/// `UDP_GRO_CNT_MAX`).
const MAX_SEGMENTS: usize = 64;
/// Most bytes of one GSO send: the UDP payload limit (65 535 less the IPv6 and UDP
/// headers), with room to spare.
const MAX_GSO_BYTES: usize = 65_000;

/// A datagram of the current batch the core said to forward.
#[derive(Debug, Clone, Copy)]
struct Forward {
    to: SocketAddr,
    /// Its place in the batch: the order within one destination is kept by it.
    seq: u32,
    /// Where its bytes are in the receive buffer.
    start: u32,
    len: u32,
}

/// What a batch of sends did, for the server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flushed {
    /// `sendmsg` calls that carried more than one datagram (GSO).
    pub(crate) gso_sends: u64,
    /// Datagrams those calls carried.
    pub(crate) gso_datagrams: u64,
    /// Datagrams that could not be sent (the error is logged).
    pub(crate) errors: u64,
}

/// The relay socket's batched receive and send state.
#[derive(Debug)]
pub(crate) struct BatchIo {
    state: UdpSocketState,
    /// [`BATCH_SIZE`] slots of `slot_len` bytes.
    recv_buf: Box<[u8]>,
    slot_len: usize,
    meta: [RecvMeta; BATCH_SIZE],
    /// The datagrams received by the last [`BatchIo::recv`] (source, bytes in `recv_buf`).
    received: Vec<(SocketAddr, Range<usize>)>,
    forwards: Vec<Forward>,
    /// The bytes of one GSO run, copied together.
    run: Vec<u8>,
}

impl BatchIo {
    /// Batched I/O on `socket`, or the reason it is not available (the caller falls back
    /// to one datagram per syscall).
    pub(crate) fn new(socket: &UdpSocket, datagram_len: usize) -> io::Result<Self> {
        let state = UdpSocketState::new(socket.into())?;
        let slot_len = if state.gro_segments() > 1 {
            GRO_SLOT_LEN
        } else {
            datagram_len
        };
        let most_datagrams = BATCH_SIZE * state.gro_segments().clamp(1, MAX_SEGMENTS);
        Ok(Self {
            state,
            recv_buf: vec![0u8; BATCH_SIZE * slot_len].into_boxed_slice(),
            slot_len,
            meta: [RecvMeta::default(); BATCH_SIZE],
            received: Vec::with_capacity(most_datagrams),
            forwards: Vec::with_capacity(most_datagrams),
            run: Vec::with_capacity(MAX_GSO_BYTES),
        })
    }

    /// Datagrams one `sendmsg` may carry (1: no GSO).
    pub(crate) fn gso_segments(&self) -> usize {
        self.state.max_gso_segments().min(MAX_SEGMENTS)
    }

    /// Whether the kernel may coalesce received datagrams.
    pub(crate) fn gro(&self) -> bool {
        self.state.gro_segments() > 1
    }

    /// Takes the datagrams waiting in the socket (at most one batch, without waiting);
    /// they are then [`BatchIo::received`]. `WouldBlock` when there are none.
    pub(crate) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.received.clear();
        self.forwards.clear();
        let slot_len = self.slot_len;
        let mut slots = self.recv_buf.chunks_mut(slot_len).map(IoSliceMut::new);
        let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] =
            std::array::from_fn(|_| slots.next().unwrap_or_else(|| IoSliceMut::new(&mut [])));
        let state = &self.state;
        let meta = &mut self.meta;
        let count = socket.try_io(Interest::READABLE, || {
            state.recv(socket.into(), &mut iovs, meta)
        })?;
        for (slot, meta) in self.meta.iter().take(count).enumerate() {
            let base = slot * slot_len;
            let len = meta.len.min(slot_len);
            // A GRO train holds datagrams of `stride` bytes, the last possibly shorter.
            let stride = if meta.stride == 0 { len } else { meta.stride };
            let mut start = 0;
            while start < len || (start == 0 && len == 0) {
                let end = (start + stride).min(len);
                self.received.push((meta.addr, base + start..base + end));
                if end == start {
                    break;
                }
                start = end;
            }
        }
        Ok(self.received.len())
    }

    /// The `index`th datagram of the last receive: its source and its bytes' place.
    pub(crate) fn received(&self, index: usize) -> Option<(SocketAddr, Range<usize>)> {
        self.received.get(index).cloned()
    }

    /// The bytes at `range` of the receive buffer.
    pub(crate) fn bytes(&self, range: Range<usize>) -> &[u8] {
        self.recv_buf.get(range).unwrap_or_default()
    }

    /// Queues the received datagram at `range` to go to `to`, unchanged.
    pub(crate) fn forward(&mut self, to: SocketAddr, range: Range<usize>) {
        let seq = u32::try_from(self.forwards.len()).unwrap_or(u32::MAX);
        // Ranges are within the receive buffer (at most 2 MiB), so they fit in u32.
        let (Ok(start), Ok(len)) = (u32::try_from(range.start), u32::try_from(range.len())) else {
            return;
        };
        self.forwards.push(Forward {
            to,
            seq,
            start,
            len,
        });
    }

    /// Sends the queued forwards: grouped by destination in the order they came, a run
    /// of equal-sized datagrams (the last may be shorter) in one GSO send.
    pub(crate) async fn flush(&mut self, socket: &UdpSocket) -> Flushed {
        let mut flushed = Flushed::default();
        if self.forwards.is_empty() {
            return flushed;
        }
        // Unstable sort with the sequence number in the key: the same order as a stable
        // one, with no allocation.
        self.forwards
            .sort_unstable_by(|a, b| a.to.cmp(&b.to).then(a.seq.cmp(&b.seq)));
        let most = self.gso_segments();
        let mut first = 0;
        while first < self.forwards.len() {
            let end = run_end(&self.forwards, first, most);
            self.send_run(socket, first..end, &mut flushed).await;
            first = end;
        }
        self.forwards.clear();
        flushed
    }

    /// Sends `forwards[run]` (one destination): alone as it is, several as one GSO send,
    /// or one by one if the GSO send failed.
    async fn send_run(&mut self, socket: &UdpSocket, run: Range<usize>, flushed: &mut Flushed) {
        let head = self.forwards[run.start];
        let at = |forward: &Forward| {
            let start = forward.start as usize;
            start..start + forward.len as usize
        };
        if run.len() > 1 {
            self.run.clear();
            for forward in &self.forwards[run.clone()] {
                let bytes = self.recv_buf.get(at(forward)).unwrap_or_default();
                self.run.extend_from_slice(bytes);
            }
            let transmit = transmit(head.to, &self.run, Some(head.len as usize));
            match send(socket, &self.state, &transmit).await {
                Ok(()) => {
                    flushed.gso_sends += 1;
                    flushed.gso_datagrams += run.len() as u64;
                    return;
                }
                // quinn-udp turns GSO off for later sends when the kernel refused it;
                // this run goes out one by one.
                Err(error) => {
                    tracing::debug!(%error, to = %head.to, "GSO send failed; sending one by one");
                }
            }
        }
        for index in run {
            let forward = self.forwards[index];
            let bytes = self.recv_buf.get(at(&forward)).unwrap_or_default();
            if let Err(error) = send(socket, &self.state, &transmit(forward.to, bytes, None)).await
            {
                flushed.errors += 1;
                tracing::debug!(%error, to = %forward.to, "send failed");
            }
        }
    }
}

/// The end of the GSO run that starts at `forwards[first]` (sorted by destination): at
/// most `most` datagrams and [`MAX_GSO_BYTES`] bytes, one destination, all of the first
/// one's size but the last, which may be shorter. GSO cuts a run into segments of its
/// segment size, so a run ends after a shorter datagram and before a longer one; a run
/// that broke one of these rules would reach its destination as other datagrams.
fn run_end(forwards: &[Forward], first: usize, most: usize) -> usize {
    let Some(head) = forwards.get(first) else {
        return first;
    };
    let mut end = first + 1;
    if head.len == 0 {
        // A segment size of 0 means no segmentation: an empty datagram goes alone.
        return end;
    }
    let mut bytes = head.len as usize;
    while end < forwards.len() && end - first < most {
        let (next, previous) = (forwards[end], forwards[end - 1]);
        if next.to != head.to
            || next.len > head.len
            || previous.len < head.len
            || bytes + next.len as usize > MAX_GSO_BYTES
        {
            break;
        }
        bytes += next.len as usize;
        end += 1;
    }
    end
}

fn transmit(destination: SocketAddr, contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
    Transmit {
        destination,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    }
}

/// One `sendmsg`; a full socket buffer is waited out rather than turned into loss.
async fn send(
    socket: &UdpSocket,
    state: &UdpSocketState,
    transmit: &Transmit<'_>,
) -> io::Result<()> {
    loop {
        match socket.try_io(Interest::WRITABLE, || {
            state.try_send(socket.into(), transmit)
        }) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn forwards(items: &[(u8, u16)]) -> Vec<Forward> {
        let mut start = 0;
        let mut out: Vec<Forward> = items
            .iter()
            .enumerate()
            .map(|(seq, &(to, len))| {
                let forward = Forward {
                    to: SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(to))),
                    seq: seq as u32,
                    start,
                    len: u32::from(len),
                };
                start += u32::from(len);
                forward
            })
            .collect();
        out.sort_unstable_by(|a, b| a.to.cmp(&b.to).then(a.seq.cmp(&b.seq)));
        out
    }

    fn runs(forwards: &[Forward], most: usize) -> Vec<Range<usize>> {
        let mut runs = Vec::new();
        let mut first = 0;
        while first < forwards.len() {
            let end = run_end(forwards, first, most);
            assert!(end > first, "every run makes progress");
            runs.push(first..end);
            first = end;
        }
        runs
    }

    #[test]
    fn a_train_of_one_size_is_one_run_up_to_the_segment_limit() {
        let items = vec![(0, 1200); 100];
        let sorted = forwards(&items);
        assert_eq!(
            runs(&sorted, 64),
            vec![0..54, 54..100],
            "54 × 1200 B fill 65 000 B"
        );
        let small = forwards(&vec![(0, 100); 100]);
        assert_eq!(
            runs(&small, 64),
            vec![0..64, 64..100],
            "64 segments at most"
        );
        assert_eq!(runs(&small, 1).len(), 100, "no GSO: one datagram per send");
    }

    #[test]
    fn a_shorter_datagram_ends_a_run_and_a_longer_one_starts_one() {
        let sorted = forwards(&[
            (0, 1200),
            (0, 1200),
            (0, 300),
            (0, 1200),
            (0, 1400),
            (0, 40),
        ]);
        assert_eq!(runs(&sorted, 64), vec![0..3, 3..4, 4..6]);
    }

    #[test]
    fn destinations_never_share_a_run() {
        let sorted = forwards(&[(0, 1200), (1, 1200), (0, 1200), (1, 1200), (2, 1200)]);
        assert_eq!(runs(&sorted, 64), vec![0..2, 2..4, 4..5]);
    }

    proptest! {
        /// Whatever a batch holds, every run is one destination's datagrams, in the order
        /// they came, of the first's size but a shorter last, within the limits; and the
        /// runs together are the whole batch.
        #[test]
        fn runs_are_what_gso_can_carry(
            items in proptest::collection::vec((0u8..4, prop_oneof![Just(1200u16), Just(1400), 0u16..1500]), 0..300),
            most in prop_oneof![Just(1usize), Just(64), 1usize..70],
        ) {
            let sorted = forwards(&items);
            let runs = runs(&sorted, most);
            prop_assert_eq!(runs.iter().map(ExactSizeIterator::len).sum::<usize>(), items.len());
            for run in runs {
                let run = &sorted[run];
                prop_assert!(run.len() <= most);
                prop_assert!(run.len() == 1 || run.iter().map(|f| f.len as usize).sum::<usize>() <= MAX_GSO_BYTES);
                let head = run[0];
                for (index, forward) in run.iter().enumerate() {
                    prop_assert_eq!(forward.to, head.to);
                    if index + 1 < run.len() {
                        prop_assert_eq!(forward.len, head.len);
                    } else {
                        prop_assert!(forward.len <= head.len);
                    }
                }
                prop_assert!(run.windows(2).all(|pair| pair[0].seq < pair[1].seq));
            }
            // Per destination, the sorted order is the order they came in.
            prop_assert!(sorted.windows(2).all(|pair| pair[0].to != pair[1].to || pair[0].seq < pair[1].seq));
        }
    }
}
