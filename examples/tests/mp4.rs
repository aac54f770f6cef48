//! The viewer's MP4 writer against ffprobe: the demo's clip (1280x720, 30 fps, ffmpeg
//! testsrc2), written frame by frame, must decode to as many frames as were written, with
//! the SPS's picture size, and a recording cut short (what Ctrl-C leaves) must be
//! playable too. ffmpeg-made H.265 (libx265), AAC and G.711 A-law/µ-law clips go into
//! `hvc1` + `mp4a`/`alaw`/`ulaw` files that ffprobe reads with exact durations, ffmpeg
//! decodes without an error, and whose samples ffmpeg copies back out byte for byte.

mod clips;

use clips::{
    adts_access_units, ffmpeg, hevc_access_units, make_aac, make_hevc, probe_stream, tools_present,
};

use std::path::Path;
use std::process::Command;

use sightwire::Codec;
use sightwire_examples::annexb::access_units;
use sightwire_examples::mp4::{FrameWritten, Mp4Writer};

const FPS: u64 = 30;

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
    let info = probe_stream(path, "v:0", "stream=width,height,nb_read_frames");
    (
        info["width"].parse().expect("width"),
        info["height"].parse().expect("height"),
        info["nb_read_frames"].parse().expect("frames"),
    )
}

fn write_mp4(path: &Path, frames: &[Vec<u8>]) -> u64 {
    let mut writer = Mp4Writer::create(path).expect("create");
    for (index, frame) in frames.iter().enumerate() {
        let capture_time_us = index as u64 * 1_000_000 / FPS;
        let written = writer
            .write(Codec::H264, false, frame, capture_time_us)
            .expect("write");
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
            .write(Codec::H264, false, &unit.data, capture_time_us)
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

/// Decodes every stream of `path` and fails on any decoder error.
fn decodes_cleanly(path: &Path) {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-xerror", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "ffmpeg could not decode {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

const HEVC_FPS: u64 = 25;

#[test]
fn h265_and_aac_clips_make_an_mp4_ffprobe_reads_exactly() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let video_bytes = make_hevc(&dir.path().join("clip.hevc"), "640x360", HEVC_FPS, 2);
    let adts = make_aac(&dir.path().join("clip.aac"), 2, "2");
    let units = hevc_access_units(&video_bytes);
    assert_eq!(units.len() as u64, 2 * HEVC_FPS);
    let (asc, aac_units) = adts_access_units(&adts);

    let mp4 = dir.path().join("out.mp4");
    let mut writer = Mp4Writer::create(&mp4).expect("create");
    assert_eq!(
        writer.write(Codec::Aac, true, &asc, 0).expect("asc"),
        FrameWritten::NoPicture
    );
    // Interleaved by capture time, as a viewer receives them.
    let (mut v, mut a) = (0usize, 0usize);
    while v < units.len() || a < aac_units.len() {
        let video_us = v as u64 * 1_000_000 / HEVC_FPS;
        let audio_us = a as u64 * 1024 * 1_000_000 / 48_000;
        if a >= aac_units.len() || (v < units.len() && video_us <= audio_us) {
            let written = writer
                .write(Codec::H265, false, &units[v], video_us)
                .expect("video");
            assert_eq!(written, FrameWritten::Written, "video frame {v}");
            v += 1;
        } else {
            let written = writer
                .write(Codec::Aac, false, &aac_units[a], audio_us)
                .expect("audio");
            assert_eq!(written, FrameWritten::Written, "audio frame {a}");
            a += 1;
        }
    }
    assert_eq!(writer.frames(), units.len() as u64);
    assert_eq!(writer.audio_frames(), aac_units.len() as u64);
    writer.finish().expect("finish");

    let video_info = probe_stream(
        &mp4,
        "v:0",
        "stream=codec_name,codec_tag_string,width,height,nb_read_frames,duration_ts,time_base",
    );
    assert_eq!(video_info["codec_name"], "hevc");
    assert_eq!(video_info["codec_tag_string"], "hvc1");
    assert_eq!(
        (&*video_info["width"], &*video_info["height"]),
        ("640", "360")
    );
    assert_eq!(video_info["nb_read_frames"], units.len().to_string());
    assert_eq!(video_info["time_base"], "1/90000");
    // 50 frames of 3600 ticks: 2 s exactly (the last frame repeats the one before).
    assert_eq!(video_info["duration_ts"], "180000");
    let audio_info = probe_stream(
        &mp4,
        "a:0",
        "stream=codec_name,sample_rate,channels,nb_read_frames,duration_ts",
    );
    assert_eq!(audio_info["codec_name"], "aac");
    assert_eq!(audio_info["sample_rate"], "48000");
    assert_eq!(audio_info["channels"], "2");
    assert_eq!(audio_info["nb_read_frames"], aac_units.len().to_string());
    assert_eq!(
        audio_info["duration_ts"],
        (aac_units.len() * 1024).to_string()
    );
    decodes_cleanly(&mp4);

    // The samples, copied back out, are the input byte for byte.
    let hevc_out = dir.path().join("back.hevc");
    let adts_out = dir.path().join("back.aac");
    ffmpeg(&[
        "-i",
        mp4.to_str().expect("path"),
        "-map",
        "0:v",
        "-c",
        "copy",
        "-f",
        "hevc",
        hevc_out.to_str().expect("path"),
    ]);
    ffmpeg(&[
        "-i",
        mp4.to_str().expect("path"),
        "-map",
        "0:a",
        "-c",
        "copy",
        "-f",
        "adts",
        adts_out.to_str().expect("path"),
    ]);
    let back: Vec<Vec<u8>> = hevc_access_units(&std::fs::read(&hevc_out).expect("read"));
    // ffmpeg puts the parameter sets back in front of each keyframe (after the SEI), so
    // the pictures and SEI are compared in order and the parameter sets as a set.
    let split = |units: &[Vec<u8>]| {
        let (mut sets, mut rest) = (std::collections::BTreeSet::new(), Vec::new());
        for unit in units {
            for nal in sightwire_examples::mp4::nal_units(unit) {
                if (32..=34).contains(&((nal[0] >> 1) & 0x3F)) {
                    sets.insert(nal.to_vec());
                } else {
                    rest.push(nal.to_vec());
                }
            }
        }
        (sets, rest)
    };
    let (sets_in, pictures_in) = split(&units);
    let (sets_out, pictures_out) = split(&back);
    assert_eq!(back.len(), units.len());
    assert!(sets_out == sets_in, "parameter sets differ");
    assert!(pictures_out == pictures_in, "H.265 pictures differ");
    assert_eq!(std::fs::read(&adts_out).expect("read"), adts, "AAC differs");
    eprintln!(
        "mp4: {} H.265 + {} AAC frames -> ffprobe exact, decoded, copied back identical",
        units.len(),
        aac_units.len()
    );
}

#[test]
fn g711_clips_make_alaw_and_ulaw_tracks() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    for (codec, format, ffmpeg_codec, tag) in [
        (Codec::G711A, "alaw", "pcm_alaw", "alaw"),
        (Codec::G711Mu, "mulaw", "pcm_mulaw", "ulaw"),
    ] {
        let raw = dir.path().join(format!("clip.{format}"));
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=8000",
            "-t",
            "1",
            "-ac",
            "1",
            "-f",
            format,
            raw.to_str().expect("path"),
        ]);
        let samples = std::fs::read(&raw).expect("read");
        assert_eq!(samples.len(), 8000);
        let mp4 = dir.path().join(format!("{format}.mp4"));
        let mut writer = Mp4Writer::create(&mp4).expect("create");
        // 20 ms packets, as RTP carries G.711.
        for (index, packet) in samples.chunks(160).enumerate() {
            let written = writer
                .write(codec, false, packet, index as u64 * 20_000)
                .expect("write");
            assert_eq!(written, FrameWritten::Written);
        }
        writer.finish().expect("finish");
        let info = probe_stream(
            &mp4,
            "a:0",
            "stream=codec_name,codec_tag_string,sample_rate,channels,duration_ts",
        );
        assert_eq!(info["codec_name"], ffmpeg_codec);
        assert_eq!(info["codec_tag_string"], tag);
        assert_eq!((&*info["sample_rate"], &*info["channels"]), ("8000", "1"));
        assert_eq!(info["duration_ts"], "8000");
        decodes_cleanly(&mp4);
        let back = dir.path().join(format!("back.{format}"));
        ffmpeg(&[
            "-i",
            mp4.to_str().expect("path"),
            "-c",
            "copy",
            "-f",
            format,
            back.to_str().expect("path"),
        ]);
        assert_eq!(
            std::fs::read(&back).expect("read"),
            samples,
            "{format} differs"
        );
    }
}
