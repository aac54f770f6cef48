//! A deliberately tiny HTTP/1.1 responder for `/metrics`, `/healthz` and `/readyz`.
//!
//! Why not a web framework: a server needs three fixed `GET` routes on an operator-only
//! address, and every dependency of a network-facing binary is code to audit. hyper would
//! be the well-kept choice, and brings a dozen crates and a general HTTP/1 and HTTP/2
//! parser to answer three paths; this is a hundred lines whose limits are all visible:
//!
//! - one request per connection (`Connection: close`), no body read, no keep-alive;
//! - the request head is read into a fixed buffer of [`HttpConfig::max_request_bytes`]; a
//!   head that does not fit, is not `METHOD SP path SP HTTP/1.x`, or is not ASCII gets
//!   `400 Bad Request`;
//! - a client has [`HttpConfig::timeout`] to send its head and take the answer;
//! - at most [`HttpConfig::max_connections`] connections are served at once; one more is
//!   answered `503` without reading and closed.
//!
//! Routes: `GET /metrics` (Prometheus text), `GET /healthz` (200 while the process runs
//! its event loop), `GET /readyz` (200 once the server marked itself ready, else 503).
//! `HEAD` is answered like `GET` without the body; other methods get 405, other paths 404.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// What the responder serves: the exposition text and the readiness flag.
pub trait Exporter: Send + Sync {
    /// The `/metrics` body.
    fn render(&self) -> String;
    /// Whether `/readyz` answers 200.
    fn is_ready(&self) -> bool;
}

impl<S> Exporter for Metrics<S> {
    fn render(&self) -> String {
        Metrics::render(self)
    }

    fn is_ready(&self) -> bool {
        Metrics::is_ready(self)
    }
}

/// Limits of the responder.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Connections served at once (default 16: a scraper and a health checker or two).
    pub max_connections: usize,
    /// Largest request head read, bytes (default 4096; a scraper sends ~200).
    pub max_request_bytes: usize,
    /// Time to read the head and write the answer (default 5 s).
    pub timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            max_request_bytes: 4096,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Binds `addr`, logs `metrics listening` with the bound address (the `metrics` field;
/// port 0 picks one), and serves it with the default limits on a new task. What both
/// server binaries do with their `--metrics-listen` address.
pub async fn spawn_listener(
    addr: std::net::SocketAddr,
    exporter: Arc<dyn Exporter>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(metrics = %bound, "metrics listening");
    tokio::spawn(serve(listener, exporter, HttpConfig::default()));
    Ok(bound)
}

/// Serves `listener` forever (the caller drops the future, or aborts its task, to stop).
/// Accept errors (out of file descriptors) are logged and retried after a pause; a
/// connection's errors end that connection only.
pub async fn serve(listener: TcpListener, exporter: Arc<dyn Exporter>, config: HttpConfig) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics listener: too many connections");
            // Best effort, never waits: the client learns why it is closed.
            let _ = stream.try_write(&response(503, "text/plain", b"busy\n", false));
            continue;
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let served = tokio::time::timeout(
                config.timeout,
                handle(stream, exporter.as_ref(), config.max_request_bytes),
            )
            .await;
            if let Ok(Err(error)) = served {
                tracing::debug!(%peer, %error, "metrics listener: connection failed");
            }
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    exporter: &dyn Exporter,
    max_request_bytes: usize,
) -> std::io::Result<()> {
    let mut head = vec![0u8; max_request_bytes];
    let mut len = 0;
    let complete = loop {
        if head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if len == head.len() {
            break false;
        }
        let n = stream.read(&mut head[len..]).await?;
        if n == 0 {
            if len == 0 {
                return Ok(());
            }
            break false;
        }
        len += n;
    };
    let answer = if complete {
        route(&head[..len], exporter)
    } else {
        response(400, "text/plain", b"bad request\n", false)
    };
    stream.write_all(&answer).await?;
    stream.shutdown().await
}

/// The answer to a complete request head.
fn route(head: &[u8], exporter: &dyn Exporter) -> Vec<u8> {
    let Some((method, path)) = request_line(head) else {
        return response(400, "text/plain", b"bad request\n", false);
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return response(405, "text/plain", b"method not allowed\n", false),
    };
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/metrics" => response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            exporter.render().as_bytes(),
            head_only,
        ),
        "/healthz" => response(200, "text/plain", b"ok\n", head_only),
        "/readyz" if exporter.is_ready() => response(200, "text/plain", b"ready\n", head_only),
        "/readyz" => response(503, "text/plain", b"not ready\n", head_only),
        _ => response(404, "text/plain", b"not found\n", head_only),
    }
}

/// `METHOD SP target SP HTTP/1.x` of a head, if it is one (printable ASCII, an
/// origin-form target).
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    if !line.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return None;
    }
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
    let ok = parts.next().is_none()
        && token(method)
        && target.starts_with('/')
        && (version == "HTTP/1.1" || version == "HTTP/1.0");
    ok.then_some((method, target))
}

fn response(status: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Fixed(bool);

    impl Exporter for Fixed {
        fn render(&self) -> String {
            "x_total 1\n".into()
        }
        fn is_ready(&self) -> bool {
            self.0
        }
    }

    fn status(answer: &[u8]) -> &str {
        std::str::from_utf8(&answer[9..12]).unwrap()
    }

    #[test]
    fn routes() {
        let ready = Fixed(true);
        let get = |path: &str| route(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes(), &ready);
        assert_eq!(status(&get("/metrics")), "200");
        assert!(get("/metrics").ends_with(b"\r\n\r\nx_total 1\n"));
        assert_eq!(status(&get("/metrics?x=1")), "200");
        assert_eq!(status(&get("/healthz")), "200");
        assert_eq!(status(&get("/readyz")), "200");
        assert_eq!(status(&get("/other")), "404");
        let not_ready = Fixed(false);
        assert_eq!(
            status(&route(b"GET /readyz HTTP/1.1\r\n\r\n", &not_ready)),
            "503"
        );
        let head = route(b"HEAD /metrics HTTP/1.0\r\n\r\n", &ready);
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(
            status(&route(b"POST /metrics HTTP/1.1\r\n\r\n", &ready)),
            "405"
        );
    }

    #[test]
    fn malformed_request_lines_are_400() {
        for head in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET /m\x00 HTTP/1.1\r\n\r\n",
            b"GET /m\xff HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
        ] {
            assert_eq!(status(&route(head, &Fixed(true))), "400", "{head:?}");
        }
    }

    proptest! {
        #[test]
        fn any_head_gets_an_answer(head in proptest::collection::vec(any::<u8>(), 0..600)) {
            let answer = route(&head, &Fixed(true));
            prop_assert!(answer.starts_with(b"HTTP/1.1 "));
        }
    }
}
