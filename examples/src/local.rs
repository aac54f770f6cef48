//! A whole Sightwire deployment on loopback: issuer, rendezvous (with its embedded
//! registry), relay, both servers with their TCP/TLS stream listeners too
//! (`spec/stream.md`). The demo and the end-to-end tests run cameras and viewers against
//! it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use sightwire::{DeviceIdentity, RendezvousServer, ViewerConfig};
use sightwire_id::DeviceId;
use sightwire_relay::{Relay, RelayConfig, RelayServer, RelayStats};
use sightwire_rendezvous::server::{Server, unix_now};
use sightwire_rendezvous::{CoreConfig, RegistryPool, Rendezvous, SqliteRegistry};
use sightwire_session::StaticKeypair;
use sightwire_signal::cert::{CertificateFields, IssuerKey, TrustedIssuers};
use sightwire_signal::grant::RelayGrantKey;
use sightwire_stream::tls::{ListenerConfig, StreamListener, TlsIdentity};
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long issued demo certificates are valid.
const CERTIFICATE_LIFETIME_SECS: u64 = 365 * 24 * 3600;

/// A running rendezvous server.
struct RunningRendezvous {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Issuer, rendezvous and relay on loopback.
pub struct LocalNetwork {
    /// The operator's issuer key.
    pub issuer: IssuerKey,
    /// Where the rendezvous is and its pinned key.
    pub rendezvous: RendezvousServer,
    /// The relay's address.
    pub relay_address: SocketAddr,
    /// The relay's TCP/TLS stream port.
    pub relay_stream_port: u16,
    /// The rendezvous's TCP/TLS stream listener address (kept across restarts).
    rendezvous_stream_listen: SocketAddr,
    tls: TlsIdentity,
    rendezvous_key: [u8; 32],
    /// Where the rendezvous listens.
    rendezvous_listen: SocketAddr,
    relay_key: RelayGrantKey,
    registry: std::path::PathBuf,
    running: Option<RunningRendezvous>,
    relay_stop: watch::Sender<bool>,
    relay_task: JoinHandle<Option<RelayStats>>,
    serial: u64,
    core_config: CoreConfig,
}

impl std::fmt::Debug for LocalNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNetwork")
            .field("rendezvous", &self.rendezvous.address)
            .field("relay", &self.relay_address)
            .finish()
    }
}

/// How often, and how far apart, a restarted rendezvous tries to bind its stream port
/// again while the old listener is still being dropped (2 s in all).
const STREAM_REBIND_TRIES: u32 = 100;
const STREAM_REBIND_WAIT: Duration = Duration::from_millis(20);

impl LocalNetwork {
    /// Starts a relay and a rendezvous on `127.0.0.1`, the rendezvous keeping its
    /// registry in `registry` (an SQLite file, created if missing).
    pub async fn start(registry: &Path) -> anyhow::Result<Self> {
        Self::start_with(registry, CoreConfig::default()).await
    }

    /// As [`LocalNetwork::start`], with the rendezvous's timers and limits from `config`
    /// (its relay setting is replaced by the local relay).
    pub async fn start_with(registry: &Path, config: CoreConfig) -> anyhow::Result<Self> {
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        let issuer = IssuerKey::from_seed(&seed);
        let mut rendezvous_key = [0u8; 32];
        rng.fill_bytes(&mut rendezvous_key);
        let mut relay_secret = [0u8; 32];
        rng.fill_bytes(&mut relay_secret);
        let relay_key = RelayGrantKey::from_bytes(relay_secret);

        let tls = TlsIdentity::self_signed(vec!["127.0.0.1".into()])?;
        let relay = RelayServer::bind(
            "127.0.0.1:0".parse()?,
            Relay::new(RelayConfig::default(), relay_key.clone()),
        )
        .await?;
        let relay = relay.with_stream(
            StreamListener::bind("127.0.0.1:0".parse()?, &tls, ListenerConfig::default()).await?,
        );
        let relay_address = relay.local_addr()?;
        let relay_stream_port = relay.stream_addr().map_or(0, |a| a.port());
        let (relay_stop, stopped) = watch::channel(false);
        let relay_task = tokio::spawn(async move { relay.run(stopped).await.ok() });

        let public_key = *StaticKeypair::from_private(rendezvous_key).public();
        let mut network = Self {
            issuer,
            // The address is set when the rendezvous is bound (a server address refuses
            // port 0).
            rendezvous: RendezvousServer::new(SocketAddr::from(([127, 0, 0, 1], 0)), public_key),
            relay_address,
            relay_stream_port,
            rendezvous_stream_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls,
            rendezvous_key,
            rendezvous_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            relay_key,
            registry: registry.to_owned(),
            running: None,
            relay_stop,
            relay_task,
            serial: 0,
            core_config: config,
        };
        network.start_rendezvous("127.0.0.1:0".parse()?).await?;
        Ok(network)
    }

    async fn start_rendezvous(&mut self, address: SocketAddr) -> anyhow::Result<()> {
        let socket = UdpSocket::bind(address).await?;
        self.rendezvous_listen = socket.local_addr()?;
        // A restart keeps the port, so a name given to clients stays right.
        if self.rendezvous.address.name().is_none() {
            self.rendezvous.address = self.rendezvous_listen.into();
        }
        let config = {
            let mut value = self.core_config.clone();
            value.relay = Some(sightwire_rendezvous::RelayConfig::new(
                self.relay_address,
                Some(self.relay_stream_port),
                self.relay_key.clone(),
            ));
            value
        };
        let core = Rendezvous::new(
            config,
            TrustedIssuers::single(self.issuer.public()),
            Box::new(rand::rngs::StdRng::from_entropy()),
            Instant::now(),
            unix_now(),
        );
        // On a restart the old listener's accept task (which owns its TCP socket) ends
        // only once the runtime has processed its abort: wait for the port briefly.
        let mut tries = 0;
        let stream = loop {
            match StreamListener::bind(
                self.rendezvous_stream_listen,
                &self.tls,
                ListenerConfig::default(),
            )
            .await
            {
                Err(error)
                    if error.kind() == std::io::ErrorKind::AddrInUse
                        && tries < STREAM_REBIND_TRIES =>
                {
                    tries += 1;
                    tokio::time::sleep(STREAM_REBIND_WAIT).await;
                }
                bound => break bound?,
            }
        };
        self.rendezvous_stream_listen = stream.local_addr();
        let server = Server::new(
            socket,
            StaticKeypair::from_private(self.rendezvous_key),
            {
                // As the rendezvous binary: a client with another key learns it at once.
                let mut config = sightwire_session::Config::default();
                config.key_mismatch_notices_per_second =
                    sightwire_session::KEY_MISMATCH_NOTICES_PER_SECOND;
                config
            },
            core,
            Box::new(rand::rngs::StdRng::from_entropy()),
            RegistryPool::spawn(vec![SqliteRegistry::open(&self.registry)?])?,
        )
        .with_stream(stream);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.running = Some(RunningRendezvous { stop, task });
        Ok(())
    }

    /// Stops the rendezvous and starts it again on the same address, with the same key
    /// and registry. `graceful`: an operator restarting the service (the server tells
    /// online devices it is going away); otherwise a crash (the server just vanishes).
    pub async fn restart_rendezvous(&mut self, graceful: bool) -> anyhow::Result<()> {
        if graceful {
            self.stop_rendezvous().await;
        } else if let Some(running) = self.running.take() {
            running.task.abort();
            let _ = running.task.await;
        }
        let address = self.rendezvous_address();
        self.start_rendezvous(address).await
    }

    async fn stop_rendezvous(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.stop.send(());
            let _ = running.task.await;
        }
    }

    /// What a camera's first boot plus the operator's issuing step produce: a fresh
    /// static key and a certificate binding `device_id` to it.
    pub fn provision(&mut self, device_id: DeviceId) -> anyhow::Result<DeviceIdentity> {
        let keypair = StaticKeypair::generate(&mut rand::rngs::OsRng);
        self.serial += 1;
        let now = unix_now();
        let certificate = self.issuer.issue(CertificateFields {
            device_id,
            device_key: *keypair.public(),
            not_before: now.saturating_sub(60),
            not_after: now + CERTIFICATE_LIFETIME_SECS,
            serial: self.serial,
        })?;
        Ok(DeviceIdentity::new(keypair, certificate))
    }

    /// The rendezvous's socket address (it listens on loopback).
    pub fn rendezvous_address(&self) -> SocketAddr {
        self.rendezvous_listen
    }

    /// The TCP port of the rendezvous's stream listener (on the same IP). Endpoints get
    /// it only when a test puts it in their `RendezvousServer::stream_port`.
    pub fn rendezvous_stream_port(&self) -> u16 {
        self.rendezvous_stream_listen.port()
    }

    /// Clients reach the rendezvous through `host` (a name for loopback, such as
    /// `localhost`) instead of its address, so the driver resolves it.
    pub fn name_rendezvous(&mut self, host: &str) -> anyhow::Result<()> {
        let port = self.rendezvous_address().port();
        self.rendezvous.address = format!("{host}:{port}").parse()?;
        Ok(())
    }

    /// A viewer configuration that trusts this network's issuer, with a fresh key.
    pub fn viewer_config(&self) -> ViewerConfig {
        ViewerConfig::new(
            StaticKeypair::generate(&mut rand::rngs::OsRng),
            self.rendezvous.clone(),
            TrustedIssuers::single(self.issuer.public()),
        )
    }

    /// Stops both servers and returns the relay's counters (`None` if its task failed).
    pub async fn shutdown(mut self) -> Option<RelayStats> {
        self.stop_rendezvous().await;
        let _ = self.relay_stop.send(true);
        (&mut self.relay_task).await.ok().flatten()
    }
}
