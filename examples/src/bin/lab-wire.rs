//! `lab-wire`: the NAT lab's access links — delay and loss for VXLAN-encapsulated
//! Ethernet frames, in user space.
//!
//! The kernels of the lab machines are built without `sch_netem`, so `tc netem` cannot
//! delay or drop packets. The lab therefore builds every access link as a pair of VXLAN
//! devices whose underlay UDP runs through this process: each direction of a link is a UDP
//! socket here that receives the encapsulated frames of one end, holds them for the
//! link's one-way delay, drops a configured share, and forwards the rest to the other
//! end. Everything above the link (IP, NAT, conntrack, TTL) is the real kernel.
//!
//! Commands (one per line on stdin):
//!
//! | command | effect |
//! | --- | --- |
//! | `link NAME IN_A TO_B IN_B TO_A` | frames arriving on port `IN_A` go to address `TO_B`, frames on `IN_B` to `TO_A` |
//! | `set NAME DELAY_MS LOSS_PERMILLE` | one-way delay and loss of both directions of `NAME` |
//! | `stats` | one `stats` line per link |
//!
//! Output lines (JSON): `{"event":"link","name":N}` once a link's sockets are bound,
//! `{"event":"set",...}`, `{"event":"stats","name":N,"forwarded":[a,b],"dropped":[a,b]}`,
//! `{"event":"error","message":T}`.
//!
//! Inner IPv4 TCP and UDP checksums are recomputed on the way through: the sending kernel
//! leaves them to checksum offload (`CHECKSUM_PARTIAL`), which a frame that leaves the
//! kernel through a socket never gets, and the receiving end would drop the packet.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;

/// Delay and loss for the NAT lab's VXLAN access links (user-space netem).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Seed of the loss decisions (each direction derives its own stream from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Largest encapsulated frame (VXLAN over a 9000-byte underlay).
const MAX_FRAME: usize = 9216;

/// Frames held at once per direction; beyond it frames are dropped (a full queue).
const MAX_QUEUED_FRAMES: usize = 10_000;

/// Most links one wire process carries.
const MAX_LINKS: usize = 256;

/// The longest one-way delay accepted.
const MAX_DELAY_MS: u32 = 10_000;

/// VXLAN header before the inner Ethernet frame.
const VXLAN_HEADER_LEN: usize = 8;

/// Ethernet header without VLAN tag.
const ETHERNET_HEADER_LEN: usize = 14;

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// Shared settings and counters of one direction.
#[derive(Debug, Default)]
struct Direction {
    delay_ms: AtomicU32,
    loss_permille: AtomicU32,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Link {
    directions: [Arc<Direction>; 2],
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut links: HashMap<String, Link> = HashMap::new();
    let mut next_seed = args.seed;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let result = match words.as_slice() {
            [] => Ok(()),
            ["link", name, in_a, to_b, in_b, to_a] => {
                next_seed = next_seed.wrapping_add(2);
                add_link(&mut links, name, [in_a, in_b], [to_b, to_a], next_seed)
            }
            ["set", name, delay_ms, loss_permille] => {
                set_link(&links, name, delay_ms, loss_permille)
            }
            ["stats"] => {
                for (name, link) in &links {
                    let [a, b] = &link.directions;
                    emit(json!({
                        "event": "stats",
                        "name": name,
                        "forwarded": [a.forwarded.load(Ordering::Relaxed), b.forwarded.load(Ordering::Relaxed)],
                        "dropped": [a.dropped.load(Ordering::Relaxed), b.dropped.load(Ordering::Relaxed)],
                    }));
                }
                Ok(())
            }
            _ => Err(anyhow::anyhow!(
                "unknown command (link NAME IN_A TO_B IN_B TO_A | set NAME DELAY_MS LOSS_PERMILLE | stats)"
            )),
        };
        if let Err(error) = result {
            emit(json!({"event": "error", "message": format!("{line:?}: {error:#}")}));
        }
    }
    // stdin closed: the lab is gone; the links die with the process.
    Ok(())
}

fn add_link(
    links: &mut HashMap<String, Link>,
    name: &str,
    listen_ports: [&str; 2],
    destinations: [&str; 2],
    seed: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(!links.contains_key(name), "link {name} exists");
    anyhow::ensure!(links.len() < MAX_LINKS, "at most {MAX_LINKS} links");
    let directions = [
        Arc::new(Direction::default()),
        Arc::new(Direction::default()),
    ];
    for (index, direction) in directions.iter().enumerate() {
        let port: u16 = listen_ports[index].parse().context("listen port")?;
        let destination: SocketAddr = destinations[index].parse().context("destination")?;
        let socket = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("bind {port}"))?;
        let seed = seed.wrapping_add(index as u64);
        start_direction(socket, destination, Arc::clone(direction), seed)?;
    }
    links.insert(name.to_owned(), Link { directions });
    emit(json!({"event": "link", "name": name}));
    Ok(())
}

fn set_link(
    links: &HashMap<String, Link>,
    name: &str,
    delay_ms: &str,
    loss_permille: &str,
) -> anyhow::Result<()> {
    let link = links.get(name).with_context(|| format!("no link {name}"))?;
    let delay_ms: u32 = delay_ms.parse().context("delay")?;
    let loss_permille: u32 = loss_permille.parse().context("loss")?;
    anyhow::ensure!(delay_ms <= MAX_DELAY_MS, "delay at most {MAX_DELAY_MS} ms");
    anyhow::ensure!(loss_permille <= 1000, "loss at most 1000 permille");
    for direction in &link.directions {
        direction.delay_ms.store(delay_ms, Ordering::Relaxed);
        direction
            .loss_permille
            .store(loss_permille, Ordering::Relaxed);
    }
    emit(
        json!({"event": "set", "name": name, "delay_ms": delay_ms, "loss_permille": loss_permille}),
    );
    Ok(())
}

/// One direction: a receiving thread that drops and timestamps, a sending thread that
/// releases frames when their delay is over (first in, first out).
fn start_direction(
    socket: UdpSocket,
    destination: SocketAddr,
    direction: Arc<Direction>,
    seed: u64,
) -> anyhow::Result<()> {
    let sender = socket.try_clone()?;
    let (queue, released) = mpsc::sync_channel::<(Instant, Vec<u8>)>(MAX_QUEUED_FRAMES);
    let receiving = Arc::clone(&direction);
    std::thread::spawn(move || {
        let mut random = XorShift(seed.max(1));
        let mut buf = vec![0u8; MAX_FRAME];
        // Frames leave in order even when the delay is lowered while they wait.
        let mut last_due = Instant::now();
        loop {
            let Ok((len, _)) = socket.recv_from(&mut buf) else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            let loss = receiving.loss_permille.load(Ordering::Relaxed);
            if loss > 0 && random.below(1000) < u64::from(loss) {
                receiving.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut frame = buf.get(..len).unwrap_or_default().to_vec();
            fix_inner_checksum(&mut frame);
            let delay =
                Duration::from_millis(u64::from(receiving.delay_ms.load(Ordering::Relaxed)));
            let due = (Instant::now() + delay).max(last_due);
            last_due = due;
            if queue.try_send((due, frame)).is_err() {
                receiving.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((due, frame)) = released.recv() {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if sender.send_to(&frame, destination).is_ok() {
                direction.forwarded.fetch_add(1, Ordering::Relaxed);
            } else {
                direction.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(())
}

/// IP protocol numbers whose checksums are recomputed.
const PROTOCOL_TCP: u8 = 6;
const PROTOCOL_UDP: u8 = 17;

/// Recomputes the TCP or UDP checksum of an unfragmented IPv4 packet inside a VXLAN
/// frame; anything else is left alone. (TCP matters as much as UDP: the stream fallback
/// of spec/stream.md runs over TCP, and a segment with a stale checksum is dropped.)
fn fix_inner_checksum(frame: &mut [u8]) {
    let ip_start = VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN;
    let is_ipv4 = frame.get(ip_start - 2..ip_start) == Some(&[0x08, 0x00][..]);
    let Some(&version_ihl) = frame.get(ip_start) else {
        return;
    };
    if !is_ipv4 || version_ihl >> 4 != 4 {
        return;
    }
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    let (Some(&protocol), Some(fragment), Some(total)) = (
        frame.get(ip_start + 9),
        frame.get(ip_start + 6..ip_start + 8),
        frame.get(ip_start + 2..ip_start + 4),
    ) else {
        return;
    };
    // More-fragments flag or a fragment offset: the checksum spans several packets.
    if u16::from_be_bytes([fragment[0], fragment[1]]) & 0x3fff != 0 {
        return;
    }
    let total_len = usize::from(u16::from_be_bytes([total[0], total[1]]));
    let start = ip_start + header_len;
    let (segment_len, checksum_at) = match protocol {
        PROTOCOL_UDP => {
            let Some(length) = frame.get(start + 4..start + 6) else {
                return;
            };
            (usize::from(u16::from_be_bytes([length[0], length[1]])), 6)
        }
        // TCP has no length of its own: what the IP header leaves.
        PROTOCOL_TCP => (total_len.saturating_sub(header_len), 16),
        _ => return,
    };
    if segment_len < checksum_at + 2 || start + segment_len > frame.len() {
        return;
    }
    let Ok(length_field) = u16::try_from(segment_len) else {
        return;
    };
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            sum += u32::from(word);
        }
    };
    let (Some(addresses), Some(segment)) = (
        frame.get(ip_start + 12..ip_start + 20),
        frame.get(start..start + segment_len),
    ) else {
        return;
    };
    add(addresses);
    add(&[0, protocol]);
    add(&length_field.to_be_bytes());
    // The checksum field itself counts as zero; its offset is even, so the 16-bit words
    // on either side stay aligned.
    add(segment.get(..checksum_at).unwrap_or_default());
    add(segment.get(checksum_at + 2..).unwrap_or_default());
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut checksum = !(sum as u16);
    // UDP sends a computed 0 as all ones (0 means "no checksum"); TCP keeps 0.
    if checksum == 0 && protocol == PROTOCOL_UDP {
        checksum = 0xffff;
    }
    frame[start + checksum_at..start + checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
}

/// xorshift64: loss decisions that a seed replays; no cryptographic use.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one's-complement sum over the pseudo-header and the segment: 0xffff when the
    /// checksum in it is right.
    fn verify(frame: &[u8], protocol: u8) -> u16 {
        let ip = VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN;
        let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
        let segment = &frame[ip + 20..ip + total];
        let mut sum: u32 = 0;
        let mut words = frame[ip + 12..ip + 20].to_vec();
        words.extend_from_slice(&[0, protocol]);
        words.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        words.extend_from_slice(segment);
        for pair in words.chunks(2) {
            sum += u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// A VXLAN frame: header, Ethernet (IPv4), an IPv4 header for `protocol` and
    /// `segment` (whose checksum field holds garbage, as with `CHECKSUM_PARTIAL`).
    fn frame(protocol: u8, segment: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; VXLAN_HEADER_LEN];
        frame.extend_from_slice(&[0x02; 12]);
        frame.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + segment.len()) as u16;
        frame.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, protocol, 0, 0]);
        frame[VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN + 2..][..2]
            .copy_from_slice(&total.to_be_bytes());
        frame.extend_from_slice(&[192, 168, 1, 10, 203, 0, 113, 10]);
        frame.extend_from_slice(segment);
        frame
    }

    #[test]
    fn tcp_checksums_are_recomputed() {
        // A SYN to port 443 with an odd-length payload, checksum field 0x1234.
        let mut segment = vec![
            0xc0, 0x00, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0x12, 0x34, 0,
            0,
        ];
        segment.extend_from_slice(b"SWS\x01\x00\x01\x30");
        let mut tcp = frame(PROTOCOL_TCP, &segment);
        assert_ne!(verify(&tcp, PROTOCOL_TCP), 0xffff);
        fix_inner_checksum(&mut tcp);
        assert_eq!(verify(&tcp, PROTOCOL_TCP), 0xffff);
        // Only the checksum changed.
        let ip = VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN;
        assert_eq!(tcp[ip + 20 + 18..], segment[18..]);
    }

    #[test]
    fn udp_checksums_are_recomputed() {
        let mut segment = vec![0x1e, 0x14, 0x0d, 0x96, 0, 14, 0xab, 0xcd];
        segment.extend_from_slice(b"\x01hello");
        let mut udp = frame(PROTOCOL_UDP, &segment);
        fix_inner_checksum(&mut udp);
        assert_eq!(verify(&udp, PROTOCOL_UDP), 0xffff);
    }

    #[test]
    fn fragments_other_protocols_and_short_frames_are_left_alone() {
        let segment = [0u8; 20];
        let mut icmp = frame(1, &segment);
        let before = icmp.clone();
        fix_inner_checksum(&mut icmp);
        assert_eq!(icmp, before);
        let mut fragment = frame(PROTOCOL_TCP, &segment);
        fragment[VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN + 6] = 0x20; // more fragments
        let before = fragment.clone();
        fix_inner_checksum(&mut fragment);
        assert_eq!(fragment, before);
        // A length beyond the frame, and a truncated frame: untouched, no panic.
        let mut lying = frame(PROTOCOL_TCP, &segment);
        lying[VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN + 2] = 0xff;
        let before = lying.clone();
        fix_inner_checksum(&mut lying);
        assert_eq!(lying, before);
        for len in 0..before.len() {
            let mut short = before[..len].to_vec();
            fix_inner_checksum(&mut short);
        }
    }
}
