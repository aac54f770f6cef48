//! The binary: issuer key, issue, list, revoke; serve from a TOML file and stop
//! gracefully on SIGTERM or SIGINT.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sightwire-rendezvous");

fn run(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn issuer_tool_issues_lists_and_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = path(dir.path(), "registry.sqlite");
    issuer_tool_on(dir.path(), ["--registry", &registry]);
}

/// The same operations on a registry in PostgreSQL (`--postgres`).
#[cfg(feature = "postgres")]
#[test]
fn issuer_tool_issues_lists_and_revokes_on_postgres() {
    let Some(params) = sightwire_rendezvous::postgres_testing::fresh_schema() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    issuer_tool_on(dir.path(), ["--postgres", &params]);
    let floor = sightwire_rendezvous::PostgresRegistry::connect(&params).unwrap();
    assert_eq!(
        sightwire_rendezvous::Registry::revocation_floor(
            &floor,
            "02:00:00:00:00:01".parse().unwrap()
        )
        .unwrap(),
        7
    );
}

/// Issue, re-issue, list, revoke and revoke through a serial, on the registry `store`
/// names (`--registry FILE` or `--postgres PARAMS`).
fn issuer_tool_on(dir: &Path, store: [&str; 2]) {
    let key = path(dir, "issuer.key");
    let (ok, public, _) = run(&["issuer", "new-key", "--out", &key]);
    assert!(ok);
    assert_eq!(public.trim().len(), 64);
    // Never overwrites a key.
    assert!(!run(&["issuer", "new-key", "--out", &key]).0);

    let device_key = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    let issue = |id: &str| {
        run(&[
            "issuer",
            "issue",
            "--key",
            &key,
            store[0],
            store[1],
            "--device-id",
            id,
            "--device-key",
            device_key,
        ])
    };
    let (ok, certificate, stderr) = issue("1c-c3-16-ab-cd-ef");
    assert!(ok, "{stderr}");
    let bytes = hex::decode(certificate.trim()).unwrap();
    let cert = sightwire_signal::cert::IdCertificate::decode(&bytes).unwrap();
    let trust = sightwire_signal::cert::TrustedIssuers::single(
        sightwire_signal::cert::IssuerPublicKey::from_bytes(
            &hex::decode(public.trim()).unwrap().try_into().unwrap(),
        )
        .unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        cert.verify(&trust, now).unwrap().device_id,
        "1C:C3:16:AB:CD:EF".parse().unwrap()
    );
    // Re-issuing bumps the serial.
    let (ok, _, stderr) = issue("1C:C3:16:AB:CD:EF");
    assert!(ok && stderr.contains("serial 2"), "{stderr}");
    // A multicast MAC is not a device ID.
    assert!(!issue("01:00:5e:00:00:01").0);

    let (ok, list, _) = run(&["issuer", "list", store[0], store[1]]);
    assert!(ok);
    assert!(
        list.contains("1C:C3:16:AB:CD:EF")
            && list.contains("serial 2")
            && !list.contains("REVOKED"),
        "{list}"
    );
    assert!(
        run(&[
            "issuer",
            "revoke",
            store[0],
            store[1],
            "--device-id",
            "1CC3.16AB.CDEF"
        ])
        .0
    );
    assert!(
        run(&["issuer", "list", store[0], store[1]])
            .1
            .contains("REVOKED")
    );
    assert!(
        !run(&[
            "issuer",
            "revoke",
            store[0],
            store[1],
            "--device-id",
            "02:00:00:00:00:01"
        ])
        .0
    );
    // An ID the registry never saw can still be revoked through a serial.
    assert!(
        run(&[
            "issuer",
            "revoke",
            store[0],
            store[1],
            "--device-id",
            "02:00:00:00:00:01",
            "--through-serial",
            "7"
        ])
        .0
    );
}

#[cfg(unix)]
#[test]
fn serve_reads_its_config_and_stops_gracefully_on_sigterm() {
    serve_and_stop_on("-TERM");
}

#[cfg(unix)]
#[test]
fn serve_stops_gracefully_on_sigint() {
    serve_and_stop_on("-INT");
}

/// Serves from a config file, waits until serving, sends `signal` (as `kill` spells it)
/// and checks that the server stops by itself, with status 0.
#[cfg(unix)]
fn serve_and_stop_on(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (issuer_key, server_key) = (
        path(dir.path(), "issuer.key"),
        path(dir.path(), "server.key"),
    );
    let (_, issuer_public, _) = run(&["issuer", "new-key", "--out", &issuer_key]);
    let (ok, server_public, _) = run(&["keygen", "--out", &server_key]);
    assert!(ok && server_public.trim().len() == 64);
    let config = path(dir.path(), "rendezvous.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstatic_key = \"{server_key}\"\nregistry = \"{}\"\ntrusted_issuers = [\"{}\"]\n[limits]\nkeepalive_interval_ms = 5000\n",
            path(dir.path(), "registry.sqlite"),
            issuer_public.trim()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config", &config])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains("rendezvous serving"));
    assert!(serving.is_some_and(|line| line.contains(server_public.trim())));
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status} after {signal}");
            break;
        }
        assert!(Instant::now() < deadline, "server did not stop on {signal}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        lines
            .map_while(Result::ok)
            .any(|line| line.contains("stopped"))
    );
}

/// `deploy/sightwire-rendezvous.service` starts this binary with arguments it accepts and
/// the example configuration it points to parses and matches the unit (credential,
/// state directory); `systemd-analyze verify` accepts the unit where it is installed.
#[test]
fn the_deploy_unit_and_configuration_fit_the_binary() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let unit = std::fs::read_to_string(deploy.join("sightwire-rendezvous.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .unwrap();
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/sightwire-rendezvous"));
    let args: Vec<&str> = words.collect();
    // clap refuses an unknown argument before it gets to --help.
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
    let config_at = args
        .windows(2)
        .find_map(|pair| (pair[0] == "--config").then_some(pair[1]))
        .unwrap();
    assert_eq!(config_at, "/etc/sightwire/rendezvous.toml");
    let config =
        sightwire_rendezvous::config::ServerConfig::load(&deploy.join("rendezvous.toml")).unwrap();
    assert!(unit.contains("\nLoadCredential=rendezvous.key:/etc/sightwire/rendezvous.key\n"));
    assert_eq!(
        config.static_key,
        Path::new("/run/credentials/sightwire-rendezvous.service/rendezvous.key")
    );
    assert!(unit.contains("\nStateDirectory=sightwire-rendezvous\n"));
    assert!(matches!(
        &config.registry,
        sightwire_rendezvous::config::RegistrySetting::Sqlite(path)
            if path.starts_with("/var/lib/sightwire-rendezvous/")
    ));
    assert_eq!(config.socket_buffer_bytes, Some(8 << 20));
    verify_unit(&unit, "sightwire-rendezvous.service", BIN);
}

/// `systemd-analyze verify` on `unit` with its binary replaced by `bin`, where
/// systemd-analyze is installed (CI installs systemd; elsewhere this part is skipped,
/// and says so).
fn verify_unit(unit: &str, name: &str, bin: &str) {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: unit not verified");
        return;
    };
    assert!(version.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let unit = unit.replace(
        &format!("/usr/local/bin/{}", name.trim_end_matches(".service")),
        bin,
    );
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Warnings about our unit (unknown keys, bad values) fail too; other units' are not ours.
    assert!(!stderr.contains(name), "{stderr}");
}
