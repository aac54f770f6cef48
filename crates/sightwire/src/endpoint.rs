//! The public handles: [`Device`] and [`Viewer`].

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use sightwire_media::Frame;
use sightwire_session::PublicKey;
use sightwire_session::auth::{PasswordKey, ViewerAuthorizer};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::PathPolicy;
use crate::config::{Credentials, DeviceConfig, Target, ViewerConfig};
use crate::driver::{Command, Driver, DriverSetup, Side};
use crate::error::ConnectError;
use crate::events::{Event, PeerId};

/// Queued application events per endpoint; beyond it events are dropped (and counted)
/// rather than stall the network loop.
pub const EVENT_QUEUE: usize = 4096;
/// Queued application commands per endpoint.
pub const COMMAND_QUEUE: usize = 256;

/// The shared part of both handles.
#[derive(Debug)]
struct Handle {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    task: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl Handle {
    async fn command(&self, command: Command) -> bool {
        self.commands.send(command).await.is_ok()
    }

    async fn shutdown(&mut self) {
        let _ = self.commands.send(Command::Shutdown).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.commands.try_send(Command::Shutdown);
    }
}

fn spawn(
    socket: UdpSocket,
    side: Side,
    keypair: sightwire_session::StaticKeypair,
    rendezvous: crate::RendezvousServer,
    media: sightwire_media::Config,
    path_policy: PathPolicy,
) -> std::io::Result<Handle> {
    let local_addr = socket.local_addr()?;
    let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let driver = Driver::new(DriverSetup {
        socket,
        side,
        keypair,
        rendezvous,
        media,
        path_policy,
        commands: command_rx,
        events: event_tx,
    })
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let task = tokio::spawn(driver.run());
    Ok(Handle {
        commands: command_tx,
        events: event_rx,
        task: Some(task),
        local_addr,
    })
}

/// A camera: registered with the rendezvous under its certified ID, accepting viewers
/// the rendezvous introduces, deciding itself who may watch, and streaming frames to all
/// of them.
#[derive(Debug)]
pub struct Device {
    handle: Handle,
}

impl Device {
    /// Binds the socket and starts registering. Returns at once; watch
    /// [`Event::Registered`].
    pub async fn start(config: DeviceConfig) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(config.bind).await?;
        let device_id = config.identity.certificate.device_id();
        let password = config
            .password
            .as_deref()
            .map(|p| PasswordKey::derive(p.as_bytes(), &device_id));
        let mut authorizer = ViewerAuthorizer::new(password);
        for key in &config.trusted_viewers {
            let _ = authorizer.trust(*key);
        }
        let side = Side::Device {
            certificate: config.identity.certificate,
            authorizer,
            max_viewers: config.max_viewers,
        };
        let handle = spawn(
            socket,
            side,
            config.identity.keypair,
            config.rendezvous,
            config.media,
            config.path_policy,
        )?;
        Ok(Self { handle })
    }

    /// The local socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// Sends a frame to every authorized viewer. It is fragmented once; the fragments
    /// are shared by all viewers.
    pub async fn send_frame(&self, frame: Frame) -> bool {
        self.handle.command(Command::SendFrame(frame)).await
    }

    /// Sends a control message to one viewer, or to all.
    pub async fn send_control(&self, to: Option<PeerId>, message: Bytes) -> bool {
        self.handle.command(Command::SendControl(to, message)).await
    }

    /// Trusts a viewer key (it may then connect without the password), or revokes it.
    pub async fn set_trusted(&self, key: PublicKey, trusted: bool) -> bool {
        self.handle.command(Command::SetTrusted(key, trusted)).await
    }

    /// The next event; `None` once the device has stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.handle.events.recv().await
    }

    /// Closes every viewer connection, deregisters and stops.
    pub async fn shutdown(mut self) {
        self.handle.shutdown().await;
    }
}

/// A viewer's connection to one device.
#[derive(Debug)]
pub struct Viewer {
    handle: Handle,
    peer: PeerId,
}

impl Viewer {
    /// Looks the device up at the rendezvous, punches (or relays) a path to it, runs the
    /// Noise handshake against the certified (and pinned) device key, and proves it may
    /// watch. Resolves once frames can flow, or with why not.
    pub async fn connect(
        config: ViewerConfig,
        target: Target,
        credentials: Credentials,
    ) -> Result<Self, ConnectError> {
        let socket = UdpSocket::bind(config.bind)
            .await
            .map_err(|_| ConnectError::Socket)?;
        let password = credentials
            .password
            .as_deref()
            .map(|p| PasswordKey::derive(p.as_bytes(), target.device_id().as_bytes()));
        let (ready_tx, ready_rx) = oneshot::channel();
        let side = Side::Viewer {
            target,
            issuers: config.issuers,
            password,
            remember: credentials.remember,
            want_relay: config.want_relay,
            ready: Some(ready_tx),
            connect_deadline: Instant::now() + config.connect_timeout,
            request: None,
            want_connect: Some(Instant::now()),
        };
        let mut handle = spawn(
            socket,
            side,
            config.keypair,
            config.rendezvous,
            config.media,
            config.path_policy,
        )
        .map_err(|_| ConnectError::Socket)?;
        match ready_rx.await {
            Ok(Ok(peer)) => Ok(Self { handle, peer }),
            Ok(Err(error)) => {
                handle.shutdown().await;
                Err(error)
            }
            Err(_) => Err(ConnectError::Stopped),
        }
    }

    /// The connection's id (also in its events). After a reconnect (the viewer moved,
    /// or its path was lost) events carry the new connection's id.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The local socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr
    }

    /// The next event (frames, path changes, figures); `None` once closed.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.handle.events.recv().await
    }

    /// Sends a control message to the device (PTZ, settings...).
    pub async fn send_control(&self, message: Bytes) -> bool {
        self.handle
            // To the device, whichever connection currently carries the stream.
            .command(Command::SendControl(None, message))
            .await
    }

    /// Sends a frame to the device (talk-back audio).
    pub async fn send_frame(&self, frame: Frame) -> bool {
        self.handle.command(Command::SendFrame(frame)).await
    }

    /// Closes the connection.
    pub async fn close(mut self) {
        self.handle.shutdown().await;
    }
}
