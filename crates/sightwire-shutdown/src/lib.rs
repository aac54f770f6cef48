//! Graceful shutdown for Sightwire's binaries (`sightwire-relay`, `sightwire-rendezvous`,
//! the example peers): one future that completes on SIGTERM or SIGINT (Ctrl-C).
//!
//! What it is not for: it does not stop anything itself; the caller decides what a
//! graceful stop means (finish a recording, say goodbye to peers, drain a socket). It
//! is for binaries: a sans-IO core never sees a signal.
//!
//! Call [`shutdown_signal`] **before** announcing readiness: the handlers are installed
//! by the call, not when the future is first polled, and a SIGTERM that arrives before
//! its handler exists kills the process instead of stopping it gracefully.
//!
//! ```no_run
//! # async fn serve(_stop: impl std::future::Future<Output = ()>) {}
//! # async fn run() {
//! let shutdown = sightwire_shutdown::shutdown_signal();
//! println!("ready");
//! serve(shutdown).await;
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

use std::future::Future;

/// Installs the SIGTERM and SIGINT handlers now (on unix; Ctrl-C elsewhere) and returns
/// a future that completes when either signal arrives.
///
/// If a handler cannot be installed, the failure is logged and the future waits for
/// Ctrl-C only. Must be called inside a tokio runtime.
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
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM/SIGINT; stopping on Ctrl-C only");
                    ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c()
    }
}

async fn ctrl_c() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        // Nothing left to wait on: never complete rather than stop at once.
        tracing::warn!(%error, "cannot listen for Ctrl-C either");
        std::future::pending::<()>().await;
    }
}
