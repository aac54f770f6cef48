//! What an endpoint needs to know before it starts.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use sightwire_id::{DeviceId, DeviceUri, KeyFingerprint};
use sightwire_media::{Config as MediaConfig, StreamSet};
use sightwire_session::{PublicKey, StaticKeypair};
use sightwire_signal::cert::{IdCertificate, TrustedIssuers};
use sightwire_signal::server_addr::ServerAddr;

use crate::nodes::RendezvousNodes;

/// Which paths an endpoint may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PathPolicy {
    /// LAN, direct or relay: the best that works.
    #[default]
    Any,
    /// Only the relay: no host candidates are advertised, the peer's direct candidates
    /// are ignored, and no direct checks are sent or answered, so no packet travels
    /// directly between the two. (The rendezvous still tells each side the other's
    /// server-reflexive address.)
    RelayOnly,
}

/// The rendezvous server: where it is and the static key pinned for it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RendezvousServer {
    /// Its UDP address, or a host name and port: the driver resolves the name, every
    /// address is tried, and the name is resolved again when the server stops answering
    /// (`spec/endpoint.md` §"Server addresses").
    pub address: ServerAddr,
    /// Its static X25519 public key; a server that cannot prove it is refused.
    pub public_key: PublicKey,
    /// Its TCP/TLS stream port, used only when UDP gets no answer (`spec/stream.md`);
    /// `None`: no fallback. Deployments use [`DEFAULT_STREAM_PORT`].
    pub stream_port: Option<u16>,
}

impl RendezvousServer {
    /// The rendezvous at `address` (an IP address or a host name, with the port), which
    /// must prove it holds `public_key`; no TCP/TLS fallback until
    /// [`RendezvousServer::stream_port`] is set.
    pub fn new(address: impl Into<ServerAddr>, public_key: PublicKey) -> Self {
        Self {
            address: address.into(),
            public_key,
            stream_port: None,
        }
    }
}

/// The stream port of the rendezvous and the relay in a deployment: HTTPS's, which
/// networks that block UDP let through.
pub const DEFAULT_STREAM_PORT: u16 = 443;

/// A device's identity: its static key pair and the ID certificate the operator issued
/// for it.
#[non_exhaustive]
pub struct DeviceIdentity {
    /// The device's static key pair (generated at first boot, never leaves the device).
    pub keypair: StaticKeypair,
    /// "Device ID X belongs to device key K", signed by the operator's issuer.
    pub certificate: IdCertificate,
}

impl DeviceIdentity {
    /// The identity of the device holding `keypair`, certified by `certificate`.
    pub fn new(keypair: StaticKeypair, certificate: IdCertificate) -> Self {
        Self {
            keypair,
            certificate,
        }
    }
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("device_id", &self.certificate.device_id())
            .field("keypair", &"redacted")
            .finish()
    }
}

/// Configuration of a [`crate::Device`].
#[derive(Debug)]
#[non_exhaustive]
pub struct DeviceConfig {
    /// Who the device is.
    pub identity: DeviceIdentity,
    /// The rendezvous to register with (with [`DeviceConfig::nodes`]: the ID's home).
    pub rendezvous: RendezvousServer,
    /// The deployment's rendezvous nodes, when there are several (`spec/multinode.md`):
    /// the device registers with its ID's home, moves to the successor when the home
    /// stops answering, and tries the home again after [`DeviceConfig::home_retry`].
    pub nodes: Option<RendezvousNodes>,
    /// With [`DeviceConfig::nodes`]: least time on the successor before the home is tried
    /// again (plus up to as long again at random; doubling while the home stays away).
    /// Default [`crate::nodes::HOME_RETRY_MIN`].
    pub home_retry: Duration,
    /// Local address to bind the UDP socket to (`0.0.0.0:0` picks any port).
    pub bind: SocketAddr,
    /// The device password viewers may prove (the camera's admin password). `None`: only
    /// viewers whose keys are already trusted are admitted.
    pub password: Option<String>,
    /// Viewer static keys trusted from the start.
    pub trusted_viewers: Vec<PublicKey>,
    /// Most viewers served at once; further connect offers are refused.
    pub max_viewers: usize,
    /// Media framing parameters.
    pub media: MediaConfig,
    /// Which paths to viewers may be used.
    pub path_policy: PathPolicy,
    /// UDP socket buffer size to ask the kernel for, each way (it grants at most its
    /// `net.core.rmem_max`/`wmem_max`; see [`crate::Device::socket_buffers`]).
    pub socket_buffer_bytes: usize,
    /// Limits of the GOP cache a viewer joining mid-GOP is served from
    /// (`spec/endpoint.md` §4.1).
    pub gop_cache: GopCacheConfig,
    /// The streams a new viewer gets until [`crate::Device::subscribe`] chooses others
    /// (`spec/endpoint.md` §4.2); default: all of them.
    pub default_streams: StreamSet,
}

impl DeviceConfig {
    /// A configuration with the defaults: any local port, password auth, at most
    /// [`DEFAULT_MAX_VIEWERS`] viewers.
    pub fn new(identity: DeviceIdentity, rendezvous: RendezvousServer) -> Self {
        Self {
            identity,
            rendezvous,
            nodes: None,
            home_retry: crate::nodes::HOME_RETRY_MIN,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            password: None,
            trusted_viewers: Vec::new(),
            max_viewers: DEFAULT_MAX_VIEWERS,
            media: default_media_config(),
            path_policy: PathPolicy::Any,
            socket_buffer_bytes: DEFAULT_SOCKET_BUFFER_BYTES,
            gop_cache: GopCacheConfig::default(),
            default_streams: StreamSet::ALL,
        }
    }
}

impl DeviceConfig {
    /// A device of a deployment with several rendezvous nodes: it registers with its
    /// ID's home among `nodes` (`spec/multinode.md` §3); otherwise the defaults of
    /// [`DeviceConfig::new`].
    pub fn with_nodes(identity: DeviceIdentity, nodes: RendezvousNodes) -> Self {
        let id = identity.certificate.device_id();
        let home = nodes.servers_for(id).swap_remove(0);
        let mut config = Self::new(identity, home);
        config.nodes = Some(nodes);
        config
    }
}

/// Limits of a device's GOP cache, per video stream (`spec/endpoint.md` §4.1): the
/// newest keyframe and the frames after it that later frames may refer to. When a GOP
/// outgrows either limit the cache lets go of it and caches nothing more until the next
/// keyframe (a chain with a hole would be no use). A zero limit turns the cache off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GopCacheConfig {
    /// Most payload bytes held per stream. Default [`DEFAULT_GOP_CACHE_BYTES`].
    pub max_bytes: usize,
    /// Most frames held per stream. Default [`DEFAULT_GOP_CACHE_FRAMES`].
    pub max_frames: usize,
}

impl GopCacheConfig {
    /// No cache: a viewer joining mid-GOP waits for the encoder's next keyframe.
    pub const DISABLED: GopCacheConfig = GopCacheConfig {
        max_bytes: 0,
        max_frames: 0,
    };
}

impl Default for GopCacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_GOP_CACHE_BYTES,
            max_frames: DEFAULT_GOP_CACHE_FRAMES,
        }
    }
}

/// Default for [`GopCacheConfig::max_bytes`]: 8 MiB, a 4 s GOP of a 16 Mbit/s 4K H.264
/// stream (8 s at 8 Mbit/s), per stream.
pub const DEFAULT_GOP_CACHE_BYTES: usize = 8 << 20;

/// Default for [`GopCacheConfig::max_frames`]: 300, 10 s at 30 fps or 5 s at 60 fps.
pub const DEFAULT_GOP_CACHE_FRAMES: usize = 300;

/// Default for [`DeviceConfig::socket_buffer_bytes`]: 4 MiB, a quarter of a second of
/// a 100 Mbit/s burst (a keyframe to several viewers) instead of the kernel's ~200 KiB.
pub const DEFAULT_SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Default for [`DeviceConfig::max_viewers`].
pub const DEFAULT_MAX_VIEWERS: usize = 16;

/// How long [`crate::Viewer::connect`] waits for the whole connect (lookup, punching or
/// relay, handshake and authorization) by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Configuration of a [`crate::Viewer`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ViewerConfig {
    /// The viewer's own static key pair (devices may remember it as trusted).
    pub keypair: StaticKeypair,
    /// The rendezvous to ask (ignored when [`ViewerConfig::nodes`] is set).
    pub rendezvous: RendezvousServer,
    /// The deployment's rendezvous nodes, when there are several (`spec/multinode.md`):
    /// a camera is looked up at its ID's home, and at the successor when the home
    /// cannot introduce it. A [`crate::ViewerEndpoint`] then holds one socket and one
    /// rendezvous session per node.
    pub nodes: Option<RendezvousNodes>,
    /// Issuers whose ID certificates the viewer believes.
    pub issuers: TrustedIssuers,
    /// Local address to bind the UDP socket to.
    pub bind: SocketAddr,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// Ask for a relay allocation up front (the fallback when no direct path works).
    pub want_relay: bool,
    /// Media framing parameters.
    pub media: MediaConfig,
    /// Which paths to the device may be used.
    pub path_policy: PathPolicy,
    /// UDP socket buffer size to ask the kernel for, each way.
    pub socket_buffer_bytes: usize,
}

impl ViewerConfig {
    /// A configuration with the defaults.
    pub fn new(
        keypair: StaticKeypair,
        rendezvous: RendezvousServer,
        issuers: TrustedIssuers,
    ) -> Self {
        Self {
            keypair,
            rendezvous,
            nodes: None,
            issuers,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            want_relay: true,
            media: default_media_config(),
            path_policy: PathPolicy::Any,
            socket_buffer_bytes: DEFAULT_SOCKET_BUFFER_BYTES,
        }
    }
}

impl ViewerConfig {
    /// This configuration for one node: the same keys, issuers and settings, `server` as
    /// the rendezvous, no node list.
    pub(crate) fn for_node(&self, server: RendezvousServer) -> Self {
        Self {
            keypair: self.keypair.clone(),
            rendezvous: server,
            nodes: None,
            issuers: self.issuers.clone(),
            bind: self.bind,
            connect_timeout: self.connect_timeout,
            want_relay: self.want_relay,
            media: self.media.clone(),
            path_policy: self.path_policy,
            socket_buffer_bytes: self.socket_buffer_bytes,
        }
    }

    /// A viewer of a deployment with several rendezvous nodes; otherwise the defaults
    /// of [`ViewerConfig::new`].
    pub fn with_nodes(
        keypair: StaticKeypair,
        nodes: RendezvousNodes,
        issuers: TrustedIssuers,
    ) -> Self {
        let first = nodes.iter().next().map(|(_, server)| server.clone());
        let first = first.expect("a node list is never empty");
        let mut config = Self::new(keypair, first, issuers);
        config.nodes = Some(nodes);
        config
    }
}

/// Which device to watch: an ID a person typed, or a scanned label that also pins the
/// device's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Just the ID: the device key comes from its ID certificate.
    Id(DeviceId),
    /// The ID and the fingerprint of the device key (QR code on the label): the key in
    /// the certificate must match it.
    Uri(DeviceUri),
    /// The ID and the exact device key (a device the viewer has watched before).
    Pinned(DeviceId, PublicKey),
}

impl Target {
    /// The device ID.
    pub fn device_id(&self) -> DeviceId {
        match self {
            Target::Id(id) | Target::Pinned(id, _) => *id,
            Target::Uri(uri) => uri.id(),
        }
    }

    /// Whether `key` is acceptable as this device's static key.
    pub fn accepts_key(&self, key: &PublicKey) -> bool {
        match self {
            Target::Id(_) => true,
            Target::Uri(uri) => uri.fingerprint().matches(key),
            Target::Pinned(_, pinned) => pinned == key,
        }
    }

    /// The pinned fingerprint, if any.
    pub fn fingerprint(&self) -> Option<KeyFingerprint> {
        match self {
            Target::Id(_) => None,
            Target::Uri(uri) => Some(uri.fingerprint()),
            Target::Pinned(_, key) => Some(KeyFingerprint::of_public_key(key)),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = sightwire_id::UriError;

    /// A `sightwire:` URI (also pasted with spaces or invisible characters around it),
    /// or anything [`DeviceId`] parses, including what phones type (`spec/id.md` §2).
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if DeviceUri::has_scheme(input) {
            input.parse().map(Target::Uri)
        } else {
            input
                .parse()
                .map(Target::Id)
                .map_err(sightwire_id::UriError::InvalidId)
        }
    }
}

/// How the viewer proves it may watch.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Credentials {
    /// The device password, if the viewer knows it.
    pub password: Option<String>,
    /// Ask the device to remember this viewer's key after a successful password proof.
    pub remember: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("password", &self.password.as_ref().map(|_| "redacted"))
            .field("remember", &self.remember)
            .finish()
    }
}

impl Credentials {
    /// Prove the device password.
    pub fn password(password: impl Into<String>) -> Self {
        Self {
            password: Some(password.into()),
            remember: true,
        }
    }

    /// Rely on the device already trusting this viewer's key.
    pub fn trusted_key() -> Self {
        Self::default()
    }
}

/// Latency budget of the endpoint's media: long enough for about three NACK rounds at
/// the 100–150 ms round trips of two home access links, short enough for live viewing
/// and PTZ (the media crate's 200 ms default allows one round there; measured in the
/// NAT lab's 5 % loss test, spec/lab.md).
pub const DEFAULT_LATENCY_BUDGET: Duration = Duration::from_millis(500);

/// Media parameters that leave room for the relay's 9-byte header inside the IPv6
/// minimum MTU, so one packet size works on every path.
pub fn default_media_config() -> MediaConfig {
    let mut config = MediaConfig::default();
    config.max_packet_size =
        sightwire_media::DEFAULT_MAX_PACKET_SIZE - sightwire_relay_wire::DATA_HEADER_LEN;
    config.latency_budget = DEFAULT_LATENCY_BUDGET;
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightwire_id::{ParseError, UriError};

    #[test]
    fn targets_typed_or_pasted_on_a_phone() {
        let id: DeviceId = "1C:C3:16:AB:CD:EF".parse().unwrap();
        // Full-width, with a zero-width space pasted along.
        let typed: Target = "１Ｃ：Ｃ３：１６：ＡＢ：ＣＤ：ＥＦ\u{200B}"
            .parse()
            .unwrap();
        assert_eq!(typed, Target::Id(id));
        // A label URI pasted from a chat app, BOM and bidi mark in front.
        let fingerprint = KeyFingerprint::from_bytes([0xAB; 16]);
        let uri = DeviceUri::new(id, fingerprint);
        let pasted: Target = format!("\u{FEFF}\u{200E}{uri}\u{3000}").parse().unwrap();
        assert_eq!(pasted, Target::Uri(uri));
        assert_eq!(pasted.fingerprint(), Some(fingerprint));
        // A look-alike is refused with the character and what it resembles.
        assert_eq!(
            "1C:C3:16:\u{0410}B:CD:EF".parse::<Target>(),
            Err(UriError::InvalidId(ParseError::LookAlike {
                ch: '\u{0410}',
                position: 10,
                looks_like: 'A'
            }))
        );
    }
}
