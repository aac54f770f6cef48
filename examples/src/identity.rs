//! A camera's identity on disk: its static key (generated at first boot) and the ID
//! certificate the operator issued for it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rand::RngCore;
use sightwire::DeviceIdentity;
use sightwire_id::DeviceId;
use sightwire_session::{PublicKey, StaticKeypair};
use sightwire_signal::cert::{CertificateFields, IdCertificate, IssuerKey};

/// File holding the device's private key, hex.
pub const KEY_FILE: &str = "device.key";
/// File holding the device's certificate (raw or hex).
pub const CERT_FILE: &str = "device.cert";
/// Validity of a self-issued demo certificate.
const DEMO_CERT_LIFETIME_SECS: u64 = 365 * 24 * 3600;

/// Reads 32 bytes written as 64 hex digits.
pub fn parse_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(text.trim()).context("not hex")?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| anyhow::anyhow!("a key is 32 bytes (64 hex digits), got {}", bytes.len()))
}

/// Reads a 32-byte key from a file of 64 hex digits.
pub fn read_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_key(&text).with_context(|| format!("in {}", path.display()))
}

/// The device key in `state_dir`, generated (and stored with mode 0600) on first run.
pub fn load_or_create_keypair(state_dir: &Path) -> anyhow::Result<StaticKeypair> {
    load_or_create_key_file(state_dir, KEY_FILE)
}

/// The static key in `state_dir/file`, generated (and stored with mode 0600) on first
/// run.
pub fn load_or_create_key_file(state_dir: &Path, file: &str) -> anyhow::Result<StaticKeypair> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let path = state_dir.join(file);
    if path.exists() {
        return Ok(StaticKeypair::from_private(read_key(&path)?));
    }
    let keypair = StaticKeypair::generate(&mut rand::rngs::OsRng);
    write_private(&path, &hex::encode(keypair.private_bytes()))?;
    Ok(keypair)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Where the certificate lives in `state_dir`.
pub fn cert_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CERT_FILE)
}

/// The device's identity: its key, and the certificate from `state_dir`, or — in demo
/// mode, given the issuer's secret — a certificate issued here and stored for next time.
pub fn load_identity(
    state_dir: &Path,
    demo_issuer: Option<&IssuerKey>,
    device_id: Option<DeviceId>,
) -> anyhow::Result<DeviceIdentity> {
    let keypair = load_or_create_keypair(state_dir)?;
    let path = cert_path(state_dir);
    let certificate = if path.exists() {
        // Either the raw certificate (as `sightwire-rendezvous issuer issue --out`
        // writes it) or its hex.
        let raw = std::fs::read(&path)?;
        let bytes = if raw.len() == sightwire_signal::cert::CERT_LEN {
            raw
        } else {
            hex::decode(String::from_utf8_lossy(&raw).trim()).context("certificate is not hex")?
        };
        IdCertificate::decode(&bytes).context("certificate does not decode")?
    } else if let Some(issuer) = demo_issuer {
        let id = device_id.unwrap_or_else(random_local_id);
        let now = sightwire_relay::unix_now();
        let mut serial = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut serial);
        let certificate = issuer.issue(CertificateFields {
            device_id: id,
            device_key: *keypair.public(),
            not_before: now.saturating_sub(60),
            not_after: now + DEMO_CERT_LIFETIME_SECS,
            serial: u64::from_be_bytes(serial) >> 1,
        })?;
        std::fs::write(&path, hex::encode(certificate.to_bytes()))?;
        certificate
    } else {
        bail!(
            "no ID certificate in {}. Ask the operator to issue one for this device key:\n  \
             sightwire-rendezvous issuer issue --key <issuer key> --registry <registry> \
             --device-id <ID> --device-key {} --out {}",
            state_dir.display(),
            hex::encode(keypair.public()),
            path.display()
        );
    };
    if certificate.device_key() != keypair.public() {
        bail!(
            "the certificate in {} is for another device key",
            path.display()
        );
    }
    Ok(DeviceIdentity::new(keypair, certificate))
}

/// A random unicast, locally administered MAC for demo devices without a real one.
pub fn random_local_id() -> DeviceId {
    loop {
        let mut bytes = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        bytes[0] = (bytes[0] & 0xFC) | 0x02;
        if let Ok(id) = DeviceId::from_bytes(bytes) {
            return id;
        }
    }
}

/// File of a viewer's state directory holding its private key, hex.
pub const VIEWER_KEY_FILE: &str = "viewer.key";
/// File of a viewer's state directory listing the devices it has watched: one
/// `<device ID> <device key hex>` per line (trust on first use).
pub const KNOWN_DEVICES_FILE: &str = "known_devices";

/// The devices a viewer has watched before, and the key each one proved (TOFU).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KnownDevices {
    devices: Vec<(DeviceId, PublicKey)>,
}

impl KnownDevices {
    /// Reads `state_dir/known_devices` (empty if missing). Lines that do not parse are
    /// an error: a silently ignored pin is no pin.
    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(KNOWN_DEVICES_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut devices = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((id, key)) = line.split_once(char::is_whitespace) else {
                bail!("line {}: expected `<device ID> <key hex>`", n + 1);
            };
            let id: DeviceId = id
                .parse()
                .map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
            let key: PublicKey = key
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("line {}: {e}", n + 1))?;
            devices.push((id, key));
        }
        Ok(Self { devices })
    }

    /// The key pinned for `id`, if the viewer has watched it before.
    pub fn key_of(&self, id: DeviceId) -> Option<PublicKey> {
        self.devices.iter().find(|(d, _)| *d == id).map(|(_, k)| *k)
    }

    /// Pins `key` for `id` and appends it to the file. Returns whether it was new.
    pub fn remember(
        &mut self,
        state_dir: &Path,
        id: DeviceId,
        key: PublicKey,
    ) -> anyhow::Result<bool> {
        use std::io::Write;
        if self.key_of(id).is_some() {
            return Ok(false);
        }
        self.devices.push((id, key));
        let path = state_dir.join(KNOWN_DEVICES_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        writeln!(file, "{id} {key}")?;
        Ok(true)
    }
}

#[cfg(test)]
mod known_devices_tests {
    use super::*;

    #[test]
    fn pins_survive_a_restart_and_bad_lines_are_refused() {
        let dir = std::env::temp_dir().join(format!("sightwire-tofu-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let id: DeviceId = "1C:C3:16:AB:CD:EF".parse().unwrap();
        let mut known = KnownDevices::load(&dir).unwrap();
        assert_eq!(known.key_of(id), None);
        assert!(known.remember(&dir, id, [7; 32].into()).unwrap());
        assert!(
            !known.remember(&dir, id, [8; 32].into()).unwrap(),
            "a pin is never replaced"
        );
        let again = KnownDevices::load(&dir).unwrap();
        assert_eq!(again.key_of(id), Some([7; 32].into()));
        assert!(KnownDevices::parse("1C:C3:16:AB:CD:EF nothex").is_err());
        assert!(KnownDevices::parse("garbage").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
