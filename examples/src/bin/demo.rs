//! `demo`: the whole system on one machine, in one command.
//!
//! Starts an issuer, a rendezvous (with its embedded SQLite registry) and a relay on
//! loopback, provisions a camera (key at first boot, certificate from the issuer),
//! registers it, connects a viewer by the camera's label URI with the password, streams
//! a real H.264 clip (made with ffmpeg if it is installed, otherwise a synthetic stream)
//! at its frame rate, and prints progress and a summary. The received video is left in
//! `demo-out/received.h264`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use sightwire::{Credentials, Device, DeviceConfig, Event, PathPolicy, Target, Viewer};
use sightwire_examples::annexb::access_units;
use sightwire_examples::local::LocalNetwork;
use sightwire_examples::source::FrameSource;
use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint};

/// Run issuer, rendezvous, relay, camera and viewer on loopback and stream a clip.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Seconds of video to stream.
    #[arg(long, default_value_t = 6)]
    seconds: u32,
    /// Where to leave the clip, the received video and the registry.
    #[arg(long, default_value = "demo-out")]
    out_dir: PathBuf,
    /// Force the relay path (the camera and viewer never learn each other's address).
    #[arg(long)]
    relay_only: bool,
    /// Use the synthetic source even if ffmpeg is installed.
    #[arg(long)]
    synthetic: bool,
    /// The host name the camera and viewer are given for the rendezvous (it must resolve
    /// to loopback); empty: its IP address.
    #[arg(long, default_value = "localhost")]
    rendezvous_host: String,
}

const FPS: u32 = 30;
const PASSWORD: &str = "demo-password";

/// Makes a 1280×720, 30 fps H.264 clip with a keyframe every 2 s, if ffmpeg can.
fn make_clip(path: &Path, seconds: u32) -> Option<Vec<u8>> {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=1280x720:rate={FPS}"))
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        ])
        .args(["-g", &(2 * FPS).to_string(), "-bf", "0"])
        .args(["-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(path)
        .status()
        .ok()?;
    status.success().then(|| std::fs::read(path).ok()).flatten()
}

fn ffprobe_frames(path: &Path) -> Option<u64> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out_dir)?;
    let clip_path = args.out_dir.join("source.h264");
    let received_path = args.out_dir.join("received.h264");
    let registry = args.out_dir.join("registry.sqlite");
    let _ = std::fs::remove_file(&registry);

    let clip = if args.synthetic {
        None
    } else {
        make_clip(&clip_path, args.seconds)
    };
    let (mut source, kind) = match &clip {
        Some(bytes) => (
            FrameSource::annexb(bytes, FPS, false)?,
            "H.264 1280x720 (ffmpeg testsrc2)",
        ),
        None => (
            FrameSource::synthetic(FPS, 2 * FPS, Some(args.seconds * FPS)),
            if args.synthetic {
                "synthetic (--synthetic)"
            } else {
                "synthetic (ffmpeg not found)"
            },
        ),
    };
    println!("source        {kind}, {} frames at {FPS} fps", source.len());

    let t0 = Instant::now();
    let mut network = LocalNetwork::start(&registry).await?;
    if !args.rendezvous_host.is_empty() {
        network
            .name_rendezvous(&args.rendezvous_host)
            .context("--rendezvous-host")?;
    }
    println!(
        "rendezvous    {} (key pinned by clients)",
        network.rendezvous.address
    );
    println!("relay         {}", network.relay_address);

    // The camera: key at first boot, certificate from the operator's issuer.
    let id: DeviceId = "1C:C3:16:AB:CD:EF".parse()?;
    let identity = network.provision(id)?;
    let uri = DeviceUri::new(
        id,
        KeyFingerprint::of_public_key(identity.certificate.device_key()),
    );
    let mut config = DeviceConfig::new(identity, network.rendezvous.clone());
    config.bind = "127.0.0.1:0".parse()?;
    config.password = Some(PASSWORD.into());
    let policy = if args.relay_only {
        PathPolicy::RelayOnly
    } else {
        PathPolicy::Any
    };
    config.path_policy = policy;
    let mut device = Device::start(config).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), device.next_event()).await {
            Ok(Some(Event::Registered { .. })) => break,
            Ok(Some(_)) => {}
            _ => anyhow::bail!("the camera did not register"),
        }
    }
    println!(
        "camera        {id} registered, label {}  ({:?})",
        id.to_checked_string(),
        t0.elapsed()
    );
    println!("label URI     {uri}");

    // The viewer scans the label and types the password.
    let mut viewer_config = network.viewer_config();
    viewer_config.bind = "127.0.0.1:0".parse()?;
    viewer_config.path_policy = policy;
    let connect_started = Instant::now();
    let mut viewer = Viewer::connect(
        viewer_config,
        Target::Uri(uri),
        Credentials::password(PASSWORD),
    )
    .await
    .context("viewer connect")?;
    let connect_time = connect_started.elapsed();
    println!("viewer        connected and authorized in {connect_time:?}");

    // Wait until the camera has admitted the viewer, then stream in real time.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), device.next_event()).await {
            Ok(Some(Event::PeerConnected { .. })) => break,
            Ok(Some(_)) => {}
            _ => anyhow::bail!("the camera did not admit the viewer"),
        }
    }
    let total = source.len();
    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(source.interval);
        while let Some(frame) = source.next_frame() {
            ticker.tick().await;
            if device.send_frame(frame).await.is_err() {
                break;
            }
        }
        // Let the last frames and their retransmissions arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
        device.shutdown().await;
    });

    let mut file = std::io::BufWriter::new(std::fs::File::create(&received_path)?);
    let mut received = Vec::new();
    let mut first_frame = None;
    let mut path = None;
    let mut last_stats = None;
    let stream_started = Instant::now();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(3), viewer.next_event()).await;
        let Ok(Some(event)) = event else { break };
        match event {
            Event::PeerConnected { path: p, .. } => path = p.or(path),
            Event::PathChanged { path: p, .. } => {
                println!(
                    "path          {} ({} rtt {:?})",
                    p.kind_name(),
                    p.remote,
                    p.rtt
                );
                path = Some(p);
            }
            Event::Frame { frame, .. } => {
                first_frame.get_or_insert_with(|| connect_started.elapsed());
                std::io::Write::write_all(&mut file, &frame.frame.data)?;
                received.push(frame.frame.data);
                if received.len() % FPS as usize == 0 {
                    println!("progress      {} / {total} frames", received.len());
                }
                if received.len() == total {
                    break;
                }
            }
            Event::Stats { stats, .. } => {
                path = stats.path.or(path);
                last_stats = Some(stats);
            }
            Event::PeerClosed { .. } => break,
            _ => {}
        }
    }
    std::io::Write::flush(&mut file)?;
    drop(file);
    let streamed = stream_started.elapsed();
    let _ = sender.await;
    viewer.close().await;
    network.shutdown().await;

    let bytes: usize = received.iter().map(|f| f.len()).sum();
    let identical = match &clip {
        Some(clip) => access_units(clip)
            .iter()
            .zip(&received)
            .filter(|(sent, got)| sent.data == got.as_ref())
            .count(),
        None => received.len(),
    };
    println!();
    println!("summary");
    println!(
        "  time to first frame  {:?}",
        first_frame.unwrap_or_default()
    );
    println!(
        "  path                 {}",
        path.map_or("-", |p| p.kind_name())
    );
    println!(
        "  frames               {} of {total} ({identical} byte-identical to the source)",
        received.len()
    );
    println!(
        "  bytes                {bytes} ({:.1} Mbit/s over {:.1} s)",
        bytes as f64 * 8.0 / streamed.as_secs_f64() / 1e6,
        streamed.as_secs_f64()
    );
    if let Some(stats) = last_stats {
        println!(
            "  loss                 {:.2} %, frames late {}, dropped {}",
            stats.loss * 100.0,
            stats.frames_late,
            stats.frames_dropped
        );
    }
    if clip.is_some() {
        match ffprobe_frames(&received_path) {
            Some(n) => println!("  ffprobe decoded      {n} frames"),
            None => println!("  ffprobe decoded      (ffprobe not available)"),
        }
    }
    println!("  received video       {}", received_path.display());
    anyhow::ensure!(
        received.len() == total && identical == total,
        "not every frame arrived intact"
    );
    Ok(())
}
