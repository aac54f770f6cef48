//! `viewer`: watch a Sightwire camera.
//!
//! Connects by device ID (and password) or by the label's URI, writes the received video
//! (H.264 or H.265) to a file (Annex-B, or MP4 written natively when the name ends in
//! `.mp4`, with the audio track) or to stdout for `ffplay -`, the audio to `--audio-out`
//! (ADTS AAC or raw G.711), and shows a live status line on stderr. Ctrl-C finalizes the
//! file. A closed output (stdout's reader gone) closes the connection and exits with
//! status 3. Once connected it tells the camera which stream it wants (`--stream`) and the
//! codecs it takes (`--accept`, spec/control.md); a stream it cannot decode ends it with
//! status 4 and the reason. The outputs take only the chosen stream's frames: with
//! `--stream` frames wait for the camera's catalog, and frames of the catalog's other
//! streams (the default stream's, sent before the choice reached the camera) are dropped.
//!
//! With `--out` a file, stdout carries one JSON object per line: `connected` (path,
//! connect_ms), `first_keyframe` (ms since connect started), `path_changed`, `status`,
//! `failed` (a stable `error` name, the `reason` and `ms` since connect started),
//! `catalog` (the camera's streams and their codecs), `camera_status` (its source's
//! `state`, `reason`, `text`: e.g. `failing`, `source_login_refused`),
//! and a final `summary` (video frames written, `audio_frames`, `ignored_frames` (codecs
//! no output takes), `other_stream_frames` (of a stream not chosen), `output_closed`, the
//! endpoint's loss counters, `streaming_ms` from connect to stop, and `bitrate_bps`, the
//! last target bitrate the endpoint reported).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::json;
use sightwire::{
    Codec, ConnectError, Credentials, Event, Frame, PathPolicy, PublicKey, RendezvousServer,
    ServerAddr, StreamSet, Target, Viewer, ViewerConfig,
};
use sightwire_examples::audio::{AudioFileWriter, AudioWriteError, talk_frames};
use sightwire_examples::identity::{
    KnownDevices, VIEWER_KEY_FILE, load_or_create_key_file, parse_key,
};
use sightwire_examples::mp4::{Mp4Error, Mp4Writer};
use sightwire_examples::negotiation::{choose, codec_name, other_streams, parse_codecs};
use sightwire_media::control_messages::{ControlMessage, StatusReason};
use sightwire_signal::cert::{IssuerPublicKey, TrustedIssuers};

/// Watch a camera by its ID or label URI.
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
    /// The issuer's public key (64 hex digits): certificates it signed are believed.
    #[arg(long)]
    issuer_key: String,
    /// The device: its ID as printed on the label, or the `sightwire:` URI of its QR code.
    #[arg(long)]
    device: Target,
    /// The device password.
    #[arg(long)]
    password: Option<String>,
    /// Where to write the video: a file (Annex-B H.264/H.265, e.g. `.h264`/`.h265`; `.mp4`
    /// MP4 with the audio track too, finalized on exit or Ctrl-C) or `-` for stdout.
    /// If the reader of stdout goes away the viewer closes the connection and exits with
    /// status 3.
    #[arg(long)]
    out: String,
    /// Where to write the camera's audio, raw: ADTS `.aac` for AAC, `.alaw`/`.ulaw` bytes
    /// for G.711 (8 kHz mono). Without it, audio goes into an `.mp4` `--out` and
    /// nowhere else.
    #[arg(long)]
    audio_out: Option<PathBuf>,
    /// Talk-back: send this audio file to the camera on the audio stream, in real time
    /// (`.aac` ADTS, `.alaw` / `.ulaw` raw G.711 8 kHz mono).
    #[arg(long)]
    talk: Option<PathBuf>,
    /// The camera stream to watch, by its catalog name (`main`, `sub`); default: the
    /// camera's first. The camera switches this viewer to it as soon as it connects.
    #[arg(long, default_value = "")]
    stream: String,
    /// The codecs this viewer takes (comma-separated: h264,h265,aac,alaw,ulaw). A camera
    /// whose chosen stream's video is another codec is refused with exit status 4
    /// instead of writing frames nothing here can decode.
    #[arg(long, default_value = "h264,h265,aac,alaw,ulaw")]
    accept: String,
    /// Stop after this many frames.
    #[arg(long)]
    frames: Option<u64>,
    /// Stop after this many seconds of streaming.
    #[arg(long)]
    seconds: Option<f64>,
    /// Local address to bind.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: SocketAddr,
    /// Use only the relay.
    #[arg(long)]
    relay_only: bool,
    /// Give up connecting after this many seconds.
    #[arg(long, default_value_t = 20.0)]
    connect_timeout: f64,
    /// Where the viewer keeps its static key (so a camera that remembered it still
    /// knows it) and the keys of cameras it has watched (trust on first use: a camera
    /// whose key changed is refused). Default: `$SIGHTWIRE_VIEWER_STATE`, else
    /// `$HOME/.local/state/sightwire-viewer`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// The state directory: the flag, the environment, or the user's state directory.
fn state_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("SIGHTWIRE_VIEWER_STATE").map(PathBuf::from))
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".local/state/sightwire-viewer"))
        })
        .unwrap_or_else(|| PathBuf::from("sightwire-viewer-state"))
}

/// Exit status when an output was closed under the viewer (a pipe's reader went away):
/// the viewer said goodbye to the camera and stopped, nothing else went wrong.
const EXIT_OUTPUT_CLOSED: i32 = 3;

/// Exit status when the camera's stream cannot be watched here: its codec is not among
/// `--accept`, or `--stream` names a stream the camera does not have.
const EXIT_STREAM_REFUSED: i32 = 4;

struct Output {
    json: bool,
    video: VideoSink,
    audio: Option<AudioSink>,
    /// The MP4 file also takes the audio when no `--audio-out` is given.
    audio_in_mp4: bool,
}

/// Annex-B bytes as they arrive (file or stdout), or an MP4 file.
enum VideoSink {
    AnnexB(Box<dyn Write + Send>),
    Mp4(Box<Mp4Writer<std::io::BufWriter<std::fs::File>>>),
}

/// Raw audio: ADTS-framed AAC or G.711 bytes (`--audio-out`).
type AudioSink = AudioFileWriter<Box<dyn Write + Send>>;

/// What writing a frame came to.
enum Written {
    /// Video written (counts as a frame).
    Video,
    /// Audio written or taken as configuration.
    Audio,
    /// Not for any output (another stream's codec, or audio with no audio output).
    Ignored,
}

/// Why writing a frame failed.
#[derive(Debug, thiserror::Error)]
enum OutputError {
    /// The reader of the output went away (a closed pipe).
    #[error("the output was closed")]
    Closed,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl From<std::io::Error> for OutputError {
    fn from(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            Self::Closed
        } else {
            Self::Failed(error.into())
        }
    }
}

impl From<AudioWriteError> for OutputError {
    fn from(error: AudioWriteError) -> Self {
        match error {
            AudioWriteError::Io(io) => io.into(),
            other => Self::Failed(other.into()),
        }
    }
}

impl From<Mp4Error> for OutputError {
    fn from(error: Mp4Error) -> Self {
        match error {
            Mp4Error::Io(io) => io.into(),
            other => Self::Failed(other.into()),
        }
    }
}

impl Output {
    fn open(out: &str, audio_out: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let audio = audio_out
            .map(|path| -> anyhow::Result<AudioSink> {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                Ok(AudioFileWriter::new(
                    Box::new(std::io::BufWriter::new(file)) as Box<dyn Write + Send>,
                ))
            })
            .transpose()?;
        if out == "-" {
            return Ok(Self {
                json: false,
                video: VideoSink::AnnexB(Box::new(std::io::stdout())),
                audio,
                audio_in_mp4: false,
            });
        }
        let path = PathBuf::from(out);
        let is_mp4 = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("mp4"));
        let video = if is_mp4 {
            VideoSink::Mp4(Box::new(
                Mp4Writer::create(&path).with_context(|| format!("creating {}", path.display()))?,
            ))
        } else {
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            VideoSink::AnnexB(Box::new(std::io::BufWriter::new(file)))
        };
        Ok(Self {
            json: true,
            video,
            audio_in_mp4: is_mp4 && audio.is_none(),
            audio,
        })
    }

    /// One JSON line: on stdout when the video goes to a file, else on stderr. A closed
    /// stdout loses the line rather than panicking like `println!`.
    fn emit(&self, value: serde_json::Value) {
        let line = format!("{value}\n");
        let _ = if self.json {
            std::io::stdout().write_all(line.as_bytes())
        } else {
            std::io::stderr().write_all(line.as_bytes())
        };
    }

    /// Writes a frame to the output of its kind: video codecs to the video output, audio
    /// codecs to the audio output (or into the MP4), anything else nowhere.
    fn write_frame(&mut self, frame: &Frame) -> Result<Written, OutputError> {
        match frame.codec {
            Codec::H264 | Codec::H265 => {
                match &mut self.video {
                    VideoSink::AnnexB(writer) => {
                        writer.write_all(&frame.data)?;
                        // Flushed per frame: the file is always a playable prefix, and a
                        // lab watching it sees stalls to the frame.
                        writer.flush()?;
                    }
                    VideoSink::Mp4(mp4) => {
                        mp4.write_frame(frame)?;
                    }
                }
                Ok(Written::Video)
            }
            Codec::Aac | Codec::G711A | Codec::G711Mu => {
                if let Some(audio) = &mut self.audio {
                    audio.write(frame)?;
                    return Ok(Written::Audio);
                }
                match &mut self.video {
                    VideoSink::Mp4(mp4) if self.audio_in_mp4 => {
                        mp4.write_frame(frame)?;
                        Ok(Written::Audio)
                    }
                    _ => Ok(Written::Ignored),
                }
            }
            _ => Ok(Written::Ignored),
        }
    }

    fn finish(self) -> Result<(), OutputError> {
        if let Some(mut audio) = self.audio {
            audio.flush()?;
        }
        match self.video {
            VideoSink::AnnexB(mut writer) => writer.flush()?,
            VideoSink::Mp4(mp4) => {
                mp4.finish()?;
            }
        }
        Ok(())
    }
}

/// Most frames held while a viewer that chose a stream by name waits for the camera's
/// catalog; beyond, it stops waiting and writes what it gets (a camera that sends no
/// catalog).
const MAX_HELD_FRAMES: usize = 256;

/// Which received frames reach the outputs (spec/control.md §2): none of the camera's
/// other named streams. A frame of the stream the viewer left may arrive after the first
/// frames of the one it chose.
struct Selection {
    /// The stream ids of the catalog's other streams; `None` until the catalog came.
    others: Option<StreamSet>,
    /// Frames waiting for the catalog.
    held: Vec<Frame>,
}

impl Selection {
    /// `wait`: hold frames until the catalog says which stream ids are chosen.
    fn new(wait: bool) -> Self {
        Self {
            others: (!wait).then_some(StreamSet::EMPTY),
            held: Vec::new(),
        }
    }

    /// The frames to write now that `frame` arrived.
    fn admit(&mut self, frame: Frame, summary: &mut Summary) -> Vec<Frame> {
        match self.others {
            Some(others) if others.contains(frame.stream) => {
                summary.other_stream_frames += 1;
                Vec::new()
            }
            Some(_) => vec![frame],
            None => {
                self.held.push(frame);
                if self.held.len() < MAX_HELD_FRAMES {
                    return Vec::new();
                }
                tracing::warn!("no catalog from the camera: writing every stream");
                self.catalog(StreamSet::EMPTY)
            }
        }
    }

    /// A catalog came: `others` are the ids not to write. Returns the held frames to
    /// write now.
    fn catalog(&mut self, others: StreamSet) -> Vec<Frame> {
        self.others = Some(others);
        let (keep, drop): (Vec<Frame>, Vec<Frame>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|f| !others.contains(f.stream));
        if !drop.is_empty() {
            tracing::debug!(frames = drop.len(), "held frames of another stream dropped");
        }
        keep
    }
}

/// Writes received frames from the first keyframe on and counts them.
struct FrameWriter {
    started: Instant,
    /// When the first keyframe was written (ms since connecting started).
    first_keyframe: Option<u64>,
    frames_limit: Option<u64>,
    /// The output's reader went away.
    output_closed: bool,
}

impl FrameWriter {
    /// Writes `frames`; false once the viewer should stop (`--frames` written, or the
    /// output closed).
    fn write_all(
        &mut self,
        output: &mut Output,
        summary: &mut Summary,
        frames: Vec<Frame>,
    ) -> anyhow::Result<bool> {
        for frame in &frames {
            let video = matches!(frame.codec, Codec::H264 | Codec::H265);
            if video && self.first_keyframe.is_none() {
                if !frame.keyframe {
                    summary.ignored_before_keyframe += 1;
                    continue;
                }
                let ms = self.started.elapsed().as_millis() as u64;
                self.first_keyframe = Some(ms);
                output.emit(json!({"event": "first_keyframe", "ms": ms}));
            }
            match output.write_frame(frame) {
                Ok(Written::Video) => {
                    summary.frames += 1;
                    summary.bytes += frame.data.len() as u64;
                }
                Ok(Written::Audio) => summary.audio_frames += 1,
                Ok(Written::Ignored) => summary.ignored_frames += 1,
                Err(OutputError::Closed) => {
                    self.output_closed = true;
                    return Ok(false);
                }
                Err(OutputError::Failed(error)) => return Err(error),
            }
            if self.frames_limit.is_some_and(|n| summary.frames >= n) {
                return Ok(false);
            }
        }
        Ok(true)
    }
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
    let issuer = IssuerPublicKey::from_bytes(&parse_key(&args.issuer_key).context("--issuer-key")?)
        .map_err(|_| anyhow::anyhow!("--issuer-key is not an Ed25519 public key"))?;
    let state = state_dir(args.state_dir.clone());
    let keypair = load_or_create_key_file(&state, VIEWER_KEY_FILE)?;
    let mut known = KnownDevices::load(&state)?;
    // Trust on first use: a camera watched before must prove the same key again.
    let id = args.device.device_id();
    let target = match known.key_of(id) {
        Some(key) => {
            if !args.device.accepts_key(&key) {
                anyhow::bail!(
                    "{id}: the key pinned in {} does not match the label you gave",
                    state.display()
                );
            }
            Target::Pinned(id, key)
        }
        None => args.device,
    };
    let mut config = ViewerConfig::new(
        keypair,
        {
            let mut value = RendezvousServer::new(
                args.rendezvous.clone(),
                PublicKey::from_bytes(parse_key(&args.rendezvous_key).context("--rendezvous-key")?),
            );
            value.stream_port = Some(args.rendezvous_stream_port).filter(|port| *port != 0);
            value
        },
        TrustedIssuers::single(issuer),
    );
    config.bind = args.bind;
    config.connect_timeout = Duration::from_secs_f64(args.connect_timeout);
    if args.relay_only {
        config.path_policy = PathPolicy::RelayOnly;
    }
    let mut output = Output::open(&args.out, args.audio_out.as_deref())?;
    let credentials = match &args.password {
        Some(password) => Credentials::password(password.clone()),
        None => Credentials::trusted_key(),
    };

    let started = Instant::now();
    let mut viewer = match Viewer::connect(config, target, credentials).await {
        Ok(viewer) => viewer,
        Err(error) => {
            let (name, advice) = explain(&error, &args.rendezvous);
            output.emit(json!({"event": "failed", "error": name, "reason": error.to_string(), "ms": started.elapsed().as_millis() as u64}));
            anyhow::bail!("could not connect ({name}): {error}. {advice}");
        }
    };
    let connect_ms = started.elapsed().as_millis() as u64;
    let accepts = parse_codecs(&args.accept).map_err(|e| anyhow::anyhow!("--accept: {e}"))?;
    let select = ControlMessage::Select {
        stream: args.stream.clone(),
        accepts: accepts.clone(),
    }
    .encode()
    .context("--stream")?;
    let select = bytes::Bytes::from(select);
    if viewer.send_control(select.clone()).await.is_err() {
        tracing::warn!("could not send the stream choice");
    }
    // The first connection's PeerConnected; each later one is a reconnect, which gets
    // the choice again.
    let mut connections = 0u64;
    let mut refused: Option<String> = None;
    let talk = match &args.talk {
        Some(path) => {
            let data =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            talk_frames(path, &data).with_context(|| format!("--talk {}", path.display()))?
        }
        None => Vec::new(),
    };
    let mut talk = talk.into_iter().peekable();
    let talk_start = tokio::time::Instant::now();

    let mut summary = Summary::default();
    // A stream chosen by name: frames wait for the catalog that says which are its.
    let mut selection = Selection::new(!args.stream.is_empty());
    let mut writer = FrameWriter {
        started,
        first_keyframe: None,
        frames_limit: args.frames,
        output_closed: false,
    };
    let mut path = None;
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let streaming_since = Instant::now();
    // Created once, so a signal between two loop turns is not missed.
    let shutdown = sightwire_shutdown::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let stop = tokio::time::sleep_until(deadline.map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            Into::into,
        ));
        let talk_due =
            talk_start + Duration::from_micros(talk.peek().map_or(0, |f| f.capture_time_us));
        tokio::select! {
            () = tokio::time::sleep_until(talk_due), if talk.peek().is_some() => {
                if let Some(frame) = talk.next() {
                    summary.talk_frames += 1;
                    if viewer.send_frame(frame).await.is_err() {
                        break;
                    }
                }
            }
            event = viewer.next_event() => {
                let Some(event) = event else { break };
                match event {
                    Event::PeerConnected { path: p, key, .. } => {
                        if known.remember(&state, id, key)? {
                            tracing::info!(%id, "pinned the camera's key (first use)");
                        }
                        path = p;
                        output.emit(json!({"event": "connected", "path": p.map(|p| p.kind_name()), "connect_ms": connect_ms}));
                        connections += 1;
                        if connections > 1 && viewer.send_control(select.clone()).await.is_err() {
                            tracing::warn!("could not send the stream choice again");
                        }
                    }
                    Event::PathChanged { path: p, .. } => {
                        let first = path.is_none();
                        path = Some(p);
                        if first {
                            output.emit(json!({"event": "connected", "path": p.kind_name(), "connect_ms": connect_ms}));
                        } else {
                            output.emit(json!({"event": "path_changed", "path": p.kind_name(), "rtt_ms": p.rtt.as_secs_f64() * 1e3}));
                        }
                    }
                    Event::PathLost { .. } => output.emit(json!({"event": "path_lost"})),
                    Event::Frame { frame, .. } => {
                        let ready = selection.admit(frame.frame, &mut summary);
                        if !writer.write_all(&mut output, &mut summary, ready)? {
                            break;
                        }
                    }
                    Event::Stats { stats, .. } => {
                        summary.lost = stats.frames_dropped;
                        summary.skipped = stats.frames_skipped;
                        summary.late = stats.frames_late;
                        summary.loss = stats.loss;
                        summary.rtt_ms = stats.rtt.map(|r| r.as_secs_f64() * 1e3);
                        summary.bitrate_bps = stats.target_bitrate_bps;
                        if stats.path.is_some() {
                            path = stats.path;
                        }
                    }
                    Event::Control { message, .. } => {
                        match ControlMessage::decode(&message) {
                            Ok(ControlMessage::Catalog { streams }) => {
                                output.emit(json!({"event": "catalog", "streams": streams.iter().map(|s| json!({
                                    "name": s.name,
                                    "codecs": s.tracks.iter().map(|t| codec_name(t.codec)).collect::<Vec<_>>(),
                                })).collect::<Vec<_>>()}));
                                if let Err(refusal) = choose(&streams, &args.stream, &accepts) {
                                    refused = Some(refusal.to_string());
                                    output.emit(json!({"event": "failed", "error": refusal.reason().name(), "reason": refusal.to_string()}));
                                    break;
                                }
                                let ready = selection.catalog(other_streams(&streams, &args.stream));
                                if !writer.write_all(&mut output, &mut summary, ready)? {
                                    break;
                                }
                            }
                            Ok(ControlMessage::Status { state, reason, text }) => {
                                output.emit(json!({"event": "camera_status", "state": format!("{state:?}").to_lowercase(), "reason": reason.name(), "text": text}));
                                eprintln!("\rcamera: source {} ({}){}", format!("{state:?}").to_lowercase(), reason.name(), if text.is_empty() { String::new() } else { format!(": {text}") });
                                if matches!(reason, StatusReason::CodecNotAccepted | StatusReason::UnknownStream) {
                                    refused = Some(format!("the camera refused the stream choice ({}): {text}", reason.name()));
                                    break;
                                }
                            }
                            // A newer camera's message, or a broken one: not ours to act on.
                            Ok(_) | Err(_) => summary.ignored_control += 1,
                        }
                    }
                    Event::PeerClosed { reason, .. } => {
                        output.emit(json!({"event": "closed", "reason": format!("{reason:?}")}));
                        break;
                    }
                    _ => {}
                }
            }
            _ = status_tick.tick() => {
                let secs = streaming_since.elapsed().as_secs_f64().max(1e-3);
                eprint!(
                    "\r{} rtt {} ms  {:.1} Mbit/s  {:.1} fps  loss {:.1} %  frames {}   ",
                    path.map_or("-", |p| p.kind_name()),
                    summary.rtt_ms.map_or("-".into(), |r| format!("{r:.0}")),
                    summary.bytes as f64 * 8.0 / secs / 1e6,
                    summary.frames as f64 / secs,
                    summary.loss * 100.0,
                    summary.frames,
                );
            }
            () = stop => break,
            () = &mut shutdown => break,
        }
    }
    eprintln!();
    output.emit(json!({
        "event": "summary",
        "frames": summary.frames,
        "bytes": summary.bytes,
        "audio_frames": summary.audio_frames,
        "ignored_frames": summary.ignored_frames,
        "ignored_control": summary.ignored_control,
        "talk_frames": summary.talk_frames,
        "lost": summary.lost,
        "late": summary.late,
        "skipped_before_keyframe": summary.skipped,
        "ignored_before_keyframe": summary.ignored_before_keyframe,
        "bitrate_bps": summary.bitrate_bps,
        "streaming_ms": streaming_since.elapsed().as_millis() as u64,
        "path": path.map(|p| p.kind_name()),
        "connect_ms": connect_ms,
        "first_keyframe_ms": writer.first_keyframe,
        "other_stream_frames": summary.other_stream_frames,
        "output_closed": writer.output_closed,
    }));
    // Finalize the file first: a second Ctrl-C during the close must not cost the MP4 index.
    let finished = output.finish();
    // The goodbye goes out whatever happened to the output.
    viewer.close().await;
    let closed = match finished {
        Ok(()) => writer.output_closed,
        Err(OutputError::Closed) => true,
        Err(OutputError::Failed(error)) => return Err(error),
    };
    if let Some(refusal) = refused {
        eprintln!("viewer: {refusal}; exiting with status {EXIT_STREAM_REFUSED}");
        std::process::exit(EXIT_STREAM_REFUSED);
    }
    if closed {
        eprintln!(
            "viewer: the output was closed (its reader went away); said goodbye to the \
             camera, exiting with status {EXIT_OUTPUT_CLOSED}"
        );
        std::process::exit(EXIT_OUTPUT_CLOSED);
    }
    Ok(())
}

/// A stable name for a connect error (the `error` field of the `failed` line) and what
/// the person at the keyboard can do about it.
fn explain(error: &ConnectError, rendezvous: &ServerAddr) -> (&'static str, String) {
    match error {
        ConnectError::RendezvousKeyMismatch => (
            "rendezvous_key_mismatch",
            format!(
                "The server at {rendezvous} holds another key: check --rendezvous-key \
                 (the operator may have changed it)."
            ),
        ),
        ConnectError::RendezvousUnreachable => (
            "rendezvous_unreachable",
            format!(
                "Nothing answers at {rendezvous}: is the server running, are the host and \
                 port right, does this network let UDP or TCP to port 443 out?"
            ),
        ),
        ConnectError::RendezvousUnresolved(_) => (
            "rendezvous_unresolved",
            format!("Check the host name {rendezvous} and this machine's DNS."),
        ),
        ConnectError::Unavailable => (
            "device_offline",
            "The camera is offline, its ID is unknown, or it did not accept these \
             credentials (the rendezvous does not say which): check that it is online, \
             the ID and the password."
                .into(),
        ),
        ConnectError::NoPath => (
            "no_path",
            "Neither a direct path nor the relay reached the camera.".into(),
        ),
        ConnectError::Timeout => (
            "timeout",
            "The camera did not complete the connection in time.".into(),
        ),
        ConnectError::CertificateInvalid => (
            "certificate_invalid",
            "The camera's ID certificate is not from a trusted issuer (--issuer-key).".into(),
        ),
        ConnectError::KeyMismatch => (
            "device_key_mismatch",
            "The camera's key is not the one pinned: a replaced camera or an impostor.".into(),
        ),
        ConnectError::NotAuthorized(_) => (
            "not_authorized",
            "The camera refused this viewer: check the password.".into(),
        ),
        ConnectError::DeviceBusy => (
            "device_busy",
            "The camera serves as many viewers as it may.".into(),
        ),
        _ => ("other", String::new()),
    }
}

#[derive(Default)]
struct Summary {
    /// Video frames written.
    frames: u64,
    /// Audio frames written (or taken as configuration).
    audio_frames: u64,
    /// Frames of a codec no output takes.
    ignored_frames: u64,
    /// Frames of a camera stream this viewer did not choose (sent before its choice
    /// reached the camera, or held while it waited for the catalog).
    other_stream_frames: u64,
    /// Control messages that were not for the viewer or did not decode.
    ignored_control: u64,
    /// Talk-back frames sent.
    talk_frames: u64,
    /// Frames the endpoint delivered before the first keyframe (not written: they
    /// cannot be decoded).
    ignored_before_keyframe: u64,
    bytes: u64,
    lost: u64,
    skipped: u64,
    late: u64,
    loss: f64,
    rtt_ms: Option<f64>,
    bitrate_bps: u64,
}
