//! The responder on a real loopback listener: its limits (connections, request size,
//! time) are hit and it keeps serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sightwire_ops::http::{HttpConfig, serve};
use sightwire_ops::metrics::{Kind, Metric, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

static TABLE: &[Metric<u64>] = &[Metric::new("t_total", "T.", Kind::Counter, |v| *v)];

async fn start(config: HttpConfig) -> (SocketAddr, Arc<Metrics<u64>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new(TABLE));
    tokio::spawn(serve(listener, metrics.clone(), config));
    (addr, metrics)
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    // Half-close: a head that is incomplete now stays incomplete.
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn config(max_connections: usize, timeout: Duration) -> HttpConfig {
    let mut config = HttpConfig::default();
    config.max_connections = max_connections;
    config.timeout = timeout;
    config.max_request_bytes = 256;
    config
}

#[tokio::test]
async fn serves_published_values_and_readiness() {
    let (addr, metrics) = start(HttpConfig::default()).await;
    assert!(
        exchange(addr, b"GET /readyz HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 503")
    );
    metrics.publish(&42);
    metrics.set_ready(true);
    let answer = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n# HELP t_total T.\n# TYPE t_total counter\nt_total 42\n"));
    assert!(
        exchange(addr, b"GET /readyz HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn an_oversized_head_gets_400_and_the_listener_survives() {
    let (addr, _) = start(config(4, Duration::from_secs(5))).await;
    // 257 bytes without the end of the head: one more than the limit.
    let answer = exchange(addr, &[b'G'; 257]).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // A head that ends exactly at the limit is read whole.
    let mut fits = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
    fits.resize(252, b'x');
    fits.extend_from_slice(b"\r\n\r\n");
    assert_eq!(fits.len(), 256);
    assert!(exchange(addr, &fits).await.starts_with("HTTP/1.1 200"));
    // A client that closes half-way gets 400 too, and nothing breaks.
    assert!(
        exchange(addr, b"GET /hea")
            .await
            .starts_with("HTTP/1.1 400")
    );
    assert!(
        exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_and_slow_clients_time_out() {
    let (addr, _) = start(config(2, Duration::from_millis(300))).await;
    // Two idle connections take both permits.
    let idle = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    // Their time runs out; the server closes them and serves again.
    for mut stream in idle {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "an idle connection was not closed");
    }
    assert!(
        exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    );
}
