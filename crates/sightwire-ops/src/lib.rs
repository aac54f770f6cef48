//! What a Sightwire server (`sightwire-rendezvous`, `sightwire-relay`) needs to be run by an
//! operator, beside its protocol: a UDP socket whose kernel buffers are sized for a busy
//! node ([`udp`]), counters exported in the Prometheus text format with liveness and
//! readiness endpoints ([`metrics`], [`http`]), and text or JSON logs (`log`, feature
//! `log`).
//!
//! What it is not for: it knows no protocol. A server describes its counters as a table of
//! [`metrics::Metric`]s over a snapshot type of its own, and its driver publishes a
//! snapshot after each turn of its loop: relaxed atomic stores, no lock on the packet
//! path. The HTTP responder serves those values to a scraper on another task.
//!
//! ```
//! use std::sync::Arc;
//! use sightwire_ops::metrics::{Kind, Metric, Metrics};
//!
//! struct Snapshot { packets: u64, online: usize }
//! static METRICS: &[Metric<Snapshot>] = &[
//!     Metric::new("demo_packets_total", "Packets handled.", Kind::Counter, |s| s.packets),
//!     Metric::new("demo_online", "Peers online.", Kind::Gauge, |s| s.online as u64),
//! ];
//! let metrics = Arc::new(Metrics::new(METRICS));
//! metrics.publish(&Snapshot { packets: 3, online: 1 });
//! let text = metrics.render();
//! assert!(text.contains("# TYPE demo_packets_total counter\ndemo_packets_total 3\n"));
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

pub mod http;
#[cfg(feature = "log")]
pub mod log;
pub mod metrics;
pub mod udp;
