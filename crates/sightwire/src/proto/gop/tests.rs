use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use sightwire_media::{Codec, Frame, PacketizedFrame};

use super::*;

const SUB: StreamId = match StreamId::new(3) {
    Some(stream) => stream,
    None => panic!("stream 3"),
};
const BUDGET: Duration = Duration::from_millis(500);
const MS: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Key,
    /// A frame later frames may refer to (H.264 `nal_ref_idc` 2).
    Ref,
    /// A frame nothing refers to (H.264 `nal_ref_idc` 0).
    Leaf,
    /// Motion JPEG: every image stands alone.
    Jpeg,
}

/// A frame of `size` bytes (at least 5); its capture time carries `seq` so tests can
/// tell frames apart.
fn frame(stream: StreamId, kind: Kind, size: usize, seq: u64) -> PacketizedFrame {
    let mut data = vec![0xAB; size.max(5)];
    let header: &[u8] = match kind {
        Kind::Key => &[0, 0, 1, 0x65],
        Kind::Ref => &[0, 0, 1, 0x41],
        Kind::Leaf => &[0, 0, 1, 0x01],
        Kind::Jpeg => &[0xFF, 0xD8, 0xFF, 0xE0],
    };
    data[..4].copy_from_slice(header);
    let frame = Frame::new(
        stream,
        if kind == Kind::Jpeg {
            Codec::Mjpeg
        } else {
            Codec::H264
        },
        seq * 40_000,
        Bytes::from(data),
    )
    .with_keyframe(matches!(kind, Kind::Key | Kind::Jpeg))
    .with_codec_config(kind == Kind::Key);
    PacketizedFrame::new(frame, 1200).expect("packetized")
}

fn seq_of(frame: &PacketizedFrame) -> u64 {
    frame.frame().capture_time_us / 40_000
}

fn limits(max_frames: usize, max_bytes: usize) -> GopCacheConfig {
    GopCacheConfig {
        max_bytes,
        max_frames,
    }
}

/// Feeds `viewer` until it has nothing to catch up on; returns the frames handed over.
fn drain(viewer: &mut ViewerGop, cache: &GopCache, now: Instant) -> Vec<u64> {
    let mut handed = Vec::new();
    let mut abandoned = 0;
    while let Some((stream, frame)) = viewer.next_feed(cache, now, BUDGET, &mut abandoned) {
        handed.push(seq_of(frame));
        viewer.fed(cache, stream, now, true);
    }
    assert_eq!(abandoned, 0, "nothing abandoned");
    handed
}

/// Routes a frame just pushed to `viewer` the way the endpoint does; returns whether it
/// was handed over.
fn live(viewer: &mut ViewerGop, cache: &GopCache, stream: StreamId, placement: Placement) -> bool {
    match viewer.route(cache, stream, placement) {
        Route::Send => {
            viewer.on_sent(stream, placement, true);
            true
        }
        Route::Withhold { .. } => false,
    }
}

#[test]
fn each_keyframe_starts_a_gop_and_lets_go_of_the_last() {
    let now = Instant::now();
    let mut cache = GopCache::new(GopCacheConfig::default());
    let key = cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 1000, 0));
    assert_eq!(key, Placement::Keyframe { gop: 1 });
    assert_eq!(
        cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 1)),
        Placement::Reference { gop: 1, index: 1 }
    );
    assert_eq!(
        cache.push(now, &frame(StreamId::VIDEO, Kind::Leaf, 100, 2)),
        Placement::Leaf { gop: 1, after: 2 }
    );
    assert_eq!(
        cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 3)),
        Placement::Reference { gop: 1, index: 2 }
    );
    // The leaf is not kept: nothing needs it to reach live.
    assert_eq!(
        cache.usage(),
        GopCacheUsage {
            frames: 3,
            bytes: 1200
        }
    );
    // Another stream has its own GOP.
    cache.push(now, &frame(SUB, Kind::Key, 50, 4));
    assert_eq!(cache.usage().frames, 4);
    assert_eq!(
        cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 800, 5)),
        Placement::Keyframe { gop: 2 }
    );
    assert_eq!(
        cache.usage(),
        GopCacheUsage {
            frames: 2,
            bytes: 850
        }
    );
    // Audio is not a GOP.
    let mut audio = frame(StreamId::AUDIO, Kind::Ref, 100, 6).frame().clone();
    audio.codec = Codec::Opus;
    let audio = PacketizedFrame::new(audio, 1200).unwrap();
    assert_eq!(cache.push(now, &audio), Placement::Untracked);
    assert_eq!(cache.usage().frames, 2);
}

#[test]
fn the_frame_limit_stops_caching_until_the_next_keyframe() {
    let now = Instant::now();
    let mut cache = GopCache::new(limits(3, usize::MAX));
    cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 0));
    cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 1));
    cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 2));
    assert_eq!(cache.usage().frames, 3);
    assert_eq!(cache.overflows, 0);
    // The fourth frame does not fit: the whole GOP goes (a chain with a hole helps nobody).
    assert_eq!(
        cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 3)),
        Placement::Reference { gop: 1, index: 3 }
    );
    assert_eq!(cache.usage(), GopCacheUsage::default());
    assert_eq!(cache.overflows, 1);
    cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 4));
    assert_eq!(cache.usage().frames, 0, "nothing until the next keyframe");
    // A viewer joining now cannot be served from the cache.
    let mut viewer = ViewerGop::default();
    assert_eq!(viewer.start(&cache, StreamId::VIDEO, now, BUDGET), None);
    cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 5));
    assert_eq!(cache.usage().frames, 1);
    assert_eq!(cache.overflows, 1);
}

#[test]
fn the_byte_limit_stops_caching_until_the_next_keyframe() {
    let now = Instant::now();
    let mut cache = GopCache::new(limits(usize::MAX, 1000));
    cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 600, 0));
    cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 400, 1));
    assert_eq!(cache.usage().bytes, 1000, "exactly at the limit");
    cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 5, 2));
    assert_eq!(cache.usage(), GopCacheUsage::default());
    assert_eq!(cache.overflows, 1);
    // A keyframe larger than the limit is not cached at all, nor what follows it.
    cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 1001, 3));
    cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 5, 4));
    assert_eq!(cache.usage(), GopCacheUsage::default());
    assert_eq!(cache.overflows, 2);
    cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 1000, 5));
    assert_eq!(cache.usage().bytes, 1000);
}

#[test]
fn a_disabled_cache_holds_nothing_and_serves_nobody() {
    let now = Instant::now();
    for disabled in [GopCacheConfig::DISABLED, limits(0, 1 << 20), limits(10, 0)] {
        let mut cache = GopCache::new(disabled);
        cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 0));
        cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 1));
        assert_eq!(cache.usage(), GopCacheUsage::default());
        assert_eq!(cache.overflows, 0, "off is not an overflow");
        let mut viewer = ViewerGop::default();
        assert_eq!(viewer.start(&cache, StreamId::VIDEO, now, BUDGET), None);
    }
}

#[test]
fn a_joining_viewer_catches_up_in_order_then_follows_live() {
    let now = Instant::now();
    let mut cache = GopCache::new(GopCacheConfig::default());
    let mut live_viewer = ViewerGop::default();
    let mut placements = Vec::new();
    for (seq, kind) in [Kind::Key, Kind::Ref, Kind::Leaf, Kind::Ref]
        .into_iter()
        .enumerate()
    {
        let placement = cache.push(now, &frame(StreamId::VIDEO, kind, 100, seq as u64));
        assert!(live(&mut live_viewer, &cache, StreamId::VIDEO, placement));
        placements.push(placement);
    }
    let mut viewer = ViewerGop::default();
    let catch_up = viewer.start(&cache, StreamId::VIDEO, now, BUDGET);
    assert_eq!(
        catch_up,
        Some(CatchUp {
            frames: 3,
            ask: true
        })
    );
    assert!(viewer.catching_up(&cache));
    // A live frame while it catches up waits its turn in the cache; no request (the
    // catch-up's keyframe is on its way).
    let placement = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 4));
    assert_eq!(
        viewer.route(&cache, StreamId::VIDEO, placement),
        Route::Withhold { ask: false }
    );
    assert!(live(&mut live_viewer, &cache, StreamId::VIDEO, placement));
    let leaf = cache.push(now, &frame(StreamId::VIDEO, Kind::Leaf, 100, 5));
    assert!(!live(&mut viewer, &cache, StreamId::VIDEO, leaf));
    // Keyframe first, then the references in order, without the leaves.
    assert_eq!(drain(&mut viewer, &cache, now), vec![0, 1, 3, 4]);
    assert!(!viewer.catching_up(&cache));
    // Caught up: live from here on, leaves included.
    for (seq, kind) in [(6, Kind::Leaf), (7, Kind::Ref)] {
        let placement = cache.push(now, &frame(StreamId::VIDEO, kind, 100, seq));
        assert!(live(&mut viewer, &cache, StreamId::VIDEO, placement));
        assert!(live(&mut live_viewer, &cache, StreamId::VIDEO, placement));
    }
    // A viewer joining on the keyframe has nothing to catch up beyond it and asks for
    // nothing.
    let key = cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 8));
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, key));
    let mut late = ViewerGop::default();
    assert_eq!(
        late.start(&cache, StreamId::VIDEO, now, BUDGET),
        Some(CatchUp {
            frames: 1,
            ask: false
        })
    );
    // Already in this GOP: nothing to start.
    assert_eq!(viewer.start(&cache, StreamId::VIDEO, now, BUDGET), None);
}

#[test]
fn a_fresh_keyframe_cuts_a_catch_up_short() {
    let now = Instant::now();
    let mut cache = GopCache::new(GopCacheConfig::default());
    cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 0));
    for seq in 1..10 {
        cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, seq));
    }
    let mut viewer = ViewerGop::default();
    viewer.start(&cache, StreamId::VIDEO, now, BUDGET).unwrap();
    let mut abandoned = 0;
    let (_, first) = viewer
        .next_feed(&cache, now, BUDGET, &mut abandoned)
        .unwrap();
    assert_eq!(seq_of(first), 0);
    viewer.fed(&cache, StreamId::VIDEO, now, true);
    // The encoder answered the request: the rest of the old GOP is not needed.
    let key = cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 10));
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, key));
    assert!(
        viewer
            .next_feed(&cache, now, BUDGET, &mut abandoned)
            .is_none()
    );
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 11));
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, p));
    assert_eq!(abandoned, 0);
}

#[test]
fn an_overflow_under_a_catch_up_strands_it_until_a_keyframe() {
    let now = Instant::now();
    let mut cache = GopCache::new(limits(4, usize::MAX));
    cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 0));
    cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 1));
    let mut viewer = ViewerGop::default();
    viewer.start(&cache, StreamId::VIDEO, now, BUDGET).unwrap();
    let mut abandoned = 0;
    viewer
        .next_feed(&cache, now, BUDGET, &mut abandoned)
        .unwrap();
    viewer.fed(&cache, StreamId::VIDEO, now, true);
    for seq in 2..6 {
        let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, seq));
        assert!(!live(&mut viewer, &cache, StreamId::VIDEO, p));
    }
    assert_eq!(cache.usage().frames, 0, "overflowed");
    // The frames it still needs are gone: it waits for a keyframe and the endpoint asks
    // the application for one.
    assert!(
        viewer
            .next_feed(&cache, now, BUDGET, &mut abandoned)
            .is_none()
    );
    assert_eq!(abandoned, 1 << StreamId::VIDEO.get());
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 6));
    assert_eq!(
        viewer.route(&cache, StreamId::VIDEO, p),
        Route::Withhold { ask: true }
    );
    let key = cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 7));
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, key));
}

#[test]
fn a_catch_up_that_falls_behind_is_abandoned() {
    let start = Instant::now();
    let mut cache = GopCache::new(GopCacheConfig::default());
    // A 4 s GOP at 25 fps, handed in in real time.
    for seq in 0..100u64 {
        let kind = if seq == 0 { Kind::Key } else { Kind::Ref };
        cache.push(
            start + 40 * MS * seq as u32,
            &frame(StreamId::VIDEO, kind, 100, seq),
        );
    }
    // Joins at 4 s; a path twice as fast as the stream catches up.
    let mut now = start + 4000 * MS;
    let mut fast = ViewerGop::default();
    fast.start(&cache, StreamId::VIDEO, now, BUDGET).unwrap();
    let mut abandoned = 0;
    while let Some((stream, _)) = fast.next_feed(&cache, now, BUDGET, &mut abandoned) {
        fast.fed(&cache, stream, now, true);
        now += 20 * MS;
    }
    assert_eq!(abandoned, 0);
    assert!(!fast.catching_up(&cache));
    // A path that carries a frame every 80 ms falls behind by 40 ms a frame; once the
    // lag grew by more than the receiver's budget for the frame (5.3) it stops.
    let mut now = start + 4000 * MS;
    let mut slow = ViewerGop::default();
    slow.start(&cache, StreamId::VIDEO, now, BUDGET).unwrap();
    let mut handed = 0u64;
    while let Some((stream, _)) = slow.next_feed(&cache, now, BUDGET, &mut abandoned) {
        slow.fed(&cache, stream, now, true);
        handed += 1;
        now += 80 * MS;
    }
    assert_eq!(abandoned, 1 << StreamId::VIDEO.get());
    // Frame k waits 40·k ms more than the keyframe; its budget is max(B, 3B − 40·k ms):
    // 3·500 − 40k < 40k for k > 18.75, so frame 19 is the first one given up.
    assert_eq!(handed, 19);
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 100));
    assert_eq!(
        slow.route(&cache, StreamId::VIDEO, p),
        Route::Withhold { ask: true }
    );
}

#[test]
fn a_refused_frame_breaks_the_chain_and_the_media_layer_asks() {
    let now = Instant::now();
    let mut cache = GopCache::new(GopCacheConfig::default());
    let mut viewer = ViewerGop::default();
    let key = cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 0));
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, key));
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 1));
    assert_eq!(viewer.route(&cache, StreamId::VIDEO, p), Route::Send);
    viewer.on_sent(StreamId::VIDEO, p, false);
    for (seq, kind) in [(2, Kind::Ref), (3, Kind::Leaf)] {
        let placement = cache.push(now, &frame(StreamId::VIDEO, kind, 100, seq));
        assert_eq!(
            viewer.route(&cache, StreamId::VIDEO, placement),
            Route::Withhold { ask: false },
            "the media layer asks once the path has room"
        );
    }
    // Frames it had stop short: what is withheld now is a gap its receiver is told of.
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 3));
    assert!(viewer.withheld_is_gap(StreamId::VIDEO, p));
    // It had frames of this GOP: no replay of it.
    assert_eq!(viewer.start(&cache, StreamId::VIDEO, now, BUDGET), None);
    // A refused leaf breaks nothing.
    let key = cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 4));
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, key));
    let leaf = cache.push(now, &frame(StreamId::VIDEO, Kind::Leaf, 100, 5));
    viewer.on_sent(StreamId::VIDEO, leaf, false);
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 6));
    assert_eq!(viewer.route(&cache, StreamId::VIDEO, p), Route::Send);
    // A refused catch-up frame ends the catch-up the same way.
    let mut joiner = ViewerGop::default();
    joiner.start(&cache, StreamId::VIDEO, now, BUDGET).unwrap();
    let mut abandoned = 0;
    joiner
        .next_feed(&cache, now, BUDGET, &mut abandoned)
        .unwrap();
    joiner.fed(&cache, StreamId::VIDEO, now, false);
    assert!(!joiner.catching_up(&cache));
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 7));
    assert_eq!(
        joiner.route(&cache, StreamId::VIDEO, p),
        Route::Withhold { ask: false }
    );
}

#[test]
fn a_viewer_that_had_frames_is_replayed_only_a_young_keyframe() {
    let start = Instant::now();
    let mut cache = GopCache::new(GopCacheConfig::default());
    let mut viewer = ViewerGop::default();
    let key = cache.push(start, &frame(StreamId::VIDEO, Kind::Key, 100, 0));
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, key));
    // The next keyframe does not reach it (its transmit queue was full).
    let key = cache.push(start, &frame(StreamId::VIDEO, Kind::Key, 100, 1));
    assert_eq!(viewer.route(&cache, StreamId::VIDEO, key), Route::Send);
    viewer.on_sent(StreamId::VIDEO, key, false);
    cache.push(start, &frame(StreamId::VIDEO, Kind::Ref, 100, 2));
    // Its receiver has a clock mapping from GOP 1: a keyframe older than the latency
    // budget would be late on arrival.
    assert_eq!(
        viewer.start(&cache, StreamId::VIDEO, start + BUDGET + MS, BUDGET),
        None
    );
    assert!(
        viewer
            .start(&cache, StreamId::VIDEO, start + BUDGET, BUDGET)
            .is_some()
    );
    assert_eq!(drain(&mut viewer, &cache, start + BUDGET), vec![1, 2]);
    // Only frames its media layer took count: a viewer whose every frame was refused
    // has no clock mapping yet and is served however old the keyframe.
    let mut refused = ViewerGop::default();
    let key = cache.push(start, &frame(StreamId::VIDEO, Kind::Key, 100, 3));
    refused.on_sent(StreamId::VIDEO, key, false);
    assert!(
        refused
            .start(&cache, StreamId::VIDEO, start + 10 * BUDGET, BUDGET)
            .is_some()
    );
    // Nor is one that had only another stream's frames; one that had Motion JPEG on
    // this stream is.
    let mut other = ViewerGop::default();
    let jpeg = cache.push(start, &frame(SUB, Kind::Jpeg, 100, 4));
    other.on_sent(SUB, jpeg, true);
    assert!(
        other
            .start(&cache, StreamId::VIDEO, start + 10 * BUDGET, BUDGET)
            .is_some()
    );
    let mut had_jpeg = ViewerGop::default();
    let jpeg = cache.push(start, &frame(StreamId::VIDEO, Kind::Jpeg, 100, 5));
    had_jpeg.on_sent(StreamId::VIDEO, jpeg, true);
    let key = cache.push(start, &frame(StreamId::VIDEO, Kind::Key, 100, 6));
    had_jpeg.on_sent(StreamId::VIDEO, key, false);
    assert_eq!(
        had_jpeg.start(&cache, StreamId::VIDEO, start + 10 * BUDGET, BUDGET),
        None
    );
}

#[test]
fn a_frame_nobody_could_be_sent_ends_the_gop_if_others_refer_to_it() {
    let now = Instant::now();
    let mut cache = GopCache::new(GopCacheConfig::default());
    let mut viewer = ViewerGop::default();
    let key = cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 0));
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, key));
    // A leaf that could not be framed breaks nothing.
    cache.not_sent(frame(StreamId::VIDEO, Kind::Leaf, 100, 1).frame());
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 2));
    assert_eq!(p, Placement::Reference { gop: 1, index: 1 });
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, p));
    // A reference frame that could not be framed ends the GOP: what follows is nobody's
    // to decode, the viewer that had the GOP sees a gap, and nobody catches up on it.
    cache.not_sent(frame(StreamId::VIDEO, Kind::Ref, 100, 3).frame());
    assert_eq!(cache.usage().frames, 0);
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 4));
    assert_eq!(p, Placement::Orphan);
    assert!(!live(&mut viewer, &cache, StreamId::VIDEO, p));
    assert!(viewer.withheld_is_gap(StreamId::VIDEO, p));
    let mut joiner = ViewerGop::default();
    assert!(
        !joiner.withheld_is_gap(StreamId::VIDEO, p),
        "it never had any"
    );
    assert_eq!(joiner.start(&cache, StreamId::VIDEO, now, BUDGET), None);
    let key = cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 5));
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, key));
}

#[test]
fn orphans_and_interruptions_go_to_nobody() {
    let now = Instant::now();
    let mut cache = GopCache::new(GopCacheConfig::default());
    let mut viewer = ViewerGop::default();
    // A source that starts mid-GOP: nobody can decode its first frames.
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 0));
    assert_eq!(p, Placement::Orphan);
    assert_eq!(
        viewer.route(&cache, StreamId::VIDEO, p),
        Route::Withhold { ask: true }
    );
    let key = cache.push(now, &frame(StreamId::VIDEO, Kind::Key, 100, 1));
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, key));
    // The stream switches to Motion JPEG: every image goes, and ends the GOP.
    let jpeg = cache.push(now, &frame(StreamId::VIDEO, Kind::Jpeg, 100, 2));
    assert_eq!(jpeg, Placement::Untracked);
    assert!(live(&mut viewer, &cache, StreamId::VIDEO, jpeg));
    assert_eq!(cache.usage().frames, 0);
    // Back to H.264 without a keyframe: nobody's to decode.
    let p = cache.push(now, &frame(StreamId::VIDEO, Kind::Ref, 100, 3));
    assert_eq!(p, Placement::Orphan);
    assert_eq!(
        viewer.route(&cache, StreamId::VIDEO, p),
        Route::Withhold { ask: true }
    );
    let mut joiner = ViewerGop::default();
    assert_eq!(joiner.start(&cache, StreamId::VIDEO, now, BUDGET), None);
}

#[test]
fn catch_ups_interleave_streams_oldest_frame_first() {
    let start = Instant::now();
    let mut cache = GopCache::new(GopCacheConfig::default());
    for seq in 0..6u64 {
        let stream = if seq % 2 == 0 { StreamId::VIDEO } else { SUB };
        let kind = if seq < 2 { Kind::Key } else { Kind::Ref };
        cache.push(start + 10 * MS * seq as u32, &frame(stream, kind, 100, seq));
    }
    let mut viewer = ViewerGop::default();
    let now = start + 100 * MS;
    assert!(viewer.start(&cache, StreamId::VIDEO, now, BUDGET).is_some());
    assert!(viewer.start(&cache, SUB, now, BUDGET).is_some());
    assert_eq!(drain(&mut viewer, &cache, now), vec![0, 1, 2, 3, 4, 5]);
}

#[test]
fn keyframe_requests_for_a_viewer_are_rate_limited() {
    let start = Instant::now();
    let mut viewer = ViewerGop::default();
    assert!(viewer.should_ask(StreamId::VIDEO, start));
    assert!(!viewer.should_ask(StreamId::VIDEO, start + ASK_INTERVAL - MS));
    assert!(viewer.should_ask(SUB, start), "per stream");
    assert!(viewer.should_ask(StreamId::VIDEO, start + ASK_INTERVAL));
    // A request the media layer passed on counts too.
    viewer.asked(SUB, start + 5 * ASK_INTERVAL);
    assert!(!viewer.should_ask(SUB, start + 5 * ASK_INTERVAL + MS));
}

/// One step of the property test's script.
#[derive(Debug, Clone)]
enum Op {
    /// The application hands in a frame; the media layer of `refuse` (a viewer bitmask)
    /// refuses it.
    Push {
        sub: bool,
        kind: Kind,
        size: usize,
        refuse: u8,
    },
    /// A viewer is authorized (again: a new connection, with a fresh receiver).
    Join(usize),
    /// A viewer's transmit queue ran dry: it may take a catch-up frame.
    Feed { viewer: usize, refuse: bool },
    /// A viewer's media layer asks for a keyframe.
    Request { viewer: usize, sub: bool },
    /// A viewer is subscribed to the main stream (bit 0) and the sub stream (bit 1)
    /// instead (`spec/endpoint.md` §4.2).
    Subscribe { viewer: usize, streams: u8 },
    /// Time passes.
    Wait(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        2 => Just(Kind::Key),
        12 => Just(Kind::Ref),
        4 => Just(Kind::Leaf),
        1 => Just(Kind::Jpeg),
    ];
    prop_oneof![
        10 => (any::<bool>(), kind, 5usize..3000, prop_oneof![8 => Just(0u8), 1 => any::<u8>()])
            .prop_map(|(sub, kind, size, refuse)| Op::Push { sub, kind, size, refuse }),
        1 => (0usize..4).prop_map(Op::Join),
        8 => (0usize..4, prop_oneof![9 => Just(false), 1 => Just(true)])
            .prop_map(|(viewer, refuse)| Op::Feed { viewer, refuse }),
        1 => (0usize..4, any::<bool>()).prop_map(|(viewer, sub)| Op::Request { viewer, sub }),
        1 => (0usize..4, 0u8..4).prop_map(|(viewer, streams)| Op::Subscribe { viewer, streams }),
        2 => (1u32..400).prop_map(Op::Wait),
    ]
}

/// What the application handed in: (stream, GOP number or none, kind).
#[derive(Debug, Clone, Copy)]
struct Pushed {
    stream: u8,
    gop: Option<u64>,
    kind: Kind,
}

/// Checks that what one viewer's media layer took of one stream (push numbers, in
/// hand-over order) decodes: in order, no frame twice, starting with a keyframe, and
/// every H.264 frame after the keyframe of its own GOP with every reference frame of that
/// GOP before it.
fn check_decodable(taken: &[u64], pushed: &[Pushed]) -> Result<(), TestCaseError> {
    prop_assert!(
        taken.windows(2).all(|w| w[0] < w[1]),
        "out of order or twice: {taken:?}"
    );
    let mut have_key: Option<u64> = None;
    for &seq in taken {
        let frame = pushed[seq as usize];
        match frame.kind {
            Kind::Jpeg => have_key = None,
            Kind::Key => have_key = frame.gop,
            Kind::Ref | Kind::Leaf => {
                prop_assert!(
                    have_key.is_some() && have_key == frame.gop,
                    "frame {seq} without the keyframe of its GOP"
                );
                // Every reference frame of the GOP pushed before it was taken.
                for (earlier, other) in pushed.iter().enumerate().take(seq as usize) {
                    if other.stream == frame.stream
                        && other.gop == frame.gop
                        && matches!(other.kind, Kind::Key | Kind::Ref)
                    {
                        prop_assert!(
                            taken.contains(&(earlier as u64)),
                            "frame {seq} without its reference {earlier}"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever the application sends, whenever viewers join, whatever their media
    /// layers refuse and however their catch-ups are paced: every viewer's frames decode
    /// (never a P-frame without its references, never one twice, always in order), the
    /// cache stays within its limits, and a viewer whose catch-up nothing interrupted
    /// reaches live.
    #[test]
    fn every_viewer_gets_a_decodable_stream(
        max_frames in 1usize..40,
        max_bytes in 1usize..40_000,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let start = Instant::now();
        let mut now = start;
        let mut cache = GopCache::new(limits(max_frames, max_bytes));
        let mut viewers: Vec<Option<ViewerGop>> = (0..4).map(|_| None).collect();
        // Per viewer and stream, the push numbers its media layer took.
        let mut taken: Vec<BTreeMap<u8, Vec<u64>>> = vec![BTreeMap::new(); 4];
        let mut pushed: Vec<Pushed> = Vec::new();
        let mut refused_any = false;
        // A viewer that left a stream may wait for a keyframe when it comes back.
        let mut resubscribed_any = false;
        for op in ops {
            match op {
                Op::Push { sub, kind, size, refuse } => {
                    let stream = if sub { SUB } else { StreamId::VIDEO };
                    let seq = pushed.len() as u64;
                    let placement = cache.push(now, &frame(stream, kind, size, seq));
                    let gop = match placement {
                        Placement::Keyframe { gop }
                        | Placement::Reference { gop, .. }
                        | Placement::Leaf { gop, .. } => Some(gop),
                        Placement::Untracked | Placement::Orphan => None,
                    };
                    pushed.push(Pushed { stream: stream.get(), gop, kind });
                    for (index, viewer) in viewers.iter_mut().enumerate() {
                        // The endpoint hands a frame only to the viewers subscribed to
                        // its stream.
                        let Some(viewer) = viewer.as_mut().filter(|v| v.streams().contains(stream))
                        else {
                            continue;
                        };
                        if viewer.route(&cache, stream, placement) == Route::Send {
                            let accepted = refuse & (1 << index) == 0;
                            refused_any |= !accepted;
                            viewer.on_sent(stream, placement, accepted);
                            if accepted {
                                taken[index].entry(stream.get()).or_default().push(seq);
                            }
                        }
                    }
                }
                Op::Join(index) => {
                    let mut viewer = ViewerGop::default();
                    for stream in [StreamId::VIDEO, SUB] {
                        viewer.start(&cache, stream, now, BUDGET);
                    }
                    viewers[index] = Some(viewer);
                    taken[index].clear();
                }
                Op::Feed { viewer: index, refuse } => {
                    let Some(viewer) = &mut viewers[index] else { continue };
                    let mut abandoned = 0;
                    if let Some((stream, frame)) =
                        viewer.next_feed(&cache, now, BUDGET, &mut abandoned)
                    {
                        prop_assert!(viewer.streams().contains(stream), "fed a stream it left");
                        let seq = seq_of(frame);
                        viewer.fed(&cache, stream, now, !refuse);
                        refused_any |= refuse;
                        if !refuse {
                            taken[index].entry(stream.get()).or_default().push(seq);
                        }
                    }
                }
                Op::Request { viewer: index, sub } => {
                    let stream = if sub { SUB } else { StreamId::VIDEO };
                    if let Some(viewer) = &mut viewers[index] {
                        viewer.asked(stream, now);
                        viewer.start(&cache, stream, now, BUDGET);
                    }
                }
                Op::Subscribe { viewer: index, streams } => {
                    let Some(viewer) = &mut viewers[index] else { continue };
                    let set: StreamSet = [StreamId::VIDEO, SUB]
                        .into_iter()
                        .enumerate()
                        .filter(|(bit, _)| streams & (1 << bit) != 0)
                        .map(|(_, stream)| stream)
                        .collect();
                    resubscribed_any |= set != viewer.streams();
                    viewer.subscribe(set);
                    prop_assert_eq!(viewer.streams(), set);
                    for stream in [StreamId::VIDEO, SUB] {
                        // A stream the viewer is not subscribed to starts no catch-up.
                        let started = viewer.start(&cache, stream, now, BUDGET).is_some();
                        prop_assert!(!started || set.contains(stream));
                    }
                }
                Op::Wait(ms) => now += MS * ms,
            }
            for stream in &cache.streams {
                prop_assert!(stream.frames.len() <= max_frames);
                prop_assert!(stream.bytes <= max_bytes);
                prop_assert_eq!(
                    stream.bytes,
                    stream.frames.iter().map(|c| c.frame.frame().data.len()).sum::<usize>()
                );
            }
        }
        // Every viewer drains its catch-up (a fast path: no time passes).
        for (index, viewer) in viewers.iter_mut().enumerate() {
            let Some(viewer) = viewer else { continue };
            let mut abandoned = 0;
            while let Some((stream, frame)) =
                viewer.next_feed(&cache, now, BUDGET, &mut abandoned)
            {
                prop_assert!(viewer.streams().contains(stream), "fed a stream it left");
                let seq = seq_of(frame);
                viewer.fed(&cache, stream, now, true);
                taken[index].entry(stream.get()).or_default().push(seq);
            }
            prop_assert!(!viewer.catching_up(&cache));
            for (&stream, frames) in &taken[index] {
                check_decodable(frames, &pushed)?;
                // A viewer whose stream nothing broke (no refusal, and the cache kept
                // its GOP) follows live: it has every reference frame of the current GOP.
                let gop = &cache.streams[usize::from(stream)];
                let cursor = viewer.cursors[usize::from(stream)];
                if !refused_any
                    && !resubscribed_any
                    && gop.intact
                    && gop.keyed
                    && let Cursor::InChain { gop: number, next, .. } = cursor
                {
                    prop_assert_eq!(number, gop.gop);
                    prop_assert_eq!(next, gop.chain_len);
                }
            }
        }
    }
}

fn delivered(frame: &PacketizedFrame) -> Frame {
    frame.frame().clone()
}

#[test]
fn a_watch_skips_what_a_replayed_gop_repeats() {
    let mut watch = WatchFrames::default();
    let mut old = ConnectionResume::default();
    let gop: Vec<Frame> = (0..6)
        .map(|seq| {
            let kind = if seq == 0 { Kind::Key } else { Kind::Ref };
            delivered(&frame(StreamId::VIDEO, kind, 100, seq))
        })
        .collect();
    for f in &gop[..4] {
        assert!(watch.admit(&mut old, f));
    }
    // A new connection replays the GOP from its keyframe: frames 0..=3 were delivered.
    let mut new = ConnectionResume::default();
    let admitted: Vec<u64> = gop
        .iter()
        .filter(|f| watch.admit(&mut new, f))
        .map(|f| f.capture_time_us / 40_000)
        .collect();
    assert_eq!(admitted, vec![4, 5]);
    // Audio is never held back.
    let mut audio = gop[1].clone();
    audio.stream = StreamId::AUDIO;
    audio.codec = Codec::Opus;
    assert!(watch.admit(&mut ConnectionResume::default(), &audio));
    // Another keyframe (a newer GOP, or another device's) starts over: all delivered.
    let other = delivered(&frame(StreamId::VIDEO, Kind::Key, 100, 2));
    let mut third = ConnectionResume::default();
    assert!(watch.admit(&mut third, &other));
    // The same capture time but other bytes is another keyframe too (a restarted
    // camera whose clock starts again).
    let mut watch = WatchFrames::default();
    assert!(watch.admit(&mut ConnectionResume::default(), &gop[0]));
    let mut changed = gop[0].clone();
    changed.data = Bytes::from(vec![7u8; changed.data.len()]);
    let mut fourth = ConnectionResume::default();
    assert!(watch.admit(&mut fourth, &changed));
    // A connection whose first frame is not the watch's keyframe delivers everything,
    // even frames older than the last delivered.
    let mut watch = WatchFrames::default();
    for f in &gop[..4] {
        assert!(watch.admit(&mut ConnectionResume::default(), f));
    }
    let mut fifth = ConnectionResume::default();
    assert!(watch.admit(&mut fifth, &gop[2]));
    assert!(watch.admit(&mut fifth, &gop[0]));
}
