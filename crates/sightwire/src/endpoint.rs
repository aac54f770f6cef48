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
use crate::nodes::RendezvousNodes;
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
            nodes,
            home_retry,
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
            |port| {
                let mut config =
                    endpoint_config(identity.keypair, rendezvous, media, path_policy, port);
                config.nodes = nodes;
                config.home_retry = home_retry;
                config
            },
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
    /// With several rendezvous nodes: the list, and one endpoint per node (`task` is
    /// the first node's), each with its own socket and rendezvous session.
    nodes: Option<(RendezvousNodes, Vec<Task>)>,
}

impl ViewerEndpoint {
    /// Binds the socket and opens the rendezvous session; with several rendezvous nodes
    /// ([`ViewerConfig::nodes`]), one socket and one session per node (the first node's
    /// socket on [`ViewerConfig::bind`], the others on its IP with any port).
    pub async fn bind(mut config: ViewerConfig) -> std::io::Result<Self> {
        let Some(nodes) = config.nodes.take() else {
            return Self::bind_one(config).await;
        };
        let mut tasks = Vec::with_capacity(nodes.len());
        for (index, (_, server)) in nodes.iter().enumerate() {
            let mut one = config.for_node(server.clone());
            if index > 0 {
                one.bind.set_port(0);
            }
            tasks.push(Self::bind_one(one).await?.task);
        }
        let mut tasks = tasks.into_iter();
        let first = tasks.next().expect("a node list is never empty");
        Ok(Self {
            task: first,
            connect_timeout: config.connect_timeout,
            want_relay: config.want_relay,
            nodes: Some((nodes, tasks.collect())),
        })
    }

    async fn bind_one(config: ViewerConfig) -> std::io::Result<Self> {
        let ViewerConfig {
            keypair,
            rendezvous,
            nodes: _,
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
            nodes: None,
        })
    }

    /// The endpoint of node `index` of the list.
    fn node_task(&self, index: usize) -> Option<&Task> {
        match (index, &self.nodes) {
            (0, _) => Some(&self.task),
            (_, Some((_, rest))) => rest.get(index - 1),
            (_, None) => None,
        }
    }

    /// Every endpoint: the first node's, then the others'.
    fn tasks(&self) -> impl Iterator<Item = &Task> {
        std::iter::once(&self.task).chain(self.nodes.iter().flat_map(|(_, rest)| rest.iter()))
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
        let request = |credentials| {
            let mut request = WatchRequest::new(target, credentials);
            request.connect_timeout = self.connect_timeout;
            request.want_relay = self.want_relay;
            request
        };
        let Some((nodes, _)) = &self.nodes else {
            return watch(
                &self.task.commands,
                self.task.local_addr,
                request(credentials),
                None,
            )
            .await;
        };
        // The ID's home first, then its successor (spec/multinode.md §3).
        let order = nodes.indexes_for(target.device_id());
        let mut first_error = None;
        for index in order {
            let Some(task) = self.node_task(index) else {
                continue;
            };
            let attempt = watch(
                &task.commands,
                task.local_addr,
                request(credentials.clone()),
                None,
            )
            .await;
            match attempt {
                Err(error) if try_next_node(&error) => {
                    first_error = Some(prefer_error(first_error, error));
                }
                result => return result,
            }
        }
        Err(first_error.unwrap_or(ConnectError::Unavailable))
    }

    /// Tells the endpoint the network changed: every watch reconnects through the
    /// rendezvous and every path is looked for again.
    pub async fn network_changed(&self) -> Result<(), EndpointStopped> {
        for task in self.tasks() {
            task.command(Command::NetworkChanged).await?;
        }
        Ok(())
    }

    /// Closes every watch and stops the endpoint.
    pub async fn shutdown(mut self) {
        self.task.shutdown().await;
        if let Some((_, rest)) = &mut self.nodes {
            for task in rest {
                task.shutdown().await;
            }
        }
    }
}

/// Whether a watch refused by one node is tried at the next: the home may be down
/// (unreachable, or silent since the request: a timeout), or not hold the device (its
/// home was down when it registered, so it is on the successor).
fn try_next_node(error: &ConnectError) -> bool {
    matches!(
        error,
        ConnectError::Unavailable
            | ConnectError::Timeout
            | ConnectError::RendezvousUnreachable
            | ConnectError::RendezvousUnresolved(_)
            | ConnectError::Rendezvous(_)
    )
}

/// Which of two nodes' refusals to report: a node that answered says more than one that
/// did not.
fn prefer_error(earlier: Option<ConnectError>, later: ConnectError) -> ConnectError {
    match (earlier, later) {
        (
            Some(earlier),
            ConnectError::RendezvousUnreachable | ConnectError::RendezvousUnresolved(_),
        ) => earlier,
        (_, later) => later,
    }
}

impl ViewerEndpoint {}

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
        mut config: ViewerConfig,
        target: Target,
        credentials: Credentials,
    ) -> Result<Self, ConnectError> {
        if let Some(nodes) = config.nodes.take() {
            return Self::connect_through_nodes(config, nodes, target, credentials).await;
        }
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

    /// [`Viewer::connect`] with several nodes: an endpoint of its own at the ID's home,
    /// and if the home cannot introduce it, another at the successor.
    async fn connect_through_nodes(
        config: ViewerConfig,
        nodes: RendezvousNodes,
        target: Target,
        credentials: Credentials,
    ) -> Result<Self, ConnectError> {
        let servers = nodes.servers_for(target.device_id());
        let mut first_error = None;
        for server in servers {
            match Box::pin(Self::connect(
                config.for_node(server),
                target,
                credentials.clone(),
            ))
            .await
            {
                Err(error) if try_next_node(&error) => {
                    first_error = Some(prefer_error(first_error, error));
                }
                result => return result,
            }
        }
        Err(first_error.unwrap_or(ConnectError::Unavailable))
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
