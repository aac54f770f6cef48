//! The binaries under test, provisioning (keys, certificates) and the servers in the
//! internet namespace.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};

use super::Run;
use super::netns::run;
use super::process::Process;
use super::topology::{RELAY_IP, RENDEZVOUS_IP, Topology};

/// UDP port of the rendezvous.
pub(crate) const RENDEZVOUS_PORT: u16 = 7700;
/// UDP port of the relay.
pub(crate) const RELAY_PORT: u16 = 3479;

/// Device keepalive interval the lab's rendezvous tells devices (the default is 20 s;
/// shorter keeps the rendezvous-restart test short).
pub(crate) const LAB_KEEPALIVE_MS: u64 = 5_000;

/// What the rendezvous logs once it listens.
const RENDEZVOUS_READY: &str = "rendezvous serving";

/// How long a server may take to start listening.
const SERVER_START: Duration = Duration::from_secs(20);

/// The workspace the lab builds the servers from.
fn workspace() -> PathBuf {
    std::env::var_os("SIGHTWIRE_LAB_WORKSPACE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        PathBuf::from,
    )
}

/// The cargo profile this test binary was built with (`debug` → `dev`).
fn profile() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/lab-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .unwrap_or("debug");
    match dir {
        "debug" => "dev".into(),
        other => other.into(),
    }
}

/// The server binaries, built once per test process with the test's profile.
#[derive(Debug, Clone)]
pub(crate) struct ServerBinaries {
    /// `sightwire-rendezvous`.
    pub(crate) rendezvous: PathBuf,
    /// `sightwire-relay`.
    pub(crate) relay: PathBuf,
}

/// Builds `sightwire-rendezvous` and `sightwire-relay` (`cargo build`, same profile).
pub(crate) fn server_binaries() -> anyhow::Result<ServerBinaries> {
    static BUILT: OnceLock<Result<ServerBinaries, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_servers().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_servers() -> anyhow::Result<ServerBinaries> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "lab: building sightwire-rendezvous and sightwire-relay ({})",
        profile()
    );
    let mut command = Command::new(cargo);
    // `cargo test` gives this process the test package's variables; a build script that
    // watches one (ring's reruns when `CARGO_MANIFEST_DIR` changes) would otherwise rebuild
    // its crate and everything above it here, and again in the next `cargo test`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_BIN_EXE_",
            "CARGO_CRATE_NAME",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
        {
            command.env_remove(name.as_ref());
        }
    }
    let output = command
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace().join("Cargo.toml"))
        .args([
            "-p",
            "sightwire-rendezvous",
            "-p",
            "sightwire-relay",
            "--bins",
            // The README's `cargo test --workspace --all-features` links these binaries to
            // the same place; built with other features here, they would replace that
            // build, and the rendezvous's own cli tests (which run after this package's)
            // would find a binary without PostgreSQL support.
            "--all-features",
        ])
        .args(["--profile", &profile(), "--message-format", "json"])
        .output()
        .context("running cargo build")?;
    if !output.status.success() {
        bail!(
            "cargo build of the servers failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut rendezvous = None;
    let mut relay = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(name), Some(executable)) = (
            message.pointer("/target/name").and_then(|v| v.as_str()),
            message.get("executable").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        match name {
            "sightwire-rendezvous" => rendezvous = Some(PathBuf::from(executable)),
            "sightwire-relay" => relay = Some(PathBuf::from(executable)),
            _ => {}
        }
    }
    Ok(ServerBinaries {
        rendezvous: rendezvous.context("cargo reported no sightwire-rendezvous executable")?,
        relay: relay.context("cargo reported no sightwire-relay executable")?,
    })
}

/// The `camera` and `viewer` binaries of this package, if they exist yet.
pub(crate) fn endpoint_binaries() -> Option<(PathBuf, PathBuf)> {
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin");
    if !sources.join("camera.rs").exists() || !sources.join("viewer.rs").exists() {
        return None;
    }
    let built = |env: Option<&str>, name: &str| {
        env.map(PathBuf::from).or_else(|| {
            let exe = PathBuf::from(env!("CARGO_BIN_EXE_lab-udp"));
            let candidate = exe.with_file_name(name);
            candidate.exists().then_some(candidate)
        })
    };
    Some((
        built(option_env!("CARGO_BIN_EXE_camera"), "camera")?,
        built(option_env!("CARGO_BIN_EXE_viewer"), "viewer")?,
    ))
}

/// Keys and files of the lab's operator.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    /// The rendezvous' private key file.
    pub(crate) rendezvous_key_file: PathBuf,
    /// Its public key, hex.
    pub(crate) rendezvous_public: String,
    /// The issuer's secret seed file.
    pub(crate) issuer_key_file: PathBuf,
    /// The issuer's public key, hex.
    pub(crate) issuer_public: String,
    /// The relay grant key file (shared by rendezvous and relay).
    pub(crate) grant_key_file: PathBuf,
    /// The registry.
    pub(crate) registry: PathBuf,
}

/// Creates the rendezvous key, the issuer key and the relay grant key with the
/// `sightwire-rendezvous` binary (and 32 random bytes for the grant key).
pub(crate) fn provision(lab_run: &Run, bins: &ServerBinaries) -> anyhow::Result<Pki> {
    let rendezvous_key_file = lab_run.path("rendezvous.key");
    let issuer_key_file = lab_run.path("issuer.key");
    let grant_key_file = lab_run.path("grant.key");
    let rendezvous_public = run(Command::new(&bins.rendezvous)
        .arg("keygen")
        .arg("--out")
        .arg(&rendezvous_key_file))?
    .trim()
    .to_owned();
    let issuer_public = run(Command::new(&bins.rendezvous)
        .args(["issuer", "new-key", "--out"])
        .arg(&issuer_key_file))?
    .trim()
    .to_owned();
    let mut secret = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut secret)?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&grant_key_file, format!("{hex}\n"))?;
    Ok(Pki {
        rendezvous_key_file,
        rendezvous_public,
        issuer_key_file,
        issuer_public,
        grant_key_file,
        registry: lab_run.path("registry.sqlite"),
    })
}

/// Provisions a camera's state directory as an operator would: the device key made by
/// `sightwire-rendezvous keygen`, the certificate by `issuer issue` (recorded in the
/// registry).
pub(crate) fn provision_device(
    pki: &Pki,
    bins: &ServerBinaries,
    state_dir: &Path,
    device_id: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let device_public = run(Command::new(&bins.rendezvous)
        .arg("keygen")
        .arg("--out")
        .arg(state_dir.join("device.key")))?
    .trim()
    .to_owned();
    run(Command::new(&bins.rendezvous)
        .args(["issuer", "issue", "--key"])
        .arg(&pki.issuer_key_file)
        .arg("--registry")
        .arg(&pki.registry)
        .args([
            "--device-id",
            device_id,
            "--device-key",
            &device_public,
            "--out",
        ])
        .arg(state_dir.join("device.cert")))?;
    Ok(())
}

/// The rendezvous and the relay, running in the internet namespace.
#[derive(Debug)]
pub(crate) struct Servers {
    /// The rendezvous.
    pub(crate) rendezvous: Process,
    /// The relay.
    pub(crate) relay: Process,
    /// The keys.
    pub(crate) pki: Pki,
}

impl Servers {
    /// Starts both and waits until they listen; `limits` is the rendezvous's `[limits]`
    /// section (the lab's is `keepalive_interval_ms = LAB_KEEPALIVE_MS`).
    pub(crate) fn start_with(
        topology: &Topology,
        bins: &ServerBinaries,
        pki: Pki,
        limits: &str,
    ) -> anyhow::Result<Self> {
        let run = topology.run();
        let config = run.path("rendezvous.toml");
        let path = |p: &Path| p.display().to_string();
        std::fs::write(
            &config,
            format!(
                "listen = \"{RENDEZVOUS_IP}:{RENDEZVOUS_PORT}\"\n\
                 static_key = \"{}\"\n\
                 registry = \"{}\"\n\
                 trusted_issuers = [\"{}\"]\n\
                 [relay]\n\
                 address = \"{RELAY_IP}:{RELAY_PORT}\"\n\
                 grant_key = \"{}\"\n\
                 [limits]\n\
                 {limits}",
                path(&pki.rendezvous_key_file),
                path(&pki.registry),
                pki.issuer_public,
                path(&pki.grant_key_file),
            ),
        )?;
        let mut relay = Process::start(
            run,
            topology.internet(),
            "relay",
            &bins.relay,
            &[
                "--listen".into(),
                format!("{RELAY_IP}:{RELAY_PORT}"),
                "--grant-key-file".into(),
                path(&pki.grant_key_file),
            ],
        )?;
        relay.wait_text("relay ready", 1, SERVER_START)?;
        let mut rendezvous = Process::start(
            run,
            topology.internet(),
            "rendezvous",
            &bins.rendezvous,
            &["serve".into(), "--config".into(), path(&config)],
        )?;
        rendezvous.wait_text(RENDEZVOUS_READY, 1, SERVER_START)?;
        Ok(Self {
            rendezvous,
            relay,
            pki,
        })
    }

    /// Kills the rendezvous (SIGKILL, as a crash), waits `down`, starts it again.
    pub(crate) fn restart_rendezvous(&mut self, down: Duration) -> anyhow::Result<()> {
        let starts = self.rendezvous.count_text(RENDEZVOUS_READY);
        self.rendezvous.kill();
        std::thread::sleep(down);
        self.rendezvous.restart()?;
        self.rendezvous
            .wait_text(RENDEZVOUS_READY, starts + 1, SERVER_START)
    }

    /// `ADDR:PORT` of the rendezvous.
    pub(crate) fn rendezvous_addr() -> String {
        format!("{RENDEZVOUS_IP}:{RENDEZVOUS_PORT}")
    }
}
