//! The raw-UDP reference: a paced sender and a counting sink, each its own process, so
//! their CPU time is what moving the bytes costs with no protocol at all. The SRT row
//! uses the same two around `srt-live-transmit`.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use sightwire_benches::kernel::process_cpu;

/// Bytes of every datagram: SRT's live-mode payload (7 × 188-byte TS packets), so raw
/// UDP and SRT carry the same datagrams.
pub(crate) const PAYLOAD: usize = 1316;
/// Socket buffers asked for, each way (the kernel caps them at `net.core.*mem_max`).
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;
/// Send pacing step: the sender catches up with its schedule every millisecond.
const STEP: Duration = Duration::from_millis(1);

fn socket(bind: SocketAddr) -> anyhow::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort, as the endpoint does: the kernel grants what its limits allow.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&bind.into())?;
    Ok(socket.into())
}

/// Sends `seconds` of `mbps` to `to` in datagrams numbered from 0 (the first 8 bytes),
/// then prints `{"sent", "bytes", "cpu_seconds"}`.
pub(crate) fn blast(to: SocketAddr, mbps: f64, seconds: f64) -> anyhow::Result<()> {
    let socket = socket("127.0.0.1:0".parse()?)?;
    let per_second = mbps * 1e6 / 8.0 / PAYLOAD as f64;
    let total = (per_second * seconds).round() as u64;
    let mut datagram = vec![0x47u8; PAYLOAD];
    let cpu_before = process_cpu();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * per_second) as u64 + 1).min(total);
        while sent < due {
            datagram[..8].copy_from_slice(&sent.to_be_bytes());
            // A full send buffer on loopback blocks rather than drops: the sink's
            // receive buffer is where loss shows, as on a real receiver.
            socket.send_to(&datagram, to).context("send")?;
            sent += 1;
        }
        std::thread::sleep(STEP);
    }
    let cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.since(before));
    println!(
        "{}",
        serde_json::json!({
            "sent": sent,
            "bytes": sent * PAYLOAD as u64,
            "seconds": start.elapsed().as_secs_f64(),
            "cpu_seconds": cpu.map(|c| c.total().as_secs_f64()),
        })
    );
    Ok(())
}

/// Listens on `listen`, prints `{"listening": addr}`, counts numbered datagrams until
/// none came for `idle` after the first, then prints
/// `{"received", "bytes", "highest", "cpu_seconds"}`.
pub(crate) fn sink(listen: SocketAddr, idle: Duration) -> anyhow::Result<()> {
    let socket = socket(listen)?;
    println!(
        "{}",
        serde_json::json!({ "listening": socket.local_addr()?.to_string() })
    );
    let cpu_before = process_cpu();
    // Before the first datagram the sink waits as long as a run could take to start.
    socket.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = vec![0u8; 65_536];
    let (mut received, mut bytes, mut highest) = (0u64, 0u64, None::<u64>);
    loop {
        match socket.recv(&mut buf) {
            Ok(len) => {
                if received == 0 {
                    socket.set_read_timeout(Some(idle))?;
                }
                received += 1;
                bytes += len as u64;
                if len >= 8 {
                    let number = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                    highest = Some(highest.map_or(number, |h: u64| h.max(number)));
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(error) => return Err(error).context("receive"),
        }
    }
    let cpu = process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.since(before));
    println!(
        "{}",
        serde_json::json!({
            "received": received,
            "bytes": bytes,
            "highest": highest,
            "cpu_seconds": cpu.map(|c| c.total().as_secs_f64()),
        })
    );
    Ok(())
}
