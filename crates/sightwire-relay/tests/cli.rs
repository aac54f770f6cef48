//! The binary: serves until SIGTERM or SIGINT, then stops gracefully (exit status 0).
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sightwire-relay");

/// Kills the relay if the test fails before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the relay, waits until it listens, sends it `signal` (as `kill` spells it) and
/// checks that it stops by itself within a few seconds, with status 0.
fn stops_gracefully_on(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("grant.key");
    std::fs::write(&key, "42".repeat(32)).unwrap();
    let mut relay = Running(
        Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--grant-key-file"])
            .arg(&key)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(relay.0.stdout.take().unwrap()).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("relay ready")),
        "relay never became ready"
    );
    let pid = relay.0.id().to_string();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = relay.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "relay did not stop on {signal}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status} after {signal}");
    assert!(
        lines
            .map_while(Result::ok)
            .any(|line| line.contains("relay stopped")),
        "no graceful stop logged after {signal}"
    );
}

#[test]
fn stops_gracefully_on_sigterm() {
    stops_gracefully_on("-TERM");
}

#[test]
fn stops_gracefully_on_sigint() {
    stops_gracefully_on("-INT");
}
