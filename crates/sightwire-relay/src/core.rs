//! The sans-IO relay: datagrams and the time in, what to send out.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sightwire_limits::{Rate, TokenBucket};
use sightwire_signal::grant::{GrantClaims, GrantError, GrantRole, RelayGrantKey, RelayGrantToken};

use crate::wire::{COOKIE_LEN, RefusalReason, RelayPacket};

/// HKDF info of the key that makes challenge cookies, derived from the grant key.
pub const COOKIE_KEY_CONTEXT: &[u8] = b"sightwire relay challenge cookie v1";
/// A challenge cookie is valid in the epoch (of this many seconds of Unix time) it was
/// made in and the next one: between 30 and 60 seconds.
pub const COOKIE_EPOCH_SECS: u64 = 30;

/// Limits and timers of a relay. Every field is a bound on what a stranger can make the
/// relay hold or do.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Most allocations held at once; binds for new allocations beyond it are refused
    /// with [`RefusalReason::TableFull`].
    pub max_allocations: usize,
    /// An allocation with no forwarded data for this long is removed.
    pub idle_timeout: Duration,
    /// Most bytes one allocation may forward in its lifetime (both directions); after
    /// that its data is dropped until it idles out.
    pub max_bytes_per_allocation: u64,
    /// Sustained forwarding rate per allocation, bytes per second (both directions).
    /// Values above `u32::MAX` (4 GB/s) count as `u32::MAX`.
    pub rate_bytes_per_sec: u64,
    /// Burst allowance on top of the rate, in bytes (the size of the allocation's token
    /// bucket). Values above `u32::MAX` count as `u32::MAX`.
    pub rate_burst_bytes: u64,
}

impl RelayConfig {
    /// The per-allocation forwarding rate as a bucket rate.
    fn data_rate(&self) -> Rate {
        Rate::new(
            u32::try_from(self.rate_bytes_per_sec).unwrap_or(u32::MAX),
            u32::try_from(self.rate_burst_bytes).unwrap_or(u32::MAX),
        )
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_allocations: 100_000,
            idle_timeout: Duration::from_secs(60),
            max_bytes_per_allocation: 64 << 30,
            // 40 Mbit/s: a 4K camera main stream with headroom.
            rate_bytes_per_sec: 5_000_000,
            rate_burst_bytes: 2_000_000,
        }
    }
}

/// What the driver does with the datagram it just passed to [`Relay::handle_datagram`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
#[allow(
    clippy::exhaustive_enums,
    reason = "the driver must carry out every action: a new one is a breaking change on purpose"
)]
pub enum Action {
    /// Send the same bytes, unchanged, to this address.
    Forward(SocketAddr),
    /// Send the first `len` bytes of the reply buffer back to the sender.
    Reply(usize),
    /// Send nothing.
    Drop(DropReason),
}

/// Why a datagram was dropped (each has a counter in [`RelayStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a relay packet, or a packet type only the relay sends.
    Malformed,
    /// Data for a channel the relay does not hold.
    UnknownChannel,
    /// Data from an address not bound to that channel.
    WrongSource,
    /// Data before the other side has bound.
    PeerNotBound,
    /// The allocation is over its rate or byte cap.
    OverLimit,
    /// Both sides are bound to the sender's own address; forwarding would reflect the
    /// packet back to where it came from.
    Reflection,
}

/// Counters, for logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Datagrams forwarded.
    pub forwarded_packets: u64,
    /// Bytes forwarded (whole datagrams).
    pub forwarded_bytes: u64,
    /// Binds accepted (answered BOUND), moves included.
    pub binds: u64,
    /// Binds that moved a bound side to a new address (after a challenge was answered).
    pub binds_moved: u64,
    /// Binds refused, any reason.
    pub binds_refused: u64,
    /// Binds refused because the token did not verify (malformed, forged, other key).
    pub binds_invalid: u64,
    /// Binds refused because the grant had expired.
    pub binds_expired: u64,
    /// Challenges sent: a bind from a new address for a side bound elsewhere.
    pub challenges_sent: u64,
    /// Binds that echoed a cookie that did not verify (stale, or for another address);
    /// each was answered with a fresh challenge.
    pub cookies_invalid: u64,
    /// Dropped: malformed.
    pub dropped_malformed: u64,
    /// Dropped: unknown channel.
    pub dropped_unknown_channel: u64,
    /// Dropped: wrong source address.
    pub dropped_wrong_source: u64,
    /// Dropped: the other side is not bound yet.
    pub dropped_peer_not_bound: u64,
    /// Dropped: over the rate or byte cap.
    pub dropped_over_limit: u64,
    /// Dropped: would have been reflected to its sender.
    pub dropped_reflection: u64,
    /// Allocations removed after idling.
    pub expired_allocations: u64,
}

#[derive(Debug)]
struct Allocation {
    allocation_id: [u8; 16],
    device: Option<SocketAddr>,
    viewer: Option<SocketAddr>,
    last_active: Instant,
    bytes_forwarded: u64,
    /// Forwarding rate, in bytes.
    bucket: TokenBucket,
}

impl Allocation {
    fn side_mut(&mut self, role: GrantRole) -> &mut Option<SocketAddr> {
        match role {
            GrantRole::Device => &mut self.device,
            GrantRole::Viewer => &mut self.viewer,
        }
    }

    /// Where data from `from` goes, if `from` is bound.
    fn other_side(&self, from: SocketAddr) -> Result<SocketAddr, DropReason> {
        let (peer, bound) = if self.device == Some(from) {
            (self.viewer, true)
        } else if self.viewer == Some(from) {
            (self.device, true)
        } else {
            (None, false)
        };
        match (bound, peer) {
            (false, _) => Err(DropReason::WrongSource),
            (true, None) => Err(DropReason::PeerNotBound),
            (true, Some(peer)) if peer == from => Err(DropReason::Reflection),
            (true, Some(peer)) => Ok(peer),
        }
    }

    /// Takes `len` bytes from the allocation's token bucket and byte budget.
    fn charge(&mut self, now: Instant, len: u64, max_bytes: u64) -> bool {
        if self.bytes_forwarded.saturating_add(len) > max_bytes {
            return false;
        }
        let Ok(len32) = u32::try_from(len) else {
            return false;
        };
        if !self.bucket.try_take_n(now, len32) {
            return false;
        }
        self.bytes_forwarded += len;
        true
    }
}

/// The relay's state: allocations keyed by channel, and the bind rate limiter.
///
/// Drive it with [`Relay::handle_datagram`] for every datagram received and
/// [`Relay::handle_timeout`] whenever [`Relay::poll_timeout`] passes.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    grant_key: RelayGrantKey,
    allocations: HashMap<u64, Allocation>,
    /// Idle deadlines, earliest first; at most one entry per allocation (re-pushed
    /// lazily when an allocation turns out to have been active).
    idle_queue: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Key of the challenge cookies (derived from the grant key).
    cookie_key: [u8; 32],
    stats: RelayStats,
}

impl Relay {
    /// A relay that accepts grants minted under `grant_key`.
    pub fn new(config: RelayConfig, grant_key: RelayGrantKey) -> Self {
        Self {
            config,
            cookie_key: grant_key.derive_key(COOKIE_KEY_CONTEXT),
            grant_key,
            allocations: HashMap::new(),
            idle_queue: BinaryHeap::new(),
            stats: RelayStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Allocations currently held.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Handles one received datagram. `now_unix` (seconds since the Unix epoch) is only
    /// used to check grant expiry and to date challenge cookies. A reply, if any, is
    /// written into `reply`, which must hold at least [`crate::wire::CHALLENGE_LEN`]
    /// bytes; replies are always shorter than the request that caused them.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        now_unix: u64,
        from: SocketAddr,
        datagram: &[u8],
        reply: &mut [u8],
    ) -> Action {
        let action = match RelayPacket::decode(datagram) {
            Ok(RelayPacket::Data { channel, .. }) => self.forward(now, from, channel, datagram),
            Ok(RelayPacket::Bind { token, cookie }) => {
                let packet = self.bind(now, now_unix, from, &token, cookie);
                match packet.encode(reply) {
                    Some(len) => Action::Reply(len),
                    None => Action::Drop(DropReason::Malformed),
                }
            }
            // Only the relay sends these; a peer sending them is confused or hostile.
            Ok(
                RelayPacket::Bound { .. }
                | RelayPacket::BindRefused { .. }
                | RelayPacket::Challenge { .. },
            )
            | Err(_) => Action::Drop(DropReason::Malformed),
        };
        if let Action::Drop(reason) = action {
            let counter = match reason {
                DropReason::Malformed => &mut self.stats.dropped_malformed,
                DropReason::UnknownChannel => &mut self.stats.dropped_unknown_channel,
                DropReason::WrongSource => &mut self.stats.dropped_wrong_source,
                DropReason::PeerNotBound => &mut self.stats.dropped_peer_not_bound,
                DropReason::OverLimit => &mut self.stats.dropped_over_limit,
                DropReason::Reflection => &mut self.stats.dropped_reflection,
            };
            *counter += 1;
        }
        action
    }

    fn forward(&mut self, now: Instant, from: SocketAddr, channel: u64, datagram: &[u8]) -> Action {
        let Some(allocation) = self.allocations.get_mut(&channel) else {
            return Action::Drop(DropReason::UnknownChannel);
        };
        let to = match allocation.other_side(from) {
            Ok(to) => to,
            Err(reason) => return Action::Drop(reason),
        };
        let len = datagram.len() as u64;
        if !allocation.charge(now, len, self.config.max_bytes_per_allocation) {
            return Action::Drop(DropReason::OverLimit);
        }
        allocation.last_active = now;
        self.stats.forwarded_packets += 1;
        self.stats.forwarded_bytes += len;
        Action::Forward(to)
    }

    /// The cookie that lets `to` take over `claims.role` of the allocation from `from`
    /// in `epoch`: HMAC-SHA256(cookie key, allocation id ‖ role ‖ from ‖ to ‖ epoch),
    /// first [`COOKIE_LEN`] bytes. Stateless: nothing is stored per challenge.
    fn cookie_mac(
        &self,
        claims: &GrantClaims,
        from: SocketAddr,
        to: SocketAddr,
        epoch: u64,
    ) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.cookie_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(&claims.allocation_id);
        mac.update(&[claims.role as u8]);
        for address in [from, to] {
            match address {
                SocketAddr::V4(v4) => {
                    mac.update(&[4]);
                    mac.update(&v4.ip().octets());
                }
                SocketAddr::V6(v6) => {
                    mac.update(&[6]);
                    mac.update(&v6.ip().octets());
                }
            }
            mac.update(&address.port().to_be_bytes());
        }
        mac.update(&epoch.to_be_bytes());
        mac
    }

    fn cookie(
        &self,
        claims: &GrantClaims,
        from: SocketAddr,
        to: SocketAddr,
        now_unix: u64,
    ) -> [u8; COOKIE_LEN] {
        let tag = self
            .cookie_mac(claims, from, to, now_unix / COOKIE_EPOCH_SECS)
            .finalize()
            .into_bytes();
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&tag[..COOKIE_LEN]);
        cookie
    }

    /// Whether `cookie` was made for this move in this epoch or the previous one
    /// (constant-time comparison).
    fn cookie_valid(
        &self,
        claims: &GrantClaims,
        from: SocketAddr,
        to: SocketAddr,
        now_unix: u64,
        cookie: &[u8; COOKIE_LEN],
    ) -> bool {
        let epoch = now_unix / COOKIE_EPOCH_SECS;
        [Some(epoch), epoch.checked_sub(1)]
            .into_iter()
            .flatten()
            .any(|epoch| {
                self.cookie_mac(claims, from, to, epoch)
                    .verify_truncated_left(cookie)
                    .is_ok()
            })
    }

    fn bind(
        &mut self,
        now: Instant,
        now_unix: u64,
        from: SocketAddr,
        token: &RelayGrantToken,
        cookie: Option<[u8; COOKIE_LEN]>,
    ) -> RelayPacket<'static> {
        let refused = |stats: &mut RelayStats, reason| {
            stats.binds_refused += 1;
            RelayPacket::BindRefused { reason }
        };
        // The token is verified (one ChaCha20-Poly1305 open) before anything else is
        // looked at or charged, so garbage consumes nothing an honest bind needs.
        // Expiry is checked on every bind, first or repeated.
        let claims = match self.grant_key.verify(token, now_unix) {
            Ok(claims) => claims,
            Err(GrantError::Expired { .. }) => {
                self.stats.binds_expired += 1;
                return refused(&mut self.stats, RefusalReason::Expired);
            }
            Err(_) => {
                self.stats.binds_invalid += 1;
                return refused(&mut self.stats, RefusalReason::InvalidGrant);
            }
        };
        let channel = channel_of(&claims.allocation_id);
        let table_full = self.allocations.len() >= self.config.max_allocations;
        let allocation = match self.allocations.entry(channel) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(_) if table_full => {
                return refused(&mut self.stats, RefusalReason::TableFull);
            }
            Entry::Vacant(entry) => {
                self.idle_queue
                    .push(Reverse((now + self.config.idle_timeout, channel)));
                entry.insert(Allocation {
                    allocation_id: claims.allocation_id,
                    device: None,
                    viewer: None,
                    last_active: now,
                    bytes_forwarded: 0,
                    bucket: TokenBucket::new(self.config.data_rate(), now),
                })
            }
        };
        // Two allocations whose ids share the first 8 bytes: astronomically unlikely
        // with random ids, but never let one grant bind into another's allocation.
        let same_allocation = allocation.allocation_id == claims.allocation_id;
        let current = *allocation.side_mut(claims.role);
        if !same_allocation {
            self.stats.binds_invalid += 1;
            return refused(&mut self.stats, RefusalReason::InvalidGrant);
        }
        match current {
            // First bind of this side: the grant is the authority.
            None => {}
            // The bound address binding again (a retransmission or keepalive).
            Some(bound) if bound == from => {}
            // Another address wants this side: a copied BIND replayed from a spoofed
            // source must not divert the stream, so the new address has to prove it
            // receives there first (return routability). Until then, nothing moves.
            Some(bound) => {
                let proven = cookie.is_some_and(|cookie| {
                    self.cookie_valid(&claims, bound, from, now_unix, &cookie)
                });
                if !proven {
                    if cookie.is_some() {
                        self.stats.cookies_invalid += 1;
                    }
                    self.stats.challenges_sent += 1;
                    return RelayPacket::Challenge {
                        channel,
                        role: claims.role,
                        cookie: self.cookie(&claims, bound, from, now_unix),
                    };
                }
                self.stats.binds_moved += 1;
            }
        }
        // Borrow again: the cookie checks above needed `self`.
        let Some(allocation) = self.allocations.get_mut(&channel) else {
            return refused(&mut self.stats, RefusalReason::InvalidGrant);
        };
        *allocation.side_mut(claims.role) = Some(from);
        allocation.last_active = now;
        let peer_bound = match claims.role {
            GrantRole::Device => allocation.viewer.is_some(),
            GrantRole::Viewer => allocation.device.is_some(),
        };
        self.stats.binds += 1;
        RelayPacket::Bound {
            channel,
            role: claims.role,
            peer_bound,
        }
    }

    /// When [`Relay::handle_timeout`] next has work: the earliest idle deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.idle_queue
            .peek()
            .map(|Reverse((deadline, _))| *deadline)
    }

    /// Removes allocations that have idled out by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((deadline, channel))) = self.idle_queue.peek() {
            if deadline > now {
                break;
            }
            self.idle_queue.pop();
            let Some(allocation) = self.allocations.get(&channel) else {
                continue;
            };
            let actual = allocation.last_active + self.config.idle_timeout;
            if actual <= now {
                self.allocations.remove(&channel);
                self.stats.expired_allocations += 1;
            } else {
                self.idle_queue.push(Reverse((actual, channel)));
            }
        }
    }
}

/// The channel number of an allocation: the first 8 bytes of its id, big-endian.
pub fn channel_of(allocation_id: &[u8; 16]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&allocation_id[..8]);
    u64::from_be_bytes(first)
}
