//! The camera and viewer under test, run against the contract in `spec/lab.md`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Run;
use super::netns::Netns;
use super::process::Process;
use super::servers::Pki;

/// The password every lab camera is provisioned with.
pub(crate) const PASSWORD: &str = "lab-password-1";

/// How long a camera may take from start to `ready` (registered).
pub(crate) const CAMERA_READY: Duration = Duration::from_secs(20);

/// A running camera.
#[derive(Debug)]
pub(crate) struct Camera {
    /// The process.
    pub(crate) process: Process,
    /// Its device ID as the camera printed it.
    pub(crate) id: String,
    /// Its label URI.
    pub(crate) uri: String,
}

impl Camera {
    /// Starts `camera` in `netns` with a provisioned state directory, given the
    /// rendezvous as `rendezvous` (`Servers::rendezvous_addr()`, or a host name), and
    /// waits for `ready`.
    #[allow(clippy::too_many_arguments)] // each one varies between tests
    pub(crate) fn start(
        run: &Run,
        netns: &Netns,
        label: &str,
        binary: &Path,
        pki: &Pki,
        state_dir: &Path,
        source: &str,
        rendezvous: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            run,
            netns,
            label,
            binary,
            pki,
            state_dir,
            source,
            rendezvous,
            &[],
        )
    }

    /// As [`Self::start`], with `extra` arguments after the usual ones.
    #[allow(clippy::too_many_arguments)] // each one varies between tests
    pub(crate) fn start_with(
        run: &Run,
        netns: &Netns,
        label: &str,
        binary: &Path,
        pki: &Pki,
        state_dir: &Path,
        source: &str,
        rendezvous: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args = vec![
            "--rendezvous".into(),
            rendezvous.to_owned(),
            "--rendezvous-key".into(),
            pki.rendezvous_public.clone(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--password".into(),
            PASSWORD.into(),
            "--source".into(),
            source.into(),
            "--fps".into(),
            "30".into(),
            "--no-qr".into(),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let mut process = Process::start(run, netns, label, binary, &args)?;
        let ready = process.wait_event("ready", CAMERA_READY, |_| true)?;
        Ok(Self {
            id: ready.str("id").context("ready without id")?.to_owned(),
            uri: ready.str("uri").context("ready without uri")?.to_owned(),
            process,
        })
    }
}

/// How a viewer run ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// `--frames N`.
    Frames(u64),
    /// `--seconds S`.
    Seconds(f64),
}

/// A running viewer.
#[derive(Debug)]
pub(crate) struct ViewerRun {
    /// The process.
    pub(crate) process: Process,
    /// Where it writes the video.
    pub(crate) out: PathBuf,
}

/// What a viewer reported.
#[derive(Debug, Clone, Default)]
pub(crate) struct ViewerReport {
    /// Exit status was success.
    pub(crate) exit_ok: bool,
    /// Path of the `connected` event.
    pub(crate) connected_path: Option<String>,
    /// `connect_ms` of the `connected` event.
    pub(crate) connect_ms: Option<u64>,
    /// `ms` of `first_keyframe` (since connect started).
    pub(crate) first_keyframe_ms: Option<u64>,
    /// Every `path_changed` path, in order.
    pub(crate) path_changes: Vec<String>,
    /// The `summary` event.
    pub(crate) summary: Option<serde_json::Value>,
    /// A failure reason the viewer printed.
    pub(crate) failure: Option<String>,
    /// The `error` name of the `failed` event, and its `ms` (since connect started).
    pub(crate) error: Option<String>,
    pub(crate) failed_ms: Option<u64>,
}

impl ViewerReport {
    /// `summary.frames`.
    pub(crate) fn frames(&self) -> u64 {
        self.summary_u64("frames")
    }

    /// A numeric summary field (0 if absent).
    pub(crate) fn summary_u64(&self, field: &str) -> u64 {
        self.summary
            .as_ref()
            .and_then(|s| s.get(field))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }

    /// `summary.path`.
    pub(crate) fn final_path(&self) -> Option<String> {
        self.summary
            .as_ref()
            .and_then(|s| s.get("path"))
            .and_then(|p| p.as_str())
            .map(str::to_owned)
    }
}

impl ViewerRun {
    /// Starts `viewer` in `netns` against `device` (an ID or URI), given the rendezvous
    /// as `rendezvous`.
    #[allow(clippy::too_many_arguments)] // each one varies between tests
    pub(crate) fn start(
        run: &Run,
        netns: &Netns,
        label: &str,
        binary: &Path,
        pki: &Pki,
        device: &str,
        stop: Stop,
        rendezvous: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(
            run,
            netns,
            label,
            binary,
            pki,
            device,
            stop,
            rendezvous,
            &[],
        )
    }

    /// As [`Self::start`], with `extra` arguments after the usual ones.
    #[allow(clippy::too_many_arguments)] // each one varies between tests
    pub(crate) fn start_with(
        run: &Run,
        netns: &Netns,
        label: &str,
        binary: &Path,
        pki: &Pki,
        device: &str,
        stop: Stop,
        rendezvous: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let out = run.path(&format!("{label}.h264"));
        let mut args = vec![
            "--rendezvous".into(),
            rendezvous.to_owned(),
            "--rendezvous-key".into(),
            pki.rendezvous_public.clone(),
            "--issuer-key".into(),
            pki.issuer_public.clone(),
            "--device".into(),
            device.into(),
            "--password".into(),
            PASSWORD.into(),
            "--out".into(),
            out.display().to_string(),
            // Each run's viewer keeps its key and pinned devices in the run directory.
            "--state-dir".into(),
            run.path(&format!("{label}-state")).display().to_string(),
        ];
        match stop {
            Stop::Frames(n) => args.extend(["--frames".into(), n.to_string()]),
            Stop::Seconds(s) => args.extend(["--seconds".into(), format!("{s}")]),
        }
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let process = Process::start(run, netns, label, binary, &args)?;
        Ok(Self { process, out })
    }

    /// Waits for the viewer to exit and collects its events.
    pub(crate) fn finish(&mut self, timeout: Duration) -> anyhow::Result<ViewerReport> {
        let status = self.process.wait_exit(timeout);
        let mut report = ViewerReport {
            exit_ok: status.as_ref().is_ok_and(std::process::ExitStatus::success),
            ..ViewerReport::default()
        };
        for line in self.process.lines()? {
            match line.event() {
                Some("connected") if report.connected_path.is_none() => {
                    report.connected_path = line.str("path").map(str::to_owned);
                    report.connect_ms = line.u64("connect_ms");
                }
                Some("first_keyframe") => report.first_keyframe_ms = line.u64("ms"),
                Some("path_changed") => {
                    report
                        .path_changes
                        .push(line.str("path").unwrap_or("?").to_owned());
                }
                Some("summary") => report.summary = line.json.clone(),
                Some("failed") => {
                    report.failure = line.str("reason").map(str::to_owned);
                    report.error = line.str("error").map(str::to_owned);
                    report.failed_ms = line.u64("ms");
                }
                _ => {}
            }
        }
        if let Err(error) = status {
            report.failure.get_or_insert_with(|| format!("{error:#}"));
        }
        Ok(report)
    }
}

/// Samples the size of a growing file (the viewer's output) to measure stalls.
#[derive(Debug)]
pub(crate) struct FileWatch {
    growth: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Sampling period of [`FileWatch`].
const WATCH_PERIOD: Duration = Duration::from_millis(10);

impl FileWatch {
    /// Starts sampling `path` every 10 ms.
    pub(crate) fn start(path: &Path) -> Self {
        let growth = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (samples, stopped, path) = (Arc::clone(&growth), Arc::clone(&stop), path.to_owned());
        let thread = std::thread::spawn(move || {
            let mut last = 0;
            while !stopped.load(Ordering::Relaxed) {
                let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                if size > last {
                    last = size;
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((Instant::now(), size));
                }
                std::thread::sleep(WATCH_PERIOD);
            }
        });
        Self {
            growth,
            stop,
            thread: Some(thread),
        }
    }

    /// Moments the file grew, with its size.
    pub(crate) fn growth(&self) -> Vec<(Instant, u64)> {
        self.growth
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The longest time without growth that overlaps `[from, until]`, counting from the
    /// last growth before `from` (the stall a fault at `from` caused), and whether the
    /// file grew after `until`.
    pub(crate) fn longest_stall(&self, from: Instant, until: Instant) -> (Duration, bool) {
        let growth = self.growth();
        let mut previous = growth
            .iter()
            .rev()
            .find(|(t, _)| *t <= from)
            .map_or(from, |(t, _)| *t);
        let mut longest = Duration::ZERO;
        for (t, _) in growth.iter().filter(|(t, _)| *t > from) {
            longest = longest.max(t.duration_since(previous));
            previous = *t;
            if *t > until {
                break;
            }
        }
        let grew_after = growth.iter().any(|(t, _)| *t > until);
        if !grew_after {
            longest = longest.max(until.duration_since(previous));
        }
        (longest, grew_after)
    }
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
