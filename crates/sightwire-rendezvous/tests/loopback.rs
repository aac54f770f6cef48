//! The real server on loopback UDP with real Noise sessions: many devices register, a
//! viewer resolves one, impersonation is refused, presence expires, devices come back
//! after a restart, and the lookup rate limit is hit.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{UNIX_START, issuer};
use rand::SeedableRng;
use sightwire_rendezvous::server::Server;
use sightwire_rendezvous::{CoreConfig, Rate, Registry, RegistryPool, Rendezvous, SqliteRegistry};
use sightwire_session::{Event, Input, SessionId, SessionKind, SessionTable, StaticKeypair};
use sightwire_signal::cert::{CertificateFields, IdCertificate, TrustedIssuers};
use sightwire_signal::{
    Body, CandidateSet, Close, CloseReason, ConnectOffer, ConnectRequest, ConnectResponse, Consent,
    Envelope, ErrorCode, Limit, MAX_MESSAGE_LEN, Register,
};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const KEEPALIVE: Duration = Duration::from_millis(1_000);
const ACK_TIMEOUT: Duration = Duration::from_millis(300);

fn server_key() -> StaticKeypair {
    StaticKeypair::from_private([0x5E; 32])
}

fn rng(seed: u64) -> Box<rand::rngs::StdRng> {
    Box::new(rand::rngs::StdRng::seed_from_u64(seed))
}

struct Running {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Rendezvous<SessionId>>,
}

async fn start_server(registry: &Path, address: SocketAddr, config: CoreConfig) -> Running {
    let socket = UdpSocket::bind(address).await.unwrap();
    let address = socket.local_addr().unwrap();
    let core = Rendezvous::new(
        config,
        TrustedIssuers::single(issuer().public()),
        rng(1),
        Instant::now(),
        sightwire_rendezvous::server::unix_now(),
    );
    let server = Server::new(
        socket,
        server_key(),
        sightwire_session::Config::default(),
        core,
        rng(2),
        RegistryPool::spawn(vec![SqliteRegistry::open(registry).unwrap()]).unwrap(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
    });
    Running {
        address,
        stop,
        task,
    }
}

fn config() -> CoreConfig {
    {
        let mut value = CoreConfig::default();
        value.keepalive_interval = KEEPALIVE;
        value.presence_ttl = KEEPALIVE * 3;
        value
    }
}

/// A client (device or viewer) speaking signaling inside a Noise session with the server.
struct Client {
    socket: UdpSocket,
    table: SessionTable,
    server: SocketAddr,
    session: Option<SessionId>,
    inbox: VecDeque<Envelope>,
    next_request: u64,
    buf: Vec<u8>,
}

impl Client {
    async fn new(key: StaticKeypair, server: SocketAddr, seed: u64) -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            table: SessionTable::new(key, sightwire_session::Config::default(), rng(seed)),
            server,
            session: None,
            inbox: VecDeque::new(),
            next_request: 1,
            buf: vec![0; 2048],
        }
    }

    async fn flush(&mut self) {
        let mut out = vec![0u8; 2048];
        while let Some(t) = self.table.poll_transmit(&mut out) {
            let _ = self.socket.send_to(&out[..t.len], t.destination).await;
        }
    }

    /// Receives until `deadline`; returns after the first signaling message or event.
    async fn pump(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut progressed = false;
        let wake = self
            .table
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .map_or(deadline, |t| t.min(deadline));
        if let Ok(Ok((len, from))) =
            tokio::time::timeout_at(wake, self.socket.recv_from(&mut self.buf)).await
        {
            if let Ok(Input::Data { plaintext, .. }) =
                self.table
                    .handle_input(Instant::now(), from, &mut self.buf[..len])
            {
                self.inbox.push_back(Envelope::decode(plaintext).unwrap());
                progressed = true;
            }
        } else {
            self.table.handle_timeout(Instant::now());
        }
        while let Some(event) = self.table.poll_event() {
            if let Event::Established { session, .. } = event {
                self.session = Some(session);
                progressed = true;
            }
        }
        self.flush().await;
        progressed
    }

    async fn handshake(&mut self) {
        if let Some(old) = self.session.take() {
            self.table.close(old);
        }
        self.table
            .connect(
                Instant::now(),
                self.server,
                SessionKind::Rendezvous,
                *server_key().public(),
            )
            .unwrap();
        self.flush().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.session.is_none() && tokio::time::Instant::now() < deadline {
            self.pump(deadline).await;
        }
        assert!(
            self.session.is_some(),
            "handshake with the rendezvous timed out"
        );
    }

    async fn send(&mut self, body: Body, pad_to: usize) -> u64 {
        let request_id = self.next_request;
        self.next_request += 1;
        let mut plaintext = Vec::new();
        Envelope::new(request_id, body)
            .encode_padded(pad_to, &mut plaintext)
            .unwrap();
        let mut out = vec![0u8; 2048];
        let session = self.session.expect("a session");
        if let Ok(t) = self
            .table
            .seal(session, Instant::now(), &plaintext, &mut out)
        {
            self.socket
                .send_to(&out[..t.len], t.destination)
                .await
                .unwrap();
        }
        request_id
    }

    /// The next signaling message, within `timeout`.
    async fn recv(&mut self, timeout: Duration) -> Option<Envelope> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(envelope) = self.inbox.pop_front() {
                return Some(envelope);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            self.pump(deadline).await;
        }
    }

    /// Sends a request and waits for the reply with its request id.
    async fn request(&mut self, body: Body, pad_to: usize, timeout: Duration) -> Option<Envelope> {
        let request_id = self.send(body, pad_to).await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let envelope = self.recv(left).await?;
            if envelope.request_id == request_id {
                return Some(envelope);
            }
            self.inbox.push_back(envelope);
            if self.inbox.len() > 16 {
                self.inbox.pop_front();
            }
            if left.is_zero() {
                return None;
            }
        }
    }
}

/// A device: its key, its certificate, and the client.
struct Device {
    client: Client,
    certificate: IdCertificate,
}

fn device_certificate(n: u32, key: &StaticKeypair) -> IdCertificate {
    issuer()
        .issue(CertificateFields {
            device_id: common::device_id(n),
            device_key: *key.public(),
            not_before: 0,
            not_after: u64::MAX,
            serial: 1,
        })
        .unwrap()
}

impl Device {
    async fn new(n: u32, server: SocketAddr) -> Self {
        let key = StaticKeypair::from_private(
            [n as u8 ^ 0x3C; 32].map(|b| b.wrapping_add((n >> 8) as u8)),
        );
        let certificate = device_certificate(n, &key);
        Self {
            client: Client::new(key, server, u64::from(n) + 100).await,
            certificate,
        }
    }

    async fn register(&mut self) -> Envelope {
        let body = Body::Register(Register {
            certificate: self.certificate,
            candidates: CandidateSet::new(vec![common::host("192.168.1.20:5000")]),
        });
        self.client
            .request(body, 0, Duration::from_secs(2))
            .await
            .expect("a reply to REGISTER")
    }

    async fn connect_and_register(&mut self) {
        self.client.handshake().await;
        let reply = self.register().await;
        assert!(matches!(reply.body, Body::RegisterAck(_)), "{reply:?}");
    }

    /// One keepalive round: true if acknowledged. On silence, NOT_REGISTERED or a
    /// shutdown notice, re-handshake and re-register (what a real device does).
    async fn keepalive_or_recover(&mut self) -> bool {
        if let Some(Envelope {
            body:
                Body::Close(Close {
                    connect_id: None,
                    reason: CloseReason::Shutdown,
                }),
            ..
        }) = self.client.inbox.front()
        {
            self.client.inbox.pop_front();
            self.connect_and_register().await;
            return false;
        }
        match self.client.request(Body::Keepalive, 16, ACK_TIMEOUT).await {
            Some(Envelope {
                body: Body::KeepaliveAck { .. },
                ..
            }) => true,
            _ => {
                self.connect_and_register().await;
                false
            }
        }
    }
}

async fn viewer(server: SocketAddr, seed: u8) -> Client {
    let mut client = Client::new(
        StaticKeypair::from_private([seed; 32]),
        server,
        u64::from(seed),
    )
    .await;
    client.handshake().await;
    client
}

fn connect_body(n: u32) -> Body {
    Body::ConnectRequest(ConnectRequest {
        device_id: common::device_id(n),
        candidates: CandidateSet::new(vec![common::host("10.9.9.9:6000")]),
        want_relay: false,
        login: bytes::Bytes::new(),
    })
}

/// The consent flow with a device that trusts the viewer's key: the viewer asks, the
/// device gets the introduction and accepts, the viewer gets the response and the device
/// the offer.
async fn connect_with_consent(
    viewer: &mut Client,
    device: &mut Device,
    n: u32,
) -> (ConnectResponse, ConnectOffer) {
    let request_id = viewer.send(connect_body(n), MAX_MESSAGE_LEN).await;
    let introduction = loop {
        let envelope = device
            .client
            .recv(Duration::from_secs(2))
            .await
            .expect("an introduction");
        if let Body::Introduction(introduction) = envelope.body {
            break introduction;
        }
    };
    let consent = Body::Consent(Consent {
        connect_id: introduction.connect_id,
        login: bytes::Bytes::new(),
        accept: true,
        confirmation_digest: None,
    });
    device.client.send(consent, 0).await;
    let response = loop {
        let envelope = viewer
            .recv(Duration::from_secs(2))
            .await
            .expect("a response");
        if let (true, Body::ConnectResponse(response)) =
            (envelope.request_id == request_id, envelope.body)
        {
            break response;
        }
    };
    let offer = loop {
        let envelope = device
            .client
            .recv(Duration::from_secs(2))
            .await
            .expect("an offer");
        if let Body::ConnectOffer(offer) = envelope.body {
            break offer;
        }
    };
    assert_eq!(offer.connect_id, introduction.connect_id);
    (response, offer)
}

#[tokio::test]
async fn many_devices_register_and_a_viewer_resolves_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        &dir.path().join("registry.sqlite"),
        "127.0.0.1:0".parse().unwrap(),
        config(),
    )
    .await;
    let mut devices = Vec::new();
    for n in 0..40 {
        let mut device = Device::new(n, server.address).await;
        device.connect_and_register().await;
        devices.push(device);
    }
    let mut viewer = viewer(server.address, 0xEE).await;
    let (response, offer) = connect_with_consent(&mut viewer, &mut devices[17], 17).await;
    assert_eq!(response.certificate, devices[17].certificate);
    // The certificate verifies for the viewer and pins the device's key.
    let fields = response
        .certificate
        .verify(&TrustedIssuers::single(issuer().public()), UNIX_START)
        .unwrap();
    assert_eq!(&fields.device_key, devices[17].certificate.device_key());
    // The device got the offer with the viewer's key and the same punch key.
    assert_eq!(offer.connect_id, response.connect_id);
    assert_eq!(offer.punch, response.punch);
    assert_eq!(
        offer.viewer_key,
        *StaticKeypair::from_private([0xEE; 32]).public()
    );
    let _ = server.stop.send(());
    let core = server.task.await.unwrap();
    assert_eq!(core.stats().registrations, 40);
    let registry = SqliteRegistry::open(&dir.path().join("registry.sqlite")).unwrap();
    assert_eq!(registry.list().unwrap().len(), 40);
}

#[tokio::test]
async fn impersonation_over_noise_is_refused_and_the_real_device_keeps_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        &dir.path().join("registry.sqlite"),
        "127.0.0.1:0".parse().unwrap(),
        config(),
    )
    .await;
    let mut real = Device::new(5, server.address).await;
    real.connect_and_register().await;
    // The attacker has the ID and a copy of the real certificate, but not the device's
    // private key: its Noise session is keyed by its own static key.
    let mut attacker = Device::new(999, server.address).await;
    attacker.certificate = real.certificate;
    attacker.client.handshake().await;
    let reply = attacker.register().await;
    assert!(
        matches!(reply.body, Body::Error(e) if e.code == ErrorCode::NotAuthorized),
        "{reply:?}"
    );
    // The real device still answers keepalives and receives the viewer's offer.
    assert!(real.keepalive_or_recover().await);
    let mut viewer = viewer(server.address, 0xEF).await;
    connect_with_consent(&mut viewer, &mut real, 5).await;
    let _ = server.stop.send(());
    let core = server.task.await.unwrap();
    assert_eq!(core.stats().impersonations_refused, 1);
}

#[tokio::test]
async fn presence_expires_when_keepalives_stop() {
    let dir = tempfile::tempdir().unwrap();
    let short = {
        let mut value = CoreConfig::default();
        value.keepalive_interval = Duration::from_millis(100);
        value.presence_ttl = Duration::from_millis(300);
        value
    };
    let server = start_server(
        &dir.path().join("registry.sqlite"),
        "127.0.0.1:0".parse().unwrap(),
        short,
    )
    .await;
    let mut device = Device::new(8, server.address).await;
    device.connect_and_register().await;
    let mut viewer = viewer(server.address, 0xE0).await;
    connect_with_consent(&mut viewer, &mut device, 8).await;
    // Silence for longer than the TTL plus one sweep.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let asked = tokio::time::Instant::now();
    let reply = viewer
        .request(connect_body(8), MAX_MESSAGE_LEN, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        matches!(reply.body, Body::Error(e) if e.code == ErrorCode::Unavailable),
        "{reply:?}"
    );
    assert!(asked.elapsed() >= sightwire_rendezvous::CONSENT_WINDOW - Duration::from_millis(50));
    let _ = server.stop.send(());
    assert_eq!(server.task.await.unwrap().stats().presence_expired, 1);
}

#[tokio::test]
async fn devices_are_back_within_one_keepalive_interval_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.sqlite");
    let first = start_server(&registry, "127.0.0.1:0".parse().unwrap(), config()).await;
    let address = first.address;
    let mut devices = Vec::new();
    for n in 0..10 {
        let mut device = Device::new(n, address).await;
        device.connect_and_register().await;
        devices.push(device);
    }

    // 1. Graceful restart: the server tells devices it is going; they re-register as
    //    soon as the new process answers.
    let _ = first.stop.send(());
    let core = first.task.await.unwrap();
    drop(core);
    let restarted_at = tokio::time::Instant::now();
    let second = start_server(&registry, address, config()).await;
    for device in &mut devices {
        let notice = device.client.recv(Duration::from_millis(500)).await;
        assert!(
            matches!(
                notice,
                Some(Envelope {
                    body: Body::Close(Close {
                        reason: CloseReason::Shutdown,
                        ..
                    }),
                    ..
                })
            ),
            "{notice:?}"
        );
        device.client.inbox.push_front(notice.unwrap());
        device.keepalive_or_recover().await;
    }
    assert!(
        restarted_at.elapsed() < KEEPALIVE,
        "graceful recovery took {:?}",
        restarted_at.elapsed()
    );

    // 2. Crash: no notice. Each device finds out at its next keepalive (no ack within
    //    ACK_TIMEOUT) and re-registers.
    second.task.abort();
    let _ = second.task.await;
    let crashed_at = tokio::time::Instant::now();
    let third = start_server(&registry, address, config()).await;
    // Devices run concurrently, as they would in the field.
    let tasks: Vec<_> = devices
        .into_iter()
        .map(|mut device| {
            tokio::spawn(async move {
                let first = device.keepalive_or_recover().await;
                let second = device.keepalive_or_recover().await;
                (first, second, device)
            })
        })
        .collect();
    let mut devices = Vec::new();
    for task in tasks {
        let (first, second, device) = task.await.unwrap();
        devices.push(device);
        assert!(
            !first,
            "the first keepalive after the crash goes unanswered"
        );
        assert!(second, "the device is registered again");
    }
    let recovery = crashed_at.elapsed();
    assert!(
        recovery < KEEPALIVE + ACK_TIMEOUT * 2,
        "crash recovery took {recovery:?}"
    );

    let mut viewer = viewer(address, 0xE1).await;
    connect_with_consent(&mut viewer, &mut devices[3], 3).await;
    let _ = third.stop.send(());
    let core = third.task.await.unwrap();
    assert_eq!(
        core.online(),
        0,
        "shutdown told every device and cleared presence"
    );
    assert_eq!(core.stats().registrations, 10);
}

#[tokio::test]
async fn lookup_rate_limit_is_hit_over_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let limited = {
        let mut value = config();
        value.lookup_rate = Rate::new(1, 3);
        value
    };
    let server = start_server(
        &dir.path().join("registry.sqlite"),
        "127.0.0.1:0".parse().unwrap(),
        limited,
    )
    .await;
    let mut viewer = viewer(server.address, 0xE2).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(viewer.send(connect_body(100 + n), MAX_MESSAGE_LEN).await);
    }
    // The two over the limit are refused at once; the three admitted ones (unknown IDs)
    // are answered UNAVAILABLE when the consent window closes.
    let mut codes = std::collections::HashMap::new();
    while codes.len() < 5 {
        let reply = viewer.recv(Duration::from_secs(5)).await.expect("a reply");
        let Body::Error(error) = reply.body else {
            panic!("{reply:?}")
        };
        codes.insert(reply.request_id, (error.code, error.limit));
    }
    for id in &ids[..3] {
        assert_eq!(codes[id], (ErrorCode::Unavailable, None));
    }
    for id in &ids[3..] {
        assert_eq!(codes[id], (ErrorCode::RateLimited, Some(Limit::LookupRate)));
    }
    let _ = server.stop.send(());
    assert_eq!(server.task.await.unwrap().stats().rate_limited, 2);
}

/// A `sightwire-rendezvous serve` process on PostgreSQL, its UDP address read from its
/// "serving" log line.
#[cfg(all(feature = "postgres", feature = "cli"))]
struct Process {
    child: std::process::Child,
    address: SocketAddr,
}

#[cfg(all(feature = "postgres", feature = "cli"))]
impl Process {
    fn start(dir: &Path, name: &str, params: &str, require_issued: bool) -> Self {
        use std::io::BufRead;
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&key, hex::encode([0x5E; 32])).unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstatic_key = \"{}\"\nregistry = {{ postgres = \"{}\", connections = 2 }}\ntrusted_issuers = [\"{}\"]\n[limits]\nkeepalive_interval_ms = 1000\nrequire_issued = {require_issued}\n[stream]\nport = 0\n",
                key.display(),
                params.replace('\\', "\\\\").replace('"', "\\\""),
                hex::encode(issuer().public().to_bytes()),
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sightwire-rendezvous"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let serving = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|line| line.contains("rendezvous serving"))
            .unwrap_or_else(|| panic!("{name} did not start"));
        let address = serving
            .split_whitespace()
            .find_map(|word| word.strip_prefix("listen="))
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| panic!("no listen address in {serving:?}"));
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
        Self { child, address }
    }
}

#[cfg(all(feature = "postgres", feature = "cli"))]
impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two server processes share one PostgreSQL registry: a certificate recorded through
/// one is known to the other (which requires issued IDs), and a revocation made with the
/// issuer tool reaches both at once (LISTEN/NOTIFY), dropping the device from presence
/// on each, before any lookup.
#[cfg(all(feature = "postgres", feature = "cli"))]
#[tokio::test]
async fn two_processes_share_a_postgres_registry_and_its_revocations() {
    // The blocking PostgreSQL client makes its own runtime: not on this test's.
    let Some(params) = std::thread::spawn(sightwire_rendezvous::postgres_testing::fresh_schema)
        .join()
        .unwrap()
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = Process::start(dir.path(), "a", &params, false);
    let b = Process::start(dir.path(), "b", &params, true);
    let error_code = |reply: &Envelope| match &reply.body {
        Body::Error(error) => Some(error.code),
        _ => None,
    };

    // Unknown to the shared registry: B (require_issued) refuses it.
    let mut at_b = Device::new(41, b.address).await;
    at_b.client.handshake().await;
    let reply = at_b.register().await;
    assert_eq!(error_code(&reply), Some(ErrorCode::UnknownId), "{reply:?}");
    // A records it; now B finds it.
    let mut at_a = Device::new(41, a.address).await;
    at_a.connect_and_register().await;
    let reply = at_b.register().await;
    assert!(matches!(reply.body, Body::RegisterAck(_)), "{reply:?}");
    let record = {
        let params = params.clone();
        std::thread::spawn(move || {
            let registry = sightwire_rendezvous::PostgresRegistry::connect(&params).unwrap();
            registry.lookup(common::device_id(41)).unwrap().unwrap()
        })
        .join()
        .unwrap()
    };
    assert_eq!(record.certificate, at_a.certificate);
    assert!(!record.revoked);

    // Online on both nodes.
    for device in [&mut at_a, &mut at_b] {
        let reply = device
            .client
            .request(Body::Keepalive, 16, ACK_TIMEOUT)
            .await
            .expect("an answer to KEEPALIVE");
        assert!(matches!(reply.body, Body::KeepaliveAck { .. }), "{reply:?}");
    }
    // The operator revokes it with the issuer tool, on the same database.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sightwire-rendezvous"))
        .args(["issuer", "revoke", "--postgres", &params, "--device-id"])
        .arg(common::device_id(41).to_string())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let revoked_at = Instant::now();
    // Both nodes drop it from presence without any lookup: keepalives are refused.
    for device in [&mut at_a, &mut at_b] {
        loop {
            let reply = device
                .client
                .request(Body::Keepalive, 16, ACK_TIMEOUT)
                .await
                .expect("an answer to KEEPALIVE");
            if error_code(&reply) == Some(ErrorCode::NotRegistered) {
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(3),
                "the revocation did not reach the node in 3 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "revocation seen by both nodes {} ms after the issuer tool returned",
        revoked_at.elapsed().as_millis()
    );
    // And neither takes it back.
    for device in [&mut at_a, &mut at_b] {
        let reply = device.register().await;
        assert_eq!(error_code(&reply), Some(ErrorCode::Revoked), "{reply:?}");
    }
    drop((a, b));
}

/// One HTTP/1.1 exchange with the metrics listener: the status code and the body.
async fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before a long request is written.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body.to_owned())
}

/// The value of the sample `name` (with its labels, if any) in an exposition.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The `sightwire-rendezvous` binary with `--metrics-listen` and `--log-format json`: a
/// device registers and keeps alive over Noise, the counters move on `/metrics`, health
/// and readiness answer, and a malformed or oversized request gets 400 without taking
/// the listener down.
#[cfg(unix)]
#[tokio::test]
async fn the_binary_exports_metrics_and_health() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("server.key");
    std::fs::write(&key, hex::encode([0x5E; 32])).unwrap();
    let config = dir.path().join("rendezvous.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstatic_key = \"{}\"\nregistry = \"{}\"\n\
             trusted_issuers = [\"{}\"]\nsocket_buffer_bytes = 1048576\n[stream]\nport = 0\n",
            key.display(),
            dir.path().join("registry.sqlite").display(),
            hex::encode(issuer().public().to_bytes()),
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sightwire-rendezvous"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&config)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut metrics, mut listen) = (None, None);
    for line in lines.by_ref().map_while(Result::ok) {
        // Every line is one JSON object.
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        let fields = &event["fields"];
        let address = |key: &str| {
            fields[key]
                .as_str()
                .and_then(|s| s.parse::<SocketAddr>().ok())
        };
        match fields["message"].as_str() {
            Some("metrics listening") => metrics = address("metrics"),
            Some("rendezvous serving") => {
                listen = address("listen");
                // The granted buffer is reported (Linux doubles the request).
                assert!(fields["receive_buffer"].as_u64().unwrap() > 0, "{line}");
                break;
            }
            _ => {}
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let (metrics, listen) = (metrics.unwrap(), listen.unwrap());

    let (status, _) = http(metrics, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let (status, before) = http(metrics, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&before, "sightwire_rendezvous_registrations_total"),
        Some(0)
    );

    let mut device = Device::new(7, listen).await;
    device.connect_and_register().await;
    assert!(device.keepalive_or_recover().await);

    let (_, after) = http(metrics, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        sample(&after, "sightwire_rendezvous_registrations_total"),
        Some(1),
        "{after}"
    );
    assert_eq!(
        sample(&after, "sightwire_rendezvous_devices_online"),
        Some(1)
    );
    assert_eq!(
        sample(&after, "sightwire_rendezvous_keepalives_total"),
        Some(1)
    );
    assert!(sample(&after, "sightwire_rendezvous_handshakes_total").unwrap() >= 1);
    assert_eq!(
        sample(
            &after,
            "sightwire_rendezvous_refusals_total{reason=\"rate_limited\"}"
        ),
        Some(0)
    );

    // Hostile requests: each gets 400, and the listener keeps serving.
    let oversized = vec![b'A'; 64 * 1024];
    assert_eq!(http(metrics, &oversized).await.0, 400);
    assert_eq!(http(metrics, b"BREW /pot HTCPCP/1.0\r\n\r\n").await.0, 400);
    assert_eq!(
        http(metrics, b"GET /\xff\xfe HTTP/1.1\r\n\r\n").await.0,
        400
    );
    assert_eq!(http(metrics, b"GET /nothing HTTP/1.1\r\n\r\n").await.0, 404);
    let (status, body) = http(metrics, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}
