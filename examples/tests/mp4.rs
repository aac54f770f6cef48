//! The viewer's MP4 writer against ffprobe: the demo's clip (1280x720, 30 fps, ffmpeg
//! testsrc2), written frame by frame, must decode to as many frames as were written, with
//! the SPS's picture size, and a recording cut short (what Ctrl-C leaves) must be
//! playable too.

use std::path::Path;
use std::process::Command;

use sightwire_examples::annexb::access_units;
use sightwire_examples::mp4::{FrameWritten, Mp4Writer};

const FPS: u64 = 30;

fn tools_present() -> bool {
    let found = |tool: &str| Command::new(tool).arg("-version").output().is_ok();
    if found("ffmpeg") && found("ffprobe") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ffmpeg and ffprobe are required under CI"
    );
    eprintln!("\n\n*** SKIPPED: ffmpeg/ffprobe not found; MP4 test not run ***\n\n");
    false
}

/// The demo's clip, 3 s: keyframes at 0 and 2 s.
fn make_clip(path: &Path) -> Vec<u8> {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=1280x720:rate={FPS}"))
        .args(["-t", "3", "-c:v", "libx264", "-preset", "veryfast"])
        .args(["-pix_fmt", "yuv420p", "-g", "60", "-bf", "0"])
        .args(["-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(path)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed to make the clip");
    std::fs::read(path).expect("read clip")
}

/// `width,height,nb_read_frames` of the first video stream, as ffprobe decodes it.
fn probe(path: &Path) -> (u32, u32, u64) {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=width,height,nb_read_frames"])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        output.status.success(),
        "ffprobe rejected {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = text.trim().split(',').collect();
    let [width, height, frames] = fields[..] else {
        panic!("unexpected ffprobe output {text:?}");
    };
    (
        width.parse().expect("width"),
        height.parse().expect("height"),
        frames.parse().expect("frames"),
    )
}

fn write_mp4(path: &Path, frames: &[Vec<u8>]) -> u64 {
    let mut writer = Mp4Writer::create(path).expect("create");
    for (index, frame) in frames.iter().enumerate() {
        let capture_time_us = index as u64 * 1_000_000 / FPS;
        let written = writer.write_frame(frame, capture_time_us).expect("write");
        assert_eq!(written, FrameWritten::Written, "frame {index}");
    }
    let written = writer.frames();
    writer.finish().expect("finish");
    written
}

#[test]
fn mp4_of_the_demo_clip_decodes_every_frame() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = make_clip(&dir.path().join("clip.h264"));
    let frames: Vec<Vec<u8>> = access_units(&clip).into_iter().map(|u| u.data).collect();
    assert_eq!(frames.len() as u64, 3 * FPS);

    let full = dir.path().join("full.mp4");
    let written = write_mp4(&full, &frames);
    assert_eq!(probe(&full), (1280, 720, written));
    assert_eq!(written, frames.len() as u64);

    // Stopped after 45 frames, mid-GOP, as Ctrl-C would.
    let cut = dir.path().join("cut.mp4");
    let written = write_mp4(&cut, &frames[..45]);
    assert_eq!(probe(&cut), (1280, 720, 45));
    assert_eq!(written, 45);
    eprintln!(
        "mp4: {} frames -> {} bytes, ffprobe decoded all",
        frames.len(),
        std::fs::metadata(&full).expect("size").len()
    );
}

#[test]
fn frames_before_the_first_keyframe_are_skipped() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = make_clip(&dir.path().join("clip.h264"));
    let units = access_units(&clip);
    // Join mid-stream: start at frame 10 (no SPS/PPS until the keyframe at 2 s).
    let path = dir.path().join("joined.mp4");
    let mut writer = Mp4Writer::create(&path).expect("create");
    let mut skipped = 0;
    for (index, unit) in units.iter().enumerate().skip(10) {
        let capture_time_us = index as u64 * 1_000_000 / FPS;
        if writer
            .write_frame(&unit.data, capture_time_us)
            .expect("write")
            == FrameWritten::SkippedBeforeCodecConfig
        {
            skipped += 1;
        }
    }
    let written = writer.frames();
    writer.finish().expect("finish");
    assert_eq!(skipped, 2 * FPS - 10);
    assert_eq!(written, FPS);
    assert_eq!(probe(&path), (1280, 720, written));
}
