//! The sans-IO device: `sightwire::proto::Endpoint` behind a C handle. The application
//! owns the socket and the clock.

use std::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use sightwire::proto::{DeviceSettings, Endpoint, EndpointConfig, Recipients};
use sightwire::{DEFAULT_MAX_VIEWERS, ResolveError};
use sightwire_signal::server_addr::HostPort;

use crate::config::SightwireConfig;
use crate::guard;
use crate::types::{
    SIGHTWIRE_MAX_DATAGRAM_LEN, SightwireAddress, SightwireEvent, SightwireFrame, SightwireResult,
    SightwireTransmit, frame_from_c,
};

/// Most addresses `sightwire_device_handle_resolved` takes in one call.
pub const SIGHTWIRE_MAX_RESOLVED_ADDRESSES: usize = 64;

/// Largest datagram `sightwire_device_handle_datagram` takes (a UDP payload's limit).
const MAX_RECEIVED_DATAGRAM_LEN: usize = 65_535;

/// Maps the application's monotonic microseconds onto `Instant`s, from a base captured
/// at creation. Never goes backwards: an earlier time than the last is taken as the last.
#[derive(Debug)]
struct Clock {
    base: Instant,
    base_us: u64,
    last: Instant,
}

impl Clock {
    fn new(now_us: u64) -> Self {
        let base = Instant::now();
        Self {
            base,
            base_us: now_us,
            last: base,
        }
    }

    fn at(&mut self, now_us: u64) -> Instant {
        let since = Duration::from_micros(now_us.saturating_sub(self.base_us));
        let now = self
            .base
            .checked_add(since)
            .unwrap_or(self.last)
            .max(self.last);
        self.last = now;
        now
    }

    fn micros(&self, at: Instant) -> u64 {
        let since = u64::try_from(at.saturating_duration_since(self.base).as_micros());
        self.base_us.saturating_add(since.unwrap_or(u64::MAX))
    }
}

/// A sans-IO device (opaque). Created by `sightwire_device_new`, released by
/// `sightwire_device_free`. Not thread-safe: call it from one thread at a time (the
/// application's event loop).
pub struct SightwireDevice {
    endpoint: Endpoint,
    clock: Clock,
    /// A name `sightwire_device_poll_resolve` could not hand out (buffer too small).
    pending_resolve: Option<HostPort>,
    /// A call panicked: the endpoint's state is unknown, so every later call is refused.
    poisoned: bool,
}

impl std::fmt::Debug for SightwireDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SightwireDevice")
            .field("endpoint", &self.endpoint)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

/// Runs `body` on `device` (`None`: a null handle), catching a panic (which poisons
/// the device).
fn with_device(
    device: Option<&mut SightwireDevice>,
    body: impl FnOnce(&mut SightwireDevice) -> SightwireResult,
) -> SightwireResult {
    let Some(device) = device else {
        return SightwireResult::NullPointer;
    };
    if device.poisoned {
        return SightwireResult::Panic;
    }
    match catch_unwind(AssertUnwindSafe(|| body(device))) {
        Ok(result) => result,
        Err(_) => {
            device.poisoned = true;
            SightwireResult::Panic
        }
    }
}

/// Creates a sans-IO device from `config` (which is copied; free it when convenient).
/// `now_us` is the application's monotonic clock in microseconds: every later call takes
/// the same clock. The device starts by reaching the rendezvous: call
/// `sightwire_device_set_unix_time`, `sightwire_device_set_local_ip` and
/// `sightwire_device_handle_timeout`, then poll transmits.
///
/// # Safety
/// `config` must be null or a live configuration; `out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_new(
    config: *const SightwireConfig,
    now_us: u64,
    out: *mut *mut SightwireDevice,
) -> SightwireResult {
    guard(|| {
        // SAFETY: the caller promises a live configuration (or null).
        let Some(config) = (unsafe { config.as_ref() }) else {
            return SightwireResult::NullPointer;
        };
        if out.is_null() {
            return SightwireResult::NullPointer;
        }
        let clock = Clock::new(now_us);
        let identity = config.identity();
        let rng = rand::rngs::StdRng::from_entropy();
        let mut endpoint_config =
            EndpointConfig::new(identity.keypair, config.rendezvous(false), Box::new(rng));
        endpoint_config.local_port = config.local_port();
        endpoint_config.path_policy = config.path_policy();
        let mut settings = DeviceSettings::new(identity.certificate);
        settings.password = config.password();
        settings.max_viewers = config.max_viewers().unwrap_or(DEFAULT_MAX_VIEWERS);
        let Ok(endpoint) = Endpoint::device(endpoint_config, settings, clock.base) else {
            return SightwireResult::InvalidArgument;
        };
        let device = SightwireDevice {
            endpoint,
            clock,
            pending_resolve: None,
            poisoned: false,
        };
        // SAFETY: `out` is non-null and the caller promises it is writable.
        unsafe { out.write(Box::into_raw(Box::new(device))) };
        SightwireResult::Ok
    })
}

/// Releases a device without a goodbye (call `sightwire_device_shutdown` and send its
/// transmits first to tell viewers and the rendezvous). Null is ignored.
///
/// # Safety
/// `device` must be null or a device from `sightwire_device_new` not freed yet.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_free(device: *mut SightwireDevice) {
    if device.is_null() {
        return;
    }
    // SAFETY: the caller promises it came from `Box::into_raw` in
    // `sightwire_device_new` and is freed once.
    let device = unsafe { Box::from_raw(device) };
    // A panic in a destructor must not unwind into C either.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(device)));
}

/// The wall clock, as microseconds since the Unix epoch: certificate validity and the
/// timestamp of each handshake. Call before the first input and then now and then (at
/// least every few seconds; before each input is fine).
///
/// # Safety
/// `device` must be a live device.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_set_unix_time(
    device: *mut SightwireDevice,
    unix_us: u64,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        device
            .endpoint
            .set_unix_time(Duration::from_micros(unix_us));
        SightwireResult::Ok
    })
}

/// The local IP address the operating system would use towards the rendezvous (for
/// example the address of a UDP socket `connect`ed to it; `port` is ignored), or null
/// when there is no route. A change is a network change: the device registers again.
///
/// # Safety
/// `device` must be a live device; `ip` null or readable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_set_local_ip(
    device: *mut SightwireDevice,
    now_us: u64,
    ip: *const SightwireAddress,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        // SAFETY: the caller promises `ip` is null or readable.
        let ip = match unsafe { ip.as_ref() } {
            None => None,
            Some(address) => match address.to_socket_addr() {
                Some(address) => Some(address.ip()),
                None => return SightwireResult::InvalidArgument,
            },
        };
        let now = device.clock.at(now_us);
        device.endpoint.set_local_ip(now, ip);
        SightwireResult::Ok
    })
}

/// A datagram arrived on the application's socket from `from`. `data` is decrypted in
/// place (its contents are undefined afterwards); `len` is at most 65535. Poll transmits
/// and events afterwards.
///
/// # Safety
/// `device` must be a live device, `from` readable, `data` `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_handle_datagram(
    device: *mut SightwireDevice,
    now_us: u64,
    from: *const SightwireAddress,
    data: *mut u8,
    len: usize,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        // SAFETY: the caller promises `from` is null or readable.
        let Some(from) = (unsafe { from.as_ref() }) else {
            return SightwireResult::NullPointer;
        };
        let Some(from) = from.to_socket_addr() else {
            return SightwireResult::InvalidArgument;
        };
        if data.is_null() {
            return SightwireResult::NullPointer;
        }
        if len > MAX_RECEIVED_DATAGRAM_LEN {
            return SightwireResult::InvalidArgument;
        }
        // SAFETY: non-null, `len` writable bytes as the caller promises, bounded.
        let datagram = unsafe { std::slice::from_raw_parts_mut(data, len) };
        let now = device.clock.at(now_us);
        device.endpoint.handle_datagram(now, from, datagram);
        SightwireResult::Ok
    })
}

/// Time passed: fires every timer due at `now_us`. Call it when the deadline of
/// `sightwire_device_poll_timeout` has passed (calling it early is harmless).
///
/// # Safety
/// `device` must be a live device.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_handle_timeout(
    device: *mut SightwireDevice,
    now_us: u64,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        let now = device.clock.at(now_us);
        device.endpoint.handle_timeout(now);
        SightwireResult::Ok
    })
}

/// The next datagram to send: written to `buf` (which must hold at least
/// `SIGHTWIRE_MAX_DATAGRAM_LEN` bytes, else `SIGHTWIRE_RESULT_BUFFER_TOO_SMALL` and
/// nothing is taken), with where to and how in `*out`. `SIGHTWIRE_RESULT_EMPTY`: nothing
/// more to send now. Call until it returns `SIGHTWIRE_RESULT_EMPTY` after every input.
///
/// # Safety
/// `device` must be a live device, `out` writable, `buf` `buf_len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_poll_transmit(
    device: *mut SightwireDevice,
    out: *mut SightwireTransmit,
    buf: *mut u8,
    buf_len: usize,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        if out.is_null() || buf.is_null() {
            return SightwireResult::NullPointer;
        }
        if buf_len < SIGHTWIRE_MAX_DATAGRAM_LEN {
            return SightwireResult::BufferTooSmall;
        }
        // SAFETY: non-null and `buf_len` writable bytes, as the caller promises.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf, buf_len) };
        // A sans-IO device has no stream port, so the core never asks for a stream;
        // should it, that datagram is skipped rather than sent over UDP.
        while let Some(transmit) = device.endpoint.poll_transmit() {
            if transmit.stream_port.is_some() {
                continue;
            }
            let len = transmit.contents.len();
            let Some(target) = buf.get_mut(..len) else {
                continue;
            };
            target.copy_from_slice(transmit.contents);
            let result = SightwireTransmit {
                destination: SightwireAddress::from_socket_addr(transmit.destination),
                ttl: transmit.ttl.unwrap_or(0),
                len,
            };
            // SAFETY: non-null and writable, as the caller promises.
            unsafe { out.write(result) };
            return SightwireResult::Ok;
        }
        SightwireResult::Empty
    })
}

/// When `sightwire_device_handle_timeout` should next be called, on the application's
/// monotonic clock in microseconds. `SIGHTWIRE_RESULT_EMPTY`: no timer (after shutdown).
///
/// # Safety
/// `device` must be a live device, `deadline_us` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_poll_timeout(
    device: *mut SightwireDevice,
    deadline_us: *mut u64,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        if deadline_us.is_null() {
            return SightwireResult::NullPointer;
        }
        match device.endpoint.poll_timeout() {
            Some(deadline) => {
                // SAFETY: non-null and writable, as the caller promises.
                unsafe { deadline_us.write(device.clock.micros(deadline)) };
                SightwireResult::Ok
            }
            None => SightwireResult::Empty,
        }
    })
}

/// The next event, written to `*out`. `SIGHTWIRE_RESULT_EMPTY`: none. Events the
/// application does not poll are dropped (and counted) beyond 4096.
///
/// # Safety
/// `device` must be a live device, `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_poll_event(
    device: *mut SightwireDevice,
    out: *mut SightwireEvent,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        if out.is_null() {
            return SightwireResult::NullPointer;
        }
        match device.endpoint.poll_event() {
            Some(event) => {
                // SAFETY: non-null and writable, as the caller promises.
                unsafe { out.write(SightwireEvent::from_event(&event.event)) };
                SightwireResult::Ok
            }
            None => SightwireResult::Empty,
        }
    })
}

/// A rendezvous host name to resolve (the core does no DNS): written NUL-terminated to
/// `host` (`host_len` bytes; `SIGHTWIRE_RESULT_BUFFER_TOO_SMALL` keeps it for a call with
/// a larger buffer; 256 bytes always suffice) and its port to `*port`.
/// `SIGHTWIRE_RESULT_EMPTY`: nothing to resolve (always, for a rendezvous given by IP).
/// Answer with `sightwire_device_handle_resolved`.
///
/// # Safety
/// `device` must be a live device, `host` `host_len` writable bytes, `port` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_poll_resolve(
    device: *mut SightwireDevice,
    host: *mut c_char,
    host_len: usize,
    port: *mut u16,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        if host.is_null() || port.is_null() {
            return SightwireResult::NullPointer;
        }
        let Some(name) = device
            .pending_resolve
            .take()
            .or_else(|| device.endpoint.poll_resolve())
        else {
            return SightwireResult::Empty;
        };
        let text = name.host().as_bytes();
        if text.len() >= host_len {
            device.pending_resolve = Some(name);
            return SightwireResult::BufferTooSmall;
        }
        // SAFETY: `host_len` writable bytes as the caller promises, and the name
        // plus its NUL fits in them (checked above).
        let target = unsafe { std::slice::from_raw_parts_mut(host.cast::<u8>(), text.len() + 1) };
        target[..text.len()].copy_from_slice(text);
        target[text.len()] = 0;
        // SAFETY: non-null and writable, as the caller promises.
        unsafe { port.write(name.port()) };
        SightwireResult::Ok
    })
}

/// The addresses the name from `sightwire_device_poll_resolve` resolved to (ports
/// included), at most `SIGHTWIRE_MAX_RESOLVED_ADDRESSES`; `count` 0: it did not resolve
/// (`addresses` may then be null).
///
/// # Safety
/// `device` must be a live device, `addresses` `count` readable addresses.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_handle_resolved(
    device: *mut SightwireDevice,
    now_us: u64,
    addresses: *const SightwireAddress,
    count: usize,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        if count > SIGHTWIRE_MAX_RESOLVED_ADDRESSES {
            return SightwireResult::InvalidArgument;
        }
        let resolved = if count == 0 {
            Err(ResolveError::NotFound)
        } else {
            if addresses.is_null() {
                return SightwireResult::NullPointer;
            }
            // SAFETY: non-null, `count` (bounded) readable addresses as promised.
            let given = unsafe { std::slice::from_raw_parts(addresses, count) };
            let parsed: Option<Vec<_>> = given.iter().map(|a| a.to_socket_addr()).collect();
            match parsed {
                Some(parsed) => Ok(parsed),
                None => return SightwireResult::InvalidArgument,
            }
        };
        let now = device.clock.at(now_us);
        device.endpoint.handle_resolved(now, resolved);
        SightwireResult::Ok
    })
}

/// Sends a frame to every authorized viewer (H.264/H.265 through the GOP cache, so a
/// viewer joining mid-GOP starts at the last keyframe). The bytes are copied before the
/// call returns. `*queued` (if not null): how many viewers it was queued for.
/// `SIGHTWIRE_RESULT_FRAME_REFUSED`: it cannot be sent to anyone (empty or over
/// `SIGHTWIRE_MAX_FRAME_LEN`). Poll transmits afterwards.
///
/// # Safety
/// `device` must be a live device, `frame` readable (its `data` `len` readable bytes),
/// `queued` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_send_frame(
    device: *mut SightwireDevice,
    now_us: u64,
    frame: *const SightwireFrame,
    queued: *mut u32,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        // SAFETY: the caller promises `frame` is null or readable.
        let Some(frame) = (unsafe { frame.as_ref() }) else {
            return SightwireResult::NullPointer;
        };
        // SAFETY: the caller promises `data` holds `len` readable bytes.
        let frame = match unsafe { frame_from_c(frame) } {
            Ok(frame) => frame,
            Err(error) => return error,
        };
        let now = device.clock.at(now_us);
        match device.endpoint.send_frame(now, Recipients::All, frame) {
            Ok(count) => {
                if !queued.is_null() {
                    // SAFETY: non-null and writable, as the caller promises.
                    unsafe { queued.write(u32::try_from(count).unwrap_or(u32::MAX)) };
                }
                SightwireResult::Ok
            }
            Err(sightwire::proto::CommandError::ShutDown) => SightwireResult::ShutDown,
            Err(_) => SightwireResult::FrameRefused,
        }
    })
}

/// Whether the device is registered with the rendezvous, to `*registered`.
///
/// # Safety
/// `device` must be a live device, `registered` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_is_registered(
    device: *mut SightwireDevice,
    registered: *mut bool,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        if registered.is_null() {
            return SightwireResult::NullPointer;
        }
        // SAFETY: non-null and writable, as the caller promises.
        unsafe { registered.write(device.endpoint.is_registered()) };
        SightwireResult::Ok
    })
}

/// Says goodbye to every viewer and deregisters: poll and send the transmits it leaves,
/// then free the device. Nothing else happens afterwards.
///
/// # Safety
/// `device` must be a live device.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_device_shutdown(
    device: *mut SightwireDevice,
    now_us: u64,
) -> SightwireResult {
    // SAFETY: the caller promises a live device not used by another thread meanwhile (or null).
    let device = unsafe { device.as_mut() };
    with_device(device, |device| {
        let now = device.clock.at(now_us);
        device.endpoint.shutdown(now);
        SightwireResult::Ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_maps_microseconds_and_never_goes_back() {
        let mut clock = Clock::new(1_000_000);
        let base = clock.base;
        assert_eq!(clock.at(1_000_000), base);
        let later = clock.at(1_250_000);
        assert_eq!(later - base, Duration::from_millis(250));
        assert_eq!(clock.micros(later), 1_250_000);
        // Earlier than the last time, or before the base: held at the last time.
        assert_eq!(clock.at(1_100_000), later);
        assert_eq!(clock.at(0), later);
        // A time so far ahead that `Instant` cannot hold it does not panic.
        let far = clock.at(u64::MAX);
        assert!(far >= later);
        assert_eq!(clock.micros(base), 1_000_000);
    }
}
