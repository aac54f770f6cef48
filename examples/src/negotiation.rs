//! Stream and codec choice between the example camera and viewer (`spec/control.md`):
//! codec names as people type them, and the one rule both sides apply to a catalog — the
//! chosen stream must exist and its codecs must be ones the viewer takes.

use std::collections::HashMap;

use sightwire::{Codec, Frame, PeerId, StreamId, StreamSet};
use sightwire_media::control_messages::{
    CatalogStream, ControlMessage, MAX_STREAM_TRACKS, SourceState, StatusReason, Track,
};

/// Every codec the example viewer can write somewhere (video output, audio output, MP4).
pub const VIEWER_CODECS: [Codec; 5] = [
    Codec::H264,
    Codec::H265,
    Codec::Aac,
    Codec::G711A,
    Codec::G711Mu,
];

/// The name of a codec on the command line and in JSON (`h264`, `h265`, `aac`, ...).
pub const fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::H264 => "h264",
        Codec::H265 => "h265",
        Codec::Mjpeg => "mjpeg",
        Codec::Aac => "aac",
        Codec::G711Mu => "ulaw",
        Codec::G711A => "alaw",
        Codec::Opus => "opus",
        _ => "metadata",
    }
}

/// Parses a comma-separated codec list (`h264,aac`), case-insensitive, repeats ignored.
pub fn parse_codecs(list: &str) -> Result<Vec<Codec>, String> {
    let mut codecs = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let codec = Codec::ALL
            .into_iter()
            .find(|c| codec_name(*c).eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown codec {name:?} (h264, h265, aac, alaw, ulaw, ...)"))?;
        if !codecs.contains(&codec) {
            codecs.push(codec);
        }
    }
    Ok(codecs)
}

/// Why a catalog stream cannot serve a viewer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The catalog has no stream of that name.
    #[error("the camera has no stream {0:?}")]
    UnknownStream(String),
    /// The stream's video (or another track's) codec is not one the viewer takes.
    #[error("stream {stream:?} is {}, which this viewer does not take", codec_name(*codec))]
    CodecNotAccepted {
        /// The stream.
        stream: String,
        /// Its codec the viewer lacks.
        codec: Codec,
    },
}

impl Refusal {
    /// The STATUS reason that says it.
    pub fn reason(&self) -> StatusReason {
        match self {
            Refusal::UnknownStream(_) => StatusReason::UnknownStream,
            Refusal::CodecNotAccepted { .. } => StatusReason::CodecNotAccepted,
        }
    }
}

/// The stream a viewer gets for `wanted` (empty: the first, the default), if its video
/// codec is among `accepts` (an empty list takes anything). Audio the viewer does not
/// take is only dropped, so it does not refuse a stream.
pub fn choose<'a>(
    catalog: &'a [CatalogStream],
    wanted: &str,
    accepts: &[Codec],
) -> Result<&'a CatalogStream, Refusal> {
    let stream = if wanted.is_empty() {
        catalog.first()
    } else {
        catalog.iter().find(|s| s.name == wanted)
    }
    .ok_or_else(|| Refusal::UnknownStream(wanted.to_owned()))?;
    let refused = stream.tracks.iter().find(|t| {
        t.codec.has_interframe_dependency() && !accepts.is_empty() && !accepts.contains(&t.codec)
    });
    match refused {
        Some(track) => Err(Refusal::CodecNotAccepted {
            stream: stream.name.clone(),
            codec: track.codec,
        }),
        None => Ok(stream),
    }
}

/// The stream id of a camera's sub stream video (`spec/control.md` §2: the main stream
/// keeps the conventional ids 0 video, 1 audio, 2 metadata).
pub const SUB_VIDEO: StreamId = match StreamId::new(3) {
    Some(id) => id,
    None => panic!("stream id 3"),
};
/// The stream id of a camera's sub stream audio.
pub const SUB_AUDIO: StreamId = match StreamId::new(4) {
    Some(id) => id,
    None => panic!("stream id 4"),
};
/// The stream ids of the camera's `main` stream.
pub const MAIN_STREAMS: StreamSet =
    StreamSet::of(&[StreamId::VIDEO, StreamId::AUDIO, StreamId::METADATA]);
/// The stream ids of the camera's `sub` stream.
pub const SUB_STREAMS: StreamSet = StreamSet::of(&[SUB_VIDEO, SUB_AUDIO]);

/// A frame of the camera's sub stream source, moved to the sub stream's ids (its video
/// to [`SUB_VIDEO`], anything else to [`SUB_AUDIO`]).
pub fn to_sub_stream(mut frame: Frame) -> Frame {
    frame.stream = if frame.stream == StreamId::VIDEO {
        SUB_VIDEO
    } else {
        SUB_AUDIO
    };
    frame
}

/// The camera's side: its `main` stream and, with a sub stream source, its `sub` stream,
/// whose tracks are learnt from the frames it sends, and its answer to a viewer's SELECT.
#[derive(Debug, Clone)]
pub struct CameraCatalog {
    main: CatalogStream,
    sub: Option<CatalogStream>,
}

impl Default for CameraCatalog {
    fn default() -> Self {
        Self {
            main: CatalogStream {
                name: "main".into(),
                tracks: Vec::new(),
            },
            sub: None,
        }
    }
}

impl CameraCatalog {
    /// A catalog of `main` and `sub` ([`SUB_STREAMS`]).
    pub fn with_sub() -> Self {
        Self {
            sub: Some(CatalogStream {
                name: "sub".into(),
                tracks: Vec::new(),
            }),
            ..Self::default()
        }
    }

    /// Notes a frame's stream and codec; true when that changed the catalog (send it
    /// again). A track changes codec in place; at most [`MAX_STREAM_TRACKS`] are kept per
    /// stream.
    pub fn observe(&mut self, frame: &Frame) -> bool {
        let stream = match &mut self.sub {
            Some(sub) if SUB_STREAMS.contains(frame.stream) => sub,
            _ => &mut self.main,
        };
        let tracks = &mut stream.tracks;
        let full = tracks.len() >= MAX_STREAM_TRACKS;
        match tracks.iter_mut().find(|t| t.stream == frame.stream) {
            Some(track) if track.codec == frame.codec => false,
            Some(track) => {
                track.codec = frame.codec;
                true
            }
            None if !full => {
                tracks.push(Track {
                    stream: frame.stream,
                    codec: frame.codec,
                });
                true
            }
            None => false,
        }
    }

    /// The catalog's streams, the default first.
    fn streams(&self) -> Vec<CatalogStream> {
        std::iter::once(&self.main)
            .chain(&self.sub)
            .cloned()
            .collect()
    }

    /// The CATALOG message.
    pub fn message(&self) -> ControlMessage {
        ControlMessage::Catalog {
            streams: self.streams(),
        }
    }

    /// The answer to a viewer's SELECT: the stream ids to subscribe it to, or the STATUS
    /// that refuses it.
    pub fn answer(&self, stream: &str, accepts: &[Codec]) -> Result<StreamSet, ControlMessage> {
        let streams = self.streams();
        match choose(&streams, stream, accepts) {
            Ok(chosen) if chosen.name == "sub" => Ok(SUB_STREAMS),
            Ok(_) => Ok(MAIN_STREAMS),
            Err(refusal) => Err(ControlMessage::Status {
                state: SourceState::Running,
                reason: refusal.reason(),
                text: refusal.to_string(),
            }),
        }
    }
}

/// The camera's main-stream target when viewers choose between main and sub: the lowest
/// target among the viewers watching main. The main stream's frame dropper follows it;
/// a viewer on the sub stream (on a slow path, say) does not cost main's viewers frames,
/// and its own media layer drops what its path cannot carry (`spec/media.md` 4.7).
/// One entry per viewer the device admitted (bounded by its `max_viewers`).
#[derive(Debug, Default)]
pub struct MainTarget {
    /// Each viewer's latest target (`None`: not reported yet) and whether it is on sub.
    viewers: HashMap<PeerId, (Option<u64>, bool)>,
    last: Option<u64>,
}

impl MainTarget {
    /// A viewer's target (from its stats). Returns the new main target if it changed
    /// (`Some(None)`: no viewer of main reports one).
    pub fn target(&mut self, peer: PeerId, bps: u64) -> Option<Option<u64>> {
        self.viewers.entry(peer).or_insert((None, false)).0 = Some(bps);
        self.update()
    }

    /// A viewer chose the sub stream (`on_sub`) or the main one.
    pub fn chose(&mut self, peer: PeerId, on_sub: bool) -> Option<Option<u64>> {
        self.viewers.entry(peer).or_insert((None, false)).1 = on_sub;
        self.update()
    }

    /// A viewer left.
    pub fn closed(&mut self, peer: PeerId) -> Option<Option<u64>> {
        self.viewers.remove(&peer);
        self.update()
    }

    fn update(&mut self) -> Option<Option<u64>> {
        let now = self
            .viewers
            .values()
            .filter(|(_, on_sub)| !on_sub)
            .filter_map(|(bps, _)| *bps)
            .min();
        (now != self.last).then(|| {
            self.last = now;
            now
        })
    }
}

/// The viewer's side: which stream ids not to write, given the catalog and the stream it
/// chose — those of the catalog's other streams (a frame of the stream it left may
/// arrive after the new stream's first frames). Ids the catalog does not name are kept.
pub fn other_streams(catalog: &[CatalogStream], chosen: &str) -> StreamSet {
    let chosen = if chosen.is_empty() {
        catalog.first()
    } else {
        catalog.iter().find(|s| s.name == chosen)
    };
    let ids = |stream: &CatalogStream| {
        stream
            .tracks
            .iter()
            .map(|t| t.stream)
            .collect::<StreamSet>()
    };
    let keep = chosen.map_or(StreamSet::EMPTY, ids);
    catalog
        .iter()
        .map(ids)
        .fold(StreamSet::EMPTY, StreamSet::union)
        .difference(keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightwire::StreamId;

    fn catalog() -> Vec<CatalogStream> {
        let track = |stream, codec| Track { stream, codec };
        vec![
            CatalogStream {
                name: "main".into(),
                tracks: vec![
                    track(StreamId::VIDEO, Codec::H265),
                    track(StreamId::AUDIO, Codec::Aac),
                ],
            },
            CatalogStream {
                name: "sub".into(),
                tracks: vec![track(StreamId::VIDEO, Codec::H264)],
            },
        ]
    }

    #[test]
    fn a_viewer_without_h265_is_refused_main_but_gets_sub() {
        let catalog = catalog();
        let h264_only = [Codec::H264, Codec::Aac];
        assert_eq!(
            choose(&catalog, "", &h264_only),
            Err(Refusal::CodecNotAccepted {
                stream: "main".into(),
                codec: Codec::H265
            })
        );
        assert_eq!(
            choose(&catalog, "sub", &h264_only).map(|s| &*s.name),
            Ok("sub")
        );
        assert_eq!(
            choose(&catalog, "", &VIEWER_CODECS).map(|s| &*s.name),
            Ok("main")
        );
        assert_eq!(
            choose(&catalog, "third", &VIEWER_CODECS),
            Err(Refusal::UnknownStream("third".into()))
        );
    }

    /// A one-byte keyframe of `stream` in `codec`.
    fn frame(stream: StreamId, codec: Codec) -> Frame {
        Frame::new(stream, codec, 0, bytes::Bytes::from_static(&[1])).with_keyframe(true)
    }

    #[test]
    fn the_camera_learns_its_tracks_and_refuses_what_a_viewer_cannot_take() {
        let mut camera = CameraCatalog::default();
        assert!(camera.observe(&frame(StreamId::VIDEO, Codec::H265)));
        assert!(!camera.observe(&frame(StreamId::VIDEO, Codec::H265)));
        assert!(camera.observe(&frame(StreamId::AUDIO, Codec::Aac)));
        for id in 2..10 {
            camera.observe(&frame(StreamId::new(id).expect("id"), Codec::Metadata));
        }
        let ControlMessage::Catalog { streams } = camera.message() else {
            panic!("not a catalog")
        };
        assert_eq!(streams[0].tracks.len(), MAX_STREAM_TRACKS);
        assert!(camera.message().encode().is_ok());
        let Err(ControlMessage::Status { reason, .. }) = camera.answer("", &[Codec::H264]) else {
            panic!("H.265 offered to an H.264-only viewer")
        };
        assert_eq!(reason, StatusReason::CodecNotAccepted);
        assert_eq!(camera.answer("main", &VIEWER_CODECS), Ok(MAIN_STREAMS));
        assert!(camera.answer("sub", &VIEWER_CODECS).is_err());
    }

    #[test]
    fn a_camera_with_a_sub_stream_offers_both_and_each_viewer_keeps_its_own() {
        let mut camera = CameraCatalog::with_sub();
        assert!(camera.observe(&frame(StreamId::VIDEO, Codec::H265)));
        assert!(camera.observe(&to_sub_stream(frame(StreamId::VIDEO, Codec::H264))));
        assert!(camera.observe(&to_sub_stream(frame(StreamId::AUDIO, Codec::G711A))));
        let ControlMessage::Catalog { streams } = camera.message() else {
            panic!("not a catalog")
        };
        let names: Vec<&str> = streams.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["main", "sub"]);
        assert_eq!(
            streams[1].tracks,
            [
                Track {
                    stream: SUB_VIDEO,
                    codec: Codec::H264
                },
                Track {
                    stream: SUB_AUDIO,
                    codec: Codec::G711A
                },
            ]
        );
        assert_eq!(camera.answer("sub", &[Codec::H264]), Ok(SUB_STREAMS));
        assert_eq!(camera.answer("", &VIEWER_CODECS), Ok(MAIN_STREAMS));
        assert!(camera.answer("", &[Codec::H264]).is_err(), "main is H.265");
        assert!(camera.answer("third", &VIEWER_CODECS).is_err());
        // A sub viewer drops what arrives of main; a main viewer what arrives of sub.
        assert_eq!(
            other_streams(&streams, "sub"),
            StreamSet::of(&[StreamId::VIDEO])
        );
        assert_eq!(other_streams(&streams, ""), SUB_STREAMS);
        assert_eq!(other_streams(&streams, "main"), SUB_STREAMS);
        assert!(MAIN_STREAMS.intersection(SUB_STREAMS).is_empty());
    }

    #[test]
    fn main_follows_the_slowest_viewer_of_main_only() {
        let (a, b, c) = (PeerId(1), PeerId(2), PeerId(3));
        let mut target = MainTarget::default();
        assert_eq!(target.target(a, 4_000_000), Some(Some(4_000_000)));
        assert_eq!(target.target(b, 1_000_000), Some(Some(1_000_000)));
        // The slow viewer moves to sub: main is back at the other's target.
        assert_eq!(target.chose(b, true), Some(Some(4_000_000)));
        assert_eq!(
            target.target(b, 300_000),
            None,
            "sub's target is not main's"
        );
        assert_eq!(target.chose(c, false), None, "no target reported yet");
        assert_eq!(target.target(c, 2_000_000), Some(Some(2_000_000)));
        assert_eq!(target.closed(c), Some(Some(4_000_000)));
        assert_eq!(target.closed(a), Some(None), "nobody left on main");
        assert_eq!(target.chose(b, false), Some(Some(300_000)));
        assert_eq!(target.closed(b), Some(None));
        assert!(target.viewers.is_empty());
    }

    #[test]
    fn codec_lists_parse() {
        assert_eq!(
            parse_codecs("H264, aac,h264"),
            Ok(vec![Codec::H264, Codec::Aac])
        );
        assert!(parse_codecs("h266").is_err());
        assert_eq!(parse_codecs(""), Ok(vec![]));
    }
}
