//! The tokio and rustls glue (feature `tls`): a server-side [`StreamListener`] that
//! presents every TLS connection to the server's datagram loop as a *virtual peer
//! address* ([`stream_peer_addr`]), and a client, [`StreamClient`], for endpoints.
//!
//! TLS is TLS 1.3 only. Servers present a self-signed certificate ([`TlsIdentity::self_signed`])
//! or a configured one ([`TlsIdentity::from_pem`]); clients accept any certificate: the
//! endpoint authenticates the rendezvous by its pinned Noise key and the peer by Noise
//! `IK`, and relayed packets are Noise transport packets, exactly as over UDP
//! (`spec/stream.md` §4). TLS only makes the connection look like HTTPS to middleboxes.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{DecodeError, Decoder, PREAMBLE, encode_frame, stream_peer_addr};

/// Why a TLS identity could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The self-signed certificate could not be made.
    #[error("cannot make a certificate: {0}")]
    Certificate(String),
    /// The PEM input holds no certificate or no private key, or cannot be parsed.
    #[error("bad PEM: {0}")]
    Pem(String),
    /// rustls refused the configuration (for example a key that does not fit the
    /// certificate).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A server's certificate chain and private key.
#[derive(Debug)]
pub struct TlsIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    /// A fresh self-signed certificate for `names` (what a server uses when none is
    /// configured: clients do not verify it).
    pub fn self_signed(names: Vec<String>) -> Result<Self, TlsError> {
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(Self {
            certs: vec![certified.cert.der().clone()],
            key,
        })
    }

    /// A configured certificate chain and key, in PEM.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        if certs.is_empty() {
            return Err(TlsError::Pem("no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem(e.to_string()))?;
        Ok(Self { certs, key })
    }

    fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Limits of a [`StreamListener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// Most connections at once (handshaking ones included); beyond, a new connection is
    /// closed as soon as it is accepted. Default 1024.
    pub max_connections: usize,
    /// Most datagrams queued for sending on one connection; beyond, datagrams are
    /// dropped as a full UDP socket buffer would drop them. Default 256.
    pub max_queued: usize,
    /// A connection over which no whole datagram arrives for this long is closed.
    /// Default 60 s (endpoints send a rendezvous keepalive every 20 s).
    pub idle_timeout: Duration,
    /// The TCP + TLS handshake must complete within this. Default 5 s.
    pub handshake_timeout: Duration,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_queued: 256,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of a [`StreamListener`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Connections whose TLS handshake completed.
    pub accepted: u64,
    /// Connections closed at once because `max_connections` were open.
    pub refused_full: u64,
    /// TLS handshakes that failed or timed out.
    pub handshakes_failed: u64,
    /// Connections closed for idleness.
    pub closed_idle: u64,
    /// Connections closed for a malformed stream ([`DecodeError`]).
    pub closed_malformed: u64,
    /// Datagrams dropped because the connection's queue was full.
    pub dropped_queue_full: u64,
}

#[derive(Debug, Default)]
struct Shared {
    conns: Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>,
    active: AtomicUsize,
    next_id: AtomicU64,
    accepted: AtomicU64,
    refused_full: AtomicU64,
    handshakes_failed: AtomicU64,
    closed_idle: AtomicU64,
    closed_malformed: AtomicU64,
    dropped_queue_full: AtomicU64,
}

/// Datagrams received on stream connections, with the virtual address of each.
const INBOUND_QUEUE: usize = 1024;

/// Accepts TLS connections and turns them into datagrams from virtual peer addresses.
#[derive(Debug)]
pub struct StreamListener {
    local: SocketAddr,
    inbound: mpsc::Receiver<(SocketAddr, Bytes)>,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for StreamListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl StreamListener {
    /// Listens on `addr` (TCP) with `identity`.
    pub async fn bind(
        addr: SocketAddr,
        identity: &TlsIdentity,
        config: ListenerConfig,
    ) -> io::Result<Self> {
        let tls = identity.server_config().map_err(io::Error::other)?;
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let accept = tokio::spawn(accept_loop(
            listener,
            tokio_rustls::TlsAcceptor::from(tls),
            config,
            Arc::clone(&shared),
            tx,
        ));
        Ok(Self {
            local,
            inbound,
            shared,
            accept,
        })
    }

    /// The TCP address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The next datagram, with the virtual address of the connection it came on.
    pub async fn recv(&mut self) -> Option<(SocketAddr, Bytes)> {
        self.inbound.recv().await
    }

    /// Queues `datagram` on the connection with virtual address `to`. Returns `false`
    /// (and drops it) when there is no such connection or its queue is full.
    pub fn send(&self, to: SocketAddr, datagram: &[u8]) -> bool {
        let conns = self.shared.conns.lock().unwrap_or_else(|e| e.into_inner());
        let Some(sender) = conns.get(&to) else {
            return false;
        };
        match sender.try_send(Bytes::copy_from_slice(datagram)) {
            Ok(()) => true,
            Err(_) => {
                self.shared
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Connections open now (handshaking ones included).
    pub fn connections(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// The counters.
    pub fn stats(&self) -> ListenerStats {
        let s = &self.shared;
        ListenerStats {
            accepted: s.accepted.load(Ordering::Relaxed),
            refused_full: s.refused_full.load(Ordering::Relaxed),
            handshakes_failed: s.handshakes_failed.load(Ordering::Relaxed),
            closed_idle: s.closed_idle.load(Ordering::Relaxed),
            closed_malformed: s.closed_malformed.load(Ordering::Relaxed),
            dropped_queue_full: s.dropped_queue_full.load(Ordering::Relaxed),
        }
    }
}

/// The next datagram from `listener`'s connections; without a listener (a server whose
/// stream port is off), never: for a `select!` arm beside the server's UDP socket.
pub async fn recv_optional(listener: &mut Option<StreamListener>) -> Option<(SocketAddr, Bytes)> {
    match listener {
        Some(listener) => listener.recv().await,
        None => std::future::pending().await,
    }
}

/// A server's send to `to`: when `to` is a stream connection's virtual address
/// ([`crate::is_stream_peer`]), queues `datagram` on that connection (or drops it, as a
/// full UDP socket would, when the queue is full or there is no such connection or no
/// listener) and returns `true`; otherwise returns `false` and the caller sends over UDP.
pub fn send_if_stream(listener: Option<&StreamListener>, to: SocketAddr, datagram: &[u8]) -> bool {
    if !crate::is_stream_peer(to) {
        return false;
    }
    if let Some(listener) = listener {
        listener.send(to, datagram);
    }
    true
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    config: ListenerConfig,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<(SocketAddr, Bytes)>,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if shared.active.load(Ordering::Relaxed) >= config.max_connections {
            shared.refused_full.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, "stream connection refused: too many");
            drop(tcp);
            continue;
        }
        shared.active.fetch_add(1, Ordering::Relaxed);
        let (acceptor, shared, inbound) = (acceptor.clone(), Arc::clone(&shared), inbound.clone());
        tokio::spawn(async move {
            serve_connection(tcp, remote, acceptor, config, &shared, inbound).await;
            shared.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    config: ListenerConfig,
    shared: &Shared,
    inbound: mpsc::Sender<(SocketAddr, Bytes)>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(config.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            shared.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    shared.accepted.fetch_add(1, Ordering::Relaxed);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let peer = stream_peer_addr(remote, id);
    let (tx, rx) = mpsc::channel(config.max_queued.max(1));
    shared
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(peer, tx);
    tracing::debug!(%remote, %peer, "stream connection open");
    let end = run_connection(
        tls,
        peer,
        Decoder::server(),
        false,
        inbound,
        rx,
        Some(config.idle_timeout),
    )
    .await;
    shared
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&peer);
    match end {
        End::Idle => {
            shared.closed_idle.fetch_add(1, Ordering::Relaxed);
        }
        End::Malformed(error) => {
            shared.closed_malformed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote, %error, "stream closed: malformed");
        }
        End::Closed => {}
    }
    tracing::debug!(%remote, %peer, "stream connection closed");
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// Closed by either side, or an I/O error.
    Closed,
    /// No whole datagram for the idle timeout.
    Idle,
    /// The peer broke the framing.
    Malformed(DecodeError),
}

/// Moves datagrams between one framed stream and the channels, until either side ends.
async fn run_connection<S: AsyncRead + AsyncWrite>(
    stream: S,
    key: SocketAddr,
    mut decoder: Decoder,
    write_preamble: bool,
    inbound: mpsc::Sender<(SocketAddr, Bytes)>,
    mut outbound: mpsc::Receiver<Bytes>,
    idle: Option<Duration>,
) -> End {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        if write_preamble {
            buf.extend_from_slice(&PREAMBLE);
        }
        while let Some(datagram) = outbound.recv().await {
            let _ = encode_frame(&datagram, &mut buf);
            // Whatever else is queued goes in the same write.
            while buf.len() < 16 * 1024 {
                match outbound.try_recv() {
                    Ok(more) => {
                        let _ = encode_frame(&more, &mut buf);
                    }
                    Err(_) => break,
                }
            }
            if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
                return End::Closed;
            }
            buf.clear();
        }
        let _ = writer.shutdown().await;
        End::Closed
    };
    let read = async {
        let mut chunk = vec![0u8; crate::MAX_BUFFERED];
        let mut deadline = idle.map(|idle| Instant::now() + idle);
        loop {
            let space = decoder.space().min(chunk.len());
            let Some(into) = chunk.get_mut(..space) else {
                return End::Closed;
            };
            let read = match deadline {
                Some(at) => match tokio::time::timeout_at(at, reader.read(into)).await {
                    Ok(read) => read,
                    Err(_) => return End::Idle,
                },
                None => reader.read(into).await,
            };
            let n = match read {
                Ok(0) | Err(_) => return End::Closed,
                Ok(n) => n,
            };
            decoder.push(chunk.get(..n).unwrap_or_default());
            loop {
                match decoder.next_datagram() {
                    Ok(Some(datagram)) => {
                        deadline = idle.map(|idle| Instant::now() + idle);
                        if inbound.send((key, datagram)).await.is_err() {
                            return End::Closed;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => return End::Malformed(error),
                }
            }
        }
    };
    tokio::select! {
        end = read => end,
        end = write => end,
    }
}

/// What a [`StreamClient`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::exhaustive_enums,
    reason = "the driver must handle every event: a new one is a breaking change on purpose"
)]
pub enum ClientEvent {
    /// A datagram arrived on the stream for `key`.
    Datagram(SocketAddr, Bytes),
    /// The stream for `key` could not be opened, or ended.
    Closed(SocketAddr),
}

/// Most datagrams a client queues before the connection is up or while it is busy.
pub const CLIENT_MAX_QUEUED: usize = 512;
/// The TCP + TLS handshake of a client must complete within this.
pub const CLIENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One client stream, run by a task of its own. Dropping it closes the stream.
#[derive(Debug)]
pub struct StreamClient {
    outbound: mpsc::Sender<Bytes>,
    task: JoinHandle<()>,
}

impl Drop for StreamClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StreamClient {
    /// Opens a TLS stream to `target` in the background. Datagrams from it are
    /// reported to `events` under `key` (the address the caller knows the server by,
    /// typically its UDP address), and so is its end. `server_name` goes into SNI (an
    /// IP address target sends none).
    pub fn spawn(
        key: SocketAddr,
        target: SocketAddr,
        server_name: Option<String>,
        events: mpsc::Sender<ClientEvent>,
    ) -> Self {
        let (outbound, rx) = mpsc::channel(CLIENT_MAX_QUEUED);
        let task = tokio::spawn(async move {
            let connected =
                tokio::time::timeout(CLIENT_CONNECT_TIMEOUT, connect(target, server_name)).await;
            match connected {
                Ok(Ok(tls)) => {
                    tracing::debug!(%target, "stream to the server open");
                    let (tx, mut rx_datagrams) = mpsc::channel(64);
                    let forward = async {
                        while let Some((key, datagram)) = rx_datagrams.recv().await {
                            if events
                                .send(ClientEvent::Datagram(key, datagram))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    };
                    let run = run_connection(tls, key, Decoder::client(), true, tx, rx, None);
                    tokio::select! {
                        end = run => tracing::debug!(%target, ?end, "stream to the server ended"),
                        () = forward => {}
                    }
                }
                Ok(Err(error)) => {
                    drop(rx);
                    tracing::debug!(%target, %error, "stream connect failed");
                }
                Err(_) => {
                    drop(rx);
                    tracing::debug!(%target, "stream connect timed out");
                }
            }
            // The queue's receiver is gone by now, so `is_closed` is true when the
            // event is seen.
            let _ = events.send(ClientEvent::Closed(key)).await;
        });
        Self { outbound, task }
    }

    /// Queues a datagram; `false` (dropped) when the queue is full or the stream ended.
    pub fn send(&self, datagram: &[u8]) -> bool {
        self.outbound
            .try_send(Bytes::copy_from_slice(datagram))
            .is_ok()
    }

    /// Whether the stream has ended (true by the time its [`ClientEvent::Closed`] is
    /// received).
    pub fn is_closed(&self) -> bool {
        self.outbound.is_closed()
    }
}

/// Opens a bare TLS connection the way [`StreamClient`] does (no preamble written): for
/// tests that play a misbehaving client.
#[doc(hidden)]
pub async fn connect(
    target: SocketAddr,
    server_name: Option<String>,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(target).await?;
    let _ = tcp.set_nodelay(true);
    let name = server_name
        .and_then(|name| ServerName::try_from(name).ok())
        .unwrap_or_else(|| ServerName::IpAddress(target.ip().into()));
    tokio_rustls::TlsConnector::from(client_config())
        .connect(name, tcp)
        .await
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map(|builder| {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        });
    match config {
        Ok(config) => Arc::new(config),
        // The ring provider supports TLS 1.3; this cannot fail.
        Err(error) => unreachable!("ring provider without TLS 1.3: {error}"),
    }
}

/// Accepts any server certificate, but still checks the handshake signature against it
/// (so the TLS handshake is well-formed). Security comes from Noise, not from TLS
/// (`spec/stream.md` §4).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
