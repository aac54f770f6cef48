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

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sightwire_examples::annexb::{AccessUnit, access_units};
use sightwire_examples::mp4::nal_units;
use sightwire_examples::rtsp::{RtspConfig, spawn};
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

/// Returns `None` (after saying so loudly) when ffmpeg is missing outside CI.
fn make_clip(path: &Path) -> Option<Vec<u8>> {
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size=640x360:rate={FPS}"))
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
}

#[derive(Default)]
struct ServerLog {
    connections: usize,
    unauthorized_describes: usize,
    authorized_describes: usize,
}

struct Clip {
    units: Vec<AccessUnit>,
    sps: Vec<u8>,
    pps: Vec<u8>,
}

async fn serve(
    listener: TcpListener,
    clip: Arc<Clip>,
    plans: Vec<SessionPlan>,
    log: Arc<Mutex<ServerLog>>,
) {
    for plan in plans {
        let (stream, _) = listener.accept().await.expect("accept");
        log.lock().expect("log").connections += 1;
        let clip = clip.clone();
        let log = log.clone();
        // Wait for this connection to end before accepting the next, like a camera
        // with a single session slot.
        serve_connection(stream, &clip, plan, &log).await;
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
    clip: &Clip,
    plan: SessionPlan,
    log: &Mutex<ServerLog>,
) {
    let base = format!("rtsp://{}/clip/", stream.local_addr().expect("addr"));
    let expected_auth = format!("Basic {}", BASE64.encode(format!("{USER}:{PASSWORD}")));
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
                log.lock().expect("log").authorized_describes += 1;
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
    send_clip(&mut stream, clip, plan.parameter_sets_in_band).await;
    if plan.drop_after_clip {
        return; // dropping the stream closes the connection
    }
    // Keep answering (keepalives, TEARDOWN) until the client goes away.
    while let Some((_, headers)) = read_request(&mut stream).await {
        let cseq = header(&headers, "cseq").unwrap_or("0").to_owned();
        let reply = format!("RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\nSession: {SESSION_ID}\r\n\r\n");
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Sends every access unit as RTP on interleaved channel 0: one packet per small NAL
/// unit, FU-A fragments for large ones, the marker bit on the last packet of a unit.
async fn send_clip(stream: &mut TcpStream, clip: &Clip, parameter_sets_in_band: bool) {
    let mut seq = FIRST_SEQ;
    let mut out = Vec::new();
    for (index, unit) in clip.units.iter().enumerate() {
        let timestamp = FIRST_RTPTIME.wrapping_add(index as u32 * TICKS_PER_FRAME);
        let nals: Vec<&[u8]> = nal_units(&unit.data)
            .filter(|nal| parameter_sets_in_band || !matches!(nal_type(nal), 7 | 8))
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
    }
    // A failed write means the client left; the test's assertions will say what broke.
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtsp_source_yields_the_clips_access_units_and_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(stream) = make_clip(&dir.path().join("clip.h264")) else {
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
        SessionPlan {
            parameter_sets_in_band: true,
            drop_after_clip: true,
        },
        SessionPlan {
            parameter_sets_in_band: false,
            drop_after_clip: false,
        },
        SessionPlan {
            parameter_sets_in_band: true,
            drop_after_clip: false,
        },
    ];
    let server = tokio::spawn(serve(listener, clip.clone(), plans, log.clone()));

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
