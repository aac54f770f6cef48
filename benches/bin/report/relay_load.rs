//! Many camera streams through one relay at once: `streams` bound channel pairs, each
//! carrying `mbps` of 25 fps frames from its device side to its viewer side. The relay
//! runs on a thread of its own, so its CPU time is the relay's alone; the reference is a
//! trivial forwarder (receive, look the other side up by source address, send) carrying
//! the same datagrams on the same kind of thread. The relay runs twice, with its batched
//! socket I/O on and off, for the before/after figure of batching.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sightwire_benches::kernel::{CpuTimes, thread_cpu};
use sightwire_relay::wire::{BIND_LEN, DATA_HEADER_LEN};
use sightwire_relay::{Relay, RelayConfig, RelayPacket, RelayServer, unix_now};
use sightwire_signal::grant::{GrantClaims, GrantRole, RelayGrantKey};
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};

/// Frames per second of every stream.
const FPS: u32 = 25;
/// Payload bytes per datagram (a media fragment's size).
const FRAGMENT: usize = 1200;
/// A frame counts if its last datagram arrives within this long of its first leaving.
pub(crate) const DEADLINE: Duration = Duration::from_millis(200);
/// Header of each datagram's payload: stream, frame, fragment, fragments, sent at (µs).
const HEADER: usize = 4 + 4 + 2 + 2 + 8;

/// What forwards the datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forwarder {
    /// `sightwire_relay::RelayServer` with `RelayConfig::default()` and its default
    /// batched socket I/O (recvmmsg, GSO/GRO).
    Relay,
    /// The same relay with batched I/O off: one datagram per syscall.
    RelayPlain,
    /// The reference: receive, send to the other side, nothing else.
    Trivial,
}

/// One run's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RelayLoad {
    pub(crate) forwarder: &'static str,
    pub(crate) streams: usize,
    pub(crate) mbps_per_stream: f64,
    pub(crate) seconds: f64,
    pub(crate) frames: u64,
    pub(crate) frames_by_deadline: u64,
    pub(crate) forwarded_gbps: f64,
    pub(crate) forwarder_cpu_seconds: Option<f64>,
    /// CPU cores the forwarder kept busy per Gbit/s it forwarded.
    pub(crate) cores_per_gbps: Option<f64>,
}

/// Runs the load and returns its figures.
pub(crate) fn run(
    forwarder: Forwarder,
    streams: usize,
    mbps: f64,
    seconds: f64,
) -> anyhow::Result<RelayLoad> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run_async(forwarder, streams, mbps, seconds))
}

/// A forwarder on its own thread: its address, how to stop it, and its CPU time when
/// it stopped.
struct Running {
    address: SocketAddr,
    stop: watch::Sender<bool>,
    cpu: oneshot::Receiver<Option<CpuTimes>>,
}

fn spawn_forwarder(
    forwarder: Forwarder,
    key: RelayGrantKey,
    routes: Arc<std::sync::Mutex<HashMap<SocketAddr, SocketAddr>>>,
) -> anyhow::Result<Running> {
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let (stop, mut stopped) = watch::channel(false);
    let (cpu_tx, cpu) = oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let before = thread_cpu();
            match forwarder {
                Forwarder::Relay | Forwarder::RelayPlain => {
                    let server = RelayServer::bind(
                        "127.0.0.1:0".parse().expect("address"),
                        Relay::new(RelayConfig::default(), key),
                    )
                    .await
                    .expect("relay bind")
                    .with_batched_io(forwarder == Forwarder::Relay);
                    let _ = address_tx.send(server.local_addr().expect("relay address"));
                    let _ = server.run(stopped).await;
                }
                Forwarder::Trivial => {
                    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
                    let _ = address_tx.send(socket.local_addr().expect("address"));
                    let mut buf = vec![0u8; 2048];
                    let mut table: HashMap<SocketAddr, SocketAddr> = HashMap::new();
                    loop {
                        tokio::select! {
                            received = socket.recv_from(&mut buf) => {
                                let Ok((len, from)) = received else { continue };
                                let to = match table.get(&from) {
                                    Some(to) => *to,
                                    None => {
                                        let Some(to) = routes.lock().expect("routes").get(&from).copied() else { continue };
                                        table.insert(from, to);
                                        to
                                    }
                                };
                                let _ = socket.send_to(&buf[..len], to).await;
                            }
                            _ = stopped.changed() => break,
                        }
                    }
                }
            }
            let used = thread_cpu().zip(before).map(|(after, before)| after.since(before));
            let _ = cpu_tx.send(used);
        });
    });
    let address = address_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the forwarder did not start")?;
    Ok(Running { address, stop, cpu })
}

/// Binds `socket` to the relay allocation `allocation` in `role`; returns the channel.
async fn bind(
    socket: &UdpSocket,
    relay: SocketAddr,
    key: &RelayGrantKey,
    allocation: u32,
    role: GrantRole,
) -> anyhow::Result<u64> {
    let mut allocation_id = [0u8; 16];
    allocation_id[..4].copy_from_slice(&allocation.to_be_bytes());
    let token = key.seal(
        &GrantClaims {
            allocation_id,
            role,
            expires_at: unix_now() + 3600,
            device_id: sightwire_signal::DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef])
                .expect("a unicast address"),
            device_key: [1; 32].into(),
            viewer_key: [2; 32].into(),
        },
        {
            let mut nonce = [role as u8; 12];
            nonce[..4].copy_from_slice(&allocation.to_be_bytes());
            nonce
        },
    );
    let mut packet = [0u8; BIND_LEN];
    RelayPacket::Bind {
        token,
        cookie: None,
    }
    .encode(&mut packet)
    .context("encode bind")?;
    let mut buf = [0u8; 128];
    for _ in 0..10 {
        socket.send_to(&packet, relay).await?;
        if let Ok(Ok(len)) =
            tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
            && let Ok(RelayPacket::Bound { channel, .. }) = RelayPacket::decode(&buf[..len])
        {
            return Ok(channel);
        }
    }
    anyhow::bail!("the relay did not bind allocation {allocation}")
}

async fn run_async(
    forwarder: Forwarder,
    streams: usize,
    mbps: f64,
    seconds: f64,
) -> anyhow::Result<RelayLoad> {
    let key = RelayGrantKey::from_bytes([3; 32]);
    let routes = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let running = spawn_forwarder(forwarder, key.clone(), routes.clone())?;
    let mut senders = Vec::with_capacity(streams);
    let mut receivers = Vec::with_capacity(streams);
    for stream in 0..streams {
        let device = UdpSocket::bind("127.0.0.1:0").await?;
        let viewer = UdpSocket::bind("127.0.0.1:0").await?;
        let channel = match forwarder {
            Forwarder::Relay | Forwarder::RelayPlain => {
                let channel = bind(
                    &device,
                    running.address,
                    &key,
                    stream as u32,
                    GrantRole::Device,
                )
                .await?;
                bind(
                    &viewer,
                    running.address,
                    &key,
                    stream as u32,
                    GrantRole::Viewer,
                )
                .await?;
                channel
            }
            Forwarder::Trivial => {
                let mut routes = routes.lock().expect("routes");
                routes.insert(device.local_addr()?, viewer.local_addr()?);
                routes.insert(viewer.local_addr()?, device.local_addr()?);
                0
            }
        };
        senders.push((device, channel));
        receivers.push(viewer);
    }

    let frame_bytes = (mbps * 1e6 / 8.0 / f64::from(FPS)) as usize;
    let fragments = frame_bytes.div_ceil(FRAGMENT).max(1) as u16;
    let frames_per_stream = (seconds * f64::from(FPS)).round() as u32;
    let start = Instant::now();
    let relay = running.address;

    // Receivers: per stream, per frame, the fragments seen and when the last came.
    let mut receiving = Vec::with_capacity(streams);
    for viewer in receivers {
        receiving.push(tokio::spawn(async move {
            let mut seen: HashMap<u32, (u16, u64, Option<u64>)> = HashMap::new();
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok(Ok(len)) =
                    tokio::time::timeout(Duration::from_secs(1), viewer.recv(&mut buf)).await
                else {
                    break;
                };
                let payload = &buf[DATA_HEADER_LEN.min(len)..len];
                if payload.len() < HEADER {
                    continue;
                }
                let frame = u32::from_be_bytes(payload[4..8].try_into().expect("4"));
                let count = u16::from_be_bytes(payload[10..12].try_into().expect("2"));
                let sent_at = u64::from_be_bytes(payload[12..20].try_into().expect("8"));
                let now = start.elapsed().as_micros() as u64;
                let entry = seen.entry(frame).or_insert((0, sent_at, None));
                entry.0 += 1;
                if entry.0 == count {
                    entry.2 = Some(now);
                }
            }
            let by_deadline = seen
                .values()
                .filter(|(_, sent_at, done)| {
                    done.is_some_and(|done| {
                        done.saturating_sub(*sent_at) <= DEADLINE.as_micros() as u64
                    })
                })
                .count() as u64;
            let bytes = seen.values().map(|(n, _, _)| u64::from(*n)).sum::<u64>();
            (by_deadline, bytes)
        }));
    }

    // Senders: each stream's frame i leaves at i / FPS, its streams staggered over the
    // frame interval as independent cameras are.
    let mut sending = Vec::with_capacity(streams);
    for (stream, (device, channel)) in senders.into_iter().enumerate() {
        let offset = Duration::from_secs_f64(stream as f64 / streams as f64 / f64::from(FPS));
        sending.push(tokio::spawn(async move {
            let mut datagram = vec![0u8; DATA_HEADER_LEN + FRAGMENT];
            let mut payload = vec![0x5Au8; FRAGMENT];
            for frame in 0..frames_per_stream {
                let due =
                    start + offset + Duration::from_secs_f64(f64::from(frame) / f64::from(FPS));
                tokio::time::sleep_until(due.into()).await;
                let sent_at = start.elapsed().as_micros() as u64;
                for fragment in 0..fragments {
                    payload[..4].copy_from_slice(&(stream as u32).to_be_bytes());
                    payload[4..8].copy_from_slice(&frame.to_be_bytes());
                    payload[8..10].copy_from_slice(&fragment.to_be_bytes());
                    payload[10..12].copy_from_slice(&fragments.to_be_bytes());
                    payload[12..20].copy_from_slice(&sent_at.to_be_bytes());
                    let len = match forwarder {
                        Forwarder::Relay | Forwarder::RelayPlain => RelayPacket::Data {
                            channel,
                            payload: &payload,
                        }
                        .encode(&mut datagram)
                        .expect("fits"),
                        Forwarder::Trivial => {
                            datagram[DATA_HEADER_LEN..].copy_from_slice(&payload);
                            datagram.len()
                        }
                    };
                    let _ = device.send_to(&datagram[..len], relay).await;
                }
            }
        }));
    }
    for task in sending {
        task.await?;
    }
    let sent_seconds = start.elapsed().as_secs_f64();
    let (mut by_deadline, mut datagrams) = (0, 0);
    for task in receiving {
        let (frames, received) = task.await?;
        by_deadline += frames;
        datagrams += received;
    }
    let _ = running.stop.send(true);
    let cpu = running.cpu.await.ok().flatten();
    let forwarded_bits = datagrams as f64 * (DATA_HEADER_LEN + FRAGMENT) as f64 * 8.0;
    let forwarded_gbps = forwarded_bits / sent_seconds / 1e9;
    let cpu_seconds = cpu.map(|c| c.total().as_secs_f64());
    Ok(RelayLoad {
        forwarder: match forwarder {
            Forwarder::Relay => "sightwire-relay, batched I/O",
            Forwarder::RelayPlain => "sightwire-relay, one datagram per syscall",
            Forwarder::Trivial => "trivial UDP forwarder",
        },
        streams,
        mbps_per_stream: mbps,
        seconds: sent_seconds,
        frames: u64::from(frames_per_stream) * streams as u64,
        frames_by_deadline: by_deadline,
        forwarded_gbps,
        forwarder_cpu_seconds: cpu_seconds,
        cores_per_gbps: cpu_seconds
            .filter(|_| forwarded_gbps > 0.0)
            .map(|cpu| cpu / sent_seconds / forwarded_gbps),
    })
}
