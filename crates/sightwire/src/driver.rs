//! The tokio driver: one UDP socket, one timer, and the sans-IO [`Endpoint`] core.
//!
//! Everything the protocol does happens in [`crate::proto`]; this file only moves
//! bytes and time between the core and the operating system:
//!
//! - datagrams from the socket go to [`Endpoint::handle_datagram`];
//! - the one timer sleeps until [`Endpoint::poll_timeout`];
//! - application commands arrive on a bounded channel;
//! - once a second the driver asks the OS which local address it would use towards the
//!   rendezvous and passes it in ([`Endpoint::set_local_ip`]): that is how a renumbered
//!   host notices, with no syscall inside the core;
//! - transmits go out with the TTL the core asks for; failures go back to the core
//!   ([`Endpoint::handle_send_error`]), which reports them as [`Event::SendErrors`];
//! - events go to the application: a device's to its one channel, a viewer endpoint's
//!   to the channel of the watch they concern;
//! - a rendezvous host name the core asks for ([`Endpoint::poll_resolve`]) is looked up
//!   in a task of its own (`getaddrinfo` blocks), bounded by [`RESOLVE_TIMEOUT`], and
//!   the addresses of the socket's IP family go back to the core
//!   ([`Endpoint::handle_resolved`]); the packet loop never waits for DNS;
//! - a transmit the core marks for a stream ([`crate::proto::Transmit::stream_port`], when
//!   UDP is blocked) goes down a TCP/TLS stream to that server, opened on first use
//!   (`sightwire_stream::tls::StreamClient`); datagrams from it go to the core as coming
//!   from the transmit's destination, and its end to [`Endpoint::handle_stream_closed`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use sightwire_media::{Frame, StreamSet};
use sightwire_session::PublicKey;
use sightwire_signal::server_addr::HostPort;
use sightwire_stream::tls::{ClientEvent, StreamClient};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ConnectError, ResolveError};
use crate::events::{Event, PeerId};
use crate::proto::{Endpoint, MAX_DATAGRAM_LEN, Recipients, WatchId, WatchRequest};

/// How often the driver asks the OS for the local address (roaming detection).
const LOCAL_ADDRESS_POLL: Duration = Duration::from_secs(1);
/// A host name lookup that takes longer is reported as [`ResolveError::Timeout`] (the
/// system resolver's own default is 5 s per server, with retries).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most TCP/TLS streams open at once (the rendezvous and the relays in use); transmits
/// for another server are dropped until one closes.
const MAX_STREAMS: usize = 8;
/// A stream that closed is not opened again to the same server sooner than this.
const STREAM_REOPEN_WAIT: Duration = Duration::from_secs(1);
/// Most datagrams one pass of the loop takes once the first is there.
const INPUT_BATCH: usize = 64;

/// A lookup under way.
type Resolving = tokio::task::JoinHandle<Result<Vec<SocketAddr>, ResolveError>>;

/// The answer to a watch: its id and first connection, or why it failed.
pub(crate) type WatchReady = oneshot::Sender<Result<(WatchId, PeerId), ConnectError>>;

/// What the application asks of the driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a frame.
    SendFrame(Recipients, Frame),
    /// Send a control message.
    SendControl(Recipients, Bytes),
    /// Trust (or stop trusting) a viewer key (device only).
    SetTrusted(PublicKey, bool),
    /// Subscribe a viewer to these streams (device only).
    Subscribe(PeerId, StreamSet),
    /// Start watching a camera; its events go to `events`.
    Watch {
        request: WatchRequest,
        events: mpsc::Sender<Event>,
        ready: WatchReady,
    },
    /// Stop watching a camera.
    CloseWatch(WatchId),
    /// The application knows the network changed.
    NetworkChanged,
    /// Close the endpoint.
    Shutdown,
}

/// Where a watch's events go.
struct WatchSink {
    events: mpsc::Sender<Event>,
    /// Resolved by the first `PeerConnected` (which is also delivered) or by
    /// `ConnectFailed`.
    ready: Option<WatchReady>,
}

pub(crate) struct Driver {
    socket: UdpSocket,
    endpoint: Endpoint,
    commands: mpsc::Receiver<Command>,
    /// A device's events (a viewer endpoint routes per watch instead).
    device_events: Option<mpsc::Sender<Event>>,
    watches: HashMap<WatchId, WatchSink>,
    events_dropped: u64,
    /// The socket's own address: its IP family decides which resolved addresses are usable.
    local: SocketAddr,
    resolving: Option<Resolving>,
    /// TCP/TLS streams, by the destination the core sends to.
    streams: HashMap<SocketAddr, StreamClient>,
    /// When each recently closed stream closed.
    streams_closed: HashMap<SocketAddr, Instant>,
    stream_events: mpsc::Receiver<ClientEvent>,
    stream_events_tx: mpsc::Sender<ClientEvent>,
    /// The rendezvous's host name, if it was configured by one (TLS server name).
    rendezvous_host: Option<String>,
}

impl Driver {
    pub(crate) fn new(
        socket: UdpSocket,
        endpoint: Endpoint,
        commands: mpsc::Receiver<Command>,
        device_events: Option<mpsc::Sender<Event>>,
        local: SocketAddr,
    ) -> Self {
        let (stream_events_tx, stream_events) = mpsc::channel(256);
        let rendezvous_host = endpoint.rendezvous_host().map(str::to_owned);
        Self {
            socket,
            endpoint,
            commands,
            device_events,
            watches: HashMap::new(),
            events_dropped: 0,
            local,
            resolving: None,
            streams: HashMap::new(),
            streams_closed: HashMap::new(),
            stream_events,
            stream_events_tx,
            rendezvous_host,
        }
    }

    /// Runs until shut down (the command channels all close, or one says so).
    pub(crate) async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM_LEN];
        let mut address_poll = tokio::time::interval(LOCAL_ADDRESS_POLL);
        address_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.endpoint.is_shut_down() {
            self.start_resolving();
            let wake = self.endpoint.poll_timeout();
            tokio::select! {
                received = self.socket.recv_from(&mut buf) => {
                    self.handle_received(received, &mut buf);
                    // At high rates datagrams wait in the socket: take those already
                    // there in this round instead of one per pass of the loop (its
                    // timer and select cost more than the datagram); bounded, so
                    // timers and commands keep their turn.
                    for _ in 1..INPUT_BATCH {
                        match self.socket.try_recv_from(&mut buf) {
                            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                            received => self.handle_received(received, &mut buf),
                        }
                    }
                }
                command = self.commands.recv() => {
                    let now = self.now();
                    match command {
                        Some(command) => self.handle_command(now, command),
                        None => self.endpoint.shutdown(now),
                    }
                }
                _ = address_poll.tick() => {
                    let now = self.now();
                    if let Some(rendezvous) = self.endpoint.rendezvous_address() {
                        let ip = local_ip_towards(rendezvous);
                        self.endpoint.set_local_ip(now, ip);
                    }
                }
                Some(event) = self.stream_events.recv() => {
                    let now = self.now();
                    match event {
                        ClientEvent::Datagram(from, datagram) => {
                            let len = datagram.len().min(buf.len());
                            buf[..len].copy_from_slice(&datagram[..len]);
                            self.endpoint.handle_datagram(now, from, &mut buf[..len]);
                        }
                        ClientEvent::Closed(key) => {
                            // A newer stream to the same server may be open already.
                            if self.streams.get(&key).is_some_and(StreamClient::is_closed) {
                                self.streams.remove(&key);
                                self.streams_closed.insert(key, Instant::now());
                                self.endpoint.handle_stream_closed(now, key);
                            }
                        }
                    }
                }
                resolved = resolved(&mut self.resolving) => {
                    self.resolving = None;
                    let now = self.now();
                    self.endpoint.handle_resolved(now, resolved);
                }
                () = sleep_until(wake) => {
                    let now = self.now();
                    self.endpoint.handle_timeout(now);
                }
            }
            self.transmit().await;
            self.deliver_events();
        }
        // The goodbyes the shutdown queued.
        self.transmit().await;
        self.deliver_events();
        if let Some(resolving) = self.resolving.take() {
            resolving.abort();
        }
    }

    /// Hands a received datagram (in `buf`) to the core.
    fn handle_received(&mut self, received: std::io::Result<(usize, SocketAddr)>, buf: &mut [u8]) {
        match received {
            Ok((len, from)) => {
                let now = self.now();
                if let Some(datagram) = buf.get_mut(..len) {
                    self.endpoint.handle_datagram(now, from, datagram);
                }
            }
            // ICMP errors surface here on some systems; nothing to do.
            Err(error) => tracing::trace!(%error, "recv failed"),
        }
    }

    /// Starts the lookup the core asked for, unless one is under way.
    fn start_resolving(&mut self) {
        if self.resolving.is_some() {
            return;
        }
        if let Some(name) = self.endpoint.poll_resolve() {
            self.resolving = Some(tokio::spawn(resolve(name, self.local)));
        }
    }

    /// The monotonic clock for the core, with the wall clock set alongside it.
    fn now(&mut self) -> Instant {
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        self.endpoint.set_unix_time(unix);
        Instant::now()
    }

    fn handle_command(&mut self, now: Instant, command: Command) {
        let result = match command {
            Command::SendFrame(to, frame) => self.endpoint.send_frame(now, to, frame).map(drop),
            Command::SendControl(to, message) => {
                self.endpoint.send_control(now, to, message).map(drop)
            }
            Command::SetTrusted(key, trusted) => self.endpoint.set_trusted(key, trusted),
            Command::Subscribe(peer, streams) => self.endpoint.set_subscription(now, peer, streams),
            Command::Watch {
                request,
                events,
                ready,
            } => {
                match self.endpoint.connect(now, request) {
                    Ok(watch) => {
                        self.watches.insert(
                            watch,
                            WatchSink {
                                events,
                                ready: Some(ready),
                            },
                        );
                    }
                    Err(error) => {
                        let _ = ready.send(Err(ConnectError::from(error)));
                    }
                }
                Ok(())
            }
            Command::CloseWatch(watch) => {
                self.watches.remove(&watch);
                self.endpoint.close_watch(now, watch)
            }
            Command::NetworkChanged => {
                self.endpoint.network_changed(now);
                Ok(())
            }
            Command::Shutdown => {
                self.endpoint.shutdown(now);
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "command refused");
        }
    }

    async fn transmit(&mut self) {
        // A stream to the rendezvous names it in TLS (SNI) when it was configured by name.
        let rendezvous = self.endpoint.rendezvous_address();
        while let Some(transmit) = self.endpoint.poll_transmit() {
            let destination = transmit.destination;
            if let Some(port) = transmit.stream_port {
                let name = self
                    .rendezvous_host
                    .as_ref()
                    .filter(|_| Some(destination) == rendezvous);
                send_on_stream(
                    &mut self.streams,
                    &mut self.streams_closed,
                    &self.stream_events_tx,
                    (destination, port, name),
                    transmit.contents,
                );
                continue;
            }
            let sent = send_to(&self.socket, transmit.contents, destination, transmit.ttl).await;
            if let Err(error) = sent {
                self.endpoint
                    .handle_send_error(Instant::now(), destination, error.kind());
            }
        }
    }

    fn deliver_events(&mut self) {
        while let Some(routed) = self.endpoint.poll_event() {
            let delivered = match (routed.watch, &self.device_events) {
                (_, Some(device)) => device.try_send(routed.event).is_ok(),
                (Some(watch), None) => self.deliver_to_watch(watch, routed.event),
                // Endpoint-wide news (rendezvous lost, send errors): every watch hears it.
                (None, None) => {
                    let mut all = true;
                    for sink in self.watches.values() {
                        all &= sink.events.try_send(routed.event.clone()).is_ok();
                    }
                    all
                }
            };
            if !delivered {
                // The application is not keeping up (or went away); never block the network.
                self.events_dropped += 1;
                if self.events_dropped.is_power_of_two() {
                    tracing::warn!(dropped = self.events_dropped, "events dropped");
                }
            }
        }
        // Watches that ended for good (connect failed, closed by the camera): close their
        // channels so `next_event` returns `None`. Every watch the endpoint has has a sink
        // here, so a count is enough to know whether to look (not a scan per datagram).
        if self.watches.len() > self.endpoint.watch_count() {
            let endpoint = &self.endpoint;
            self.watches.retain(|watch, _| endpoint.has_watch(*watch));
        }
    }

    fn deliver_to_watch(&mut self, watch: WatchId, event: Event) -> bool {
        let Some(sink) = self.watches.get_mut(&watch) else {
            return true;
        };
        match event {
            Event::PeerConnected { peer, .. } => {
                if let Some(ready) = sink.ready.take() {
                    let _ = ready.send(Ok((watch, peer)));
                }
                // The application sees it too: it says which path the stream starts on.
                sink.events.try_send(event).is_ok()
            }
            Event::ConnectFailed { error } if sink.ready.is_some() => {
                if let Some(ready) = sink.ready.take() {
                    let _ = ready.send(Err(error));
                }
                true
            }
            event => sink.events.try_send(event).is_ok(),
        }
    }
}

impl From<crate::proto::CommandError> for ConnectError {
    fn from(error: crate::proto::CommandError) -> Self {
        match error {
            crate::proto::CommandError::TooManyWatches { .. } => ConnectError::TooManyWatches,
            _ => ConnectError::Stopped,
        }
    }
}

/// Queues a datagram on the stream to `destination`'s IP at `port`, opening it if there is
/// none (within [`MAX_STREAMS`], and not again within [`STREAM_REOPEN_WAIT`] of its end).
/// A datagram that cannot be queued is lost, as over UDP; the core retransmits.
fn send_on_stream(
    streams: &mut HashMap<SocketAddr, StreamClient>,
    closed: &mut HashMap<SocketAddr, Instant>,
    events: &mpsc::Sender<ClientEvent>,
    (destination, port, server_name): (SocketAddr, u16, Option<&String>),
    contents: &[u8],
) {
    if let Some(stream) = streams.get(&destination) {
        stream.send(contents);
        return;
    }
    closed.retain(|_, at| at.elapsed() < STREAM_REOPEN_WAIT);
    if closed.contains_key(&destination) || streams.len() >= MAX_STREAMS {
        return;
    }
    let target = SocketAddr::new(destination.ip(), port);
    tracing::info!(%target, "opening a TCP/TLS stream");
    let stream = StreamClient::spawn(destination, target, server_name.cloned(), events.clone());
    stream.send(contents);
    streams.insert(destination, stream);
}

/// Sends one datagram, with `ttl` if given (IPv4 only). A full socket buffer is waited
/// out rather than turned into loss.
async fn send_to(
    socket: &UdpSocket,
    contents: &[u8],
    destination: SocketAddr,
    ttl: Option<u8>,
) -> std::io::Result<()> {
    // NAT-opening packets: a low TTL opens our NAT without reaching the peer's.
    let restore = match ttl {
        Some(ttl) if destination.is_ipv4() => {
            let previous = socket.ttl()?;
            socket.set_ttl(u32::from(ttl))?;
            Some(previous)
        }
        _ => None,
    };
    let sent = loop {
        match socket.try_send_to(contents, destination) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(e) = socket.writable().await {
                    break Err(e);
                }
            }
            other => break other.map(drop),
        }
    };
    if let Some(previous) = restore {
        socket.set_ttl(previous)?;
    }
    sent
}

/// The lookup's answer, or never if there is none under way.
async fn resolved(resolving: &mut Option<Resolving>) -> Result<Vec<SocketAddr>, ResolveError> {
    match resolving {
        // A lookup task that panicked or was cancelled counts as a failed lookup.
        Some(task) => task.await.unwrap_or(Err(ResolveError::NotFound)),
        None => std::future::pending().await,
    }
}

/// Resolves `name` with the system resolver, keeping the addresses a socket bound to
/// `local` can send to.
async fn resolve(name: HostPort, local: SocketAddr) -> Result<Vec<SocketAddr>, ResolveError> {
    let lookup = tokio::net::lookup_host((name.host(), name.port()));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Err(_) => Err(ResolveError::Timeout),
        Ok(Err(error)) => {
            // The resolver's message (NXDOMAIN, no server...) is for the log only.
            tracing::warn!(%name, %error, "host name lookup failed");
            Err(ResolveError::NotFound)
        }
        Ok(Ok(addresses)) => usable_addresses(local, addresses),
    }
}

/// The addresses a socket bound to `local` can reach, in the resolver's order: an IPv4
/// socket only IPv4 ones; an IPv6 socket (dual-stack on Linux by default) IPv6 ones and
/// IPv4 ones as IPv4-mapped addresses, the form its datagrams will come from.
pub(crate) fn usable_addresses(
    local: SocketAddr,
    resolved: impl IntoIterator<Item = SocketAddr>,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let mut any = false;
    let mut usable = Vec::new();
    for address in resolved {
        any = true;
        let address = match (local, address) {
            (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
                address
            }
            (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            (SocketAddr::V4(_), SocketAddr::V6(_)) => continue,
        };
        usable.push(address);
    }
    match (usable.is_empty(), any) {
        (false, _) => Ok(usable),
        (true, true) => Err(ResolveError::NoUsableAddress),
        (true, false) => Err(ResolveError::NoAddress),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The local address the OS would use to reach `remote` (no packet is sent).
fn local_ip_towards(remote: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if remote.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let probe = std::net::UdpSocket::bind(bind).ok()?;
    probe.connect(remote).ok()?;
    probe.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_of_the_sockets_family_are_kept() {
        let v4: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let v6: SocketAddr = "[::]:0".parse().unwrap();
        let a: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        assert_eq!(usable_addresses(v4, [b, a]), Ok(vec![a]));
        assert_eq!(
            usable_addresses(v6, [b, a]),
            Ok(vec![b, "[::ffff:192.0.2.1]:3478".parse().unwrap()])
        );
        assert_eq!(
            usable_addresses(v4, [b]),
            Err(ResolveError::NoUsableAddress)
        );
        assert_eq!(usable_addresses(v4, []), Err(ResolveError::NoAddress));
    }

    #[tokio::test]
    async fn a_name_that_does_not_exist_fails_fast() {
        // `.invalid` never resolves (RFC 6761); no DNS server is needed to say so.
        let name = "no-such-host.invalid:3478"
            .parse::<sightwire_signal::server_addr::ServerAddr>()
            .unwrap();
        let started = Instant::now();
        let result = resolve(name.name().unwrap().clone(), "0.0.0.0:0".parse().unwrap()).await;
        assert!(
            matches!(result, Err(ResolveError::NotFound | ResolveError::Timeout)),
            "{result:?}"
        );
        assert!(started.elapsed() <= RESOLVE_TIMEOUT + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn localhost_resolves() {
        let name = "localhost:3478"
            .parse::<sightwire_signal::server_addr::ServerAddr>()
            .unwrap();
        let addresses = resolve(name.name().unwrap().clone(), "0.0.0.0:0".parse().unwrap())
            .await
            .unwrap();
        assert!(
            addresses
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 3478)
        );
    }
}
