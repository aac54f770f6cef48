//! `sightwire-rendezvous`: the rendezvous server and the operator's issuer tool.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rand::{RngCore, SeedableRng};
use sightwire_id::{DeviceId, PublicKey};
use sightwire_ops::http;
use sightwire_ops::log::LogFormat;
use sightwire_ops::metrics::Metrics;
use sightwire_ops::udp::{DEFAULT_SERVER_SOCKET_BUFFER_BYTES, bind_tokio_udp};
use sightwire_rendezvous::config::{
    DEFAULT_POSTGRES_CONNECTIONS, DEFAULT_STREAM_PORT, MAX_POSTGRES_CONNECTIONS, RegistrySetting,
    ServerConfig, read_hex_key,
};
use sightwire_rendezvous::metrics::METRICS;
use sightwire_rendezvous::server::{Server, unix_now};
use sightwire_rendezvous::{Registry, RegistryPool, Rendezvous, SqliteRegistry};
use sightwire_session::StaticKeypair;
use sightwire_signal::cert::{CertificateFields, IssuerKey};
use sightwire_stream::tls::{ListenerConfig, StreamListener, TlsIdentity};

#[derive(Parser, Debug)]
#[command(version, about = "Sightwire rendezvous server and ID issuer")]
struct Cli {
    /// Log lines as `text` or `json` (one object per line); the filter is `RUST_LOG`.
    #[arg(long, global = true, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Serve /metrics, /healthz and /readyz on this TCP address (overrides the
        /// configuration's `metrics_listen`).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Create the server's static X25519 key (clients pin its public half).
    Keygen {
        /// Where to write the private key (hex); refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue and manage device ID certificates.
    #[command(subcommand)]
    Issuer(IssuerCommand),
}

#[derive(Subcommand, Debug)]
enum IssuerCommand {
    /// Create an issuer signing key. Keep it offline.
    NewKey {
        /// Where to write the secret seed (hex); refuses to overwrite.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a certificate for (device ID, device static key) and record it.
    Issue {
        /// The issuer key file.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        registry: StoreArgs,
        /// The device ID as printed on the label (any common MAC notation).
        #[arg(long)]
        device_id: DeviceId,
        /// The device's static X25519 public key, 64 hex digits.
        #[arg(long)]
        device_key: String,
        /// Validity in days from now.
        #[arg(long, default_value_t = 3650)]
        valid_days: u64,
        /// Write the 135-byte certificate here (it is also printed in hex).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List recorded certificates.
    List {
        #[command(flatten)]
        registry: StoreArgs,
    },
    /// Revoke the current certificate of a device ID, or (with `--through-serial`)
    /// every certificate of it up to a serial, recorded or not.
    Revoke {
        #[command(flatten)]
        registry: StoreArgs,
        /// The device ID.
        #[arg(long)]
        device_id: DeviceId,
        /// Refuse every certificate of this ID with a serial at or below this one, even
        /// one the registry never saw (a stolen key's certificate that was never used).
        #[arg(long)]
        through_serial: Option<u64>,
    },
}

/// Which registry the issuer tool works on: a SQLite file or a PostgreSQL database.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct StoreArgs {
    /// The registry's SQLite file.
    #[arg(long)]
    registry: Option<PathBuf>,
    /// The registry in PostgreSQL: libpq connection parameters (`host=... dbname=...`)
    /// or a `postgresql://` URL (feature `postgres`).
    #[arg(long)]
    postgres: Option<String>,
}

/// What the issuer tool does on a registry.
enum Operation {
    Issue {
        key: PathBuf,
        device_id: DeviceId,
        device_key: String,
        valid_days: u64,
        out: Option<PathBuf>,
    },
    List,
    Revoke {
        device_id: DeviceId,
        through_serial: Option<u64>,
    },
}

fn write_new_secret(path: &Path, secret: &[u8; 32]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {} (does it exist?)", path.display()))?;
    writeln!(file, "{}", hex::encode(secret))?;
    Ok(())
}

fn fresh_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    sightwire_ops::log::init(cli.log_format);
    match cli.command {
        Command::Serve {
            config,
            metrics_listen,
        } => serve(&config, metrics_listen),
        Command::Keygen { out } => {
            let secret = fresh_secret();
            write_new_secret(&out, &secret)?;
            println!(
                "{}",
                hex::encode(StaticKeypair::from_private(secret).public())
            );
            Ok(())
        }
        Command::Issuer(command) => issuer(command),
    }
}

fn issuer(command: IssuerCommand) -> anyhow::Result<()> {
    let (store, operation) = match command {
        IssuerCommand::NewKey { out } => {
            let seed = fresh_secret();
            write_new_secret(&out, &seed)?;
            println!(
                "{}",
                hex::encode(IssuerKey::from_seed(&seed).public().to_bytes())
            );
            return Ok(());
        }
        IssuerCommand::Issue {
            key,
            registry,
            device_id,
            device_key,
            valid_days,
            out,
        } => (
            registry,
            Operation::Issue {
                key,
                device_id,
                device_key,
                valid_days,
                out,
            },
        ),
        IssuerCommand::List { registry } => (registry, Operation::List),
        IssuerCommand::Revoke {
            registry,
            device_id,
            through_serial,
        } => (
            registry,
            Operation::Revoke {
                device_id,
                through_serial,
            },
        ),
    };
    match (store.registry, store.postgres) {
        (Some(path), _) => operate(
            SqliteRegistry::open(&path)
                .with_context(|| format!("opening registry {}", path.display()))?,
            operation,
        ),
        (None, Some(params)) => operate_postgres(&params, operation),
        (None, None) => bail!("give --registry or --postgres"),
    }
}

#[cfg(feature = "postgres")]
fn operate_postgres(params: &str, operation: Operation) -> anyhow::Result<()> {
    let registry = sightwire_rendezvous::PostgresRegistry::connect(params)
        .context("connecting to the PostgreSQL registry")?;
    operate(registry, operation)
}

#[cfg(not(feature = "postgres"))]
fn operate_postgres(_params: &str, _operation: Operation) -> anyhow::Result<()> {
    bail!("this build has no PostgreSQL support (build with --features postgres)")
}

/// The issuer tool's operations, on any registry.
fn operate<R: Registry>(mut registry: R, operation: Operation) -> anyhow::Result<()> {
    match operation {
        Operation::Issue {
            key,
            device_id,
            device_key,
            valid_days,
            out,
        } => {
            let issuer = IssuerKey::from_seed(&read_hex_key(&key)?);
            let device_key: PublicKey = device_key
                .parse()
                .context("device key must be 64 hex digits")?;
            let id = device_id;
            let serial = match registry.lookup(id)? {
                Some(record) => record
                    .certificate
                    .serial()
                    .checked_add(1)
                    .context("serial exhausted")?,
                None => 1,
            };
            let now = unix_now();
            let certificate = issuer.issue(CertificateFields {
                device_id: id,
                device_key,
                not_before: now.saturating_sub(3600),
                not_after: now.saturating_add(valid_days.saturating_mul(86_400)),
                serial,
            })?;
            if !registry.record(&certificate)? {
                bail!("the registry already holds a newer certificate for {device_id}");
            }
            if let Some(out) = out {
                std::fs::write(&out, certificate.to_bytes())
                    .with_context(|| format!("cannot write {}", out.display()))?;
            }
            println!("{}", hex::encode(certificate.to_bytes()));
            eprintln!("issued serial {serial} for {device_id}");
        }
        Operation::List => {
            for record in registry.list()? {
                let fields = record.certificate.fields();
                println!(
                    "{}  serial {:<6} key {}  valid {}..{}  issuer {}{}",
                    fields.device_id,
                    fields.serial,
                    hex::encode(fields.device_key),
                    fields.not_before,
                    fields.not_after,
                    record.certificate.issuer(),
                    if record.revoked { "  REVOKED" } else { "" },
                );
            }
        }
        Operation::Revoke {
            device_id,
            through_serial,
        } => match through_serial {
            Some(serial) => {
                registry.revoke_through(device_id, serial)?;
                eprintln!("revoked {device_id} through serial {serial}");
            }
            None => {
                if !registry.revoke(device_id)? {
                    bail!("no certificate recorded for {device_id} (use --through-serial)");
                }
                eprintln!("revoked {device_id}");
            }
        },
    }
    Ok(())
}

fn serve(config_path: &Path, metrics_listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let config = ServerConfig::load(config_path)
        .with_context(|| format!("loading {}", config_path.display()))?;
    let metrics_listen = metrics_listen.or(config.metrics_listen);
    let core_config = config.core()?;
    let session_config = config.session();
    let trust = config.trusted_issuers()?;
    let static_key = StaticKeypair::from_private(read_hex_key(&config.static_key)?);
    let (registry, postgres) = open_registry(&config.registry)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // The operator's endpoints first: /healthz answers while the rest starts.
        let metrics = Arc::new(Metrics::new(METRICS));
        if let Some(addr) = metrics_listen {
            http::spawn_listener(addr, metrics.clone())
                .await
                .with_context(|| format!("binding the metrics address {addr}"))?;
        }
        let buffer_bytes = config
            .socket_buffer_bytes
            .unwrap_or(DEFAULT_SERVER_SOCKET_BUFFER_BYTES);
        let (socket, buffers) = bind_tokio_udp(config.listen, buffer_bytes)
            .with_context(|| format!("binding {}", config.listen))?;
        let core = Rendezvous::new(
            core_config,
            trust,
            Box::new(rand::rngs::StdRng::from_entropy()),
            Instant::now(),
            unix_now(),
        );
        let mut server = Server::new(
            socket,
            static_key.clone(),
            session_config,
            core,
            Box::new(rand::rngs::StdRng::from_entropy()),
            registry,
        )
        .with_metrics(metrics);
        if let Some(params) = postgres {
            server = server.with_revocations(listen_for_revocations(params));
        }
        if let Some(listener) = stream_listener(&config).await? {
            server = server.with_stream(listener);
        }
        // Handlers first: a SIGTERM right after the "serving" line must stop the
        // server gracefully, not kill it.
        let shutdown = sightwire_shutdown::shutdown_signal();
        tracing::info!(
            listen = %server.local_addr()?,
            stream = ?server.stream_addr(),
            public_key = %hex::encode(static_key.public()),
            receive_buffer = buffers.receive,
            send_buffer = buffers.send,
            "rendezvous serving"
        );
        let core = server.run(shutdown).await?;
        tracing::info!(stats = ?core.stats(), "stopped");
        anyhow::Ok(())
    })
}

/// The registry workers for `setting`, and the PostgreSQL parameters to listen for
/// revocations on (several nodes share that database).
fn open_registry(setting: &RegistrySetting) -> anyhow::Result<(RegistryPool, Option<String>)> {
    match setting {
        RegistrySetting::Sqlite(path) => {
            // One connection: SQLite has one writer, and its queries take microseconds.
            let registry = SqliteRegistry::open(path)
                .with_context(|| format!("opening registry {}", path.display()))?;
            Ok((RegistryPool::spawn(vec![registry])?, None))
        }
        RegistrySetting::Postgres(section) => {
            let connections = section
                .connections
                .unwrap_or(DEFAULT_POSTGRES_CONNECTIONS)
                .clamp(1, MAX_POSTGRES_CONNECTIONS);
            open_postgres(&section.postgres, connections)
        }
        _ => bail!("unsupported registry setting"),
    }
}

#[cfg(feature = "postgres")]
fn open_postgres(
    params: &str,
    connections: usize,
) -> anyhow::Result<(RegistryPool, Option<String>)> {
    let registries = sightwire_rendezvous::PostgresRegistry::connect_many(params, connections)
        .context("connecting to the PostgreSQL registry")?;
    tracing::info!(connections, "registry: PostgreSQL");
    Ok((RegistryPool::spawn(registries)?, Some(params.to_owned())))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(
    _params: &str,
    _connections: usize,
) -> anyhow::Result<(RegistryPool, Option<String>)> {
    bail!("registry = {{ postgres = ... }} needs a build with --features postgres")
}

#[cfg(feature = "postgres")]
fn listen_for_revocations(params: String) -> tokio::sync::mpsc::Receiver<DeviceId> {
    sightwire_rendezvous::RevocationListener::spawn(params)
}

#[cfg(not(feature = "postgres"))]
fn listen_for_revocations(_params: String) -> tokio::sync::mpsc::Receiver<DeviceId> {
    tokio::sync::mpsc::channel(1).1
}

/// The stream listener `[stream]` asks for, if any.
async fn stream_listener(config: &ServerConfig) -> anyhow::Result<Option<StreamListener>> {
    let section = &config.stream;
    let port = section.port.unwrap_or(DEFAULT_STREAM_PORT);
    if port == 0 {
        return Ok(None);
    }
    let identity = match (&section.cert, &section.key) {
        (Some(cert), Some(key)) => TlsIdentity::from_pem(
            &std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
            &std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
        )?,
        (None, None) => TlsIdentity::self_signed(vec![config.listen.ip().to_string()])?,
        _ => bail!("[stream] needs both cert and key, or neither"),
    };
    let defaults = ListenerConfig::default();
    let limits = {
        let mut value = defaults;
        value.max_connections = section.max_connections.unwrap_or(defaults.max_connections);
        value.idle_timeout = section
            .idle_timeout_ms
            .map_or(defaults.idle_timeout, std::time::Duration::from_millis);
        value
    };
    let addr = SocketAddr::new(config.listen.ip(), port);
    match StreamListener::bind(addr, &identity, limits).await {
        Ok(listener) => Ok(Some(listener)),
        Err(error) if section.port.is_none() => {
            tracing::warn!(%addr, %error, "no stream listener (set [stream] port)");
            Ok(None)
        }
        Err(error) => Err(error).with_context(|| format!("binding the stream port {addr}")),
    }
}
