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
//! It follows the viewers' target bitrate (`Event::TargetBitrate`, the lowest among
//! them): a synthetic source sizes its frames to it; a file or an RTSP camera drops
//! frames to stay at or below it (`sightwire_examples::rate::FrameDropper`: the rest of a
//! GOP after a dropped reference frame, so the output stays decodable). Each target, size
//! change, stream switch and a count of dropped frames (every 5 s while dropping) is
//! logged at info level on stderr.
//!
//! An RTSP camera given `--sub-source` pulls its main and its sub stream at once and
//! offers both (`main` and `sub` in its catalog); each viewer chooses with SELECT and is
//! switched alone, at once, from the sub stream's cached keyframe
//! (`Device::subscribe`, `spec/endpoint.md` §4.2). A new viewer gets `main`. With
//! Its frame dropper then follows the lowest target among the viewers of main only. With
//! `--sub-mode adaptive` it instead forwards one of the two to everyone, switching to
//! the sub stream while the target stays below the main stream's bitrate
//! (`sightwire_examples::switch`).
//!
//! A viewer joining mid-GOP gets a picture at once from the device's GOP cache (the last
//! keyframe and the frames after it, `spec/endpoint.md` §4.1); the device also passes the
//! viewer's keyframe request on (`Event::KeyframeRequested`). The synthetic source
//! answers it with a keyframe, which cuts the viewer's catch-up short; a file or an RTSP
//! camera cannot re-encode, and the cache alone serves the viewer.
//!
//! Each viewer gets the camera's catalog (spec/control.md: stream `main`, and `sub` with a
//! sub stream, with the stream ids and codecs seen in their frames, sent again when they
//! change); a viewer's SELECT whose codecs exclude the stream's video codec, or that
//! names a stream the camera lacks, is answered with a STATUS saying so.
//!
//! stdout carries one JSON object per line (`ready`, `viewer_connected`, `viewer_closed`,
//! `viewer_select`, `registered`, `rendezvous_lost`, `keyframe_requested`); human-readable
//! text goes to stderr.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use sightwire::{
    Device, DeviceConfig, Event, Frame, FrameError, PathPolicy, PeerId, RendezvousServer,
    SendError, ServerAddr,
};
use sightwire_examples::audio::AudioFileWriter;
use sightwire_examples::identity::{load_identity, parse_key, read_key};
use sightwire_examples::negotiation::{
    CameraCatalog, MAIN_STREAMS, MainTarget, SUB_STREAMS, codec_name, to_sub_stream,
};
use sightwire_examples::rate::{DropStats, FrameClass, FrameDropper, Verdict};
use sightwire_examples::rtsp::{self, RtspConfig, RtspSource, SourceFailure, SourceStatus};
use sightwire_examples::source::FrameSource;
use sightwire_examples::switch::SwitchConfig;
use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint, PublicKey};
use sightwire_media::control_messages::{
    ControlMessage, MAX_STATUS_TEXT_LEN, SourceState, StatusReason,
};
use sightwire_signal::cert::IssuerKey;

/// Register a camera with a Sightwire rendezvous and stream to the viewers it admits.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The rendezvous server: `host:port` (resolved, every address tried, resolved
    /// again when it stops answering), `a.b.c.d:port` or `[v6]:port`.
    #[arg(long)]
    rendezvous: ServerAddr,
    /// The rendezvous server's static public key (64 hex digits).
    #[arg(long)]
    rendezvous_key: String,
    /// The rendezvous's TCP/TLS stream port, used only when UDP gets no answer
    /// (spec/stream.md); 0: no fallback.
    #[arg(long, default_value_t = sightwire::DEFAULT_STREAM_PORT)]
    rendezvous_stream_port: u16,
    /// Directory for the device key and certificate.
    #[arg(long)]
    state_dir: PathBuf,
    /// The device password viewers must prove.
    #[arg(long)]
    password: Option<String>,
    /// `synthetic`, an H.264 or H.265 Annex-B file, or an RTSP camera URL
    /// (`rtsp://user:pass@host/path`).
    #[arg(long, default_value = "synthetic")]
    source: String,
    /// The codec of an Annex-B `--source` file; `auto` detects it from the file's first
    /// NAL unit (an H.265 stream opens with a VPS, SPS, PPS, AUD or SEI).
    #[arg(long, value_enum, default_value_t = FileCodec::Auto)]
    codec: FileCodec,
    /// The RTSP camera's sub stream (`rtsp://user:pass@host/path`), offered to viewers
    /// as `sub` beside `main` (`--source`).
    #[arg(long)]
    sub_source: Option<String>,
    /// What the sub stream is for: `choice`, each viewer chooses `main` or `sub`; or
    /// `adaptive`, everyone gets the sub stream while the viewers' target bitrate stays
    /// below the main stream's bitrate, else main.
    #[arg(long, value_enum, default_value_t = SubMode::Choice)]
    sub_mode: SubMode,
    /// Where to write the viewers' talk-back audio, raw: ADTS `.aac` for AAC, `.alaw` /
    /// `.ulaw` bytes for G.711 (flushed per frame).
    #[arg(long)]
    talk_out: Option<PathBuf>,
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

/// What an RTSP camera's sub stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SubMode {
    /// Both streams are pulled at once and offered; each viewer chooses.
    Choice,
    /// One stream at a time, for everyone, chosen by the target bitrate.
    Adaptive,
}

/// The codec of an Annex-B source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FileCodec {
    /// Detected from the file.
    Auto,
    /// H.264.
    H264,
    /// H.265.
    H265,
}

/// How often the count of dropped frames is logged (while frames are dropped).
const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(5);

fn emit(value: serde_json::Value) {
    println!("{value}");
}

/// Sends a frame to the viewers (the endpoint reports one it could not send as
/// `Event::FrameNotSent`); a stopped endpoint ends the main loop through its events.
async fn send_frame(device: &Device, frame: Frame) {
    if let Err(error) = device.send_frame(frame).await {
        tracing::debug!(%error, "frame not sent");
    }
}

/// Offers a frame from a file or RTSP source to the dropper and sends it if admitted.
async fn offer(device: &Device, dropper: &mut FrameDropper, frame: Frame) {
    let class = FrameClass::of(&frame);
    if dropper.admit(Instant::now(), class, frame.data.len()) == Verdict::Send {
        send_frame(device, frame).await;
    } else {
        // One line per frame left out on purpose (the target is below the source's
        // rate), so that a test can tell it from a frame lost on the way.
        emit(
            json!({"event": "frame_dropped", "by": "dropper", "capture_time_us": frame.capture_time_us}),
        );
    }
}

/// Makes the source follow a new target (`None`: no viewer left) and logs what it did.
fn follow_target(
    target_bps: Option<u64>,
    source: Option<&mut FrameSource>,
    rtsp: Option<&mut RtspSource>,
    dropper: &mut FrameDropper,
) {
    match target_bps {
        Some(bps) => {
            tracing::info!(target_bps = bps, "target bitrate");
            emit(json!({"event": "target_bitrate", "bps": bps}));
        }
        None => tracing::info!("no viewer left: target bitrate cleared"),
    }
    if let Some(sizes) = source.and_then(|s| s.set_target_bitrate(target_bps)) {
        tracing::info!(
            target_bps,
            keyframe_bytes = sizes.keyframe,
            delta_bytes = sizes.delta,
            "synthetic frame size follows the target"
        );
        return;
    }
    dropper.set_target(Instant::now(), target_bps);
    tracing::info!(
        target_bps,
        depth_bytes = dropper.depth_bytes(),
        window_ms = dropper.window().as_millis() as u64,
        "frame dropper follows the target"
    );
    if let Some(rtsp) = rtsp {
        rtsp.set_target(target_bps);
    }
}

/// Logs the frames dropped since `last` (if any) and returns the new totals.
fn report_drops(dropper: &FrameDropper, last: DropStats) -> DropStats {
    let now = dropper.stats();
    if now.dropped_frames > last.dropped_frames {
        tracing::info!(
            dropped = now.dropped_frames - last.dropped_frames,
            sent = now.sent_frames - last.sent_frames,
            dropped_bytes = now.dropped_bytes - last.dropped_bytes,
            dropped_total = now.dropped_frames,
            sent_total = now.sent_frames,
            target_bps = dropper.target(),
            "frames dropped to stay within the target"
        );
    }
    now
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Plain text when stderr is a file (a lab test reads the info lines).
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,camera=info,sightwire_examples=info".into()),
        )
        .init();
    let args = Args::parse();
    let issuer = match &args.issuer_secret {
        Some(path) => Some(IssuerKey::from_seed(&read_key(path)?)),
        None => None,
    };
    let identity = load_identity(&args.state_dir, issuer.as_ref(), args.device_id)?;
    let id = identity.certificate.device_id();
    let uri = DeviceUri::new(
        id,
        KeyFingerprint::of_public_key(identity.certificate.device_key()),
    );
    let rtsp_config = rtsp::is_rtsp_url(&args.source)
        .then(|| RtspConfig::from_url(&args.source))
        .transpose()?;
    let sub_config = match &args.sub_source {
        Some(sub) => {
            anyhow::ensure!(
                rtsp_config.is_some(),
                "--sub-source needs an RTSP --source (the main stream)"
            );
            Some(RtspConfig::from_url(sub).context("--sub-source")?)
        }
        None => None,
    };
    let mut source = if rtsp_config.is_some() {
        None
    } else if args.source == "synthetic" {
        Some(FrameSource::synthetic(args.fps, args.fps * 2, None))
    } else {
        let bytes =
            std::fs::read(&args.source).with_context(|| format!("reading {}", args.source))?;
        let codec = match args.codec {
            FileCodec::Auto => sightwire_examples::annexb::detect_codec(&bytes),
            FileCodec::H264 => sightwire::Codec::H264,
            FileCodec::H265 => sightwire::Codec::H265,
        };
        tracing::info!(?codec, file = %args.source, "Annex-B source");
        Some(FrameSource::annexb_of(codec, &bytes, args.fps, true)?)
    };

    let mut config = DeviceConfig::new(identity, {
        let mut value = RendezvousServer::new(
            args.rendezvous.clone(),
            PublicKey::from_bytes(parse_key(&args.rendezvous_key).context("--rendezvous-key")?),
        );
        value.stream_port = Some(args.rendezvous_stream_port).filter(|port| *port != 0);
        value
    });
    config.bind = args.bind;
    config.password = args.password.clone();
    if args.relay_only {
        config.path_policy = PathPolicy::RelayOnly;
    }
    let choice = sub_config.is_some() && args.sub_mode == SubMode::Choice;
    if choice {
        // A new viewer gets the main stream until its SELECT says otherwise.
        config.default_streams = MAIN_STREAMS;
    }
    let mut device = Device::start(config).await?;
    eprintln!("camera {id}  (label: {})", id.to_checked_string());
    eprintln!("add it by ID or scan: {uri}");
    if !args.no_qr {
        eprintln!("{}", uri.to_qr_terminal()?);
    }

    // An RTSP camera paces its own frames; a file or synthetic source is paced by the ticker.
    let (adaptive_sub, chosen_sub) = if choice {
        (None, sub_config)
    } else {
        (sub_config, None)
    };
    let mut rtsp_source =
        rtsp_config.map(|main| RtspSource::new(main, adaptive_sub, SwitchConfig::default()));
    // The sub stream viewers may choose, pulled beside the main stream.
    let mut sub_source = chosen_sub.map(|sub| RtspSource::new(sub, None, SwitchConfig::default()));
    let mut rtsp_status = rtsp_source.as_ref().map(RtspSource::subscribe_status);
    let mut dropper = FrameDropper::new();
    let mut drops_reported = DropStats::default();
    let mut drop_report = tokio::time::interval(DROP_REPORT_INTERVAL);
    drop_report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Viewers admitted; with none left, the target no longer holds.
    let mut viewers: HashSet<PeerId> = HashSet::new();
    // With a choice of streams: the lowest target among the viewers of main.
    let mut main_target = MainTarget::default();
    // The streams viewers are told about (spec/control.md), learnt from the frames sent.
    let mut catalog = if sub_source.is_some() {
        CameraCatalog::with_sub()
    } else {
        CameraCatalog::default()
    };
    let mut talk_out = match &args.talk_out {
        Some(path) => Some(AudioFileWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
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
                if let Some(source) = source.as_mut()
                    && let Some(frame) = source.next_frame()
                {
                    announce_tracks(&device, &mut catalog, &frame).await;
                    if source.is_synthetic() {
                        send_frame(&device, frame).await;
                    } else {
                        offer(&device, &mut dropper, frame).await;
                    }
                }
            }
            Some(frame) = next_rtsp_frame(&mut rtsp_source) => {
                announce_tracks(&device, &mut catalog, &frame).await;
                offer(&device, &mut dropper, frame).await;
            }
            Some(frame) = next_rtsp_frame(&mut sub_source) => {
                // The dropper follows the main stream; each viewer's media layer drops
                // what its own path cannot carry (spec/media.md 4.7).
                let frame = to_sub_stream(frame);
                announce_tracks(&device, &mut catalog, &frame).await;
                send_frame(&device, frame).await;
            }
            status = next_rtsp_status(&mut rtsp_status) => {
                // Every viewer learns why frames stop (or start again): spec/control.md.
                let message = status_message(&status);
                emit(json!({"event": "source_status", "status": format!("{status:?}")}));
                send_message(&device, None, &message).await;
            }
            _ = drop_report.tick() => {
                drops_reported = report_drops(&dropper, drops_reported);
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
                    Event::KeepaliveInterval { interval } => {
                        emit(json!({"event": "keepalive_interval", "ms": interval.as_millis() as u64}));
                    }
                    Event::RendezvousKeyMismatch => {
                        eprintln!("camera: the server at {} holds another key: check --rendezvous-key", args.rendezvous);
                        emit(json!({"event": "rendezvous_key_mismatch"}));
                    }
                    Event::RendezvousUnreachable => {
                        eprintln!("camera: nothing answers at {} (still trying)", args.rendezvous);
                        emit(json!({"event": "rendezvous_unreachable"}));
                    }
                    Event::RendezvousUnresolved { error } => {
                        eprintln!("camera: {}: {error}", args.rendezvous);
                        emit(json!({"event": "rendezvous_unresolved", "error": error.to_string()}));
                    }
                    Event::PeerConnected { peer, path, .. } => {
                        viewers.insert(peer);
                        send_message(&device, Some(peer), &catalog.message()).await;
                        // Every admitted viewer learns the source's state (a failing one
                        // with why) at once, instead of waiting for frames that may not come.
                        if let Some(status) = rtsp_source.as_ref().map(RtspSource::status) {
                            send_message(&device, Some(peer), &status_message(&status)).await;
                        }
                        emit(json!({
                            "event": "viewer_connected",
                            "peer": peer.0,
                            "path": path.map(|p| p.kind_name()),
                        }));
                    }
                    Event::PathChanged { peer, path } => emit(json!({
                        "event": "path_changed", "peer": peer.0, "path": path.kind_name(),
                    })),
                    Event::PeerClosed { peer, reason } => {
                        emit(json!({
                            "event": "viewer_closed", "peer": peer.0, "reason": format!("{reason:?}"),
                        }));
                        if choice {
                            if let Some(target) = main_target.closed(peer) {
                                follow_target(target, source.as_mut(), rtsp_source.as_mut(), &mut dropper);
                            }
                        } else if viewers.remove(&peer) && viewers.is_empty() {
                            follow_target(None, source.as_mut(), rtsp_source.as_mut(), &mut dropper);
                        }
                    }
                    // With a choice of streams the main stream follows its own viewers.
                    Event::TargetBitrate { bps } if !choice => {
                        follow_target(Some(bps), source.as_mut(), rtsp_source.as_mut(), &mut dropper);
                    }
                    Event::Stats { peer, stats } if choice => {
                        if let Some(target) = main_target.target(peer, stats.target_bitrate_bps) {
                            follow_target(target, source.as_mut(), rtsp_source.as_mut(), &mut dropper);
                        }
                    }
                    Event::KeyframeRequested { peer, stream } => {
                        // Only an encoder can make one; a file or an RTSP camera cannot,
                        // and the device's GOP cache covers a joining viewer.
                        let made = source.as_mut().is_some_and(FrameSource::request_keyframe);
                        tracing::debug!(peer = peer.0, stream = stream.get(), made, "keyframe requested");
                        emit(json!({
                            "event": "keyframe_requested", "peer": peer.0, "made": made,
                        }));
                    }
                    Event::Frame { peer, frame } => {
                        if let Some(talk) = talk_out.as_mut()
                            && let Err(error) = talk.write(&frame.frame)
                        {
                            tracing::warn!(peer = peer.0, %error, "talk-back frame not written");
                        }
                    }
                    Event::Control { peer, message } => match ControlMessage::decode(&message) {
                        Ok(ControlMessage::Select { stream, accepts }) => {
                            let answer = catalog.answer(&stream, &accepts);
                            emit(json!({
                                "event": "viewer_select", "peer": peer.0, "stream": stream,
                                "accepts": accepts.iter().map(|c| codec_name(*c)).collect::<Vec<_>>(),
                                "refused": answer.is_err(),
                            }));
                            match answer {
                                // Switches this viewer alone, from the chosen stream's
                                // cached keyframe.
                                Ok(streams) if choice => {
                                    if let Err(error) = device.subscribe(peer, streams).await {
                                        tracing::debug!(%error, "viewer not switched");
                                    }
                                    if let Some(target) = main_target.chose(peer, streams == SUB_STREAMS) {
                                        follow_target(target, source.as_mut(), rtsp_source.as_mut(), &mut dropper);
                                    }
                                }
                                Ok(_) => {}
                                Err(status) => send_message(&device, Some(peer), &status).await,
                            }
                        }
                        _ => emit(json!({
                            "event": "control", "peer": peer.0, "message": String::from_utf8_lossy(&message),
                        })),
                    },
                    // Drops by the congestion policy are routine (counted); a frame too
                    // large or a full queue is not.
                    Event::FrameNotSent { peer, stream, error }
                        if !matches!(error, FrameError::Send(SendError::FrameDropped { .. })) =>
                    {
                        let peer = peer.map(|p| p.0);
                        tracing::warn!(?peer, stream = stream.get(), %error, "frame not sent");
                        emit(json!({"event": "frame_not_sent", "peer": peer, "error": error.to_string()}));
                    }
                    Event::FrameNotSent { peer, .. } => emit(json!({
                        "event": "frame_dropped", "by": "sender", "peer": peer.map(|p| p.0),
                    })),
                    _ => {}
                }
            }
            () = &mut shutdown => break,
        }
    }
    report_drops(&dropper, drops_reported);
    tokio::time::timeout(Duration::from_secs(2), device.shutdown())
        .await
        .ok();
    Ok(())
}

/// Sends a control message (spec/control.md) to one viewer or all.
async fn send_message(device: &Device, to: Option<PeerId>, message: &ControlMessage) {
    match message.encode() {
        Ok(bytes) => {
            if let Err(error) = device.send_control(to, bytes.into()).await {
                tracing::debug!(%error, "control message not sent");
            }
        }
        Err(error) => tracing::warn!(%error, "control message not sent"),
    }
}

/// Tells every viewer the new catalog when a frame shows a stream or codec not seen yet.
async fn announce_tracks(device: &Device, catalog: &mut CameraCatalog, frame: &Frame) {
    if catalog.observe(frame) {
        send_message(device, None, &catalog.message()).await;
    }
}

/// The RTSP camera's next status change; never resolves without an RTSP source.
async fn next_rtsp_status(status: &mut Option<watch::Receiver<SourceStatus>>) -> SourceStatus {
    if let Some(status) = status
        && status.changed().await.is_ok()
    {
        return status.borrow_and_update().clone();
    }
    std::future::pending().await
}

/// The STATUS message (spec/control.md) that tells viewers what the RTSP source does.
fn status_message(status: &SourceStatus) -> ControlMessage {
    let (state, reason, text) = match status {
        SourceStatus::Connecting => (SourceState::Starting, StatusReason::None, String::new()),
        SourceStatus::Streaming => (SourceState::Running, StatusReason::None, String::new()),
        SourceStatus::Failing { reason, attempts } => {
            let why = match reason {
                SourceFailure::LoginRefused => StatusReason::SourceLoginRefused,
                SourceFailure::NoSupportedVideo | SourceFailure::Ended => {
                    StatusReason::SourceNoMedia
                }
                _ => StatusReason::SourceUnreachable,
            };
            (
                SourceState::Failing,
                why,
                format!("{reason} ({attempts} attempts)"),
            )
        }
        _ => (SourceState::Starting, StatusReason::None, String::new()),
    };
    // The text is for people and bounded on the wire; cut at a character boundary.
    let mut text = text;
    while text.len() > MAX_STATUS_TEXT_LEN {
        text.pop();
    }
    ControlMessage::Status {
        state,
        reason,
        text,
    }
}

/// The next frame from the RTSP camera; never resolves without one.
async fn next_rtsp_frame(source: &mut Option<RtspSource>) -> Option<Frame> {
    match source {
        Some(source) => source.next_frame().await,
        None => std::future::pending().await,
    }
}
