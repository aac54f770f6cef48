//! Who is online: a bounded in-memory table from device ID to the device's session, its
//! observed address and a few host candidates, with expiry.
//!
//! Entries are laid out compactly (addresses as 18 bytes, at most
//! [`MAX_STORED_HOST_CANDIDATES`] candidates inline, times as milliseconds since the
//! table's epoch) because this table is the rendezvous's per-device memory cost.

use sightwire_id::DeviceId;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use sightwire_signal::{Candidate, CandidateKind};

/// Host candidates kept per device (the rest of a registration's candidates are
/// dropped, lowest priority first). Two covers a LAN IPv4 and an IPv6 address.
pub const MAX_STORED_HOST_CANDIDATES: usize = 2;

/// A socket address in 18 bytes (IPv4 stored IPv4-mapped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CompactAddr([u8; 18]);

impl CompactAddr {
    pub(crate) fn new(address: SocketAddr) -> Self {
        let ip = match address.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let mut bytes = [0u8; 18];
        bytes[..16].copy_from_slice(&ip.octets());
        bytes[16..].copy_from_slice(&address.port().to_be_bytes());
        Self(bytes)
    }

    pub(crate) fn get(&self) -> SocketAddr {
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&self.0[..16]);
        let ip = Ipv6Addr::from(ip);
        let port = u16::from_be_bytes([self.0[16], self.0[17]]);
        SocketAddr::new(ip.to_canonical(), port)
    }
}

/// A host candidate in 22 bytes: address and priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CompactCandidate {
    address: CompactAddr,
    priority: [u8; 4],
}

/// One online device.
#[derive(Debug, Clone)]
pub(crate) struct PresenceEntry<S> {
    pub(crate) session: S,
    pub(crate) observed: CompactAddr,
    /// Last registration or keepalive, milliseconds since the table's epoch.
    pub(crate) last_seen_ms: u64,
    pub(crate) generation: u32,
    host_len: u8,
    host: [CompactCandidate; MAX_STORED_HOST_CANDIDATES],
}

impl<S: Copy> PresenceEntry<S> {
    pub(crate) fn new(
        session: S,
        observed: SocketAddr,
        now_ms: u64,
        generation: u32,
        candidates: &[Candidate],
    ) -> Self {
        let mut hosts: Vec<&Candidate> = candidates
            .iter()
            .filter(|candidate| candidate.kind == CandidateKind::Host)
            .collect();
        hosts.sort_by_key(|candidate| std::cmp::Reverse(candidate.priority));
        let empty = CompactCandidate {
            address: CompactAddr([0; 18]),
            priority: [0; 4],
        };
        let mut host = [empty; MAX_STORED_HOST_CANDIDATES];
        let mut host_len = 0u8;
        for (slot, candidate) in host.iter_mut().zip(hosts) {
            *slot = CompactCandidate {
                address: CompactAddr::new(candidate.address),
                priority: candidate.priority.to_be_bytes(),
            };
            host_len += 1;
        }
        Self {
            session,
            observed: CompactAddr::new(observed),
            last_seen_ms: now_ms,
            generation,
            host_len,
            host,
        }
    }

    /// The device's candidates as a viewer should get them: stored host candidates, then
    /// the server-reflexive address.
    pub(crate) fn candidates(&self, server_reflexive_priority: u32) -> Vec<Candidate> {
        let mut out = Vec::with_capacity(usize::from(self.host_len) + 1);
        for stored in self.host.iter().take(usize::from(self.host_len)) {
            out.push(Candidate {
                kind: CandidateKind::Host,
                address: stored.address.get(),
                priority: u32::from_be_bytes(stored.priority),
            });
        }
        // A device registered over a TCP/TLS stream has no reachable UDP address.
        let observed = self.observed.get();
        if !sightwire_stream::is_stream_peer(observed) {
            out.push(Candidate {
                kind: CandidateKind::ServerReflexive,
                address: observed,
                priority: server_reflexive_priority,
            });
        }
        out
    }
}

/// Why an insert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PresenceFull;

/// The presence table plus its session → device index.
#[derive(Debug)]
pub(crate) struct PresenceTable<S> {
    devices: HashMap<DeviceId, PresenceEntry<S>>,
    sessions: HashMap<S, DeviceId>,
    capacity: usize,
}

impl<S> PresenceTable<S> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            devices: HashMap::new(),
            sessions: HashMap::new(),
            capacity,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.devices.len()
    }
}

impl<S: Copy + Eq + Hash> PresenceTable<S> {
    pub(crate) fn get(&self, device_id: &DeviceId) -> Option<&PresenceEntry<S>> {
        self.devices.get(device_id)
    }

    pub(crate) fn sessions(&self) -> impl Iterator<Item = S> + '_ {
        self.sessions.keys().copied()
    }

    pub(crate) fn device_of(&self, session: &S) -> Option<DeviceId> {
        self.sessions.get(session).copied()
    }

    /// Inserts or replaces the entry for `device_id`. A session maps to one device: a
    /// session that registered another ID before loses that registration.
    pub(crate) fn upsert(
        &mut self,
        device_id: DeviceId,
        entry: PresenceEntry<S>,
    ) -> Result<(), PresenceFull> {
        if !self.devices.contains_key(&device_id) && self.devices.len() >= self.capacity {
            return Err(PresenceFull);
        }
        if let Some(previous_id) = self.sessions.get(&entry.session).copied()
            && previous_id != device_id
        {
            self.devices.remove(&previous_id);
        }
        if let Some(previous) = self.devices.get(&device_id)
            && previous.session != entry.session
        {
            self.sessions.remove(&previous.session);
        }
        self.sessions.insert(entry.session, device_id);
        self.devices.insert(device_id, entry);
        Ok(())
    }

    /// Refreshes the entry bound to `session`; returns the device ID and the (possibly
    /// new) observed address.
    pub(crate) fn touch(
        &mut self,
        session: &S,
        observed: SocketAddr,
        now_ms: u64,
    ) -> Option<DeviceId> {
        let device_id = *self.sessions.get(session)?;
        let entry = self.devices.get_mut(&device_id)?;
        entry.last_seen_ms = now_ms;
        let observed = CompactAddr::new(observed);
        if entry.observed != observed {
            entry.observed = observed;
        }
        Some(device_id)
    }

    pub(crate) fn remove_device(&mut self, device_id: &DeviceId) -> bool {
        match self.devices.remove(device_id) {
            Some(entry) => {
                self.sessions.remove(&entry.session);
                true
            }
            None => false,
        }
    }

    pub(crate) fn remove_session(&mut self, session: &S) -> Option<DeviceId> {
        let device_id = self.sessions.remove(session)?;
        self.devices.remove(&device_id);
        Some(device_id)
    }

    /// Removes entries last seen before `cutoff_ms`; returns how many.
    pub(crate) fn expire(&mut self, cutoff_ms: u64) -> usize {
        let before = self.devices.len();
        let sessions = &mut self.sessions;
        self.devices.retain(|_, entry| {
            let keep = entry.last_seen_ms >= cutoff_ms;
            if !keep {
                sessions.remove(&entry.session);
            }
            keep
        });
        before - self.devices.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(address: &str, priority: u32) -> Candidate {
        Candidate {
            kind: CandidateKind::Host,
            address: address.parse().unwrap(),
            priority,
        }
    }

    #[test]
    fn compact_addresses_round_trip() {
        for text in [
            "192.0.2.1:1",
            "[2001:db8::1]:65535",
            "[::ffff:1.2.3.4]:9",
            "0.0.0.0:80",
        ] {
            let address: SocketAddr = text.parse().unwrap();
            assert_eq!(
                CompactAddr::new(address).get(),
                address
                    .ip()
                    .to_canonical()
                    .to_string()
                    .parse::<IpAddr>()
                    .map(|ip| SocketAddr::new(ip, address.port()))
                    .unwrap()
            );
        }
    }

    #[test]
    fn only_the_best_host_candidates_are_kept() {
        let candidates = [
            host("10.0.0.1:1", 1),
            host("10.0.0.2:2", 3),
            host("10.0.0.3:3", 2),
        ];
        let entry = PresenceEntry::new(1u64, "203.0.113.1:4".parse().unwrap(), 0, 0, &candidates);
        let kept = entry.candidates(7);
        assert_eq!(kept.len(), MAX_STORED_HOST_CANDIDATES + 1);
        assert_eq!(kept[0], host("10.0.0.2:2", 3));
        assert_eq!(kept[1], host("10.0.0.3:3", 2));
        assert_eq!(kept[2].kind, CandidateKind::ServerReflexive);
    }

    #[test]
    fn table_is_bounded_and_sessions_follow_devices() {
        let dev = |n: u8| DeviceId::from_bytes([0x02, 0, 0, 0, 0, n]).unwrap();
        let observed: SocketAddr = "203.0.113.1:4".parse().unwrap();
        let mut table = PresenceTable::new(2);
        table
            .upsert(dev(1), PresenceEntry::new(10u64, observed, 0, 0, &[]))
            .unwrap();
        table
            .upsert(dev(2), PresenceEntry::new(20u64, observed, 0, 0, &[]))
            .unwrap();
        assert_eq!(
            table.upsert(dev(3), PresenceEntry::new(30u64, observed, 0, 0, &[])),
            Err(PresenceFull)
        );
        // Replacing an existing device is allowed at capacity, and drops its old session.
        table
            .upsert(dev(1), PresenceEntry::new(11u64, observed, 5, 0, &[]))
            .unwrap();
        assert_eq!(table.device_of(&10), None);
        assert_eq!(table.device_of(&11), Some(dev(1)));
        assert_eq!(table.expire(5), 1);
        assert_eq!(table.len(), 1);
        assert_eq!(table.device_of(&20), None);
    }
}
