//! The listener and the client over real loopback TCP, and every listener limit.
#![cfg(feature = "tls")]

use std::net::SocketAddr;
use std::time::Duration;

use sightwire_stream::tls::{
    ClientEvent, ListenerConfig, StreamClient, StreamListener, TlsIdentity, connect,
};
use sightwire_stream::{MAX_FRAME_LEN, is_stream_peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

async fn listener(config: ListenerConfig) -> StreamListener {
    let identity = TlsIdentity::self_signed(vec!["localhost".into()]).unwrap();
    StreamListener::bind("127.0.0.1:0".parse().unwrap(), &identity, config)
        .await
        .unwrap()
}

fn key() -> SocketAddr {
    "192.0.2.1:3478".parse().unwrap()
}

#[tokio::test]
async fn datagrams_go_both_ways_under_a_virtual_address() {
    let mut listener = listener(ListenerConfig::default()).await;
    let (events_tx, mut events) = mpsc::channel(16);
    let client = StreamClient::spawn(key(), listener.local_addr(), None, events_tx);
    assert!(client.send(b"\x01hello"));
    let (peer, datagram) = timeout(WAIT, listener.recv()).await.unwrap().unwrap();
    assert_eq!(&datagram[..], b"\x01hello");
    assert!(is_stream_peer(peer));
    assert!(listener.send(peer, &[0x31; MAX_FRAME_LEN]));
    let event = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert_eq!(
        event,
        ClientEvent::Datagram(key(), vec![0x31; MAX_FRAME_LEN].into())
    );
    assert_eq!(listener.stats().accepted, 1);
    assert!(!listener.send("[100::1]:0".parse().unwrap(), b"x"));
    drop(client);
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() {
    let mut listener = listener({
        let mut value = ListenerConfig::default();
        value.max_connections = 1;
        value
    })
    .await;
    let (events_tx, _events) = mpsc::channel(16);
    let first = StreamClient::spawn(key(), listener.local_addr(), None, events_tx);
    first.send(b"\x01a");
    timeout(WAIT, listener.recv()).await.unwrap().unwrap();
    assert_eq!(listener.connections(), 1);
    // The second is accepted by the kernel and closed by the listener.
    let mut second = tokio::net::TcpStream::connect(listener.local_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = timeout(WAIT, second.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(listener.stats().refused_full, 1);
    assert_eq!(listener.connections(), 1);
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let listener = listener({
        let mut value = ListenerConfig::default();
        value.idle_timeout = Duration::from_millis(300);
        value
    })
    .await;
    let (events_tx, mut events) = mpsc::channel(16);
    let client = StreamClient::spawn(key(), listener.local_addr(), None, events_tx);
    client.send(b"\x01a");
    let started = std::time::Instant::now();
    let event = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert_eq!(event, ClientEvent::Closed(key()));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(listener.stats().closed_idle, 1);
}

#[tokio::test]
async fn a_slow_client_loses_datagrams_beyond_its_queue() {
    let mut listener = listener({
        let mut value = ListenerConfig::default();
        value.max_queued = 4;
        value
    })
    .await;
    // A client that never reads.
    let mut tls = connect(listener.local_addr(), None).await.unwrap();
    tls.write_all(b"SWS\x01\x00\x01\x01").await.unwrap();
    tls.flush().await.unwrap();
    let (peer, _) = timeout(WAIT, listener.recv()).await.unwrap().unwrap();
    // No await between sends: the writer task cannot drain the queue meanwhile.
    let sent = (0..100)
        .filter(|_| listener.send(peer, &[0x32; 1000]))
        .count();
    assert_eq!(sent, 4);
    assert_eq!(listener.stats().dropped_queue_full, 96);
}

#[tokio::test]
async fn a_malformed_stream_is_closed() {
    let listener = listener(ListenerConfig::default()).await;
    let mut tls = connect(listener.local_addr(), None).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 16];
    let read = timeout(WAIT, tls.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(listener.stats().closed_malformed, 1);
    // An oversize frame after a good preamble too.
    let mut tls = connect(listener.local_addr(), None).await.unwrap();
    tls.write_all(b"SWS\x01\xff\xff").await.unwrap();
    tls.flush().await.unwrap();
    let read = timeout(WAIT, tls.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(listener.stats().closed_malformed, 2);
}

#[tokio::test]
async fn a_client_to_nothing_reports_closed() {
    // A port nobody listens on (bound, then dropped).
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (events_tx, mut events) = mpsc::channel(16);
    let _client = StreamClient::spawn(key(), addr, None, events_tx);
    let event = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert_eq!(event, ClientEvent::Closed(key()));
}

#[tokio::test]
async fn a_connection_that_never_completes_tls_is_closed() {
    let listener = listener({
        let mut value = ListenerConfig::default();
        value.handshake_timeout = Duration::from_millis(300);
        value
    })
    .await;
    // TCP only: no ClientHello ever comes.
    let mut silent = tokio::net::TcpStream::connect(listener.local_addr())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = timeout(WAIT, silent.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(listener.stats().handshakes_failed, 1);
    assert_eq!(listener.stats().accepted, 0);
}
