//! `lab-udp`: the NAT lab's probe tool — one UDP socket driven from stdin, reporting
//! everything it sends and receives as JSON lines on stdout.
//!
//! The lab (`examples/tests/lab.rs`) starts it inside a network namespace to show what a
//! NAT profile does to real packets: which external port a mapping gets, whether an
//! unsolicited packet gets through, whether the Linux conntrack race moves a port.
//!
//! ```text
//! lab-udp --bind 0.0.0.0:40000            # a host behind a NAT, commanded on stdin
//! lab-udp --bind 203.0.113.30:3478 --echo # a reflector: answers "seen <source>"
//! ```
//!
//! Commands (one per line on stdin):
//!
//! | command | effect |
//! | --- | --- |
//! | `send ADDR TEXT` | send `TEXT` to `ADDR` |
//! | `burst ADDR COUNT PREFIX` | send `COUNT` datagrams `PREFIX-<i>`, 2 ms apart |
//! | `blast ADDR RATE_BPS SIZE MILLIS PREFIX` | send `SIZE`-byte datagrams `PREFIX-<i>` (padded with NUL bytes) at `RATE_BPS` bits of payload per second for `MILLIS` ms |
//! | `ttl N` | IP TTL of later datagrams |
//!
//! Output lines: `{"event":"bound","local":A}`, `{"event":"sent","to":A,"payload":T,"t_ms":N}`,
//! `{"event":"recv","from":A,"payload":T,"len":N,"t_ms":N}` (the payload up to its first
//! NUL byte, `len` the whole datagram), `{"event":"blasted","to":A,"count":N,"bytes":N,
//! "first_ms":N,"last_ms":N}` once a blast is sent (it reports no `sent` per datagram),
//! `{"event":"error","message":T}`. `t_ms` counts from the start of the process, so
//! round-trip times can be read off a `sent`/`recv` pair.

use std::io::{BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;

/// One UDP socket for the NAT lab, commanded on stdin, reporting JSON lines on stdout.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Local address to bind.
    #[arg(long)]
    bind: SocketAddr,
    /// Answer every datagram with `seen <source address>` (a reflector: shows the
    /// mapping a NAT gave the sender).
    #[arg(long)]
    echo: bool,
}

/// Largest datagram read; lab payloads are short text.
const MAX_DATAGRAM: usize = 2048;

/// Spacing of `burst` datagrams, so a burst does not overflow netem's queue.
const BURST_SPACING: Duration = Duration::from_millis(2);

/// Most datagrams one `burst` command may send.
const MAX_BURST: u32 = 10_000;

/// Largest `blast` datagram: a 1500-byte MTU without IPv4 and UDP headers (no IP
/// fragments).
const MAX_BLAST_SIZE: usize = 1472;

/// Longest `blast`.
const MAX_BLAST: Duration = Duration::from_secs(60);

/// Highest `blast` rate (bits of payload per second).
const MAX_BLAST_RATE_BPS: u64 = 1_000_000_000;

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the lab is gone; nothing useful is left to do with the line.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let socket = UdpSocket::bind(args.bind).with_context(|| format!("binding {}", args.bind))?;
    emit(json!({"event": "bound", "local": socket.local_addr()?.to_string()}));

    let receiver = socket.try_clone()?;
    let echo = args.echo;
    let receive_loop = std::thread::spawn(move || {
        let mut buf = [0u8; MAX_DATAGRAM];
        loop {
            match receiver.recv_from(&mut buf) {
                Ok((len, from)) => {
                    let datagram = buf.get(..len).unwrap_or_default();
                    // A blast's padding is not part of its text.
                    let text = datagram.split(|&b| b == 0).next().unwrap_or_default();
                    let payload = String::from_utf8_lossy(text);
                    emit(json!({
                        "event": "recv",
                        "from": from.to_string(),
                        "payload": payload,
                        "len": len,
                        "t_ms": millis_since(start),
                    }));
                    if echo {
                        let reply = format!("seen {from}");
                        if let Err(error) = receiver.send_to(reply.as_bytes(), from) {
                            emit(
                                json!({"event": "error", "message": format!("echo to {from}: {error}")}),
                            );
                        }
                    }
                }
                // ICMP errors (port unreachable) surface here on Linux; report and go on.
                Err(error) => {
                    emit(json!({"event": "error", "message": format!("recv: {error}")}));
                    std::thread::sleep(BURST_SPACING);
                }
            }
        }
    });

    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if let Err(error) = run_command(&socket, line.trim(), start) {
            emit(json!({"event": "error", "message": format!("{line:?}: {error:#}")}));
        }
    }
    // stdin closed: keep answering (reflectors run without a commanding lab) until killed.
    receive_loop
        .join()
        .map_err(|_| anyhow::anyhow!("receive loop panicked"))
}

fn run_command(socket: &UdpSocket, line: &str, start: Instant) -> anyhow::Result<()> {
    let mut words = line.splitn(2, ' ');
    let command = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default();
    match command {
        "" => Ok(()),
        "send" => {
            let (to, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let to: SocketAddr = to.parse().context("send ADDR TEXT")?;
            send(socket, to, text, start)
        }
        "burst" => {
            let mut parts = rest.split(' ');
            let (Some(to), Some(count), Some(prefix)) = (parts.next(), parts.next(), parts.next())
            else {
                anyhow::bail!("burst ADDR COUNT PREFIX");
            };
            let to: SocketAddr = to.parse().context("burst address")?;
            let count: u32 = count.parse().context("burst count")?;
            anyhow::ensure!(count <= MAX_BURST, "burst of at most {MAX_BURST}");
            for index in 0..count {
                send(socket, to, &format!("{prefix}-{index}"), start)?;
                std::thread::sleep(BURST_SPACING);
            }
            Ok(())
        }
        "blast" => {
            let parts: Vec<&str> = rest.split(' ').collect();
            let [to, rate, size, millis, prefix] = parts[..] else {
                anyhow::bail!("blast ADDR RATE_BPS SIZE MILLIS PREFIX");
            };
            let to: SocketAddr = to.parse().context("blast address")?;
            let rate: u64 = rate.parse().context("blast rate")?;
            let size: usize = size.parse().context("blast size")?;
            let length = Duration::from_millis(millis.parse().context("blast milliseconds")?);
            anyhow::ensure!(
                (1..=MAX_BLAST_RATE_BPS).contains(&rate),
                "blast rate of 1 ..= {MAX_BLAST_RATE_BPS} bit/s"
            );
            anyhow::ensure!(
                (prefix.len() + 11..=MAX_BLAST_SIZE).contains(&size),
                "blast datagrams of {} ..= {MAX_BLAST_SIZE} bytes",
                prefix.len() + 11
            );
            anyhow::ensure!(length <= MAX_BLAST, "blast of at most {MAX_BLAST:?}");
            blast(socket, to, rate, size, length, prefix, start)
        }
        "ttl" => {
            let ttl: u32 = rest.parse().context("ttl N")?;
            socket.set_ttl(ttl).context("setting the IP TTL")?;
            emit(json!({"event": "ttl", "ttl": ttl}));
            Ok(())
        }
        other => anyhow::bail!("unknown command {other:?} (send, burst, blast, ttl)"),
    }
}

/// Sends `size`-byte datagrams at `rate` bits of payload per second for `length`, each
/// on its own schedule (datagram `i` at `i × size × 8 / rate`), so a late wake-up is
/// caught up instead of lowering the rate.
fn blast(
    socket: &UdpSocket,
    to: SocketAddr,
    rate: u64,
    size: usize,
    length: Duration,
    prefix: &str,
    start: Instant,
) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(size as f64 * 8.0 / rate as f64);
    let began = Instant::now();
    let first_ms = millis_since(start);
    let mut datagram = vec![0u8; size];
    let mut count: u64 = 0;
    loop {
        let due = interval.mul_f64(count as f64);
        if due >= length {
            break;
        }
        if let Some(wait) = (began + due).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let text = format!("{prefix}-{count}");
        datagram.fill(0);
        datagram[..text.len()].copy_from_slice(text.as_bytes());
        socket
            .send_to(&datagram, to)
            .with_context(|| format!("sending to {to}"))?;
        count += 1;
    }
    emit(json!({
        "event": "blasted",
        "to": to.to_string(),
        "count": count,
        "bytes": count * size as u64,
        "first_ms": first_ms,
        "last_ms": millis_since(start),
    }));
    Ok(())
}

fn send(socket: &UdpSocket, to: SocketAddr, text: &str, start: Instant) -> anyhow::Result<()> {
    socket
        .send_to(text.as_bytes(), to)
        .with_context(|| format!("sending to {to}"))?;
    emit(
        json!({"event": "sent", "to": to.to_string(), "payload": text, "t_ms": millis_since(start)}),
    );
    Ok(())
}
