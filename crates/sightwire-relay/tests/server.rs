//! The relay server on loopback: two endpoints bind, exchange data, and the server
//! shuts down cleanly.

use std::net::SocketAddr;
use std::time::Duration;

use sightwire_relay::wire::BIND_LEN;
use sightwire_relay::{Relay, RelayConfig, RelayPacket, RelayServer, unix_now};
use sightwire_signal::grant::{GrantClaims, GrantRole, RelayGrantKey};
use tokio::net::UdpSocket;
use tokio::time::timeout;

async fn recv(socket: &UdpSocket, buf: &mut [u8]) -> usize {
    timeout(Duration::from_secs(5), socket.recv(buf))
        .await
        .expect("relay answered in time")
        .expect("recv")
}

#[tokio::test]
async fn two_endpoints_exchange_data_through_the_relay() {
    let key = RelayGrantKey::from_bytes([5; 32]);
    let server = RelayServer::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Relay::new(RelayConfig::default(), key.clone()),
    )
    .await
    .unwrap();
    let relay_addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(server.run(stopped));

    let mut channel = 0;
    let mut sockets = Vec::new();
    for role in [GrantRole::Device, GrantRole::Viewer] {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(relay_addr).await.unwrap();
        let token = key.seal(
            &GrantClaims {
                allocation_id: [9; 16],
                role,
                expires_at: unix_now() + 60,
                device_id: sightwire_signal::DeviceId::from_bytes([
                    0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef,
                ])
                .expect("a unicast address"),
                device_key: [1; 32].into(),
                viewer_key: [2; 32].into(),
            },
            [role as u8; 12],
        );
        let mut packet = [0u8; BIND_LEN];
        RelayPacket::Bind {
            token,
            cookie: None,
        }
        .encode(&mut packet)
        .unwrap();
        socket.send(&packet).await.unwrap();
        let mut buf = [0u8; 64];
        let len = recv(&socket, &mut buf).await;
        match RelayPacket::decode(&buf[..len]).unwrap() {
            RelayPacket::Bound { channel: c, .. } => channel = c,
            other => panic!("{other:?}"),
        }
        sockets.push(socket);
    }

    let mut packet = [0u8; 1500];
    for (from, to) in [(0, 1), (1, 0)] {
        let payload: Vec<u8> = (0..1200).map(|i| (i * 7 + from) as u8).collect();
        let len = RelayPacket::Data {
            channel,
            payload: &payload,
        }
        .encode(&mut packet)
        .unwrap();
        sockets[from].send(&packet[..len]).await.unwrap();
        let mut buf = [0u8; 1500];
        let got = recv(&sockets[to], &mut buf).await;
        assert_eq!(&buf[..got], &packet[..len], "forwarded byte for byte");
    }

    stop.send(true).unwrap();
    let stats = timeout(Duration::from_secs(5), task)
        .await
        .expect("shut down in time")
        .unwrap()
        .unwrap();
    assert_eq!(stats.binds, 2);
    assert_eq!(stats.forwarded_packets, 2);
}
