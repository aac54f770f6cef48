//! The Sightwire endpoint: a camera that can be added by its ID and watched from
//! anywhere, and the viewer that watches it.
//!
//! One UDP socket per endpoint carries everything — the Noise session with the
//! rendezvous, punch checks, the peer handshake and encrypted media — demultiplexed by
//! the first byte. A tokio task drives the sans-IO cores (`sightwire-session`,
//! `sightwire-punch`, `sightwire-media`) with one clock and one timer:
//!
//! - [`Device`] registers with the rendezvous under its certified ID (keeping the
//!   registration alive and re-registering after a rendezvous restart), accepts the
//!   viewers the rendezvous introduces, decides itself who may watch (password proof or
//!   trusted key), and sends each frame to every authorized viewer, fragmenting it once.
//!   It keeps the newest GOP of each video stream, so a viewer that joins mid-GOP
//!   decodes a picture at once and catches up to live ([`GopCacheConfig`]).
//! - [`Viewer::connect`] resolves the device ID (or QR URI) at the rendezvous, checks the
//!   device's ID certificate (and the pinned key fingerprint), punches a direct path or
//!   falls back to the relay, runs the Noise `IK` handshake against the certified key and
//!   proves the password. Frames and path changes then arrive as [`Event`]s; relay →
//!   direct upgrades happen underneath without the stream stopping.
//!
//! What it is not for: it does not encode or decode video, and it does not run the
//! rendezvous or relay servers (`sightwire-rendezvous`, `sightwire-relay`). The flow is
//! written down in `spec/endpoint.md`.
//!
//! ```no_run
//! use sightwire::{
//!     Credentials, Event, IssuerPublicKey, PublicKey, RendezvousServer, ServerAddr,
//!     StaticKeypair, Target, TrustedIssuers, Viewer, ViewerConfig,
//! };
//!
//! # async fn watch(issuer: IssuerPublicKey, server_key: PublicKey) -> Result<(), Box<dyn std::error::Error>> {
//! // An IP address works too: "203.0.113.1:3478".
//! let address: ServerAddr = "rendezvous.example.com:3478".parse()?;
//! let mut rendezvous = RendezvousServer::new(address, server_key);
//! rendezvous.stream_port = Some(443);
//! let config = ViewerConfig::new(
//!     StaticKeypair::generate(&mut rand::rngs::OsRng),
//!     rendezvous,
//!     TrustedIssuers::single(issuer),
//! );
//! // What the person typed, or scanned from the label.
//! let target: Target = "1C:C3:16:AB:CD:EF".parse()?;
//! let mut viewer = Viewer::connect(config, target, Credentials::password("admin123")).await?;
//! while let Some(event) = viewer.next_event().await {
//!     match event {
//!         Event::Frame { frame, .. } => println!("{} bytes", frame.frame.data.len()),
//!         Event::PathChanged { path, .. } => println!("now {}", path.kind_name()),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Public types can grow without a breaking release: new ones are `#[non_exhaustive]`
// unless the wire fixes them (CHANGELOG.md, "API stability").
#![warn(clippy::exhaustive_structs, clippy::exhaustive_enums)]

mod config;
mod driver;
mod endpoint;
mod error;
mod events;
pub mod nodes;
pub mod proto;

pub use config::{
    Credentials, DEFAULT_CONNECT_TIMEOUT, DEFAULT_GOP_CACHE_BYTES, DEFAULT_GOP_CACHE_FRAMES,
    DEFAULT_LATENCY_BUDGET, DEFAULT_MAX_VIEWERS, DEFAULT_SOCKET_BUFFER_BYTES, DEFAULT_STREAM_PORT,
    DeviceConfig, DeviceIdentity, GopCacheConfig, PathPolicy, RendezvousServer, Target,
    ViewerConfig, default_media_config,
};
pub use driver::RESOLVE_TIMEOUT;
pub use endpoint::{COMMAND_QUEUE, Device, EVENT_QUEUE, SocketBuffers, Viewer, ViewerEndpoint};
pub use error::{ConnectError, EndpointStopped, ResolveError, SocketError};
pub use events::{
    Event, FrameError, Path, PeerClosedReason, PeerId, PeerStats, Transport, path_kind_name,
};
pub use nodes::{NodeName, RendezvousNodes};
pub use sightwire_media::{
    Codec, DEFAULT_MAX_FRAME_SIZE, Frame, PacketizeError, ReceivedFrame, SendError,
    Stats as MediaStats, StreamId, StreamSet,
};
pub use sightwire_punch::PathKind;
// What the constructors and errors above take and give, so an application needs no
// other sightwire crate to build a device or a viewer.
pub use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint};
pub use sightwire_media::Config as MediaConfig;
pub use sightwire_session::auth::AuthRejection;
pub use sightwire_session::{PublicKey, StaticKeypair};
pub use sightwire_signal::ErrorCode;
pub use sightwire_signal::cert::{IdCertificate, IssuerPublicKey, TrustedIssuers};
pub use sightwire_signal::server_addr::{HostPort, ServerAddr, ServerAddrError};
