//! The RTSP camera source against a small RTSP server in this test: RTP over the RTSP
//! TCP connection (interleaved), Basic authentication, single-NAL and FU-A packets
//! (RFC 6184), serving an H.264 clip made with ffmpeg.
//!
//! The server serves the clip three times, on three connections: the first with SPS/PPS
//! in band, then it drops the connection (a camera dropping the session); the second with
//! SPS/PPS only out of band in the SDP, then it goes silent with the connection open (a
//! hung camera, caught by the stall timeout); the third in band again. The source must
//! reconnect each time, and every frame it yields must equal the clip's access unit
//! (start codes written as `00 00 00 01`), keyframes included, because retina puts the
//! parameter sets in front of each keyframe.
//!
//! A second test serves a camera's main stream (640x360) and sub stream (320x180) at
//! once, in real time and looping, the sub stream joining mid-GOP, and drives
//! [`RtspSource`] down to the sub stream and back with the target bitrate: each switch
//! must start at the new stream's keyframe with its SPS/PPS, capture times must keep
//! increasing, the stream left must be closed, and the spliced output must decode
//! (ffmpeg) to every frame.

mod clips;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sightwire::{Codec, Frame, StreamId};
use sightwire_examples::annexb::{AccessUnit, access_units};
use sightwire_examples::hevc::is_irap;
use sightwire_examples::mp4::nal_units;
use sightwire_examples::rtsp::{
    RtspConfig, RtspSource, SourceFailure, SourceStatus, spawn, spawn_with_status,
};
use sightwire_examples::switch::{CameraStream, SwitchConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FPS: u32 = 30;
const RTP_CLOCK_HZ: u32 = 90_000;
const TICKS_PER_FRAME: u32 = RTP_CLOCK_HZ / FPS;
/// Largest RTP payload the server sends; bigger NAL units go out as FU-A fragments.
const MAX_RTP_PAYLOAD: usize = 1_400;
const USER: &str = "viewer";
const PASSWORD: &str = "p@ss:word";
const SESSION_ID: &str = "4242";
const FIRST_SEQ: u16 = 1_000;
const FIRST_RTPTIME: u32 = 5_000;
/// Connections the server accepts (one per [`SessionPlan`]).
const SESSIONS: usize = 3;
/// The source's stall timeout here: how long the silent second session lasts.
const STALL_TIMEOUT: Duration = Duration::from_millis(500);

/// A 2 s clip of `size` (`WxH`), a keyframe every second. Returns `None` (after saying so
/// loudly) when ffmpeg is missing outside CI.
fn make_clip(path: &Path, size: &str) -> Option<Vec<u8>> {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate={FPS}"))
        .args(["-t", "2", "-c:v", "libx264", "-preset", "veryfast"])
        .args(["-pix_fmt", "yuv420p", "-g", "30", "-bf", "0"])
        .args(["-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(path)
        .status();
    match status {
        Ok(status) => {
            assert!(status.success(), "ffmpeg failed to make the test clip");
            Some(std::fs::read(path).expect("read clip"))
        }
        Err(error) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "ffmpeg is required under CI: {error}"
            );
            eprintln!("\n\n*** SKIPPED: ffmpeg not found ({error}); RTSP test not run ***\n\n");
            None
        }
    }
}

/// An access unit as retina writes it: every NAL unit behind a 4-byte start code.
fn four_byte_start_codes(unit: &AccessUnit) -> Vec<u8> {
    let mut out = Vec::with_capacity(unit.data.len() + 16);
    for nal in nal_units(&unit.data) {
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
    }
    out
}

fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |h| h & 0x1F)
}

/// How the server serves one connection.
#[derive(Clone, Copy)]
struct SessionPlan {
    /// Send SPS/PPS NAL units in the RTP stream (else only in the SDP).
    parameter_sets_in_band: bool,
    /// Close the connection once the clip is sent (else wait for the client to leave).
    drop_after_clip: bool,
    /// Times the clip is sent, timestamps continuing.
    loops: usize,
    /// Send frames at the clip's frame rate (else as fast as TCP takes them).
    paced: bool,
    /// Access unit of the clip to start from (later loops start at 0).
    start_frame: usize,
}

impl SessionPlan {
    /// The clip once, as fast as possible.
    fn once(parameter_sets_in_band: bool, drop_after_clip: bool) -> Self {
        Self {
            parameter_sets_in_band,
            drop_after_clip,
            loops: 1,
            paced: false,
            start_frame: 0,
        }
    }
}

#[derive(Default)]
struct ServerLog {
    connections: usize,
    unauthorized_describes: usize,
    authorized_describes: usize,
    /// Clip names described, in order.
    described: Vec<String>,
    /// Clip names whose connection ended because the client left or closed it.
    closed: Vec<String>,
}

struct Clip {
    units: Vec<AccessUnit>,
    sps: Vec<u8>,
    pps: Vec<u8>,
}

/// The clips a server offers, by the last segment of the URL path.
type Clips = Arc<HashMap<String, Arc<Clip>>>;

async fn serve(
    listener: TcpListener,
    clips: Clips,
    plans: Vec<SessionPlan>,
    log: Arc<Mutex<ServerLog>>,
) {
    for plan in plans {
        let (stream, _) = listener.accept().await.expect("accept");
        log.lock().expect("log").connections += 1;
        // Wait for this connection to end before accepting the next, like a camera
        // with a single session slot.
        serve_connection(stream, &clips, |_| plan, &log).await;
    }
}

/// Serves every connection at once, each with the plan `plan(clip name)`.
async fn serve_concurrently(
    listener: TcpListener,
    clips: Clips,
    plan: fn(&str) -> SessionPlan,
    log: Arc<Mutex<ServerLog>>,
) {
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        log.lock().expect("log").connections += 1;
        let clips = clips.clone();
        let log = log.clone();
        tokio::spawn(async move { serve_connection(stream, &clips, plan, &log).await });
    }
}

/// Reads one RTSP request (skipping any interleaved `$` data the client sends).
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<(String, String)>)> {
    let mut head = Vec::new();
    loop {
        let byte = stream.read_u8().await.ok()?;
        if head.is_empty() && byte == b'$' {
            let _channel = stream.read_u8().await.ok()?;
            let len = stream.read_u16().await.ok()?;
            let mut skip = vec![0; usize::from(len)];
            stream.read_exact(&mut skip).await.ok()?;
            continue;
        }
        head.push(byte);
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
        assert!(head.len() < 16_384, "request header too long");
    }
    let text = String::from_utf8(head).expect("ASCII request");
    let mut lines = text.split("\r\n");
    let request_line = lines.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body_len: usize =
        header(&headers, "content-length").map_or(0, |v| v.parse().expect("length"));
    let mut body = vec![0; body_len];
    stream.read_exact(&mut body).await.ok()?;
    Some((request_line, headers))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn serve_connection(
    mut stream: TcpStream,
    clips: &HashMap<String, Arc<Clip>>,
    plan: impl Fn(&str) -> SessionPlan,
    log: &Mutex<ServerLog>,
) {
    let addr = stream.local_addr().expect("addr");
    let expected_auth = format!("Basic {}", BASE64.encode(format!("{USER}:{PASSWORD}")));
    // Chosen by the DESCRIBE's URL.
    let mut chosen: Option<(String, Arc<Clip>)> = None;
    loop {
        let Some((request_line, headers)) = read_request(&mut stream).await else {
            return;
        };
        let cseq = header(&headers, "cseq").unwrap_or("0").to_owned();
        let method = request_line.split(' ').next().unwrap_or("").to_owned();
        let mut response = format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n");
        let mut body = String::new();
        let mut start_playing = false;
        match method.as_str() {
            "OPTIONS" => response
                .push_str("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER\r\n"),
            "DESCRIBE" => {
                if header(&headers, "authorization") != Some(expected_auth.as_str()) {
                    log.lock().expect("log").unauthorized_describes += 1;
                    let reply = format!(
                        "RTSP/1.0 401 Unauthorized\r\nCSeq: {cseq}\r\nWWW-Authenticate: Basic realm=\"sightwire-test\"\r\n\r\n"
                    );
                    stream.write_all(reply.as_bytes()).await.expect("write");
                    continue;
                }
                let url = request_line.split(' ').nth(1).unwrap_or("");
                let name = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
                let clip = clips.get(name).unwrap_or_else(|| panic!("no clip {name}"));
                chosen = Some((name.to_owned(), clip.clone()));
                let mut log = log.lock().expect("log");
                log.authorized_describes += 1;
                log.described.push(name.to_owned());
                drop(log);
                let base = format!("rtsp://{addr}/{name}/");
                body = format!(
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=sightwire test clip\r\nt=0 0\r\n\
                     m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/{RTP_CLOCK_HZ}\r\n\
                     a=fmtp:96 packetization-mode=1;sprop-parameter-sets={},{}\r\n\
                     a=control:trackID=0\r\n",
                    BASE64.encode(&clip.sps),
                    BASE64.encode(&clip.pps),
                );
                response.push_str(&format!(
                    "Content-Base: {base}\r\nContent-Type: application/sdp\r\n"
                ));
            }
            "SETUP" => {
                let transport = header(&headers, "transport").unwrap_or("");
                assert!(
                    transport.contains("RTP/AVP/TCP"),
                    "client asked for {transport}"
                );
                response.push_str(&format!(
                    "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\nSession: {SESSION_ID};timeout=60\r\n"
                ));
            }
            "PLAY" => {
                let name = chosen.as_ref().map_or("", |(name, _)| name.as_str());
                let base = format!("rtsp://{addr}/{name}/");
                response.push_str(&format!(
                    "Session: {SESSION_ID}\r\nRTP-Info: url={base}trackID=0;seq={FIRST_SEQ};rtptime={FIRST_RTPTIME}\r\n"
                ));
                start_playing = true;
            }
            _ => response.push_str(&format!("Session: {SESSION_ID}\r\n")),
        }
        if !body.is_empty() {
            response.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        response.push_str("\r\n");
        response.push_str(&body);
        stream
            .write_all(response.as_bytes())
            .await
            .expect("write response");
        if start_playing {
            break;
        }
    }
    let (name, clip) = chosen.expect("PLAY after DESCRIBE");
    let plan = plan(&name);
    if !send_clip(&mut stream, &clip, plan).await {
        log.lock().expect("log").closed.push(name);
        return;
    }
    if plan.drop_after_clip {
        return; // dropping the stream closes the connection
    }
    // Keep answering (keepalives, TEARDOWN) until the client goes away.
    while let Some((_, headers)) = read_request(&mut stream).await {
        let cseq = header(&headers, "cseq").unwrap_or("0").to_owned();
        let reply = format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nSession: {SESSION_ID}\r\n\r\n");
        if stream.write_all(reply.as_bytes()).await.is_err() {
            break;
        }
    }
    log.lock().expect("log").closed.push(name);
}

/// Sends the access units as RTP on interleaved channel 0 as `plan` says: one packet per
/// small NAL unit, FU-A fragments for large ones, the marker bit on the last packet of a
/// unit. Returns `false` if the client left.
async fn send_clip(stream: &mut TcpStream, clip: &Clip, plan: SessionPlan) -> bool {
    let mut seq = FIRST_SEQ;
    let mut out = Vec::new();
    let start = tokio::time::Instant::now();
    let frame_time = Duration::from_secs(1) / FPS;
    let n = clip.units.len();
    for (sent, index) in (plan.start_frame..plan.loops * n).enumerate() {
        let unit = &clip.units[index % n];
        let timestamp = FIRST_RTPTIME.wrapping_add(sent as u32 * TICKS_PER_FRAME);
        let nals: Vec<&[u8]> = nal_units(&unit.data)
            .filter(|nal| plan.parameter_sets_in_band || !matches!(nal_type(nal), 7 | 8))
            .collect();
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        for nal in nals {
            if nal.len() <= MAX_RTP_PAYLOAD {
                payloads.push(nal.to_vec());
                continue;
            }
            let indicator = (nal[0] & 0xE0) | 28;
            let chunks: Vec<&[u8]> = nal[1..].chunks(MAX_RTP_PAYLOAD - 2).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let mut fu_header = nal[0] & 0x1F;
                if i == 0 {
                    fu_header |= 0x80;
                }
                if i + 1 == chunks.len() {
                    fu_header |= 0x40;
                }
                let mut payload = vec![indicator, fu_header];
                payload.extend_from_slice(chunk);
                payloads.push(payload);
            }
        }
        let last = payloads.len().saturating_sub(1);
        for (i, payload) in payloads.iter().enumerate() {
            let marker = if i == last { 0x80 } else { 0 };
            let rtp_len = 12 + payload.len();
            out.push(b'$');
            out.push(0);
            out.extend_from_slice(&(rtp_len as u16).to_be_bytes());
            out.extend_from_slice(&[0x80, marker | 96]);
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&timestamp.to_be_bytes());
            out.extend_from_slice(&0x5157_4952u32.to_be_bytes());
            out.extend_from_slice(payload);
            seq = seq.wrapping_add(1);
        }
        if plan.paced {
            tokio::time::sleep_until(start + frame_time * sent as u32).await;
            if stream.write_all(&out).await.is_err() {
                return false;
            }
            out.clear();
        }
    }
    // A failed write means the client left; the test's assertions will say what broke.
    stream.write_all(&out).await.is_ok() && stream.flush().await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_source_yields_the_clips_access_units_and_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(stream) = make_clip(&dir.path().join("clip.h264"), "640x360") else {
        return;
    };
    let units = access_units(&stream);
    let first = units.first().expect("clip has access units");
    let sps = nal_units(&first.data)
        .find(|n| nal_type(n) == 7)
        .expect("SPS")
        .to_vec();
    let pps = nal_units(&first.data)
        .find(|n| nal_type(n) == 8)
        .expect("PPS")
        .to_vec();
    assert!(units.len() >= 50, "clip has {} access units", units.len());
    let keyframes = units.iter().filter(|u| u.keyframe).count();
    assert!(keyframes >= 2, "clip has {keyframes} keyframes");
    let clip = Arc::new(Clip { units, sps, pps });

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(ServerLog::default()));
    let plans = vec![
        SessionPlan::once(true, true),
        SessionPlan::once(false, false),
        SessionPlan::once(true, false),
    ];
    let clips = Arc::new(HashMap::from([("clip".to_owned(), clip.clone())]));
    let server = tokio::spawn(serve(listener, clips, plans, log.clone()));

    let mut config =
        RtspConfig::from_url(&format!("rtsp://{USER}:p%40ss%3Aword@{addr}/clip")).expect("config");
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(200);
    config.stall_timeout = STALL_TIMEOUT;
    let mut frames = spawn(config);
    let wanted = SESSIONS * clip.units.len();
    let mut received = Vec::with_capacity(wanted);
    let collect = async {
        while received.len() < wanted {
            match frames.recv().await {
                Some(frame) => received.push(frame),
                None => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), collect)
        .await
        .unwrap_or_else(|_| panic!("only {} of {wanted} frames within 15 s", received.len()));
    drop(frames);

    let n = clip.units.len();
    for (index, frame) in received.iter().enumerate() {
        let session = index / n;
        let unit = &clip.units[index % n];
        let expected = four_byte_start_codes(unit);
        assert!(
            frame.data[..] == expected[..],
            "session {session} frame {} differs from the clip's access unit ({} vs {} bytes)",
            index % n,
            frame.data.len(),
            expected.len()
        );
        assert_eq!(
            frame.keyframe, unit.keyframe,
            "keyframe flag of frame {index}"
        );
        assert_eq!(
            frame.codec_config, unit.codec_config,
            "codec_config of frame {index}"
        );
    }
    // Capture times: the RTP clock of each session, the second one continuing one frame
    // interval after the first.
    let frame_us = |i: u64| i * 1_000_000 / u64::from(FPS);
    for (index, frame) in received.iter().enumerate().take(n) {
        let ticks = index as u64 * u64::from(TICKS_PER_FRAME);
        assert_eq!(
            frame.capture_time_us,
            ticks * 1_000_000 / u64::from(RTP_CLOCK_HZ)
        );
    }
    assert!(
        received
            .windows(2)
            .all(|w| w[1].capture_time_us > w[0].capture_time_us)
    );
    for session in 1..SESSIONS {
        let first = session * n;
        let gap = received[first].capture_time_us - received[first - 1].capture_time_us;
        assert!(
            gap.abs_diff(frame_us(1)) <= 1,
            "session {session} starts {gap} µs after the previous one ended"
        );
    }

    let log = log.lock().expect("log");
    assert_eq!(
        log.connections, SESSIONS,
        "the source reconnected each time"
    );
    assert!(
        log.unauthorized_describes >= 1,
        "the server challenged the client"
    );
    assert_eq!(
        log.authorized_describes, SESSIONS,
        "credentials sent on every session"
    );
    drop(log);
    server.abort();
    eprintln!(
        "rtsp: {} frames ({keyframes} keyframes per pass) over {SESSIONS} sessions matched the clip",
        received.len()
    );
}

/// A clip's access units and parameter sets.
fn load_clip(stream: &[u8]) -> Clip {
    let units = access_units(stream);
    let first = units.first().expect("clip has access units");
    let find = |wanted: u8| {
        nal_units(&first.data)
            .find(|n| nal_type(n) == wanted)
            .expect("SPS and PPS lead the clip")
            .to_vec()
    };
    let (sps, pps) = (find(7), find(8));
    Clip { units, sps, pps }
}

/// Where an output frame came from: a clip and an access unit index.
fn origin(clips: &HashMap<String, Arc<Clip>>, frame: &Frame) -> (String, usize) {
    for (name, clip) in clips {
        if let Some(index) = clip
            .units
            .iter()
            .position(|unit| four_byte_start_codes(unit) == frame.data[..])
        {
            return (name.clone(), index);
        }
    }
    panic!(
        "a frame of {} bytes is no clip's access unit",
        frame.data.len()
    );
}

/// Pulls frames from `source` into `out` until `done`, within `limit`.
async fn pull_until(
    source: &mut RtspSource,
    out: &mut Vec<Frame>,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&RtspSource, &[Frame]) -> bool,
) {
    let pull = async {
        while !done(source, out) {
            out.push(source.next_frame().await.expect("the source keeps going"));
        }
    };
    tokio::time::timeout(limit, pull)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?} ({} frames)", out.len()));
}

/// A camera's main (640x360) and sub (320x180) stream, two ffmpeg clips, served by one
/// RTSP server at once, in real time and looping; the sub stream starts at frame 10 of
/// its 30-frame GOP (out of step with main's).
struct MainAndSub {
    clips: Clips,
    addr: SocketAddr,
    log: Arc<Mutex<ServerLog>>,
    server: tokio::task::JoinHandle<()>,
    /// The clips' bitrates.
    main_clip_bps: u64,
    sub_clip_bps: u64,
}

/// Starts [`MainAndSub`]; `None` without ffmpeg (outside CI).
async fn serve_main_and_sub(dir: &Path) -> Option<MainAndSub> {
    let main = make_clip(&dir.join("main.h264"), "640x360")?;
    let sub = make_clip(&dir.join("sub.h264"), "320x180")?;
    let rate = |clip: &[u8]| clip.len() as u64 * 8 / 2;
    let clips: Clips = Arc::new(HashMap::from([
        ("main".to_owned(), Arc::new(load_clip(&main))),
        ("sub".to_owned(), Arc::new(load_clip(&sub))),
    ]));
    let plan = |name: &str| SessionPlan {
        parameter_sets_in_band: true,
        drop_after_clip: false,
        loops: 1_000,
        paced: true,
        start_frame: if name == "sub" { 10 } else { 0 },
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(ServerLog::default()));
    let server = tokio::spawn(serve_concurrently(
        listener,
        clips.clone(),
        plan,
        log.clone(),
    ));
    Some(MainAndSub {
        clips,
        addr,
        log,
        server,
        main_clip_bps: rate(&main),
        sub_clip_bps: rate(&sub),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_source_switches_between_main_and_sub_at_keyframes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(MainAndSub {
        clips,
        addr,
        log,
        server,
        main_clip_bps,
        sub_clip_bps,
    }) = serve_main_and_sub(dir.path()).await
    else {
        return;
    };
    assert!(
        sub_clip_bps * 2 < main_clip_bps,
        "sub {sub_clip_bps} vs main {main_clip_bps} bit/s"
    );

    let url = |name: &str| {
        RtspConfig::from_url(&format!("rtsp://{USER}:p%40ss%3Aword@{addr}/{name}")).expect("config")
    };
    let config = SwitchConfig {
        down_hold: Duration::from_millis(300),
        up_hold: Duration::from_millis(500),
        measure_window: Duration::from_secs(1),
        ..SwitchConfig::default()
    };
    let mut source = RtspSource::new(url("main"), Some(url("sub")), config);
    let mut out = Vec::new();
    let limit = Duration::from_secs(15);

    // The main stream's rate, measured over 1 s.
    pull_until(
        &mut source,
        &mut out,
        limit,
        "main rate measured",
        |s, _| s.main_bps().is_some(),
    )
    .await;
    let main_bps = source.main_bps().expect("measured");
    assert!(
        main_bps > main_clip_bps / 2 && main_bps < main_clip_bps * 2,
        "measured {main_bps} bit/s of a {main_clip_bps} bit/s stream"
    );
    assert_eq!(source.active(), CameraStream::Main);

    // A target below the main stream: down after the hold, at the sub stream's first
    // keyframe (its frames 10..30 are discarded).
    source.set_target(Some(main_bps / 2));
    pull_until(&mut source, &mut out, limit, "switch down", |s, _| {
        s.active() == CameraStream::Sub
    })
    .await;
    let down = out.len();
    pull_until(&mut source, &mut out, limit, "on the sub stream", |_, o| {
        o.len() >= down + 40
    })
    .await;
    // A target well above it: back up after the hold.
    source.set_target(Some(main_bps * 3));
    pull_until(&mut source, &mut out, limit, "switch up", |s, _| {
        s.active() == CameraStream::Main
    })
    .await;
    let up = out.len();
    pull_until(
        &mut source,
        &mut out,
        limit,
        "on the main stream",
        |_, o| o.len() >= up + 40,
    )
    .await;
    assert_eq!(source.switches(), 2);
    drop(source);

    // main..., sub from its keyframe at 30 with SPS/PPS..., main from a keyframe....
    let origins: Vec<(String, usize)> = out.iter().map(|f| origin(&clips, f)).collect();
    let segments: Vec<(&str, usize)> = origins
        .iter()
        .enumerate()
        .filter(|(i, (name, _))| *i == 0 || origins[i - 1].0 != *name)
        .map(|(i, (name, _))| (name.as_str(), i))
        .collect();
    let names: Vec<&str> = segments.iter().map(|s| s.0).collect();
    assert_eq!(names, ["main", "sub", "main"]);
    assert_eq!(
        segments[1].1,
        down - 1,
        "the switch down is the last frame pulled"
    );
    assert_eq!(segments[2].1, up - 1);
    assert_eq!(
        origins[down - 1].1,
        30,
        "the sub stream starts at its keyframe"
    );
    for &(name, at) in &segments {
        let frame = &out[at];
        assert!(frame.keyframe && frame.codec_config, "{name} at {at}");
        let sps = &clips[name].sps;
        assert!(
            nal_units(&frame.data).any(|nal| nal == &sps[..]),
            "{name} at {at} starts with its own SPS"
        );
    }
    for (frame, (name, index)) in out.iter().zip(&origins) {
        assert_eq!(frame.keyframe, clips[name].units[*index].keyframe);
    }
    assert!(
        out.windows(2)
            .all(|w| w[1].capture_time_us > w[0].capture_time_us),
        "capture times increase across switches"
    );

    // The spliced stream decodes: every frame, both picture sizes, no decoder error.
    let spliced = dir.path().join("spliced.h264");
    let bytes: Vec<u8> = out.iter().flat_map(|f| f.data.to_vec()).collect();
    std::fs::write(&spliced, bytes).expect("write");
    let decoded = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&spliced)
        .args(["-fps_mode", "passthrough", "-f", "framemd5", "-"])
        .output()
        .expect("run ffmpeg");
    let errors = String::from_utf8_lossy(&decoded.stderr);
    assert!(
        decoded.status.success() && errors.trim().is_empty(),
        "{errors}"
    );
    let frames = String::from_utf8_lossy(&decoded.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    assert_eq!(frames, out.len(), "ffmpeg decoded every frame");

    // The sessions left were closed: main (after the switch down), then sub.
    let closed = async {
        loop {
            {
                let log = log.lock().expect("log");
                if log.closed.len() >= 3 {
                    return (log.described.clone(), log.closed.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (described, closed) = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("every session closed");
    assert_eq!(described, ["main", "sub", "main"]);
    assert_eq!(closed, ["main", "sub", "main"]);
    server.abort();
    eprintln!(
        "rtsp switch: {} frames, main {main_bps} bit/s measured; down at frame {down}, up at \
         frame {up}; ffmpeg decoded all",
        out.len()
    );
}

/// An RTSP server on loopback whose DESCRIBE never succeeds (the clip is never sent):
/// its address, its log and its task.
async fn refusing_server() -> (
    SocketAddr,
    Arc<Mutex<ServerLog>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let log = Arc::new(Mutex::new(ServerLog::default()));
    let clip = Arc::new(Clip {
        units: Vec::new(),
        sps: Vec::new(),
        pps: Vec::new(),
    });
    let clips = Arc::new(HashMap::from([("clip".to_owned(), clip)]));
    let server = tokio::spawn(serve_concurrently(
        listener,
        clips,
        |_| SessionPlan::once(true, true),
        log.clone(),
    ));
    (addr, log, server)
}

/// A camera that refuses the login is reported as such, every attempt counted, instead
/// of a source that silently reconnects for ever.
#[tokio::test]
async fn a_refused_login_is_reported_with_its_reason() {
    let (addr, log, server) = refusing_server().await;
    let mut config =
        RtspConfig::from_url(&format!("rtsp://{USER}:wrong@{addr}/clip")).expect("config");
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(200);
    config.stall_timeout = STALL_TIMEOUT;
    let (_frames, mut status) = spawn_with_status(config);
    assert_eq!(*status.borrow(), SourceStatus::Connecting);
    let failing = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| matches!(s, SourceStatus::Failing { attempts: 2.., .. })),
    )
    .await
    .expect("reported in time")
    .expect("source running")
    .clone();
    assert_eq!(
        failing,
        SourceStatus::Failing {
            reason: SourceFailure::LoginRefused,
            attempts: 2
        }
    );
    assert!(log.lock().expect("log").unauthorized_describes >= 2);
    server.abort();
}

/// Issue 15: a camera whose RTSP login fails used to admit viewers who then got no frame
/// and no reason. The example camera (the binary, on loopback) now tells each viewer why:
/// a STATUS "failing / source_login_refused" that the viewer prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_whose_rtsp_login_fails_tells_its_viewers_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (rtsp, log, server) = refusing_server().await;
    let deployment = Deployment::start(dir.path()).await;
    let id = "1C:C3:16:AB:CD:E7";
    let camera = deployment.camera(id, &format!("rtsp://{USER}:wrong@{rtsp}/clip"));
    // The camera has had its first refusals (backoff 1 s, doubling) before the viewer comes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let viewer = deployment
        .viewer(id, "viewer")
        .args(["--out", "/dev/null", "--seconds", "3"])
        .spawn()
        .expect("start viewer");
    let output = tokio::task::spawn_blocking(move || viewer.wait_with_output())
        .await
        .expect("join")
        .expect("viewer output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let status_line = stdout
        .lines()
        .find(|line| line.contains(r#""event":"camera_status""#))
        .unwrap_or_else(|| panic!("no camera_status line in:\n{stdout}"));
    assert!(
        status_line.contains(r#""reason":"source_login_refused""#)
            && status_line.contains(r#""state":"failing""#),
        "{status_line}"
    );
    assert!(log.lock().expect("log").unauthorized_describes >= 2);
    drop(camera);
    server.abort();
    deployment.network.shutdown().await;
}

/// A child process killed (and reaped) when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issuer, rendezvous and relay on loopback for the example camera and viewer binaries.
struct Deployment {
    network: sightwire_examples::local::LocalNetwork,
    dir: std::path::PathBuf,
    issuer_secret: std::path::PathBuf,
    rendezvous: String,
    rendezvous_key: String,
}

impl Deployment {
    async fn start(dir: &Path) -> Self {
        let network = sightwire_examples::local::LocalNetwork::start(&dir.join("registry.sqlite"))
            .await
            .expect("network");
        let issuer_secret = dir.join("issuer.secret");
        std::fs::write(&issuer_secret, hex::encode(network.issuer.seed())).expect("secret");
        Self {
            rendezvous: network.rendezvous_address().to_string(),
            rendezvous_key: hex::encode(network.rendezvous.public_key),
            network,
            dir: dir.to_path_buf(),
            issuer_secret,
        }
    }

    /// The camera binary as device `id` (password `pw`, certificate from the issuer),
    /// streaming `source`.
    fn camera(&self, id: &str, source: &str) -> KillOnDrop {
        self.camera_with(id, source, &[])
    }

    /// [`Deployment::camera`] with further arguments.
    fn camera_with(&self, id: &str, source: &str, more: &[&str]) -> KillOnDrop {
        KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_camera"))
                .args(["--rendezvous", &self.rendezvous])
                .args(["--rendezvous-key", &self.rendezvous_key])
                .args([
                    "--rendezvous-stream-port",
                    "0",
                    "--password",
                    "pw",
                    "--no-qr",
                ])
                .args([
                    "--bind",
                    "127.0.0.1:0",
                    "--device-id",
                    id,
                    "--source",
                    source,
                ])
                .arg("--issuer-secret")
                .arg(&self.issuer_secret)
                .arg("--state-dir")
                .arg(self.dir.join(format!("camera-{id}")))
                .args(more)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start camera"),
        )
    }

    /// The viewer binary watching `id`, its state in `state`, output piped; the caller
    /// adds its outputs.
    fn viewer(&self, id: &str, state: &str) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_viewer"));
        command
            .args(["--rendezvous", &self.rendezvous])
            .args(["--rendezvous-key", &self.rendezvous_key])
            .args(["--rendezvous-stream-port", "0", "--issuer-key"])
            .arg(hex::encode(self.network.issuer.public().to_bytes()))
            .args(["--device", id, "--password", "pw", "--bind", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(self.dir.join(state))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    }
}

/// How many of `clip`'s access units (4-byte start codes, the clip looping) `output` is,
/// one after the other from one of its keyframes; fails the test at the first byte that
/// differs. One jump is allowed in the first GOP, and only from a frame to the clip's
/// next keyframe after it: a viewer catching up from the camera's GOP cache (joining, or
/// switched to another stream) that the stream's next keyframe overtakes gets that
/// keyframe live and not the rest of the old GOP (spec/endpoint.md §4.1).
fn clip_units_in(clip: &Clip, output: &[u8], what: &str) -> usize {
    let units: Vec<Vec<u8>> = clip.units.iter().map(four_byte_start_codes).collect();
    let first = units
        .iter()
        .position(|unit| output.starts_with(unit))
        .unwrap_or_else(|| panic!("{what}: the output does not start with a frame of its clip"));
    assert!(
        clip.units[first].keyframe,
        "{what}: starts at frame {first}"
    );
    let (mut at, mut count, mut index, mut jumped) = (0, 0, first, false);
    while at < output.len() {
        if !output[at..].starts_with(&units[index]) && !jumped && count < units.len() {
            // The catch-up cut short: the next keyframe, live.
            jumped = true;
            index = (index..index + units.len())
                .map(|i| i % units.len())
                .find(|&i| clip.units[i].keyframe)
                .expect("the clip has keyframes");
        }
        let unit = &units[index];
        assert!(
            output[at..].starts_with(unit),
            "{what}: frame {count} (byte {at}) is not the clip's frame {index} but {:?}",
            units.iter().position(|u| output[at..].starts_with(u))
        );
        at += unit.len();
        count += 1;
        index = (index + 1) % units.len();
    }
    count
}

/// Waits for the viewer processes to exit; fails the test with a viewer's output if it
/// did not succeed.
async fn viewers_succeed<const N: usize>(
    viewers: [std::process::Child; N],
) -> [std::process::Output; N] {
    let outputs = tokio::task::spawn_blocking(move || {
        viewers.map(|v| v.wait_with_output().expect("viewer output"))
    })
    .await
    .expect("join");
    for output in &outputs {
        assert!(
            output.status.success(),
            "viewer: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    outputs
}

/// The `summary` line a viewer printed last.
fn viewer_summary(stdout: &[u8]) -> serde_json::Value {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .rfind(|value| value["event"] == "summary")
        .expect("a summary line")
}

/// Issue 15: a camera with a main and a sub stream (two RTSP paths, two clips of other
/// sizes) pulls both at once and offers both; one viewer watches `main` and one `sub` at
/// the same time. Each output is its own clip's access units, byte for byte, from a
/// keyframe on; the main viewer never gets a frame of sub, and the sub viewer's output
/// has none of main (what main frames reached it before its SELECT did are dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_viewers_watch_the_main_and_the_sub_stream_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(MainAndSub {
        clips,
        addr,
        log,
        server,
        ..
    }) = serve_main_and_sub(dir.path()).await
    else {
        return;
    };
    let url = |name: &str| format!("rtsp://{USER}:p%40ss%3Aword@{addr}/{name}");
    let deployment = Deployment::start(dir.path()).await;
    let id = "1C:C3:16:AB:CD:E9";
    let camera = deployment.camera_with(id, &url("main"), &["--sub-source", &url("sub")]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let viewer = |state: &str, stream: &str, out: &Path| {
        let mut command = deployment.viewer(id, state);
        command
            .args(["--seconds", "4", "--stream", stream, "--out"])
            .arg(out);
        command.spawn().expect("start viewer")
    };
    let (main_out, sub_out) = (dir.path().join("main.out"), dir.path().join("sub.out"));
    let main_viewer = viewer("viewer-main", "main", &main_out);
    let sub_viewer = viewer("viewer-sub", "sub", &sub_out);
    let outputs = viewers_succeed([main_viewer, sub_viewer]).await;
    drop(camera);
    server.abort();
    deployment.network.shutdown().await;
    let described = log.lock().expect("log").described.clone();
    assert!(
        described.contains(&"main".to_owned()) && described.contains(&"sub".to_owned()),
        "the camera pulls both streams: {described:?}"
    );
    let mut counts = Vec::new();
    for ((name, out), output) in [("main", &main_out), ("sub", &sub_out)]
        .iter()
        .zip(&outputs)
    {
        let bytes = std::fs::read(out).expect("viewer output");
        let summary = viewer_summary(&output.stdout);
        eprintln!("{name} viewer: {summary}");
        let frames = clip_units_in(&clips[*name], &bytes, name);
        assert_eq!(summary["frames"], frames, "{name}: {summary}");
        // 4 s at 30 fps, less what the connect and the first keyframe take.
        assert!(frames >= 90, "{name}: {frames} frames");
        counts.push((frames, summary["other_stream_frames"].clone()));
    }
    assert_eq!(counts[0].1, 0, "the main viewer got a frame of sub");
    eprintln!(
        "main and sub at once: the main viewer wrote {} main frames, the sub viewer {} sub \
         frames (and dropped {} of main sent before its choice arrived)",
        counts[0].0, counts[1].0, counts[1].1
    );
}

/// An H.265 + AAC camera's streams, as [`serve_hevc_aac`] offers them.
struct AvClip {
    /// H.265 access units, NAL units behind 4-byte start codes (parameter sets in band).
    video: Vec<Vec<u8>>,
    vps: Vec<u8>,
    sps: Vec<u8>,
    pps: Vec<u8>,
    /// The AAC AudioSpecificConfig and raw access units (1024 samples each), or with
    /// `Codec::G711A` no config and 20 ms of A-law samples per unit.
    asc: Vec<u8>,
    audio: Vec<Vec<u8>>,
    audio_codec: Codec,
}

impl AvClip {
    /// The same video with 20 ms A-law packets (a deterministic byte pattern) instead.
    fn with_g711(mut self) -> Self {
        self.asc.clear();
        self.audio = (0..100u32)
            .map(|p| {
                (0..G711_FRAME)
                    .map(|i| ((p * 7 + i * 13) % 251) as u8)
                    .collect()
            })
            .collect();
        self.audio_codec = Codec::G711A;
        self
    }

    /// Samples in one audio unit (its RTP timestamp step).
    fn audio_samples(&self) -> u32 {
        match self.audio_codec {
            Codec::Aac => 1024,
            _ => G711_FRAME,
        }
    }

    fn audio_rate(&self) -> u32 {
        match self.audio_codec {
            Codec::Aac => AAC_RATE,
            _ => 8_000,
        }
    }

    /// Capture time of audio unit `a`.
    fn audio_us(&self, a: usize) -> u64 {
        a as u64 * u64::from(self.audio_samples()) * 1_000_000 / u64::from(self.audio_rate())
    }
}

/// A-law samples per 20 ms packet.
const G711_FRAME: u32 = 160;

/// Video frame rate and AAC sample rate of [`AvClip`]s.
const AV_FPS: u32 = 25;
const AAC_RATE: u32 = 48_000;

fn make_av_clip(dir: &Path) -> AvClip {
    let video = clips::hevc_access_units(&clips::make_hevc(
        &dir.join("av.h265"),
        "320x240",
        u64::from(AV_FPS),
        2,
    ));
    let adts = clips::make_aac(&dir.join("av.aac"), 1, "1.9");
    let (asc, audio) = clips::adts_access_units(&adts);
    let parameter_set = |wanted: u8| {
        video
            .iter()
            .flat_map(|unit| nal_units(unit).map(<[u8]>::to_vec).collect::<Vec<_>>())
            .find(|nal| clips::hevc_nal_type(nal) == wanted)
            .expect("parameter set in the clip")
    };
    AvClip {
        vps: parameter_set(32),
        sps: parameter_set(33),
        pps: parameter_set(34),
        video,
        asc,
        audio,
        audio_codec: Codec::Aac,
    }
}

/// One RTSP session offering the clip's H.265 video (track 0, interleaved 0-1) and AAC
/// audio (track 1, interleaved 2-3, RFC 3640 `AAC-hbr`), sent `loops` times with
/// continuing timestamps, audio and video interleaved by time, in real time when `paced`;
/// then answers keepalives until the client leaves.
async fn serve_hevc_aac(listener: TcpListener, clip: Arc<AvClip>, loops: usize, paced: bool) {
    let (mut stream, _) = listener.accept().await.expect("accept");
    let addr = stream.local_addr().expect("addr");
    let base = format!("rtsp://{addr}/av/");
    loop {
        let Some((request_line, headers)) = read_request(&mut stream).await else {
            return;
        };
        let cseq = header(&headers, "cseq").unwrap_or("0").to_owned();
        let mut response = format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n");
        let mut body = String::new();
        let method = request_line.split(' ').next().unwrap_or("");
        match method {
            "OPTIONS" => response
                .push_str("Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER\r\n"),
            "DESCRIBE" => {
                let audio = match clip.audio_codec {
                    Codec::Aac => format!(
                        "m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/{AAC_RATE}/1\r\n\
                         a=fmtp:97 streamtype=5;profile-level-id=1;mode=AAC-hbr;sizelength=13;\
                         indexlength=3;indexdeltalength=3;config={}\r\n",
                        hex::encode(&clip.asc)
                    ),
                    _ => "m=audio 0 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n".to_owned(),
                };
                body = format!(
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=sightwire h265 audio\r\nt=0 0\r\n\
                     m=video 0 RTP/AVP 96\r\na=rtpmap:96 H265/{RTP_CLOCK_HZ}\r\n\
                     a=fmtp:96 sprop-vps={};sprop-sps={};sprop-pps={}\r\n\
                     a=control:trackID=0\r\n{audio}a=control:trackID=1\r\n",
                    BASE64.encode(&clip.vps),
                    BASE64.encode(&clip.sps),
                    BASE64.encode(&clip.pps),
                );
                response.push_str(&format!(
                    "Content-Base: {base}\r\nContent-Type: application/sdp\r\n"
                ));
            }
            "SETUP" => {
                let interleaved = header(&headers, "transport")
                    .and_then(|t| t.split(';').find(|p| p.starts_with("interleaved=")))
                    .unwrap_or("interleaved=0-1")
                    .to_owned();
                response.push_str(&format!(
                    "Transport: RTP/AVP/TCP;unicast;{interleaved}\r\nSession: {SESSION_ID};timeout=60\r\n"
                ));
            }
            "PLAY" => response.push_str(&format!(
                "Session: {SESSION_ID}\r\nRTP-Info: url={base}trackID=0;seq={FIRST_SEQ};rtptime={FIRST_RTPTIME},\
                 url={base}trackID=1;seq={FIRST_SEQ};rtptime={FIRST_RTPTIME}\r\n"
            )),
            _ => response.push_str(&format!("Session: {SESSION_ID}\r\n")),
        }
        if !body.is_empty() {
            response.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        response.push_str("\r\n");
        response.push_str(&body);
        stream.write_all(response.as_bytes()).await.expect("write");
        if method == "PLAY" {
            break;
        }
    }
    let mut out = Vec::new();
    let (mut video_seq, mut audio_seq) = (FIRST_SEQ, FIRST_SEQ);
    let (mut v, mut a) = (0usize, 0usize);
    let (videos, audios) = (clip.video.len() * loops, clip.audio.len() * loops);
    let start = tokio::time::Instant::now();
    while v < videos || a < audios {
        let video_us = v as u64 * 1_000_000 / u64::from(AV_FPS);
        let audio_us = clip.audio_us(a);
        if paced {
            tokio::time::sleep_until(start + Duration::from_micros(video_us.min(audio_us))).await;
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if a >= audios || (v < videos && video_us <= audio_us) {
            let timestamp = FIRST_RTPTIME.wrapping_add((v as u32) * (RTP_CLOCK_HZ / AV_FPS));
            let payloads: Vec<Vec<u8>> = nal_units(&clip.video[v % clip.video.len()])
                .flat_map(hevc_payloads)
                .collect();
            let last = payloads.len().saturating_sub(1);
            for (i, payload) in payloads.iter().enumerate() {
                rtp_packet(&mut out, 0, 96, i == last, video_seq, timestamp, payload);
                video_seq = video_seq.wrapping_add(1);
            }
            v += 1;
        } else {
            let timestamp = FIRST_RTPTIME.wrapping_add(a as u32 * clip.audio_samples());
            let unit = &clip.audio[a % clip.audio.len()];
            let (payload_type, payload) = match clip.audio_codec {
                Codec::Aac => {
                    // RFC 3640 AAC-hbr: 16 bits of AU headers, one header of size (13) and
                    // index (3).
                    let mut payload = vec![0x00, 0x10];
                    payload.extend_from_slice(&((unit.len() as u16) << 3).to_be_bytes());
                    payload.extend_from_slice(unit);
                    (97, payload)
                }
                _ => (8, unit.clone()),
            };
            rtp_packet(
                &mut out,
                2,
                payload_type,
                true,
                audio_seq,
                timestamp,
                &payload,
            );
            audio_seq = audio_seq.wrapping_add(1);
            a += 1;
        }
    }
    if stream.write_all(&out).await.is_err() {
        return;
    }
    while let Some((_, headers)) = read_request(&mut stream).await {
        let cseq = header(&headers, "cseq").unwrap_or("0").to_owned();
        let reply = format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nSession: {SESSION_ID}\r\n\r\n");
        if stream.write_all(reply.as_bytes()).await.is_err() {
            break;
        }
    }
}

/// [`serve_hevc_aac`] on a loopback port: its address and task.
async fn serve_av(
    clip: Arc<AvClip>,
    loops: usize,
    paced: bool,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (
        addr,
        tokio::spawn(serve_hevc_aac(listener, clip, loops, paced)),
    )
}

/// RTP payloads of one H.265 NAL unit (RFC 7798): the unit itself, or fragmentation units.
fn hevc_payloads(nal: &[u8]) -> Vec<Vec<u8>> {
    if nal.len() <= MAX_RTP_PAYLOAD {
        return vec![nal.to_vec()];
    }
    let nal_type = clips::hevc_nal_type(nal);
    let chunks: Vec<&[u8]> = nal[2..].chunks(MAX_RTP_PAYLOAD - 3).collect();
    let count = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut fu_header = nal_type;
            if i == 0 {
                fu_header |= 0x80;
            }
            if i + 1 == count {
                fu_header |= 0x40;
            }
            let mut payload = vec![(nal[0] & 0x81) | (49 << 1), nal[1], fu_header];
            payload.extend_from_slice(chunk);
            payload
        })
        .collect()
}

/// Appends one interleaved RTP packet (RFC 2326 §10.12) to `out`.
fn rtp_packet(
    out: &mut Vec<u8>,
    channel: u8,
    payload_type: u8,
    marker: bool,
    seq: u16,
    timestamp: u32,
    payload: &[u8],
) {
    out.push(b'$');
    out.push(channel);
    out.extend_from_slice(&((12 + payload.len()) as u16).to_be_bytes());
    out.extend_from_slice(&[0x80, if marker { 0x80 } else { 0 } | payload_type]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&(0x5157_4952u32 + u32::from(channel)).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Issue 15: an RTSP camera that streams H.265 with AAC (the default of most cameras sold
/// today) gave no frames. The source now takes both: every H.265 access unit and every AAC
/// access unit byte for byte, the AudioSpecificConfig first, with their capture times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_source_takes_h265_video_and_aac_audio_byte_for_byte() {
    if !clips::tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = Arc::new(make_av_clip(dir.path()));
    let (addr, server) = serve_av(clip.clone(), 1, false).await;
    let mut config = RtspConfig::from_url(&format!("rtsp://{addr}/av")).expect("config");
    config.stall_timeout = Duration::from_secs(2);
    let (mut frames, _status) = spawn_with_status(config);
    let (mut video, mut audio, mut configs) = (Vec::new(), Vec::new(), Vec::new());
    let collect = async {
        while video.len() < clip.video.len() || audio.len() < clip.audio.len() {
            let Some(frame) = frames.recv().await else {
                break;
            };
            match (frame.stream, frame.codec_config) {
                (StreamId::VIDEO, _) => video.push(frame),
                (StreamId::AUDIO, true) => configs.push(frame),
                (StreamId::AUDIO, false) => audio.push(frame),
                _ => panic!("unexpected stream {:?}", frame.stream),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), collect)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} video, {} audio frames in 20 s",
                video.len(),
                audio.len()
            )
        });
    drop(frames);
    server.abort();

    assert_eq!(video.len(), clip.video.len(), "every H.265 access unit");
    for (i, (frame, unit)) in video.iter().zip(&clip.video).enumerate() {
        assert_eq!(frame.codec, Codec::H265, "frame {i}");
        assert!(
            frame.data[..] == unit[..],
            "H.265 access unit {i} differs: NAL types {:?} vs {:?}",
            nal_units(&frame.data)
                .map(clips::hevc_nal_type)
                .collect::<Vec<_>>(),
            nal_units(unit)
                .map(clips::hevc_nal_type)
                .collect::<Vec<_>>()
        );
        let irap = nal_units(unit).any(|n| is_irap(clips::hevc_nal_type(n)));
        assert_eq!(frame.keyframe, irap, "keyframe flag of access unit {i}");
        let starts_with_vps = nal_units(unit).next().map(clips::hevc_nal_type) == Some(32);
        assert_eq!(
            frame.codec_config, starts_with_vps,
            "codec_config of access unit {i}"
        );
        assert_eq!(
            frame.capture_time_us,
            i as u64 * 1_000_000 / u64::from(AV_FPS)
        );
    }
    assert_eq!(audio.len(), clip.audio.len(), "every AAC access unit");
    for (i, (frame, unit)) in audio.iter().zip(&clip.audio).enumerate() {
        assert_eq!(frame.codec, Codec::Aac, "audio frame {i}");
        assert!(
            frame.data[..] == unit[..],
            "AAC access unit {i} differs: {} bytes {:02x?} vs {} bytes {:02x?}",
            frame.data.len(),
            &frame.data[..frame.data.len().min(12)],
            unit.len(),
            &unit[..unit.len().min(12)]
        );
        assert_eq!(
            frame.capture_time_us,
            i as u64 * 1024 * 1_000_000 / u64::from(AAC_RATE),
            "capture time of audio frame {i}"
        );
    }
    // The AudioSpecificConfig before the first access unit, and again every second.
    let first_config = configs.first().expect("the AudioSpecificConfig");
    assert_eq!(first_config.data[..], clip.asc[..]);
    assert_eq!(first_config.capture_time_us, 0);
    assert!(configs.len() >= 2, "{} configs in 1.9 s", configs.len());
}

/// Issue 15, end to end: an RTSP camera streaming H.265 with AAC, through the example
/// camera and viewer binaries on loopback. The viewer's MP4 has an `hvc1` video track and
/// an AAC audio track that ffmpeg decodes without an error, and its raw audio output is
/// the camera's AAC access units byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_and_aac_from_an_rtsp_camera_reach_the_viewers_mp4() {
    if !clips::tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = Arc::new(make_av_clip(dir.path()));
    // 4 loops of 2 s, in real time: the viewer joins while it plays.
    let (rtsp, server) = serve_av(clip.clone(), 4, true).await;
    let deployment = Deployment::start(dir.path()).await;
    let id = "1C:C3:16:AB:CD:E8";
    let camera = deployment.camera(id, &format!("rtsp://{rtsp}/av"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Two viewers at once: one writes an MP4 (video and audio tracks), the other the raw
    // video and audio outputs.
    let (mp4, h265, aac) = (
        dir.path().join("out.mp4"),
        dir.path().join("out.h265"),
        dir.path().join("out.aac"),
    );
    let viewer = |state: &str, outputs: Vec<&Path>| {
        let mut command = deployment.viewer(id, state);
        command.args(["--seconds", "4", "--out"]).arg(outputs[0]);
        if let Some(audio) = outputs.get(1) {
            command.arg("--audio-out").arg(audio);
        }
        command.spawn().expect("start viewer")
    };
    let mp4_viewer = viewer("viewer-mp4", vec![&mp4]);
    let raw_viewer = viewer("viewer-raw", vec![&h265, &aac]);
    viewers_succeed([mp4_viewer, raw_viewer]).await;
    drop(camera);
    server.abort();
    deployment.network.shutdown().await;

    // ffprobe sees both tracks, and ffmpeg decodes every frame of both without an error.
    let video = clips::probe_stream(
        &mp4,
        "v:0",
        "stream=codec_name,codec_tag_string,nb_read_frames",
    );
    assert_eq!(video["codec_name"], "hevc", "{video:?}");
    assert_eq!(video["codec_tag_string"], "hvc1", "{video:?}");
    let frames: u64 = video["nb_read_frames"].parse().expect("frames");
    assert!(frames >= 75, "{frames} video frames in 4 s at 25 fps");
    let audio = clips::probe_stream(&mp4, "a:0", "stream=codec_name,sample_rate");
    assert_eq!(
        audio.get("codec_name").map(String::as_str),
        Some("aac"),
        "{audio:?}"
    );
    assert_eq!(audio["sample_rate"], "48000", "{audio:?}");
    let decoded = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(&mp4)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        decoded.status.success() && decoded.stderr.is_empty(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&decoded.stderr)
    );
    // The raw video: the camera's H.265 access units, from a keyframe on, in order.
    let received_video = std::fs::read(&h265).expect("video output");
    let units = clips::hevc_access_units(&received_video);
    assert!(units.len() >= 75, "{} H.265 frames in 4 s", units.len());
    let first = clip
        .video
        .iter()
        .position(|u| *u == units[0])
        .expect("the first received H.265 frame is one of the clip's");
    assert!(
        nal_units(&units[0]).any(|n| is_irap(clips::hevc_nal_type(n))),
        "the video output starts with a keyframe"
    );
    for (i, unit) in units.iter().enumerate() {
        assert!(
            *unit == clip.video[(first + i) % clip.video.len()],
            "H.265 frame {i} differs from the clip's"
        );
    }
    // The raw audio: the camera's AAC access units, in order, from where the viewer joined.
    let received = std::fs::read(&aac).expect("audio output");
    let (asc, units) = clips::adts_access_units(&received);
    assert_eq!(asc, clip.asc, "AudioSpecificConfig");
    assert!(units.len() >= 150, "{} AAC frames in 4 s", units.len());
    let first = clip
        .audio
        .iter()
        .position(|u| *u == units[0])
        .expect("the first received AAC frame is one of the clip's");
    for (i, unit) in units.iter().enumerate() {
        assert!(
            *unit == clip.audio[(first + i) % clip.audio.len()],
            "AAC frame {i} differs from the clip's"
        );
    }
}

/// G.711 A-law from an RTSP camera (with H.265 video): every 20 ms packet arrives as one
/// `Codec::G711A` audio frame, byte for byte, with its capture time and no config frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_source_takes_g711_audio_byte_for_byte() {
    if !clips::tools_present() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = Arc::new(make_av_clip(dir.path()).with_g711());
    let (addr, server) = serve_av(clip.clone(), 1, false).await;
    let mut config = RtspConfig::from_url(&format!("rtsp://{addr}/av")).expect("config");
    config.stall_timeout = Duration::from_secs(2);
    let (mut frames, _status) = spawn_with_status(config);
    let mut audio = Vec::new();
    let mut video = 0;
    let collect = async {
        while video < clip.video.len() || audio.len() < clip.audio.len() {
            let Some(frame) = frames.recv().await else {
                break;
            };
            if frame.stream == StreamId::AUDIO {
                audio.push(frame);
            } else {
                video += 1;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), collect)
        .await
        .unwrap_or_else(|_| panic!("{} audio frames in 20 s", audio.len()));
    drop(frames);
    server.abort();
    assert_eq!(audio.len(), clip.audio.len(), "every A-law packet");
    for (i, (frame, unit)) in audio.iter().zip(&clip.audio).enumerate() {
        assert_eq!(frame.codec, Codec::G711A, "audio frame {i}");
        assert!(!frame.codec_config, "G.711 has no config frame");
        assert!(frame.data[..] == unit[..], "A-law packet {i} differs");
        assert_eq!(
            frame.capture_time_us,
            clip.audio_us(i),
            "capture time of packet {i}"
        );
    }
}
