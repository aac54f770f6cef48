//! The sans-IO relay against every limit it has.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sightwire_relay::wire::{BIND_LEN, DATA_HEADER_LEN};
use sightwire_relay::{Action, DropReason, RefusalReason, Relay, RelayConfig, RelayPacket};
use sightwire_signal::grant::{GrantClaims, GrantRole, RelayGrantKey, RelayGrantToken};

const UNIX_NOW: u64 = 1_900_000_000;

fn key() -> RelayGrantKey {
    RelayGrantKey::from_bytes([0x42; 32])
}

fn grant(allocation: u8, role: GrantRole) -> RelayGrantToken {
    key().seal(&GrantClaims {
        allocation_id: [allocation; 16],
        role,
        expires_at: UNIX_NOW + 600,
        device_id: [0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef],
        device_key: [2; 32],
        viewer_key: [3; 32],
    })
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

struct Harness {
    relay: Relay,
    now: Instant,
    reply: [u8; 64],
}

impl Harness {
    fn new(config: RelayConfig) -> Self {
        Self {
            relay: Relay::new(config, key()),
            now: Instant::now(),
            reply: [0; 64],
        }
    }

    fn bind(&mut self, from: SocketAddr, token: RelayGrantToken) -> RelayPacket<'_> {
        let mut packet = [0u8; BIND_LEN];
        RelayPacket::Bind { token }.encode(&mut packet).unwrap();
        match self
            .relay
            .handle_datagram(self.now, UNIX_NOW, from, &packet, &mut self.reply)
        {
            Action::Reply(len) => {
                assert!(len < BIND_LEN, "reply larger than request");
                RelayPacket::decode(&self.reply[..len]).unwrap()
            }
            other => panic!("bind answered with {other:?}"),
        }
    }

    fn channel(&mut self, from: SocketAddr, token: RelayGrantToken) -> u64 {
        match self.bind(from, token) {
            RelayPacket::Bound { channel, .. } => channel,
            other => panic!("not bound: {other:?}"),
        }
    }

    fn data(&mut self, from: SocketAddr, channel: u64, payload_len: usize) -> Action {
        let payload = vec![0xAB; payload_len];
        let mut packet = vec![0u8; DATA_HEADER_LEN + payload_len];
        RelayPacket::Data {
            channel,
            payload: &payload,
        }
        .encode(&mut packet)
        .unwrap();
        self.relay
            .handle_datagram(self.now, UNIX_NOW, from, &packet, &mut self.reply)
    }

    /// Binds both sides of allocation `n` and returns its channel.
    fn pair(&mut self, n: u8, device: SocketAddr, viewer: SocketAddr) -> u64 {
        let channel = self.channel(device, grant(n, GrantRole::Device));
        assert_eq!(self.channel(viewer, grant(n, GrantRole::Viewer)), channel);
        channel
    }
}

#[test]
fn forwards_both_ways_only_between_bound_sides() {
    let mut h = Harness::new(RelayConfig::default());
    let (device, viewer, stranger) = (addr(1), addr(2), addr(3));
    let channel = h.channel(device, grant(1, GrantRole::Device));
    assert_eq!(
        h.data(device, channel, 100),
        Action::Drop(DropReason::PeerNotBound)
    );
    match h.bind(viewer, grant(1, GrantRole::Viewer)) {
        RelayPacket::Bound {
            channel: c,
            role: GrantRole::Viewer,
            peer_bound: true,
        } => assert_eq!(c, channel),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.data(device, channel, 1200), Action::Forward(viewer));
    assert_eq!(h.data(viewer, channel, 200), Action::Forward(device));
    assert_eq!(
        h.data(stranger, channel, 10),
        Action::Drop(DropReason::WrongSource)
    );
    assert_eq!(
        h.data(device, channel ^ 1, 10),
        Action::Drop(DropReason::UnknownChannel)
    );
    let stats = h.relay.stats();
    assert_eq!(stats.forwarded_packets, 2);
    assert_eq!(
        stats.forwarded_bytes,
        (1200 + 200 + 2 * DATA_HEADER_LEN) as u64
    );
    assert_eq!(stats.dropped_wrong_source, 1);
    assert_eq!(stats.dropped_unknown_channel, 1);
}

#[test]
fn rebinding_moves_a_side_for_roaming() {
    let mut h = Harness::new(RelayConfig::default());
    let channel = h.pair(1, addr(1), addr(2));
    h.bind(addr(9), grant(1, GrantRole::Viewer));
    assert_eq!(h.data(addr(1), channel, 10), Action::Forward(addr(9)));
    assert_eq!(
        h.data(addr(2), channel, 10),
        Action::Drop(DropReason::WrongSource)
    );
}

#[test]
fn bad_and_expired_grants_are_refused() {
    let mut h = Harness::new(RelayConfig::default());
    let forged = RelayGrantKey::from_bytes([1; 32]).seal(&GrantClaims {
        allocation_id: [1; 16],
        role: GrantRole::Device,
        expires_at: UNIX_NOW + 600,
        device_id: [0x1c, 0, 0, 0, 0, 1],
        device_key: [0; 32],
        viewer_key: [0; 32],
    });
    assert_eq!(
        h.bind(addr(1), forged),
        RelayPacket::BindRefused {
            reason: RefusalReason::InvalidGrant
        }
    );
    let expired = key().seal(&GrantClaims {
        allocation_id: [1; 16],
        role: GrantRole::Device,
        expires_at: UNIX_NOW - 1,
        device_id: [0x1c, 0, 0, 0, 0, 1],
        device_key: [0; 32],
        viewer_key: [0; 32],
    });
    assert_eq!(
        h.bind(addr(1), expired),
        RelayPacket::BindRefused {
            reason: RefusalReason::Expired
        }
    );
    assert_eq!(h.relay.allocation_count(), 0);
    assert_eq!(h.relay.stats().binds_refused, 2);
}

#[test]
fn allocation_table_limit() {
    let mut h = Harness::new(RelayConfig {
        max_allocations: 3,
        ..RelayConfig::default()
    });
    for n in 0..3 {
        h.pair(n, addr(10 + u16::from(n)), addr(20 + u16::from(n)));
    }
    assert_eq!(
        h.bind(addr(99), grant(3, GrantRole::Device)),
        RelayPacket::BindRefused {
            reason: RefusalReason::TableFull
        }
    );
    // Existing allocations keep working, and may still rebind.
    assert!(matches!(
        h.bind(addr(30), grant(1, GrantRole::Device)),
        RelayPacket::Bound { .. }
    ));
    assert_eq!(h.relay.allocation_count(), 3);
}

#[test]
fn idle_allocations_expire_and_active_ones_stay() {
    let idle = Duration::from_secs(60);
    let mut h = Harness::new(RelayConfig {
        idle_timeout: idle,
        ..RelayConfig::default()
    });
    let quiet = h.pair(1, addr(1), addr(2));
    let busy = h.pair(2, addr(3), addr(4));
    let start = h.now;
    assert_eq!(h.relay.poll_timeout(), Some(start + idle));
    for step in 1..=4 {
        h.now = start + Duration::from_secs(30 * step);
        assert_eq!(h.data(addr(3), busy, 10), Action::Forward(addr(4)));
        h.relay.handle_timeout(h.now);
    }
    assert_eq!(
        h.data(addr(1), quiet, 10),
        Action::Drop(DropReason::UnknownChannel)
    );
    assert_eq!(h.data(addr(3), busy, 10), Action::Forward(addr(4)));
    assert_eq!(h.relay.allocation_count(), 1);
    assert_eq!(h.relay.stats().expired_allocations, 1);
}

#[test]
fn rate_cap_drops_excess_and_refills() {
    let mut h = Harness::new(RelayConfig {
        rate_bytes_per_sec: 100_000,
        rate_burst_bytes: 10_000,
        ..RelayConfig::default()
    });
    let channel = h.pair(1, addr(1), addr(2));
    let packet = 1000 + DATA_HEADER_LEN;
    let mut forwarded = 0;
    while h.data(addr(1), channel, 1000) == Action::Forward(addr(2)) {
        forwarded += 1;
        assert!(forwarded < 100, "rate cap never hit");
    }
    assert_eq!(forwarded, 10_000 / packet);
    assert_eq!(h.relay.stats().dropped_over_limit, 1);
    // 50 ms later, 5000 bytes of budget are back.
    h.now += Duration::from_millis(50);
    let mut refilled = 0;
    while h.data(addr(1), channel, 1000) == Action::Forward(addr(2)) {
        refilled += 1;
    }
    assert_eq!(refilled, (5_000 + 10_000 % packet) / packet);
}

#[test]
fn huge_rate_configs_saturate_instead_of_overflowing() {
    let mut h = Harness::new(RelayConfig {
        rate_bytes_per_sec: u64::MAX,
        rate_burst_bytes: u64::MAX,
        ..RelayConfig::default()
    });
    let channel = h.pair(1, addr(1), addr(2));
    for _ in 0..100 {
        assert_eq!(h.data(addr(1), channel, 1000), Action::Forward(addr(2)));
    }
    h.now += Duration::from_secs(1 << 30);
    assert_eq!(h.data(addr(1), channel, 1000), Action::Forward(addr(2)));
}

#[test]
fn byte_cap_ends_forwarding() {
    let mut h = Harness::new(RelayConfig {
        max_bytes_per_allocation: 5_000,
        ..RelayConfig::default()
    });
    let channel = h.pair(1, addr(1), addr(2));
    let mut forwarded = 0;
    for _ in 0..20 {
        h.now += Duration::from_secs(1);
        if h.data(addr(1), channel, 991) == Action::Forward(addr(2)) {
            forwarded += 1;
        }
    }
    assert_eq!(forwarded, 5);
    assert_eq!(h.relay.stats().dropped_over_limit, 15);
}

#[test]
fn bind_rate_limit_bounds_hmac_work() {
    let mut h = Harness::new(RelayConfig {
        binds_per_sec: 5,
        ..RelayConfig::default()
    });
    let garbage = RelayGrantToken([0; 128]);
    for _ in 0..5 {
        assert_eq!(
            h.bind(addr(1), garbage),
            RelayPacket::BindRefused {
                reason: RefusalReason::InvalidGrant
            }
        );
    }
    assert_eq!(
        h.bind(addr(1), grant(1, GrantRole::Device)),
        RelayPacket::BindRefused {
            reason: RefusalReason::RateLimited
        }
    );
    h.now += Duration::from_secs(1);
    assert!(matches!(
        h.bind(addr(1), grant(1, GrantRole::Device)),
        RelayPacket::Bound { .. }
    ));
}

#[test]
fn never_reflects_to_the_sender() {
    let mut h = Harness::new(RelayConfig::default());
    let channel = h.pair(1, addr(1), addr(1));
    assert_eq!(
        h.data(addr(1), channel, 10),
        Action::Drop(DropReason::Reflection)
    );
}

#[test]
fn relay_only_packets_from_a_peer_are_dropped() {
    let mut h = Harness::new(RelayConfig::default());
    let mut reply = [0u8; 64];
    for packet in [
        &[0x31u8; 11][..],
        &[0x33, 1][..],
        &[][..],
        &[0x7f, 1, 2][..],
    ] {
        assert_eq!(
            h.relay
                .handle_datagram(h.now, UNIX_NOW, addr(1), packet, &mut reply),
            Action::Drop(DropReason::Malformed)
        );
    }
    assert_eq!(h.relay.stats().dropped_malformed, 4);
}

proptest! {
    /// Any mix of datagrams (garbage, binds, data) never panics, never replies with more
    /// bytes than it received, and never holds more allocations than configured.
    #[test]
    fn hostile_traffic_is_bounded(
        ops in prop::collection::vec((0u8..4, 0u8..6, 0u16..6, prop::collection::vec(any::<u8>(), 0..200)), 1..200)
    ) {
        let mut h = Harness::new(RelayConfig { max_allocations: 3, ..RelayConfig::default() });
        let mut reply = [0u8; 64];
        for (kind, allocation, port, bytes) in ops {
            let from = addr(port);
            let mut packet = vec![0u8; 1600];
            let len = match kind {
                0 => { packet[..bytes.len()].copy_from_slice(&bytes); bytes.len() }
                1 => RelayPacket::Bind { token: grant(allocation, GrantRole::Device) }.encode(&mut packet).unwrap(),
                2 => RelayPacket::Bind { token: grant(allocation, GrantRole::Viewer) }.encode(&mut packet).unwrap(),
                _ => RelayPacket::Data { channel: u64::from_be_bytes([allocation; 8]), payload: &bytes }.encode(&mut packet).unwrap(),
            };
            h.now += Duration::from_millis(u64::from(port) * 7);
            match h.relay.handle_datagram(h.now, UNIX_NOW, from, &packet[..len], &mut reply) {
                Action::Reply(reply_len) => prop_assert!(reply_len < len),
                Action::Forward(to) => prop_assert_ne!(to, from),
                Action::Drop(_) => {}
            }
            h.relay.handle_timeout(h.now);
            prop_assert!(h.relay.allocation_count() <= 3);
        }
    }
}
