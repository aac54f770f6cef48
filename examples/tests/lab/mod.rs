//! The NAT lab harness: real network namespaces, real Linux NAT (nftables masquerade and
//! conntrack), emulated access links with delay and loss, and the processes that run in
//! them. See `spec/lab.md`.
//!
//! Every test starts with [`start`], which serialises lab tests (they share the host's
//! kernel and the CPU), checks that the lab can run here, removes leftovers of crashed
//! runs and creates the run's log directory.

pub(crate) mod h264;
pub(crate) mod netns;
pub(crate) mod peers;
pub(crate) mod probe;
pub(crate) mod process;
pub(crate) mod servers;
pub(crate) mod topology;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Lab tests run one at a time even without `--test-threads=1`.
static SERIAL: Mutex<()> = Mutex::new(());

/// Distinguishes the runs of one test process.
static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A run's identity and its log directory; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Run(Arc<RunInner>);

#[derive(Debug)]
struct RunInner {
    id: String,
    dir: PathBuf,
    logs: Mutex<Vec<PathBuf>>,
}

impl Run {
    /// `<pid>-<nonce>`: part of every namespace name of the run.
    pub(crate) fn id(&self) -> &str {
        &self.0.id
    }

    /// The run's directory (logs, keys, state, received video).
    pub(crate) fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// A path inside the run's directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.dir.join(name)
    }

    /// Remembers a log file to quote if the test fails.
    pub(crate) fn register_log(&self, path: &Path) {
        self.0
            .logs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(path.to_owned());
    }
}

/// A running lab test. Dropping it without [`Lab::pass`] (a failed assertion, an error,
/// a panic) keeps the run directory and prints the tail of every process log.
#[derive(Debug)]
pub(crate) struct Lab {
    run: Run,
    passed: bool,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// The run.
    pub(crate) fn run(&self) -> &Run {
        &self.run
    }

    /// Marks the test as passed: its run directory is removed when the lab is dropped
    /// (after the topology, which is declared later and so dropped first).
    pub(crate) fn pass(&mut self) {
        self.passed = true;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.passed && std::env::var_os("SIGHTWIRE_LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(self.run.dir());
            return;
        }
        eprintln!(
            "\n=== NAT lab run {} did not pass; logs kept in {}",
            self.run.id(),
            self.run.dir().display()
        );
        let logs = self
            .run
            .0
            .logs
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        for log in logs {
            let tail = process::tail(&log, 40);
            if !tail.trim().is_empty() {
                eprintln!("--- {}:\n{tail}", log.display());
            }
        }
    }
}

/// Whether this is a CI run (`CI` set to anything but empty, `0` or `false`), where a lab
/// that cannot run is a failure instead of a skip.
pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Writes a result to stderr past libtest's output capture, so that the matrix, the
/// self-test reports and the fault figures appear in CI logs even when the test passes
/// (libtest captures only the `print!`/`eprint!` macros).
pub(crate) fn publish(text: &str) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{text}");
    let _ = stderr.flush();
}

/// Whether a program is on `PATH`.
pub(crate) fn have_program(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = dir.join(name);
            candidate.is_file()
        })
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Checks once per process that namespaces, veth, VXLAN, bridges and nftables NAT work.
fn environment() -> &'static Result<(), String> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED.get_or_init(|| {
        if !is_root() {
            return Err("not root (network namespaces and nftables need root)".into());
        }
        for program in ["ip", "nft", "bridge", "sysctl"] {
            if !have_program(program) {
                return Err(format!(
                    "`{program}` not found (apt-get install nftables iproute2 procps)"
                ));
            }
        }
        probe_kernel().map_err(|error| format!("the kernel cannot host the lab: {error:#}"))
    })
}

/// Builds and removes a throw-away namespace with every kernel feature the lab uses.
fn probe_kernel() -> anyhow::Result<()> {
    let id = format!(
        "{}-probe{}",
        std::process::id(),
        RUN_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let probe = netns::Netns::create(&id, "probe")?;
    let result = (|| {
        probe.ip(&["link", "add", "br0", "type", "bridge"])?;
        probe.ip(&["link", "add", "wan0", "type", "veth", "peer", "name", "v1"])?;
        probe.ip(&[
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            "127.0.0.1",
            "dstport",
            "4789",
            "nolearning",
        ])?;
        probe.nft(&topology::nat_ruleset(true, true))?;
        anyhow::Ok(())
    })();
    probe.delete()?;
    result
}

/// Starts a lab test: `None` (after a loud banner) when the lab cannot run here and this
/// is not CI; a panic when it cannot run in CI. `tools` are extra programs the test
/// needs (`conntrack`, `ffmpeg`, `ffprobe`).
pub(crate) fn start(test: &str, tools: &[&str]) -> Option<Lab> {
    let serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let mut problem = environment().clone().err();
    if problem.is_none()
        && let Some(missing) = tools.iter().find(|tool| !have_program(tool))
    {
        problem = Some(format!(
            "`{missing}` not found (apt-get install nftables iproute2 conntrack ffmpeg)"
        ));
    }
    if let Some(reason) = problem {
        assert!(
            !in_ci(),
            "NAT LAB CANNOT RUN IN CI ({test}): {reason}. CI must run the lab as root with \
             nftables, iproute2, conntrack and ffmpeg installed."
        );
        publish(&format!(
            "\n################################################################\n\
             #  NAT LAB SKIPPED: {test}: {reason}\n\
             #  (this test passes without checking anything; CI=true makes it fail)\n\
             ################################################################\n"
        ));
        return None;
    }
    static STALE: OnceLock<()> = OnceLock::new();
    STALE.get_or_init(|| match netns::remove_stale() {
        Ok(removed) if !removed.is_empty() => {
            eprintln!(
                "lab: removed {} stale namespaces of crashed runs: {removed:?}",
                removed.len()
            );
        }
        Ok(_) => {}
        Err(error) => eprintln!("lab: could not remove stale namespaces: {error:#}"),
    });
    let id = format!(
        "{}-{}{:x}",
        std::process::id(),
        RUN_COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() & 0xfff)
    );
    let dir = std::env::temp_dir()
        .join("sightwire-lab")
        .join(format!("{test}-{id}"));
    std::fs::create_dir_all(&dir).expect("creating the run directory");
    eprintln!("lab: {test}: run {id}, logs in {}", dir.display());
    Some(Lab {
        run: Run(Arc::new(RunInner {
            id,
            dir,
            logs: Mutex::new(Vec::new()),
        })),
        passed: false,
        _serial: serial,
    })
}
