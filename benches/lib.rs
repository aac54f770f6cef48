//! Shared helpers of the bench binaries (`benches/bin/`): child processes, and what
//! the kernel and `/proc` say about sockets, CPU time and memory (`kernel`). The
//! criterion benches live in `benches/benches/`.

pub mod kernel;

use std::process::Child;

use anyhow::Context;

/// A child process killed (and reaped) when dropped, unless taken.
#[derive(Debug)]
pub struct Killed(pub Option<Child>);

impl Killed {
    /// The child's process id (0 once taken).
    pub fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// The child, no longer killed on drop.
    pub fn take(mut self) -> Child {
        self.0.take().expect("a child until taken")
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// User + system CPU seconds of `pid` so far (`/proc/<pid>/stat` fields 14 and 15).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    kernel::process_cpu_of(pid)
        .map(|cpu| cpu.total().as_secs_f64())
        .with_context(|| format!("no CPU time in /proc/{pid}/stat"))
}

/// `VmRSS` and `VmHWM` of `pid`, in kB.
pub fn memory_kb(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The CPU count and model, for the record of a measurement.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs, {model}")
}
