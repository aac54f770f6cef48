//! The Sightwire C SDK: what a camera's C firmware links to become a Sightwire device.
//!
//! Two ways to run a device, over the same configuration ([`SightwireConfig`]):
//!
//! - **sans-IO** ([`SightwireDevice`], `sightwire_device_*`): the endpoint core with no
//!   socket, no clock and no thread, as boringtun's FFI does it. The application owns
//!   one UDP socket and a monotonic clock, hands every datagram it receives to
//!   `sightwire_device_handle_datagram`, calls `sightwire_device_handle_timeout` when the
//!   deadline from `sightwire_device_poll_timeout` passes, and after every input sends
//!   what `sightwire_device_poll_transmit` gives until it reports
//!   `SIGHTWIRE_RESULT_EMPTY`. This is the mode for firmware with its own event loop.
//! - **convenience** ([`SightwireCamera`], `sightwire_camera_*`): the tokio endpoint
//!   (`sightwire::Device`) on a thread of its own, fed frames from any thread.
//!
//! The header `include/sightwire.h` is generated from this crate with cbindgen (a test
//! checks that the checked-in copy is current); its comments are the docs below. Rules
//! that hold for every function:
//!
//! - Every function returns a [`SightwireResult`] (or nothing), never unwinds: a Rust
//!   panic is caught and reported as `SIGHTWIRE_RESULT_PANIC`, after which the handle
//!   refuses every call but its `free`/`stop`.
//! - Every pointer is checked for null; every length is checked against a limit before
//!   anything is read or allocated.
//! - Handles are created by a `*_new`/`*_start` function and released by exactly one
//!   call of their `*_free`/`*_stop` function; the library never keeps a pointer the
//!   application passed in beyond the call.
//! - Time crosses the ABI as microseconds of a monotonic clock the application chooses
//!   (`CLOCK_MONOTONIC`), never going backwards; the wall clock (certificate validity)
//!   is given separately, as microseconds since the Unix epoch.
//!
//! The sans-IO loop, here from Rust (C calls the same functions the same way;
//! `examples/c/sans_io_camera.c` is the whole program):
//!
//! ```no_run
//! use std::net::UdpSocket;
//! use sightwire_ffi::*;
//!
//! # fn run(key: [u8; 32], certificate: &[u8], rendezvous_key: [u8; 32], now_us: impl Fn() -> u64, unix_us: u64) {
//! let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
//! let (mut config, mut device) = (std::ptr::null_mut(), std::ptr::null_mut());
//! // SAFETY: each pointer covers the length given with it; the string ends in a NUL.
//! unsafe {
//!     let result = sightwire_config_new(
//!         key.as_ptr(), key.len(), certificate.as_ptr(), certificate.len(),
//!         c"rendezvous.example.com:3478".as_ptr(),
//!         rendezvous_key.as_ptr(), rendezvous_key.len(), &mut config,
//!     );
//!     assert_eq!(result, SightwireResult::Ok);
//!     sightwire_device_new(config, now_us(), &mut device);
//!     sightwire_config_free(config);
//!     sightwire_device_set_unix_time(device, unix_us);
//!     sightwire_device_handle_timeout(device, now_us());
//! }
//! let mut buf = [0u8; SIGHTWIRE_MAX_DATAGRAM_LEN];
//! let mut transmit = SightwireTransmit::default();
//! // After every input: send every transmit (then read events, resolve names, and wait
//! // for the socket or the deadline of sightwire_device_poll_timeout).
//! // SAFETY: a live device and a buffer of `buf.len()` bytes.
//! while unsafe { sightwire_device_poll_transmit(device, &mut transmit, buf.as_mut_ptr(), buf.len()) }
//!     == SightwireResult::Ok
//! {
//!     let [a, b, c, d, ..] = transmit.destination.address;
//!     let to = std::net::SocketAddr::from(([a, b, c, d], transmit.destination.port));
//!     let _ = socket.send_to(&buf[..transmit.len], to);
//! }
//! # }
//! ```
//!
//! What it is not for: viewers (the C ABI has only the device side), and the TCP/TLS
//! fallback in sans-IO mode (the application would have to own streams too; a sans-IO
//! device never asks for one).
#![deny(missing_docs)]

mod camera;
mod config;
mod device;
mod types;

pub use camera::{
    SIGHTWIRE_CAMERA_EVENT_QUEUE, SIGHTWIRE_CAMERA_FRAME_QUEUE, SightwireCamera,
    sightwire_camera_local_port, sightwire_camera_poll_event, sightwire_camera_send_frame,
    sightwire_camera_start, sightwire_camera_stop,
};
pub use config::{
    SIGHTWIRE_MAX_PASSWORD_LEN, SIGHTWIRE_MAX_RENDEZVOUS_LEN, SightwireConfig,
    sightwire_config_free, sightwire_config_new, sightwire_config_set_local_port,
    sightwire_config_set_max_viewers, sightwire_config_set_password,
    sightwire_config_set_relay_only, sightwire_config_set_stream_port,
};
pub use device::{
    SIGHTWIRE_MAX_RESOLVED_ADDRESSES, SightwireDevice, sightwire_device_free,
    sightwire_device_handle_datagram, sightwire_device_handle_resolved,
    sightwire_device_handle_timeout, sightwire_device_is_registered, sightwire_device_new,
    sightwire_device_poll_event, sightwire_device_poll_resolve, sightwire_device_poll_timeout,
    sightwire_device_poll_transmit, sightwire_device_send_frame, sightwire_device_set_local_ip,
    sightwire_device_set_unix_time, sightwire_device_shutdown,
};
pub use types::{
    SIGHTWIRE_FAMILY_IPV4, SIGHTWIRE_FAMILY_IPV6, SIGHTWIRE_MAX_DATAGRAM_LEN,
    SIGHTWIRE_MAX_FRAME_LEN, SightwireAddress, SightwireCodec, SightwireEvent, SightwireEventKind,
    SightwireFrame, SightwirePathKind, SightwireResult, SightwireTransmit,
};

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `body`, turning a panic into [`SightwireResult::Panic`]: no unwind may cross the
/// C ABI.
pub(crate) fn guard(body: impl FnOnce() -> SightwireResult) -> SightwireResult {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(SightwireResult::Panic)
}
