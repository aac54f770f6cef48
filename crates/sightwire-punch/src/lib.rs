//! Hole punching for Sightwire: a sans-IO agent that finds a working UDP path between a
//! camera and a viewer that are both behind NATs, and keeps it working.
//!
//! The [`Agent`] gathers candidates (host addresses, the server-reflexive address the
//! rendezvous saw, peer-reflexive addresses learned from checks, the relay), runs
//! authenticated connectivity checks ([`probe`]) timed by the rendezvous so both sides
//! punch together, handles Linux's conntrack race with low-TTL opening packets, tries
//! bounded port prediction against endpoint-dependent NATs, nominates the best working
//! pair (LAN > direct > relay), falls back to the relay by a deadline and upgrades back to
//! a direct path when one starts working, keeps the selected path alive and detects its
//! loss, and recovers after a network change. The wire format, timers and strategy are
//! specified in `spec/punch.md`.
//!
//! What it is not for: it owns no socket and reads no clock (time comes in as `now`),
//! does no relay framing (the driver wraps transmits marked
//! [`Transmit::via_relay`]), carries no media and gives no confidentiality: the peer
//! Noise session (`sightwire-session`) authenticates the peer itself. A working path
//! here only means "someone holding this attempt's key answers at that address".
//!
//! # Run loop
//!
//! After **every** input (`handle_datagram`, `handle_signal`, `handle_timeout`,
//! `network_changed`) drain `poll_transmit`, `poll_signal` and `poll_event` until each
//! returns `None`, then sleep until `poll_timeout`.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//! use sightwire_punch::{
//!     Agent, Candidate, CandidateKind, CandidateSet, Config, Event, PunchKey, PunchSignal,
//!     Role, StartAttempt,
//! };
//!
//! let viewer_addr: SocketAddr = "192.168.1.10:5000".parse()?;
//! let camera_addr: SocketAddr = "192.168.1.20:6000".parse()?;
//! let mut viewer = Agent::new(Config::new(vec![viewer_addr], 1));
//! let mut camera = Agent::new(Config::new(vec![camera_addr], 2));
//!
//! // The rendezvous starts both sides with one key and each other's candidates.
//! let now = Instant::now();
//! let key = PunchKey::new([42; 32]);
//! let start = |role, peer: SocketAddr| PunchSignal::Start(StartAttempt {
//!     role,
//!     key: key.clone(),
//!     start_in: Duration::ZERO,
//!     local_reflexive: None,
//!     relay: None,
//!     remote: CandidateSet {
//!         generation: 0,
//!         candidates: vec![Candidate::new(CandidateKind::Host, peer)],
//!     },
//! });
//! viewer.handle_signal(now, start(Role::Controlling, camera_addr));
//! camera.handle_signal(now, start(Role::Controlled, viewer_addr));
//!
//! // A perfect LAN: hand every transmit straight to the other agent, 10 ms per round.
//! let addrs = [viewer_addr, camera_addr];
//! let mut agents = [viewer, camera];
//! let mut events = Vec::new();
//! let mut now = now;
//! for _ in 0..20 {
//!     now += Duration::from_millis(10);
//!     for i in 0..2 {
//!         agents[i].handle_timeout(now);
//!         while let Some(transmit) = agents[i].poll_transmit() {
//!             assert_eq!(transmit.destination, addrs[1 - i]);
//!             agents[1 - i].handle_datagram(now, addrs[i], transmit.payload());
//!         }
//!         while let Some(event) = agents[i].poll_event() {
//!             events.push(event);
//!         }
//!         while agents[i].poll_signal().is_some() {}
//!     }
//! }
//! assert!(matches!(events.as_slice(), [Event::Connected(_), Event::Connected(_)]));
//! let [viewer, _camera] = agents;
//! assert_eq!(viewer.selected_path().map(|p| p.remote), Some(camera_addr));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

mod agent;
pub mod probe;
mod role;
mod signal;

pub use agent::{
    Agent, BACKGROUND_CHECK_INTERVAL, CHECK_RTO_INITIAL, CHECK_RTO_MAX, Config, DIRECT_WINDOW,
    Event, FAIL_AFTER, FailReason, KEEPALIVE_INTERVAL, LAN_WAIT, LIVENESS_RETRIES, LIVENESS_RTO,
    MAX_EVENT_QUEUE, MAX_HOST_CANDIDATES, MAX_PAIRS, MAX_PEER_REFLEXIVE, MAX_PENDING_TRANSACTIONS,
    MAX_PREDICTION_PROBES, MAX_REMOTE_CANDIDATES, MAX_TRANSMIT_QUEUE, NOMINATION_RETRIES,
    OPEN_LEAD, OPEN_TTL, PREDICTION_AFTER, PREDICTION_ROUND_INTERVAL, PREDICTION_WINDOW,
    PROBE_BURST, PROBE_RATE_PER_SECOND, PathInfo, PathKind, RECOVERY_FAIL_AFTER, RELAY_AFTER,
    REOPEN_EVERY, REPLAY_WINDOW, REPUNCH_INTERVAL, REPUNCH_WINDOW, Stats, Transmit,
};
pub use probe::{ProbeError, PunchKey, is_punch_packet};
pub use role::Role;
pub use signal::{
    Candidate, CandidateKind, CandidateSet, MAX_CANDIDATES_PER_SET, PunchSignal, StartAttempt,
    is_private,
};

/// Fuzzing entry points; not part of the stable API.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::time::{Duration, Instant};

    use crate::probe::{MAX_PROBE_LEN, Probe};
    use crate::{
        Agent, Candidate, CandidateKind, CandidateSet, Config, PunchKey, PunchSignal, Role,
        StartAttempt,
    };

    /// Key used by the fuzz entry points (fixed so inputs can carry valid tags).
    pub const FUZZ_KEY: [u8; 32] = [0x5a; 32];

    /// Decodes `data` as a probe; whatever decodes must re-encode to the same bytes.
    pub fn probe_decode(data: &[u8]) {
        let key = PunchKey::new(FUZZ_KEY);
        if let Ok(probe) = Probe::decode(data, &key) {
            let mut buf = [0u8; MAX_PROBE_LEN];
            let len = probe.encode(&key, &mut buf);
            assert_eq!(buf.get(..len), Some(data));
        }
    }

    /// Feeds `data` to a running agent as a series of datagrams: each chunk is a
    /// length byte, a source selector byte and the datagram, with timeouts in between.
    /// Checks that every queue stays within its limit.
    pub fn agent_datagrams(data: &[u8]) {
        let now = Instant::now();
        let peer = |n: u8| {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, n)),
                4000 + u16::from(n),
            )
        };
        let mut agent = Agent::new(Config {
            host_candidates: vec![peer(200)],
            seed: 9,
        });
        agent.handle_signal(
            now,
            PunchSignal::Start(StartAttempt {
                role: if data.first().is_some_and(|b| b & 1 == 1) {
                    Role::Controlling
                } else {
                    Role::Controlled
                },
                key: PunchKey::new(FUZZ_KEY),
                start_in: Duration::ZERO,
                local_reflexive: None,
                relay: Some(peer(250)),
                remote: CandidateSet {
                    generation: 0,
                    candidates: vec![
                        Candidate::new(CandidateKind::ServerReflexive, peer(1)),
                        Candidate::new(CandidateKind::Relay, peer(250)),
                    ],
                },
            }),
        );
        let mut rest = data.get(1..).unwrap_or(&[]);
        let mut t = now;
        let mut transmits = 0usize;
        while let [len, source, tail @ ..] = rest {
            let len = usize::from(*len).min(tail.len());
            let (datagram, next) = tail.split_at(len);
            t += Duration::from_millis(u64::from(*source & 0x0f) * 37);
            agent.handle_datagram(t, peer(source >> 4), datagram);
            agent.handle_timeout(t);
            while agent.poll_transmit().is_some() {
                transmits += 1;
            }
            while agent.poll_event().is_some() {}
            while agent.poll_signal().is_some() {}
            rest = next;
        }
        assert!(transmits as u64 <= agent.stats().probes_sent);
    }
}
