//! Pieces shared by the example peers (`camera`, `viewer`, `demo`) and their tests:
//! a loopback deployment ([`local::LocalNetwork`]), H.264 access-unit splitting
//! ([`annexb`]), frame sources ([`source`]) and the camera's identity on disk
//! ([`identity`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod annexb;
pub mod identity;
pub mod local;
pub mod mp4;
pub mod rtsp;
pub mod source;

/// Resolves on Ctrl-C or SIGTERM: either way a peer finalizes its output and says
/// goodbye before exiting.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
