//! Batched socket I/O on loopback (spec/relay.md, "Socket I/O"): several allocations'
//! datagrams, small and full-size, interleaved in the relay's batches, each arrive intact
//! and in order at their own destination, with batching on (recvmmsg, GSO runs, GRO
//! trains from a GSO sender) and off.

use std::net::SocketAddr;
use std::time::Duration;

use sightwire_ops::udp::bind_tokio_udp;
use sightwire_relay::wire::{BIND_LEN, DATA_HEADER_LEN};
use sightwire_relay::{Relay, RelayConfig, RelayPacket, RelayServer, RelayStats, unix_now};
use sightwire_signal::grant::{GrantClaims, GrantRole, RelayGrantKey};
use tokio::net::UdpSocket;
use tokio::time::timeout;

/// Allocations, each with a device side sending to its viewer side and back.
const ALLOCATIONS: u32 = 4;
/// Datagrams each side sends.
const PER_FLOW: u32 = 400;
/// Datagrams a side sends back to back before the next side's turn.
const BURST: u32 = 24;
/// Socket buffers: the test checks ordering and integrity, not the kernel's queue.
const BUFFER: usize = 4 << 20;

/// The payload length of datagram `seq` of `flow`: runs of full-size fragments broken by
/// short ones and by a few longer ones, as a frame's fragments and control messages are.
fn payload_len(flow: u32, seq: u32) -> usize {
    match (seq * 7 + flow * 3) % 11 {
        0 => 20 + (seq % 50) as usize,
        1 => 1300,
        2 => 600 + (flow * 37) as usize,
        _ => 1200,
    }
}

/// The payload of datagram `seq` of `flow`: who, which, and bytes that depend on both.
fn payload(flow: u32, seq: u32) -> Vec<u8> {
    let len = payload_len(flow, seq);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&flow.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend((8..len).map(|i| (i as u32 * 31 + seq * 7 + flow * 13) as u8));
    out
}

async fn bind(
    socket: &UdpSocket,
    relay: SocketAddr,
    key: &RelayGrantKey,
    allocation: u32,
    role: GrantRole,
) -> u64 {
    let mut allocation_id = [0u8; 16];
    allocation_id[..4].copy_from_slice(&allocation.to_be_bytes());
    let mut nonce = [role as u8; 12];
    nonce[..4].copy_from_slice(&allocation.to_be_bytes());
    let token = key.seal(
        &GrantClaims {
            allocation_id,
            role,
            expires_at: unix_now() + 60,
            device_id: sightwire_signal::DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef])
                .expect("a unicast ID"),
            device_key: [1; 32].into(),
            viewer_key: [2; 32].into(),
        },
        nonce,
    );
    let mut packet = [0u8; BIND_LEN];
    RelayPacket::Bind {
        token,
        cookie: None,
    }
    .encode(&mut packet)
    .unwrap();
    socket.send_to(&packet, relay).await.unwrap();
    let mut buf = [0u8; 128];
    let len = timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("bound in time")
        .unwrap();
    match RelayPacket::decode(&buf[..len]).unwrap() {
        RelayPacket::Bound { channel, .. } => channel,
        other => panic!("{other:?}"),
    }
}

fn socket() -> UdpSocket {
    bind_tokio_udp("127.0.0.1:0".parse().unwrap(), BUFFER)
        .unwrap()
        .0
}

/// One side of a flow: its socket, the channel, and the flow number of what it sends;
/// a side that sends GSO trains has quinn-udp's state on its socket, which also turns
/// GRO on for it, so it receives trains too and cuts them at the stride.
struct Side {
    socket: UdpSocket,
    channel: u64,
    flow: u32,
    gso: Option<quinn_udp::UdpSocketState>,
}

impl Side {
    /// The next datagrams that arrived (several from one GRO train).
    async fn recv(&self, buf: &mut [u8], out: &mut std::collections::VecDeque<Vec<u8>>) {
        let Some(state) = &self.gso else {
            let len = self.socket.recv(buf).await.unwrap();
            out.push_back(buf[..len].to_vec());
            return;
        };
        loop {
            self.socket.readable().await.unwrap();
            let mut meta = [quinn_udp::RecvMeta::default()];
            let received = self.socket.try_io(tokio::io::Interest::READABLE, || {
                state.recv(
                    (&self.socket).into(),
                    &mut [std::io::IoSliceMut::new(buf)],
                    &mut meta,
                )
            });
            match received {
                Ok(_) => {
                    let (len, stride) = (meta[0].len, meta[0].stride.max(1));
                    for chunk in buf[..len].chunks(stride) {
                        out.push_back(chunk.to_vec());
                    }
                    return;
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(error) => panic!("{error}"),
            }
        }
    }
}

/// Runs the exchange through a relay with `batched` I/O. The sides of `gso_flows` send
/// their runs of full-size datagrams as GSO trains, so a batched relay receives them
/// coalesced (GRO) and must cut them apart.
async fn exchange(batched: bool, gso_flows: &[u32]) -> RelayStats {
    let key = RelayGrantKey::from_bytes([6; 32]);
    let server =
        RelayServer::from_socket(socket(), Relay::new(RelayConfig::default(), key.clone()))
            .with_batched_io(batched);
    let relay = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(server.run(stopped));

    let mut sides = Vec::new();
    for allocation in 0..ALLOCATIONS {
        let device = socket();
        let viewer = socket();
        let channel = bind(&device, relay, &key, allocation, GrantRole::Device).await;
        bind(&viewer, relay, &key, allocation, GrantRole::Viewer).await;
        for (socket, flow) in [(device, allocation * 2), (viewer, allocation * 2 + 1)] {
            let gso = gso_flows
                .contains(&flow)
                .then(|| quinn_udp::UdpSocketState::new((&socket).into()).unwrap());
            sides.push(Side {
                socket,
                channel,
                flow,
                gso,
            });
        }
    }
    let sides = std::sync::Arc::new(sides);

    // Each side receives its peer's flow (device 2a gets 2a + 1, and the other way).
    let mut receivers = Vec::new();
    for index in 0..sides.len() {
        let sides = sides.clone();
        receivers.push(tokio::spawn(async move {
            let side = &sides[index];
            let expected_flow = side.flow ^ 1;
            let mut buf = vec![0u8; 64 * 1024];
            let mut queue = std::collections::VecDeque::new();
            let mut next = 0u32;
            while next < PER_FLOW {
                if queue.is_empty() {
                    timeout(Duration::from_secs(5), side.recv(&mut buf, &mut queue))
                        .await
                        .unwrap_or_else(|_| {
                            panic!("flow {expected_flow}: datagram {next} never came")
                        });
                }
                let datagram = queue.pop_front().unwrap();
                let packet = RelayPacket::decode(&datagram).expect("a relay data packet");
                let RelayPacket::Data {
                    channel,
                    payload: got,
                } = packet
                else {
                    panic!("flow {expected_flow}: not data: {packet:?}");
                };
                assert_eq!(
                    channel, side.channel,
                    "flow {expected_flow}: its own channel"
                );
                assert_eq!(
                    got,
                    payload(expected_flow, next).as_slice(),
                    "flow {expected_flow}: datagram {next} intact and in order (len {})",
                    got.len()
                );
                next += 1;
            }
        }));
    }

    // One sender, bursts of every side in turn: the relay's batches hold several
    // destinations interleaved, and runs of one destination within them.
    let mut datagram = vec![0u8; DATA_HEADER_LEN + 1500];
    let mut train = Vec::with_capacity(64 * 1024);
    for burst in 0..PER_FLOW.div_ceil(BURST) {
        for side in sides.iter() {
            let seqs = burst * BURST..((burst + 1) * BURST).min(PER_FLOW);
            if let Some(state) = side.gso.as_ref().filter(|s| s.max_gso_segments() > 1) {
                send_trains(side, relay, seqs, state, &mut train).await;
                continue;
            }
            for seq in seqs {
                let len = RelayPacket::Data {
                    channel: side.channel,
                    payload: &payload(side.flow, seq),
                }
                .encode(&mut datagram)
                .unwrap();
                side.socket.send_to(&datagram[..len], relay).await.unwrap();
            }
        }
        // Paced a little, so the test measures order and integrity, not queue sizes.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for receiver in receivers {
        timeout(Duration::from_secs(30), receiver)
            .await
            .expect("every flow complete in time")
            .unwrap();
    }
    stop.send(true).unwrap();
    timeout(Duration::from_secs(5), task)
        .await
        .expect("shut down in time")
        .unwrap()
        .unwrap()
}

/// Sends `seqs` of `side`'s flow, each run of equal-sized datagrams as one GSO train.
async fn send_trains(
    side: &Side,
    relay: SocketAddr,
    seqs: std::ops::Range<u32>,
    state: &quinn_udp::UdpSocketState,
    train: &mut Vec<u8>,
) {
    let encoded: Vec<Vec<u8>> = seqs
        .map(|seq| {
            let mut datagram = vec![0u8; DATA_HEADER_LEN + 1500];
            let len = RelayPacket::Data {
                channel: side.channel,
                payload: &payload(side.flow, seq),
            }
            .encode(&mut datagram)
            .unwrap();
            datagram.truncate(len);
            datagram
        })
        .collect();
    let mut first = 0;
    while first < encoded.len() {
        let size = encoded[first].len();
        let mut end = first + 1;
        while end < encoded.len() && encoded[end].len() == size && end - first < 32 {
            end += 1;
        }
        train.clear();
        for datagram in &encoded[first..end] {
            train.extend_from_slice(datagram);
        }
        let transmit = quinn_udp::Transmit {
            destination: relay,
            ecn: None,
            contents: train,
            segment_size: (end - first > 1).then_some(size),
            src_ip: None,
        };
        loop {
            match side.socket.try_io(tokio::io::Interest::WRITABLE, || {
                state.try_send((&side.socket).into(), &transmit)
            }) {
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    side.socket.writable().await.unwrap();
                }
                other => {
                    other.unwrap();
                    break;
                }
            }
        }
        first = end;
    }
}

#[tokio::test]
async fn batched_relay_forwards_every_datagram_intact_and_in_order_per_flow() {
    let stats = exchange(true, &[]).await;
    let flows = u64::from(ALLOCATIONS) * 2;
    assert_eq!(stats.forwarded_packets, flows * u64::from(PER_FLOW));
    assert_eq!(stats.binds, flows);
}

#[tokio::test]
async fn batched_relay_cuts_gro_trains_from_a_gso_sender_apart() {
    // Flows 0 and 3 arrive as GSO trains (coalesced at the relay where the kernel does
    // GRO); the others as single datagrams, in the same batches.
    let stats = exchange(true, &[0, 3]).await;
    assert_eq!(
        stats.forwarded_packets,
        u64::from(ALLOCATIONS) * 2 * u64::from(PER_FLOW)
    );
}

#[tokio::test]
async fn plain_relay_forwards_the_same_exchange() {
    let stats = exchange(false, &[0, 3]).await;
    assert_eq!(
        stats.forwarded_packets,
        u64::from(ALLOCATIONS) * 2 * u64::from(PER_FLOW)
    );
}
