//! The sans-IO C ABI end to end: a device driven only through the `extern "C"`
//! functions, with its own UDP socket and poll loop as firmware would run it, registers
//! with a real rendezvous, and a Rust viewer receives its frames byte for byte.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use sightwire::Frame;
use sightwire_examples::source::FrameSource;
use sightwire_ffi::*;

/// The synthetic stream: 25 fps, sized to offer well under the first bandwidth estimate
/// (the default 60 KB keyframes queue long enough behind the pacer, on a path that is not
/// a LAN, for the frame-drop policy to drop a frame now and then, spec/media.md 4.7).
const FPS: u32 = 25;
const OFFERED_BPS: u64 = 500_000;

/// What the device loop tells the test.
#[derive(Debug, PartialEq)]
enum Step {
    Registered,
    ViewerConnected,
    FramesSent(usize),
}

fn unix_us() -> u64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_micros()).expect("fits")
}

fn check(result: SightwireResult) {
    assert_eq!(result, SightwireResult::Ok);
}

/// Sends every datagram the device has, honouring its TTL.
fn flush(device: *mut SightwireDevice, socket: &UdpSocket, buf: &mut [u8]) -> usize {
    let mut sent = 0;
    loop {
        let mut transmit = SightwireTransmit::default();
        // SAFETY: a live device, a writable transmit and `buf.len()` writable bytes.
        let result = unsafe {
            sightwire_device_poll_transmit(device, &mut transmit, buf.as_mut_ptr(), buf.len())
        };
        if result == SightwireResult::Empty {
            return sent;
        }
        check(result);
        let destination: SocketAddr = match transmit.destination.family {
            SIGHTWIRE_FAMILY_IPV4 => {
                let [a, b, c, d, ..] = transmit.destination.address;
                SocketAddr::from(([a, b, c, d], transmit.destination.port))
            }
            _ => SocketAddr::from((transmit.destination.address, transmit.destination.port)),
        };
        if transmit.ttl != 0 {
            socket.set_ttl(u32::from(transmit.ttl)).expect("ttl");
        }
        let _ = socket.send_to(&buf[..transmit.len], destination);
        if transmit.ttl != 0 {
            socket.set_ttl(64).expect("ttl");
        }
        sent += 1;
    }
}

/// The firmware's event loop: one socket, one clock, the device's deadlines.
fn run_device(
    config: *mut SightwireConfig,
    socket: UdpSocket,
    frames: Vec<Frame>,
    steps: mpsc::Sender<Step>,
    stop: Arc<AtomicBool>,
) {
    let epoch = Instant::now();
    let now_us = || u64::try_from(epoch.elapsed().as_micros()).expect("fits") + 1_000_000;
    let mut device: *mut SightwireDevice = std::ptr::null_mut();
    // SAFETY: a live configuration and a writable out-pointer.
    check(unsafe { sightwire_device_new(config, now_us(), &mut device) });
    // SAFETY: the configuration is not used again.
    unsafe { sightwire_config_free(config) };
    let local_ip = SightwireAddress {
        family: SIGHTWIRE_FAMILY_IPV4,
        address: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        port: 0,
    };
    // SAFETY: a live device; the address is readable.
    unsafe {
        check(sightwire_device_set_unix_time(device, unix_us()));
        check(sightwire_device_set_local_ip(device, now_us(), &local_ip));
        check(sightwire_device_handle_timeout(device, now_us()));
    }
    let mut buf = vec![0u8; SIGHTWIRE_MAX_DATAGRAM_LEN];
    let mut receive = vec![0u8; 65_535];
    let mut connected_at = None;
    let mut next_frame = 0;
    while !stop.load(Ordering::Relaxed) {
        flush(device, &socket, &mut buf);
        loop {
            let mut event = SightwireEvent::default();
            // SAFETY: a live device and a writable event.
            let result = unsafe { sightwire_device_poll_event(device, &mut event) };
            if result == SightwireResult::Empty {
                break;
            }
            check(result);
            match event.kind {
                SightwireEventKind::Registered => {
                    assert_eq!(event.address.family, SIGHTWIRE_FAMILY_IPV4);
                    let _ = steps.send(Step::Registered);
                }
                SightwireEventKind::ViewerConnected if connected_at.is_none() => {
                    assert_ne!(event.peer, 0);
                    connected_at = Some(Instant::now());
                    let _ = steps.send(Step::ViewerConnected);
                }
                _ => {}
            }
        }
        // One frame every 1/FPS s once a viewer is connected.
        let mut wake = Duration::from_millis(50);
        if let Some(connected) = connected_at {
            let due = connected + Duration::from_secs(1) / FPS * next_frame as u32;
            if next_frame < frames.len() && Instant::now() >= due {
                let frame = &frames[next_frame];
                let c_frame = SightwireFrame {
                    data: frame.data.as_ptr(),
                    len: frame.data.len(),
                    codec: SightwireCodec::H264 as u32,
                    stream: frame.stream.get(),
                    keyframe: frame.keyframe,
                    codec_config: frame.codec_config,
                    capture_time_us: frame.capture_time_us,
                };
                let mut queued = 0;
                // SAFETY: a live device; the frame's bytes outlive the call.
                check(unsafe {
                    sightwire_device_send_frame(device, now_us(), &c_frame, &mut queued)
                });
                // 0 while the viewer catches up from the GOP cache, which sends it later.
                assert!(queued <= 1, "one viewer");
                next_frame += 1;
                if next_frame == frames.len() {
                    let _ = steps.send(Step::FramesSent(next_frame));
                }
                continue;
            }
            if next_frame < frames.len() {
                wake = due.saturating_duration_since(Instant::now());
            }
        }
        let mut deadline = None;
        let mut at = 0;
        // SAFETY: a live device and a writable deadline.
        if unsafe { sightwire_device_poll_timeout(device, &mut at) } == SightwireResult::Ok {
            wake = wake.min(Duration::from_micros(at.saturating_sub(now_us())));
            deadline = Some(at);
        }
        socket
            .set_read_timeout(Some(wake.max(Duration::from_micros(100))))
            .expect("timeout");
        if let Ok((len, from)) = socket.recv_from(&mut receive) {
            let from = SightwireAddressExt::from(from);
            // SAFETY: a live device; `len` writable bytes of `receive`.
            check(unsafe {
                sightwire_device_set_unix_time(device, unix_us());
                sightwire_device_handle_datagram(
                    device,
                    now_us(),
                    &from.0,
                    receive.as_mut_ptr(),
                    len,
                )
            });
        }
        // Timers fire when due, whether or not datagrams kept arriving meanwhile.
        if deadline.is_some_and(|at| now_us() >= at) {
            // SAFETY: a live device.
            check(unsafe { sightwire_device_handle_timeout(device, now_us()) });
        }
    }
    // Goodbye to the viewer and deregistration, then release.
    // SAFETY: a live device, freed once afterwards.
    unsafe {
        check(sightwire_device_shutdown(device, now_us()));
        flush(device, &socket, &mut buf);
        sightwire_device_free(device);
    }
}

/// A `SightwireAddress` from a Rust address (a test-side helper).
struct SightwireAddressExt(SightwireAddress);

impl From<SocketAddr> for SightwireAddressExt {
    fn from(addr: SocketAddr) -> Self {
        let mut address = [0u8; 16];
        let family = match addr {
            SocketAddr::V4(v4) => {
                address[..4].copy_from_slice(&v4.ip().octets());
                SIGHTWIRE_FAMILY_IPV4
            }
            SocketAddr::V6(v6) => {
                address = v6.ip().octets();
                SIGHTWIRE_FAMILY_IPV6
            }
        };
        Self(SightwireAddress {
            family,
            address,
            port: addr.port(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sans_io_device_registers_and_streams_to_a_rust_viewer() {
    let deployment = common::deploy().await;
    let mut source = FrameSource::synthetic(FPS, FPS, Some(40));
    source.set_target_bitrate(Some(OFFERED_BPS));
    let frames: Vec<Frame> = std::iter::from_fn(|| source.next_frame()).collect();

    let socket = UdpSocket::bind("127.0.0.1:0").expect("socket");
    let rendezvous = std::ffi::CString::new(deployment.rendezvous()).expect("no NUL");
    let password = std::ffi::CString::new(common::PASSWORD).expect("no NUL");
    let key = deployment.rendezvous_key();
    let mut config: *mut SightwireConfig = std::ptr::null_mut();
    // SAFETY: every pointer covers the length given with it; the strings end in NUL.
    unsafe {
        check(sightwire_config_new(
            deployment.private_key.as_ptr(),
            deployment.private_key.len(),
            deployment.certificate.as_ptr(),
            deployment.certificate.len(),
            rendezvous.as_ptr(),
            key.as_ptr(),
            key.len(),
            &mut config,
        ));
        check(sightwire_config_set_password(config, password.as_ptr()));
        check(sightwire_config_set_local_port(
            config,
            socket.local_addr().expect("bound").port(),
        ));
    }

    let (steps_tx, steps) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    // Raw pointers are not Send: the address crosses to the device's thread, which
    // alone uses the configuration from then on.
    let config_addr = config as usize;
    let device_stop = stop.clone();
    let device_frames = frames.clone();
    let device = std::thread::spawn(move || {
        run_device(
            config_addr as *mut SightwireConfig,
            socket,
            device_frames,
            steps_tx,
            device_stop,
        )
    });
    let next_step = |steps: &mpsc::Receiver<Step>| {
        steps
            .recv_timeout(Duration::from_secs(15))
            .expect("the device loop reports in time")
    };
    assert_eq!(next_step(&steps), Step::Registered);

    let received = deployment
        .watch(frames.len(), Duration::from_secs(20))
        .await;
    assert_eq!(next_step(&steps), Step::ViewerConnected);
    assert_eq!(next_step(&steps), Step::FramesSent(frames.len()));
    for (got, sent) in received.iter().zip(&frames) {
        assert_eq!(got.frame.data, sent.data, "frame payload differs");
        assert_eq!(got.frame.keyframe, sent.keyframe);
        assert_eq!(got.frame.capture_time_us, sent.capture_time_us);
    }
    stop.store(true, Ordering::Relaxed);
    device.join().expect("the device loop ends cleanly");
}
