//! Programs started inside a namespace: output captured to files, killed on drop, and
//! waited on for a line (usually a JSON event) with a timeout.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use super::Run;
use super::netns::Netns;

/// How often a waiting caller looks at the output file again.
const POLL: Duration = Duration::from_millis(10);

/// Lines kept of a log when it is quoted in an error.
const TAIL_LINES: usize = 25;

/// One line of a program's stdout.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// The line parsed as JSON, if it is JSON.
    pub(crate) json: Option<Value>,
}

impl Line {
    /// The `event` field of a JSON line.
    pub(crate) fn event(&self) -> Option<&str> {
        self.json.as_ref()?.get("event")?.as_str()
    }

    /// A string field of a JSON line.
    pub(crate) fn str(&self, field: &str) -> Option<&str> {
        self.json.as_ref()?.get(field)?.as_str()
    }

    /// An unsigned integer field of a JSON line.
    pub(crate) fn u64(&self, field: &str) -> Option<u64> {
        self.json.as_ref()?.get(field)?.as_u64()
    }
}

/// What to start (kept so the program can be restarted the same way).
#[derive(Debug, Clone)]
struct Spec {
    netns: Netns,
    program: PathBuf,
    args: Vec<String>,
}

/// A running program inside a namespace.
#[derive(Debug)]
pub(crate) struct Process {
    label: String,
    spec: Spec,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    read_bytes: usize,
    partial: String,
    lines: Vec<Line>,
    cursor: usize,
    starts: u32,
}

impl Process {
    /// Starts `program args` inside `netns` (`ip netns exec`, which execs the program, so
    /// the child's pid is the program's). stdout and stderr go to
    /// `<run dir>/<label>.{stdout,stderr}`.
    pub(crate) fn start(
        run: &Run,
        netns: &Netns,
        label: &str,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<Self> {
        let mut process = Self {
            label: label.to_owned(),
            spec: Spec {
                netns: netns.clone(),
                program: program.to_owned(),
                args: args.to_vec(),
            },
            child: None,
            stdin: None,
            stdout_path: run.dir().join(format!("{label}.stdout")),
            stderr_path: run.dir().join(format!("{label}.stderr")),
            read_bytes: 0,
            partial: String::new(),
            lines: Vec::new(),
            cursor: 0,
            starts: 0,
        };
        run.register_log(&process.stdout_path);
        run.register_log(&process.stderr_path);
        process.spawn()?;
        Ok(process)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let append = |path: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))
        };
        let stdout = append(&self.stdout_path)?;
        let mut stderr = append(&self.stderr_path)?;
        self.starts += 1;
        writeln!(
            stderr,
            "--- lab: start #{} in {}: {} {}",
            self.starts,
            self.spec.netns.name(),
            self.spec.program.display(),
            self.spec.args.join(" ")
        )?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.spec.netns.name()])
            .arg(&self.spec.program)
            .args(&self.spec.args)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("SIGHTWIRE_LAB_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", self.spec.program.display()))?;
        self.stdin = child.stdin.take();
        self.child = Some(child);
        Ok(())
    }

    /// The pid of the running program.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Writes one line to the program's stdin.
    pub(crate) fn send_line(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to {}", self.label))
    }

    /// Reads what the program wrote since the last call.
    fn poll_output(&mut self) -> anyhow::Result<()> {
        let mut file = File::open(&self.stdout_path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        if let Some(new) = bytes.get(self.read_bytes..) {
            self.partial.push_str(&String::from_utf8_lossy(new));
        }
        self.read_bytes = bytes.len();
        while let Some(end) = self.partial.find('\n') {
            let text: String = self.partial.drain(..=end).collect();
            let json = serde_json::from_str(text.trim_end()).ok();
            self.lines.push(Line { json });
        }
        Ok(())
    }

    /// Every line so far.
    pub(crate) fn lines(&mut self) -> anyhow::Result<&[Line]> {
        self.poll_output()?;
        Ok(&self.lines)
    }

    /// Forgets every line so far for the purpose of [`Self::wait_for`].
    pub(crate) fn mark(&mut self) -> anyhow::Result<()> {
        self.poll_output()?;
        self.cursor = self.lines.len();
        Ok(())
    }

    /// The wait cursor (index of the first line [`Self::wait_for`] looks at).
    pub(crate) fn cursor(&self) -> usize {
        self.cursor
    }

    /// Moves the wait cursor back (or forward) to `cursor`.
    pub(crate) fn set_cursor(&mut self, cursor: usize) {
        self.cursor = cursor.min(self.lines.len());
    }

    /// Whether the program is still running; its exit status if not.
    pub(crate) fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("{} was stopped", self.label),
        }
    }

    /// Waits until a line after the cursor satisfies `matches`, moving the cursor past
    /// it. Fails on timeout or when the program exits first, quoting its stderr.
    pub(crate) fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&Line) -> bool,
    ) -> anyhow::Result<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll_output()?;
            if let Some(offset) = self.lines[self.cursor..].iter().position(&mut matches) {
                let index = self.cursor + offset;
                self.cursor = index + 1;
                return Ok(self.lines[index].clone());
            }
            if let Some(status) = self.try_status()? {
                self.poll_output()?;
                if let Some(offset) = self.lines[self.cursor..].iter().position(&mut matches) {
                    let index = self.cursor + offset;
                    self.cursor = index + 1;
                    return Ok(self.lines[index].clone());
                }
                bail!(
                    "{} exited ({status}) before {what}\n{}",
                    self.label,
                    self.describe()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no {what} within {timeout:?}\n{}",
                    self.label,
                    self.describe()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for a JSON line whose `event` is `event` and that satisfies `matches`.
    pub(crate) fn wait_event(
        &mut self,
        event: &str,
        timeout: Duration,
        mut matches: impl FnMut(&Line) -> bool,
    ) -> anyhow::Result<Line> {
        self.wait_for(&format!("{event:?} event"), timeout, |line| {
            line.event() == Some(event) && matches(line)
        })
    }

    /// Watches for `duration` and returns the lines after the cursor that satisfy
    /// `matches` (the caller usually asserts there are none).
    pub(crate) fn collect_for(
        &mut self,
        duration: Duration,
        mut matches: impl FnMut(&Line) -> bool,
    ) -> anyhow::Result<Vec<Line>> {
        std::thread::sleep(duration);
        self.poll_output()?;
        let found = self.lines[self.cursor..]
            .iter()
            .filter(|line| matches(line))
            .cloned()
            .collect();
        self.cursor = self.lines.len();
        Ok(found)
    }

    /// How often `needle` occurs in stdout and stderr so far (logs may go to either).
    pub(crate) fn count_text(&self, needle: &str) -> usize {
        [&self.stdout_path, &self.stderr_path]
            .iter()
            .map(|path| {
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .matches(needle)
                    .count()
            })
            .sum()
    }

    /// Waits until `needle` occurs at least `count` times in stdout and stderr.
    pub(crate) fn wait_text(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count_text(needle) >= count {
                return Ok(());
            }
            if let Some(status) = self.try_status()? {
                bail!(
                    "{} exited ({status}) before {needle:?}\n{}",
                    self.label,
                    self.describe()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: no {needle:?} within {timeout:?}\n{}",
                    self.label,
                    self.describe()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the program to exit by itself.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                self.poll_output()?;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} still running after {timeout:?}\n{}",
                    self.label,
                    self.describe()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) {
        self.stdin = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the program and starts it again with the same command line (output is
    /// appended to the same files).
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// The last lines of stdout and stderr, for error messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "--- {} stdout (last {TAIL_LINES} lines):\n{}\n--- {} stderr (last {TAIL_LINES} lines):\n{}",
            self.label,
            tail(&self.stdout_path, TAIL_LINES),
            self.label,
            tail(&self.stderr_path, TAIL_LINES)
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
