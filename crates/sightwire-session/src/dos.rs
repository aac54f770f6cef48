//! Per-source and per-key state that keeps one initiator from exhausting a responder
//! (security issue 12, finding 2): the per-source initiation limits (WireGuard's
//! `ratelimiter.c`: a token bucket per source IPv4 address or IPv6 /64, in a bounded table)
//! and the per-static-key greatest timestamp that refuses replayed initiations (WireGuard's
//! TAI64N check). Both tables are bounded and evict their least recently used entry; see
//! `spec/session.md`, §3.3 and §5.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use sightwire_limits::{Rate, TokenBucket};

use crate::noise::PublicKey;
use crate::wire::TIMESTAMP_LEN;

/// TAI64 label of the Unix epoch: TAI64 seconds are Unix seconds plus 2⁶² (leap seconds
/// ignored, as WireGuard does).
const TAI64_EPOCH: u64 = 1 << 62;

/// A timestamp as sent in message 1: `2⁶² + seconds` (u64 BE) || nanoseconds (u32 BE).
pub(crate) type Timestamp = [u8; TIMESTAMP_LEN];

/// Encodes nanoseconds since the Unix epoch as a TAI64N-style timestamp. Monotonic: a
/// greater input gives bytes that compare greater.
pub(crate) fn tai64n(unix_nanos: u64) -> Timestamp {
    let seconds = TAI64_EPOCH + unix_nanos / 1_000_000_000;
    // < 10⁹, fits u32.
    let nanos = u32::try_from(unix_nanos % 1_000_000_000).unwrap_or(0);
    let mut out = [0u8; TIMESTAMP_LEN];
    out[..8].copy_from_slice(&seconds.to_be_bytes());
    out[8..].copy_from_slice(&nanos.to_be_bytes());
    out
}

/// The unit a source is limited as: an IPv4 address, or the /64 prefix of an IPv6 address
/// (one host usually holds a whole /64, so a finer key would let it multiply its share).
/// IPv4-mapped IPv6 addresses count as their IPv4 address. The port is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum SourceKey {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl SourceKey {
    pub(crate) fn of(addr: SocketAddr) -> Self {
        match addr.ip().to_canonical() {
            IpAddr::V4(ip) => SourceKey::V4(ip.octets()),
            IpAddr::V6(ip) => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&ip.octets()[..8]);
                SourceKey::V6(prefix)
            }
        }
    }
}

/// What the responder knows about one source.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    /// Initiations without a valid `mac2`; empty means the source must prove its address
    /// (cookie) before the responder does any DH for it.
    pub(crate) unproven: TokenBucket,
    /// Initiations with a valid `mac2` (address proven); empty means drop. Kept apart
    /// from `unproven` so a spoofer draining a victim's unproven bucket cannot also
    /// drain what the victim gets once it proves its address.
    pub(crate) proven: TokenBucket,
    /// Half-open responder sessions created by initiations from this source.
    pub(crate) half_open: usize,
    last_seen: Instant,
}

impl Source {
    fn forgettable(&self, now: Instant) -> bool {
        self.half_open == 0 && self.unproven.is_full(now) && self.proven.is_full(now)
    }
}

/// Bounded table of [`Source`]s, least recently seen first out.
#[derive(Debug, Clone)]
pub(crate) struct SourceTable {
    map: HashMap<SourceKey, Source>,
    /// `(last_seen, key)` of every entry: the eviction order.
    order: BTreeSet<(Instant, SourceKey)>,
    cap: usize,
    rate: Rate,
}

impl SourceTable {
    pub(crate) fn new(cap: usize, rate: Rate) -> Self {
        Self {
            map: HashMap::new(),
            order: BTreeSet::new(),
            cap: cap.max(1),
            rate,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn get_mut(&mut self, key: &SourceKey) -> Option<&mut Source> {
        self.map.get_mut(key)
    }

    /// The entry of `key`, marked seen at `now`, created (with full buckets) if absent.
    /// Returns how many entries were evicted to make room (0 or 1). Eviction prefers the
    /// least recently seen entry that holds no half-open session; it looks at no more
    /// than `cap` entries, and an entry holding half-open sessions goes only if every
    /// entry does (impossible while `cap` exceeds the half-open limit).
    pub(crate) fn touch(&mut self, now: Instant, key: SourceKey) -> (&mut Source, u64) {
        let mut evicted = 0;
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            let victim = self
                .order
                .iter()
                .find(|(_, k)| self.map.get(k).is_none_or(|s| s.half_open == 0))
                .or_else(|| self.order.first())
                .copied();
            if let Some((at, k)) = victim {
                self.order.remove(&(at, k));
                self.map.remove(&k);
                evicted = 1;
            }
        }
        let rate = self.rate;
        let source = match self.map.entry(key) {
            Entry::Occupied(e) => {
                let source = e.into_mut();
                self.order.remove(&(source.last_seen, key));
                source
            }
            Entry::Vacant(e) => e.insert(Source {
                unproven: TokenBucket::new(rate, now),
                proven: TokenBucket::new(rate, now),
                half_open: 0,
                last_seen: now,
            }),
        };
        // Instants only move forward for an entry (the order set stays consistent).
        source.last_seen = source.last_seen.max(now);
        self.order.insert((source.last_seen, key));
        (source, evicted)
    }

    /// Forgets entries that carry no information (no half-open session, both buckets
    /// full: a new entry would be the same), up to `max` of the least recently seen.
    pub(crate) fn expire(&mut self, now: Instant, max: usize) {
        let stale: Vec<(Instant, SourceKey)> = self
            .order
            .iter()
            .take(max)
            .filter(|(_, k)| self.map.get(k).is_none_or(|s| s.forgettable(now)))
            .copied()
            .collect();
        for (at, k) in stale {
            self.order.remove(&(at, k));
            self.map.remove(&k);
        }
    }
}

/// Bounded table: per remote static key, the greatest initiation timestamp accepted.
#[derive(Debug, Clone)]
pub(crate) struct TimestampTable {
    map: HashMap<PublicKey, (Timestamp, u64)>,
    /// Use tick → key: the eviction order (least recently accepted first).
    lru: BTreeMap<u64, PublicKey>,
    tick: u64,
    cap: usize,
}

impl TimestampTable {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
            cap: cap.max(1),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// `Err(greatest accepted)` if `timestamp` is not greater than the greatest accepted
    /// from `key`.
    pub(crate) fn check(&self, key: &PublicKey, timestamp: &Timestamp) -> Result<(), Timestamp> {
        match self.map.get(key) {
            Some((greatest, _)) if timestamp <= greatest => Err(*greatest),
            _ => Ok(()),
        }
    }

    /// Records `timestamp` as the greatest accepted from `key` (the caller checked it).
    /// Returns how many entries were evicted to make room (0 or 1).
    pub(crate) fn record(&mut self, key: PublicKey, timestamp: Timestamp) -> u64 {
        self.tick += 1;
        let tick = self.tick;
        let mut evicted = 0;
        if let Some((_, old_tick)) = self.map.get(&key) {
            self.lru.remove(old_tick);
        } else if self.map.len() >= self.cap
            && let Some((_, oldest)) = self.lru.pop_first()
        {
            self.map.remove(&oldest);
            evicted = 1;
        }
        self.map.insert(key, (timestamp, tick));
        self.lru.insert(tick, key);
        evicted
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn tai64n_orders_like_time() {
        assert_eq!(tai64n(0), [0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            tai64n(1_500_000_001),
            [0x40, 0, 0, 0, 0, 0, 0, 1, 0x1d, 0xcd, 0x65, 0x01]
        );
        let times = [
            0,
            1,
            999_999_999,
            1_000_000_000,
            1_700_000_000_123_456_789,
            u64::MAX,
        ];
        for pair in times.windows(2) {
            assert!(tai64n(pair[0]) < tai64n(pair[1]));
        }
    }

    #[test]
    fn ipv6_sources_group_by_64_and_mapped_ipv4_is_ipv4() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:1".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:ffff:1:2:3]:9".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap();
        assert_eq!(SourceKey::of(a), SourceKey::of(b));
        assert_ne!(SourceKey::of(a), SourceKey::of(c));
        let v4: SocketAddr = "192.0.2.1:5".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:6".parse().unwrap();
        assert_eq!(SourceKey::of(v4), SourceKey::of(mapped));
        assert_eq!(SourceKey::of(v4), SourceKey::V4([192, 0, 2, 1]));
    }

    #[test]
    fn source_table_evicts_the_least_recently_seen_without_half_open() {
        let t0 = Instant::now();
        let rate = Rate::new(1, 1);
        let mut table = SourceTable::new(2, rate);
        let (a, b, c) = (
            SourceKey::V4([1, 1, 1, 1]),
            SourceKey::V4([2, 2, 2, 2]),
            SourceKey::V4([3, 3, 3, 3]),
        );
        table.touch(t0, a).0.half_open = 1;
        table.touch(t0 + Duration::from_secs(1), b);
        // Full: the new source evicts b (a is older but holds a half-open session).
        assert_eq!(table.touch(t0 + Duration::from_secs(2), c).1, 1);
        assert_eq!(table.len(), 2);
        assert!(table.get_mut(&a).is_some());
        assert!(table.get_mut(&b).is_none());
        // Seen again, c is the most recent; a goes once it holds nothing.
        table.get_mut(&a).unwrap().half_open = 0;
        assert_eq!(table.touch(t0 + Duration::from_secs(3), b).1, 1);
        assert!(table.get_mut(&a).is_none());
        // Every entry holds half-open sessions: the oldest goes anyway (never refuse).
        table.get_mut(&b).unwrap().half_open = 1;
        table.get_mut(&c).unwrap().half_open = 1;
        assert_eq!(table.touch(t0 + Duration::from_secs(4), a).1, 1);
        assert!(table.get_mut(&c).is_none());
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn source_table_expires_idle_entries() {
        let t0 = Instant::now();
        let rate = Rate::new(1, 1);
        let mut table = SourceTable::new(8, rate);
        let (a, b) = (SourceKey::V4([1, 1, 1, 1]), SourceKey::V6([9; 8]));
        assert!(table.touch(t0, a).0.unproven.try_take(t0));
        table.touch(t0, b);
        table.expire(t0, 8);
        // b's buckets are full: forgotten; a's bucket is not full yet.
        assert_eq!(table.len(), 1);
        table.expire(t0 + Duration::from_secs(1), 8);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn timestamp_table_keeps_the_greatest_and_evicts_the_least_recent() {
        let mut table = TimestampTable::new(2);
        let (k1, k2, k3) = (
            PublicKey::from_bytes([1u8; 32]),
            PublicKey::from_bytes([2u8; 32]),
            PublicKey::from_bytes([3u8; 32]),
        );
        assert_eq!(table.check(&k1, &tai64n(5)), Ok(()));
        assert_eq!(table.record(k1, tai64n(5)), 0);
        assert_eq!(table.check(&k1, &tai64n(5)), Err(tai64n(5)));
        assert_eq!(table.check(&k1, &tai64n(4)), Err(tai64n(5)));
        assert_eq!(table.check(&k1, &tai64n(6)), Ok(()));
        assert_eq!(table.record(k2, tai64n(1)), 0);
        // k1 used again: k2 is now the least recently used and goes first.
        assert_eq!(table.record(k1, tai64n(6)), 0);
        assert_eq!(table.record(k3, tai64n(1)), 1);
        assert_eq!(table.len(), 2);
        assert_eq!(table.check(&k2, &tai64n(0)), Ok(()), "k2 forgotten");
        assert_eq!(table.check(&k1, &tai64n(6)), Err(tai64n(6)));
    }
}
