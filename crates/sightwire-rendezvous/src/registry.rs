//! The registry: which IDs were issued to which device keys, and which were revoked.
//!
//! It persists (the default `SqliteRegistry`, feature `sqlite`, is one file; the
//! `PostgresRegistry`, feature `postgres`, is shared by several nodes) because it is the
//! operator's record; presence (who is online where) is deliberately not stored here.
//!
//! The rendezvous core never calls a registry: it hands out [`RegistryQuery`]s and takes
//! back [`RegistryAnswer`]s (spec/registration.md §9.1). [`RegistryQuery::run`] answers a
//! query with any [`Registry`]; the server runs it on a [`RegistryPool`] of worker threads,
//! off the packet loop.

use sightwire_id::DeviceId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, mpsc};

use sightwire_signal::cert::IdCertificate;

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "postgres")]
#[doc(hidden)]
pub use self::postgres::testing as postgres_testing;
#[cfg(feature = "postgres")]
pub use self::postgres::{
    LISTEN_RETRY, PostgresRegistry, PostgresRegistryError, REVOCATION_CHANNEL, RevocationListener,
    SCHEMA_VERSION as POSTGRES_SCHEMA_VERSION,
};
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
    fn lookup(&self, device_id: DeviceId) -> Result<Option<DeviceRecord>, Self::Error>;

    /// Records `certificate` as the current one for its ID, replacing an older one
    /// (lower serial). Recording a certificate whose serial is not higher than the current
    /// one changes nothing and returns `false`.
    fn record(&mut self, certificate: &IdCertificate) -> Result<bool, Self::Error>;

    /// Marks the current certificate of `device_id` revoked (raises the ID's revocation
    /// floor to its serial). Returns `false` if there is none (use
    /// [`Registry::revoke_through`] then).
    fn revoke(&mut self, device_id: DeviceId) -> Result<bool, Self::Error>;

    /// Revokes every certificate of `device_id` with a serial ≤ `serial`, whether or not
    /// one was ever recorded: the ID's revocation floor becomes at least `serial` (it
    /// never goes down). Certificates at or below the floor are refused (`REVOKED`)
    /// everywhere the registry is consulted.
    fn revoke_through(&mut self, device_id: DeviceId, serial: u64) -> Result<(), Self::Error>;

    /// The revocation floor of `device_id` (0 when nothing was revoked; serials start
    /// at 1).
    fn revocation_floor(&self, device_id: DeviceId) -> Result<u64, Self::Error>;

    /// Every record, ordered by device ID.
    fn list(&self) -> Result<Vec<DeviceRecord>, Self::Error>;

    /// What a registration needs to know, in one call: the ID's revocation floor and
    /// record, and — when `record_if_new` and `certificate` is above the floor and newer
    /// than the record — records it. A networked registry overrides it to answer in one
    /// round trip.
    fn check_registration(
        &mut self,
        certificate: &IdCertificate,
        record_if_new: bool,
    ) -> Result<RegistrationView, Self::Error> {
        let id = certificate.device_id();
        let floor = self.revocation_floor(id)?;
        let record = self.lookup(id)?;
        let newer = record
            .as_ref()
            .is_none_or(|record| record.certificate.serial() < certificate.serial());
        let recorded =
            record_if_new && certificate.serial() > floor && newer && self.record(certificate)?;
        Ok(RegistrationView {
            floor,
            record,
            recorded,
        })
    }
}

/// The registry's answer to a registration ([`Registry::check_registration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistrationView {
    /// The ID's revocation floor (0: none).
    pub floor: u64,
    /// The record before this registration.
    pub record: Option<DeviceRecord>,
    /// The certificate was recorded as the ID's current one.
    pub recorded: bool,
}

impl RegistrationView {
    /// A view of `floor` and `record` (`recorded`: the certificate was written).
    pub fn new(floor: u64, record: Option<DeviceRecord>, recorded: bool) -> Self {
        Self {
            floor,
            record,
            recorded,
        }
    }
}

/// A registry question the core asks its driver (spec/registration.md §9.1). Answer it
/// with [`RegistryQuery::run`] (anywhere: a worker thread, a task) and hand the answer to
/// `Rendezvous::handle_registry_answer`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryQuery {
    /// Names the parked request the answer resumes.
    pub token: u64,
    /// What to ask.
    pub kind: QueryKind,
}

/// What a [`RegistryQuery`] asks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryKind {
    /// A registration: [`Registry::check_registration`].
    Registration {
        /// The certificate the device registered with (already verified).
        certificate: IdCertificate,
        /// Record it if it is new (not `require_issued`).
        record_if_new: bool,
    },
    /// A connect request: [`Registry::lookup`].
    Lookup {
        /// The ID asked for.
        device_id: DeviceId,
    },
}

/// What a query found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryResult {
    /// The answer to [`QueryKind::Registration`].
    Registration(RegistrationView),
    /// The answer to [`QueryKind::Lookup`].
    Lookup(Option<DeviceRecord>),
}

/// A storage error, type-erased so one core serves every registry.
pub type RegistryFailure = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The answer to a [`RegistryQuery`].
#[derive(Debug)]
#[non_exhaustive]
pub struct RegistryAnswer {
    /// The query's token.
    pub token: u64,
    /// What the registry found, or why it failed.
    pub result: Result<QueryResult, RegistryFailure>,
}

impl RegistryAnswer {
    /// The answer `result` to the query `token`.
    pub fn new(token: u64, result: Result<QueryResult, RegistryFailure>) -> Self {
        Self { token, result }
    }
}

impl RegistryQuery {
    /// Answers the query with `registry` (blocking for as long as the registry does).
    pub fn run<R: Registry + ?Sized>(&self, registry: &mut R) -> RegistryAnswer {
        let result = match &self.kind {
            QueryKind::Registration {
                certificate,
                record_if_new,
            } => registry
                .check_registration(certificate, *record_if_new)
                .map(QueryResult::Registration),
            QueryKind::Lookup { device_id } => registry.lookup(*device_id).map(QueryResult::Lookup),
        };
        RegistryAnswer {
            token: self.token,
            result: result.map_err(|error| Box::new(error) as RegistryFailure),
        }
    }
}

/// Worker threads that answer [`RegistryQuery`]s off the packet loop, one registry
/// (connection) each; answers come back on a tokio channel.
///
/// The channels are unbounded because the core bounds what can be in flight: at most
/// `CoreConfig::max_pending_lookups` queries are outstanding at once.
#[derive(Debug)]
pub struct RegistryPool {
    jobs: Option<mpsc::Sender<RegistryQuery>>,
    answers: tokio::sync::mpsc::UnboundedReceiver<RegistryAnswer>,
    workers: usize,
}

impl RegistryPool {
    /// One worker thread per registry in `registries` (each its own connection to the
    /// database; SQLite wants one, PostgreSQL may take several). Panics if empty.
    pub fn spawn<R: Registry + Send + 'static>(registries: Vec<R>) -> std::io::Result<Self> {
        assert!(!registries.is_empty(), "a registry pool needs a registry");
        let (jobs, queue) = mpsc::channel::<RegistryQuery>();
        let queue = Arc::new(Mutex::new(queue));
        let (answer, answers) = tokio::sync::mpsc::unbounded_channel();
        let workers = registries.len();
        for (index, mut registry) in registries.into_iter().enumerate() {
            let queue = Arc::clone(&queue);
            let answer = answer.clone();
            std::thread::Builder::new()
                .name(format!("registry-{index}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job; a poisoned
                        // lock means another worker panicked: stop too.
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else {
                            return; // the pool was dropped
                        };
                        if answer.send(job.run(&mut registry)).is_err() {
                            return;
                        }
                    }
                })?;
        }
        Ok(Self {
            jobs: Some(jobs),
            answers,
            workers,
        })
    }

    /// How many worker threads there are.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Queues `query` for a worker. Gives it back if every worker has stopped.
    pub fn submit(&self, query: RegistryQuery) -> Result<(), Box<RegistryQuery>> {
        match &self.jobs {
            Some(jobs) => jobs.send(query).map_err(|error| Box::new(error.0)),
            None => Err(Box::new(query)),
        }
    }

    /// The next answer (`None` once every worker has stopped).
    pub async fn next_answer(&mut self) -> Option<RegistryAnswer> {
        self.answers.recv().await
    }
}

impl Drop for RegistryPool {
    fn drop(&mut self) {
        // Workers finish the query they hold and exit when the queue closes; they are not
        // joined (a database that hangs must not hang the shutdown).
        self.jobs.take();
    }
}

/// A registry in memory, for tests and for deployments that load IDs from elsewhere.
#[derive(Debug, Default, Clone)]
pub struct MemoryRegistry {
    records: HashMap<DeviceId, DeviceRecord>,
    floors: HashMap<DeviceId, u64>,
}

impl Registry for MemoryRegistry {
    type Error = std::convert::Infallible;

    fn lookup(&self, device_id: DeviceId) -> Result<Option<DeviceRecord>, Self::Error> {
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

    fn revoke(&mut self, device_id: DeviceId) -> Result<bool, Self::Error> {
        let Some(record) = self.records.get_mut(&device_id) else {
            return Ok(false);
        };
        record.revoked = true;
        let serial = record.certificate.serial();
        self.revoke_through(device_id, serial)?;
        Ok(true)
    }

    fn revoke_through(&mut self, device_id: DeviceId, serial: u64) -> Result<(), Self::Error> {
        let floor = self.floors.entry(device_id).or_insert(0);
        *floor = (*floor).max(serial);
        Ok(())
    }

    fn revocation_floor(&self, device_id: DeviceId) -> Result<u64, Self::Error> {
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

    const ID: DeviceId = match DeviceId::from_bytes([2, 0, 0, 0, 0, 1]) {
        Ok(id) => id,
        Err(_) => panic!("a unicast address"),
    };

    fn cert(serial: u64, key: u8) -> IdCertificate {
        IssuerKey::from_seed(&[1; 32])
            .issue(CertificateFields {
                device_id: ID,
                device_key: [key; 32].into(),
                not_before: 0,
                not_after: u64::MAX,
                serial,
            })
            .unwrap()
    }

    fn exercise(registry: &mut impl Registry) {
        let id = ID;
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
        let id = ID;
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
        assert_eq!(
            registry
                .revocation_floor(DeviceId::from_bytes([2, 0, 0, 0, 0, 9]).unwrap())
                .unwrap(),
            0
        );
    }

    /// The registration check in one call: the floor, the record, and recording only
    /// what is new and above the floor (and only when asked to).
    fn registration_check(registry: &mut impl Registry) {
        let id = ID;
        let view = registry.check_registration(&cert(3, 1), false).unwrap();
        assert_eq!(view, RegistrationView::new(0, None, false));
        assert_eq!(registry.lookup(id).unwrap(), None);
        let view = registry.check_registration(&cert(3, 1), true).unwrap();
        assert_eq!(view, RegistrationView::new(0, None, true));
        let current = registry.lookup(id).unwrap().unwrap();
        assert_eq!(current.certificate, cert(3, 1));
        // The same certificate again: nothing new to record.
        let view = registry.check_registration(&cert(3, 1), true).unwrap();
        assert_eq!(view, RegistrationView::new(0, Some(current), false));
        // An older one: not recorded.
        assert!(
            !registry
                .check_registration(&cert(2, 2), true)
                .unwrap()
                .recorded
        );
        // At or below the floor: not recorded.
        registry.revoke_through(id, 4).unwrap();
        let view = registry.check_registration(&cert(4, 2), true).unwrap();
        assert_eq!(view.floor, 4);
        assert!(!view.recorded);
        assert!(view.record.unwrap().revoked);
        // Above it: recorded, and the record it replaced is reported.
        let view = registry.check_registration(&cert(5, 2), true).unwrap();
        assert!(view.recorded);
        assert_eq!(view.record.unwrap().certificate, cert(3, 1));
        assert!(!registry.lookup(id).unwrap().unwrap().revoked);
    }

    /// Queries answered through `RegistryQuery::run`, and on a pool of workers.
    fn queries(registry: impl Registry + Send + 'static) {
        let query = |token, kind| RegistryQuery { token, kind };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut pool = RegistryPool::spawn(vec![registry]).unwrap();
        assert_eq!(pool.workers(), 1);
        let registration = QueryKind::Registration {
            certificate: cert(1, 1),
            record_if_new: true,
        };
        pool.submit(query(7, registration)).unwrap();
        let answer = runtime.block_on(pool.next_answer()).unwrap();
        assert_eq!(answer.token, 7);
        assert!(matches!(
            answer.result,
            Ok(QueryResult::Registration(RegistrationView {
                recorded: true,
                ..
            }))
        ));
        let lookup = QueryKind::Lookup { device_id: ID };
        pool.submit(query(8, lookup)).unwrap();
        let answer = runtime.block_on(pool.next_answer()).unwrap();
        assert_eq!(answer.token, 8);
        match answer.result {
            Ok(QueryResult::Lookup(Some(record))) => assert_eq!(record.certificate, cert(1, 1)),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    /// The same contract bodies against every registry (spec/registration.md §4, §9).
    macro_rules! contract {
        ($module:ident, $make:expr) => {
            mod $module {
                use super::*;

                #[test]
                fn keeps_the_newest_certificate() {
                    let Some(mut registry) = $make else { return };
                    exercise(&mut registry);
                }

                #[test]
                fn revocation_floor_works_without_a_record() {
                    let Some(mut registry) = $make else { return };
                    revocation_is_a_floor(&mut registry);
                }

                #[test]
                fn registration_check_records_only_what_is_new() {
                    let Some(mut registry) = $make else { return };
                    registration_check(&mut registry);
                }

                #[test]
                fn queries_run_on_a_worker() {
                    let Some(registry) = $make else { return };
                    queries(registry);
                }
            }
        };
    }

    contract!(memory, Some(MemoryRegistry::default()));
    #[cfg(feature = "sqlite")]
    contract!(sqlite, Some(SqliteRegistry::open_in_memory().unwrap()));
    #[cfg(feature = "postgres")]
    contract!(postgres, crate::registry::postgres::test_registry());

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_registry_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.sqlite");
        exercise(&mut SqliteRegistry::open(&path).unwrap());
        let reopened = SqliteRegistry::open(&path).unwrap();
        assert_eq!(reopened.list().unwrap().len(), 1);
        assert_eq!(
            reopened.lookup(ID).unwrap().unwrap().certificate,
            cert(u64::MAX, 3)
        );
    }
}
