//! Deterministic virtual-time network between two media connections.
#![allow(dead_code, unreachable_pub)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sightwire_media::{Event, MediaConnection};

/// SplitMix64: a tiny seeded generator so every run replays exactly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// One direction of the simulated path.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub delay: Duration,
    pub loss: f64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Instant,
    order: u64,
    to_b: bool,
    packet: Vec<u8>,
}

/// Two connections, `a` and `b`, joined by lossy delayed links, stepped in virtual time.
pub struct Pair {
    pub a: MediaConnection,
    pub b: MediaConnection,
    pub now: Instant,
    pub a_to_b: Link,
    pub b_to_a: Link,
    pub rng: Rng,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    pub a_events: Vec<(Instant, Event)>,
    pub b_events: Vec<(Instant, Event)>,
    pub packets_sent: u64,
    pub packets_lost: u64,
}

impl Pair {
    pub fn new(
        a: MediaConnection,
        b: MediaConnection,
        start: Instant,
        link: Link,
        seed: u64,
    ) -> Pair {
        Pair {
            a,
            b,
            now: start,
            a_to_b: link,
            b_to_a: link,
            rng: Rng::new(seed),
            in_flight: BinaryHeap::new(),
            order: 0,
            a_events: Vec::new(),
            b_events: Vec::new(),
            packets_sent: 0,
            packets_lost: 0,
        }
    }

    /// Moves every pending transmit onto the links and every event into the logs.
    pub fn drain(&mut self) {
        let mut buf = [0u8; 2048];
        for from_a in [true, false] {
            loop {
                let connection = if from_a { &mut self.a } else { &mut self.b };
                let Some(transmit) = connection.poll_transmit() else {
                    break;
                };
                let len = transmit.write_to(&mut buf).expect("packet fits the buffer");
                let link = if from_a { self.a_to_b } else { self.b_to_a };
                self.packets_sent += 1;
                if self.rng.chance(link.loss) {
                    self.packets_lost += 1;
                    continue;
                }
                self.order += 1;
                self.in_flight.push(Reverse(InFlight {
                    at: self.now + link.delay,
                    order: self.order,
                    to_b: from_a,
                    packet: buf[..len].to_vec(),
                }));
            }
        }
        while let Some(event) = self.a.poll_event() {
            self.a_events.push((self.now, event));
        }
        while let Some(event) = self.b.poll_event() {
            self.b_events.push((self.now, event));
        }
    }

    /// Runs the network and both timers up to `until` (exclusive of later events).
    pub fn run_until(&mut self, until: Instant) {
        loop {
            self.drain();
            let next_packet = self.in_flight.peek().map(|Reverse(packet)| packet.at);
            let next = [next_packet, self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|&at| at <= until) else {
                self.now = until;
                return;
            };
            self.now = self.now.max(next);
            while let Some(Reverse(packet)) = self.in_flight.peek() {
                if packet.at > self.now {
                    break;
                }
                let Some(Reverse(packet)) = self.in_flight.pop() else {
                    break;
                };
                let target = if packet.to_b {
                    &mut self.b
                } else {
                    &mut self.a
                };
                target
                    .handle_input(self.now, &packet.packet)
                    .expect("well-formed packet");
            }
            for connection in [&mut self.a, &mut self.b] {
                if connection.poll_timeout().is_some_and(|at| at <= self.now) {
                    connection.handle_timeout(self.now);
                }
            }
        }
    }
}

/// Deterministic frame content: byte `i` of frame `n`.
pub fn frame_bytes(frame_index: u64, len: usize) -> Bytes {
    let mut rng = Rng::new(frame_index ^ 0xA5A5_5A5A);
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        data.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    data.truncate(len);
    Bytes::from(data)
}

/// Drains every pending transmit of `connection` as contiguous packets.
pub fn drain_packets(connection: &mut MediaConnection) -> Vec<Bytes> {
    let mut packets = Vec::new();
    while let Some(transmit) = connection.poll_transmit() {
        packets.push(transmit.to_bytes());
    }
    packets
}

/// Drains every pending event.
pub fn drain_events(connection: &mut MediaConnection) -> Vec<Event> {
    let mut events = Vec::new();
    while let Some(event) = connection.poll_event() {
        events.push(event);
    }
    events
}

/// Only the fragment packets (first byte 0x40).
pub fn fragments(packets: &[Bytes]) -> Vec<Bytes> {
    packets
        .iter()
        .filter(|packet| packet.first() == Some(&sightwire_media::wire::TYPE_FRAGMENT))
        .cloned()
        .collect()
}
