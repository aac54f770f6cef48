//! Pieces shared by the example peers (`camera`, `viewer`, `demo`) and their tests:
//! a loopback deployment ([`local::LocalNetwork`]), H.264 access-unit splitting
//! ([`annexb`]), AAC/ADTS framing ([`audio`]), H.265 SPS fields ([`hevc`]), MP4 writing
//! ([`mp4`]), frame sources ([`source`]), keeping a camera's offered bitrate at the
//! viewers' target ([`rate`]: frame dropping; [`switch`]: an RTSP camera's main/sub
//! stream) and the camera's identity on disk ([`identity`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod annexb;
pub mod audio;
pub mod hevc;
pub mod identity;
pub mod local;
pub mod mp4;
pub mod negotiation;
pub mod rate;
pub mod rtsp;
pub mod source;
pub mod switch;
