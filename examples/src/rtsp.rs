//! An RTSP camera as a frame source: pulls H.264 from an IP camera with the `retina`
//! client (RTP interleaved on the RTSP TCP connection) and yields one [`Frame`] per
//! access unit.
//!
//! Each frame is Annex-B with 4-byte start codes; retina strips in-band SPS/PPS and
//! prepends the current pair to every keyframe (whether the camera sent them in-band or
//! only out of band in the SDP's `sprop-parameter-sets`), so every keyframe is a decoder
//! entry point and the viewer's file stays decodable. The keyframe flag is retina's
//! random-access-point flag and the capture time comes from the RTP timestamp.
//!
//! When the camera drops the session (or stops sending for [`RtspConfig::stall_timeout`])
//! the source reconnects after a delay that doubles from [`RtspConfig::min_backoff`] up to
//! [`RtspConfig::max_backoff`] and resets once a session delivers frames again. Capture
//! times keep increasing across reconnects.
//!
//! [`RtspSource`] pulls a camera's main stream and, given its sub stream, switches
//! between them on the target bitrate ([`crate::switch`]): it opens the other stream,
//! keeps forwarding the current one until the other delivers a keyframe carrying its
//! SPS/PPS, then forwards the other from that keyframe on and closes the first. The
//! viewer so always gets a decoder entry point (with the new picture size) at a switch.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use retina::client::{
    Credentials, PlayOptions, Session, SessionOptions, SetupOptions, TcpTransportOptions, Transport,
};
use retina::codec::{CodecItem, FrameFormat};
use sightwire::{Codec, Frame, StreamId};
use tokio::sync::{mpsc, watch};
use url::Url;

use crate::rate::RateMeter;
use crate::switch::{CameraStream, Splice, SwitchConfig, SwitchPolicy};

/// Default first reconnect delay.
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Default longest reconnect delay.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Default time without a frame after which a session counts as dead.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames buffered between the RTSP task and the camera loop; when full, the RTSP task
/// waits (TCP back-pressure to the camera) rather than dropping frames a decoder needs.
pub const FRAME_QUEUE_LEN: usize = 64;
/// Assumed frame interval when a session ends before two frames gave a real one; used to
/// place the next session's first frame after the last one.
const DEFAULT_FRAME_INTERVAL_US: u64 = 33_333;

/// Where and how to pull the camera's stream.
#[derive(Debug, Clone)]
pub struct RtspConfig {
    /// The stream URL, credentials removed (retina refuses URLs carrying them).
    pub url: Url,
    /// User name and password for the camera's Basic/Digest authentication.
    pub credentials: Option<Credentials>,
    /// First reconnect delay.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// A session that delivers no frame for this long is torn down and reconnected.
    pub stall_timeout: Duration,
}

/// Whether `source` names an RTSP stream (`rtsp://...`).
pub fn is_rtsp_url(source: &str) -> bool {
    source
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rtsp://"))
}

impl RtspConfig {
    /// Parses `rtsp://user:pass@host[:port]/path`, moving the credentials (percent-decoded)
    /// out of the URL, with the default reconnect timings.
    pub fn from_url(source: &str) -> anyhow::Result<Self> {
        let mut url = Url::parse(source).with_context(|| format!("bad RTSP URL {source}"))?;
        anyhow::ensure!(url.scheme() == "rtsp", "not an rtsp:// URL: {source}");
        anyhow::ensure!(url.host().is_some(), "RTSP URL has no host: {source}");
        let credentials = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let credentials = Credentials {
                username: percent_decode(url.username())?,
                password: percent_decode(url.password().unwrap_or(""))?,
            };
            url.set_username("")
                .and_then(|()| url.set_password(None))
                .map_err(|()| anyhow::anyhow!("cannot remove credentials from {source}"))?;
            Some(credentials)
        };
        Ok(Self {
            url,
            credentials,
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        })
    }
}

/// Decodes `%XX` escapes of a URL's user-info part.
fn percent_decode(text: &str) -> anyhow::Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .with_context(|| format!("bad percent escape in {text:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).context("credentials are not UTF-8")
}

/// Reconnect delays: doubling from a minimum to a maximum, reset after success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the minimum delay (a session worked).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Turns RTP timestamps of successive sessions into one monotonic microsecond clock.
#[derive(Debug, Clone, Default)]
pub struct CaptureClock {
    /// Added to the current session's elapsed time.
    offset_us: u64,
    last_us: Option<u64>,
    last_interval_us: u64,
}

impl CaptureClock {
    /// A new session begins: its first frame comes one frame interval after the last
    /// frame of the previous session.
    pub fn start_session(&mut self) {
        if let Some(last) = self.last_us {
            let interval = if self.last_interval_us == 0 {
                DEFAULT_FRAME_INTERVAL_US
            } else {
                self.last_interval_us
            };
            self.offset_us = last.saturating_add(interval);
        }
    }

    /// Capture time of a frame `elapsed` ticks of a `clock_rate_hz` clock after the
    /// session's first RTP timestamp; never less than the previous result.
    pub fn capture_time_us(&mut self, elapsed: i64, clock_rate_hz: u32) -> u64 {
        let ticks = u64::try_from(elapsed).unwrap_or(0);
        let session_us = u128::from(ticks) * 1_000_000 / u128::from(clock_rate_hz.max(1));
        let session_us = u64::try_from(session_us).unwrap_or(u64::MAX);
        let mut time = self.offset_us.saturating_add(session_us);
        if let Some(last) = self.last_us {
            time = time.max(last);
            if time > last {
                self.last_interval_us = time - last;
            }
        }
        self.last_us = Some(time);
        time
    }
}

/// Starts pulling `config.url` on the current tokio runtime; frames arrive on the
/// returned receiver. The task reconnects until the receiver is dropped.
pub fn spawn(config: RtspConfig) -> mpsc::Receiver<Frame> {
    spawn_with_status(config).0
}

/// Like [`spawn`], and also reports the source's [`SourceStatus`] (for the application to
/// log and to tell viewers why there are no frames).
pub fn spawn_with_status(
    config: RtspConfig,
) -> (mpsc::Receiver<Frame>, watch::Receiver<SourceStatus>) {
    let (status_tx, status_rx) = watch::channel(SourceStatus::Connecting);
    (spawn_reporting(config, status_tx), status_rx)
}

/// Like [`spawn`], reporting into `status` (which may outlive the task: a source that
/// restarts its session task keeps one status for its application).
pub fn spawn_reporting(
    config: RtspConfig,
    status: watch::Sender<SourceStatus>,
) -> mpsc::Receiver<Frame> {
    let (tx, rx) = mpsc::channel(FRAME_QUEUE_LEN);
    tokio::spawn(run_reporting(config, tx, status));
    rx
}

/// What an RTSP source loop says about its camera.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SourceStatus {
    /// Connecting, before the first frame of the first session.
    Connecting,
    /// Frames flow.
    Streaming,
    /// The last `attempts` sessions in a row failed or ended without a frame, the last
    /// one for `reason`; the loop tries again after its backoff.
    Failing {
        /// Why the last one failed.
        reason: SourceFailure,
        /// Sessions in a row without a frame.
        attempts: u32,
    },
}

/// Why an RTSP session gave no frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceFailure {
    /// The camera refused the login (401 after the credentials were sent, or none given).
    #[error("the camera refused the login")]
    LoginRefused,
    /// The camera offers no video stream this source can take (H.264).
    #[error("the camera offers no H.264 or H.265 video stream")]
    NoSupportedVideo,
    /// The session ended (the camera closed it) without a frame.
    #[error("the camera ended the session")]
    Ended,
    /// Anything else: unreachable, timed out, a protocol error (the message says which).
    #[error("{0}")]
    Other(String),
}

impl SourceFailure {
    fn of(error: &anyhow::Error) -> Self {
        let refused = error.chain().any(|cause| {
            cause
                .downcast_ref::<retina::Error>()
                .and_then(retina::Error::status_code)
                == Some(401)
        });
        if refused {
            return Self::LoginRefused;
        }
        match error.downcast_ref::<SourceFailure>() {
            Some(failure) => failure.clone(),
            None => Self::Other(format!("{error:#}")),
        }
    }
}

/// Pulls frames into `frames`, reconnecting with backoff, until `frames` is closed.
pub async fn run(config: RtspConfig, frames: mpsc::Sender<Frame>) {
    run_reporting(config, frames, watch::channel(SourceStatus::Connecting).0).await;
}

/// [`run`], reporting the source's status on `status`.
pub async fn run_reporting(
    config: RtspConfig,
    frames: mpsc::Sender<Frame>,
    status: watch::Sender<SourceStatus>,
) {
    let mut backoff = Backoff::new(config.min_backoff, config.max_backoff);
    let mut clock = CaptureClock::default();
    let mut attempts = 0u32;
    loop {
        let mut delivered = 0u64;
        let result = stream_session(&config, &mut clock, &frames, &mut delivered, &status).await;
        if frames.is_closed() {
            return;
        }
        if delivered > 0 {
            backoff.reset();
            attempts = 0;
        }
        let delay = backoff.next_delay();
        match &result {
            Ok(()) => tracing::warn!(
                url = %config.url, frames = delivered, ?delay,
                "RTSP session ended; reconnecting"
            ),
            Err(error) => tracing::warn!(
                url = %config.url, frames = delivered, ?delay,
                "RTSP session failed: {error:#}; reconnecting"
            ),
        }
        if delivered == 0 {
            attempts = attempts.saturating_add(1);
            let reason =
                result.map_or_else(|error| SourceFailure::of(&error), |()| SourceFailure::Ended);
            if matches!(
                reason,
                SourceFailure::LoginRefused | SourceFailure::NoSupportedVideo
            ) {
                // Retrying does not fix these: say so loudly, not only as a reconnect.
                tracing::error!(url = %config.url, attempts, "RTSP source: {reason}");
            }
            status.send_replace(SourceStatus::Failing { reason, attempts });
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = frames.closed() => return,
        }
    }
}

/// One RTSP session: DESCRIBE, SETUP the first H.264 or H.265 video stream and the first
/// AAC or G.711 audio stream (if the camera offers one), PLAY, forward frames. Returns when
/// the camera ends the session, the stream stalls, or `frames` closes.
async fn stream_session(
    config: &RtspConfig,
    clock: &mut CaptureClock,
    frames: &mpsc::Sender<Frame>,
    delivered: &mut u64,
    status: &watch::Sender<SourceStatus>,
) -> anyhow::Result<()> {
    let options = SessionOptions::default()
        .creds(config.credentials.clone())
        .user_agent(format!("sightwire-camera/{}", env!("CARGO_PKG_VERSION")));
    let mut session = tokio::time::timeout(
        config.stall_timeout,
        Session::describe(config.url.clone(), options),
    )
    .await
    .context("DESCRIBE timed out")??;
    let (video, video_codec) = session
        .streams()
        .iter()
        .enumerate()
        .find_map(|(i, s)| {
            (s.media() == "video")
                .then(|| video_codec(s.encoding_name()))?
                .map(|c| (i, c))
        })
        .ok_or(SourceFailure::NoSupportedVideo)?;
    let audio = session.streams().iter().enumerate().find_map(|(i, s)| {
        (s.media() == "audio")
            .then(|| audio_codec(s.encoding_name()))?
            .map(|c| (i, c))
    });
    let setup = || {
        SetupOptions::default()
            .transport(Transport::Tcp(TcpTransportOptions::default()))
            .frame_format(FrameFormat::SIMPLE)
    };
    tokio::time::timeout(config.stall_timeout, session.setup(video, setup()))
        .await
        .context("SETUP timed out")??;
    // Audio is optional: a camera whose audio cannot be set up still gives its video.
    let audio = match audio {
        Some((index, codec)) => {
            match tokio::time::timeout(config.stall_timeout, session.setup(index, setup())).await {
                Ok(Ok(())) => Some((index, codec)),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "the camera's audio stream could not be set up");
                    None
                }
                Err(_) => anyhow::bail!("SETUP of the audio stream timed out"),
            }
        }
        None => None,
    };
    let playing = tokio::time::timeout(config.stall_timeout, session.play(PlayOptions::default()))
        .await
        .context("PLAY timed out")??;
    let mut demuxed = playing.demuxed()?;
    clock.start_session();
    // Audio capture times share the session's origin with the video's.
    let mut audio_clock = CaptureClock {
        offset_us: clock.offset_us,
        ..CaptureClock::default()
    };
    let mut audio_config_sent: Option<u64> = None;
    let mut hevc_sets = HevcParameterSets::default();
    loop {
        let item = tokio::select! {
            item = tokio::time::timeout(config.stall_timeout, demuxed.next()) => item
                .map_err(|_| anyhow::anyhow!("no data for {:?}", config.stall_timeout))?,
            () = frames.closed() => return Ok(()),
        };
        let Some(item) = item else {
            return Ok(());
        };
        let video_frame = match item? {
            CodecItem::VideoFrame(video_frame) => video_frame,
            CodecItem::AudioFrame(audio_frame) => {
                let Some((_, codec)) = audio.filter(|(i, _)| *i == audio_frame.stream_id()) else {
                    continue;
                };
                let timestamp = audio_frame.timestamp();
                let capture_time_us =
                    audio_clock.capture_time_us(timestamp.elapsed(), timestamp.clock_rate().get());
                // retina writes AAC as ADTS (FrameFormat::SIMPLE); frames carry the raw
                // access unit, and the AudioSpecificConfig (from the ADTS header) travels
                // on its own: before the first access unit and again every
                // AUDIO_CONFIG_EVERY, so that a viewer joining later can decode.
                let data = match codec {
                    Codec::Aac => {
                        let Some(Ok(adts)) = crate::audio::adts_frames(audio_frame.data()).next()
                        else {
                            continue;
                        };
                        let config_due = audio_config_sent.is_none_or(|at| {
                            capture_time_us.saturating_sub(at)
                                >= AUDIO_CONFIG_EVERY.as_micros() as u64
                        });
                        if config_due {
                            audio_config_sent = Some(capture_time_us);
                            let config =
                                Bytes::copy_from_slice(&adts.config.audio_specific_config());
                            let frame = audio_frame_of(codec, true, capture_time_us, config);
                            if frames.send(frame).await.is_err() {
                                return Ok(());
                            }
                        }
                        Bytes::copy_from_slice(adts.access_unit)
                    }
                    _ => Bytes::copy_from_slice(audio_frame.data()),
                };
                if frames
                    .send(audio_frame_of(codec, false, capture_time_us, data))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                continue;
            }
            _ => continue,
        };
        let timestamp = video_frame.timestamp();
        let capture_time_us =
            clock.capture_time_us(timestamp.elapsed(), timestamp.clock_rate().get());
        let mut keyframe = video_frame.is_random_access_point();
        let mut data = Bytes::from(video_frame.into_data());
        if video_codec == Codec::H265 {
            (data, keyframe) = hevc_sets.complete(data, keyframe);
        }
        // With FrameFormat::SIMPLE the parameter sets, when known, lead a keyframe: an
        // SPS (H.264) or a VPS (H.265) right after the first start code.
        let codec_config = data.get(4).is_some_and(|&header| match video_codec {
            Codec::H265 => crate::hevc::nal_unit_type(&[header]) == crate::hevc::nal_type::VPS,
            _ => header & 0x1F == 7,
        });
        let frame = Frame::new(StreamId::VIDEO, video_codec, capture_time_us, data)
            .with_keyframe(keyframe)
            .with_codec_config(codec_config);
        if frames.send(frame).await.is_err() {
            return Ok(());
        }
        *delivered += 1;
        if *delivered == 1 {
            status.send_replace(SourceStatus::Streaming);
        }
    }
}

/// The last H.265 parameter sets of a stream, put back in front of keyframes that come
/// without them: retina passes in-band VPS/SPS/PPS on only when they change, and a viewer
/// that joins at a later keyframe (or the device's GOP cache) needs them there.
#[derive(Debug, Default)]
struct HevcParameterSets {
    vps: Option<Bytes>,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
}

impl HevcParameterSets {
    /// `access_unit` (Annex B) and whether it is a keyframe (`keyframe` from retina, or
    /// any IRAP picture: retina flags only some), with the known parameter sets in front
    /// if it is a keyframe that lacks them; remembers the ones it carries. One pass over
    /// the NAL units.
    fn complete(&mut self, access_unit: Bytes, keyframe: bool) -> (Bytes, bool) {
        use crate::hevc::{is_irap, nal_type, nal_unit_type};
        let (mut has_vps, mut irap) = (false, false);
        for nal in crate::mp4::nal_units(&access_unit) {
            let kind = nal_unit_type(nal);
            irap |= is_irap(kind);
            let slot = match kind {
                nal_type::VPS => {
                    has_vps = true;
                    &mut self.vps
                }
                nal_type::SPS => &mut self.sps,
                nal_type::PPS => &mut self.pps,
                _ => continue,
            };
            // A copy: a slice would keep the whole keyframe alive until the next one.
            if slot.as_deref() != Some(nal) {
                *slot = Some(Bytes::copy_from_slice(nal));
            }
        }
        let keyframe = keyframe || irap;
        let (true, false, Some(vps), Some(sps), Some(pps)) =
            (keyframe, has_vps, &self.vps, &self.sps, &self.pps)
        else {
            return (access_unit, keyframe);
        };
        let mut out =
            Vec::with_capacity(access_unit.len() + vps.len() + sps.len() + pps.len() + 12);
        for set in [vps, sps, pps] {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(set);
        }
        out.extend_from_slice(&access_unit);
        (Bytes::from(out), keyframe)
    }
}

/// An AAC stream's AudioSpecificConfig is sent again this often (by capture time).
pub const AUDIO_CONFIG_EVERY: Duration = Duration::from_secs(1);

/// The video codec of an SDP encoding name this source takes.
fn video_codec(encoding_name: &str) -> Option<Codec> {
    match encoding_name {
        "h264" => Some(Codec::H264),
        "h265" => Some(Codec::H265),
        _ => None,
    }
}

/// The audio codec of an SDP encoding name this source takes.
fn audio_codec(encoding_name: &str) -> Option<Codec> {
    match encoding_name {
        "mpeg4-generic" => Some(Codec::Aac),
        "pcma" => Some(Codec::G711A),
        "pcmu" => Some(Codec::G711Mu),
        _ => None,
    }
}

fn audio_frame_of(codec: Codec, codec_config: bool, capture_time_us: u64, data: Bytes) -> Frame {
    Frame::new(StreamId::AUDIO, codec, capture_time_us, data)
        .with_keyframe(true)
        .with_codec_config(codec_config)
}

/// An RTSP camera's main stream and, optionally, its sub stream, switched on the target
/// bitrate; see the module docs. Without a sub stream it forwards the main stream as
/// [`spawn`] does.
#[derive(Debug)]
pub struct RtspSource {
    main: RtspConfig,
    sub: Option<RtspConfig>,
    main_frames: Option<mpsc::Receiver<Frame>>,
    /// What the main stream's tasks say about the camera (it is what viewers get).
    main_status: watch::Sender<SourceStatus>,
    sub_frames: Option<mpsc::Receiver<Frame>>,
    /// The stream being forwarded.
    active: CameraStream,
    /// The stream being switched to at its next keyframe with SPS/PPS.
    pending: Option<CameraStream>,
    policy: SwitchPolicy,
    /// The main stream's bitrate, from its capture times.
    main_rate: RateMeter,
    splice: Splice,
    target_bps: Option<u64>,
    switches: u64,
}

impl RtspSource {
    /// Starts pulling `main` on the current tokio runtime; `sub`, when given, is pulled
    /// only while switching to it or using it.
    pub fn new(main: RtspConfig, sub: Option<RtspConfig>, config: SwitchConfig) -> Self {
        let main_status = watch::channel(SourceStatus::Connecting).0;
        let main_frames = spawn_reporting(main.clone(), main_status.clone());
        Self {
            main,
            sub,
            main_frames: Some(main_frames),
            main_status,
            sub_frames: None,
            active: CameraStream::Main,
            pending: None,
            policy: SwitchPolicy::new(config),
            main_rate: RateMeter::new(config.measure_window),
            splice: Splice::default(),
            target_bps: None,
            switches: 0,
        }
    }

    /// The stream being forwarded.
    pub fn active(&self) -> CameraStream {
        self.active
    }

    /// The stream being switched to, if any.
    pub fn pending(&self) -> Option<CameraStream> {
        self.pending
    }

    /// The main stream's bitrate, last measured over the switch's window.
    pub fn main_bps(&self) -> Option<u64> {
        self.main_rate.bps().or(self.policy.main_bps())
    }

    /// Completed switches so far.
    pub fn switches(&self) -> u64 {
        self.switches
    }

    /// The camera's status as the main stream's task last reported it.
    pub fn status(&self) -> SourceStatus {
        self.main_status.borrow().clone()
    }

    /// The camera's status and its changes, across restarts of the main stream's task.
    pub fn subscribe_status(&self) -> watch::Receiver<SourceStatus> {
        self.main_status.subscribe()
    }

    /// A new target (`None`: no viewer reports one).
    pub fn set_target(&mut self, target_bps: Option<u64>) {
        self.target_bps = target_bps;
        self.evaluate(std::time::Instant::now());
    }

    /// The next frame to send, capture times continuing across switches; `None` only if
    /// the forwarded stream's task ended. Cancel-safe.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let (stream, frame) = tokio::select! {
                frame = recv(&mut self.main_frames) => (CameraStream::Main, frame),
                frame = recv(&mut self.sub_frames) => (CameraStream::Sub, frame),
            };
            let Some(mut frame) = frame else {
                self.close(stream);
                if stream == self.active {
                    return None;
                }
                self.pending = None;
                continue;
            };
            if stream == CameraStream::Main {
                self.main_rate.push(frame.capture_time_us, frame.data.len());
            }
            self.evaluate(std::time::Instant::now());
            let video = frame.stream == StreamId::VIDEO;
            if Some(stream) == self.pending && video && frame.keyframe && frame.codec_config {
                let from = self.active;
                self.close(from);
                self.active = stream;
                self.pending = None;
                self.switches += 1;
                self.splice.start_segment();
                tracing::info!(
                    from = from.name(),
                    to = stream.name(),
                    target_bps = self.target_bps,
                    main_bps = self.main_bps(),
                    switches = self.switches,
                    "camera stream switched at a keyframe with SPS/PPS"
                );
            }
            if stream == self.active {
                frame.capture_time_us = if video {
                    self.splice.map(frame.capture_time_us)
                } else {
                    self.splice.shift(frame.capture_time_us)
                };
                return Some(frame);
            }
            // The stream being switched to, before its first keyframe: not decodable yet.
        }
    }

    /// Follows the policy: opens the stream it wants (switching at that stream's next
    /// keyframe), or gives up a pending switch it no longer wants.
    fn evaluate(&mut self, now: std::time::Instant) {
        if self.sub.is_none() {
            return;
        }
        let wanted = self
            .policy
            .update(now, self.target_bps, self.main_rate.bps());
        if wanted == self.active {
            if let Some(pending) = self.pending.take() {
                self.close(pending);
                tracing::info!(
                    stream = pending.name(),
                    target_bps = self.target_bps,
                    main_bps = self.main_bps(),
                    "camera stream switch cancelled"
                );
            }
        } else if self.pending != Some(wanted) {
            self.open(wanted);
            self.pending = Some(wanted);
            tracing::info!(
                from = self.active.name(),
                to = wanted.name(),
                target_bps = self.target_bps,
                main_bps = self.main_bps(),
                "switching camera stream at its next keyframe"
            );
        }
    }

    fn open(&mut self, stream: CameraStream) {
        match stream {
            CameraStream::Main => {
                // A new session's capture times start again.
                self.main_rate.reset();
                self.main_frames =
                    Some(spawn_reporting(self.main.clone(), self.main_status.clone()));
            }
            CameraStream::Sub => {
                self.sub_frames = self.sub.clone().map(spawn);
            }
        }
    }

    /// Drops the stream's receiver, which ends its RTSP task and session.
    fn close(&mut self, stream: CameraStream) {
        match stream {
            CameraStream::Main => self.main_frames = None,
            CameraStream::Sub => self.sub_frames = None,
        }
    }
}

/// The next frame from `frames` (`None` when its task ended); never resolves without a
/// receiver.
async fn recv(frames: &mut Option<mpsc::Receiver<Frame>>) -> Option<Frame> {
    match frames {
        Some(frames) => frames.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_credentials_out_of_the_url() {
        let config = RtspConfig::from_url("rtsp://admin:p%40ss%3Aw@192.0.2.7:554/Streaming/101")
            .expect("valid");
        assert_eq!(config.url.as_str(), "rtsp://192.0.2.7:554/Streaming/101");
        let credentials = config.credentials.expect("credentials");
        assert_eq!(credentials.username, "admin");
        assert_eq!(credentials.password, "p@ss:w");
        let anonymous = RtspConfig::from_url("rtsp://cam.local/live").expect("valid");
        assert!(anonymous.credentials.is_none());
        assert!(RtspConfig::from_url("http://cam.local/live").is_err());
        assert!(RtspConfig::from_url("rtsp://u:%zz@cam/live").is_err());
        assert!(is_rtsp_url("RTSP://cam/x") && !is_rtsp_url("clip.h264") && !is_rtsp_url("rt"));
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn capture_clock_is_monotonic_across_sessions() {
        let mut clock = CaptureClock::default();
        clock.start_session();
        assert_eq!(clock.capture_time_us(0, 90_000), 0);
        assert_eq!(clock.capture_time_us(3_000, 90_000), 33_333);
        assert_eq!(clock.capture_time_us(6_000, 90_000), 66_666);
        // A timestamp that goes backwards does not move the clock back.
        assert_eq!(clock.capture_time_us(-90_000, 90_000), 66_666);
        // The next session starts one interval after the last frame.
        clock.start_session();
        assert_eq!(clock.capture_time_us(0, 90_000), 99_999);
        assert_eq!(clock.capture_time_us(9_000, 90_000), 199_999);
        // No overflow on absurd input.
        assert_eq!(clock.capture_time_us(i64::MAX, 1), u64::MAX);
        assert_eq!(clock.capture_time_us(5, 0), u64::MAX);
    }
}
