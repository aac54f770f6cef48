//! `camera`: a Sightwire camera agent.
//!
//! First run generates the device key in `--state-dir`; the certificate comes from the
//! operator (`sightwire-rendezvous issuer issue ... --out <state-dir>/device.cert`) or, in
//! demo mode (`--issuer-secret`), is issued here. It registers with the rendezvous,
//! prints its ID and label URI (and QR code), and streams H.264 from an Annex-B file at
//! its frame rate (looping), from an RTSP camera (`rtsp://user:pass@host/path`, pulled with
//! retina and reconnected when it drops) or a synthetic source to every viewer it
//! authorizes.
//!
//! stdout carries one JSON object per line (`ready`, `viewer_connected`, `viewer_closed`,
//! `registered`, `rendezvous_lost`); human-readable text goes to stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use sightwire::{Device, DeviceConfig, Event, PathPolicy, RendezvousServer};
use sightwire_examples::identity::{load_identity, parse_key, read_key};
use sightwire_examples::rtsp::{self, RtspConfig};
use sightwire_examples::source::FrameSource;
use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint};
use sightwire_signal::cert::IssuerKey;

/// Register a camera with a Sightwire rendezvous and stream to the viewers it admits.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The rendezvous server's UDP address.
    #[arg(long)]
    rendezvous: SocketAddr,
    /// The rendezvous server's static public key (64 hex digits).
    #[arg(long)]
    rendezvous_key: String,
    /// Directory for the device key and certificate.
    #[arg(long)]
    state_dir: PathBuf,
    /// The device password viewers must prove.
    #[arg(long)]
    password: Option<String>,
    /// `synthetic`, an H.264 Annex-B file, or an RTSP camera URL
    /// (`rtsp://user:pass@host/path`).
    #[arg(long, default_value = "synthetic")]
    source: String,
    /// Frame rate of the source.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Demo mode: the issuer's secret key file (hex), to issue our own certificate.
    #[arg(long)]
    issuer_secret: Option<PathBuf>,
    /// Demo mode: the device ID to issue the certificate for (default: random).
    #[arg(long)]
    device_id: Option<DeviceId>,
    /// Local address to bind.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// Use only the relay (hides both addresses).
    #[arg(long)]
    relay_only: bool,
    /// Do not draw the QR code.
    #[arg(long)]
    no_qr: bool,
}

fn emit(value: serde_json::Value) {
    println!("{value}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let issuer = match &args.issuer_secret {
        Some(path) => Some(IssuerKey::from_seed(&read_key(path)?)),
        None => None,
    };
    let identity = load_identity(&args.state_dir, issuer.as_ref(), args.device_id)?;
    let id = DeviceId::from_bytes(identity.certificate.device_id())?;
    let uri = DeviceUri::new(
        id,
        KeyFingerprint::of_public_key(identity.certificate.device_key()),
    );
    let rtsp_config = rtsp::is_rtsp_url(&args.source)
        .then(|| RtspConfig::from_url(&args.source))
        .transpose()?;
    let mut source = if rtsp_config.is_some() {
        None
    } else if args.source == "synthetic" {
        Some(FrameSource::synthetic(args.fps, args.fps * 2, None))
    } else {
        let bytes =
            std::fs::read(&args.source).with_context(|| format!("reading {}", args.source))?;
        Some(FrameSource::annexb(&bytes, args.fps, true)?)
    };

    let mut config = DeviceConfig::new(
        identity,
        RendezvousServer {
            address: args.rendezvous,
            public_key: parse_key(&args.rendezvous_key).context("--rendezvous-key")?,
        },
    );
    config.bind = args.bind;
    config.password = args.password.clone();
    if args.relay_only {
        config.path_policy = PathPolicy::RelayOnly;
    }
    let mut device = Device::start(config).await?;
    eprintln!("camera {id}  (label: {})", id.to_checked_string());
    eprintln!("add it by ID or scan: {uri}");
    if !args.no_qr {
        eprintln!("{}", uri.to_qr_terminal()?);
    }

    // An RTSP camera paces its own frames; a file or synthetic source is paced by the ticker.
    let mut rtsp_frames = rtsp_config.map(rtsp::spawn);
    let mut ticker = tokio::time::interval(
        source
            .as_ref()
            .map_or(Duration::from_secs(1), |s| s.interval),
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ready = false;
    // Created once, so a signal between two loop turns is not missed.
    let shutdown = sightwire_shutdown::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick(), if source.is_some() => {
                if let Some(frame) = source.as_mut().and_then(FrameSource::next_frame) {
                    device.send_frame(frame).await;
                }
            }
            Some(frame) = next_rtsp_frame(&mut rtsp_frames) => {
                device.send_frame(frame).await;
            }
            event = device.next_event() => {
                let Some(event) = event else { break };
                match event {
                    Event::Registered { observed } => {
                        if !ready {
                            ready = true;
                            emit(json!({"event": "ready", "id": id.to_string(), "uri": uri.to_string(), "observed": observed.to_string()}));
                        } else {
                            emit(json!({"event": "registered", "observed": observed.to_string()}));
                        }
                    }
                    Event::RendezvousLost => emit(json!({"event": "rendezvous_lost"})),
                    Event::PeerConnected { peer, path, .. } => emit(json!({
                        "event": "viewer_connected",
                        "peer": peer.0,
                        "path": path.map(|p| p.kind_name()),
                    })),
                    Event::PathChanged { peer, path } => emit(json!({
                        "event": "path_changed", "peer": peer.0, "path": path.kind_name(),
                    })),
                    Event::PeerClosed { peer, reason } => emit(json!({
                        "event": "viewer_closed", "peer": peer.0, "reason": format!("{reason:?}"),
                    })),
                    Event::Control { peer, message } => emit(json!({
                        "event": "control", "peer": peer.0, "message": String::from_utf8_lossy(&message),
                    })),
                    _ => {}
                }
            }
            () = &mut shutdown => break,
        }
    }
    tokio::time::timeout(Duration::from_secs(2), device.shutdown())
        .await
        .ok();
    Ok(())
}

/// The next frame from the RTSP camera; never resolves without one.
async fn next_rtsp_frame(
    frames: &mut Option<tokio::sync::mpsc::Receiver<sightwire::Frame>>,
) -> Option<sightwire::Frame> {
    match frames {
        Some(frames) => frames.recv().await,
        None => std::future::pending().await,
    }
}
