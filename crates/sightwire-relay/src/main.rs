//! `sightwire-relay`: the relay server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sightwire_ops::http;
use sightwire_ops::log::LogFormat;
use sightwire_ops::metrics::Metrics;
use sightwire_ops::udp::{DEFAULT_SERVER_SOCKET_BUFFER_BYTES, bind_tokio_udp};
use sightwire_relay::metrics::METRICS;
use sightwire_relay::{Relay, RelayConfig, RelayServer};
use sightwire_signal::grant::RelayGrantKey;
use sightwire_stream::tls::{ListenerConfig, StreamListener, TlsIdentity};

/// Forward encrypted datagrams between the two endpoints of granted allocations.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:3479")]
    listen: SocketAddr,
    /// File holding the 32-byte grant key shared with the rendezvous, as 64 hex digits.
    #[arg(long)]
    grant_key_file: PathBuf,
    /// Most allocations held at once.
    #[arg(long, default_value_t = RelayConfig::default().max_allocations)]
    max_allocations: usize,
    /// Seconds without data after which an allocation is removed.
    #[arg(long, default_value_t = RelayConfig::default().idle_timeout.as_secs())]
    idle_timeout_secs: u64,
    /// Sustained rate per allocation, bytes per second.
    #[arg(long, default_value_t = RelayConfig::default().rate_bytes_per_sec)]
    rate_bytes_per_sec: u64,
    /// Most bytes one allocation may forward.
    #[arg(long, default_value_t = RelayConfig::default().max_bytes_per_allocation)]
    max_bytes_per_allocation: u64,
    /// TCP port of the TLS stream listener for endpoints whose UDP is blocked
    /// (spec/stream.md), on the `--listen` IP; 0 turns it off. If the default port cannot
    /// be bound (not root) the relay warns and serves UDP only.
    #[arg(long)]
    stream_port: Option<u16>,
    /// PEM certificate chain for the stream listener (default: a fresh self-signed one;
    /// endpoints do not verify it).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most stream connections at once.
    #[arg(long, default_value_t = ListenerConfig::default().max_connections)]
    stream_max_connections: usize,
    /// Seconds without a datagram after which a stream connection is closed.
    #[arg(long, default_value_t = ListenerConfig::default().idle_timeout.as_secs())]
    stream_idle_timeout_secs: u64,
    /// UDP socket buffer size asked for, each way, bytes (the kernel caps it at
    /// net.core.rmem_max/wmem_max; the granted size is logged).
    #[arg(long, default_value_t = DEFAULT_SERVER_SOCKET_BUFFER_BYTES)]
    socket_buffer_bytes: usize,
    /// Batched socket I/O: recvmmsg with GRO, and runs of datagrams to one destination
    /// in one sendmsg with GSO, where the kernel offers them (spec/relay.md, "Socket I/O").
    /// `--batched-io false` reads and sends one datagram per syscall.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    batched_io: bool,
    /// Serve /metrics, /healthz and /readyz on this TCP address (default: none).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Log lines as `text` or `json` (one object per line); the filter is `RUST_LOG`.
    #[arg(long, default_value = "text")]
    log_format: LogFormat,
}

/// The stream port used when `--stream-port` is not given.
const DEFAULT_STREAM_PORT: u16 = 443;

/// The stream listener the arguments ask for, if any.
async fn stream_listener(args: &Args) -> anyhow::Result<Option<StreamListener>> {
    let port = args.stream_port.unwrap_or(DEFAULT_STREAM_PORT);
    if port == 0 {
        return Ok(None);
    }
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => TlsIdentity::from_pem(
            &std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
            &std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
        )?,
        _ => TlsIdentity::self_signed(vec![args.listen.ip().to_string()])?,
    };
    let config = {
        let mut value = ListenerConfig::default();
        value.max_connections = args.stream_max_connections;
        value.idle_timeout = Duration::from_secs(args.stream_idle_timeout_secs);
        value
    };
    let addr = SocketAddr::new(args.listen.ip(), port);
    match StreamListener::bind(addr, &identity, config).await {
        Ok(listener) => Ok(Some(listener)),
        Err(error) if args.stream_port.is_none() => {
            tracing::warn!(%addr, %error, "no stream listener (pass --stream-port)");
            Ok(None)
        }
        Err(error) => Err(error).with_context(|| format!("binding the stream port {addr}")),
    }
}

fn read_key(path: &PathBuf) -> anyhow::Result<RelayGrantKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading grant key {}", path.display()))?;
    let bytes = hex::decode(text.trim()).context("grant key is not hex")?;
    let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        bail!("grant key must be 32 bytes, got {}", bytes.len());
    };
    Ok(RelayGrantKey::from_bytes(key))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sightwire_ops::log::init(args.log_format);
    // The operator's endpoints first: /healthz answers while the rest starts.
    let metrics = Arc::new(Metrics::new(METRICS));
    if let Some(addr) = args.metrics_listen {
        http::spawn_listener(addr, metrics.clone())
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
    }
    let config = {
        let mut value = RelayConfig::default();
        value.max_allocations = args.max_allocations;
        value.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
        value.rate_bytes_per_sec = args.rate_bytes_per_sec;
        value.max_bytes_per_allocation = args.max_bytes_per_allocation;
        value
    };
    let relay = Relay::new(config, read_key(&args.grant_key_file)?);
    let (socket, buffers) = bind_tokio_udp(args.listen, args.socket_buffer_bytes)
        .with_context(|| format!("binding {}", args.listen))?;
    let mut server = RelayServer::from_socket(socket, relay)
        .with_metrics(metrics)
        .with_batched_io(args.batched_io);
    if let Some(listener) = stream_listener(&args).await? {
        server = server.with_stream(listener);
    }
    let shutdown = sightwire_shutdown::shutdown_signal();
    tracing::info!(
        listen = %server.local_addr()?,
        stream = ?server.stream_addr(),
        receive_buffer = buffers.receive,
        send_buffer = buffers.send,
        "relay ready"
    );

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let stats = server.run(stopped).await?;
    tracing::info!(?stats, "relay stopped");
    Ok(())
}
