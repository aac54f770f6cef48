//! The device configuration both modes start from: an opaque builder, so the C struct
//! layout never has to change when the configuration grows.

use std::ffi::c_char;

use sightwire::{DeviceIdentity, PathPolicy, RendezvousServer, ServerAddr};
use sightwire_session::{PublicKey, StaticKeypair};
use sightwire_signal::cert::IdCertificate;

use crate::guard;
use crate::types::{SightwireResult, c_str, fixed_bytes};

/// Longest rendezvous address string accepted (`host:port`, bytes before the NUL).
pub const SIGHTWIRE_MAX_RENDEZVOUS_LEN: usize = 300;
/// Longest device password accepted (bytes before the NUL).
pub const SIGHTWIRE_MAX_PASSWORD_LEN: usize = 256;

/// A device configuration (opaque). Created by `sightwire_config_new`, adjusted by the
/// `sightwire_config_set_*` functions, released by `sightwire_config_free`. Starting a
/// device or a camera copies what it needs: the configuration may be freed right after.
pub struct SightwireConfig {
    private_key: [u8; 32],
    certificate: IdCertificate,
    rendezvous: ServerAddr,
    rendezvous_key: PublicKey,
    stream_port: Option<u16>,
    password: Option<String>,
    max_viewers: Option<usize>,
    local_port: u16,
    relay_only: bool,
}

impl std::fmt::Debug for SightwireConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SightwireConfig")
            .field("device_id", &self.certificate.device_id())
            .field("rendezvous", &self.rendezvous)
            .field("local_port", &self.local_port)
            .finish_non_exhaustive()
    }
}

impl SightwireConfig {
    pub(crate) fn identity(&self) -> DeviceIdentity {
        DeviceIdentity::new(
            StaticKeypair::from_private(self.private_key),
            self.certificate,
        )
    }

    /// The rendezvous, with its stream port only where the mode can use streams.
    pub(crate) fn rendezvous(&self, streams: bool) -> RendezvousServer {
        {
            let mut value = RendezvousServer::new(self.rendezvous.clone(), self.rendezvous_key);
            value.stream_port = self.stream_port.filter(|_| streams);
            value
        }
    }

    pub(crate) fn password(&self) -> Option<String> {
        self.password.clone()
    }

    pub(crate) fn max_viewers(&self) -> Option<usize> {
        self.max_viewers
    }

    pub(crate) fn local_port(&self) -> u16 {
        self.local_port
    }

    pub(crate) fn path_policy(&self) -> PathPolicy {
        if self.relay_only {
            PathPolicy::RelayOnly
        } else {
            PathPolicy::Any
        }
    }
}

/// Creates a device configuration from the device's identity and its rendezvous.
///
/// - `private_key`, `private_key_len`: the device's static X25519 private key, 32 bytes
///   (generated once at first boot and kept in the device's flash).
/// - `certificate`, `certificate_len`: the ID certificate the operator issued for that
///   key, as raw bytes (what `sightwire-rendezvous issuer issue --out` writes).
/// - `rendezvous`: the rendezvous as `"host:port"` or `"ip:port"`, NUL-terminated, at
///   most `SIGHTWIRE_MAX_RENDEZVOUS_LEN` bytes.
/// - `rendezvous_key`, `rendezvous_key_len`: the rendezvous's static public key, 32
///   bytes (pinned: a server that cannot prove it is refused).
///
/// On success `*out` is a new configuration the caller frees with
/// `sightwire_config_free`. The inputs are copied; the library keeps no pointer to them.
///
/// # Safety
/// Each pointer must be null or point to the number of readable bytes its length says
/// (`rendezvous`: to a NUL-terminated string); `out` must be null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_config_new(
    private_key: *const u8,
    private_key_len: usize,
    certificate: *const u8,
    certificate_len: usize,
    rendezvous: *const c_char,
    rendezvous_key: *const u8,
    rendezvous_key_len: usize,
    out: *mut *mut SightwireConfig,
) -> SightwireResult {
    guard(|| {
        if out.is_null() || certificate.is_null() {
            return SightwireResult::NullPointer;
        }
        // SAFETY: the caller's promises on each pointer and length are passed on.
        let built = unsafe {
            build(
                private_key,
                private_key_len,
                certificate,
                certificate_len,
                rendezvous,
                rendezvous_key,
                rendezvous_key_len,
            )
        };
        match built {
            Ok(config) => {
                // SAFETY: `out` is non-null and the caller promises it is writable.
                unsafe { out.write(Box::into_raw(Box::new(config))) };
                SightwireResult::Ok
            }
            Err(error) => error,
        }
    })
}

/// # Safety
/// As [`sightwire_config_new`]; `certificate` is non-null.
unsafe fn build(
    private_key: *const u8,
    private_key_len: usize,
    certificate: *const u8,
    certificate_len: usize,
    rendezvous: *const c_char,
    rendezvous_key: *const u8,
    rendezvous_key_len: usize,
) -> Result<SightwireConfig, SightwireResult> {
    // SAFETY: the caller promises `private_key_len` readable bytes.
    let private_key: [u8; 32] =
        unsafe { fixed_bytes(private_key, private_key_len, SightwireResult::InvalidKey) }?;
    // SAFETY: as above, for the rendezvous key.
    let rendezvous_key: [u8; 32] = unsafe {
        fixed_bytes(
            rendezvous_key,
            rendezvous_key_len,
            SightwireResult::InvalidKey,
        )
    }?;
    // The C ABI keeps keys as byte arrays; the Rust API names them.
    let rendezvous_key = PublicKey::from_bytes(rendezvous_key);
    if certificate_len != sightwire_signal::cert::CERT_LEN {
        return Err(SightwireResult::InvalidCertificate);
    }
    // SAFETY: non-null (checked by the caller) and `certificate_len` readable bytes,
    // which is the fixed certificate length.
    let cert_bytes = unsafe { std::slice::from_raw_parts(certificate, certificate_len) };
    let certificate =
        IdCertificate::decode(cert_bytes).map_err(|_| SightwireResult::InvalidCertificate)?;
    let keypair = StaticKeypair::from_private(private_key);
    if certificate.device_key() != keypair.public() {
        return Err(SightwireResult::InvalidCertificate);
    }
    // SAFETY: the caller promises a NUL-terminated string; at most
    // `SIGHTWIRE_MAX_RENDEZVOUS_LEN + 1` bytes are read.
    let rendezvous = unsafe { c_str(rendezvous, SIGHTWIRE_MAX_RENDEZVOUS_LEN) }?;
    let rendezvous: ServerAddr = rendezvous
        .parse()
        .map_err(|_| SightwireResult::InvalidAddress)?;
    Ok(SightwireConfig {
        private_key,
        certificate,
        rendezvous,
        rendezvous_key,
        stream_port: None,
        password: None,
        max_viewers: None,
        local_port: 0,
        relay_only: false,
    })
}

/// Runs `change` on `config` (`None`: a null handle).
fn with_config(
    config: Option<&mut SightwireConfig>,
    change: impl FnOnce(&mut SightwireConfig) -> SightwireResult,
) -> SightwireResult {
    guard(|| match config {
        Some(config) => change(config),
        None => SightwireResult::NullPointer,
    })
}

/// The device password viewers may prove (the camera's admin password), NUL-terminated
/// UTF-8 of at most `SIGHTWIRE_MAX_PASSWORD_LEN` bytes; null: no password (only viewer keys the
/// device trusts are admitted, and this version of the C ABI sets none: keep a password).
///
/// # Safety
/// `config` must be a live configuration; `password` null or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_config_set_password(
    config: *mut SightwireConfig,
    password: *const c_char,
) -> SightwireResult {
    // SAFETY: the caller promises a live configuration not used by another thread meanwhile (or null).
    let config = unsafe { config.as_mut() };
    with_config(config, |config| {
        if password.is_null() {
            config.password = None;
            return SightwireResult::Ok;
        }
        // SAFETY: the caller promises a NUL-terminated string; the scan is bounded.
        match unsafe { c_str(password, SIGHTWIRE_MAX_PASSWORD_LEN) } {
            Ok(text) => {
                config.password = Some(text.to_owned());
                SightwireResult::Ok
            }
            Err(error) => error,
        }
    })
}

/// Most viewers served at once (further viewers are refused); 0 restores the default
/// (16).
///
/// # Safety
/// `config` must be a live configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_config_set_max_viewers(
    config: *mut SightwireConfig,
    max_viewers: u32,
) -> SightwireResult {
    // SAFETY: the caller promises a live configuration not used by another thread meanwhile (or null).
    let config = unsafe { config.as_mut() };
    with_config(config, |config| {
        config.max_viewers = (max_viewers > 0).then_some(max_viewers as usize);
        SightwireResult::Ok
    })
}

/// The local UDP port. Sans-IO: the port of the application's socket (the device
/// advertises it to viewers on the same network; 0: none). Camera: the port to bind
/// (0: any).
///
/// # Safety
/// `config` must be a live configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_config_set_local_port(
    config: *mut SightwireConfig,
    port: u16,
) -> SightwireResult {
    // SAFETY: the caller promises a live configuration not used by another thread meanwhile (or null).
    let config = unsafe { config.as_mut() };
    with_config(config, |config| {
        config.local_port = port;
        SightwireResult::Ok
    })
}

/// The rendezvous's TCP/TLS port, used when UDP gets no answer (0: no fallback, the
/// default). Only the camera mode uses it; a sans-IO device stays on UDP.
///
/// # Safety
/// `config` must be a live configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_config_set_stream_port(
    config: *mut SightwireConfig,
    port: u16,
) -> SightwireResult {
    // SAFETY: the caller promises a live configuration not used by another thread meanwhile (or null).
    let config = unsafe { config.as_mut() };
    with_config(config, |config| {
        config.stream_port = (port > 0).then_some(port);
        SightwireResult::Ok
    })
}

/// `true`: reach viewers through the relay only (no direct packets between the two).
///
/// # Safety
/// `config` must be a live configuration.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_config_set_relay_only(
    config: *mut SightwireConfig,
    relay_only: bool,
) -> SightwireResult {
    // SAFETY: the caller promises a live configuration not used by another thread meanwhile (or null).
    let config = unsafe { config.as_mut() };
    with_config(config, |config| {
        config.relay_only = relay_only;
        SightwireResult::Ok
    })
}

/// Releases a configuration. Null is ignored.
///
/// # Safety
/// `config` must be null or a configuration from `sightwire_config_new` not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_config_free(config: *mut SightwireConfig) {
    if config.is_null() {
        return;
    }
    // SAFETY: the caller promises it came from `Box::into_raw` in
    // `sightwire_config_new` and is freed once.
    drop(unsafe { Box::from_raw(config) });
}
