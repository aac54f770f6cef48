//! Real H.264: the test clip (ffmpeg), access-unit splitting, frame-by-frame comparison
//! of what the viewer wrote with what the camera read, and decoding with ffprobe.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

use super::netns::run;

/// Frame rate of the clip.
pub(crate) const CLIP_FPS: u32 = 30;
/// Length of the clip.
pub(crate) const CLIP_SECONDS: u32 = 20;
/// Frames between keyframes (2 s).
pub(crate) const CLIP_GOP: u32 = 60;

/// Frames between keyframes of [`long_gop_clip`] (4 s, as many cameras ship).
pub(crate) const LONG_GOP: u32 = 120;

/// Bitrate of [`heavy_clip`]: more than a 4 Mbit/s home uplink carries.
pub(crate) const HEAVY_CLIP_BPS: u32 = 6_000_000;

/// The test clip: `testsrc2`, 1280×720, 30 fps, a keyframe every 2 s (closed GOPs), 20 s,
/// Annex-B, x264's default quality-based rate control. Generated once per test process
/// (cached by its ffmpeg arguments).
pub(crate) fn clip() -> anyhow::Result<PathBuf> {
    static CLIP: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CLIP.get_or_init(|| generate_clip(None, CLIP_GOP).map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The test clip with a keyframe every 4 s ([`LONG_GOP`]): a viewer that joins it
/// mid-GOP would wait up to 4 s for a picture without the device's GOP cache. Cached like
/// [`clip`].
pub(crate) fn long_gop_clip() -> anyhow::Result<PathBuf> {
    static CLIP: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CLIP.get_or_init(|| generate_clip(None, LONG_GOP).map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The test clip at [`HEAVY_CLIP_BPS`]: the same picture, size, rate and GOP, encoded at
/// that average bitrate and capped to it over one second (`-b:v -maxrate -bufsize`), so
/// the camera really sends ~6 Mbit/s. Cached like [`clip`].
pub(crate) fn heavy_clip() -> anyhow::Result<PathBuf> {
    static CLIP: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CLIP.get_or_init(|| {
        generate_clip(Some(HEAVY_CLIP_BPS), CLIP_GOP).map_err(|error| format!("{error:#}"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn generate_clip(bitrate_bps: Option<u32>, gop: u32) -> anyhow::Result<PathBuf> {
    let mut args: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=1280x720:rate={CLIP_FPS}:duration={CLIP_SECONDS}"),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        &gop.to_string(),
        "-keyint_min",
        &gop.to_string(),
        "-sc_threshold",
        "0",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    if let Some(bps) = bitrate_bps {
        let bps = bps.to_string();
        args.extend(["-b:v", &bps, "-maxrate", &bps, "-bufsize", &bps].map(String::from));
    }
    args.extend(["-bsf:v", "h264_mp4toannexb", "-f", "h264"].map(String::from));
    let key: u64 = args.join(" ").bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = std::env::temp_dir().join("sightwire-lab").join("clips");
    std::fs::create_dir_all(&dir)?;
    let rate = bitrate_bps.map_or_else(String::new, |bps| format!("-{}k", bps / 1000));
    let path = dir.join(format!(
        "testsrc2-720p{CLIP_FPS}-{CLIP_SECONDS}s{rate}-g{gop}-{key:016x}.h264"
    ));
    if path.exists() && frame_count(&path).ok() == Some(u64::from(CLIP_FPS * CLIP_SECONDS)) {
        return Ok(path);
    }
    let partial = path.with_extension(format!("partial{}", std::process::id()));
    run(Command::new("ffmpeg").args(&args).arg(&partial))?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// One NAL unit: its type and where it starts (at its start code) in the stream.
#[derive(Debug, Clone, Copy)]
struct Nal {
    start: usize,
    payload: usize,
    kind: u8,
    /// `nal_ref_idc`: non-zero when later pictures may refer to this one.
    ref_idc: u8,
}

fn nal_units(stream: &[u8]) -> Vec<Nal> {
    let mut nals = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            // A four-byte start code's leading zero belongs to this NAL.
            let start = if i > 0 && stream[i - 1] == 0 {
                i - 1
            } else {
                i
            };
            let payload = i + 3;
            if let Some(&header) = stream.get(payload) {
                nals.push(Nal {
                    start,
                    payload,
                    kind: header & 0x1f,
                    ref_idc: (header >> 5) & 3,
                });
            }
            i = payload;
        } else {
            i += 1;
        }
    }
    nals
}

/// One access unit (all NAL units of one frame, start codes included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccessUnit<'a> {
    /// The bytes.
    pub(crate) bytes: &'a [u8],
    /// Whether it holds an IDR slice.
    pub(crate) keyframe: bool,
    /// Whether later pictures may refer to it (a slice with `nal_ref_idc` > 0).
    pub(crate) reference: bool,
}

/// Splits an Annex-B stream into access units (H.264 7.4.1.2.3, simplified to what
/// encoders emit: a new unit starts at an AUD/SPS/PPS/SEI after a slice, or at a slice
/// whose `first_mb_in_slice` is 0 after a slice).
pub(crate) fn access_units(stream: &[u8]) -> Vec<AccessUnit<'_>> {
    let nals = nal_units(stream);
    let mut units = Vec::new();
    let mut unit_start = match nals.first() {
        Some(nal) => nal.start,
        None => return units,
    };
    let mut seen_slice = false;
    let mut keyframe = false;
    let mut reference = false;
    for nal in &nals {
        let is_slice = matches!(nal.kind, 1 | 5);
        let first_mb_zero = stream.get(nal.payload + 1).is_some_and(|b| b & 0x80 != 0);
        let begins_unit = seen_slice
            && (matches!(nal.kind, 6 | 7 | 8 | 9 | 14..=18) || (is_slice && first_mb_zero));
        if begins_unit && nal.start > unit_start {
            units.push(AccessUnit {
                bytes: &stream[unit_start..nal.start],
                keyframe,
                reference,
            });
            unit_start = nal.start;
            seen_slice = false;
            keyframe = false;
            reference = false;
        }
        seen_slice |= is_slice;
        keyframe |= nal.kind == 5;
        reference |= is_slice && nal.ref_idc > 0;
    }
    units.push(AccessUnit {
        bytes: &stream[unit_start..],
        keyframe,
        reference,
    });
    units
}

/// How a received stream relates to the source the camera loops over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Comparison {
    /// Access units received.
    pub(crate) received: usize,
    /// Source index (in the looped source) of the first received unit.
    pub(crate) first_source_index: usize,
    /// Source units passed over between received ones (lost or skipped frames), but for
    /// those in `left_out_by_catch_up`.
    pub(crate) skipped: usize,
    /// Units passed over before the first keyframe after the first received unit: a
    /// viewer that joins mid-GOP catches up from the device's GOP cache, which holds only
    /// the frames later frames refer to, and a catch-up that falls behind (loss and
    /// repair on a long path) ends early and leaves the viewer waiting for the next
    /// keyframe (`spec/endpoint.md` §4.1), so these were never sent to it. (A frame lost
    /// in that stretch is counted here too.)
    pub(crate) left_out_by_catch_up: usize,
    /// Whether the first received unit is a keyframe.
    pub(crate) starts_with_keyframe: bool,
}

/// Checks that every received access unit is byte-identical to a source access unit,
/// in the source's (looping) order, and counts the units passed over. An error names
/// the first received unit that matches nothing (a corrupt or foreign frame).
pub(crate) fn compare(
    source: &[AccessUnit<'_>],
    received: &[AccessUnit<'_>],
) -> anyhow::Result<Comparison> {
    let Some(first) = received.first() else {
        bail!("nothing received");
    };
    let start = source
        .iter()
        .position(|unit| unit.bytes == first.bytes)
        .context("the first received frame is not a frame of the source")?;
    let n = source.len();
    // Where the catch-up from the GOP cache ends at the latest: the next keyframe.
    let next_keyframe = start
        + (1..=n)
            .find(|step| source[(start + step) % n].keyframe)
            .unwrap_or(n);
    let mut cursor = start;
    let mut skipped = 0;
    let mut left_out_by_catch_up = 0;
    for (index, unit) in received.iter().enumerate().skip(1) {
        let step = (1..=n)
            .find(|step| source[(cursor + step) % n].bytes == unit.bytes)
            .with_context(|| {
                format!(
                    "received frame {index} ({} bytes) matches no source frame after source frame {}",
                    unit.bytes.len(),
                    cursor % n
                )
            })?;
        for passed in cursor + 1..cursor + step {
            if passed < next_keyframe {
                left_out_by_catch_up += 1;
            } else {
                skipped += 1;
            }
        }
        cursor += step;
    }
    Ok(Comparison {
        received: received.len(),
        first_source_index: start,
        skipped,
        left_out_by_catch_up,
        starts_with_keyframe: first.keyframe,
    })
}

/// Bitrate of a clip: the mean over the whole clip and the highest over any window of
/// `CLIP_FPS` consecutive frames (one second), bits per second.
pub(crate) fn bitrate(units: &[AccessUnit<'_>]) -> (u64, u64) {
    let sizes: Vec<u64> = units.iter().map(|u| u.bytes.len() as u64 * 8).collect();
    let seconds = sizes.len() as u64 / u64::from(CLIP_FPS);
    let mean = sizes.iter().sum::<u64>() / seconds.max(1);
    let peak = sizes
        .windows(CLIP_FPS as usize)
        .map(|second| second.iter().sum())
        .max()
        .unwrap_or(mean);
    (mean, peak)
}

/// Frames ffprobe decodes from a file (`-count_frames`).
pub(crate) fn frame_count(path: &Path) -> anyhow::Result<u64> {
    let out = run(Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(path))?;
    out.trim()
        .trim_end_matches(',')
        .parse()
        .with_context(|| format!("ffprobe said {out:?}"))
}
