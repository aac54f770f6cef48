//! `footprint`: what a camera costs, measured on the real example binaries (issue 16).
//!
//! Starts an issuer, a rendezvous and a relay in this process on loopback, then the
//! example `camera` as its own process (synthetic source) and, for each count in
//! `--viewers`, that many example `viewer` processes watching it for `--seconds`. It
//! reports the camera's resident memory (`VmRSS` at the end of the run and the peak,
//! `VmHWM`, from `/proc`), its CPU time over the streaming window (user + system, from
//! `/proc/<pid>/stat`) per Mbit/s it sent (the viewers' received bytes), and the stripped
//! sizes of the camera and viewer binaries, and of the C SDK's static library
//! (`libsightwire_ffi.a`, debug information stripped: its symbols are what firmware links
//! against) and of the two C example cameras linked with it (`cc -O2 -Wl,--gc-sections`,
//! stripped: what the SDK adds to a firmware image) when it is built.
//!
//! ```text
//! cargo build --release -p sightwire-examples --bins -p sightwire-ffi -p sightwire-benches --bin footprint
//! target/release/footprint --viewers 1,8 --seconds 10
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use sightwire_benches::{Killed, cpu_seconds, machine, memory_kb};
use sightwire_examples::local::LocalNetwork;

/// Measure the example camera's memory, CPU and binary size on loopback.
#[derive(Parser, Debug)]
struct Args {
    /// Viewer counts to measure, each with a fresh camera (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    viewers: Vec<usize>,
    /// Seconds each viewer streams.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Directory of the `camera` and `viewer` binaries (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

const PASSWORD: &str = "footprint-password";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = match args.bin_dir.clone() {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_path_buf(),
    };
    let camera_bin = bin_dir.join("camera");
    let viewer_bin = bin_dir.join("viewer");
    for bin in [&camera_bin, &viewer_bin] {
        if !bin.exists() {
            bail!(
                "{} is missing: cargo build --release -p sightwire-examples --bins",
                bin.display()
            );
        }
    }
    println!("machine: {}", machine());
    println!(
        "stripped size: camera {} bytes, viewer {} bytes",
        stripped_size(&camera_bin, "--strip-all")?,
        stripped_size(&viewer_bin, "--strip-all")?
    );
    let staticlib = bin_dir.join("libsightwire_ffi.a");
    if staticlib.exists() {
        println!(
            "C SDK static library (strip --strip-debug): {} bytes",
            stripped_size(&staticlib, "--strip-debug")?
        );
        for example in ["camera", "sans_io_camera"] {
            println!(
                "C example {example} linked with it (-O2, --gc-sections, stripped): {} bytes",
                c_example_size(example, &staticlib)?
            );
        }
    } else {
        println!("C SDK static library: not built (cargo build --release -p sightwire-ffi)");
    }
    println!(
        "\n| viewers | camera VmRSS at end | camera VmHWM (peak) | camera CPU (share of one core) | sent Mbit/s (all viewers) | camera CPU ms per Mbit sent | frames per viewer |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let runtime = tokio::runtime::Runtime::new()?;
    for &count in &args.viewers {
        let row = runtime.block_on(measure(&camera_bin, &viewer_bin, count, args.seconds))?;
        let window = row.window.as_secs_f64();
        let megabits = (row.sent_mbps * window).max(f64::EPSILON);
        println!(
            "| {count} | {} kB | {} kB | {:.2} s in {window:.1} s ({:.1} %) | {:.2} | {:.2} | {} |",
            row.rss_kb,
            row.hwm_kb,
            row.cpu_seconds,
            100.0 * row.cpu_seconds / window,
            row.sent_mbps,
            1000.0 * row.cpu_seconds / megabits,
            row.frames_per_viewer
        );
    }
    Ok(())
}

struct Row {
    rss_kb: u64,
    hwm_kb: u64,
    cpu_seconds: f64,
    sent_mbps: f64,
    window: Duration,
    frames_per_viewer: u64,
}

async fn measure(
    camera_bin: &Path,
    viewer_bin: &Path,
    viewers: usize,
    seconds: u64,
) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let network = LocalNetwork::start(&dir.path().join("registry.sqlite")).await?;
    let issuer_secret = dir.path().join("issuer.secret");
    std::fs::write(&issuer_secret, hex(&network.issuer.seed()))?;
    let device_id = sightwire_examples::identity::random_local_id();
    let rendezvous = network.rendezvous.address.to_string();
    let rendezvous_key = hex(network.rendezvous.public_key.as_bytes());
    let camera_state = dir.path().join("camera");
    let camera = Killed(Some(
        Command::new(camera_bin)
            .args([
                "--rendezvous",
                &rendezvous,
                "--rendezvous-key",
                &rendezvous_key,
            ])
            .args(["--rendezvous-stream-port", "0", "--password", PASSWORD])
            .args(["--source", "synthetic", "--no-qr", "--device-id"])
            .arg(device_id.to_string())
            .arg("--issuer-secret")
            .arg(&issuer_secret)
            .arg("--state-dir")
            .arg(&camera_state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting camera")?,
    ));
    // Registered: give it the time a registration takes on loopback.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = camera.id();
    let issuer_key = hex(&network.issuer.public().to_bytes());
    let mut children = Vec::new();
    for index in 0..viewers {
        let state = dir.path().join(format!("viewer-{index}"));
        children.push(Killed(Some(
            Command::new(viewer_bin)
                .args([
                    "--rendezvous",
                    &rendezvous,
                    "--rendezvous-key",
                    &rendezvous_key,
                ])
                .args(["--rendezvous-stream-port", "0", "--issuer-key", &issuer_key])
                .args(["--device", &device_id.to_string(), "--password", PASSWORD])
                .args(["--out", "/dev/null", "--seconds", &seconds.to_string()])
                .arg("--state-dir")
                .arg(&state)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting viewer")?,
        )));
    }
    // The window starts once every viewer had the time to connect (well under 2 s on
    // loopback) and ends before the first one stops.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let cpu_before = cpu_seconds(pid)?;
    let window = Duration::from_secs(seconds.saturating_sub(3).max(1));
    tokio::time::sleep(window).await;
    let cpu = cpu_seconds(pid)? - cpu_before;
    let window = started.elapsed();
    let (rss_kb, hwm_kb) = memory_kb(pid)?;
    let mut bytes = 0u64;
    let mut streaming_ms = 0u64;
    let mut frames = u64::MAX;
    for child in children {
        let output = child.take().wait_with_output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let summary = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|v| v["event"] == "summary")
            .context("a viewer printed no summary")?;
        bytes += summary["bytes"].as_u64().unwrap_or(0);
        streaming_ms = streaming_ms.max(summary["streaming_ms"].as_u64().unwrap_or(0));
        frames = frames.min(summary["frames"].as_u64().unwrap_or(0));
    }
    drop(camera);
    network.shutdown().await;
    let sent_mbps = bytes as f64 * 8.0 / (streaming_ms.max(1) as f64 / 1000.0) / 1e6;
    Ok(Row {
        rss_kb,
        hwm_kb,
        cpu_seconds: cpu,
        sent_mbps,
        window,
        frames_per_viewer: frames,
    })
}

/// Size of a stripped copy of `bin`.
/// The size of a copy of `bin` after `strip <how>`.
fn stripped_size(bin: &Path, how: &str) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("stripped");
    std::fs::copy(bin, &copy)?;
    let status = Command::new("strip")
        .arg(how)
        .arg(&copy)
        .status()
        .context("running strip")?;
    if !status.success() {
        bail!("strip failed on {}", bin.display());
    }
    Ok(std::fs::metadata(&copy)?.len())
}

/// Links `examples/c/<name>.c` against `staticlib` with the system C compiler and
/// returns the stripped size.
fn c_example_size(name: &str, staticlib: &Path) -> anyhow::Result<u64> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir()?;
    let binary = dir.path().join(name);
    let status = Command::new("cc")
        .args(["-std=c11", "-O2", "-I"])
        .arg(root.join("crates/sightwire-ffi/include"))
        .arg(root.join(format!("examples/c/{name}.c")))
        .arg(staticlib)
        .args(["-lpthread", "-ldl", "-lm", "-Wl,--gc-sections", "-o"])
        .arg(&binary)
        .status()
        .context("running cc")?;
    if !status.success() {
        bail!("cc failed on examples/c/{name}.c");
    }
    stripped_size(&binary, "--strip-all")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
