//! The public handles: [`Device`], [`ViewerEndpoint`] and [`Viewer`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use sightwire_media::{Frame, StreamSet};
use sightwire_session::PublicKey;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{Credentials, DeviceConfig, RendezvousServer, Target, ViewerConfig};
use crate::driver::{Command, Driver};
use crate::error::{ConnectError, EndpointStopped};
use crate::events::{Event, PeerId};
use crate::proto::{DeviceSettings, Endpoint, EndpointConfig, Recipients, WatchId, WatchRequest};

/// Queued application events per device, or per watched camera; beyond it events are
/// dropped (and counted) rather than stall the network loop.
pub const EVENT_QUEUE: usize = 4096;
/// Queued application commands per endpoint.
pub const COMMAND_QUEUE: usize = 256;

/// The UDP socket buffer sizes the kernel granted (shared with the servers, which size
/// their sockets the same way).
pub use sightwire_ops::udp::SocketBuffers;

/// The running driver task of one socket.
#[derive(Debug)]
struct Task {
    commands: mpsc::Sender<Command>,
    join: Option<JoinHandle<()>>,
    local_addr: SocketAddr,
    buffers: SocketBuffers,
}

impl Task {
    async fn bind(
        bind: SocketAddr,
        buffer_bytes: usize,
        config: impl FnOnce(u16) -> EndpointConfig,
        make: impl FnOnce(EndpointConfig, Instant) -> Result<Endpoint, sightwire_media::ConfigError>,
        device_events: Option<mpsc::Sender<Event>>,
    ) -> std::io::Result<Self> {
        let (socket, buffers) = sightwire_ops::udp::bind_udp(bind, buffer_bytes)?;
        let socket = UdpSocket::from_std(socket)?;
        let local_addr = socket.local_addr()?;
        let config = config(local_addr.port());
        let endpoint = make(config, Instant::now())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let driver = Driver::new(socket, endpoint, command_rx, device_events, local_addr);
        Ok(Self {
            commands,
            join: Some(tokio::spawn(driver.run())),
            local_addr,
            buffers,
        })
    }

    async fn command(&self, command: Command) -> Result<(), EndpointStopped> {
        self.commands
            .send(command)
            .await
            .map_err(|_| EndpointStopped)
    }

    async fn shutdown(&mut self) {
        let _ = self.commands.send(Command::Shutdown).await;
        if let Some(join) = self.join.take() {
            let _ = join.await;
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let _ = self.commands.try_send(Command::Shutdown);
    }
}

fn endpoint_config(
    keypair: sightwire_session::StaticKeypair,
    rendezvous: RendezvousServer,
    media: sightwire_media::Config,
    path_policy: crate::PathPolicy,
    local_port: u16,
) -> EndpointConfig {
    let rng = rand::rngs::StdRng::from_entropy();
    let mut config = EndpointConfig::new(keypair, rendezvous, Box::new(rng));
    config.media = media;
    config.path_policy = path_policy;
    config.local_port = local_port;
    config
}

/// A camera: registered with the rendezvous under its certified ID, accepting viewers
/// the rendezvous introduces, deciding itself who may watch, and streaming frames to all
/// of them.
#[derive(Debug)]
pub struct Device {
    task: Task,
    events: mpsc::Receiver<Event>,
}

impl Device {
    /// Binds the socket and starts registering. Returns at once; watch
    /// [`Event::Registered`].
    pub async fn start(config: DeviceConfig) -> std::io::Result<Self> {
        let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
        let DeviceConfig {
            identity,
            rendezvous,
            bind,
            password,
            trusted_viewers,
            max_viewers,
            media,
            path_policy,
            socket_buffer_bytes,
            gop_cache,
            default_streams,
        } = config;
        let settings = DeviceSettings {
            certificate: identity.certificate,
            password,
            trusted_viewers,
            max_viewers,
            gop_cache,
            default_streams,
        };
        let task = Task::bind(
            bind,
            socket_buffer_bytes,
            |port| endpoint_config(identity.keypair, rendezvous, media, path_policy, port),
            |config, now| Endpoint::device(config, settings, now),
            Some(event_tx),
        )
        .await?;
        Ok(Self { task, events })
    }

    /// The local socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.task.local_addr
    }

    /// The socket buffer sizes the kernel granted.
    pub fn socket_buffers(&self) -> SocketBuffers {
        self.task.buffers
    }

    /// Sends a frame to every authorized viewer. It is fragmented once; the fragments
    /// are shared by all viewers. H.264 and H.265 frames also go through the GOP cache
    /// (`spec/endpoint.md` §4.1): a viewer gets a frame only once it has every frame
    /// that frame may refer to, and one that joins mid-GOP is first given the cached
    /// keyframe and the frames after it.
    pub async fn send_frame(&self, frame: Frame) -> Result<(), EndpointStopped> {
        self.task
            .command(Command::SendFrame(Recipients::All, frame))
            .await
    }

    /// Subscribes viewer `peer` to `streams` instead of the streams it had (a new viewer
    /// has [`DeviceConfig::default_streams`]): frames of other streams no longer go to
    /// it, and on each stream added it gets the cached keyframe and the frames after it
    /// at once (`spec/endpoint.md` §4.2).
    pub async fn subscribe(&self, peer: PeerId, streams: StreamSet) -> Result<(), EndpointStopped> {
        self.task.command(Command::Subscribe(peer, streams)).await
    }

    /// Sends a control message to one viewer, or to all.
    pub async fn send_control(
        &self,
        to: Option<PeerId>,
        message: Bytes,
    ) -> Result<(), EndpointStopped> {
        let to = to.map_or(Recipients::All, Recipients::Peer);
        self.task.command(Command::SendControl(to, message)).await
    }

    /// Trusts a viewer key (it may then connect without the password), or revokes it.
    pub async fn set_trusted(&self, key: PublicKey, trusted: bool) -> Result<(), EndpointStopped> {
        self.task.command(Command::SetTrusted(key, trusted)).await
    }

    /// Tells the endpoint the network changed (the platform knows before the driver's
    /// once-a-second check does): it registers again and re-gathers every path.
    pub async fn network_changed(&self) -> Result<(), EndpointStopped> {
        self.task.command(Command::NetworkChanged).await
    }

    /// The next event; `None` once the device has stopped.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Closes every viewer connection, deregisters and stops.
    pub async fn shutdown(mut self) {
        self.task.shutdown().await;
    }
}

/// A viewer endpoint: one socket and one rendezvous session from which any number of
/// cameras (up to [`crate::proto::MAX_WATCHES`]) are watched, as a 9-camera grid does.
/// Each [`ViewerEndpoint::watch`] returns a [`Viewer`] for one camera; one camera
/// reconnecting never disturbs the others. Dropping (or shutting down) the endpoint ends
/// every watch.
#[derive(Debug)]
pub struct ViewerEndpoint {
    task: Task,
    connect_timeout: Duration,
    want_relay: bool,
}

impl ViewerEndpoint {
    /// Binds the socket and opens the rendezvous session.
    pub async fn bind(config: ViewerConfig) -> std::io::Result<Self> {
        let ViewerConfig {
            keypair,
            rendezvous,
            issuers,
            bind,
            connect_timeout,
            want_relay,
            media,
            path_policy,
            socket_buffer_bytes,
        } = config;
        let task = Task::bind(
            bind,
            socket_buffer_bytes,
            |port| endpoint_config(keypair, rendezvous, media, path_policy, port),
            |config, now| Endpoint::viewer(config, issuers, now),
            None,
        )
        .await?;
        Ok(Self {
            task,
            connect_timeout,
            want_relay,
        })
    }

    /// The local socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.task.local_addr
    }

    /// The socket buffer sizes the kernel granted.
    pub fn socket_buffers(&self) -> SocketBuffers {
        self.task.buffers
    }

    /// Watches one camera: resolves once frames can flow, or with why not.
    pub async fn watch(
        &self,
        target: Target,
        credentials: Credentials,
    ) -> Result<Viewer, ConnectError> {
        let mut request = WatchRequest::new(target, credentials);
        request.connect_timeout = self.connect_timeout;
        request.want_relay = self.want_relay;
        watch(&self.task.commands, self.task.local_addr, request, None).await
    }

    /// Tells the endpoint the network changed: every watch reconnects through the
    /// rendezvous and every path is looked for again.
    pub async fn network_changed(&self) -> Result<(), EndpointStopped> {
        self.task.command(Command::NetworkChanged).await
    }

    /// Closes every watch and stops the endpoint.
    pub async fn shutdown(mut self) {
        self.task.shutdown().await;
    }
}

async fn watch(
    commands: &mpsc::Sender<Command>,
    local_addr: SocketAddr,
    request: WatchRequest,
    owned: Option<Task>,
) -> Result<Viewer, ConnectError> {
    let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
    let (ready_tx, ready_rx) = oneshot::channel();
    let command = Command::Watch {
        request,
        events: event_tx,
        ready: ready_tx,
    };
    if commands.send(command).await.is_err() {
        return Err(ConnectError::Stopped);
    }
    match ready_rx.await {
        Ok(Ok((watch, peer))) => Ok(Viewer {
            commands: commands.clone(),
            events,
            watch,
            peer,
            local_addr,
            owned,
        }),
        Ok(Err(error)) => {
            if let Some(mut owned) = owned {
                owned.shutdown().await;
            }
            Err(error)
        }
        Err(_) => Err(ConnectError::Stopped),
    }
}

/// A viewer's view of one camera: frames, path changes and figures arrive as
/// [`Event`]s; after a path loss or a network change the endpoint reconnects underneath
/// and events continue with the new connection's [`PeerId`].
#[derive(Debug)]
pub struct Viewer {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    watch: WatchId,
    peer: PeerId,
    local_addr: SocketAddr,
    /// The endpoint, when this viewer has one of its own ([`Viewer::connect`]).
    owned: Option<Task>,
}

impl Viewer {
    /// Binds a socket of its own, looks the device up at the rendezvous, punches (or
    /// relays) a path to it, runs the Noise handshake against the certified (and pinned)
    /// device key, and proves it may watch. Resolves once frames can flow, or with why
    /// not. To watch several cameras from one socket, use [`ViewerEndpoint`].
    pub async fn connect(
        config: ViewerConfig,
        target: Target,
        credentials: Credentials,
    ) -> Result<Self, ConnectError> {
        let mut request = WatchRequest::new(target, credentials);
        request.connect_timeout = config.connect_timeout;
        request.want_relay = config.want_relay;
        let endpoint = ViewerEndpoint::bind(config)
            .await
            .map_err(|error| ConnectError::Socket(error.into()))?;
        let task = endpoint.task;
        let (commands, local_addr) = (task.commands.clone(), task.local_addr);
        watch(&commands, local_addr, request, Some(task)).await
    }

    /// The connection's id when the watch connected. After a reconnect (the viewer
    /// moved, or its path was lost) events carry the new connection's id.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The local socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next event (frames, path changes, figures); `None` once the watch ended.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Sends a control message to the device (PTZ, settings...).
    pub async fn send_control(&self, message: Bytes) -> Result<(), EndpointStopped> {
        let to = Recipients::Watch(self.watch);
        self.commands
            .send(Command::SendControl(to, message))
            .await
            .map_err(|_| EndpointStopped)
    }

    /// Sends a frame to the device (talk-back audio).
    pub async fn send_frame(&self, frame: Frame) -> Result<(), EndpointStopped> {
        let to = Recipients::Watch(self.watch);
        self.commands
            .send(Command::SendFrame(to, frame))
            .await
            .map_err(|_| EndpointStopped)
    }

    /// Tells the endpoint the network changed (see [`ViewerEndpoint::network_changed`]).
    pub async fn network_changed(&self) -> Result<(), EndpointStopped> {
        self.commands
            .send(Command::NetworkChanged)
            .await
            .map_err(|_| EndpointStopped)
    }

    /// Stops watching; a viewer from [`Viewer::connect`] also stops its endpoint.
    pub async fn close(mut self) {
        let _ = self.commands.send(Command::CloseWatch(self.watch)).await;
        if let Some(mut owned) = self.owned.take() {
            owned.shutdown().await;
        }
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let _ = self.commands.try_send(Command::CloseWatch(self.watch));
    }
}
