//! `--processes 2`: the viewer runs in a child process (this same binary, started with
//! the hidden `--viewer-child`), so the camera with its device and the viewer each have a
//! process and a runtime of their own, as on two machines.
//!
//! The parent passes the child a [`ViewerSetup`] (JSON, one argument). The child writes
//! `progress N` lines to its stdout at every receiver report (the drain waits on them)
//! and, when its stdin closes, one `report {json}` line ([`ViewerReport`]) and exits. Both
//! processes stamp times on the same clock (`CLOCK_REALTIME`, microseconds since the
//! epoch), so latency is still the `send_frame` call to the viewer's `Event::Frame`.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sightwire::{
    Credentials, PathPolicy, RendezvousServer, SocketBuffers, Target, ViewerConfig, ViewerEndpoint,
};
use sightwire_examples::identity::parse_key;
use sightwire_id::DeviceUri;
use sightwire_session::{PublicKey, StaticKeypair};
use sightwire_signal::cert::{IssuerPublicKey, TrustedIssuers};
use tokio::sync::{oneshot, watch};
use tokio::time::timeout;

use crate::run::{SETUP_TIMEOUT, ViewerLog, record};
use crate::tally::DeliveredFrame;
use sightwire_benches::kernel::{self, CpuTimes};

/// Longest wait for the child's report after its stdin closed.
const REPORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest line the parent reads from the child (the report: ~40 bytes per frame).
const MAX_LINE_BYTES: u64 = 64 << 20;

/// What the child needs to watch the camera.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ViewerSetup {
    /// The rendezvous's UDP address.
    pub(crate) rendezvous: String,
    /// Its static public key, 64 hex digits.
    pub(crate) rendezvous_key: String,
    /// The issuer's public key, 64 hex digits.
    pub(crate) issuer_key: String,
    /// The camera's label URI.
    pub(crate) device: String,
    pub(crate) password: String,
    /// `PathPolicy::RelayOnly` and a relay allocation; otherwise `PathPolicy::Any`.
    pub(crate) relay_only: bool,
    pub(crate) socket_buffer_bytes: usize,
    /// The media parameters that may differ from `default_media_config()`.
    pub(crate) pacing_factor_percent: u32,
    pub(crate) max_bitrate_bps: u64,
}

/// The receiver's media counters the tables use.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct ReceiverCounters {
    pub(crate) frames_delivered: u64,
    pub(crate) frames_late: u64,
    pub(crate) frames_evicted: u64,
    pub(crate) frames_discarded_awaiting_keyframe: u64,
    pub(crate) fragments_received: u64,
    pub(crate) nacks_sent: u64,
}

impl ReceiverCounters {
    pub(crate) fn of(media: &sightwire_media::Stats) -> ReceiverCounters {
        ReceiverCounters {
            frames_delivered: media.frames_delivered,
            frames_late: media.frames_late,
            frames_evicted: media.frames_evicted,
            frames_discarded_awaiting_keyframe: media.frames_discarded_awaiting_keyframe,
            fragments_received: media.fragments_received,
            nacks_sent: media.nacks_sent,
        }
    }
}

/// What the viewer side measured, in either mode.
#[derive(Debug)]
pub(crate) struct ViewerFinished {
    pub(crate) frames: Vec<DeliveredFrame>,
    pub(crate) counters: Option<ReceiverCounters>,
    /// Path kinds, in order, without repeats (`path_kind_name`).
    pub(crate) paths: Vec<String>,
    pub(crate) closed: bool,
    pub(crate) buffers: SocketBuffers,
    pub(crate) socket_drops: Option<u64>,
    /// CPU time of the viewer's own process (`None` when it shares the parent's).
    pub(crate) cpu: Option<CpuTimes>,
}

/// The child's last line, as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct ViewerReport {
    /// `(capture_us, keyframe, len, at)`, `at` in microseconds since the Unix epoch.
    frames: Vec<(u64, bool, usize, u64)>,
    counters: Option<ReceiverCounters>,
    paths: Vec<String>,
    closed: bool,
    buffers: (usize, usize),
    socket_drops: Option<u64>,
    /// The child process's whole CPU time, user and system, ms.
    cpu_ms: Option<(u64, u64)>,
}

/// One instant on both clocks, to carry times between the processes.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    instant: Instant,
    wall: SystemTime,
}

impl Anchor {
    fn now() -> Anchor {
        Anchor {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn wall_us(self, at: Instant) -> u64 {
        let wall = match at.checked_duration_since(self.instant) {
            Some(after) => self.wall + after,
            None => self.wall - self.instant.duration_since(at),
        };
        let since_epoch = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        u64::try_from(since_epoch.as_micros()).unwrap_or(u64::MAX)
    }

    fn instant(self, wall_us: u64) -> Instant {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_micros(wall_us);
        match wall.duration_since(self.wall) {
            Ok(after) => self.instant + after,
            Err(before) => self
                .instant
                .checked_sub(before.duration())
                .unwrap_or(self.instant),
        }
    }
}

/// The child's whole life: watch the camera, report progress, report everything when
/// stdin closes.
pub(crate) async fn viewer_main(setup: &str) -> anyhow::Result<()> {
    let setup: ViewerSetup = serde_json::from_str(setup).context("--viewer-child setup")?;
    let issuer = IssuerPublicKey::from_bytes(&parse_key(&setup.issuer_key)?)
        .map_err(|_| anyhow::anyhow!("the issuer key is not an Ed25519 public key"))?;
    let mut config = ViewerConfig::new(
        StaticKeypair::generate(&mut rand::rngs::OsRng),
        RendezvousServer::new(
            setup
                .rendezvous
                .parse::<sightwire::ServerAddr>()
                .context("rendezvous address")?,
            PublicKey::from_bytes(parse_key(&setup.rendezvous_key)?),
        ),
        TrustedIssuers::single(issuer),
    );
    config.bind = ([127, 0, 0, 1], 0).into();
    config.path_policy = if setup.relay_only {
        PathPolicy::RelayOnly
    } else {
        PathPolicy::Any
    };
    config.want_relay = setup.relay_only;
    config.socket_buffer_bytes = setup.socket_buffer_bytes;
    config.media = sightwire::default_media_config();
    config.media.pacing_factor_percent = setup.pacing_factor_percent;
    config.media.max_bitrate_bps = setup.max_bitrate_bps;
    let uri: DeviceUri = setup.device.parse().context("device URI")?;
    let endpoint = ViewerEndpoint::bind(config)
        .await
        .context("binding the viewer")?;
    let viewer = timeout(
        SETUP_TIMEOUT,
        endpoint.watch(Target::Uri(uri), Credentials::password(setup.password)),
    )
    .await
    .context("the viewer did not connect in time")?
    .context("the viewer could not connect")?;

    // The parent closes our stdin to say "stop" (or dies, which closes it too).
    let (stop, stopped) = oneshot::channel();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = stop.send(());
    });
    let (progress_tx, mut progress) = watch::channel(0);
    let recorder = tokio::spawn(record(viewer, stopped, progress_tx));
    while progress.changed().await.is_ok() {
        let now = *progress.borrow_and_update();
        let mut out = std::io::stdout().lock();
        writeln!(out, "progress {now}")?;
        out.flush()?;
    }
    let (viewer, log) = recorder.await.context("the viewer task failed")?;
    let anchor = Anchor::now();
    let ViewerLog {
        frames,
        stats,
        paths,
        closed,
    } = log;
    let buffers = endpoint.socket_buffers();
    let report = ViewerReport {
        frames: frames
            .iter()
            .map(|f| (f.capture_us, f.keyframe, f.len, anchor.wall_us(f.at)))
            .collect(),
        counters: stats.map(|s| ReceiverCounters::of(&s.media)),
        paths: paths
            .into_iter()
            .map(|k| sightwire::path_kind_name(k).to_owned())
            .collect(),
        closed,
        buffers: (buffers.receive, buffers.send),
        socket_drops: kernel::socket_drops(endpoint.local_addr()),
        cpu_ms: kernel::process_cpu().map(|c| (millis(c.user), millis(c.system))),
    };
    drop(viewer);
    endpoint.shutdown().await;
    let mut out = std::io::stdout().lock();
    writeln!(out, "report {}", serde_json::to_string(&report)?)?;
    out.flush()?;
    Ok(())
}

/// The parent's handle on the child viewer.
pub(crate) struct ViewerChild {
    child: Child,
    stdin: Option<ChildStdin>,
    report: oneshot::Receiver<anyhow::Result<ViewerReport>>,
}

impl ViewerChild {
    /// Starts this binary as the viewer; its receive progress goes to `progress`.
    pub(crate) fn spawn(setup: &ViewerSetup, progress: watch::Sender<u64>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let mut child = Command::new(exe)
            .arg("--viewer-child")
            .arg(serde_json::to_string(setup)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the viewer process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the viewer's stdout")?;
        let (report_tx, report) = oneshot::channel();
        std::thread::spawn(move || {
            let _ = report_tx.send(read_child(stdout, &progress));
        });
        Ok(ViewerChild {
            child,
            stdin,
            report,
        })
    }

    /// Tells the child to stop and collects its report.
    pub(crate) async fn finish(mut self) -> anyhow::Result<ViewerFinished> {
        drop(self.stdin.take());
        let report = timeout(REPORT_TIMEOUT, &mut self.report)
            .await
            .context("the viewer process did not report in time")?
            .context("the viewer process's reader stopped")??;
        // It has reported: it is leaving, the wait is short.
        let status = tokio::task::block_in_place(|| self.child.wait())
            .context("waiting for the viewer process")?;
        if !status.success() {
            bail!("the viewer process exited with {status}");
        }
        let anchor = Anchor::now();
        Ok(ViewerFinished {
            frames: report
                .frames
                .iter()
                .map(|&(capture_us, keyframe, len, at)| DeliveredFrame {
                    capture_us,
                    keyframe,
                    len,
                    at: anchor.instant(at),
                })
                .collect(),
            counters: report.counters,
            paths: report.paths,
            closed: report.closed,
            buffers: SocketBuffers {
                receive: report.buffers.0,
                send: report.buffers.1,
            },
            socket_drops: report.socket_drops,
            cpu: report.cpu_ms.map(|(user, system)| CpuTimes {
                user: Duration::from_millis(user),
                system: Duration::from_millis(system),
            }),
        })
    }
}

impl Drop for ViewerChild {
    fn drop(&mut self) {
        // A run that fails half-way leaves no viewer behind.
        if self.stdin.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Reads the child's stdout: progress lines until its report.
fn read_child(
    stdout: std::process::ChildStdout,
    progress: &watch::Sender<u64>,
) -> anyhow::Result<ViewerReport> {
    let mut lines = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let read = (&mut lines)
            .take(MAX_LINE_BYTES)
            .read_line(&mut line)
            .context("reading the viewer process")?;
        if read == 0 {
            bail!("the viewer process ended without a report");
        }
        let line = line.trim_end();
        if let Some(value) = line.strip_prefix("progress ") {
            progress.send_replace(value.parse().context("a progress line")?);
        } else if let Some(json) = line.strip_prefix("report ") {
            return serde_json::from_str(json).context("the viewer's report");
        } else {
            bail!("unexpected line from the viewer process: {line:.80}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_cross_the_process_boundary_to_the_microsecond() {
        let anchor = Anchor::now();
        std::thread::sleep(Duration::from_millis(20));
        let other = Anchor::now();
        // Times before and after the anchor that converts them.
        for offset in [-15_000i64, 1_234_567] {
            let at = if offset < 0 {
                other.instant - Duration::from_micros(offset.unsigned_abs())
            } else {
                other.instant + Duration::from_micros(offset.unsigned_abs())
            };
            let back = anchor.instant(other.wall_us(at));
            let error = if back > at { back - at } else { at - back };
            // Two anchors taken apart: only their own skew, well under a millisecond.
            assert!(error < Duration::from_millis(1), "{offset}: {error:?}");
        }
    }

    #[test]
    fn reports_round_trip_through_json() {
        let report = ViewerReport {
            frames: vec![(1, true, 100, 2), (3, false, 20, 4)],
            counters: Some(ReceiverCounters {
                frames_delivered: 2,
                ..ReceiverCounters::default()
            }),
            paths: vec!["lan".into()],
            closed: false,
            buffers: (8, 9),
            socket_drops: Some(0),
            cpu_ms: None,
        };
        let text = serde_json::to_string(&report).expect("serializes");
        let back: ViewerReport = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.frames, report.frames);
        assert_eq!(back.counters.map(|c| c.frames_delivered), Some(2));
    }
}
