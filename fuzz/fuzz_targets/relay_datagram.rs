#![no_main]
//! The relay's entry point on arbitrary datagrams: never panics, never answers with more
//! bytes than it received, never forwards to the sender.
use std::time::{Duration, Instant};

use sightwire_relay::{Action, Relay, RelayConfig};
use sightwire_signal::grant::RelayGrantKey;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut config = RelayConfig::default();
    config.max_allocations = 4;
    let mut relay = Relay::new(config, RelayGrantKey::from_bytes([7; 32]));
    let now = Instant::now();
    let mut reply = [0u8; 64];
    // Split the input into datagrams at 0xFF bytes, each from one of four addresses.
    for (i, datagram) in data.split(|b| *b == 0xFF).enumerate() {
        let from = std::net::SocketAddr::from(([192, 0, 2, (i % 4) as u8], 4000));
        let at = now + Duration::from_millis(i as u64 * 100);
        match relay.handle_datagram(at, 1_900_000_000, from, datagram, &mut reply) {
            Action::Reply(len) => assert!(len < datagram.len()),
            Action::Forward(to) => assert_ne!(to, from),
            Action::Drop(_) => {}
        }
        relay.handle_timeout(at);
    }
});
