//! The registry: which IDs were issued to which device keys, and which were revoked.
//!
//! It persists (the default `SqliteRegistry`, feature `sqlite`, is one file) because it is the operator's
//! record; presence (who is online where) is deliberately not stored here.

use std::collections::HashMap;

use sightwire_signal::cert::IdCertificate;

#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteRegistry, SqliteRegistryError};

/// What the registry knows about one device ID: its current certificate (the one with
/// the highest serial seen) and whether that certificate is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceRecord {
    /// The current certificate for the ID.
    pub certificate: IdCertificate,
    /// The operator revoked it.
    pub revoked: bool,
}

/// Storage of issued IDs. The rendezvous calls it on registrations and connect requests
/// (never on keepalives); the issuer tool calls it when issuing and revoking.
///
/// Implementations for networked databases let several rendezvous nodes share one
/// registry.
pub trait Registry {
    /// Why storage failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The record for `device_id`, if any certificate was ever recorded for it.
    fn lookup(&self, device_id: [u8; 6]) -> Result<Option<DeviceRecord>, Self::Error>;

    /// Records `certificate` as the current one for its ID, replacing an older one
    /// (lower serial). Recording a certificate whose serial is not higher than the current
    /// one changes nothing and returns `false`.
    fn record(&mut self, certificate: &IdCertificate) -> Result<bool, Self::Error>;

    /// Marks the current certificate of `device_id` revoked (raises the ID's revocation
    /// floor to its serial). Returns `false` if there is none (use
    /// [`Registry::revoke_through`] then).
    fn revoke(&mut self, device_id: [u8; 6]) -> Result<bool, Self::Error>;

    /// Revokes every certificate of `device_id` with a serial ≤ `serial`, whether or not
    /// one was ever recorded: the ID's revocation floor becomes at least `serial` (it
    /// never goes down). Certificates at or below the floor are refused (`REVOKED`)
    /// everywhere the registry is consulted.
    fn revoke_through(&mut self, device_id: [u8; 6], serial: u64) -> Result<(), Self::Error>;

    /// The revocation floor of `device_id` (0 when nothing was revoked; serials start
    /// at 1).
    fn revocation_floor(&self, device_id: [u8; 6]) -> Result<u64, Self::Error>;

    /// Every record, ordered by device ID.
    fn list(&self) -> Result<Vec<DeviceRecord>, Self::Error>;
}

/// A registry in memory, for tests and for deployments that load IDs from elsewhere.
#[derive(Debug, Default, Clone)]
pub struct MemoryRegistry {
    records: HashMap<[u8; 6], DeviceRecord>,
    floors: HashMap<[u8; 6], u64>,
}

impl Registry for MemoryRegistry {
    type Error = std::convert::Infallible;

    fn lookup(&self, device_id: [u8; 6]) -> Result<Option<DeviceRecord>, Self::Error> {
        let floor = self.floors.get(&device_id).copied().unwrap_or(0);
        Ok(self.records.get(&device_id).map(|record| DeviceRecord {
            revoked: record.revoked || record.certificate.serial() <= floor,
            ..*record
        }))
    }

    fn record(&mut self, certificate: &IdCertificate) -> Result<bool, Self::Error> {
        let id = certificate.device_id();
        match self.records.get(&id) {
            Some(current) if current.certificate.serial() >= certificate.serial() => Ok(false),
            _ => {
                self.records.insert(
                    id,
                    DeviceRecord {
                        certificate: *certificate,
                        revoked: false,
                    },
                );
                Ok(true)
            }
        }
    }

    fn revoke(&mut self, device_id: [u8; 6]) -> Result<bool, Self::Error> {
        let Some(record) = self.records.get_mut(&device_id) else {
            return Ok(false);
        };
        record.revoked = true;
        let serial = record.certificate.serial();
        self.revoke_through(device_id, serial)?;
        Ok(true)
    }

    fn revoke_through(&mut self, device_id: [u8; 6], serial: u64) -> Result<(), Self::Error> {
        let floor = self.floors.entry(device_id).or_insert(0);
        *floor = (*floor).max(serial);
        Ok(())
    }

    fn revocation_floor(&self, device_id: [u8; 6]) -> Result<u64, Self::Error> {
        Ok(self.floors.get(&device_id).copied().unwrap_or(0))
    }

    fn list(&self) -> Result<Vec<DeviceRecord>, Self::Error> {
        let mut records = Vec::new();
        for id in self.records.keys() {
            records.extend(self.lookup(*id)?);
        }
        records.sort_by_key(|record| record.certificate.device_id());
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightwire_signal::cert::{CertificateFields, IssuerKey};

    fn cert(serial: u64, key: u8) -> IdCertificate {
        IssuerKey::from_seed(&[1; 32])
            .issue(CertificateFields {
                device_id: [2, 0, 0, 0, 0, 1],
                device_key: [key; 32].into(),
                not_before: 0,
                not_after: u64::MAX,
                serial,
            })
            .unwrap()
    }

    fn exercise(registry: &mut impl Registry) {
        let id = [2, 0, 0, 0, 0, 1];
        assert_eq!(registry.lookup(id).unwrap(), None);
        assert!(!registry.revoke(id).unwrap());
        assert!(registry.record(&cert(5, 1)).unwrap());
        // An older or equal serial does not replace the current certificate.
        assert!(!registry.record(&cert(4, 2)).unwrap());
        assert!(!registry.record(&cert(5, 2)).unwrap());
        assert_eq!(
            registry.lookup(id).unwrap().unwrap().certificate,
            cert(5, 1)
        );
        assert!(registry.revoke(id).unwrap());
        assert!(registry.lookup(id).unwrap().unwrap().revoked);
        // Re-issuing with a higher serial replaces the revoked certificate.
        assert!(registry.record(&cert(u64::MAX, 3)).unwrap());
        let record = registry.lookup(id).unwrap().unwrap();
        assert_eq!(
            (record.certificate, record.revoked),
            (cert(u64::MAX, 3), false)
        );
        assert_eq!(registry.list().unwrap(), vec![record]);
    }

    /// Low finding: revocation needed an existing record and was not a serial floor.
    fn revocation_is_a_floor(registry: &mut impl Registry) {
        let id = [2, 0, 0, 0, 0, 1];
        // Revoking an ID never seen, through serial 5.
        registry.revoke_through(id, 5).unwrap();
        assert_eq!(registry.revocation_floor(id).unwrap(), 5);
        registry.record(&cert(5, 1)).unwrap();
        assert!(registry.lookup(id).unwrap().unwrap().revoked);
        // The floor never goes down.
        registry.revoke_through(id, 2).unwrap();
        assert_eq!(registry.revocation_floor(id).unwrap(), 5);
        // Above the floor: fine.
        registry.record(&cert(6, 2)).unwrap();
        assert!(!registry.lookup(id).unwrap().unwrap().revoked);
        assert_eq!(registry.revocation_floor([2, 0, 0, 0, 0, 9]).unwrap(), 0);
    }

    #[test]
    fn low_revocation_floor_works_without_a_record_memory() {
        revocation_is_a_floor(&mut MemoryRegistry::default());
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn low_revocation_floor_works_without_a_record_sqlite() {
        revocation_is_a_floor(&mut SqliteRegistry::open_in_memory().unwrap());
    }

    #[test]
    fn memory_registry_keeps_the_newest_certificate() {
        exercise(&mut MemoryRegistry::default());
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_registry_keeps_the_newest_certificate_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite");
        exercise(&mut SqliteRegistry::open(&path).unwrap());
        let reopened = SqliteRegistry::open(&path).unwrap();
        assert_eq!(reopened.list().unwrap().len(), 1);
        assert_eq!(
            reopened
                .lookup([2, 0, 0, 0, 0, 1])
                .unwrap()
                .unwrap()
                .certificate,
            cert(u64::MAX, 3)
        );
    }
}
