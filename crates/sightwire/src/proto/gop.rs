//! The device's GOP cache and each viewer's place in it (`spec/endpoint.md` §4.1).
//!
//! For every stream whose codec has inter-frame dependencies (H.264, H.265) the device
//! keeps the newest keyframe and the reference frames after it, within
//! [`GopCacheConfig`]'s limits. A viewer that joins mid-GOP is handed that chain first,
//! from the keyframe on, so it decodes a picture at once instead of waiting up to a GOP
//! for the encoder's next keyframe; it then follows the live stream from where the chain
//! ends.
//!
//! Each viewer has a [`Cursor`] per stream: the GOP it follows and how many of that GOP's
//! reference frames it has been given, always from the keyframe on and in order. A frame
//! goes to a viewer only when the viewer has every frame the frame may refer to, so a
//! viewer is never handed a P-frame without its references, never the same frame twice,
//! and never a live frame ahead of the chain it is still catching up on. Frames nothing
//! refers to (`Frame::is_discardable`) are not cached: a viewer catching up skips them.

use std::time::{Duration, Instant};

use sightwire_media::{
    Frame, KEYFRAME_DEADLINE_FACTOR, MAX_STREAMS, PacketizedFrame, StreamId, StreamSet,
};

use crate::config::GopCacheConfig;

/// What a frame is to the GOP cache, decided when the device hands it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// A codec without inter-frame dependencies (audio, MJPEG, metadata): every viewer
    /// can decode it, the cache does not follow it.
    Untracked,
    /// A keyframe: it starts GOP `gop`.
    Keyframe { gop: u64 },
    /// A frame later frames may refer to, reference number `index` of GOP `gop` (the
    /// keyframe is number 0).
    Reference { gop: u64, index: u64 },
    /// A frame nothing refers to; it decodes for a viewer that has the first `after`
    /// reference frames of GOP `gop`.
    Leaf { gop: u64, after: u64 },
    /// A non-key frame on a stream that has had no keyframe since it started (or since a
    /// codec without inter-frame dependencies interrupted it): nobody can decode it.
    Orphan,
}

/// A cached frame and when the application handed it in.
#[derive(Debug)]
struct Cached {
    frame: PacketizedFrame,
    at: Instant,
}

/// The cache of one stream.
#[derive(Debug, Default)]
struct StreamGop {
    /// The current GOP's number; every keyframe (and every interruption) starts a new one.
    gop: u64,
    /// The current GOP began with a keyframe (a viewer can decode it).
    keyed: bool,
    /// The keyframe and the reference frames after it, in order, while `intact`.
    frames: Vec<Cached>,
    /// Payload bytes in `frames`.
    bytes: usize,
    /// Reference frames of the current GOP so far, cached or not (the keyframe counts).
    chain_len: u64,
    /// `frames` holds the whole chain. False once a limit was reached: the cache stops
    /// (and frees what it held) until the next keyframe rather than keep a chain with a
    /// hole in it.
    intact: bool,
}

/// Frames and bytes the cache holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GopCacheUsage {
    /// Frames held, all streams together.
    pub frames: usize,
    /// Payload bytes held, all streams together.
    pub bytes: usize,
}

/// The device's GOP cache: one [`StreamGop`] per stream id.
#[derive(Debug)]
pub(crate) struct GopCache {
    limits: GopCacheConfig,
    streams: [StreamGop; MAX_STREAMS],
    /// GOPs that outgrew a limit (the cache stopped until their next keyframe).
    pub(crate) overflows: u64,
}

impl GopCache {
    pub(crate) fn new(limits: GopCacheConfig) -> Self {
        Self {
            limits,
            streams: Default::default(),
            overflows: 0,
        }
    }

    /// Takes in a frame the device sends to all its viewers and says what it is.
    pub(crate) fn push(&mut self, now: Instant, frame: &PacketizedFrame) -> Placement {
        let media = frame.frame();
        let Some(stream) = self.streams.get_mut(usize::from(media.stream.get())) else {
            return Placement::Untracked;
        };
        if !media.codec.has_interframe_dependency() {
            // Another codec interrupted the GOP.
            stream.interrupt();
            return Placement::Untracked;
        }
        if media.keyframe {
            stream.gop += 1;
            stream.keyed = true;
            stream.chain_len = 1;
            stream.clear();
            stream.intact = self.limits.max_frames > 0 && self.limits.max_bytes > 0;
            if !stream.cache(now, frame, self.limits) {
                self.overflows += 1;
            }
            return Placement::Keyframe { gop: stream.gop };
        }
        if !stream.keyed {
            return Placement::Orphan;
        }
        if media.is_discardable() {
            return Placement::Leaf {
                gop: stream.gop,
                after: stream.chain_len,
            };
        }
        let index = stream.chain_len;
        stream.chain_len += 1;
        if !stream.cache(now, frame, self.limits) {
            self.overflows += 1;
        }
        Placement::Reference {
            gop: stream.gop,
            index,
        }
    }

    /// A frame of `frame.stream` the device handed in could not be sent to anyone (it
    /// could not be packetized): if later frames may refer to it, the stream's GOP ends
    /// there and its next non-key frames are orphans, sent to nobody, until a keyframe.
    pub(crate) fn not_sent(&mut self, frame: &Frame) {
        let breaks_chain =
            frame.codec.has_interframe_dependency() && (frame.keyframe || !frame.is_discardable());
        if let Some(stream) = self.streams.get_mut(usize::from(frame.stream.get()))
            && breaks_chain
        {
            stream.interrupt();
        }
    }

    /// What the cache holds now.
    pub(crate) fn usage(&self) -> GopCacheUsage {
        self.streams
            .iter()
            .fold(GopCacheUsage::default(), |usage, stream| GopCacheUsage {
                frames: usage.frames + stream.frames.len(),
                bytes: usage.bytes + stream.bytes,
            })
    }

    fn stream(&self, stream: StreamId) -> Option<&StreamGop> {
        self.streams.get(usize::from(stream.get()))
    }
}

impl StreamGop {
    /// Ends the current GOP: what follows (until a keyframe) is nobody's to decode.
    fn interrupt(&mut self) {
        if self.keyed || self.chain_len > 0 {
            self.gop += 1;
            self.keyed = false;
            self.chain_len = 0;
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
        self.intact = false;
    }

    /// Caches `frame` at the end of the chain if the chain is intact and the limits
    /// allow; a frame that does not fit ends caching for this GOP. Returns false when this
    /// frame made the GOP overflow.
    fn cache(&mut self, now: Instant, frame: &PacketizedFrame, limits: GopCacheConfig) -> bool {
        if !self.intact {
            return true;
        }
        let size = frame.frame().data.len();
        if self.frames.len() >= limits.max_frames || self.bytes + size > limits.max_bytes {
            self.clear();
            return false;
        }
        self.bytes += size;
        self.frames.push(Cached {
            frame: frame.clone(),
            at: now,
        });
        true
    }
}

/// Where one viewer is on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// It has been given the first `next` reference frames of GOP `gop`, from its
    /// keyframe on and in order. `lag_floor` is set while it catches up from the cache:
    /// the least time any frame of this catch-up waited between the application handing
    /// it in and the device handing it over.
    InChain {
        gop: u64,
        next: u64,
        lag_floor: Option<Duration>,
    },
    /// It needs a keyframe. `last_gop`: the newest GOP it was given frames of, if any.
    /// `media_asks`: its media layer broke the chain (a frame refused or dropped,
    /// `spec/media.md` 4.7) and asks the application for the keyframe itself once the
    /// path has room; otherwise the endpoint asks.
    Waiting {
        last_gop: Option<u64>,
        media_asks: bool,
    },
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor::Waiting {
            last_gop: None,
            media_asks: false,
        }
    }
}

impl Cursor {
    /// `Some((last_gop, media_asks))` when the viewer needs a keyframe on a stream now
    /// in GOP `current`: it waits for one, or follows a GOP the stream has left without a
    /// keyframe (another codec interrupted it).
    fn waiting(&self, current: u64) -> Option<(Option<u64>, bool)> {
        match *self {
            Cursor::InChain { gop, .. } if gop == current => None,
            Cursor::InChain { gop, .. } => Some((Some(gop), false)),
            Cursor::Waiting {
                last_gop,
                media_asks,
            } => Some((last_gop, media_asks)),
        }
    }
}

/// What to do with a frame for one viewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Hand it to the viewer's media layer, then report with [`ViewerGop::on_sent`].
    Send,
    /// Keep it from the viewer, which could not decode it or gets it from the cache
    /// later. `ask`: the viewer waits for a keyframe nobody has asked the application
    /// for ([`ViewerGop::should_ask`] rate-limits the request).
    Withhold { ask: bool },
}

/// How a viewer's catch-up from the cache began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CatchUp {
    /// Frames to hand over, the keyframe included.
    pub(crate) frames: u64,
    /// The frames after the keyframe hold more bytes than the keyframe itself: replaying
    /// them costs the viewer more than a fresh keyframe would, so the application is
    /// asked for one (its keyframe then cuts the catch-up short).
    pub(crate) ask: bool,
}

/// One viewer's subscription and cursors, and when the application was last asked for a
/// keyframe for it.
#[derive(Debug)]
pub(crate) struct ViewerGop {
    /// The streams the viewer is subscribed to (`spec/endpoint.md` §4.2); the device's
    /// frames of other streams do not go to it.
    streams: StreamSet,
    /// Streams the viewer was subscribed to again and has had no frame of since: a frame
    /// withheld from it there is not a gap (it left the stream; it lost nothing).
    rejoined: StreamSet,
    cursors: [Cursor; MAX_STREAMS],
    asked_at: [Option<Instant>; MAX_STREAMS],
    /// Bit per stream: its media layer took a frame of the stream (the receiver then
    /// maps capture times to its clock by it, `spec/media.md` 5.3).
    touched: u16,
}

impl Default for ViewerGop {
    fn default() -> Self {
        Self {
            streams: StreamSet::ALL,
            rejoined: StreamSet::EMPTY,
            cursors: Default::default(),
            asked_at: Default::default(),
            touched: 0,
        }
    }
}

/// A keyframe request for a viewer is repeated at most this often (the media layer's
/// own interval, `spec/media.md` 4.7).
const ASK_INTERVAL: Duration = sightwire_media::KEYFRAME_REASK_INTERVAL;

/// The receiver's budget for a frame captured `since_keyframe` µs after its GOP's
/// keyframe (`spec/media.md` 5.3): `max(B, F·B − Δ)`.
fn frame_budget(since_keyframe: u64, latency_budget: Duration) -> Duration {
    (latency_budget * KEYFRAME_DEADLINE_FACTOR)
        .saturating_sub(Duration::from_micros(since_keyframe))
        .max(latency_budget)
}

impl ViewerGop {
    fn cursor(&self, stream: StreamId) -> Cursor {
        self.cursors
            .get(usize::from(stream.get()))
            .copied()
            .unwrap_or_default()
    }

    fn cursor_mut(&mut self, stream: StreamId) -> Option<&mut Cursor> {
        self.cursors.get_mut(usize::from(stream.get()))
    }

    /// The streams the viewer is subscribed to.
    pub(crate) fn streams(&self) -> StreamSet {
        self.streams
    }

    /// Subscribes the viewer to `streams` instead; returns the streams added. On a stream
    /// it leaves it waits for a keyframe, remembering the GOP it followed: coming back
    /// within that GOP it is not handed that GOP's frames a second time.
    pub(crate) fn subscribe(&mut self, streams: StreamSet) -> StreamSet {
        let added = streams.difference(self.streams);
        for stream in self.streams.difference(streams).iter() {
            if let Some(cursor) = self.cursor_mut(stream) {
                let last_gop = match *cursor {
                    Cursor::InChain { gop, .. } => Some(gop),
                    Cursor::Waiting { last_gop, .. } => last_gop,
                };
                *cursor = Cursor::Waiting {
                    last_gop,
                    media_asks: false,
                };
            }
        }
        self.rejoined = self.rejoined.intersection(streams).union(added);
        self.streams = streams;
        added
    }

    /// Whether the viewer gets a frame of `stream` the cache just placed.
    pub(crate) fn route(&self, cache: &GopCache, stream: StreamId, placement: Placement) -> Route {
        let cursor = self.cursor(stream);
        let in_chain_at = |want_gop: u64, want_next: u64| match cursor {
            Cursor::InChain { gop, next, .. } => gop == want_gop && next == want_next,
            Cursor::Waiting { .. } => false,
        };
        let send = match placement {
            Placement::Untracked | Placement::Keyframe { .. } => true,
            Placement::Reference { gop, index } => in_chain_at(gop, index),
            Placement::Leaf { gop, after } => in_chain_at(gop, after),
            Placement::Orphan => false,
        };
        if send {
            return Route::Send;
        }
        let current = cache.stream(stream).map_or(0, |s| s.gop);
        let ask = cursor
            .waiting(current)
            .is_some_and(|(_, media_asks)| !media_asks);
        Route::Withhold { ask }
    }

    /// Whether a frame of `stream` placed at `placement` and withheld from this viewer
    /// now is lost to it although it had frames of the stream before (it waits for a
    /// keyframe after a broken chain, or its GOP was interrupted): a gap its receiver
    /// should be told of (`spec/media.md` 4.7, SKIPPED). A viewer that never had any, or
    /// that catches up from the cache, has no gap.
    pub(crate) fn withheld_is_gap(&self, stream: StreamId, placement: Placement) -> bool {
        if self.rejoined.contains(stream) {
            return false;
        }
        match self.cursor(stream) {
            Cursor::Waiting { last_gop, .. } => last_gop.is_some(),
            Cursor::InChain { .. } => placement == Placement::Orphan,
        }
    }

    /// The viewer's media layer took (`accepted`) or refused a frame [`route`](Self::route)
    /// said to send.
    pub(crate) fn on_sent(&mut self, stream: StreamId, placement: Placement, accepted: bool) {
        if accepted {
            self.touched |= 1 << stream.get();
            self.rejoined = self.rejoined.without(stream);
        }
        let Some(cursor) = self.cursor_mut(stream) else {
            return;
        };
        match (placement, accepted) {
            (Placement::Keyframe { gop }, true) => {
                *cursor = Cursor::InChain {
                    gop,
                    next: 1,
                    lag_floor: None,
                }
            }
            (Placement::Keyframe { .. }, false) => {
                // Nothing of the new GOP reached the viewer.
                let last_gop = match *cursor {
                    Cursor::InChain { gop, .. } => Some(gop),
                    Cursor::Waiting { last_gop, .. } => last_gop,
                };
                *cursor = Cursor::Waiting {
                    last_gop,
                    media_asks: true,
                };
            }
            (Placement::Reference { gop, index }, true) => {
                *cursor = Cursor::InChain {
                    gop,
                    next: index + 1,
                    lag_floor: None,
                }
            }
            (Placement::Reference { gop, .. }, false) => {
                *cursor = Cursor::Waiting {
                    last_gop: Some(gop),
                    media_asks: true,
                }
            }
            // Nothing refers to a leaf: taken or not, the chain is whole.
            (Placement::Leaf { .. } | Placement::Untracked | Placement::Orphan, _) => {}
        }
    }

    /// Starts a catch-up from the cache on `stream` for a viewer subscribed to it that
    /// needs a keyframe and has been given no frame of the cached GOP. A viewer that has had frames of
    /// this stream before (its receiver maps capture times to its clock by them,
    /// `spec/media.md` 5.3) is served only while the cached keyframe is at most
    /// `latency_budget` old, or the receiver would give it up as late.
    pub(crate) fn start(
        &mut self,
        cache: &GopCache,
        stream: StreamId,
        now: Instant,
        latency_budget: Duration,
    ) -> Option<CatchUp> {
        let gop = cache.stream(stream)?;
        let key = gop.frames.first()?;
        if !gop.intact || !self.streams.contains(stream) {
            return None;
        }
        let fresh = self.touched & (1 << stream.get()) == 0;
        let cursor = self.cursor_mut(stream)?;
        let (last_gop, _) = cursor.waiting(gop.gop)?;
        if last_gop == Some(gop.gop)
            || (!fresh && now.saturating_duration_since(key.at) > latency_budget)
        {
            return None;
        }
        *cursor = Cursor::InChain {
            gop: gop.gop,
            next: 0,
            lag_floor: None,
        };
        let key_bytes = key.frame.frame().data.len();
        Some(CatchUp {
            frames: gop.chain_len,
            ask: gop.bytes - key_bytes > key_bytes,
        })
    }

    /// The next frame to hand over from the cache, if the viewer is catching up on any
    /// stream: the oldest among its streams' next frames. A catch-up that can no longer
    /// reach live (the cache overflowed under it) or that fell too far behind (its next
    /// frame's wait exceeds its receive budget beyond the catch-up's least wait, so the
    /// receiver would give it up on arrival) ends there; the viewer then waits for a
    /// keyframe and each such stream's bit is set in `abandoned`.
    pub(crate) fn next_feed<'a>(
        &mut self,
        cache: &'a GopCache,
        now: Instant,
        latency_budget: Duration,
        abandoned: &mut u16,
    ) -> Option<(StreamId, &'a PacketizedFrame)> {
        let mut best: Option<(StreamId, &'a Cached)> = None;
        for (index, (cursor, gop)) in self.cursors.iter_mut().zip(&cache.streams).enumerate() {
            let Cursor::InChain {
                gop: number,
                next,
                lag_floor,
            } = *cursor
            else {
                continue;
            };
            if number != gop.gop || next >= gop.chain_len {
                continue;
            }
            let (Some(cached), Some(key)) = (
                usize::try_from(next)
                    .ok()
                    .and_then(|n| gop.frames.get(n))
                    .filter(|_| gop.intact),
                gop.frames.first(),
            ) else {
                *cursor = Cursor::Waiting {
                    last_gop: Some(number),
                    media_asks: false,
                };
                *abandoned |= 1 << index;
                continue;
            };
            let lag = now.saturating_duration_since(cached.at);
            let floor = lag_floor.map_or(lag, |floor| floor.min(lag));
            let since_keyframe = cached
                .frame
                .frame()
                .capture_time_us
                .saturating_sub(key.frame.frame().capture_time_us);
            if lag - floor > frame_budget(since_keyframe, latency_budget) {
                *cursor = Cursor::Waiting {
                    last_gop: Some(number),
                    media_asks: false,
                };
                *abandoned |= 1 << index;
                continue;
            }
            let Some(stream) = StreamId::new(index as u8) else {
                continue;
            };
            if best.is_none_or(|(_, b)| cached.at < b.at) {
                best = Some((stream, cached));
            }
        }
        best.map(|(stream, cached)| (stream, &cached.frame))
    }

    /// The media layer took (`accepted`) or refused the frame [`next_feed`](Self::next_feed)
    /// gave for `stream`; `now` is when it was handed over.
    pub(crate) fn fed(&mut self, cache: &GopCache, stream: StreamId, now: Instant, accepted: bool) {
        let Some(gop) = cache.stream(stream) else {
            return;
        };
        if accepted {
            self.touched |= 1 << stream.get();
            self.rejoined = self.rejoined.without(stream);
        }
        let Some(cursor) = self.cursor_mut(stream) else {
            return;
        };
        let Cursor::InChain {
            gop: number,
            next,
            lag_floor,
        } = *cursor
        else {
            return;
        };
        if !accepted {
            // The media layer broke its chain (`spec/media.md` 4.7) and asks for a
            // keyframe itself.
            *cursor = Cursor::Waiting {
                last_gop: Some(number),
                media_asks: true,
            };
            return;
        }
        let lag = usize::try_from(next)
            .ok()
            .and_then(|n| gop.frames.get(n))
            .map(|cached| now.saturating_duration_since(cached.at));
        let next = next + 1;
        let caught_up = next >= gop.chain_len;
        *cursor = Cursor::InChain {
            gop: number,
            next,
            lag_floor: if caught_up {
                None
            } else {
                match (lag_floor, lag) {
                    (Some(floor), Some(lag)) => Some(floor.min(lag)),
                    (floor, lag) => floor.or(lag),
                }
            },
        };
    }

    /// Whether the viewer catches up from the cache on some stream now.
    pub(crate) fn catching_up(&self, cache: &GopCache) -> bool {
        self.cursors
            .iter()
            .zip(&cache.streams)
            .any(|(cursor, gop)| {
                matches!(*cursor, Cursor::InChain { gop: number, next, .. }
                    if number == gop.gop && next < gop.chain_len)
            })
    }

    /// Whether to ask the application for a keyframe on `stream` for this viewer now: at
    /// most once per [`ASK_INTERVAL`], counting requests its media layer passed on.
    pub(crate) fn should_ask(&mut self, stream: StreamId, now: Instant) -> bool {
        let Some(asked) = self.asked_at.get_mut(usize::from(stream.get())) else {
            return false;
        };
        if asked.is_some_and(|at| now.saturating_duration_since(at) < ASK_INTERVAL) {
            return false;
        }
        *asked = Some(now);
        true
    }

    /// The application was asked for a keyframe on `stream` for this viewer (by its
    /// media layer).
    pub(crate) fn asked(&mut self, stream: StreamId, now: Instant) {
        if let Some(asked) = self.asked_at.get_mut(usize::from(stream.get())) {
            *asked = Some(now);
        }
    }
}

/// Viewer: a keyframe, told apart by its capture time, size and a hash of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyframeId {
    capture_time_us: u64,
    len: usize,
    hash: u64,
}

impl KeyframeId {
    fn of(frame: &Frame) -> Self {
        // SipHash with fixed keys: deterministic, and only compared with what the same
        // device sent before (the session authenticates it), so no adversary chooses
        // collisions.
        let mut hasher = std::hash::DefaultHasher::new();
        std::hash::Hasher::write(&mut hasher, &frame.data);
        Self {
            capture_time_us: frame.capture_time_us,
            len: frame.data.len(),
            hash: std::hash::Hasher::finish(&hasher),
        }
    }
}

/// Viewer: the GOP a watch last delivered frames of on one stream.
#[derive(Debug, Clone, Copy)]
struct Delivered {
    keyframe: KeyframeId,
    last_capture_us: u64,
}

/// Viewer, per watch: what it delivered on each stream, so that when a new connection
/// replays a GOP the watch already delivered part of (the device serves every new
/// connection from its cache, §4.1 of `spec/endpoint.md`), the application does not get
/// those frames twice. The application's decoder holds the state those frames left, so
/// the first newer frame continues it.
#[derive(Debug, Default)]
pub(crate) struct WatchFrames {
    streams: [Option<Delivered>; MAX_STREAMS],
}

/// Viewer, per connection and stream: whether its frames resume the watch's GOP.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// Nothing delivered on the stream yet.
    #[default]
    Unknown,
    /// It replays the watch's GOP: frames captured up to this time were delivered.
    Skip {
        through_us: u64,
    },
    Deliver,
}

/// Viewer, per connection: [`Resume`] per stream.
#[derive(Debug, Default)]
pub(crate) struct ConnectionResume {
    streams: [Resume; MAX_STREAMS],
}

impl WatchFrames {
    /// Whether to give the application `frame`, which the media layer of the connection
    /// `resume` belongs to delivered; records what was given. A connection whose first
    /// frame on a stream is the very keyframe (same capture time, size and bytes) of the
    /// GOP the watch last delivered frames of replays that GOP: its frames up to the last
    /// one delivered are not given again.
    pub(crate) fn admit(&mut self, resume: &mut ConnectionResume, frame: &Frame) -> bool {
        let index = usize::from(frame.stream.get());
        let (Some(state), Some(delivered)) =
            (resume.streams.get_mut(index), self.streams.get_mut(index))
        else {
            return true;
        };
        if !frame.codec.has_interframe_dependency() {
            return true;
        }
        if *state == Resume::Unknown {
            *state = match *delivered {
                Some(last) if frame.keyframe && last.keyframe == KeyframeId::of(frame) => {
                    Resume::Skip {
                        through_us: last.last_capture_us,
                    }
                }
                _ => Resume::Deliver,
            };
        }
        if let Resume::Skip { through_us } = *state {
            if frame.capture_time_us <= through_us {
                return false;
            }
            *state = Resume::Deliver;
        }
        if frame.keyframe {
            *delivered = Some(Delivered {
                keyframe: KeyframeId::of(frame),
                last_capture_us: frame.capture_time_us,
            });
        } else if let Some(delivered) = delivered {
            delivered.last_capture_us = frame.capture_time_us;
        }
        true
    }
}

#[cfg(test)]
mod tests;
