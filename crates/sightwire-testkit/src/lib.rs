//! Test support for Sightwire's sans-IO cores: one seeded random generator
//! ([`TestRng`]) and one driver loop ([`Network`]) that runs cores ([`Node`]s) on the
//! hosts of a [`sightwire_netsim`] simulation, in virtual time.
//!
//! Every crate's tests use this loop instead of writing their own: it hands each
//! packet and each due timer to the right core, then sends whatever the core wants
//! sent, as quinn-proto's test `Pair` and str0m's ICE tests do. A failing run replays
//! from its seed.
//!
//! What it is not for: production drivers (no sockets, no clock) or benchmarks. Its
//! helpers panic on misuse, which is what a test wants. Protocol logic stays in the
//! cores; a test wraps one in a small [`Node`] adapter that also records what the
//! test wants to check.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//! use sightwire_testkit::sightwire_netsim::*;
//! use sightwire_testkit::{Network, Node, SimTransmit};
//!
//! /// Answers every datagram with the same bytes.
//! #[derive(Default)]
//! struct Echo {
//!     outbox: Vec<SimTransmit>,
//! }
//!
//! impl Node for Echo {
//!     fn handle_datagram(&mut self, _: Instant, from: SocketAddr, to: SocketAddr, _: u8, payload: &[u8]) {
//!         self.outbox.push(SimTransmit { from: to, to: from, ttl: None, payload: payload.to_vec() });
//!     }
//!     fn handle_timeout(&mut self, _: Instant) {}
//!     fn poll_timeout(&mut self) -> Option<Instant> { None }
//!     fn poll_transmit(&mut self, _: Instant) -> Option<SimTransmit> { self.outbox.pop() }
//! }
//!
//! let mut net = Network::new(SimConfig::default());
//! let server_host = net.sim_mut().add_public_host("198.51.100.1".parse()?);
//! let nat = net.sim_mut().add_nat("203.0.113.1".parse()?, NatConfig::new(NatBehavior::Rfc4787 {
//!     mapping: Mapping::EndpointIndependent,
//!     filtering: Filtering::AddressAndPortDependent,
//!     ports: PortAllocation::Preserve,
//! }));
//! let client_host = net.sim_mut().add_host_behind(nat, "192.168.1.2".parse()?);
//! net.add_node(server_host, Box::new(Echo::default()));
//! let client = net.add_node(client_host, Box::new(Echo::default()));
//!
//! // The client's first datagram; the two then echo it back and forth.
//! net.node_mut::<Echo>(client).outbox.push(SimTransmit {
//!     from: "192.168.1.2:5000".parse()?,
//!     to: "198.51.100.1:7".parse()?,
//!     ttl: None,
//!     payload: b"ping".to_vec(),
//! });
//! net.run_for(Duration::from_millis(500));
//! // 41 ms per one-way trip (LAN 1 ms, two uplinks of 20 ms): 12 arrivals in 500 ms.
//! assert_eq!(net.sim().stats().delivered, 12);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod network;
mod rng;

pub use sightwire_netsim;

pub use network::{MAX_STEPS_AT_ONE_INSTANT, Network, Node, NodeId, SimTransmit};
pub use rng::TestRng;

#[cfg(test)]
mod tests;
