//! Network namespaces with per-run names, and the commands that configure them.
//!
//! Every namespace of a run is called `swlab-<pid>-<nonce>-<role>`: the pid says which
//! test process owns it (so a later run can tell a crashed run's leftovers from a live
//! run's namespaces), the nonce keeps two runs of the same pid apart.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Prefix of every namespace the lab creates.
pub(crate) const PREFIX: &str = "swlab-";

/// Runs a command, returning its stdout; a non-zero exit is an error that quotes the
/// command and its stderr.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command that reads `input` on stdin.
pub(crate) fn run_with_input(command: &mut Command, input: &str) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}\ninput:\n{input}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A network namespace (a name; the [`crate::lab::topology::Topology`] that created it
/// deletes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    /// Creates `swlab-<run>-<role>` with loopback up and IPv6 off (the lab is IPv4; IPv6
    /// router solicitations would only add noise to the links).
    pub(crate) fn create(run_id: &str, role: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{run_id}-{role}");
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        netns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        netns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        Ok(netns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub(crate) fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip netns exec <ns> <program> <args>`.
    pub(crate) fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }

    /// Sets a sysctl inside the namespace.
    pub(crate) fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Loads an nftables ruleset into the namespace.
    pub(crate) fn nft(&self, ruleset: &str) -> anyhow::Result<()> {
        run_with_input(
            Command::new("ip").args(["netns", "exec", &self.name, "nft", "-f", "-"]),
            ruleset,
        )
        .map(drop)
    }

    /// Kills every process inside the namespace (SIGKILL).
    pub(crate) fn kill_all(&self) {
        kill_all_in(&self.name);
    }

    /// Kills what runs inside and deletes the namespace.
    pub(crate) fn delete(&self) -> anyhow::Result<()> {
        delete_namespace(&self.name)
    }
}

fn kill_all_in(name: &str) {
    let Ok(pids) = run(Command::new("ip").args(["netns", "pids", name])) else {
        return;
    };
    for pid in pids.split_whitespace() {
        // Already gone is fine: that is what we want.
        let _ = run(Command::new("kill").args(["-9", pid]));
    }
}

fn delete_namespace(name: &str) -> anyhow::Result<()> {
    kill_all_in(name);
    run(Command::new("ip").args(["netns", "delete", name])).map(drop)
}

/// Names of every namespace that exists now.
pub(crate) fn list_namespaces() -> anyhow::Result<Vec<String>> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// The pid of the test process that created a lab namespace, from its name.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Whether a pid belongs to a running lab test process (its command name starts with
/// `lab`, the name of this test binary), so a recycled pid does not protect leftovers.
fn is_live_lab_process(pid: u32) -> bool {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
        .is_ok_and(|comm| comm.starts_with("lab"))
}

/// Deletes lab namespaces left by runs whose test process is gone (a crash, a SIGKILL),
/// killing whatever still runs in them. Returns the names removed.
pub(crate) fn remove_stale() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in list_namespaces()? {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid != std::process::id() && !is_live_lab_process(pid) {
            delete_namespace(&name).with_context(|| format!("removing stale {name}"))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Files under `/etc/netns/<namespace>/` (`hosts`, `resolv.conf`): `ip netns exec`
/// bind-mounts each over its `/etc` namesake for what runs in that namespace, which gives
/// it names without a DNS server. Removed (with the directories this made) on drop.
#[derive(Debug)]
pub(crate) struct EtcFiles {
    /// Files written, then directories made (deepest first when removed).
    files: Vec<std::path::PathBuf>,
    dirs: Vec<std::path::PathBuf>,
}

impl EtcFiles {
    /// Writes each `(name, content)` of `files` into the `/etc` of every namespace.
    pub(crate) fn write(namespaces: &[&Netns], files: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut written = Self {
            files: Vec::new(),
            dirs: Vec::new(),
        };
        let root = Path::new("/etc/netns");
        if !root.exists() {
            std::fs::create_dir(root).context("creating /etc/netns")?;
            written.dirs.push(root.to_owned());
        }
        for netns in namespaces {
            let dir = root.join(netns.name());
            if !dir.exists() {
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                written.dirs.push(dir.clone());
            }
            for (name, content) in files {
                let path = dir.join(name);
                std::fs::write(&path, content)
                    .with_context(|| format!("writing {}", path.display()))?;
                written.files.push(path);
            }
        }
        Ok(written)
    }
}

impl Drop for EtcFiles {
    fn drop(&mut self) {
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
