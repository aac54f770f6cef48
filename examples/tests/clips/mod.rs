//! ffmpeg-made media clips for the tests, and splitting them into the frames a camera
//! would send: H.265 access units and raw AAC access units with their
//! AudioSpecificConfig.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Command;

use sightwire_examples::mp4::nal_units;

/// Whether ffmpeg and ffprobe are installed; under CI their absence fails the test.
pub fn tools_present() -> bool {
    let found = |tool: &str| Command::new(tool).arg("-version").output().is_ok();
    if found("ffmpeg") && found("ffprobe") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ffmpeg and ffprobe are required under CI"
    );
    eprintln!("\n\n*** SKIPPED: ffmpeg/ffprobe not found; test not run ***\n\n");
    false
}

/// Runs ffmpeg with `args` (quiet, overwriting) and fails the test if it fails.
pub fn ffmpeg(args: &[&str]) {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        output.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The H.265 NAL unit type of a NAL unit.
pub fn hevc_nal_type(nal: &[u8]) -> u8 {
    (nal[0] >> 1) & 0x3F
}

/// H.265 access units of an Annex-B stream: a new unit starts at a parameter set, an AUD or
/// a prefix SEI that follows a picture, or at a slice with `first_slice_segment_in_pic_flag`.
pub fn hevc_access_units(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut units: Vec<Vec<u8>> = Vec::new();
    let mut current = Vec::new();
    let mut has_picture = false;
    for nal in nal_units(stream) {
        let nal_type = hevc_nal_type(nal);
        let starts_unit = match nal_type {
            0..=31 => nal.get(2).is_some_and(|b| b & 0x80 != 0),
            32..=35 | 39 => true,
            _ => false,
        };
        if starts_unit && has_picture {
            units.push(std::mem::take(&mut current));
            has_picture = false;
        }
        has_picture |= nal_type < 32;
        current.extend_from_slice(&[0, 0, 0, 1]);
        current.extend_from_slice(nal);
    }
    if !current.is_empty() {
        units.push(current);
    }
    units
}

/// Raw AAC access units and the AudioSpecificConfig of an ADTS stream (no CRC).
pub fn adts_access_units(stream: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut asc = Vec::new();
    let units = sightwire_examples::audio::adts_frames(stream)
        .map(|frame| {
            let frame = frame.expect("ADTS frame");
            asc = frame.config.audio_specific_config().to_vec();
            frame.access_unit.to_vec()
        })
        .collect();
    (asc, units)
}

/// An H.265 Annex-B clip of ffmpeg's `testsrc2` (`size` like `640x360`), a keyframe every
/// second, no B-frames.
pub fn make_hevc(path: &Path, size: &str, fps: u64, seconds: u32) -> Vec<u8> {
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size={size}:rate={fps}"),
        "-t",
        &seconds.to_string(),
        "-c:v",
        "libx265",
        "-x265-params",
        &format!("log-level=error:keyint={fps}:bframes=0"),
        "-pix_fmt",
        "yuv420p",
        "-f",
        "hevc",
        path.to_str().expect("path"),
    ]);
    std::fs::read(path).expect("read clip")
}

/// An ADTS AAC clip of a 440 Hz tone at 48 kHz.
pub fn make_aac(path: &Path, channels: u32, seconds: &str) -> Vec<u8> {
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        seconds,
        "-ac",
        &channels.to_string(),
        "-c:a",
        "aac",
        "-f",
        "adts",
        path.to_str().expect("path"),
    ]);
    std::fs::read(path).expect("read clip")
}

/// `key=value` pairs of ffprobe's `-show_entries` for one stream, frames counted.
pub fn probe_stream(
    path: &Path,
    stream: &str,
    entries: &str,
) -> std::collections::HashMap<String, String> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", stream])
        .args(["-show_entries", entries, "-of", "default=nw=1"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        output.status.success(),
        "ffprobe rejected {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
