//! Datagrams the core wants sent, in buffers it reuses: the steady state allocates
//! nothing, and the driver reads each datagram in place ([`Transmit`]).

use std::collections::VecDeque;
use std::net::SocketAddr;

/// Largest datagram the endpoint reads or writes.
pub const MAX_DATAGRAM_LEN: usize = 2048;
/// Most datagrams queued for the driver. Media is pulled into the queue only when it is
/// empty, so this bounds signaling, punch and handshake bursts; beyond it datagrams are
/// dropped and counted ([`crate::proto::EndpointStats::transmits_dropped`]).
pub const MAX_QUEUED_TRANSMITS: usize = 1024;

/// A datagram to send, borrowed from the endpoint until the next `poll_transmit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transmit<'a> {
    /// Where to send it.
    pub destination: SocketAddr,
    /// IP TTL (hop limit) to send it with; `None`: the socket's default. Low TTLs open
    /// the local NAT without reaching the peer's (`spec/punch.md`).
    pub ttl: Option<u8>,
    /// The datagram.
    pub contents: &'a [u8],
    /// `Some(port)`: send it over a TCP/TLS stream to `destination`'s IP at `port`
    /// (`spec/stream.md`; datagrams from that stream are handed back as coming from
    /// `destination`); `None`: over UDP.
    pub stream_port: Option<u16>,
}

#[derive(Debug)]
struct Queued {
    destination: SocketAddr,
    ttl: Option<u8>,
    len: usize,
    buf: Box<[u8]>,
}

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Queued>,
    free: Vec<Box<[u8]>>,
    /// The datagram last handed out; its buffer is recycled on the next poll.
    current: Option<Queued>,
    pub(crate) dropped: u64,
}

impl Outbox {
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.queue.len() >= MAX_QUEUED_TRANSMITS
    }

    /// Queues the datagram `write` puts at the front of a buffer of
    /// [`MAX_DATAGRAM_LEN`] bytes (it returns the destination and the length, or `None`
    /// to send nothing). Returns whether it was queued.
    pub(crate) fn push_with(
        &mut self,
        ttl: Option<u8>,
        write: impl FnOnce(&mut [u8]) -> Option<(SocketAddr, usize)>,
    ) -> bool {
        if self.is_full() {
            self.dropped += 1;
            return false;
        }
        let mut buf = self
            .free
            .pop()
            .unwrap_or_else(|| vec![0u8; MAX_DATAGRAM_LEN].into_boxed_slice());
        match write(&mut buf) {
            Some((destination, len)) if len > 0 && len <= buf.len() => {
                self.queue.push_back(Queued {
                    destination,
                    ttl,
                    len,
                    buf,
                });
                true
            }
            _ => {
                self.free.push(buf);
                false
            }
        }
    }

    /// Queues a copy of `datagram`.
    pub(crate) fn push(&mut self, destination: SocketAddr, ttl: Option<u8>, datagram: &[u8]) {
        self.push_with(ttl, |buf| {
            buf.get_mut(..datagram.len())?.copy_from_slice(datagram);
            Some((destination, datagram.len()))
        });
    }

    /// Where the next datagram goes, if there is one.
    pub(crate) fn peek_destination(&self) -> Option<SocketAddr> {
        self.queue.front().map(|queued| queued.destination)
    }

    /// The next datagram; the previous one's buffer goes back to the pool.
    pub(crate) fn pop(&mut self) -> Option<Transmit<'_>> {
        if let Some(done) = self.current.take() {
            self.free.push(done.buf);
        }
        self.current = self.queue.pop_front();
        let current = self.current.as_ref()?;
        Some(Transmit {
            destination: current.destination,
            ttl: current.ttl,
            contents: current.buf.get(..current.len).unwrap_or_default(),
            stream_port: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "192.0.2.1:9".parse().unwrap()
    }

    #[test]
    fn buffers_are_reused_after_the_next_poll() {
        let mut outbox = Outbox::default();
        outbox.push(addr(), None, b"one");
        let first_ptr = outbox.pop().map(|t| t.contents.as_ptr()).unwrap();
        assert!(outbox.pop().is_none());
        outbox.push(addr(), Some(2), b"two");
        let t = outbox.pop().unwrap();
        assert_eq!(t.contents, b"two");
        assert_eq!(t.ttl, Some(2));
        assert_eq!(
            t.contents.as_ptr(),
            first_ptr,
            "the first buffer is recycled"
        );
    }

    #[test]
    fn the_queue_is_bounded_and_overflow_is_counted() {
        let mut outbox = Outbox::default();
        for _ in 0..MAX_QUEUED_TRANSMITS + 5 {
            outbox.push(addr(), None, b"x");
        }
        assert_eq!(outbox.len(), MAX_QUEUED_TRANSMITS);
        assert_eq!(outbox.dropped, 5);
    }

    #[test]
    fn a_writer_that_declines_or_overflows_queues_nothing() {
        let mut outbox = Outbox::default();
        assert!(!outbox.push_with(None, |_| None));
        assert!(!outbox.push_with(None, |_| Some((addr(), MAX_DATAGRAM_LEN + 1))));
        assert!(!outbox.push_with(None, |_| Some((addr(), 0))));
        assert!(outbox.pop().is_none());
    }
}
