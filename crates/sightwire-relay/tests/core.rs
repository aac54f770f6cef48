//! The sans-IO relay against every limit it has.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sightwire_relay::wire::{BIND_ECHO_LEN, BIND_LEN, CHALLENGE_LEN, COOKIE_LEN, DATA_HEADER_LEN};
use sightwire_relay::{
    Action, COOKIE_EPOCH_SECS, DropReason, RefusalReason, Relay, RelayConfig, RelayPacket,
};
use sightwire_signal::grant::{
    GRANT_NONCE_LEN, GrantClaims, GrantRole, RelayGrantKey, RelayGrantToken,
};

const UNIX_NOW: u64 = 1_900_000_000;

fn key() -> RelayGrantKey {
    RelayGrantKey::from_bytes([0x42; 32])
}

fn claims(allocation: u8, role: GrantRole, expires_at: u64) -> GrantClaims {
    GrantClaims {
        allocation_id: [allocation; 16],
        role,
        expires_at,
        device_id: sightwire_signal::DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef])
            .expect("a unicast address"),
        device_key: [2; 32].into(),
        viewer_key: [3; 32].into(),
    }
}

/// A grant valid for 600 s (tests use a fixed nonce; the rendezvous draws a random one).
fn grant(allocation: u8, role: GrantRole) -> RelayGrantToken {
    key().seal(
        &claims(allocation, role, UNIX_NOW + 600),
        [allocation ^ role as u8; GRANT_NONCE_LEN],
    )
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], port))
}

struct Harness {
    relay: Relay,
    now: Instant,
    /// Wall-clock time, Unix seconds (grant expiry, cookie epochs).
    unix: u64,
    reply: [u8; 64],
}

impl Harness {
    fn new(config: RelayConfig) -> Self {
        Self {
            relay: Relay::new(config, key()),
            now: Instant::now(),
            unix: UNIX_NOW,
            reply: [0; 64],
        }
    }

    fn bind(&mut self, from: SocketAddr, token: RelayGrantToken) -> RelayPacket<'_> {
        self.bind_with(from, token, None)
    }

    fn bind_with(
        &mut self,
        from: SocketAddr,
        token: RelayGrantToken,
        cookie: Option<[u8; COOKIE_LEN]>,
    ) -> RelayPacket<'_> {
        let mut packet = [0u8; BIND_ECHO_LEN];
        let len = RelayPacket::Bind { token, cookie }
            .encode(&mut packet)
            .unwrap();
        match self
            .relay
            .handle_datagram(self.now, self.unix, from, &packet[..len], &mut self.reply)
        {
            Action::Reply(reply_len) => {
                assert!(reply_len < len, "reply larger than request");
                RelayPacket::decode(&self.reply[..reply_len]).unwrap()
            }
            other => panic!("bind answered with {other:?}"),
        }
    }

    /// Binds from `from`, expecting a challenge, and returns its cookie.
    fn challenged(&mut self, from: SocketAddr, token: RelayGrantToken) -> [u8; COOKIE_LEN] {
        match self.bind(from, token) {
            RelayPacket::Challenge { cookie, .. } => cookie,
            other => panic!("not challenged: {other:?}"),
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
            .handle_datagram(self.now, self.unix, from, &packet, &mut self.reply)
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
fn a_roaming_side_moves_after_answering_the_challenge() {
    let mut h = Harness::new(RelayConfig::default());
    let channel = h.pair(1, addr(1), addr(2));
    // Binding again from the bound address is idempotent: no challenge.
    assert!(matches!(
        h.bind(addr(2), grant(1, GrantRole::Viewer)),
        RelayPacket::Bound { .. }
    ));
    // From a new address: a challenge, sent to the new address, and nothing moves yet.
    let cookie = match h.bind(addr(9), grant(1, GrantRole::Viewer)) {
        RelayPacket::Challenge {
            channel: c,
            role: GrantRole::Viewer,
            cookie,
        } => {
            assert_eq!(c, channel);
            cookie
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(h.data(addr(1), channel, 10), Action::Forward(addr(2)));
    // Echoing the cookie from the new address moves the side.
    match h.bind_with(addr(9), grant(1, GrantRole::Viewer), Some(cookie)) {
        RelayPacket::Bound {
            channel: c,
            role: GrantRole::Viewer,
            peer_bound: true,
        } => assert_eq!(c, channel),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.data(addr(1), channel, 10), Action::Forward(addr(9)));
    assert_eq!(
        h.data(addr(2), channel, 10),
        Action::Drop(DropReason::WrongSource)
    );
    // The cookie was for the move 2 -> 9: once at 9 it cannot move the side anywhere
    // else (the old address is part of it).
    assert!(matches!(
        h.bind_with(addr(10), grant(1, GrantRole::Viewer), Some(cookie)),
        RelayPacket::Challenge { .. }
    ));
    let stats = h.relay.stats();
    assert_eq!((stats.binds_moved, stats.challenges_sent), (1, 2));
    assert_eq!(stats.cookies_invalid, 1);
}

#[test]
fn finding_8_bind_replay_from_spoofed_source_does_not_move_the_stream() {
    // Security issue 12, finding 8: a copied BIND replayed with a spoofed source moved
    // the viewer's side to that source, which then received the whole stream.
    let mut h = Harness::new(RelayConfig::default());
    let (device, viewer, victim) = (addr(1), addr(2), addr(7));
    let channel = h.pair(1, device, viewer);
    let copied = grant(1, GrantRole::Viewer);
    for _ in 0..100 {
        // The relay answers the spoofed source with a challenge, smaller than the BIND.
        let cookie = h.challenged(victim, copied);
        // The attacker never sees that cookie; guesses and replays of other cookies fail.
        for guess in [[0u8; COOKIE_LEN], [0xff; COOKIE_LEN]] {
            assert!(matches!(
                h.bind_with(victim, copied, Some(guess)),
                RelayPacket::Challenge { .. }
            ));
        }
        // A cookie sent to one address does not work from another one.
        assert!(matches!(
            h.bind_with(addr(8), copied, Some(cookie)),
            RelayPacket::Challenge { .. }
        ));
        // The stream keeps flowing to the real viewer, and only there.
        assert_eq!(h.data(device, channel, 1200), Action::Forward(viewer));
        assert_eq!(h.data(viewer, channel, 100), Action::Forward(device));
    }
    let stats = h.relay.stats();
    assert_eq!(stats.binds_moved, 0);
    assert_eq!(stats.challenges_sent, 400);
    assert_eq!(stats.cookies_invalid, 300);
    const { assert!(CHALLENGE_LEN < BIND_LEN) };
}

#[test]
fn a_challenge_cookie_lives_one_to_two_epochs() {
    let mut h = Harness::new(RelayConfig::default());
    let channel = h.pair(1, addr(1), addr(2));
    // Issued at the start of an epoch, still valid at the end of the next one...
    h.unix = UNIX_NOW - UNIX_NOW % COOKIE_EPOCH_SECS;
    let cookie = h.challenged(addr(9), grant(1, GrantRole::Viewer));
    h.unix += 2 * COOKIE_EPOCH_SECS - 1;
    let fresh = h.challenged(addr(8), grant(1, GrantRole::Viewer));
    // ...but not one second later.
    h.unix += 1;
    assert!(matches!(
        h.bind_with(addr(9), grant(1, GrantRole::Viewer), Some(cookie)),
        RelayPacket::Challenge { .. }
    ));
    assert_eq!(h.data(addr(1), channel, 10), Action::Forward(addr(2)));
    // A cookie from the previous epoch is accepted.
    assert!(matches!(
        h.bind_with(addr(8), grant(1, GrantRole::Viewer), Some(fresh)),
        RelayPacket::Bound { .. }
    ));
    assert_eq!(h.data(addr(1), channel, 10), Action::Forward(addr(8)));
}

#[test]
fn finding_8_expired_grant_cannot_bind_or_move() {
    // Security issue 12, finding 8: grant expiry was not enforced after the first bind.
    // Now every bind checks it; a bound allocation outlives its grant (until idle) but
    // can no longer be bound to or moved.
    let mut h = Harness::new(RelayConfig::default());
    let channel = h.pair(1, addr(1), addr(2));
    let cookie = h.challenged(addr(9), grant(1, GrantRole::Viewer));
    h.unix = UNIX_NOW + 601;
    let expired = RelayPacket::BindRefused {
        reason: RefusalReason::Expired,
    };
    assert_eq!(h.bind(addr(2), grant(1, GrantRole::Viewer)), expired);
    assert_eq!(h.bind(addr(9), grant(1, GrantRole::Viewer)), expired);
    assert_eq!(
        h.bind_with(addr(9), grant(1, GrantRole::Viewer), Some(cookie)),
        expired
    );
    // A fresh allocation cannot be made with an expired grant either.
    assert_eq!(h.bind(addr(3), grant(2, GrantRole::Device)), expired);
    assert_eq!(h.relay.allocation_count(), 1);
    // The bound allocation keeps forwarding between its addresses until it idles out.
    assert_eq!(h.data(addr(1), channel, 10), Action::Forward(addr(2)));
    let stats = h.relay.stats();
    assert_eq!((stats.binds_expired, stats.binds_moved), (4, 0));
}

#[test]
fn bad_and_expired_grants_are_refused() {
    let mut h = Harness::new(RelayConfig::default());
    let forged = RelayGrantKey::from_bytes([1; 32]).seal(
        &claims(1, GrantRole::Device, UNIX_NOW + 600),
        [0; GRANT_NONCE_LEN],
    );
    assert_eq!(
        h.bind(addr(1), forged),
        RelayPacket::BindRefused {
            reason: RefusalReason::InvalidGrant
        }
    );
    let expired = key().seal(
        &claims(1, GrantRole::Device, UNIX_NOW - 1),
        [0; GRANT_NONCE_LEN],
    );
    assert_eq!(
        h.bind(addr(1), expired),
        RelayPacket::BindRefused {
            reason: RefusalReason::Expired
        }
    );
    assert_eq!(h.relay.allocation_count(), 0);
    let stats = h.relay.stats();
    assert_eq!(stats.binds_refused, 2);
    assert_eq!((stats.binds_invalid, stats.binds_expired), (1, 1));
}

#[test]
fn allocation_table_limit() {
    let mut h = Harness::new({
        let mut value = RelayConfig::default();
        value.max_allocations = 3;
        value
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
        h.bind(addr(11), grant(1, GrantRole::Device)),
        RelayPacket::Bound { .. }
    ));
    assert_eq!(h.relay.allocation_count(), 3);
}

#[test]
fn idle_allocations_expire_and_active_ones_stay() {
    let idle = Duration::from_secs(60);
    let mut h = Harness::new({
        let mut value = RelayConfig::default();
        value.idle_timeout = idle;
        value
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
    let mut h = Harness::new({
        let mut value = RelayConfig::default();
        value.rate_bytes_per_sec = 100_000;
        value.rate_burst_bytes = 10_000;
        value
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
    let mut h = Harness::new({
        let mut value = RelayConfig::default();
        value.rate_bytes_per_sec = u64::MAX;
        value.rate_burst_bytes = u64::MAX;
        value
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
    let mut h = Harness::new({
        let mut value = RelayConfig::default();
        value.max_bytes_per_allocation = 5_000;
        value
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
fn finding_6_garbage_binds_do_not_starve_honest_binds() {
    // Security issue 12, finding 6: a relay-wide bind budget charged before the token
    // was checked let ~10 Mbit/s of garbage BINDs make every honest bind fail. Now the
    // token is verified first and garbage is charged to nothing.
    let mut h = Harness::new(RelayConfig::default());
    let mut garbage = RelayGrantToken([0; 128]);
    for n in 0..20_000u32 {
        garbage.0[..4].copy_from_slice(&n.to_be_bytes());
        garbage.0[0] = 2;
        let from = SocketAddr::from(([198, 51, 100, (n % 250) as u8], 1000 + (n % 7) as u16));
        assert_eq!(
            h.bind(from, garbage),
            RelayPacket::BindRefused {
                reason: RefusalReason::InvalidGrant
            }
        );
    }
    // All within the same instant: honest binds still succeed, both sides.
    let channel = h.pair(1, addr(1), addr(2));
    assert_eq!(h.data(addr(1), channel, 10), Action::Forward(addr(2)));
    let stats = h.relay.stats();
    assert_eq!((stats.binds_invalid, stats.binds), (20_000, 2));
    assert_eq!(h.relay.allocation_count(), 1);
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
        &[
            0x34, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ][..],
        &[][..],
        &[0x7f, 1, 2][..],
    ] {
        assert_eq!(
            h.relay
                .handle_datagram(h.now, UNIX_NOW, addr(1), packet, &mut reply),
            Action::Drop(DropReason::Malformed)
        );
    }
    assert_eq!(h.relay.stats().dropped_malformed, 5);
}

proptest! {
    /// Any mix of datagrams (garbage, binds, data) never panics, never replies with more
    /// bytes than it received, and never holds more allocations than configured.
    #[test]
    fn hostile_traffic_is_bounded(
        ops in prop::collection::vec((0u8..4, 0u8..6, 0u16..6, prop::collection::vec(any::<u8>(), 0..200)), 1..200)
    ) {
        let mut h = Harness::new({ let mut value = RelayConfig::default(); value.max_allocations = 3; value });
        let mut reply = [0u8; 64];
        for (kind, allocation, port, bytes) in ops {
            let from = addr(port);
            let mut packet = vec![0u8; 1600];
            let len = match kind {
                0 => { packet[..bytes.len()].copy_from_slice(&bytes); bytes.len() }
                1 => RelayPacket::Bind { token: grant(allocation, GrantRole::Device), cookie: None }.encode(&mut packet).unwrap(),
                2 => RelayPacket::Bind { token: grant(allocation, GrantRole::Viewer), cookie: bytes.get(..COOKIE_LEN).and_then(|c| c.try_into().ok()) }.encode(&mut packet).unwrap(),
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
