//! A registry in PostgreSQL (feature `postgres`): one database that several rendezvous
//! nodes and the issuer tool share (spec/registration.md §9.2).
//!
//! Built on the `postgres` crate, the blocking face of `tokio-postgres`: the [`Registry`]
//! trait is synchronous because the issuer tool and the [`super::RegistryPool`] workers
//! call it from plain threads, never from the packet loop. The connection has no TLS
//! (`NoTls`): connect over a Unix socket (`host=/var/run/postgresql`) or loopback, or
//! carry the connection in a tunnel (spec/registration.md §9.2 says how).

use sightwire_id::DeviceId;
use std::cell::RefCell;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use sightwire_signal::cert::{CERT_LEN, IdCertificate};

use super::{DeviceRecord, RegistrationView, Registry};

/// The schema version this code creates and understands.
pub const SCHEMA_VERSION: i32 = 1;

/// The channel revocations are announced on (payload: the device ID, 12 hex digits).
pub const REVOCATION_CHANNEL: &str = "sightwire_revocations";

/// How long the revocation listener waits between reconnections (and at most per wait,
/// so it notices a dropped receiver).
pub const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// Serialises schema creation between nodes starting at once (an arbitrary constant:
/// "sightwir" in ASCII).
const MIGRATION_LOCK: i64 = 0x7369_6768_7477_6972;

/// Why the PostgreSQL registry failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresRegistryError {
    /// The database reported an error (or the connection failed).
    #[error("registry database error")]
    Database(#[from] postgres::Error),
    /// A stored certificate no longer decodes, or is stored under another ID.
    #[error("registry holds a corrupt certificate for {device_id}")]
    Corrupt {
        /// The device ID (hex) of the bad row.
        device_id: String,
    },
    /// The database was migrated by a newer version of Sightwire.
    #[error("registry schema version {found} is newer than this server's {supported}")]
    SchemaTooNew {
        /// The version in the database.
        found: i32,
        /// The newest version this code knows.
        supported: i32,
    },
}

/// The shared registry: tables `sightwire_devices` and `sightwire_revocations` (created
/// or migrated by [`PostgresRegistry::connect`]), one connection per value.
pub struct PostgresRegistry {
    /// `Client` wants `&mut` for every statement and the trait's readers take `&self`;
    /// a value is used by one thread at a time (it is `Send`, not `Sync`).
    client: RefCell<Client>,
}

impl std::fmt::Debug for PostgresRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresRegistry").finish_non_exhaustive()
    }
}

/// Serials are u64 on the wire and BIGINT in PostgreSQL: flipping the top bit maps one
/// onto the other preserving order, so SQL can compare serials (`<`, `GREATEST`).
fn serial_to_sql(serial: u64) -> i64 {
    i64::from_be_bytes((serial ^ (1 << 63)).to_be_bytes())
}

fn serial_from_sql(serial: i64) -> u64 {
    u64::from_be_bytes(serial.to_be_bytes()) ^ (1 << 63)
}

fn decode_record(
    device_id: &[u8],
    certificate: &[u8],
    revoked: bool,
) -> Result<DeviceRecord, PostgresRegistryError> {
    let corrupt = || PostgresRegistryError::Corrupt {
        device_id: hex::encode(device_id),
    };
    let certificate = IdCertificate::decode(certificate).map_err(|_| corrupt())?;
    if certificate.device_id().as_bytes().as_slice() != device_id {
        return Err(corrupt());
    }
    Ok(DeviceRecord {
        certificate,
        revoked,
    })
}

/// The ID's floor and record in one round trip: one row whatever exists.
const FETCH: &str =
    "SELECT COALESCE((SELECT floor FROM sightwire_revocations WHERE device_id = $1), $2),
        d.certificate, d.revoked, d.serial
    FROM (SELECT 1) AS one LEFT JOIN sightwire_devices AS d ON d.device_id = $1";

impl PostgresRegistry {
    /// Connects with `params` (libpq key/value form, e.g. `host=/var/run/postgresql
    /// user=sightwire dbname=sightwire`, or a `postgresql://` URL) and creates or migrates
    /// the schema.
    pub fn connect(params: &str) -> Result<Self, PostgresRegistryError> {
        let mut client = Client::connect(params, NoTls)?;
        migrate(&mut client)?;
        Ok(Self {
            client: RefCell::new(client),
        })
    }

    /// `count` connections (a [`super::RegistryPool`] runs one worker on each).
    pub fn connect_many(params: &str, count: usize) -> Result<Vec<Self>, PostgresRegistryError> {
        (0..count.max(1)).map(|_| Self::connect(params)).collect()
    }

    fn fetch(
        &self,
        device_id: DeviceId,
    ) -> Result<(u64, Option<DeviceRecord>), PostgresRegistryError> {
        let row = self.client.borrow_mut().query_one(
            FETCH,
            &[&device_id.as_bytes().as_slice(), &serial_to_sql(0)],
        )?;
        let floor = serial_from_sql(row.try_get(0)?);
        let certificate: Option<Vec<u8>> = row.try_get(1)?;
        let record = match certificate {
            None => None,
            Some(certificate) => {
                let revoked: bool = row.try_get(2)?;
                let serial = serial_from_sql(row.try_get(3)?);
                Some(decode_record(
                    device_id.as_bytes(),
                    &certificate,
                    revoked || serial <= floor,
                )?)
            }
        };
        Ok((floor, record))
    }
}

/// Creates the schema (version [`SCHEMA_VERSION`]) if it is not there, under an advisory
/// lock so that nodes starting together do not race.
fn migrate(client: &mut Client) -> Result<(), PostgresRegistryError> {
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    transaction.batch_execute(
        "CREATE TABLE IF NOT EXISTS sightwire_registry_schema (version INTEGER NOT NULL)",
    )?;
    let found: Option<i32> = transaction
        .query_one("SELECT max(version) FROM sightwire_registry_schema", &[])?
        .try_get(0)?;
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(PostgresRegistryError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 1 {
        transaction.batch_execute(
            "CREATE TABLE sightwire_devices (
                device_id BYTEA PRIMARY KEY CHECK (octet_length(device_id) = 6),
                serial BIGINT NOT NULL,
                certificate BYTEA NOT NULL,
                revoked BOOLEAN NOT NULL DEFAULT FALSE
            );
            CREATE TABLE sightwire_revocations (
                device_id BYTEA PRIMARY KEY CHECK (octet_length(device_id) = 6),
                floor BIGINT NOT NULL
            );
            INSERT INTO sightwire_registry_schema (version) VALUES (1);",
        )?;
    }
    transaction.commit()?;
    Ok(())
}

/// Raises the floor of `device_id` to at least `serial` and announces it (delivered to
/// listeners when the transaction commits).
fn raise_floor(
    transaction: &mut postgres::Transaction<'_>,
    device_id: DeviceId,
    serial: u64,
) -> Result<(), PostgresRegistryError> {
    transaction.execute(
        "INSERT INTO sightwire_revocations (device_id, floor) VALUES ($1, $2)
         ON CONFLICT (device_id) DO UPDATE
         SET floor = GREATEST(sightwire_revocations.floor, EXCLUDED.floor)",
        &[&device_id.as_bytes().as_slice(), &serial_to_sql(serial)],
    )?;
    transaction.execute(
        "SELECT pg_notify($1, $2)",
        &[&REVOCATION_CHANNEL, &hex::encode(device_id.as_bytes())],
    )?;
    Ok(())
}

impl Registry for PostgresRegistry {
    type Error = PostgresRegistryError;

    fn lookup(&self, device_id: DeviceId) -> Result<Option<DeviceRecord>, Self::Error> {
        self.fetch(device_id).map(|(_, record)| record)
    }

    fn record(&mut self, certificate: &IdCertificate) -> Result<bool, Self::Error> {
        let bytes: [u8; CERT_LEN] = certificate.to_bytes();
        let changed = self.client.get_mut().execute(
            "INSERT INTO sightwire_devices (device_id, serial, certificate, revoked)
             VALUES ($1, $2, $3, FALSE)
             ON CONFLICT (device_id) DO UPDATE
             SET serial = EXCLUDED.serial, certificate = EXCLUDED.certificate, revoked = FALSE
             WHERE sightwire_devices.serial < EXCLUDED.serial",
            &[
                &certificate.device_id().as_bytes().as_slice(),
                &serial_to_sql(certificate.serial()),
                &bytes.as_slice(),
            ],
        )?;
        Ok(changed > 0)
    }

    fn revoke(&mut self, device_id: DeviceId) -> Result<bool, Self::Error> {
        let mut transaction = self.client.get_mut().transaction()?;
        let row = transaction.query_opt(
            "UPDATE sightwire_devices SET revoked = TRUE WHERE device_id = $1 RETURNING serial",
            &[&device_id.as_bytes().as_slice()],
        )?;
        let Some(row) = row else {
            return Ok(false);
        };
        raise_floor(
            &mut transaction,
            device_id,
            serial_from_sql(row.try_get(0)?),
        )?;
        transaction.commit()?;
        Ok(true)
    }

    fn revoke_through(&mut self, device_id: DeviceId, serial: u64) -> Result<(), Self::Error> {
        let mut transaction = self.client.get_mut().transaction()?;
        raise_floor(&mut transaction, device_id, serial)?;
        transaction.commit()?;
        Ok(())
    }

    fn revocation_floor(&self, device_id: DeviceId) -> Result<u64, Self::Error> {
        self.fetch(device_id).map(|(floor, _)| floor)
    }

    fn list(&self) -> Result<Vec<DeviceRecord>, Self::Error> {
        let rows = self.client.borrow_mut().query(
            "SELECT d.device_id, d.certificate,
                    d.revoked OR d.serial <= COALESCE(r.floor, $1)
             FROM sightwire_devices AS d LEFT JOIN sightwire_revocations AS r USING (device_id)
             ORDER BY d.device_id",
            &[&serial_to_sql(0)],
        )?;
        rows.iter()
            .map(|row| {
                let device_id: Vec<u8> = row.try_get(0)?;
                let certificate: Vec<u8> = row.try_get(1)?;
                decode_record(&device_id, &certificate, row.try_get(2)?)
            })
            .collect()
    }

    fn check_registration(
        &mut self,
        certificate: &IdCertificate,
        record_if_new: bool,
    ) -> Result<RegistrationView, Self::Error> {
        // One round trip for what every registration needs; a second only to record a
        // new certificate.
        let (floor, record) = self.fetch(certificate.device_id())?;
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

/// Hears revocations made by any node or by the issuer tool (`LISTEN
/// sightwire_revocations`), so a node can drop a revoked device from presence at once
/// instead of at the next lookup.
pub struct RevocationListener {
    client: Client,
}

impl std::fmt::Debug for RevocationListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationListener").finish_non_exhaustive()
    }
}

impl RevocationListener {
    /// Connects with `params` and listens.
    pub fn connect(params: &str) -> Result<Self, PostgresRegistryError> {
        let mut client = Client::connect(params, NoTls)?;
        client.batch_execute(&format!("LISTEN {REVOCATION_CHANNEL}"))?;
        Ok(Self { client })
    }

    /// A thread that listens on `params` and sends each revoked ID to the returned
    /// receiver (for `Server::with_revocations`). It reconnects after an error (once per
    /// [`LISTEN_RETRY`]); revocations made while it was disconnected still take effect at
    /// the device's next lookup. It ends when the receiver is dropped.
    pub fn spawn(params: String) -> tokio::sync::mpsc::Receiver<DeviceId> {
        let (sender, receiver) = tokio::sync::mpsc::channel(1024);
        let spawned = std::thread::Builder::new()
            .name("registry-listen".into())
            .spawn(move || {
                while !sender.is_closed() {
                    match Self::connect(&params) {
                        Ok(mut listener) => loop {
                            match listener.wait(LISTEN_RETRY) {
                                Ok(ids) => {
                                    for id in ids {
                                        if sender.blocking_send(id).is_err() {
                                            return;
                                        }
                                    }
                                    if sender.is_closed() {
                                        return;
                                    }
                                }
                                Err(error) => {
                                    tracing::warn!(%error, "revocation listener lost its connection");
                                    break;
                                }
                            }
                        },
                        Err(error) => {
                            tracing::warn!(%error, "revocation listener cannot connect");
                        }
                    }
                    std::thread::sleep(LISTEN_RETRY);
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the revocation listener");
        }
        receiver
    }

    /// Waits up to `timeout` for revocations; returns the device IDs announced (empty on
    /// timeout). Payloads that are not an ID are ignored (logged).
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<DeviceId>, PostgresRegistryError> {
        let mut notifications = self.client.notifications();
        let mut ids = Vec::new();
        let Some(first) = notifications.timeout_iter(timeout).next()? else {
            return Ok(ids);
        };
        // The first wait blocks up to `timeout`; what else is already there is taken
        // without waiting, at most 1024 at a time (bounded work per call).
        let mut pending = Some(first);
        let mut rest = notifications.iter();
        while let Some(notification) = pending.take() {
            match hex::decode(notification.payload())
                .ok()
                .and_then(|bytes| <[u8; 6]>::try_from(bytes).ok())
                .and_then(|octets| DeviceId::from_bytes(octets).ok())
            {
                Some(id) => ids.push(id),
                None => tracing::warn!(
                    payload = notification.payload(),
                    "revocation notice without a device ID"
                ),
            }
            if ids.len() >= 1024 {
                break;
            }
            pending = rest.next()?;
        }
        Ok(ids)
    }
}

#[doc(hidden)]
pub mod testing {
    //! Test support: a fresh schema in the database named by `SIGHTWIRE_TEST_POSTGRES`.

    use std::sync::atomic::{AtomicU32, Ordering};

    /// The environment variable holding the test database's connection string.
    pub const TEST_POSTGRES_ENV: &str = "SIGHTWIRE_TEST_POSTGRES";

    /// Connection parameters for a fresh, empty schema in the test database, or `None`
    /// (with the reason printed) when `SIGHTWIRE_TEST_POSTGRES` is unset. Under `CI=true`
    /// an unset variable is a failure: CI must run these tests, not skip them.
    pub fn fresh_schema() -> Option<String> {
        let Ok(base) = std::env::var(TEST_POSTGRES_ENV) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{TEST_POSTGRES_ENV} is unset under CI=true: .ci/run must start PostgreSQL"
            );
            eprintln!("skipped: {TEST_POSTGRES_ENV} is unset (no PostgreSQL to test against)");
            return None;
        };
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let schema = format!(
            "sw_test_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut client = postgres::Client::connect(&base, postgres::NoTls)
            .unwrap_or_else(|error| panic!("{TEST_POSTGRES_ENV}={base}: {error}"));
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .expect("create a test schema");
        Some(format!("{base} options='-c search_path={schema}'"))
    }
}

#[cfg(test)]
pub(crate) fn test_registry() -> Option<PostgresRegistry> {
    testing::fresh_schema().map(|params| PostgresRegistry::connect(&params).unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_keep_their_order_in_sql() {
        let serials = [0, 1, 2, i64::MAX as u64, 1 << 63, u64::MAX - 1, u64::MAX];
        for pair in serials.windows(2) {
            assert!(serial_to_sql(pair[0]) < serial_to_sql(pair[1]), "{pair:?}");
        }
        for serial in serials {
            assert_eq!(serial_from_sql(serial_to_sql(serial)), serial);
        }
    }
}
