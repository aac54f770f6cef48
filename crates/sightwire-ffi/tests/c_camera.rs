//! The C example cameras end to end (`examples/c/camera.c`, the camera mode, and
//! `examples/c/sans_io_camera.c`, the sans-IO mode with its own socket and poll loop):
//! built with the system C compiler against this crate's static library, each registers
//! with a real rendezvous, waits for a viewer and streams an ffmpeg-made H.264 clip, split
//! into access units in C; the Rust viewer must receive exactly the access units the Rust
//! splitter finds, byte for byte and in order.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The rate the C cameras send the 74 kB clip at: 0.6 Mbit/s, well under the first
/// bandwidth estimate, so the frame-drop policy never has a reason to drop (at 100 fps
/// the margin is small on a busy machine).
const SEND_FPS: u64 = 50;

/// The static library cargo built for this test run: beside the test binary (in
/// `deps/`), or one directory up (where `cargo build` puts it).
fn static_library() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps directory");
    [deps, deps.parent().unwrap_or(deps)]
        .iter()
        .map(|dir| dir.join("libsightwire_ffi.a"))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("no libsightwire_ffi.a near {}", exe.display()))
}

/// Compiles `examples/c/<name>.c` with `cc`, warnings as errors.
fn build_camera(name: &str, out: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let binary = out.join(name);
    let output = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("include"))
        .arg(root.join(format!("../../examples/c/{name}.c")))
        .arg(static_library())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&binary)
        .output()
        .expect("run cc (the system C compiler)");
    assert!(
        output.status.success(),
        "cc failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    binary
}

/// Whether ffmpeg is installed; under CI its absence fails the test.
fn ffmpeg_present() -> bool {
    if Command::new("ffmpeg").arg("-version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ffmpeg is required under CI"
    );
    eprintln!("\n\n*** SKIPPED: ffmpeg not found; test not run ***\n\n");
    false
}

/// Two seconds of 320x240 H.264 at 25 fps, a keyframe every second, as Annex-B.
fn make_clip(path: &Path) -> Vec<u8> {
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg("testsrc2=size=320x240:rate=25")
        .args(["-t", "2", "-c:v", "libx264", "-g", "25", "-bf", "0"])
        .args([
            "-pix_fmt",
            "yuv420p",
            "-bsf:v",
            "h264_mp4toannexb",
            "-f",
            "h264",
        ])
        .arg(path)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed");
    std::fs::read(path).expect("read clip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_c_camera_streams_a_clip_to_the_rust_viewer() {
    stream_from("camera").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sans_io_c_camera_streams_a_clip_to_the_rust_viewer() {
    stream_from("sans_io_camera").await;
}

/// Builds and runs the C camera `name`, and checks what the Rust viewer receives.
async fn stream_from(name: &str) {
    if !ffmpeg_present() {
        return;
    }
    let deployment = common::deploy().await;
    let dir = deployment.dir.path();
    let camera = build_camera(name, dir);
    let clip_path = dir.join("clip.h264");
    let clip = make_clip(&clip_path);
    let units = sightwire_examples::annexb::access_units(&clip);
    assert!(units.len() >= 50, "{} access units", units.len());

    // What a camera keeps in flash: its key (hex, as the Rust camera stores it) and the
    // raw certificate.
    let key_path = dir.join("device.key");
    let cert_path = dir.join("device.cert");
    let hex: String = deployment
        .private_key
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(&key_path, hex).expect("write key");
    std::fs::write(&cert_path, &deployment.certificate).expect("write certificate");
    let rendezvous_key: String = deployment
        .rendezvous_key()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let mut child = Command::new(&camera)
        .arg(deployment.rendezvous())
        .arg(rendezvous_key)
        .arg(&key_path)
        .arg(&cert_path)
        .arg(common::PASSWORD)
        .arg(&clip_path)
        .arg(SEND_FPS.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the C camera");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next_line = || {
        lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the C camera reports in time")
    };
    assert_eq!(next_line(), "registered");

    let received = deployment.watch(units.len(), Duration::from_secs(20)).await;
    assert!(next_line().starts_with("viewer_connected "));
    assert_eq!(next_line(), format!("sent {}", units.len()));
    assert_eq!(received.len(), units.len());
    for (index, (got, unit)) in received.iter().zip(&units).enumerate() {
        assert!(
            got.frame.data[..] == unit.data[..],
            "access unit {index} differs ({} vs {} bytes)",
            got.frame.data.len(),
            unit.data.len()
        );
        assert_eq!(
            got.frame.keyframe, unit.keyframe,
            "keyframe flag of unit {index}"
        );
        assert_eq!(
            got.frame.capture_time_us,
            index as u64 * 1_000_000 / SEND_FPS
        );
    }
    // The camera stops on its own after its linger.
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "the C camera exited with {status}");
}
