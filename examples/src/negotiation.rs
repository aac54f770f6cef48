//! Stream and codec choice between the example camera and viewer (`spec/control.md`):
//! codec names as people type them, and the one rule both sides apply to a catalog — the
//! chosen stream must exist and its codecs must be ones the viewer takes.

use sightwire::{Codec, Frame};
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

/// The camera's side: its one stream (`main`), whose tracks are learnt from the frames
/// it sends, and its answer to a viewer's SELECT.
#[derive(Debug, Clone)]
pub struct CameraCatalog {
    main: CatalogStream,
}

impl Default for CameraCatalog {
    fn default() -> Self {
        Self {
            main: CatalogStream {
                name: "main".into(),
                tracks: Vec::new(),
            },
        }
    }
}

impl CameraCatalog {
    /// Notes a frame's stream and codec; true when that changed the catalog (send it
    /// again). A track changes codec in place; at most [`MAX_STREAM_TRACKS`] are kept.
    pub fn observe(&mut self, frame: &Frame) -> bool {
        let tracks = &mut self.main.tracks;
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

    /// The CATALOG message.
    pub fn message(&self) -> ControlMessage {
        ControlMessage::Catalog {
            streams: vec![self.main.clone()],
        }
    }

    /// The STATUS that refuses a viewer's SELECT, or `None` when the camera can serve it.
    pub fn answer(&self, stream: &str, accepts: &[Codec]) -> Option<ControlMessage> {
        let refusal = choose(std::slice::from_ref(&self.main), stream, accepts).err()?;
        Some(ControlMessage::Status {
            state: SourceState::Running,
            reason: refusal.reason(),
            text: refusal.to_string(),
        })
    }
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

    #[test]
    fn the_camera_learns_its_tracks_and_refuses_what_a_viewer_cannot_take() {
        let mut camera = CameraCatalog::default();
        let frame = |stream, codec| {
            Frame::new(stream, codec, 0, bytes::Bytes::from_static(&[1])).with_keyframe(true)
        };
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
        let Some(ControlMessage::Status { reason, .. }) = camera.answer("", &[Codec::H264]) else {
            panic!("H.265 offered to an H.264-only viewer")
        };
        assert_eq!(reason, StatusReason::CodecNotAccepted);
        assert_eq!(camera.answer("main", &VIEWER_CODECS), None);
        assert!(camera.answer("sub", &VIEWER_CODECS).is_some());
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
