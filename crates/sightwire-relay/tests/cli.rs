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

/// One HTTP/1.1 exchange: the whole answer.
fn http(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(request);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// `--metrics-listen` and `--log-format json`: a malformed datagram moves the drop
/// counter on `/metrics`, readiness answers, a bad request gets 400 and the listener
/// keeps serving.
#[test]
fn exports_metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("grant.key");
    std::fs::write(&key, "42".repeat(32)).unwrap();
    let mut relay = Running(
        Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--stream-port", "0"])
            .args(["--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--socket-buffer-bytes", "1048576", "--grant-key-file"])
            .arg(&key)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(relay.0.stdout.take().unwrap()).lines();
    let (mut metrics, mut listen) = (None, None);
    for line in lines.by_ref().map_while(Result::ok) {
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        let fields = &event["fields"];
        let address = |key: &str| fields[key].as_str().and_then(|s| s.parse().ok());
        match fields["message"].as_str() {
            Some("metrics listening") => metrics = address("metrics"),
            Some("relay ready") => {
                listen = address("listen");
                assert!(fields["receive_buffer"].as_u64().unwrap() > 0, "{line}");
                break;
            }
            _ => {}
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let (metrics, listen): (std::net::SocketAddr, std::net::SocketAddr) =
        (metrics.unwrap(), listen.unwrap());
    assert!(http(metrics, b"GET /readyz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    let answer = http(metrics, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(
        answer.contains("\nsightwire_relay_allocations 0\n"),
        "{answer}"
    );
    let malformed = "sightwire_relay_dropped_packets_total{reason=\"malformed\"}";
    assert!(answer.contains(&format!("\n{malformed} 0\n")), "{answer}");

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&[0xFF; 3], listen).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = http(metrics, b"GET /metrics HTTP/1.1\r\n\r\n");
        if answer.contains(&format!("\n{malformed} 1\n")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the drop was not counted: {answer}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(http(metrics, &[b'x'; 10_000]).starts_with("HTTP/1.1 400"));
    assert!(http(metrics, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    let pid = relay.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(relay.0.wait().unwrap().success());
}

/// `deploy/sightwire-relay.service` starts this binary with arguments it accepts, and
/// `systemd-analyze verify` accepts the unit where it is installed.
#[test]
fn the_deploy_unit_fits_the_binary() {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let unit = std::fs::read_to_string(deploy.join("sightwire-relay.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .unwrap();
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/sightwire-relay"));
    // %d (the credentials directory) is systemd's to expand; clap refuses an unknown
    // argument before it gets to --help.
    let args: Vec<String> = words.map(|w| w.replace("%d", "/run/credentials")).collect();
    let help = Command::new(BIN)
        .args(&args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
    assert!(exec.contains("--grant-key-file %d/relay-grant.key"));
    assert!(unit.contains("\nLoadCredential=relay-grant.key:/etc/sightwire/relay-grant.key\n"));
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: unit not verified");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sightwire-relay.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/sightwire-relay", BIN)).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("sightwire-relay.service"), "{stderr}");
}
