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

/// Ctrl-C or SIGTERM: either way a peer finalizes its output and says goodbye before
/// exiting. The handlers are registered when this is called (a signal that arrives
/// before its handler exists kills the process); the future completes on either.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let terminate = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (terminate, interrupt) {
                (Ok(mut terminate), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
