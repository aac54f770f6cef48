//! The `viewer` binary's outputs, end to end on loopback: a device in this test sends an
//! ffmpeg-made H.265 clip with AAC audio (as the camera will once its RTSP source carries
//! them), two viewers write it — Annex-B `.h265` + ADTS `.aac`, and one `.mp4` — and the
//! files must be the clips byte for byte (the MP4 read back by ffprobe). A viewer whose
//! stdout reader goes away says goodbye to the camera and exits with status 3.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use sightwire::{Codec, Device, DeviceConfig, Event, Frame, PeerClosedReason, StreamId};
use sightwire_examples::local::LocalNetwork;
use sightwire_examples::mp4::nal_units;
use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint};
use tokio::time::timeout;

const PASSWORD: &str = "correct horse";
const FPS: u64 = 25;
/// Status the viewer exits with when its output was closed (documented in its `--out`).
const EXIT_OUTPUT_CLOSED: i32 = 3;

fn tools_present() -> bool {
    let found = |tool: &str| Command::new(tool).arg("-version").output().is_ok();
    if found("ffmpeg") && found("ffprobe") {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "ffmpeg and ffprobe are required under CI"
    );
    eprintln!("\n\n*** SKIPPED: ffmpeg/ffprobe not found; viewer output test not run ***\n\n");
    false
}

fn ffmpeg(args: &[&str]) {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        output.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// H.265 access units: a new one starts at a VPS/SPS/PPS/AUD/prefix SEI after a picture,
/// or at a slice with `first_slice_segment_in_pic_flag`.
fn hevc_access_units(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut units: Vec<Vec<u8>> = Vec::new();
    let mut current = Vec::new();
    let mut has_picture = false;
    for nal in nal_units(stream) {
        let nal_type = (nal[0] >> 1) & 0x3F;
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

/// The AudioSpecificConfig and raw access units of an ADTS stream without CRC.
fn adts_access_units(stream: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let (mut asc, mut units, mut rest) = (Vec::new(), Vec::new(), stream);
    while rest.len() >= 7 {
        assert_eq!(rest[0..2], [0xFF, 0xF1], "ADTS sync without CRC");
        let object_type = (rest[2] >> 6) + 1;
        let index = (rest[2] >> 2) & 0x0F;
        let channels = ((rest[2] & 1) << 2) | (rest[3] >> 6);
        let len = (usize::from(rest[3] & 3) << 11)
            | (usize::from(rest[4]) << 3)
            | usize::from(rest[5] >> 5);
        asc = vec![
            (object_type << 3) | (index >> 1),
            ((index & 1) << 7) | (channels << 3),
        ];
        units.push(rest[7..len].to_vec());
        rest = &rest[len..];
    }
    (asc, units)
}

struct Clips {
    video: Vec<Vec<u8>>,
    adts: Vec<u8>,
    asc: Vec<u8>,
    audio: Vec<Vec<u8>>,
}

/// 2 s of 320x240 H.265 at 25 fps (keyframe every second) and 1.8 s of AAC 48 kHz mono.
fn make_clips(dir: &Path) -> Clips {
    let video = dir.join("clip.h265");
    let audio = dir.join("clip.aac");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size=320x240:rate={FPS}"),
        "-t",
        "2",
        "-c:v",
        "libx265",
        "-x265-params",
        "log-level=error:keyint=25:bframes=0",
        "-pix_fmt",
        "yuv420p",
        "-f",
        "hevc",
        video.to_str().expect("path"),
    ]);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "1.8",
        "-ac",
        "1",
        "-c:a",
        "aac",
        "-f",
        "adts",
        audio.to_str().expect("path"),
    ]);
    let adts = std::fs::read(&audio).expect("read audio");
    let (asc, audio) = adts_access_units(&adts);
    Clips {
        video: hevc_access_units(&std::fs::read(&video).expect("read video")),
        adts,
        asc,
        audio,
    }
}

struct Camera {
    network: LocalNetwork,
    device: Device,
    uri: DeviceUri,
}

async fn start_camera(dir: &Path) -> Camera {
    let mut network = LocalNetwork::start(&dir.join("registry.sqlite"))
        .await
        .expect("network");
    let id: DeviceId = "1C:C3:16:AB:CD:E0".parse().expect("id");
    let identity = network.provision(id).expect("provision");
    let uri = DeviceUri::new(
        id,
        KeyFingerprint::of_public_key(identity.certificate.device_key()),
    );
    let mut config = DeviceConfig::new(identity, network.rendezvous.clone());
    config.bind = "127.0.0.1:0".parse().expect("addr");
    config.password = Some(PASSWORD.into());
    let mut device = Device::start(config).await.expect("device");
    next_event(&mut device, |e| matches!(e, Event::Registered { .. })).await;
    Camera {
        network,
        device,
        uri,
    }
}

async fn next_event(device: &mut Device, mut matches: impl FnMut(&Event) -> bool) -> Event {
    timeout(Duration::from_secs(20), async {
        loop {
            let event = device.next_event().await.expect("device running");
            if matches(&event) {
                return event;
            }
        }
    })
    .await
    .expect("device event in time")
}

/// Starts the viewer binary on the camera with `extra` arguments, stdout piped.
fn spawn_viewer(camera: &Camera, state: &Path, extra: &[&str]) -> Child {
    let network = &camera.network;
    Command::new(env!("CARGO_BIN_EXE_viewer"))
        .arg("--rendezvous")
        .arg(network.rendezvous_address().to_string())
        .arg("--rendezvous-key")
        .arg(hex::encode(network.rendezvous.public_key))
        .arg("--rendezvous-stream-port")
        .arg(network.rendezvous_stream_port().to_string())
        .arg("--issuer-key")
        .arg(hex::encode(network.issuer.public().to_bytes()))
        .arg("--device")
        .arg(camera.uri.to_string())
        .args(["--password", PASSWORD, "--bind", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(state)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start viewer")
}

fn frame(
    stream: StreamId,
    codec: Codec,
    keyframe: bool,
    config: bool,
    us: u64,
    data: &[u8],
) -> Frame {
    Frame {
        stream,
        codec,
        keyframe,
        codec_config: config,
        capture_time_us: us,
        data: Bytes::copy_from_slice(data),
    }
}

/// Sends the clips in real time, audio and video interleaved by capture time; the
/// AudioSpecificConfig goes first.
async fn send_clips(device: &Device, clips: &Clips) {
    assert!(
        device
            .send_frame(frame(
                StreamId::AUDIO,
                Codec::Aac,
                true,
                true,
                0,
                &clips.asc
            ))
            .await
    );
    let (mut v, mut a) = (0usize, 0usize);
    let start = tokio::time::Instant::now();
    while v < clips.video.len() || a < clips.audio.len() {
        let video_us = v as u64 * 1_000_000 / FPS;
        let audio_us = a as u64 * 1024 * 1_000_000 / 48_000;
        let (next, us) =
            if a >= clips.audio.len() || (v < clips.video.len() && video_us <= audio_us) {
                let data = &clips.video[v];
                let keyframe = nal_units(data).any(|n| (16..=23).contains(&((n[0] >> 1) & 0x3F)));
                v += 1;
                (
                    frame(
                        StreamId::VIDEO,
                        Codec::H265,
                        keyframe,
                        keyframe,
                        video_us,
                        data,
                    ),
                    video_us,
                )
            } else {
                a += 1;
                (
                    frame(
                        StreamId::AUDIO,
                        Codec::Aac,
                        true,
                        false,
                        audio_us,
                        &clips.audio[a - 1],
                    ),
                    audio_us,
                )
            };
        tokio::time::sleep_until(start + Duration::from_micros(us)).await;
        assert!(device.send_frame(next).await, "device stopped");
    }
}

/// Waits for the viewer and returns its exit code, stdout and stderr.
fn finish(child: Child) -> (Option<i32>, String, String) {
    let output = child.wait_with_output().expect("viewer output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn probe(path: &PathBuf, stream: &str, entries: &str) -> String {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", stream])
        .args(["-show_entries", entries, "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        output.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_writes_h265_and_aac_to_their_own_outputs_byte_for_byte() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clips = make_clips(dir.path());
    assert_eq!(clips.video.len() as u64, 2 * FPS);
    let mut camera = start_camera(dir.path()).await;

    let raw_video = dir.path().join("out.h265");
    let raw_audio = dir.path().join("out.aac");
    let mp4 = dir.path().join("out.mp4");
    let frames = clips.video.len().to_string();
    let raw_viewer = spawn_viewer(
        &camera,
        &dir.path().join("state-raw"),
        &[
            "--out",
            raw_video.to_str().expect("path"),
            "--audio-out",
            raw_audio.to_str().expect("path"),
            "--frames",
            &frames,
        ],
    );
    let mp4_viewer = spawn_viewer(
        &camera,
        &dir.path().join("state-mp4"),
        &["--out", mp4.to_str().expect("path"), "--frames", &frames],
    );
    for _ in 0..2 {
        next_event(&mut camera.device, |e| {
            matches!(e, Event::PeerConnected { .. })
        })
        .await;
    }
    // Let both authorizations settle before the first (and only) keyframe goes out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_clips(&camera.device, &clips).await;

    let (raw_code, raw_stdout, raw_stderr) = tokio::task::block_in_place(|| finish(raw_viewer));
    assert_eq!(raw_code, Some(0), "raw viewer: {raw_stderr}\n{raw_stdout}");
    let (mp4_code, mp4_stdout, mp4_stderr) = tokio::task::block_in_place(|| finish(mp4_viewer));
    assert_eq!(mp4_code, Some(0), "mp4 viewer: {mp4_stderr}\n{mp4_stdout}");

    let expected_video: Vec<u8> = clips.video.concat();
    let got_video = std::fs::read(&raw_video).expect("read video");
    assert!(
        got_video == expected_video,
        "Annex-B H.265 differs: {} vs {} bytes",
        got_video.len(),
        expected_video.len()
    );
    let got_audio = std::fs::read(&raw_audio).expect("read audio");
    assert!(
        got_audio == clips.adts,
        "ADTS differs: {} vs {} bytes",
        got_audio.len(),
        clips.adts.len()
    );
    assert!(
        raw_stdout.contains(&format!("\"audio_frames\":{}", clips.audio.len() + 1)),
        "{raw_stdout}"
    );

    assert_eq!(
        probe(
            &mp4,
            "v:0",
            "stream=codec_name,codec_tag_string,width,height,nb_read_frames"
        ),
        format!("hevc,hvc1,320,240,{}", clips.video.len())
    );
    assert_eq!(
        probe(
            &mp4,
            "a:0",
            "stream=codec_name,sample_rate,channels,nb_read_frames"
        ),
        format!("aac,48000,1,{}", clips.audio.len())
    );
    eprintln!(
        "viewer outputs: {} H.265 frames ({} bytes) and {} AAC frames identical; MP4 probed",
        clips.video.len(),
        expected_video.len(),
        clips.audio.len()
    );
    camera.device.shutdown().await;
    camera.network.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_whose_stdout_closes_says_goodbye_and_exits_3() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clips = make_clips(dir.path());
    let mut camera = start_camera(dir.path()).await;
    let mut viewer = spawn_viewer(&camera, &dir.path().join("state"), &["--out", "-"]);
    next_event(&mut camera.device, |e| {
        matches!(e, Event::PeerConnected { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The reader goes away before any frame: the viewer's first write fails.
    drop(viewer.stdout.take());
    send_clips(&camera.device, &clips).await;
    let event = next_event(&mut camera.device, |e| {
        matches!(e, Event::PeerClosed { .. })
    })
    .await;
    let Event::PeerClosed { reason, .. } = event else {
        unreachable!()
    };
    assert_eq!(reason, PeerClosedReason::Closed, "the viewer said goodbye");
    let (code, _, stderr) = tokio::task::block_in_place(|| finish(viewer));
    assert_eq!(code, Some(EXIT_OUTPUT_CLOSED), "{stderr}");
    assert!(stderr.contains("the output was closed"), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    camera.device.shutdown().await;
    camera.network.shutdown().await;
}
