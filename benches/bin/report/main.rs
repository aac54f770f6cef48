//! `bench-report`: every benchmark row next to its reference, measured in one run on one
//! machine, written to `BENCHMARKS.md` (issue 18). Machines here are noisy, so each
//! figure is read as a ratio against a reference measured minutes apart in the same run:
//!
//! - hot path: the session's seal + open vs raw ChaCha20-Poly1305 (criterion);
//! - a stream camera → viewer on loopback, offered rate swept to the lossless ceiling,
//!   Sightwire direct (two processes) and relayed, next to raw UDP between two processes
//!   and SRT (`srt-live-transmit`, Debian's srt-tools, with raised buffers and window);
//! - a bottleneck: decodable rate through the relay's policer / its capacity;
//! - 100 concurrent 4 Mbit/s streams through one relay vs a trivial forwarder, and the
//!   relay's batched socket I/O (recvmmsg, GSO/GRO) vs the same relay without it;
//! - the rendezvous at scale, when `rendezvous-load` is built beside this binary.
//!
//! `cargo run --release -p sightwire-benches --bin bench-report -- --output BENCHMARKS.md`
//! (`--quick` for a short smoke run). The internal subcommands are the processes the
//! report starts.

mod relay_load;
mod srt;
mod udp;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Parser, Debug)]
#[command(version, about = "Benchmarks side by side: one command, one table")]
struct Args {
    #[command(subcommand)]
    command: Option<Internal>,
    /// Where to write the report (Markdown); `-` for standard output.
    #[arg(long, default_value = "-")]
    output: String,
    /// A short smoke run (1 s per rate, fewer rates, 10 relay streams): checks that
    /// every row runs, not what the figures are.
    #[arg(long)]
    quick: bool,
    /// Seconds of stream per rate.
    #[arg(long)]
    seconds: Option<f64>,
    /// Offered rates of the stream sweep, Mbit/s, comma-separated.
    #[arg(long, value_delimiter = ',')]
    sweep_mbps: Vec<f64>,
    /// Simulated devices of the rendezvous row [default: 20 000; --quick: 500].
    #[arg(long)]
    rendezvous_devices: Option<u32>,
    /// Rows to leave out: hotpath, stream, srt, bottleneck, relay, rendezvous, lab.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Internal {
    /// Internal: the raw-UDP sender.
    #[command(hide = true)]
    UdpBlast {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        mbps: f64,
        #[arg(long)]
        seconds: f64,
    },
    /// Internal: the raw-UDP sink.
    #[command(hide = true)]
    UdpSink {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 500)]
        idle_ms: u64,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match &args.command {
        Some(Internal::UdpBlast { to, mbps, seconds }) => udp::blast(*to, *mbps, *seconds),
        Some(Internal::UdpSink { listen, idle_ms }) => {
            udp::sink(*listen, Duration::from_millis(*idle_ms))
        }
        None => report(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// This binary's path, read once at the start: `cargo bench` (the hot-path row) builds
/// the package's binaries again, and Linux then reports the running one as deleted.
static OWN_PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn own_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = OWN_PATH.get() {
        return Ok(path.clone());
    }
    let path = std::env::current_exe().context("own path")?;
    Ok(OWN_PATH.get_or_init(|| path).clone())
}

/// The binaries built beside this one (`throughput`, `rendezvous-load`).
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    Ok(own_path()?.with_file_name(name))
}

/// Starts this binary with an internal subcommand; stdout piped.
fn spawn_self(args: &[String]) -> anyhow::Result<Child> {
    Command::new(own_path()?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start a helper process")
}

/// The JSON lines a child printed, after it exited successfully.
fn json_lines(child: Child) -> anyhow::Result<Vec<Value>> {
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("a helper process failed: {}", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).context("a helper's JSON"))
        .collect()
}

/// A sink process and the address it listens on.
fn start_sink() -> anyhow::Result<(Child, SocketAddr)> {
    let mut sink = spawn_self(&["udp-sink".into()])?;
    let stdout = sink.stdout.as_mut().context("sink stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let value: Value = serde_json::from_str(&line).context("the sink's first line")?;
    let address = value["listening"]
        .as_str()
        .context("the sink's address")?
        .parse()?;
    Ok((sink, address))
}

/// One point of a sweep: offered, delivered, lossless, CPU both ends per GB.
#[derive(Debug, Clone)]
struct Point {
    offered_mbps: f64,
    delivered_mbps: f64,
    lossless: bool,
    cpu_seconds_per_gb: Option<f64>,
    note: String,
}

/// Raw UDP at `mbps`: sender and sink, each a process.
fn raw_udp(mbps: f64, seconds: f64) -> anyhow::Result<Point> {
    let (sink, address) = start_sink()?;
    let blast = spawn_self(&[
        "udp-blast".into(),
        format!("--to={address}"),
        format!("--mbps={mbps}"),
        format!("--seconds={seconds}"),
    ])?;
    let sent = json_lines(blast)?.pop().context("sender report")?;
    let received = json_lines(sink)?.pop().context("sink report")?;
    udp_point(mbps, &sent, &received, None)
}

/// A point from a sender's and a sink's reports; `transport_cpu` replaces their CPU
/// (SRT: the two `srt-live-transmit` processes).
fn udp_point(
    mbps: f64,
    sent: &Value,
    received: &Value,
    transport_cpu: Option<f64>,
) -> anyhow::Result<Point> {
    let sent_count = sent["sent"].as_u64().context("sent")?;
    let received_count = received["received"].as_u64().context("received")?;
    let bytes = received["bytes"].as_u64().context("bytes")? as f64;
    let seconds = sent["seconds"].as_f64().context("seconds")?;
    let cpu = transport_cpu
        .or_else(|| Some(sent["cpu_seconds"].as_f64()? + received["cpu_seconds"].as_f64()?));
    Ok(Point {
        offered_mbps: mbps,
        delivered_mbps: bytes * 8.0 / seconds / 1e6,
        lossless: received_count == sent_count,
        cpu_seconds_per_gb: cpu.filter(|_| bytes > 0.0).map(|cpu| cpu / (bytes / 1e9)),
        note: format!("{received_count} of {sent_count} datagrams"),
    })
}

/// Sightwire through the `throughput` tool: one point per rate.
fn sightwire_stream(
    path: &str,
    rates: &[f64],
    seconds: f64,
    transport: bool,
) -> anyhow::Result<Vec<Point>> {
    let rates_arg = rates
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new(sibling("throughput")?);
    command.args([
        "--json",
        &format!("--path={path}"),
        &format!("--offered-mbps={rates_arg}"),
        &format!("--seconds={seconds}"),
    ]);
    if transport {
        // The transport's ceiling, as for raw UDP and SRT: camera and viewer in two
        // processes, no application bitrate cap, no pacing below the offered rate.
        command.args([
            "--processes=2",
            "--pacing-percent=0",
            "--max-bitrate-mbps=4000",
        ]);
    }
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start throughput (build it: cargo build --release -p sightwire-benches)")?;
    json_lines(child)?
        .iter()
        .map(|run| {
            Ok(Point {
                offered_mbps: run["offered_mbps"].as_f64().context("offered")?,
                delivered_mbps: run["delivered_mbps"].as_f64().context("delivered")?,
                lossless: run["delivered_frames"].as_u64() == run["frames"].as_u64(),
                cpu_seconds_per_gb: run["cpu_seconds_per_gb"].as_f64(),
                note: format!(
                    "{:.2} % frames decodable, p99 {} ms",
                    run["decodable_percent"].as_f64().unwrap_or(0.0),
                    run["latency_p99_ms"]
                        .as_f64()
                        .map_or("–".to_owned(), |ms| format!("{ms:.1}"))
                ),
            })
        })
        .collect()
}

/// The highest offered rate at which this and every lower rate were lossless.
fn ceiling(points: &[Point]) -> Option<&Point> {
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by(|a, b| a.offered_mbps.total_cmp(&b.offered_mbps));
    sorted.into_iter().take_while(|p| p.lossless).last()
}

fn fmt_opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("–".to_owned(), |v| format!("{v:.digits$}"))
}

fn ratio(ours: Option<f64>, reference: Option<f64>) -> String {
    match (ours, reference) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".to_owned(),
    }
}

/// The machine the figures come from.
fn machine() -> String {
    let cpu = sightwire_benches::machine();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or("?".into(), |kb| format!("{:.0} GiB", kb as f64 / 1048576.0));
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let net = |name: &str| {
        sightwire_benches::kernel::net_core(name).map_or("n/a".into(), |v| v.to_string())
    };
    format!(
        "{cpu}, {memory}; Linux {}; {rustc}; net.core.rmem_max {} wmem_max {}; \
         load average {} at the start",
        kernel.trim(),
        net("rmem_max"),
        net("wmem_max"),
        fmt_opt(sightwire_benches::kernel::load_average(), 2),
    )
}

/// One cell of the NAT lab's matrix: camera and viewer NAT profiles, the path, and the
/// first keyframe's arrival (ms after the viewer started).
#[derive(Debug, Clone, PartialEq)]
struct LabCell {
    camera: String,
    viewer: String,
    path: String,
    first_frame_ms: Option<u64>,
}

/// The cells of `lab: camera <p> viewer <p>: <path> <connect>/<first> (<failure>)` lines.
fn parse_lab(text: &str) -> Vec<LabCell> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("lab: camera ")?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let (camera, viewer) = (fields.first()?, fields.get(2)?.trim_end_matches(':'));
            let path = fields.get(3)?.trim_end_matches('!');
            let first_frame_ms = fields
                .get(4)
                .and_then(|times| times.split_once('/'))
                .and_then(|(_, first)| first.parse().ok());
            Some(LabCell {
                camera: (*camera).to_owned(),
                viewer: viewer.to_owned(),
                path: path.to_owned(),
                first_frame_ms,
            })
        })
        .collect()
}

/// Time to first frame in the NAT lab (100 ms RTT between the peers), by pair, against
/// the targets of 4 RTT direct and 6 RTT relayed. Needs root (network namespaces).
fn lab_row(summary: &mut String, details: &mut String) -> anyhow::Result<()> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        writeln!(
            summary,
            "| NAT lab, time to first frame | not run (needs root) | – | – |"
        )?;
        return Ok(());
    }
    eprintln!("NAT lab: the endpoint matrix…");
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "test",
            "-p",
            "sightwire-examples",
            "--test",
            "lab",
            "--",
            "endpoint_matrix",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CI", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .context("cargo test --test lab")?;
    let text = String::from_utf8_lossy(&output.stderr);
    let cells = parse_lab(&text);
    writeln!(
        details,
        "\n### NAT lab: time to first frame by pair (ms after the viewer started; 100 ms RTT between the peers)\n"
    )?;
    writeln!(
        details,
        "| camera NAT | viewer NAT | path | first frame ms |\n| --- | --- | --- | --- |"
    )?;
    for cell in &cells {
        writeln!(
            details,
            "| {} | {} | {} | {} |",
            cell.camera,
            cell.viewer,
            cell.path,
            cell.first_frame_ms.map_or("–".into(), |ms| ms.to_string())
        )?;
    }
    for (path, target_ms, rtts) in [("direct", 400.0, 4), ("relay", 600.0, 6)] {
        let worst = cells
            .iter()
            .filter(|cell| cell.path == path)
            .filter_map(|cell| cell.first_frame_ms)
            .max()
            .map(|ms| ms as f64);
        writeln!(
            summary,
            "| NAT lab, slowest first frame, {path} pairs | {} ms | {target_ms:.0} ms ({rtts} RTT target) | {} |",
            fmt_opt(worst, 0),
            ratio(worst, Some(target_ms)),
        )?;
    }
    if !output.status.success() || cells.is_empty() {
        writeln!(
            summary,
            "| NAT lab run | failed or printed no cells: see the test's output | – | – |"
        )?;
    }
    Ok(())
}

/// Criterion's estimate (ns) of each benchmark id a `cargo bench` run printed.
fn criterion(bench: &str, filter: &str, quick: bool) -> anyhow::Result<Vec<(String, f64)>> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args([
        "bench",
        "-p",
        "sightwire-benches",
        "--bench",
        bench,
        "--",
        filter,
        "--noplot",
    ]);
    if quick {
        command.args(["--warm-up-time", "0.5", "--measurement-time", "1"]);
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .context("cargo bench")?;
    if !output.status.success() {
        bail!("cargo bench --bench {bench} failed");
    }
    Ok(parse_criterion(&String::from_utf8_lossy(&output.stdout)))
}

/// `(id, estimate in ns)` from criterion's text output: an id line, then
/// `time:   [low est high]`.
fn parse_criterion(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut id: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed
            .split_once("time:")
            .map(|(before, rest)| (before.trim(), rest))
        {
            let (before, rest) = rest;
            let name = if before.is_empty() {
                id.take()
            } else {
                Some(before.to_owned())
            };
            let values: Vec<&str> = rest
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split_whitespace()
                .collect();
            if let (Some(name), Some(value), Some(unit)) = (name, values.get(2), values.get(3)) {
                let scale = match *unit {
                    "ps" => 1e-3,
                    "ns" => 1.0,
                    "µs" | "us" => 1e3,
                    "ms" => 1e6,
                    "s" => 1e9,
                    _ => continue,
                };
                if let Ok(value) = value.parse::<f64>() {
                    out.push((name, value * scale));
                }
            }
        } else if !trimmed.is_empty() && !line.starts_with(' ') && !trimmed.contains(':') {
            id = Some(trimmed.to_owned());
        }
    }
    out
}

fn report(args: &Args) -> anyhow::Result<()> {
    own_path()?;
    let skip = |row: &str| args.skip.iter().any(|s| s == row);
    let seconds = args.seconds.unwrap_or(if args.quick { 1.0 } else { 5.0 });
    let sweep: Vec<f64> = if !args.sweep_mbps.is_empty() {
        args.sweep_mbps.clone()
    } else if args.quick {
        vec![100.0, 400.0]
    } else {
        vec![250.0, 500.0, 750.0, 1000.0, 1250.0, 1500.0, 1750.0, 2000.0]
    };
    let started = std::time::SystemTime::now();
    let mut summary = String::new();
    let mut details = String::new();
    let command_line = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    writeln!(summary, "| row | Sightwire | reference | ratio |")?;
    writeln!(summary, "| --- | --- | --- | --- |")?;

    if !skip("hotpath") {
        eprintln!("hot path: session seal + open vs raw ChaCha20-Poly1305…");
        let estimates = criterion("session", "session/seal\\+open", args.quick)?;
        writeln!(
            details,
            "\n### Hot path: seal + open of one packet (criterion, ns)\n"
        )?;
        writeln!(details, "| benchmark | ns |\n| --- | --- |")?;
        for (id, ns) in &estimates {
            writeln!(details, "| {id} | {ns:.0} |")?;
        }
        for size in ["200", "1200"] {
            let find = |name: &str| {
                estimates
                    .iter()
                    .find(|(id, _)| id.contains(name) && id.ends_with(&format!("/{size}")))
                    .map(|(_, ns)| *ns)
            };
            let ours = find("/sightwire/");
            let raw = find("/raw-ring/");
            writeln!(
                summary,
                "| seal + open, {size} B packet | {} ns | {} ns (raw ChaCha20-Poly1305, ring, key expanded once) | {} |",
                fmt_opt(ours, 0),
                fmt_opt(raw, 0),
                ratio(ours, raw)
            )?;
        }
    }

    if !skip("stream") {
        eprintln!("stream sweep: raw UDP…");
        let raw: Vec<Point> = sweep
            .iter()
            .map(|&mbps| raw_udp(mbps, seconds))
            .collect::<anyhow::Result<_>>()?;
        let srt_points = if skip("srt") {
            Vec::new()
        } else {
            eprintln!("stream sweep: SRT…");
            match srt::available() {
                Ok(()) => sweep
                    .iter()
                    .map(|&mbps| srt::run(mbps, seconds))
                    .collect::<anyhow::Result<_>>()?,
                Err(error) => {
                    eprintln!("SRT row left out: {error:#}");
                    Vec::new()
                }
            }
        };
        eprintln!("stream sweep: Sightwire direct…");
        let direct = sightwire_stream("direct", &sweep, seconds, true)?;
        let relay_sweep: Vec<f64> = if args.quick {
            vec![20.0]
        } else {
            vec![10.0, 20.0, 30.0, 40.0, 60.0]
        };
        eprintln!("stream sweep: Sightwire relayed…");
        let relayed = sightwire_stream("relay", &relay_sweep, seconds, true)?;
        let systems = [
            ("Sightwire direct", &direct),
            ("Sightwire relayed (relay cap 40 Mbit/s)", &relayed),
            ("raw UDP", &raw),
            ("SRT", &srt_points),
        ];
        writeln!(
            details,
            "\n### Stream on loopback, offered rate swept ({seconds} s per rate)\n"
        )?;
        writeln!(
            details,
            "| system | offered Mbit/s | delivered Mbit/s | lossless | CPU s/GB (both ends) | detail |"
        )?;
        writeln!(details, "| --- | --- | --- | --- | --- | --- |")?;
        for (name, points) in systems {
            for p in points.iter() {
                writeln!(
                    details,
                    "| {name} | {:.0} | {:.1} | {} | {} | {} |",
                    p.offered_mbps,
                    p.delivered_mbps,
                    if p.lossless { "yes" } else { "no" },
                    fmt_opt(p.cpu_seconds_per_gb, 2),
                    p.note
                )?;
            }
        }
        let ceil =
            |points: &[Point]| ceiling(points).map(|p| (p.offered_mbps, p.cpu_seconds_per_gb));
        let top = sweep.iter().copied().fold(f64::MIN, f64::max);
        writeln!(
            details,
            "\nA ceiling equal to the sweep's top rate ({top:.0} Mbit/s) means at least that: \
             the sweep did not go higher."
        )?;
        let ours = ceil(&direct);
        for (name, reference) in [
            ("raw UDP, 2 processes", ceil(&raw)),
            ("SRT (srt-live-transmit)", ceil(&srt_points)),
        ] {
            writeln!(
                summary,
                "| lossless ceiling, direct, vs {name} | {} Mbit/s | {} Mbit/s | {} |",
                fmt_opt(ours.map(|o| o.0), 0),
                fmt_opt(reference.map(|r| r.0), 0),
                ratio(ours.map(|o| o.0), reference.map(|r| r.0)),
            )?;
            writeln!(
                summary,
                "| CPU s/GB at the ceiling, vs {name} | {} | {} | {} |",
                fmt_opt(ours.and_then(|o| o.1), 2),
                fmt_opt(reference.and_then(|r| r.1), 2),
                ratio(ours.and_then(|o| o.1), reference.and_then(|r| r.1)),
            )?;
        }
        let relayed_ceiling = ceil(&relayed);
        writeln!(
            summary,
            "| lossless ceiling, relayed | {} Mbit/s | 40 Mbit/s (the relay's per-allocation cap) | {} |",
            fmt_opt(relayed_ceiling.map(|o| o.0), 0),
            ratio(relayed_ceiling.map(|o| o.0), Some(40.0)),
        )?;
    }

    if !skip("bottleneck") {
        eprintln!("bottleneck: through the relay's policer…");
        let points = sightwire_stream("relay", &[60.0], seconds, false)?;
        let delivered = points.first().map(|p| p.delivered_mbps);
        writeln!(
            summary,
            "| bottleneck: complete frames delivered through the relay's 40 Mbit/s policer at 60 offered, fixed-rate camera | {} Mbit/s | 40 Mbit/s (capacity) | {} |",
            fmt_opt(delivered, 1),
            ratio(delivered, Some(40.0)),
        )?;
    }

    if !skip("relay") {
        let streams = if args.quick { 10 } else { 100 };
        eprintln!("relay: {streams} streams of 4 Mbit/s…");
        let trivial = relay_load::run(
            relay_load::Forwarder::Trivial,
            streams,
            4.0,
            seconds.max(2.0),
        )?;
        let relay = relay_load::run(relay_load::Forwarder::Relay, streams, 4.0, seconds.max(2.0))?;
        // The same relay with batching off, in the same run: the before/after figure of
        // batched socket I/O (recvmmsg + GSO/GRO through quinn-udp).
        let plain = relay_load::run(
            relay_load::Forwarder::RelayPlain,
            streams,
            4.0,
            seconds.max(2.0),
        )?;
        writeln!(
            details,
            "\n### {streams} concurrent 4 Mbit/s streams through one forwarder\n"
        )?;
        writeln!(
            details,
            "| forwarder | frames | by the {} ms deadline | forwarded Gbit/s | forwarder CPU s | cores per Gbit/s |",
            relay_load::DEADLINE.as_millis()
        )?;
        writeln!(details, "| --- | --- | --- | --- | --- | --- |")?;
        for run in [&relay, &plain, &trivial] {
            writeln!(
                details,
                "| {} | {} | {} ({:.2} %) | {:.3} | {} | {} |",
                run.forwarder,
                run.frames,
                run.frames_by_deadline,
                100.0 * run.frames_by_deadline as f64 / run.frames.max(1) as f64,
                run.forwarded_gbps,
                fmt_opt(run.forwarder_cpu_seconds, 2),
                fmt_opt(run.cores_per_gbps, 3),
            )?;
        }
        writeln!(
            summary,
            "| relay: {streams} × 4 Mbit/s, CPU cores per Gbit/s forwarded | {} | {} (trivial UDP forwarder) | {} |",
            fmt_opt(relay.cores_per_gbps, 3),
            fmt_opt(trivial.cores_per_gbps, 3),
            ratio(relay.cores_per_gbps, trivial.cores_per_gbps),
        )?;
        writeln!(
            summary,
            "| relay: {streams} × 4 Mbit/s, batched I/O (recvmmsg + GSO), CPU cores per Gbit/s forwarded | {} | {} (the same relay, one datagram per syscall) | {} |",
            fmt_opt(relay.cores_per_gbps, 3),
            fmt_opt(plain.cores_per_gbps, 3),
            ratio(relay.cores_per_gbps, plain.cores_per_gbps),
        )?;
        let pct = |r: &relay_load::RelayLoad| {
            100.0 * r.frames_by_deadline as f64 / r.frames.max(1) as f64
        };
        writeln!(
            summary,
            "| relay: {streams} × 4 Mbit/s, frames by the {} ms deadline | {:.2} % | {:.2} % | {} |",
            relay_load::DEADLINE.as_millis(),
            pct(&relay),
            pct(&trivial),
            ratio(Some(pct(&relay)), Some(pct(&trivial))),
        )?;
    }

    if !skip("rendezvous") {
        let devices = args
            .rendezvous_devices
            .unwrap_or(if args.quick { 500 } else { 20_000 });
        eprintln!("rendezvous: {devices} devices…");
        let child = Command::new(sibling("rendezvous-load")?)
            .args([
                &format!("--devices={devices}"),
                "--hold-secs=30",
                "--connects=100",
                "--viewers=5",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start rendezvous-load (build it with the release benches)")?;
        let output = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        writeln!(
            details,
            "\n### Rendezvous: {devices} simulated devices on one node (`rendezvous-load`)\n"
        )?;
        for line in text.lines().filter(|l| l.starts_with('|')) {
            writeln!(details, "{line}")?;
        }
        let per_device = text
            .lines()
            .find(|l| l.starts_with("| server memory per device"))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|v| v.trim().trim_end_matches(" bytes").parse::<f64>().ok());
        writeln!(
            summary,
            "| rendezvous: server memory per online device at {devices} devices | {} B | 1024 B (the 1 KB budget of a 1 M-device node) | {} |",
            fmt_opt(per_device, 0),
            ratio(per_device, Some(1024.0)),
        )?;
    }

    if !skip("lab") {
        lab_row(&mut summary, &mut details)?;
    }

    let elapsed = started.elapsed().map_or(0.0, |d| d.as_secs_f64());
    let mut out = String::new();
    writeln!(out, "# Benchmarks\n")?;
    writeln!(
        out,
        "Regenerate with `benches/run` (it installs srt-tools if missing and passes its \
         arguments on). What the stream rows measure is documented with the `throughput` \
         tool in [benches/HISTORY.md](benches/HISTORY.md), with the figures of earlier stops.\n"
    )?;
    writeln!(
        out,
        "Generated by `cargo run --release -p sightwire-benches --bin bench-report -- {command_line}` \
         in {elapsed:.0} s. Every figure is next to its reference, measured in the same run on the \
         same machine; the ratio is Sightwire / reference. Machine: {}.\n",
        machine()
    )?;
    out.push_str(&summary);
    writeln!(out, "\n## Details")?;
    out.push_str(&details);
    if args.output == "-" {
        print!("{out}");
    } else {
        std::fs::write(&args.output, out).with_context(|| format!("write {}", args.output))?;
        eprintln!("wrote {}", args.output);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criterion_output_is_read_with_units() {
        let text = "session/seal+open/sightwire/1200\n                        time:   [1.2000 µs 1.2500 µs 1.3000 µs]\n                        thrpt:  [900 MiB/s 950 MiB/s 1000 MiB/s]\nsession/seal+open/raw-ring/1200\n                        time:   [800.00 ns 810.50 ns 820.00 ns]\n";
        let parsed = parse_criterion(text);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0, "session/seal+open/sightwire/1200");
        assert!((parsed[0].1 - 1250.0).abs() < 1e-6);
        assert!((parsed[1].1 - 810.5).abs() < 1e-6);
    }

    #[test]
    fn lab_lines_give_their_cells() {
        let text = "noise\nlab: camera      home viewer symmetric: relay 530/572 (None)\nlab: camera cgnat viewer home: FAILED (Some(\"timeout\"))\nlab: camera home viewer home: direct! 510/- (None)\n";
        let cells = parse_lab(text);
        assert_eq!(cells.len(), 3);
        assert_eq!(
            (
                cells[0].camera.as_str(),
                cells[0].viewer.as_str(),
                cells[0].path.as_str(),
                cells[0].first_frame_ms
            ),
            ("home", "symmetric", "relay", Some(572))
        );
        assert_eq!(
            (cells[1].path.as_str(), cells[1].first_frame_ms),
            ("FAILED", None)
        );
        assert_eq!(
            (cells[2].path.as_str(), cells[2].first_frame_ms),
            ("direct", None)
        );
    }

    #[test]
    fn the_ceiling_stops_at_the_first_loss() {
        let point = |offered_mbps, lossless| Point {
            offered_mbps,
            delivered_mbps: offered_mbps,
            lossless,
            cpu_seconds_per_gb: None,
            note: String::new(),
        };
        let points = [
            point(500.0, true),
            point(250.0, true),
            point(1000.0, false),
            point(1500.0, true),
        ];
        assert_eq!(ceiling(&points).map(|p| p.offered_mbps), Some(500.0));
        assert!(ceiling(&[point(250.0, false)]).is_none());
    }
}
