//! The `viewer` binary's outputs, end to end on loopback: a device in this test sends an
//! ffmpeg-made H.265 clip with AAC audio (as the camera will once its RTSP source carries
//! them), two viewers write it — Annex-B `.h265` + ADTS `.aac`, and one `.mp4` — and the
//! files must be the clips byte for byte (the MP4 read back by ffprobe). A viewer whose
//! stdout reader goes away says goodbye to the camera and exits with status 3.

mod clips;

use clips::{
    adts_access_units, hevc_access_units, make_aac, make_hevc, probe_stream, tools_present,
};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use sightwire::{Codec, Device, DeviceConfig, Event, Frame, PeerClosedReason, StreamId};
use sightwire_examples::hevc::{is_irap, nal_unit_type};
use sightwire_examples::local::LocalNetwork;
use sightwire_examples::mp4::nal_units;
use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint};
use sightwire_media::control_messages::{
    CatalogStream, ControlMessage, SourceState, StatusReason, Track,
};
use tokio::time::timeout;

const PASSWORD: &str = "correct horse";
const FPS: u64 = 25;
/// Status the viewer exits with when its output was closed (documented in its `--out`).
const EXIT_OUTPUT_CLOSED: i32 = 3;
/// Status the viewer exits with when it cannot take the camera's stream.
const EXIT_STREAM_REFUSED: i32 = 4;

struct Clips {
    video: Vec<Vec<u8>>,
    adts: Vec<u8>,
    asc: Vec<u8>,
    audio: Vec<Vec<u8>>,
}

/// 2 s of 320x240 H.265 at 25 fps (keyframe every second) and 1.8 s of AAC 48 kHz mono.
fn make_clips(dir: &Path) -> Clips {
    let video = make_hevc(&dir.join("clip.h265"), "320x240", FPS, 2);
    let adts = make_aac(&dir.join("clip.aac"), 1, "1.8");
    let (asc, audio) = adts_access_units(&adts);
    Clips {
        video: hevc_access_units(&video),
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

impl Camera {
    async fn stop(self) {
        self.device.shutdown().await;
        self.network.shutdown().await;
    }
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
    Frame::new(stream, codec, us, Bytes::copy_from_slice(data))
        .with_keyframe(keyframe)
        .with_codec_config(config)
}

/// Sends the clips in real time, audio and video interleaved by capture time; the
/// AudioSpecificConfig goes first.
async fn send_clips(device: &Device, clips: &Clips) {
    device
        .send_frame(frame(
            StreamId::AUDIO,
            Codec::Aac,
            true,
            true,
            0,
            &clips.asc,
        ))
        .await
        .expect("the endpoint stopped");
    let (mut v, mut a) = (0usize, 0usize);
    let start = tokio::time::Instant::now();
    while v < clips.video.len() || a < clips.audio.len() {
        let video_us = v as u64 * 1_000_000 / FPS;
        let audio_us = a as u64 * 1024 * 1_000_000 / 48_000;
        let (next, us) =
            if a >= clips.audio.len() || (v < clips.video.len() && video_us <= audio_us) {
                let data = &clips.video[v];
                let keyframe = nal_units(data).any(|n| is_irap(nal_unit_type(n)));
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
        device.send_frame(next).await.expect("device stopped");
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

    let video = probe_stream(
        &mp4,
        "v:0",
        "stream=codec_name,codec_tag_string,width,height,nb_read_frames",
    );
    assert_eq!(video["codec_name"], "hevc");
    assert_eq!(video["codec_tag_string"], "hvc1");
    assert_eq!((&*video["width"], &*video["height"]), ("320", "240"));
    assert_eq!(video["nb_read_frames"], clips.video.len().to_string());
    let audio = probe_stream(
        &mp4,
        "a:0",
        "stream=codec_name,sample_rate,channels,nb_read_frames",
    );
    assert_eq!(audio["codec_name"], "aac");
    assert_eq!(
        (&*audio["sample_rate"], &*audio["channels"]),
        ("48000", "1")
    );
    assert_eq!(audio["nb_read_frames"], clips.audio.len().to_string());
    eprintln!(
        "viewer outputs: {} H.265 frames ({} bytes) and {} AAC frames identical; MP4 probed",
        clips.video.len(),
        expected_video.len(),
        clips.audio.len()
    );
    camera.stop().await;
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
    camera.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_hears_why_the_source_fails_and_refuses_a_codec_it_cannot_take() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut camera = start_camera(dir.path()).await;
    let out = dir.path().join("out.h264");
    let viewer = spawn_viewer(
        &camera,
        &dir.path().join("state"),
        &[
            "--out",
            out.to_str().expect("path"),
            "--accept",
            "h264,aac",
            "--seconds",
            "20",
        ],
    );
    // The viewer's choice: the default stream, H.264 and AAC only.
    let event = next_event(&mut camera.device, |e| matches!(e, Event::Control { .. })).await;
    let Event::Control { peer, message } = event else {
        unreachable!()
    };
    assert_eq!(
        ControlMessage::decode(&message),
        Ok(ControlMessage::Select {
            stream: String::new(),
            accepts: vec![Codec::H264, Codec::Aac]
        })
    );
    let status = ControlMessage::Status {
        state: SourceState::Failing,
        reason: StatusReason::SourceLoginRefused,
        text: "RTSP 401 Unauthorized".into(),
    };
    let catalog = ControlMessage::Catalog {
        streams: vec![CatalogStream {
            name: "main".into(),
            tracks: vec![Track {
                stream: StreamId::VIDEO,
                codec: Codec::H265,
            }],
        }],
    };
    for message in [status, catalog] {
        let bytes = message.encode().expect("encode");
        camera
            .device
            .send_control(Some(peer), bytes.into())
            .await
            .expect("the endpoint stopped");
    }
    let (code, stdout, stderr) = tokio::task::block_in_place(|| finish(viewer));
    assert_eq!(code, Some(EXIT_STREAM_REFUSED), "{stderr}\n{stdout}");
    assert!(
        stdout.contains(r#""event":"camera_status","reason":"source_login_refused","state":"failing","text":"RTSP 401 Unauthorized""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""error":"codec_not_accepted""#),
        "{stdout}"
    );
    assert!(
        stderr.contains("camera: source failing (source_login_refused): RTSP 401 Unauthorized"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stream \"main\" is h265, which this viewer does not take"),
        "{stderr}"
    );
    camera.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talk_back_audio_reaches_the_camera_byte_for_byte() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let talk = dir.path().join("talk.aac");
    let adts = make_aac(&talk, 1, "1");
    let (asc, units) = adts_access_units(&adts);
    let mut camera = start_camera(dir.path()).await;
    let out = dir.path().join("out.h264");
    let viewer = spawn_viewer(
        &camera,
        &dir.path().join("state"),
        &[
            "--out",
            out.to_str().expect("path"),
            "--talk",
            talk.to_str().expect("path"),
            "--seconds",
            "3",
        ],
    );
    let mut received = Vec::new();
    while received.len() < units.len() + 1 {
        let event = next_event(&mut camera.device, |e| matches!(e, Event::Frame { .. })).await;
        if let Event::Frame { frame, .. } = event {
            assert_eq!(
                (frame.frame.stream, frame.frame.codec),
                (StreamId::AUDIO, Codec::Aac)
            );
            received.push(frame.frame);
        }
    }
    assert!(received[0].codec_config);
    assert_eq!(&received[0].data[..], &asc[..]);
    let got: Vec<&[u8]> = received[1..].iter().map(|f| &f.data[..]).collect();
    let sent: Vec<&[u8]> = units.iter().map(Vec::as_slice).collect();
    assert!(got == sent, "talk-back access units differ");
    // 1024 samples at 48 kHz apart, from 0.
    assert_eq!(
        received.last().map(|f| f.capture_time_us),
        Some((units.len() as u64 - 1) * 1024 * 1_000_000 / 48_000)
    );
    let (code, stdout, stderr) = tokio::task::block_in_place(|| finish(viewer));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("\"talk_frames\":{}", units.len() + 1)),
        "{stdout}"
    );
    eprintln!(
        "talk-back: ASC + {} AAC frames reached the camera identical",
        units.len()
    );
    camera.stop().await;
}
