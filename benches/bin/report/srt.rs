//! The SRT reference: `srt-live-transmit` (Debian's srt-tools) carrying the raw-UDP
//! sender's datagrams over SRT on loopback to the raw-UDP sink:
//! `udp-blast → srt-live-transmit (udp → srt) → srt-live-transmit (srt → udp) → udp-sink`.
//! Its CPU figure is the two `srt-live-transmit` processes (the transport, both ends),
//! as Sightwire's is its camera and viewer processes. SRT gets the buffers and flow
//! window it needs so it is not handicapped: 4 MB UDP buffers (the kernel's limit here),
//! a 100 MB SRT buffer and a 100 000-packet flow window, 200 ms latency, no bandwidth cap.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use sightwire_benches::cpu_seconds;

use crate::udp::{PAYLOAD, SOCKET_BUFFER};
use crate::{Point, json_lines, spawn_self, start_sink, udp_point};

const PROGRAM: &str = "srt-live-transmit";

/// Whether `srt-live-transmit` can be started.
pub(crate) fn available() -> anyhow::Result<()> {
    let status = Command::new(PROGRAM)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("{PROGRAM} is not installed (apt-get install srt-tools)"))?;
    let _ = status;
    Ok(())
}

/// A free loopback UDP port (bound and released; the race with other programs is
/// harmless on a benchmark machine).
fn free_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn srt_options() -> String {
    format!(
        "latency=200&fc=100000&rcvbuf=100000000&sndbuf=100000000&udp_rcvbuf={SOCKET_BUFFER}\
         &udp_sndbuf={SOCKET_BUFFER}&maxbw=0&inputbw=1250000000&payloadsize={PAYLOAD}"
    )
}

fn start(input: &str, output: &str) -> anyhow::Result<Child> {
    Command::new(PROGRAM)
        .args(["-q", &format!("-chunk:{PAYLOAD}"), input, output])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {PROGRAM}"))
}

/// SRT at `mbps` for `seconds`.
pub(crate) fn run(mbps: f64, seconds: f64) -> anyhow::Result<Point> {
    let (sink, sink_address) = start_sink()?;
    let srt_port = free_port()?;
    let input_port = free_port()?;
    let options = srt_options();
    let mut receiver = start(
        &format!("srt://:{srt_port}?mode=listener&{options}"),
        &format!("udp://{sink_address}?sndbuf={SOCKET_BUFFER}"),
    )?;
    let mut sender = start(
        &format!("udp://127.0.0.1:{input_port}?rcvbuf={SOCKET_BUFFER}"),
        &format!("srt://127.0.0.1:{srt_port}?mode=caller&{options}"),
    )?;
    // The caller connects when its input first has data; give both a moment to listen.
    std::thread::sleep(Duration::from_millis(500));
    let blast = spawn_self(&[
        "udp-blast".into(),
        format!("--to=127.0.0.1:{input_port}"),
        format!("--mbps={mbps}"),
        format!("--seconds={seconds}"),
    ])?;
    let sent = json_lines(blast)?.pop().context("sender report")?;
    let received = json_lines(sink)?.pop().context("sink report")?;
    let cpu = [sender.id(), receiver.id()]
        .into_iter()
        .map(|pid| cpu_seconds(pid).ok())
        .sum::<Option<f64>>();
    for child in [&mut sender, &mut receiver] {
        let _ = child.kill();
        let _ = child.wait();
    }
    if received["received"].as_u64() == Some(0) {
        bail!("nothing came through SRT at {mbps} Mbit/s (did the pair connect?)");
    }
    udp_point(mbps, &sent, &received, cpu)
}
