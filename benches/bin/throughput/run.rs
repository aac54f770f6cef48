//! One measurement: a fresh loopback deployment (issuer, rendezvous, relay with its
//! default cap), a real `Device` and a real `ViewerEndpoint` watching it, a camera task
//! offering frames at a fixed rate for a fixed time, and a viewer task recording what
//! arrives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use sightwire::{
    Codec, Credentials, Device, DeviceConfig, Event, Frame, PathKind, PathPolicy, PeerStats,
    SocketBuffers, StreamId, Target, Viewer, ViewerEndpoint,
};
use sightwire_examples::local::LocalNetwork;
use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint};
use sightwire_relay::RelayStats;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::split::{ReceiverCounters, ViewerChild, ViewerFinished, ViewerSetup};
use crate::tally::{DeliveredFrame, SentFrame, Tally};
use sightwire_benches::kernel::{self, CpuTimes};

const DEVICE_ID: &str = "1C:C3:16:AB:CD:EF";
const PASSWORD: &str = "throughput";
/// Longest any setup step (registration, connect, first path) may take.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait after the last frame for the counters to settle.
pub(crate) const MAX_DRAIN: Duration = Duration::from_secs(15);
/// Smallest frame the adapting camera makes, however low the target.
const MIN_FRAME_BYTES: usize = 64;

/// Which path the stream must take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PathMode {
    /// Both ends `PathPolicy::RelayOnly`: every packet goes through the relay.
    Relay,
    /// `PathPolicy::Any` with no relay allocation: camera and viewer talk directly
    /// (a LAN path on loopback).
    Direct,
}

impl PathMode {
    /// `relay` or `direct`, as on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            PathMode::Relay => "relay",
            PathMode::Direct => "direct",
        }
    }
}

/// The synthetic stream: a keyframe every `gop` frames, fixed sizes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameShape {
    /// Bytes of a keyframe.
    pub(crate) keyframe_bytes: usize,
    /// Bytes of every other frame.
    pub(crate) delta_bytes: usize,
    /// Frames per keyframe interval.
    pub(crate) gop: u32,
}

impl FrameShape {
    /// Mean frame size over one GOP, bits.
    pub(crate) fn mean_frame_bits(&self) -> f64 {
        let gop = f64::from(self.gop);
        (self.keyframe_bytes as f64 + (gop - 1.0) * self.delta_bytes as f64) * 8.0 / gop
    }

    /// Frames per second that make `offered_bps` with this shape.
    pub(crate) fn fps(&self, offered_bps: f64) -> f64 {
        offered_bps / self.mean_frame_bits()
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub(crate) struct RunConfig {
    pub(crate) path: PathMode,
    /// Offered rate, bits per second.
    pub(crate) offered_bps: f64,
    /// Length of the offered stream.
    pub(crate) seconds: f64,
    /// Scale frame sizes to the device's `Event::TargetBitrate`.
    pub(crate) adapt: bool,
    pub(crate) shape: FrameShape,
    /// Socket buffer size the device and viewer ask the kernel for.
    pub(crate) socket_buffer_bytes: usize,
    /// Media parameters of the device and the viewer.
    pub(crate) media: sightwire_media::Config,
    /// Run the viewer in a process of its own (`split`), not in this one.
    pub(crate) viewer_process: bool,
}

/// Kernel receive-buffer drops per socket.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SocketDrops {
    pub(crate) device: Option<u64>,
    pub(crate) viewer: Option<u64>,
    pub(crate) relay: Option<u64>,
}

/// What one run measured.
#[derive(Debug)]
pub(crate) struct RunResult {
    pub(crate) fps: f64,
    pub(crate) tally: Tally,
    /// The offered window: the nominal length, or longer if the camera fell behind.
    pub(crate) window: Duration,
    /// The last `Event::TargetBitrate` the device reported.
    pub(crate) last_target_bps: Option<u64>,
    /// `Event::TargetBitrate` events the device reported.
    pub(crate) target_events: u64,
    /// Whether the counters stopped moving before the drain gave up ([`MAX_DRAIN`]).
    pub(crate) settled: bool,
    /// The device's last figures for the viewer (sender side).
    pub(crate) device_stats: Option<PeerStats>,
    /// Highest fragment send rate the device reported.
    pub(crate) peak_send_bps: u64,
    /// The viewer's last media counters for the device (receiver side).
    pub(crate) viewer_stats: Option<ReceiverCounters>,
    /// The relay's counters (whole deployment; only this stream uses it).
    pub(crate) relay: Option<RelayStats>,
    pub(crate) drops: SocketDrops,
    pub(crate) device_buffers: SocketBuffers,
    pub(crate) viewer_buffers: SocketBuffers,
    /// Path kinds the viewer reported, in order, without repeats (`path_kind_name`).
    pub(crate) paths: Vec<String>,
    /// CPU time this process used during the stream and drain (every component, or
    /// all but the viewer when it has its own process).
    pub(crate) cpu: Option<CpuTimes>,
    /// CPU time of the viewer's own process over its whole life, when it has one.
    pub(crate) viewer_cpu: Option<CpuTimes>,
    /// The machine's one-minute load average after the run.
    pub(crate) load: Option<f64>,
}

/// What the viewer task saw.
#[derive(Debug, Default)]
pub(crate) struct ViewerLog {
    pub(crate) frames: Vec<DeliveredFrame>,
    pub(crate) stats: Option<PeerStats>,
    pub(crate) paths: Vec<PathKind>,
    pub(crate) closed: bool,
}

impl ViewerLog {
    fn note_path(&mut self, kind: PathKind) {
        if self.paths.last() != Some(&kind) {
            self.paths.push(kind);
        }
    }
}

/// What the device reported while the camera ran.
#[derive(Debug, Default)]
struct DeviceLog {
    last_target_bps: Option<u64>,
    target_events: u64,
    stats: Option<PeerStats>,
    /// Highest fragment send rate in any report the device made (each covers one media
    /// report interval).
    peak_send_bps: u64,
}

impl DeviceLog {
    /// Records a device event; an error if the viewer went away.
    fn note(&mut self, event: Option<Event>) -> anyhow::Result<()> {
        match event {
            Some(Event::TargetBitrate { bps }) => {
                self.last_target_bps = Some(bps);
                self.target_events += 1;
            }
            Some(Event::Stats { stats, .. }) => {
                self.peak_send_bps = self.peak_send_bps.max(stats.media.send_bitrate_bps);
                self.stats = Some(stats);
            }
            Some(Event::PeerClosed { reason, .. }) => {
                bail!("the viewer connection closed during the run: {reason:?}")
            }
            Some(_) => {}
            None => bail!("the device stopped during the run"),
        }
        Ok(())
    }
}

/// Runs one measurement on a fresh deployment.
pub(crate) async fn run(config: &RunConfig) -> anyhow::Result<RunResult> {
    let dir = tempfile::tempdir().context("creating a temporary registry directory")?;
    let mut network = LocalNetwork::start(&dir.path().join("registry.sqlite"))
        .await
        .context("starting the rendezvous and relay")?;
    let result = run_on(&mut network, config).await;
    let relay = network.shutdown().await;
    result.map(|mut result| {
        result.relay = relay;
        result
    })
}

async fn run_on(network: &mut LocalNetwork, config: &RunConfig) -> anyhow::Result<RunResult> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let policy = match config.path {
        PathMode::Relay => PathPolicy::RelayOnly,
        PathMode::Direct => PathPolicy::Any,
    };
    let id: DeviceId = DEVICE_ID.parse().context("device id")?;
    let identity = network.provision(id)?;
    let uri = DeviceUri::new(
        id,
        KeyFingerprint::of_public_key(identity.certificate.device_key()),
    );
    let mut device_config = DeviceConfig::new(identity, network.rendezvous.clone());
    device_config.bind = loopback;
    device_config.password = Some(PASSWORD.into());
    device_config.path_policy = policy;
    device_config.socket_buffer_bytes = config.socket_buffer_bytes;
    device_config.media = config.media.clone();
    let mut device = Device::start(device_config)
        .await
        .context("starting the device")?;
    wait_for(&mut device, "registration", |e| {
        matches!(e, Event::Registered { .. })
    })
    .await?;

    let (progress_tx, mut progress) = watch::channel(0);
    let viewer = if config.viewer_process {
        let setup = ViewerSetup {
            rendezvous: network.rendezvous_address().to_string(),
            rendezvous_key: hex::encode(network.rendezvous.public_key),
            issuer_key: hex::encode(network.issuer.public().to_bytes()),
            device: uri.to_string(),
            password: PASSWORD.into(),
            relay_only: config.path == PathMode::Relay,
            socket_buffer_bytes: config.socket_buffer_bytes,
            pacing_factor_percent: config.media.pacing_factor_percent,
            max_bitrate_bps: config.media.max_bitrate_bps,
        };
        ViewerSide::Process(ViewerChild::spawn(&setup, progress_tx)?)
    } else {
        let mut viewer_config = network.viewer_config();
        viewer_config.bind = loopback;
        viewer_config.path_policy = policy;
        viewer_config.socket_buffer_bytes = config.socket_buffer_bytes;
        viewer_config.media = config.media.clone();
        viewer_config.want_relay = config.path == PathMode::Relay;
        let endpoint = ViewerEndpoint::bind(viewer_config)
            .await
            .context("binding the viewer")?;
        let viewer = timeout(
            SETUP_TIMEOUT,
            endpoint.watch(Target::Uri(uri), Credentials::password(PASSWORD)),
        )
        .await
        .context("the viewer did not connect in time")?
        .context("the viewer could not connect")?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(record(viewer, stopped, progress_tx));
        ViewerSide::Task {
            endpoint,
            task,
            stop,
        }
    };
    let connected = wait_for(&mut device, "the viewer's connection", |e| {
        matches!(e, Event::PeerConnected { .. })
    })
    .await?;
    let Event::PeerConnected { path, .. } = connected else {
        bail!("unexpected device event {connected:?}");
    };
    // The device may learn the path just after the session: then its next path news.
    let kind = match path {
        Some(path) => Some(path.kind),
        None => path_kind(
            &wait_for(&mut device, "the stream's path", |e| path_kind(e).is_some()).await?,
        ),
    };
    let wanted = match config.path {
        PathMode::Relay => matches!(kind, Some(PathKind::Relay)),
        PathMode::Direct => matches!(kind, Some(PathKind::Lan | PathKind::Direct)),
    };
    if !wanted {
        bail!(
            "the stream starts on {:?}, not on the {} path",
            kind,
            config.path.name()
        );
    }

    let cpu_before = kernel::process_cpu();
    let mut device_log = DeviceLog::default();
    let sent = camera(&mut device, &mut device_log, config).await;
    let settled = match sent {
        Ok(_) => drain(&mut device, &mut device_log, &mut progress).await,
        Err(_) => Ok(false),
    };
    let cpu = kernel::process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after.since(before));
    let finished = viewer.finish().await;
    let (sent, settled) = match (sent, settled) {
        (Ok(sent), Ok(settled)) => (sent, settled),
        (Err(error), _) | (_, Err(error)) => return Err(error),
    };
    let finished = finished?;
    if finished.closed {
        bail!("the device closed the viewer's connection during the run");
    }
    let drops = SocketDrops {
        device: kernel::socket_drops(device.local_addr()),
        viewer: finished.socket_drops,
        relay: kernel::socket_drops(network.relay_address),
    };
    let device_buffers = device.socket_buffers();
    device.shutdown().await;

    let fps = config.shape.fps(config.offered_bps);
    let nominal = Duration::from_secs_f64(config.seconds);
    let t0 = sent.t0;
    let last = sent.frames.last().map_or(t0, |f| f.at);
    let window = nominal.max(last.saturating_duration_since(t0));
    Ok(RunResult {
        fps,
        tally: Tally::new(&sent.frames, &finished.frames),
        window,
        last_target_bps: device_log.last_target_bps,
        target_events: device_log.target_events,
        device_stats: device_log.stats,
        peak_send_bps: device_log.peak_send_bps,
        settled,
        viewer_stats: finished.counters,
        relay: None,
        drops,
        device_buffers,
        viewer_buffers: finished.buffers,
        paths: finished.paths,
        cpu,
        viewer_cpu: finished.cpu,
        load: kernel::load_average(),
    })
}

/// Where the viewer runs.
enum ViewerSide {
    /// A task of this process.
    Task {
        endpoint: ViewerEndpoint,
        task: JoinHandle<(Viewer, ViewerLog)>,
        stop: oneshot::Sender<()>,
    },
    /// A process of its own.
    Process(ViewerChild),
}

impl ViewerSide {
    /// Stops the viewer and returns what it measured.
    async fn finish(self) -> anyhow::Result<ViewerFinished> {
        match self {
            ViewerSide::Task {
                endpoint,
                task,
                stop,
            } => {
                let _ = stop.send(());
                let (viewer, log) = task.await.context("the viewer task failed")?;
                let finished = ViewerFinished {
                    frames: log.frames,
                    counters: log.stats.map(|s| ReceiverCounters::of(&s.media)),
                    paths: log
                        .paths
                        .into_iter()
                        .map(|k| sightwire::path_kind_name(k).to_owned())
                        .collect(),
                    closed: log.closed,
                    buffers: endpoint.socket_buffers(),
                    socket_drops: kernel::socket_drops(endpoint.local_addr()),
                    cpu: None,
                };
                drop(viewer);
                endpoint.shutdown().await;
                Ok(finished)
            }
            ViewerSide::Process(child) => child.finish().await,
        }
    }
}

/// The frames the camera handed over, and when it started.
struct Sent {
    t0: Instant,
    frames: Vec<SentFrame>,
}

/// Offers frames on schedule for the configured time, reading device events meanwhile.
/// With `adapt`, frame sizes follow the device's target bitrate.
async fn camera(
    device: &mut Device,
    log: &mut DeviceLog,
    config: &RunConfig,
) -> anyhow::Result<Sent> {
    let shape = config.shape;
    let fps = shape.fps(config.offered_bps);
    let total = (config.seconds * fps).floor() as u64;
    let keyframe = pattern(shape.keyframe_bytes, 0x4b);
    let delta = pattern(shape.delta_bytes, 0x44);
    // An adapting encoder starts where the library's bitrate controller starts.
    let mut target_bps = config.media.initial_bitrate_bps;
    let mut frames = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let t0 = Instant::now();
    let due = |index: u64| t0 + Duration::from_secs_f64(index as f64 / fps);
    let mut next = 0u64;
    while next < total {
        tokio::select! {
            biased;
            event = device.next_event() => {
                log.note(event)?;
                if let Some(bps) = log.last_target_bps {
                    target_bps = bps;
                }
                continue;
            }
            () = tokio::time::sleep_until(due(next).into()) => {}
        }
        let scale = if config.adapt {
            (target_bps as f64 / config.offered_bps).min(1.0)
        } else {
            1.0
        };
        let now = Instant::now();
        while next < total && due(next) <= now {
            let is_key = next.is_multiple_of(u64::from(shape.gop));
            let full = if is_key { &keyframe } else { &delta };
            let len = ((full.len() as f64 * scale) as usize)
                .max(MIN_FRAME_BYTES)
                .min(full.len());
            let at = Instant::now();
            // The capture time advances with real time, as the media layer requires
            // (its deadlines are derived from it), and strictly, so it also names the
            // frame: the media layer's own sequence skips a frame its sender refuses,
            // and the viewer could not see that gap.
            let elapsed =
                u64::try_from(at.saturating_duration_since(t0).as_micros()).unwrap_or(u64::MAX);
            let capture_us = frames
                .last()
                .map_or(elapsed, |last: &SentFrame| elapsed.max(last.capture_us + 1));
            let frame = Frame::new(StreamId::VIDEO, Codec::H264, capture_us, full.slice(..len))
                .with_keyframe(is_key)
                .with_codec_config(is_key);
            frames.push(SentFrame {
                at,
                capture_us,
                len,
            });
            if device.send_frame(frame).await.is_err() {
                bail!("the device stopped during the run");
            }
            next += 1;
        }
    }
    Ok(Sent { t0, frames })
}

/// After the last frame: reads device events until what was queued has left or expired —
/// the device's fragment counters and the viewer's receive counters each unchanged
/// between two consecutive reports (a second apart), and at least one latency budget
/// passed. Returns whether that happened within [`MAX_DRAIN`].
async fn drain(
    device: &mut Device,
    log: &mut DeviceLog,
    viewer_progress: &mut watch::Receiver<u64>,
) -> anyhow::Result<bool> {
    let started = tokio::time::Instant::now();
    let earliest = started + sightwire::DEFAULT_LATENCY_BUDGET;
    let latest = started + MAX_DRAIN;
    let (mut device_last, mut viewer_last) = (None, None);
    let (mut device_settled, mut viewer_settled) = (false, false);
    loop {
        tokio::select! {
            event = device.next_event() => {
                if let Some(Event::Stats { stats, .. }) = &event {
                    let now = stats.media.fragments_sent + stats.media.fragments_retransmitted;
                    device_settled = device_last == Some(now);
                    device_last = Some(now);
                }
                log.note(event)?;
            }
            changed = viewer_progress.changed() => {
                if changed.is_err() {
                    bail!("the viewer stopped during the run");
                }
                let now = *viewer_progress.borrow_and_update();
                viewer_settled = viewer_last == Some(now);
                viewer_last = Some(now);
            }
            () = tokio::time::sleep_until(latest) => return Ok(false),
        }
        if device_settled && viewer_settled && tokio::time::Instant::now() >= earliest {
            return Ok(true);
        }
    }
}

/// A number that changes whenever the viewer's media layer receives a fragment or
/// settles a frame.
fn receive_progress(stats: &PeerStats) -> u64 {
    let media = &stats.media;
    media.fragments_received
        + media.frames_delivered
        + media.frames_late
        + media.frames_evicted
        + media.frames_discarded_awaiting_keyframe
}

/// Records every frame and figure the viewer receives until told to stop, publishing the
/// receive progress at every report.
pub(crate) async fn record(
    mut viewer: Viewer,
    mut stop: oneshot::Receiver<()>,
    progress: watch::Sender<u64>,
) -> (Viewer, ViewerLog) {
    let mut log = ViewerLog::default();
    loop {
        tokio::select! {
            biased;
            event = viewer.next_event() => match event {
                Some(Event::Frame { frame, .. }) => log.frames.push(DeliveredFrame {
                    capture_us: frame.frame.capture_time_us,
                    keyframe: frame.frame.keyframe,
                    len: frame.frame.data.len(),
                    at: Instant::now(),
                }),
                Some(Event::Stats { stats, .. }) => {
                    if let Some(path) = stats.path {
                        log.note_path(path.kind);
                    }
                    // Every report is news, even with equal figures (that is the point).
                    progress.send_replace(receive_progress(&stats));
                    log.stats = Some(stats);
                }
                Some(Event::PeerConnected { path: Some(path), .. })
                | Some(Event::PathChanged { path, .. }) => log.note_path(path.kind),
                Some(Event::PeerClosed { .. }) => log.closed = true,
                Some(_) => {}
                None => break,
            },
            _ = &mut stop => break,
        }
    }
    (viewer, log)
}

/// The path kind an event names, if any.
fn path_kind(event: &Event) -> Option<PathKind> {
    match event {
        Event::PathChanged { path, .. } => Some(path.kind),
        Event::Stats { stats, .. } => stats.path.map(|p| p.kind),
        _ => None,
    }
}

/// Waits for the device event `matches` accepts.
async fn wait_for(
    device: &mut Device,
    what: &str,
    mut matches: impl FnMut(&Event) -> bool,
) -> anyhow::Result<Event> {
    timeout(SETUP_TIMEOUT, async {
        loop {
            match device.next_event().await {
                Some(event) if matches(&event) => return Ok(event),
                Some(_) => {}
                None => bail!("the device stopped while waiting for {what}"),
            }
        }
    })
    .await
    .with_context(|| format!("timed out waiting for {what}"))?
}

/// `len` bytes of a repeating pattern (not video; the viewer does not decode).
fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect::<Vec<u8>>()
        .into()
}
