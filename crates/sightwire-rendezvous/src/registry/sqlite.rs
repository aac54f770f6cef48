//! The default registry: one SQLite file (feature `sqlite`, on by default).

use sightwire_id::DeviceId;
use std::path::Path;

use rusqlite::OptionalExtension;
use sightwire_signal::cert::{CERT_LEN, IdCertificate};

use super::{DeviceRecord, Registry};

/// Why the SQLite registry failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteRegistryError {
    /// The database reported an error.
    #[error("registry database error")]
    Database(#[from] rusqlite::Error),
    /// A stored certificate no longer decodes (the file was edited or corrupted).
    #[error("registry holds a corrupt certificate for {device_id}")]
    Corrupt {
        /// The device ID (hex) of the bad row.
        device_id: String,
    },
}

/// The default registry: one SQLite file (WAL mode), so the issuer tool can issue and
/// revoke while the server runs; the server reads it on every registration and connect.
#[derive(Debug)]
pub struct SqliteRegistry {
    connection: rusqlite::Connection,
}

impl SqliteRegistry {
    /// Opens (creating if needed) the registry at `path`.
    pub fn open(path: &Path) -> Result<Self, SqliteRegistryError> {
        Self::init(rusqlite::Connection::open(path)?)
    }

    /// A registry in memory (tests).
    pub fn open_in_memory() -> Result<Self, SqliteRegistryError> {
        Self::init(rusqlite::Connection::open_in_memory()?)
    }

    fn init(connection: rusqlite::Connection) -> Result<Self, SqliteRegistryError> {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        // Writers (the issuer tool) and the server wait for each other briefly instead of
        // failing with SQLITE_BUSY.
        connection.busy_timeout(std::time::Duration::from_secs(2))?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS devices (
                device_id BLOB PRIMARY KEY NOT NULL CHECK (length(device_id) = 6),
                serial INTEGER NOT NULL,
                certificate BLOB NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            ) STRICT;
            CREATE TABLE IF NOT EXISTS revocations (
                device_id BLOB PRIMARY KEY NOT NULL CHECK (length(device_id) = 6),
                floor INTEGER NOT NULL
            ) STRICT;",
        )?;
        Ok(Self { connection })
    }

    fn row_to_record(
        device_id: Vec<u8>,
        certificate: Vec<u8>,
        revoked: bool,
    ) -> Result<DeviceRecord, SqliteRegistryError> {
        let certificate =
            IdCertificate::decode(&certificate).map_err(|_| SqliteRegistryError::Corrupt {
                device_id: hex::encode(&device_id),
            })?;
        if certificate.device_id().as_bytes().as_slice() != device_id.as_slice() {
            return Err(SqliteRegistryError::Corrupt {
                device_id: hex::encode(&device_id),
            });
        }
        Ok(DeviceRecord {
            certificate,
            revoked,
        })
    }
}

/// Serials are u64 on the wire and i64 in SQLite; store the bit pattern.
fn serial_to_sql(serial: u64) -> i64 {
    i64::from_ne_bytes(serial.to_ne_bytes())
}

/// The revocation floor of `device_id` (0 when none).
fn floor_of(
    connection: &rusqlite::Connection,
    device_id: DeviceId,
) -> Result<u64, SqliteRegistryError> {
    let floor: Option<i64> = connection
        .query_row(
            "SELECT floor FROM revocations WHERE device_id = ?1",
            [device_id.as_bytes().as_slice()],
            |row| row.get(0),
        )
        .optional()?;
    Ok(floor.map_or(0, serial_from_sql))
}

fn serial_from_sql(serial: i64) -> u64 {
    u64::from_ne_bytes(serial.to_ne_bytes())
}

impl Registry for SqliteRegistry {
    type Error = SqliteRegistryError;

    fn lookup(&self, device_id: DeviceId) -> Result<Option<DeviceRecord>, Self::Error> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT certificate, revoked FROM devices WHERE device_id = ?1")?;
        let mut rows = statement.query([device_id.as_bytes().as_slice()])?;
        match rows.next()? {
            None => Ok(None),
            Some(row) => {
                let certificate: Vec<u8> = row.get(0)?;
                let revoked: bool = row.get(1)?;
                let mut record =
                    Self::row_to_record(device_id.as_bytes().to_vec(), certificate, revoked)?;
                drop(rows);
                record.revoked |=
                    record.certificate.serial() <= self.revocation_floor(device_id)?;
                Ok(Some(record))
            }
        }
    }

    fn record(&mut self, certificate: &IdCertificate) -> Result<bool, Self::Error> {
        let bytes: [u8; CERT_LEN] = certificate.to_bytes();
        let id = certificate.device_id();
        let transaction = self.connection.transaction()?;
        let current: Option<i64> = transaction
            .query_row(
                "SELECT serial FROM devices WHERE device_id = ?1",
                [id.as_bytes().as_slice()],
                |row| row.get(0),
            )
            .optional()?;
        let newer = current.is_none_or(|serial| serial_from_sql(serial) < certificate.serial());
        if newer {
            transaction.execute(
                "INSERT OR REPLACE INTO devices (device_id, serial, certificate, revoked) VALUES (?1, ?2, ?3, 0)",
                rusqlite::params![id.as_bytes().as_slice(), serial_to_sql(certificate.serial()), bytes.as_slice()],
            )?;
        }
        transaction.commit()?;
        Ok(newer)
    }

    fn revoke(&mut self, device_id: DeviceId) -> Result<bool, Self::Error> {
        let changed = self.connection.execute(
            "UPDATE devices SET revoked = 1 WHERE device_id = ?1",
            [device_id.as_bytes().as_slice()],
        )?;
        if let Some(record) = self.lookup(device_id)? {
            self.revoke_through(device_id, record.certificate.serial())?;
        }
        Ok(changed > 0)
    }

    fn revoke_through(&mut self, device_id: DeviceId, serial: u64) -> Result<(), Self::Error> {
        let transaction = self.connection.transaction()?;
        let floor = floor_of(&transaction, device_id)?.max(serial);
        transaction.execute(
            "INSERT OR REPLACE INTO revocations (device_id, floor) VALUES (?1, ?2)",
            rusqlite::params![device_id.as_bytes().as_slice(), serial_to_sql(floor)],
        )?;
        transaction.commit()?;
        Ok(())
    }

    fn revocation_floor(&self, device_id: DeviceId) -> Result<u64, Self::Error> {
        floor_of(&self.connection, device_id)
    }

    fn list(&self) -> Result<Vec<DeviceRecord>, Self::Error> {
        let mut statement = self
            .connection
            .prepare("SELECT device_id, certificate, revoked FROM devices ORDER BY device_id")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, Vec<u8>>(0)?,
                row.get::<_, Vec<u8>>(1)?,
                row.get::<_, bool>(2)?,
            ))
        })?;
        let records: Result<Vec<_>, Self::Error> = rows
            .map(|row| {
                let (device_id, certificate, revoked) = row?;
                Self::row_to_record(device_id, certificate, revoked)
            })
            .collect();
        records?
            .into_iter()
            .map(|mut record| {
                let floor = self.revocation_floor(record.certificate.device_id())?;
                record.revoked |= record.certificate.serial() <= floor;
                Ok(record)
            })
            .collect()
    }
}
