//! `rendezvous-load`: one rendezvous node under many devices, measured (issue 17).
//!
//! Starts the real `sightwire-rendezvous` binary as its own process (a fresh issuer key,
//! static key, SQLite registry and configuration in a scratch directory), then simulates
//! `--devices` devices on loopback: each has its own static key and an ID certificate
//! from the test issuer, makes its own Noise session with the rendezvous, registers and
//! sends keepalives at the interval the rendezvous tells it. Devices share UDP sockets
//! (`--devices-per-socket`; the rendezvous keys sessions by receiver index, not by
//! address), and every socket has its own loopback address (127.1.x.y) because the
//! rendezvous limits initiations and registrations per source address. Once every device
//! has registered, `--viewers` viewers (one address each) ask for `--connects` random
//! devices; each device accepts (consent) and the viewer's wait for `CONNECT_RESPONSE`
//! is the connect latency.
//!
//! It reports registrations/s, keepalives/s, connect latency p50/p99, the server's CPU
//! seconds (`/proc/<pid>/stat`) per phase and its resident memory (`VmRSS`) per device
//! over the server's own baseline.
//!
//! ```text
//! cargo build --release -p sightwire-rendezvous -p sightwire-benches --bin sightwire-rendezvous --bin rendezvous-load
//! target/release/rendezvous-load --devices 100000 --hold-secs 60
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use rand::{Rng, SeedableRng};
use sightwire_benches::kernel::socket_drops;
use sightwire_benches::{Killed, cpu_seconds, machine, memory_kb};
use sightwire_session::{
    Event, Input, PublicKey, SessionId, SessionKind, SessionTable, StaticKeypair,
};
use sightwire_signal::cert::{CertificateFields, IdCertificate, IssuerKey};
use sightwire_signal::{
    Body, CandidateSet, ConnectRequest, Consent, Envelope, MAX_MESSAGE_LEN, Register,
};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// Register, keep alive and look up many simulated devices on one rendezvous.
#[derive(Parser, Debug)]
struct Args {
    /// Simulated devices.
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Devices sharing one UDP socket (and one loopback address).
    #[arg(long, default_value_t = 100)]
    devices_per_socket: u32,
    /// Registrations started per second, all sockets together (each socket stays under
    /// the server's 20 per source).
    #[arg(long, default_value_t = 2000)]
    register_rate: u32,
    /// Devices registering at once, all sockets together: registration slows down to
    /// what the server sustains instead of overflowing its socket buffer.
    #[arg(long, default_value_t = 64)]
    in_flight: u64,
    /// Keepalive interval the server tells devices, ms.
    #[arg(long, default_value_t = 20_000)]
    keepalive_ms: u64,
    /// Seconds of keepalives (and lookups) measured after every device registered.
    #[arg(long, default_value_t = 60)]
    hold_secs: u64,
    /// Viewers, each with its own session and loopback address.
    #[arg(long, default_value_t = 10)]
    viewers: u32,
    /// Connect requests (viewer lookups) in all, spread over the viewers.
    #[arg(long, default_value_t = 200)]
    connects: u32,
    /// Give up a registration phase that takes longer than this, s.
    #[arg(long, default_value_t = 3600)]
    register_timeout_secs: u64,
    /// The rendezvous binary (default: `sightwire-rendezvous` next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Scratch directory for the server's keys, registry and configuration (default: a
    /// fresh directory in /dev/shm, else the system temp directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// UDP socket buffer the server asks for, bytes (default: the server's own, 8 MiB;
    /// 212992 is what a server that does not size its socket gets on Linux).
    #[arg(long)]
    socket_buffer_bytes: Option<usize>,
    /// The server's under-load threshold, handshake initiations per second (default:
    /// the server's own, 256; spec/operations.md §2).
    #[arg(long)]
    under_load_initiations_per_second: Option<u32>,
    /// Exit with an error unless every device registered, no keepalive went unanswered
    /// and every connect request was answered (the CI test uses it).
    #[arg(long)]
    check: bool,
}

/// The per-source registration rate is 20/s (burst 100): a viewer's lookups are limited
/// to 2/s per source and per identity (burst 10), so viewers pace at that.
const VIEWER_LOOKUPS_PER_SECOND: f64 = 1.8;
/// Per-request timeouts before a simulated client retries.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The registration phase ends when no device registered for this long.
const STALL: Duration = Duration::from_secs(60);
/// A connect answered later than this counts as unanswered (the consent window is 3 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.devices == 0 || args.devices_per_socket == 0 {
        bail!("--devices and --devices-per-socket must be positive");
    }
    let server_bin = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("sightwire-rendezvous"),
    };
    if !server_bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p sightwire-rendezvous --bin sightwire-rendezvous",
            server_bin.display()
        );
    }
    let scratch = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None if Path::new("/dev/shm").is_dir() => tempfile::tempdir_in("/dev/shm")?,
        None => tempfile::tempdir()?,
    };
    let setup = Setup::write(scratch.path(), &args)?;
    let (server, metrics) = setup.start(&server_bin)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(run(&args, &setup, server.id(), metrics))?;
    drop(server);
    report.print(&args);
    if args.check {
        report.check(&args)?;
    }
    Ok(())
}

/// The server's files and addresses.
struct Setup {
    config: PathBuf,
    address: SocketAddr,
    public_key: PublicKey,
    issuer_seed: [u8; 32],
}

impl Setup {
    fn write(dir: &Path, args: &Args) -> anyhow::Result<Self> {
        let mut rng = rand::rngs::StdRng::from_entropy();
        let issuer_seed: [u8; 32] = rng.r#gen();
        let issuer = IssuerKey::from_seed(&issuer_seed);
        let server_private: [u8; 32] = rng.r#gen();
        let public_key = *StaticKeypair::from_private(server_private).public();
        std::fs::write(dir.join("rendezvous.key"), hex::encode(server_private))?;
        // A free port: bound and released (nothing else on loopback races for it here).
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let presence = args.devices.max(1_000_000);
        let config = dir.join("rendezvous.toml");
        let mut extra = String::new();
        if let Some(bytes) = args.socket_buffer_bytes {
            extra.push_str(&format!("socket_buffer_bytes = {bytes}\n"));
        }
        let mut limits = String::new();
        if let Some(rate) = args.under_load_initiations_per_second {
            limits.push_str(&format!("under_load_initiations_per_second = {rate}\n"));
        }
        std::fs::write(
            &config,
            format!(
                "listen = \"{address}\"\nstatic_key = \"{}\"\nregistry = \"{}\"\n\
                 trusted_issuers = [\"{}\"]\n{extra}\n[stream]\nport = 0\n\n[limits]\n\
                 keepalive_interval_ms = {}\npresence_ttl_ms = {}\nmax_presence = {presence}\n{limits}",
                dir.join("rendezvous.key").display(),
                dir.join("registry.sqlite").display(),
                hex::encode(issuer.public().to_bytes()),
                args.keepalive_ms,
                args.keepalive_ms * 3,
            ),
        )?;
        Ok(Self {
            config,
            address,
            public_key,
            issuer_seed,
        })
    }

    /// Starts the server and waits for its "serving" line; returns it and the address
    /// of its metrics listener.
    fn start(&self, bin: &Path) -> anyhow::Result<(Killed, SocketAddr)> {
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let server = Killed(Some(child));
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics = None;
        loop {
            let line = lines.next().context("the server exited before serving")??;
            if line.contains("metrics listening") {
                metrics = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("metrics=")?.parse().ok());
            }
            if line.contains("rendezvous serving") {
                eprintln!("{line}");
                break;
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok((
            server,
            metrics.context("no metrics address in the server's log")?,
        ))
    }
}

/// The server's counters from its `/metrics` endpoint: sample (with labels) → value.
fn scrape(metrics: SocketAddr) -> anyhow::Result<HashMap<String, u64>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(metrics)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: load\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (_, body) = answer.split_once("\r\n\r\n").context("no HTTP body")?;
    Ok(body
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// What the server counted between two scrapes, for one sample.
fn moved(before: &HashMap<String, u64>, after: &HashMap<String, u64>, sample: &str) -> u64 {
    let get = |m: &HashMap<String, u64>| m.get(sample).copied().unwrap_or(0);
    get(after).saturating_sub(get(before))
}

/// The server's under-load cookie replies (its handshake threshold was exceeded).
const UNDER_LOAD_COOKIES: &str =
    "sightwire_rendezvous_session_drops_total{reason=\"under_load_cookie\"}";

fn device_id(n: u32) -> sightwire_signal::DeviceId {
    let b = n.to_be_bytes();
    // 0x02 first: locally administered unicast, so every n is a device ID.
    sightwire_signal::DeviceId::from_bytes([0x02, 0x5A, b[0], b[1], b[2], b[3]])
        .expect("a unicast address")
}

/// The loopback address of socket `k` (devices) or of viewer `k` (viewers).
fn loopback(second_octet: u8, k: u32) -> Ipv4Addr {
    // 250 hosts per /24, none ending in .0 or .255; the third octet wraps after 64 000.
    let host = (k % 250 + 1) as u8;
    let net = ((k / 250) % 256) as u8;
    Ipv4Addr::new(127, second_octet, net, host)
}

/// What every task adds up.
#[derive(Default)]
struct Counters {
    registered: AtomicU64,
    keepalives_sent: AtomicU64,
    keepalives_acked: AtomicU64,
    keepalives_unanswered: AtomicU64,
    introductions: AtomicU64,
    /// Sessions started (first ones and restarts after a loss).
    handshakes_started: AtomicU64,
    /// Registrations that got no `REGISTER_ACK` in time (restarted).
    registrations_lost: AtomicU64,
    /// Error replies to devices (rate limits, refusals).
    device_errors: AtomicU64,
    /// Devices between their start and their `REGISTER_ACK`.
    in_flight: AtomicU64,
    /// Registered devices told `NOT_REGISTERED` (their presence expired) that registered
    /// again.
    reregistrations: AtomicU64,
}

/// Where one simulated device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not started yet.
    Waiting,
    /// Noise handshake in flight.
    Handshaking,
    /// `REGISTER` sent at this time.
    Registering(Instant),
    /// `REGISTER` refused by the rate limit: send it again at this time.
    RegisterAfter(Instant),
    /// `REGISTER_ACK` received.
    Registered,
}

struct SimDevice {
    /// Devices register once their session is up; viewers do not.
    registers: bool,
    table: SessionTable,
    session: Option<SessionId>,
    certificate: IdCertificate,
    stage: Stage,
    next_request: u64,
    /// The keepalive in flight: request id and when it was sent.
    keepalive: Option<(u64, Instant)>,
    next_keepalive: Instant,
    interval: Duration,
    /// When this device last asked to be woken (stale heap entries are skipped).
    wake: Option<Instant>,
    /// The local indices of its last initiations (the demultiplexing keys).
    indices: [u32; 4],
}

/// The big-endian `u32` at `offset`.
fn index_at(datagram: &[u8], offset: usize) -> Option<u32> {
    let bytes = datagram.get(offset..offset + 4)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// The receiver index of a packet for an initiator (`spec/session.md` §2): after the
/// sender index in a response (`0x02`), right after the type byte otherwise.
fn receiver_index(datagram: &[u8]) -> Option<u32> {
    match datagram.first()? {
        0x02 => index_at(datagram, 5),
        _ => index_at(datagram, 1),
    }
}

/// An initiation's sender index: the index the server's answers will carry.
fn initiation_sender_index(datagram: &[u8]) -> Option<u32> {
    (datagram.first() == Some(&0x01))
        .then(|| index_at(datagram, 1))
        .flatten()
}

/// Takes the socket, not the group, so the task future stays `Send` (a session table is
/// not `Sync`).
async fn send_all(socket: &UdpSocket, sends: Vec<(SocketAddr, Vec<u8>)>) {
    for (to, datagram) in sends {
        let _ = socket.send_to(&datagram, to).await;
    }
}

/// A socket's worth of devices (or one viewer: a group of one).
struct Group {
    socket: UdpSocket,
    server: SocketAddr,
    server_key: PublicKey,
    devices: Vec<SimDevice>,
    by_index: HashMap<u32, usize>,
    wakes: BinaryHeap<Reverse<(Instant, usize)>>,
    buf: Vec<u8>,
    out: Vec<u8>,
    plaintext: Vec<u8>,
    counters: Arc<Counters>,
}

impl Group {
    fn new(
        socket: UdpSocket,
        server: SocketAddr,
        server_key: PublicKey,
        devices: Vec<SimDevice>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            socket,
            server,
            server_key,
            devices,
            by_index: HashMap::new(),
            wakes: BinaryHeap::new(),
            buf: vec![0; 2048],
            out: vec![0; 2048],
            plaintext: Vec::with_capacity(2048),
            counters,
        }
    }

    fn flush_table(&mut self, i: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut sends = Vec::new();
        let device = &mut self.devices[i];
        while let Some(t) = device.table.poll_transmit(&mut self.out) {
            let datagram = &self.out[..t.len];
            if let Some(index) = initiation_sender_index(datagram) {
                let old = device.indices[0];
                device.indices.rotate_right(1);
                device.indices[0] = index;
                if old != 0 && !device.indices.contains(&old) {
                    self.by_index.remove(&old);
                }
                self.by_index.insert(index, i);
            }
            sends.push((t.destination, datagram.to_vec()));
        }
        sends
    }

    /// Seals and sends one signaling message from device `i`; returns its request id.
    async fn send_body(&mut self, i: usize, body: Body, pad_to: usize, now: Instant) -> u64 {
        let device = &mut self.devices[i];
        let request_id = device.next_request;
        device.next_request += 1;
        let Some(session) = device.session else {
            return request_id;
        };
        self.plaintext.clear();
        if Envelope::new(request_id, body)
            .encode_padded(pad_to, &mut self.plaintext)
            .is_err()
        {
            return request_id;
        }
        if let Ok(t) = device
            .table
            .seal(session, now, &self.plaintext, &mut self.out)
        {
            let _ = self.socket.send_to(&self.out[..t.len], t.destination).await;
        }
        request_id
    }

    fn schedule(&mut self, i: usize) {
        let device = &mut self.devices[i];
        let mut at = device.table.poll_timeout();
        match device.stage {
            Stage::Registered => {
                let keepalive = device
                    .keepalive
                    .map_or(device.next_keepalive, |(_, sent)| sent + REPLY_TIMEOUT);
                at = Some(at.map_or(keepalive, |t| t.min(keepalive)));
            }
            Stage::Registering(sent) => {
                let retry = sent + REPLY_TIMEOUT;
                at = Some(at.map_or(retry, |t| t.min(retry)));
            }
            Stage::RegisterAfter(retry) => {
                at = Some(at.map_or(retry, |t| t.min(retry)));
            }
            _ => {}
        }
        if at != device.wake {
            device.wake = at;
            if let Some(at) = at {
                self.wakes.push(Reverse((at, i)));
            }
        }
    }

    /// Starts device `i`'s session with the rendezvous (first time or after a loss).
    async fn start(&mut self, i: usize, now: Instant) {
        let device = &mut self.devices[i];
        if let Some(old) = device.session.take() {
            device.table.close(old);
        }
        if matches!(device.stage, Stage::Waiting | Stage::Registered) {
            self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        let server = self.server;
        let key = self.server_key;
        if device
            .table
            .connect(now, server, SessionKind::Rendezvous, key)
            .is_ok()
        {
            device.stage = Stage::Handshaking;
            self.counters
                .handshakes_started
                .fetch_add(1, Ordering::Relaxed);
        }
        let sends = self.flush_table(i);
        send_all(&self.socket, sends).await;
        self.schedule(i);
    }

    async fn register(&mut self, i: usize, now: Instant) {
        let certificate = self.devices[i].certificate;
        let body = Body::Register(Register {
            certificate,
            candidates: CandidateSet::default(),
        });
        self.send_body(i, body, 0, now).await;
        self.devices[i].stage = Stage::Registering(now);
    }

    /// Timers of device `i`: session timers, keepalives, retries.
    async fn on_wake(&mut self, i: usize, now: Instant) {
        self.devices[i].wake = None;
        self.devices[i].table.handle_timeout(now);
        self.drain_events(i, now).await;
        let device = &self.devices[i];
        match device.stage {
            Stage::RegisterAfter(retry) if now >= retry => {
                self.register(i, now).await;
            }
            Stage::Registering(sent) if now >= sent + REPLY_TIMEOUT => {
                self.counters
                    .registrations_lost
                    .fetch_add(1, Ordering::Relaxed);
                self.start(i, now).await;
            }
            Stage::Registered => {
                if let Some((_, sent)) = device.keepalive {
                    if now >= sent + REPLY_TIMEOUT {
                        // Lost (or very late): counted; the next keepalive goes at its
                        // time (presence survives two lost ones).
                        self.counters
                            .keepalives_unanswered
                            .fetch_add(1, Ordering::Relaxed);
                        self.devices[i].keepalive = None;
                    }
                } else if now >= device.next_keepalive {
                    let id = self.send_body(i, Body::Keepalive, 16, now).await;
                    let device = &mut self.devices[i];
                    device.keepalive = Some((id, now));
                    device.next_keepalive = now + device.interval;
                    self.counters
                        .keepalives_sent
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        let sends = self.flush_table(i);
        send_all(&self.socket, sends).await;
        self.schedule(i);
    }

    async fn drain_events(&mut self, i: usize, now: Instant) {
        while let Some(event) = self.devices[i].table.poll_event() {
            match event {
                Event::Established { session, .. } => {
                    self.devices[i].session = Some(session);
                    if self.devices[i].registers && self.devices[i].stage == Stage::Handshaking {
                        self.register(i, now).await;
                    }
                }
                Event::HandshakeFailed { .. } | Event::Closed { .. } => {
                    if self.devices[i].stage == Stage::Registered {
                        self.counters.registered.fetch_sub(1, Ordering::Relaxed);
                    }
                    self.devices[i].session = None;
                    self.start(i, now).await;
                }
                _ => {}
            }
        }
    }

    /// A datagram for this group: to the device whose index it names.
    async fn on_datagram(&mut self, from: SocketAddr, len: usize, now: Instant) -> Option<Body> {
        let index = receiver_index(&self.buf[..len])?;
        let i = *self.by_index.get(&index)?;
        let mut body = None;
        let input = self.devices[i]
            .table
            .handle_input(now, from, &mut self.buf[..len]);
        if let Ok(Input::Data { plaintext, .. }) = input {
            body = Envelope::decode(plaintext)
                .ok()
                .map(|e| (e.request_id, e.body));
        }
        self.drain_events(i, now).await;
        let answer = match body {
            Some((request_id, body)) => self.on_body(i, request_id, body, now).await,
            None => None,
        };
        let sends = self.flush_table(i);
        send_all(&self.socket, sends).await;
        self.schedule(i);
        answer
    }

    /// A signaling message for device `i`; returns what a viewer must look at.
    async fn on_body(
        &mut self,
        i: usize,
        request_id: u64,
        body: Body,
        now: Instant,
    ) -> Option<Body> {
        let device = &mut self.devices[i];
        match body {
            Body::RegisterAck(ack) => {
                if matches!(device.stage, Stage::Registering(_)) {
                    device.stage = Stage::Registered;
                    self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                    device.interval = ack.keepalive_interval;
                    // Spread the keepalives over the interval.
                    let jitter = rand::thread_rng().gen_range(0.0..1.0);
                    device.next_keepalive = now + ack.keepalive_interval.mul_f64(jitter);
                    self.counters.registered.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            Body::KeepaliveAck { .. } => {
                if device.keepalive.is_some_and(|(id, _)| id == request_id) {
                    device.keepalive = None;
                    self.counters
                        .keepalives_acked
                        .fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            Body::Introduction(introduction) => {
                self.counters.introductions.fetch_add(1, Ordering::Relaxed);
                let consent = Body::Consent(Consent {
                    connect_id: introduction.connect_id,
                    login: Bytes::new(),
                    accept: true,
                    confirmation_digest: None,
                });
                self.send_body(i, consent, 0, now).await;
                None
            }
            Body::ConnectOffer(offer) => {
                if offer.ack_requested {
                    let ack = Body::OfferAck {
                        connect_id: offer.connect_id,
                    };
                    self.send_body(i, ack, 0, now).await;
                }
                None
            }
            Body::Error(error) if device.registers => {
                // What a device does when its registration is rate limited: wait as told
                // (spread a little, so refused devices do not come back together).
                self.counters.device_errors.fetch_add(1, Ordering::Relaxed);
                if device.stage == Stage::Registered
                    && error.code == sightwire_signal::ErrorCode::NotRegistered
                {
                    // Its presence expired (keepalives lost): register again on the
                    // same session, as a device does.
                    device.keepalive = None;
                    self.counters.registered.fetch_sub(1, Ordering::Relaxed);
                    self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .reregistrations
                        .fetch_add(1, Ordering::Relaxed);
                    self.register(i, now).await;
                    return None;
                }
                if matches!(device.stage, Stage::Registering(_)) {
                    let spread = rand::thread_rng().gen_range(0..500);
                    device.stage = Stage::RegisterAfter(
                        now + error.retry_after + Duration::from_millis(spread),
                    );
                }
                None
            }
            other => Some(other),
        }
    }
}

fn new_device(n: u32, issuer: &IssuerKey, seed: u64) -> anyhow::Result<SimDevice> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let key = StaticKeypair::generate(&mut rng);
    let certificate = issuer.issue(CertificateFields {
        device_id: device_id(n),
        device_key: *key.public(),
        not_before: 0,
        not_after: u64::MAX,
        serial: 1,
    })?;
    let table = SessionTable::new(
        key,
        sightwire_session::Config::default(),
        Box::new(rand::rngs::StdRng::from_rng(&mut rng)?),
    );
    let now = Instant::now();
    Ok(SimDevice {
        registers: true,
        table,
        session: None,
        certificate,
        stage: Stage::Waiting,
        next_request: 1,
        keepalive: None,
        next_keepalive: now,
        interval: Duration::from_secs(20),
        wake: None,
        indices: [0; 4],
    })
}

/// How fast a socket starts devices.
#[derive(Debug, Clone, Copy)]
struct Admission {
    /// One device every `pace` at most.
    pace: Duration,
    /// And only while fewer than this many devices (all sockets) are registering.
    in_flight: u64,
}

/// One socket's devices: registers them at `register_rate`, then keeps them alive and
/// answers introductions until `stop`.
async fn device_group(
    k: u32,
    first: u32,
    count: u32,
    admission: Admission,
    setup: Arc<(SocketAddr, PublicKey, IssuerKey)>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (server, server_key, issuer) = (&setup.0, setup.1, &setup.2);
    let socket = UdpSocket::bind((loopback(1, k), 0))
        .await
        .with_context(|| format!("binding {}", loopback(1, k)))?;
    // Devices are created as they start: key generation and certificates spread over
    // the run.
    let devices = Vec::with_capacity(count as usize);
    let mut group = Group::new(socket, *server, server_key, devices, counters);
    let shared_counters = group.counters.clone();
    let mut next_start = Instant::now();
    let count = count as usize;
    loop {
        let now = Instant::now();
        let room = || shared_counters.in_flight.load(Ordering::Relaxed) < admission.in_flight;
        while group.devices.len() < count && next_start <= now && room() {
            let n = first + group.devices.len() as u32;
            group
                .devices
                .push(new_device(n, issuer, u64::from(n) ^ 0x5EED)?);
            group.start(group.devices.len() - 1, now).await;
            next_start = next_start.max(now) + admission.pace;
        }
        // Wake everything due.
        while let Some(&Reverse((at, i))) = group.wakes.peek() {
            if at > now {
                break;
            }
            group.wakes.pop();
            if group.devices[i].wake == Some(at) {
                group.on_wake(i, now).await;
            }
        }
        let mut wake_at = group.wakes.peek().map(|Reverse((at, _))| *at);
        if group.devices.len() < count {
            // Without room, look again in a few milliseconds.
            let next_start = if room() {
                next_start
            } else {
                now + Duration::from_millis(5)
            };
            wake_at = Some(wake_at.map_or(next_start, |t| t.min(next_start)));
        }
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = group.socket.recv_from(&mut group.buf) => {
                if let Ok((len, from)) = received {
                    group.on_datagram(from, len, Instant::now()).await;
                }
            }
            () = sleep => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// What one viewer measured.
#[derive(Default)]
struct ViewerResult {
    latencies: Vec<Duration>,
    unanswered: u32,
    refused: u32,
}

/// One viewer: its own session and address; asks for `count` random devices at the
/// allowed lookup rate and times each answer.
async fn viewer(
    v: u32,
    count: u32,
    devices: u32,
    setup: Arc<(SocketAddr, PublicKey, IssuerKey)>,
    counters: Arc<Counters>,
) -> anyhow::Result<ViewerResult> {
    let socket = UdpSocket::bind((loopback(2, v), 0)).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(u64::from(v));
    let mut device = new_device(u32::MAX - v, &setup.2, 0xF1E3 ^ u64::from(v))?;
    device.registers = false;
    let mut group = Group::new(socket, setup.0, setup.1, vec![device], counters);
    let mut result = ViewerResult::default();
    group.start(0, Instant::now()).await;
    let deadline = Instant::now() + REPLY_TIMEOUT * 2;
    while group.devices[0].session.is_none() {
        if Instant::now() > deadline {
            bail!("viewer {v}: no session with the rendezvous");
        }
        pump(&mut group, Instant::now() + Duration::from_millis(50)).await;
    }
    let pace = Duration::from_secs_f64(1.0 / VIEWER_LOOKUPS_PER_SECOND);
    for _ in 0..count {
        let paced = Instant::now() + pace;
        let target = rng.gen_range(0..devices);
        let body = Body::ConnectRequest(ConnectRequest {
            device_id: device_id(target),
            candidates: CandidateSet::default(),
            want_relay: false,
            login: Bytes::new(),
        });
        let sent = Instant::now();
        let request_id = group.send_body(0, body, MAX_MESSAGE_LEN, sent).await;
        let give_up = sent + CONNECT_TIMEOUT;
        loop {
            match pump(&mut group, give_up).await {
                Some((id, Body::ConnectResponse(_))) if id == request_id => {
                    result.latencies.push(sent.elapsed());
                    break;
                }
                Some((id, Body::Error(_))) if id == request_id => {
                    result.refused += 1;
                    break;
                }
                _ if Instant::now() >= give_up => {
                    result.unanswered += 1;
                    break;
                }
                _ => {}
            }
        }
        tokio::time::sleep_until(paced.into()).await;
    }
    Ok(result)
}

/// Runs the group until `until` or the first message for a viewer.
async fn pump(group: &mut Group, until: Instant) -> Option<(u64, Body)> {
    loop {
        let now = Instant::now();
        if now >= until {
            return None;
        }
        let wake = group.devices[0].table.poll_timeout().unwrap_or(until);
        tokio::select! {
            received = group.socket.recv_from(&mut group.buf) => {
                let (len, from) = received.ok()?;
                let now = Instant::now();
                let index = receiver_index(&group.buf[..len])?;
                if group.by_index.get(&index) != Some(&0) {
                    continue;
                }
                let input = group.devices[0].table.handle_input(now, from, &mut group.buf[..len]);
                let message = match input {
                    Ok(Input::Data { plaintext, .. }) => Envelope::decode(plaintext).ok(),
                    _ => None,
                };
                group.drain_events(0, now).await;
                let sends = group.flush_table(0);
                send_all(&group.socket, sends).await;
                if let Some(message) = message {
                    return Some((message.request_id, message.body));
                }
            }
            () = tokio::time::sleep_until(wake.min(until).into()) => {
                group.devices[0].table.handle_timeout(Instant::now());
                group.drain_events(0, Instant::now()).await;
                let sends = group.flush_table(0);
                send_all(&group.socket, sends).await;
            }
        }
    }
}

/// The figures of one run.
struct Report {
    machine: String,
    devices: u32,
    registered: u64,
    register_secs: f64,
    register_cpu: f64,
    hold_secs: f64,
    hold_cpu: f64,
    /// This process's CPU seconds while registering and while holding.
    own_register_cpu: f64,
    own_hold_cpu: f64,
    /// Datagrams the kernel dropped at the server's socket (`/proc/net/udp`).
    socket_drops_register: u64,
    socket_drops_hold: u64,
    /// Cookie replies the server sent because its handshake rate was over its
    /// under-load threshold (from its `/metrics`).
    under_load_cookies_register: u64,
    under_load_cookies_hold: u64,
    /// Keepalives the server answered during the hold, and devices it held online at
    /// the end (from its `/metrics`).
    server_keepalives_hold: u64,
    server_online: u64,
    keepalives_acked: u64,
    keepalives_unanswered: u64,
    reregistrations: u64,
    introductions: u64,
    latencies: Vec<Duration>,
    connects_unanswered: u32,
    connects_refused: u32,
    baseline_rss_kb: u64,
    rss_kb: u64,
    hwm_kb: u64,
}

impl Report {
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }

    fn print(&self, args: &Args) {
        let per_device = (self.rss_kb.saturating_sub(self.baseline_rss_kb) as f64 * 1024.0)
            / f64::from(self.devices.max(1));
        println!("machine: {}", self.machine);
        println!(
            "devices {} ({} per socket), keepalive interval {} ms, hold {:.0} s, {} connects from {} viewers",
            self.devices,
            args.devices_per_socket,
            args.keepalive_ms,
            self.hold_secs,
            self.latencies.len() as u32 + self.connects_unanswered + self.connects_refused,
            args.viewers
        );
        println!("| figure | value |");
        println!("| --- | --- |");
        println!(
            "| registered | {} of {} in {:.1} s: {:.0} registrations/s |",
            self.registered,
            self.devices,
            self.register_secs,
            self.registered as f64 / self.register_secs.max(1e-9)
        );
        println!(
            "| server CPU while registering | {:.1} s ({:.0} µs per registration) |",
            self.register_cpu,
            1e6 * self.register_cpu / (self.registered.max(1) as f64)
        );
        println!(
            "| load generator CPU while registering | {:.1} s (this process, 2 worker threads: the devices' handshakes and certificates) |",
            self.own_register_cpu
        );
        println!(
            "| server under-load cookie replies while registering | {} |",
            self.under_load_cookies_register
        );
        println!(
            "| datagrams dropped at the server socket | {} while registering, {} while holding |",
            self.socket_drops_register, self.socket_drops_hold
        );
        println!(
            "| keepalives answered | {:.0}/s ({} in {:.0} s; {} unanswered; {} devices re-registered in the whole run) |",
            self.keepalives_acked as f64 / self.hold_secs.max(1e-9),
            self.keepalives_acked,
            self.hold_secs,
            self.keepalives_unanswered,
            self.reregistrations
        );
        println!(
            "| server CPU while holding | {:.1} s in {:.0} s ({:.0} % of one core; {:.1} µs per keepalive, rekeys and lookups included) |",
            self.hold_cpu,
            self.hold_secs,
            100.0 * self.hold_cpu / self.hold_secs.max(1e-9),
            1e6 * self.hold_cpu / (self.keepalives_acked.max(1) as f64)
        );
        println!(
            "| keepalives per core-second | {:.0} (answered / server CPU seconds while holding) |",
            self.keepalives_acked as f64 / self.hold_cpu.max(1e-9)
        );
        println!(
            "| server's own count while holding | {} keepalives answered, {} under-load cookie replies, {} devices online at the end; load generator CPU {:.1} s |",
            self.server_keepalives_hold,
            self.under_load_cookies_hold,
            self.server_online,
            self.own_hold_cpu
        );
        println!(
            "| connects | {} answered, {} refused, {} unanswered; {} introductions |",
            self.latencies.len(),
            self.connects_refused,
            self.connects_unanswered,
            self.introductions
        );
        println!(
            "| connect latency | p50 {:.2} ms, p99 {:.2} ms |",
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3
        );
        println!(
            "| server VmRSS | {} kB at the end ({} kB before the first device; peak {} kB) |",
            self.rss_kb, self.baseline_rss_kb, self.hwm_kb
        );
        println!("| server memory per device | {per_device:.0} bytes |");
    }

    fn check(&self, args: &Args) -> anyhow::Result<()> {
        if self.registered != u64::from(self.devices) {
            bail!("{} of {} devices registered", self.registered, self.devices);
        }
        if self.keepalives_unanswered > 0 {
            bail!("{} keepalives unanswered", self.keepalives_unanswered);
        }
        if self.latencies.len() != args.connects as usize {
            bail!(
                "{} of {} connects answered ({} refused, {} unanswered)",
                self.latencies.len(),
                args.connects,
                self.connects_refused,
                self.connects_unanswered
            );
        }
        Ok(())
    }
}

async fn run(
    args: &Args,
    setup: &Setup,
    server_pid: u32,
    metrics: SocketAddr,
) -> anyhow::Result<Report> {
    let own_pid = std::process::id();
    let drops = || socket_drops(setup.address).unwrap_or(0);
    let scraped_start = scrape(metrics)?;
    let (drops_start, own_cpu_start) = (drops(), cpu_seconds(own_pid)?);
    let shared = Arc::new((
        setup.address,
        setup.public_key,
        IssuerKey::from_seed(&setup.issuer_seed),
    ));
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (baseline_rss_kb, _) = memory_kb(server_pid)?;
    let cpu_start = cpu_seconds(server_pid)?;
    let started = Instant::now();
    let mut groups = Vec::new();
    let sockets = args.devices.div_ceil(args.devices_per_socket);
    // Each socket starts one device every `pace` (and never more than 20/s, the
    // server's per-source registration rate).
    let pace = Duration::from_secs_f64(
        (f64::from(sockets) / f64::from(args.register_rate.max(1))).max(1.0 / 18.0),
    );
    let mut first = 0u32;
    let mut k = 0u32;
    while first < args.devices {
        let count = args.devices_per_socket.min(args.devices - first);
        groups.push(tokio::spawn(device_group(
            k,
            first,
            count,
            Admission {
                pace,
                in_flight: args.in_flight.max(1),
            },
            shared.clone(),
            counters.clone(),
            stop_rx.clone(),
        )));
        first += count;
        k += 1;
    }
    // Registration phase: until every device is registered (or the timeout).
    let give_up = started + Duration::from_secs(args.register_timeout_secs);
    let mut last_report = Instant::now();
    let (mut best, mut progressed) = (0, Instant::now());
    while counters.registered.load(Ordering::Relaxed) < u64::from(args.devices) {
        if Instant::now() > give_up || groups.iter().any(|g| g.is_finished()) {
            break;
        }
        let now_registered = counters.registered.load(Ordering::Relaxed);
        if now_registered > best {
            (best, progressed) = (now_registered, Instant::now());
        } else if progressed.elapsed() > STALL {
            eprintln!("registration stalled at {now_registered} for {STALL:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
            eprintln!(
                "{:.0} s: {} registered ({} handshakes, {} registrations lost, {} errors, \
                 {} keepalives unanswered, {} re-registrations), server VmRSS {} kB",
                started.elapsed().as_secs_f64(),
                load(&counters.registered),
                load(&counters.handshakes_started),
                load(&counters.registrations_lost),
                load(&counters.device_errors),
                load(&counters.keepalives_unanswered),
                load(&counters.reregistrations),
                memory_kb(server_pid).map_or(0, |(rss, _)| rss)
            );
        }
    }
    let register_secs = started.elapsed().as_secs_f64();
    let registered = counters.registered.load(Ordering::Relaxed);
    let cpu_registered = cpu_seconds(server_pid)?;
    let scraped_registered = scrape(metrics)?;
    let (drops_registered, own_cpu_registered) = (drops(), cpu_seconds(own_pid)?);
    // Hold phase: keepalives and lookups.
    let acked_before = counters.keepalives_acked.load(Ordering::Relaxed);
    let unanswered_before = counters.keepalives_unanswered.load(Ordering::Relaxed);
    let hold_start = Instant::now();
    let mut viewers = Vec::new();
    let viewer_count = args.viewers.max(1);
    for v in 0..viewer_count {
        let count = args.connects / viewer_count + u32::from(v < args.connects % viewer_count);
        viewers.push(tokio::spawn(viewer(
            v,
            count,
            args.devices,
            shared.clone(),
            counters.clone(),
        )));
    }
    let mut latencies = Vec::new();
    let (mut connects_unanswered, mut connects_refused) = (0, 0);
    for handle in viewers {
        let result = handle.await??;
        latencies.extend(result.latencies);
        connects_unanswered += result.unanswered;
        connects_refused += result.refused;
    }
    let hold_end = hold_start + Duration::from_secs(args.hold_secs);
    tokio::time::sleep_until(hold_end.into()).await;
    let hold_secs = hold_start.elapsed().as_secs_f64();
    let cpu_end = cpu_seconds(server_pid)?;
    let scraped_end = scrape(metrics)?;
    let (drops_end, own_cpu_end) = (drops(), cpu_seconds(own_pid)?);
    let (rss_kb, hwm_kb) = memory_kb(server_pid)?;
    let keepalives_acked = counters.keepalives_acked.load(Ordering::Relaxed) - acked_before;
    let keepalives_unanswered =
        counters.keepalives_unanswered.load(Ordering::Relaxed) - unanswered_before;
    let _ = stop_tx.send(true);
    for group in groups {
        group.await??;
    }
    latencies.sort();
    Ok(Report {
        machine: machine(),
        devices: args.devices,
        registered,
        register_secs,
        register_cpu: cpu_registered - cpu_start,
        hold_secs,
        hold_cpu: cpu_end - cpu_registered,
        own_register_cpu: own_cpu_registered - own_cpu_start,
        own_hold_cpu: own_cpu_end - own_cpu_registered,
        socket_drops_register: drops_registered.saturating_sub(drops_start),
        socket_drops_hold: drops_end.saturating_sub(drops_registered),
        under_load_cookies_register: moved(&scraped_start, &scraped_registered, UNDER_LOAD_COOKIES),
        under_load_cookies_hold: moved(&scraped_registered, &scraped_end, UNDER_LOAD_COOKIES),
        server_keepalives_hold: moved(
            &scraped_registered,
            &scraped_end,
            "sightwire_rendezvous_keepalives_total",
        ),
        server_online: scraped_end
            .get("sightwire_rendezvous_devices_online")
            .copied()
            .unwrap_or(0),
        keepalives_acked,
        keepalives_unanswered,
        reregistrations: counters.reregistrations.load(Ordering::Relaxed),
        introductions: counters.introductions.load(Ordering::Relaxed),
        latencies,
        connects_unanswered,
        connects_refused,
        baseline_rss_kb,
        rss_kb,
        hwm_kb,
    })
}
