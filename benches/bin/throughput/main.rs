//! `throughput`: live video through the real components on loopback, one table row per
//! offered rate (issue 13, `BENCHMARKS.md`).
//!
//! Each rate gets a fresh deployment in this process — issuer, rendezvous, relay with its
//! default cap, a `Device` and a `ViewerEndpoint` — all over real UDP sockets on
//! 127.0.0.1. A camera task offers a synthetic stream (a keyframe every `--gop` frames,
//! fixed sizes, frame rate = offered rate ÷ mean frame size) for `--seconds`; a viewer
//! task records every frame it receives. The rows say what arrived, how much of it a
//! decoder could use, how late, and — from the media layer's counters, the relay's
//! counters and the kernel's per-socket drop counters — where the rest was lost.
//!
//! ```text
//! cargo run --release -p sightwire-benches --bin throughput -- --path relay --offered-mbps 40,60,100 --seconds 5
//! cargo run --release -p sightwire-benches --bin throughput -- --path relay --adapt
//! cargo run --release -p sightwire-benches --bin throughput -- --path direct
//! ```

mod run;
mod split;
mod tally;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use sightwire_relay::RelayConfig;

use crate::run::{FrameShape, PathMode, RunConfig, RunResult};
use sightwire_benches::kernel::{CpuTimes, or_na};

/// Largest frame rate the camera task is asked to keep (a frame every 10 µs).
const MAX_FPS: f64 = 100_000.0;
/// Longest run per rate.
const MAX_SECONDS: f64 = 600.0;
/// Highest offered rate accepted, Mbit/s.
const MAX_OFFERED_MBPS: f64 = 100_000.0;
/// Offered rates when `--offered-mbps` is not given.
const RELAY_RATES: &[f64] = &[40.0, 60.0, 100.0];
/// See [`RELAY_RATES`].
const DIRECT_RATES: &[f64] = &[300.0, 600.0, 1000.0, 1500.0, 2000.0];

/// Live video through the real Sightwire components on loopback: offered vs delivered
/// rate, frames delivered and decodable, latency, and where losses happened.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Path the stream must take: through the relay (default cap), or direct.
    #[arg(long, value_enum, default_value = "relay")]
    path: PathMode,
    /// Offered rates in Mbit/s, comma-separated [default: relay 40,60,100; direct
    /// 300,600,1000,1500,2000].
    #[arg(long, value_delimiter = ',', value_parser = parse_mbps)]
    offered_mbps: Vec<f64>,
    /// Seconds of stream per rate.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    seconds: f64,
    /// Scale frame sizes to the device's `Event::TargetBitrate`, as an encoder would
    /// (starting from the library's initial target; the frame rate stays, and no frame
    /// shrinks below 64 bytes, so at thousands of frames per second that floor alone can
    /// exceed a low target). Off: frames keep their size.
    #[arg(long)]
    adapt: bool,
    /// Bytes of a keyframe.
    #[arg(long, default_value_t = 120_000, value_parser = parse_frame_bytes)]
    keyframe_bytes: usize,
    /// Bytes of every other frame.
    #[arg(long, default_value_t = 20_000, value_parser = parse_frame_bytes)]
    delta_bytes: usize,
    /// A keyframe every this many frames.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    gop: u32,
    /// UDP socket buffer size the device and viewer ask the kernel for, each way (the
    /// kernel caps it at net.core.rmem_max/wmem_max and reports double).
    #[arg(long, default_value_t = sightwire::DEFAULT_SOCKET_BUFFER_BYTES, value_parser = parse_buffer_bytes)]
    socket_buffer_bytes: usize,
    /// Diagnosis only: the media layer's pacing factor in percent of the target bitrate
    /// (0 turns pacing off) [default: the library's].
    #[arg(long)]
    pacing_percent: Option<u32>,
    /// Diagnosis only: the media layer's highest target bitrate, Mbit/s [default: the
    /// library's].
    #[arg(long, value_parser = parse_mbps)]
    max_bitrate_mbps: Option<f64>,
    /// 1: everything in this process; 2: the viewer in a second process (this binary,
    /// started by this one), so camera and viewer do not share a runtime, as on two
    /// machines.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    processes: u8,
    /// Print one JSON object per rate (the summary `bench-report` reads) instead of the
    /// Markdown report.
    #[arg(long)]
    json: bool,
    /// Internal: run as the viewer process of `--processes 2`, set up by this JSON.
    #[arg(long, hide = true)]
    viewer_child: Option<String>,
}

fn parse_number(text: &str, what: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of {what}"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("{what} must be positive, got `{text}`"));
    }
    Ok(value)
}

fn parse_mbps(text: &str) -> Result<f64, String> {
    let value = parse_number(text, "Mbit/s")?;
    if value > MAX_OFFERED_MBPS {
        return Err(format!(
            "{value} Mbit/s is above the {MAX_OFFERED_MBPS} limit"
        ));
    }
    Ok(value)
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let value = parse_number(text, "seconds")?;
    if value > MAX_SECONDS {
        return Err(format!("{value} s is above the {MAX_SECONDS} s limit"));
    }
    Ok(value)
}

fn parse_frame_bytes(text: &str) -> Result<usize, String> {
    let limit = sightwire::default_media_config().max_frame_size;
    let value: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of bytes"))?;
    if !(1..=limit).contains(&value) {
        return Err(format!(
            "a frame must be 1..={limit} bytes (the media layer's max_frame_size), got {value}"
        ));
    }
    Ok(value)
}

fn parse_buffer_bytes(text: &str) -> Result<usize, String> {
    let value: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of bytes"))?;
    if !(1024..=1 << 30).contains(&value) {
        return Err(format!("socket buffers must be 1 KiB..=1 GiB, got {value}"));
    }
    Ok(value)
}

impl Args {
    /// The media parameters: the library's defaults with the diagnostic overrides.
    fn media(&self) -> anyhow::Result<sightwire_media::Config> {
        let mut media = sightwire::default_media_config();
        if let Some(percent) = self.pacing_percent {
            media.pacing_factor_percent = percent;
        }
        if let Some(mbps) = self.max_bitrate_mbps {
            media.max_bitrate_bps = (mbps * 1e6) as u64;
        }
        media.validate().map_err(|error| {
            anyhow::anyhow!(
                "--pacing-percent / --max-bitrate-mbps give an invalid media configuration: \
                 {error} (the initial target is {} Mbit/s)",
                mbps(media.initial_bitrate_bps as f64)
            )
        })?;
        Ok(media)
    }

    /// The runs the arguments ask for, or why they make no sense together.
    fn runs(&self) -> anyhow::Result<Vec<RunConfig>> {
        let media = self.media()?;
        let shape = FrameShape {
            keyframe_bytes: self.keyframe_bytes,
            delta_bytes: self.delta_bytes,
            gop: self.gop,
        };
        let rates = if self.offered_mbps.is_empty() {
            match self.path {
                PathMode::Relay => RELAY_RATES,
                PathMode::Direct => DIRECT_RATES,
            }
        } else {
            &self.offered_mbps[..]
        };
        rates
            .iter()
            .map(|&mbps| {
                let offered_bps = mbps * 1e6;
                let fps = shape.fps(offered_bps);
                if fps > MAX_FPS {
                    bail!(
                        "{mbps} Mbit/s with these frame sizes is {fps:.0} frames/s, above the \
                         {MAX_FPS} the camera task can schedule: use larger frames"
                    );
                }
                if (self.seconds * fps).floor() < 1.0 {
                    bail!(
                        "{mbps} Mbit/s for {} s is less than one frame ({fps:.2} frames/s): \
                         run longer or use smaller frames",
                        self.seconds
                    );
                }
                Ok(RunConfig {
                    path: self.path,
                    offered_bps,
                    seconds: self.seconds,
                    adapt: self.adapt,
                    shape,
                    socket_buffer_bytes: self.socket_buffer_bytes,
                    media: media.clone(),
                    viewer_process: self.processes == 2,
                })
            })
            .collect()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match &args.viewer_child {
        Some(setup) => split::viewer_main(setup).await,
        None => measure(&args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // `{:#}`: the error and its causes on one line, never a backtrace.
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every rate and prints the report.
async fn measure(args: &Args) -> anyhow::Result<()> {
    let runs = args.runs()?;
    let mut results = Vec::with_capacity(runs.len());
    for config in &runs {
        eprintln!(
            "running {} at {} Mbit/s for {} s{}…",
            config.path.name(),
            mbps(config.offered_bps),
            config.seconds,
            if config.adapt { " (adapting)" } else { "" }
        );
        let result = run::run(config).await?;
        eprintln!(
            "  delivered {:.1} % of {} frames",
            result.tally.delivered_percent(),
            result.tally.frames
        );
        results.push(result);
    }
    if args.json {
        for (config, result) in runs.iter().zip(&results) {
            println!("{}", summary(config, result));
        }
    } else {
        print!("{}", report(args, &runs, &results));
    }
    Ok(())
}

/// One run's figures as one JSON line: what `bench-report` puts side by side.
fn summary(config: &RunConfig, result: &RunResult) -> serde_json::Value {
    let tally = &result.tally;
    let window = result.window.as_secs_f64();
    let cpu = |times: Option<CpuTimes>| times.map(|t| t.total().as_secs_f64());
    let cpu_seconds = match (cpu(result.cpu), cpu(result.viewer_cpu)) {
        (Some(first), Some(viewer)) => Some(first + viewer),
        (first, None) => first,
        (None, Some(_)) => None,
    };
    let delivered_gb = tally.delivered_bytes as f64 / 1e9;
    serde_json::json!({
        "path": config.path.name(),
        "processes": if config.viewer_process { 2 } else { 1 },
        "offered_mbps": config.offered_bps / 1e6,
        "seconds": window,
        "frames": tally.frames,
        "delivered_frames": tally.delivered,
        "decodable_frames": tally.decodable,
        "delivered_percent": tally.delivered_percent(),
        "decodable_percent": tally.decodable_percent(),
        "sent_mbps": tally.bytes as f64 * 8.0 / window / 1e6,
        "delivered_mbps": tally.delivered_bytes as f64 * 8.0 / window / 1e6,
        "latency_p50_ms": tally.latency_p50.map(|d| d.as_secs_f64() * 1e3),
        "latency_p99_ms": tally.latency_p99.map(|d| d.as_secs_f64() * 1e3),
        "cpu_seconds": cpu_seconds,
        "cpu_seconds_per_gb": cpu_seconds
            .filter(|_| delivered_gb > 0.0)
            .map(|seconds| seconds / delivered_gb),
        "load": result.load,
    })
}

/// Bits per second as Mbit/s with one decimal (whole numbers without).
fn mbps(bps: f64) -> String {
    let value = bps / 1e6;
    if (value - value.round()).abs() < 1e-9 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn ms(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "–".to_owned(),
        |d| format!("{:.1}", d.as_secs_f64() * 1e3),
    )
}

/// CPU seconds, total (user + system) of this process, then of the viewer's if it has
/// its own: `3.5 (2.1 + 1.4) + 2.3 (1.5 + 0.8)`.
fn cpu_cell(result: &RunResult) -> String {
    let one = |cpu: CpuTimes| {
        format!(
            "{:.1} ({:.1} + {:.1})",
            cpu.total().as_secs_f64(),
            cpu.user.as_secs_f64(),
            cpu.system.as_secs_f64()
        )
    };
    match (result.cpu, result.viewer_cpu) {
        (Some(cpu), Some(viewer)) => format!("{} + {}", one(cpu), one(viewer)),
        (Some(cpu), None) => one(cpu),
        _ => "n/a".to_owned(),
    }
}

/// The whole report: the setup, then three Markdown tables.
fn report(args: &Args, runs: &[RunConfig], results: &[RunResult]) -> String {
    let mut out = String::new();
    let default_media = sightwire::default_media_config();
    let media = runs
        .first()
        .map_or(default_media.clone(), |r| r.media.clone());
    let relay = RelayConfig::default();
    let shape = runs.first().map(|r| r.shape);
    let _ = writeln!(
        out,
        "\nsightwire throughput: {} path, {} s per rate, camera {}; {} on {} CPUs, all on 127.0.0.1",
        args.path.name(),
        args.seconds,
        if args.adapt {
            "adapting frame sizes to Event::TargetBitrate"
        } else {
            "at fixed frame sizes (--adapt off)"
        },
        if args.processes == 2 {
            "two processes (camera, device and servers; viewer)"
        } else {
            "one process"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if let Some(shape) = shape {
        let _ = writeln!(
            out,
            "frames: {} B keyframe every {}th, {} B otherwise; fps = offered / {:.1} kbit mean frame",
            shape.keyframe_bytes,
            shape.gop,
            shape.delta_bytes,
            shape.mean_frame_bits() / 1e3
        );
    }
    if args.path == PathMode::Relay {
        let _ = writeln!(
            out,
            "relay cap (RelayConfig::default()): {} B/s = {} Mbit/s, burst {} B, both directions, whole datagrams",
            relay.rate_bytes_per_sec,
            mbps(relay.rate_bytes_per_sec as f64 * 8.0),
            relay.rate_burst_bytes
        );
    }
    let _ = writeln!(
        out,
        "media ({}): latency budget {} ms, target {}..{} Mbit/s from {} Mbit/s, pacing {} % of target, packets {} B",
        if media == default_media {
            "default_media_config()"
        } else {
            "default_media_config() WITH DIAGNOSTIC OVERRIDES"
        },
        media.latency_budget.as_millis(),
        mbps(media.min_bitrate_bps as f64),
        mbps(media.max_bitrate_bps as f64),
        mbps(media.initial_bitrate_bps as f64),
        media.pacing_factor_percent,
        media.max_packet_size
    );
    if let Some(first) = results.first() {
        let _ = writeln!(
            out,
            "socket buffers granted: device rcv {} snd {}, viewer rcv {} snd {} (asked {} each way; \
             net.core rmem_default {} rmem_max {} wmem_default {} wmem_max {}); the relay's socket keeps the kernel default",
            first.device_buffers.receive,
            first.device_buffers.send,
            first.viewer_buffers.receive,
            first.viewer_buffers.send,
            args.socket_buffer_bytes,
            or_na(sightwire_benches::kernel::net_core("rmem_default")),
            or_na(sightwire_benches::kernel::net_core("rmem_max")),
            or_na(sightwire_benches::kernel::net_core("wmem_default")),
            or_na(sightwire_benches::kernel::net_core("wmem_max")),
        );
    }

    let _ = writeln!(
        out,
        "\nsent = handed to Device::send_frame; delivered = complete frames the viewer application received \
         (both over the offered window); decodable = delivered with every frame back to a delivered keyframe; \
         latency = send_frame call to the viewer's Event::Frame; CPU s = the whole process (camera, device, \
         relay, rendezvous, viewer) during stream and drain, with --processes 2 that process + the viewer \
         process over its whole life, each as total (user + system); load = 1-minute load average after the run"
    );
    let _ = writeln!(
        out,
        "\n| offered Mbit/s | fps | sent Mbit/s | delivered Mbit/s | frames delivered % | decodable % | latency p50 ms | latency p99 ms | last TargetBitrate Mbit/s | path | CPU s | load |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"
    );
    for (config, result) in runs.iter().zip(results) {
        let window = result.window.as_secs_f64();
        let t = &result.tally;
        let paths = &result.paths;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
            mbps(config.offered_bps),
            result.fps,
            t.bytes as f64 * 8.0 / window / 1e6,
            t.delivered_bytes as f64 * 8.0 / window / 1e6,
            t.delivered_percent(),
            t.decodable_percent(),
            ms(t.latency_p50),
            ms(t.latency_p99),
            result
                .last_target_bps
                .map_or_else(|| "none".to_owned(), |b| format!("{:.2}", b as f64 / 1e6)),
            if paths.is_empty() {
                "?".to_owned()
            } else {
                paths.join("→")
            },
            cpu_cell(result),
            result
                .load
                .map_or_else(|| "n/a".to_owned(), |l| format!("{l:.1}")),
        );
    }

    let _ = writeln!(
        out,
        "\nFrames: where they went (device = sender's media counters, viewer = receiver's; \"unaccounted\" = accepted − delivered − late − evicted − skipped)\n"
    );
    let _ = writeln!(
        out,
        "| offered Mbit/s | camera frames | refused by sender | accepted by sender | delivered (viewer media) | late (deadline) | evicted (memory) | skipped awaiting keyframe | unaccounted | app received |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (config, result) in runs.iter().zip(results) {
        let sender = result.device_stats.as_ref().map(|s| &s.media);
        let receiver = result.viewer_stats.as_ref();
        let accepted = sender.map(|s| s.frames_sent);
        let refused = accepted.map(|a| result.tally.frames.saturating_sub(a));
        let unaccounted = match (accepted, receiver) {
            (Some(a), Some(r)) => Some(
                i128::from(a)
                    - i128::from(r.frames_delivered)
                    - i128::from(r.frames_late)
                    - i128::from(r.frames_evicted)
                    - i128::from(r.frames_discarded_awaiting_keyframe),
            ),
            _ => None,
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            mbps(config.offered_bps),
            result.tally.frames,
            or_na(refused),
            or_na(accepted),
            or_na(receiver.map(|r| r.frames_delivered)),
            or_na(receiver.map(|r| r.frames_late)),
            or_na(receiver.map(|r| r.frames_evicted)),
            or_na(receiver.map(|r| r.frames_discarded_awaiting_keyframe)),
            unaccounted.map_or_else(|| "n/a".to_owned(), |u| u.to_string()),
            result.tally.delivered + result.tally.bogus,
        );
    }

    let _ = writeln!(
        out,
        "\nPackets: where they went (fragments from the media counters: lost in transit = sent + retransmitted − received; \
         retransmissions not sent = NACKed fragments past their deadline, gone from history or over the retransmission budget; \
         relay and kernel socket drops are datagrams, relay counts both directions; pacing rate = the pacer's base rate at the end; \
         peak send = the highest fragment rate the device reported over one {} ms report interval)\n",
        media.report_interval.as_millis()
    );
    let _ = writeln!(
        out,
        "| offered Mbit/s | fragments sent | retransmitted | retransmissions not sent | fragments received | fragments lost in transit | NACKs sent | relay forwarded | relay dropped over cap | socket drops device / viewer / relay | pacing rate Mbit/s | peak send Mbit/s | TargetBitrate events |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (config, result) in runs.iter().zip(results) {
        let sender = result.device_stats.as_ref().map(|s| &s.media);
        let receiver = result.viewer_stats.as_ref();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {:.1} | {} |",
            mbps(config.offered_bps),
            or_na(sender.map(|s| s.fragments_sent)),
            or_na(sender.map(|s| s.fragments_retransmitted)),
            or_na(sender.map(|s| s.retransmissions_skipped + s.retransmissions_over_budget)),
            or_na(receiver.map(|r| r.fragments_received)),
            match (sender, receiver) {
                (Some(s), Some(r)) => (i128::from(s.fragments_sent)
                    + i128::from(s.fragments_retransmitted)
                    - i128::from(r.fragments_received))
                .to_string(),
                _ => "n/a".to_owned(),
            },
            or_na(receiver.map(|r| r.nacks_sent)),
            or_na(result.relay.as_ref().map(|r| r.forwarded_packets)),
            or_na(result.relay.as_ref().map(|r| r.dropped_over_limit)),
            or_na(result.drops.device),
            or_na(result.drops.viewer),
            or_na(result.drops.relay),
            sender.map_or_else(
                || "n/a".to_owned(),
                |s| format!("{:.1}", s.pacing_rate_bps as f64 / 1e6)
            ),
            result.peak_send_bps as f64 / 1e6,
            result.target_events,
        );
    }
    for (config, result) in runs.iter().zip(results) {
        if !result.settled {
            let _ = writeln!(
                out,
                "\nwarning: at {} Mbit/s the counters were still moving {} s after the last frame; \
                 the figures above are the last reported",
                mbps(config.offered_bps),
                run::MAX_DRAIN.as_secs()
            );
        }
    }
    let bogus: u64 = results.iter().map(|r| r.tally.bogus).sum();
    if bogus > 0 {
        let _ = writeln!(
            out,
            "\nwarning: the viewer received {bogus} frames the camera never sent or received twice"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_validated_with_clear_errors() {
        assert_eq!(parse_mbps("40"), Ok(40.0));
        assert!(parse_mbps("abc").unwrap_err().contains("not a number"));
        assert!(parse_mbps("-5").unwrap_err().contains("positive"));
        assert!(parse_mbps("0").unwrap_err().contains("positive"));
        assert!(parse_mbps("NaN").unwrap_err().contains("positive"));
        assert!(parse_mbps("inf").unwrap_err().contains("positive"));
        assert!(parse_mbps("1e9").unwrap_err().contains("limit"));
        assert!(parse_seconds("601").unwrap_err().contains("limit"));
        assert!(parse_frame_bytes("0").unwrap_err().contains("1..="));
        assert!(
            parse_frame_bytes("99999999")
                .unwrap_err()
                .contains("max_frame_size")
        );
        assert!(parse_buffer_bytes("12").unwrap_err().contains("1 KiB"));
    }

    #[test]
    fn command_lines_parse_or_explain() {
        let args = Args::try_parse_from([
            "throughput",
            "--path",
            "relay",
            "--offered-mbps",
            "40,60,100",
            "--seconds",
            "5",
        ])
        .expect("the documented command parses");
        let runs = args.runs().expect("valid runs");
        assert_eq!(runs.len(), 3);
        // 120 KB + 29 × 20 KB per 30 frames: 186.7 kbit per frame, 214 fps at 40 Mbit/s.
        assert!((runs[0].shape.fps(40e6) - 214.29).abs() < 0.01);

        let direct = Args::try_parse_from(["throughput", "--path", "direct"]).expect("parses");
        assert_eq!(direct.runs().expect("valid").len(), DIRECT_RATES.len());

        for bad in [
            &["throughput", "--path", "sideways"][..],
            &["throughput", "--offered-mbps", "40,,60"],
            &["throughput", "--offered-mbps", "fast"],
            &["throughput", "--seconds", "-1"],
            &["throughput", "--gop", "0"],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?} accepted");
        }
        // Valid numbers that make no sense together: a clear error, not a panic.
        let tiny = Args::try_parse_from([
            "throughput",
            "--offered-mbps",
            "90000",
            "--keyframe-bytes",
            "100",
            "--delta-bytes",
            "100",
        ])
        .expect("parses");
        assert!(tiny.runs().unwrap_err().to_string().contains("frames/s"));
        let short = Args::try_parse_from(["throughput", "--offered-mbps", "0.001"]).expect("ok");
        assert!(short.runs().unwrap_err().to_string().contains("one frame"));
        let low = Args::try_parse_from(["throughput", "--max-bitrate-mbps", "1"]).expect("ok");
        assert!(
            low.runs()
                .unwrap_err()
                .to_string()
                .contains("initial target")
        );
        let fast = Args::try_parse_from(["throughput", "--pacing-percent", "20000"]).expect("ok");
        assert!(fast.runs().unwrap_err().to_string().contains("pacing"));
        let off = Args::try_parse_from(["throughput", "--pacing-percent", "0"]).expect("ok");
        assert_eq!(off.runs().expect("valid")[0].media.pacing_factor_percent, 0);
    }
}
