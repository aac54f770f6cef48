//! H.265 Annex-B files against ffmpeg/ffprobe: a libx265 clip (with B-frames, so it has
//! pictures nothing refers to) is detected as H.265 and split into as many access units
//! as ffprobe counts packets, keyframes where ffprobe sees them, byte for byte; and the
//! frames `Frame::is_discardable` says may be dropped really can be: the rest decodes.

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use sightwire::{Codec, Frame, StreamId};
use sightwire_examples::annexb::{access_units_of, detect_codec};

fn tools_present() -> bool {
    let found = |tool: &str| Command::new(tool).arg("-version").output().is_ok();
    let x265 = Command::new("ffmpeg")
        .args(["-hide_banner", "-encoders"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("libx265"));
    if found("ffmpeg") && found("ffprobe") && x265 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ffmpeg with libx265 and ffprobe are required under CI"
    );
    eprintln!("\n\n*** SKIPPED: ffmpeg/libx265/ffprobe not found; H.265 test not run ***\n\n");
    false
}

/// 2 s at 30 fps, 320x240, a keyframe every 20 frames, B-frames.
fn make_clip(path: &Path) -> Vec<u8> {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=30")
        .args(["-t", "2", "-c:v", "libx265", "-preset", "ultrafast"])
        .args([
            "-x265-params",
            "keyint=20:min-keyint=20:bframes=3:log-level=error",
        ])
        .args(["-pix_fmt", "yuv420p", "-f", "hevc"])
        .arg(path)
        .status()
        .expect("run ffmpeg");
    assert!(status.success(), "ffmpeg failed to make the clip");
    std::fs::read(path).expect("read clip")
}

/// `(packets, keyframe packets)` ffprobe reads from a raw H.265 file.
fn probe_packets(path: &Path) -> (usize, usize) {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-f", "hevc", "-select_streams", "v:0"])
        .args(["-show_entries", "packet=flags", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let flags: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let keys = flags.iter().filter(|f| f.starts_with('K')).count();
    (flags.len(), keys)
}

/// Frames ffmpeg decodes from a raw H.265 file, and whatever it reports as an error.
fn decode(path: &Path) -> (usize, String) {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-f",
            "hevc",
            "-count_frames",
            "-select_streams",
            "v:0",
        ])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let count = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (count, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn an_x265_clip_splits_into_ffprobes_frames_and_drops_only_what_nothing_refers_to() {
    if !tools_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("sightwire-h265-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let clip_path = dir.join("clip.h265");
    let clip = make_clip(&clip_path);

    assert_eq!(detect_codec(&clip), Codec::H265);
    let units = access_units_of(Codec::H265, &clip);
    let (packets, keyframes) = probe_packets(&clip_path);
    assert_eq!(units.len(), packets, "one access unit per ffprobe packet");
    assert_eq!(units.len(), 60);
    assert_eq!(units.iter().filter(|u| u.keyframe).count(), keyframes);
    assert!(units[0].keyframe && units[0].codec_config);
    let joined: Vec<u8> = units.iter().flat_map(|u| u.data.clone()).collect();
    assert_eq!(joined, clip, "byte for byte");

    // Drop every frame the media layer may drop alone (spec/media.md 4.7): what is left
    // decodes, every frame of it.
    let frames: Vec<Frame> = units
        .iter()
        .map(|u| {
            Frame::new(StreamId::VIDEO, Codec::H265, 0, Bytes::from(u.data.clone()))
                .with_keyframe(u.keyframe)
                .with_codec_config(u.codec_config)
        })
        .collect();
    let kept: Vec<&Frame> = frames.iter().filter(|f| !f.is_discardable()).collect();
    let dropped = frames.len() - kept.len();
    assert!(dropped > 0, "B-frames nothing refers to were found");
    let kept_path = dir.join("kept.h265");
    let kept_bytes: Vec<u8> = kept.iter().flat_map(|f| f.data.to_vec()).collect();
    std::fs::write(&kept_path, kept_bytes).unwrap();
    let (decoded, errors) = decode(&kept_path);
    eprintln!(
        "h265: {} access units, {keyframes} keyframes, {dropped} discardable; {decoded} of {} kept frames decode",
        units.len(),
        kept.len()
    );
    assert_eq!(decoded, kept.len(), "every kept frame decodes: {errors}");
    assert!(errors.trim().is_empty(), "decoder errors: {errors}");
    let _ = std::fs::remove_dir_all(&dir);
}
