//! The convenience mode: `sightwire::Device` on a thread of its own (a current-thread
//! tokio runtime), fed frames from any thread through a bounded queue.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;

use sightwire::{Device, DeviceConfig, Event, Frame};
use tokio::sync::{mpsc, oneshot};

use crate::config::SightwireConfig;
use crate::guard;
use crate::types::{SightwireEvent, SightwireFrame, SightwireResult, frame_from_c};

/// Frames queued for the camera's thread; `sightwire_camera_send_frame` refuses more
/// (`SIGHTWIRE_RESULT_QUEUE_FULL`) rather than grow without bound.
pub const SIGHTWIRE_CAMERA_FRAME_QUEUE: usize = 64;
/// Events queued for the application; beyond it events are dropped and counted.
pub const SIGHTWIRE_CAMERA_EVENT_QUEUE: usize = 4096;

/// A camera running on its own thread (opaque). Created by `sightwire_camera_start`,
/// stopped and released by `sightwire_camera_stop`. `sightwire_camera_send_frame`,
/// `sightwire_camera_poll_event` and `sightwire_camera_local_port` may be called from any
/// threads at once; `sightwire_camera_stop` must be the last call, once no other thread
/// uses the handle.
pub struct SightwireCamera {
    frames: mpsc::Sender<Frame>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    events: Mutex<std_mpsc::Receiver<SightwireEvent>>,
    events_dropped: std::sync::Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    local_port: u16,
}

impl std::fmt::Debug for SightwireCamera {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SightwireCamera")
            .field("local_port", &self.local_port)
            .finish_non_exhaustive()
    }
}

/// The device configuration of the convenience mode.
fn device_config(config: &SightwireConfig) -> DeviceConfig {
    let mut device = DeviceConfig::new(config.identity(), config.rendezvous(true));
    device.bind = std::net::SocketAddr::from(([0, 0, 0, 0], config.local_port()));
    device.password = config.password();
    if let Some(max) = config.max_viewers() {
        device.max_viewers = max;
    }
    device.path_policy = config.path_policy();
    device
}

/// The camera thread: starts the device, reports the bound port (or the failure), then
/// sends frames and forwards events until stopped.
async fn run(
    config: DeviceConfig,
    started: std_mpsc::SyncSender<Result<u16, SightwireResult>>,
    mut frames: mpsc::Receiver<Frame>,
    mut stop: oneshot::Receiver<()>,
    events: std_mpsc::SyncSender<SightwireEvent>,
    events_dropped: std::sync::Arc<AtomicU64>,
) {
    let mut device = match Device::start(config).await {
        Ok(device) => device,
        Err(_) => {
            let _ = started.send(Err(SightwireResult::Io));
            return;
        }
    };
    if started.send(Ok(device.local_addr().port())).is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = &mut stop => break,
            frame = frames.recv() => match frame {
                Some(frame) => {
                    if device.send_frame(frame).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            event = device.next_event() => match event {
                Some(event) => forward(&events, &events_dropped, &event),
                None => break,
            },
        }
    }
    device.shutdown().await;
}

/// Queues `event` for the application, or counts it as dropped when
/// [`SIGHTWIRE_CAMERA_EVENT_QUEUE`] events are waiting.
fn forward(events: &std_mpsc::SyncSender<SightwireEvent>, dropped: &AtomicU64, event: &Event) {
    if events.try_send(SightwireEvent::from_event(event)).is_err() {
        dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts a camera from `config` (copied; free it when convenient): binds its UDP socket
/// (the configuration's local port, 0: any), then registers with the rendezvous and
/// serves viewers on a thread of its own. Returns once the socket is bound; watch for a
/// `SIGHTWIRE_EVENT_KIND_REGISTERED` event. `SIGHTWIRE_RESULT_IO`: the socket or the
/// thread could not be had.
///
/// # Safety
/// `config` must be null or a live configuration; `out` null or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_camera_start(
    config: *const SightwireConfig,
    out: *mut *mut SightwireCamera,
) -> SightwireResult {
    guard(|| {
        // SAFETY: the caller promises a live configuration (or null).
        let Some(config) = (unsafe { config.as_ref() }) else {
            return SightwireResult::NullPointer;
        };
        if out.is_null() {
            return SightwireResult::NullPointer;
        }
        let device = device_config(config);
        let (frame_tx, frame_rx) = mpsc::channel(SIGHTWIRE_CAMERA_FRAME_QUEUE);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (event_tx, event_rx) = std_mpsc::sync_channel(SIGHTWIRE_CAMERA_EVENT_QUEUE);
        let (started_tx, started_rx) = std_mpsc::sync_channel(1);
        let events_dropped = std::sync::Arc::new(AtomicU64::new(0));
        let dropped = events_dropped.clone();
        let thread = std::thread::Builder::new()
            .name("sightwire-camera".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(run(
                        device, started_tx, frame_rx, stop_rx, event_tx, dropped,
                    )),
                    Err(_) => {
                        let _ = started_tx.send(Err(SightwireResult::Io));
                    }
                }
            });
        let Ok(thread) = thread else {
            return SightwireResult::Io;
        };
        let local_port = match started_rx.recv() {
            Ok(Ok(port)) => port,
            Ok(Err(error)) => {
                let _ = thread.join();
                return error;
            }
            // The thread ended without a word: it panicked.
            Err(_) => {
                let _ = thread.join();
                return SightwireResult::Panic;
            }
        };
        let camera = SightwireCamera {
            frames: frame_tx,
            stop: Mutex::new(Some(stop_tx)),
            events: Mutex::new(event_rx),
            events_dropped,
            thread: Some(thread),
            local_port,
        };
        // SAFETY: `out` is non-null and the caller promises it is writable.
        unsafe { out.write(Box::into_raw(Box::new(camera))) };
        SightwireResult::Ok
    })
}

/// Queues a frame for every authorized viewer; the bytes are copied before the call
/// returns. Thread-safe. `SIGHTWIRE_RESULT_QUEUE_FULL`: `SIGHTWIRE_CAMERA_FRAME_QUEUE` frames are
/// waiting (the frame is not sent; drop it, as an encoder would); `SIGHTWIRE_RESULT_
/// SHUT_DOWN`: the camera's thread has stopped.
///
/// # Safety
/// `camera` must be a live camera, `frame` readable (its `data` `len` readable bytes).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_camera_send_frame(
    camera: *const SightwireCamera,
    frame: *const SightwireFrame,
) -> SightwireResult {
    guard(|| {
        // SAFETY: the caller promises a live camera (or null); shared use is what the
        // type is built for.
        let (Some(camera), Some(frame)) = (unsafe { camera.as_ref() }, unsafe { frame.as_ref() })
        else {
            return SightwireResult::NullPointer;
        };
        // SAFETY: the caller promises `data` holds `len` readable bytes.
        let frame = match unsafe { frame_from_c(frame) } {
            Ok(frame) => frame,
            Err(error) => return error,
        };
        match camera.frames.try_send(frame) {
            Ok(()) => SightwireResult::Ok,
            Err(mpsc::error::TrySendError::Full(_)) => SightwireResult::QueueFull,
            Err(mpsc::error::TrySendError::Closed(_)) => SightwireResult::ShutDown,
        }
    })
}

/// The next event, without waiting, to `*out`. `SIGHTWIRE_RESULT_EMPTY`: none now;
/// `SIGHTWIRE_RESULT_SHUT_DOWN`: the camera's thread has stopped and every event was read.
/// Thread-safe. Events not polled are dropped beyond `SIGHTWIRE_CAMERA_EVENT_QUEUE`.
///
/// # Safety
/// `camera` must be a live camera, `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_camera_poll_event(
    camera: *const SightwireCamera,
    out: *mut SightwireEvent,
) -> SightwireResult {
    guard(|| {
        // SAFETY: the caller promises a live camera (or null).
        let Some(camera) = (unsafe { camera.as_ref() }) else {
            return SightwireResult::NullPointer;
        };
        if out.is_null() {
            return SightwireResult::NullPointer;
        }
        let events = match camera.events.lock() {
            Ok(events) => events,
            Err(poisoned) => poisoned.into_inner(),
        };
        match events.try_recv() {
            Ok(event) => {
                // SAFETY: non-null and writable, as the caller promises.
                unsafe { out.write(event) };
                SightwireResult::Ok
            }
            Err(std_mpsc::TryRecvError::Empty) => SightwireResult::Empty,
            Err(std_mpsc::TryRecvError::Disconnected) => SightwireResult::ShutDown,
        }
    })
}

/// The UDP port the camera's socket is bound to, to `*port`. Thread-safe.
///
/// # Safety
/// `camera` must be a live camera, `port` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_camera_local_port(
    camera: *const SightwireCamera,
    port: *mut u16,
) -> SightwireResult {
    guard(|| {
        // SAFETY: the caller promises a live camera (or null).
        let Some(camera) = (unsafe { camera.as_ref() }) else {
            return SightwireResult::NullPointer;
        };
        if port.is_null() {
            return SightwireResult::NullPointer;
        }
        // SAFETY: non-null and writable, as the caller promises.
        unsafe { port.write(camera.local_port) };
        SightwireResult::Ok
    })
}

/// Stops the camera (goodbye to every viewer, deregistration), waits for its thread and
/// releases the handle. Null is ignored. Returns how many events were dropped because
/// they were not polled.
///
/// # Safety
/// `camera` must be null or a camera from `sightwire_camera_start` not stopped yet,
/// used by no other thread any more.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sightwire_camera_stop(camera: *mut SightwireCamera) -> u64 {
    if camera.is_null() {
        return 0;
    }
    // SAFETY: the caller promises it came from `Box::into_raw` in
    // `sightwire_camera_start`, is stopped once and no longer shared.
    let mut camera = unsafe { Box::from_raw(camera) };
    catch_unwind(AssertUnwindSafe(move || {
        let stop = match camera.stop.lock() {
            Ok(mut stop) => stop.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        if let Some(thread) = camera.thread.take() {
            let _ = thread.join();
        }
        camera.events_dropped.load(Ordering::Relaxed)
    }))
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A camera whose thread never runs: its queues fill up as they would behind a
    /// stalled device.
    fn stalled() -> (
        SightwireCamera,
        mpsc::Receiver<Frame>,
        std_mpsc::SyncSender<SightwireEvent>,
    ) {
        let (frames, frame_rx) = mpsc::channel(SIGHTWIRE_CAMERA_FRAME_QUEUE);
        let (event_tx, event_rx) = std_mpsc::sync_channel(SIGHTWIRE_CAMERA_EVENT_QUEUE);
        let camera = SightwireCamera {
            frames,
            stop: Mutex::new(None),
            events: Mutex::new(event_rx),
            events_dropped: std::sync::Arc::new(AtomicU64::new(0)),
            thread: None,
            local_port: 0,
        };
        (camera, frame_rx, event_tx)
    }

    #[test]
    fn the_frame_queue_refuses_beyond_its_limit() {
        let (camera, frame_rx, _events) = stalled();
        let data = [0u8, 0, 0, 1, 0x65];
        let frame = crate::types::h264_keyframe(&data);
        let send = |camera: &SightwireCamera| {
            // SAFETY: a live camera and a frame whose bytes outlive the call.
            unsafe { sightwire_camera_send_frame(camera, &frame) }
        };
        for _ in 0..SIGHTWIRE_CAMERA_FRAME_QUEUE {
            assert_eq!(send(&camera), SightwireResult::Ok);
        }
        assert_eq!(send(&camera), SightwireResult::QueueFull);
        drop(frame_rx);
        assert_eq!(send(&camera), SightwireResult::ShutDown);
    }

    #[test]
    fn events_beyond_the_queue_are_dropped_and_counted() {
        let (camera, _frames, events) = stalled();
        let dropped = camera.events_dropped.clone();
        for _ in 0..SIGHTWIRE_CAMERA_EVENT_QUEUE + 3 {
            forward(&events, &dropped, &Event::RendezvousLost);
        }
        let mut event = SightwireEvent::default();
        let mut polled = 0;
        // SAFETY: a live camera and a writable event.
        while unsafe { sightwire_camera_poll_event(&camera, &mut event) } == SightwireResult::Ok {
            assert_eq!(event.kind, crate::types::SightwireEventKind::RendezvousLost);
            polled += 1;
        }
        assert_eq!(polled, SIGHTWIRE_CAMERA_EVENT_QUEUE);
        drop(events);
        // SAFETY: as above.
        let closed = unsafe { sightwire_camera_poll_event(&camera, &mut event) };
        assert_eq!(closed, SightwireResult::ShutDown);
        // SAFETY: a camera from Box::into_raw, stopped once; its count comes back.
        let reported = unsafe { sightwire_camera_stop(Box::into_raw(Box::new(camera))) };
        assert_eq!(reported, 3);
    }
}
