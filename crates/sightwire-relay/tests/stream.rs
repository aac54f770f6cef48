//! A relay with a TCP/TLS stream listener (`spec/stream.md`, `spec/relay.md` "Stream
//! peers"): one side binds over UDP, the other over a stream, and DATA crosses between
//! them byte for byte, both ways.

use std::net::SocketAddr;
use std::time::Duration;

use sightwire_relay::{Relay, RelayConfig, RelayPacket, RelayServer, unix_now};
use sightwire_signal::grant::{GrantClaims, GrantRole, RelayGrantKey};
use sightwire_stream::tls::{
    ClientEvent, ListenerConfig, StreamClient, StreamListener, TlsIdentity,
};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn bind_packet(key: &RelayGrantKey, role: GrantRole) -> Vec<u8> {
    let claims = GrantClaims {
        allocation_id: [9; 16],
        role,
        expires_at: unix_now() + 600,
        device_id: sightwire_signal::DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef])
            .expect("a unicast address"),
        device_key: [2; 32].into(),
        viewer_key: [3; 32].into(),
    };
    let token = key.seal(&claims, [role as u8; 12]);
    let mut packet = [0u8; 256];
    let len = RelayPacket::Bind {
        token,
        cookie: None,
    }
    .encode(&mut packet)
    .unwrap();
    packet[..len].to_vec()
}

async fn next_datagram(events: &mut mpsc::Receiver<ClientEvent>) -> Vec<u8> {
    match timeout(WAIT, events.recv()).await.unwrap().unwrap() {
        ClientEvent::Datagram(_, datagram) => datagram.to_vec(),
        ClientEvent::Closed(_) => panic!("stream closed"),
    }
}

#[tokio::test]
async fn data_crosses_between_a_udp_side_and_a_stream_side() {
    let key = RelayGrantKey::from_bytes([4; 32]);
    let identity = TlsIdentity::self_signed(vec!["127.0.0.1".into()]).unwrap();
    let listener = StreamListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        ListenerConfig::default(),
    )
    .await
    .unwrap();
    let server = RelayServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        Relay::new(RelayConfig::default(), key.clone()),
    )
    .await
    .unwrap()
    .with_stream(listener);
    let relay: SocketAddr = server.local_addr().unwrap();
    let stream_addr = server.stream_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(server.run(stopped));

    // The camera binds over UDP.
    let camera = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    camera
        .send_to(&bind_packet(&key, GrantRole::Device), relay)
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let (len, _) = timeout(WAIT, camera.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let Ok(RelayPacket::Bound { channel, .. }) = RelayPacket::decode(&buf[..len]) else {
        panic!("camera not bound");
    };

    // The viewer binds over a stream, known by the relay's UDP address.
    let (events_tx, mut events) = mpsc::channel(16);
    let viewer = StreamClient::spawn(relay, stream_addr, None, events_tx);
    assert!(viewer.send(&bind_packet(&key, GrantRole::Viewer)));
    let bound = next_datagram(&mut events).await;
    assert!(matches!(
        RelayPacket::decode(&bound),
        Ok(RelayPacket::Bound {
            peer_bound: true,
            ..
        })
    ));

    // UDP → stream.
    let mut packet = [0u8; 2048];
    let payload = vec![0x07; 1400];
    let len = RelayPacket::Data {
        channel,
        payload: &payload,
    }
    .encode(&mut packet)
    .unwrap();
    camera.send_to(&packet[..len], relay).await.unwrap();
    assert_eq!(next_datagram(&mut events).await, packet[..len]);

    // Stream → UDP.
    let len = RelayPacket::Data {
        channel,
        payload: b"talk-back",
    }
    .encode(&mut packet)
    .unwrap();
    assert!(viewer.send(&packet[..len]));
    let (got, from) = timeout(WAIT, camera.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, relay);
    assert_eq!(buf[..got], packet[..len]);

    let _ = stop.send(true);
    let stats = timeout(WAIT, task).await.unwrap().unwrap().unwrap();
    assert_eq!(stats.binds, 2);
}
