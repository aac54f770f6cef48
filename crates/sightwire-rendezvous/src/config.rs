//! The server's TOML configuration file.
//!
//! ```toml
//! listen = "0.0.0.0:7700"
//! static_key = "rendezvous.key"          # hex X25519 private key (`sightwire-rendezvous keygen`)
//! registry = "registry.sqlite"            # SQLite, the embedded default; or PostgreSQL,
//! # registry = { postgres = "host=/var/run/postgresql user=sightwire dbname=sightwire", connections = 4 }
//! trusted_issuers = ["<hex Ed25519 public key>"]
//! socket_buffer_bytes = 8388608          # optional; UDP receive/send buffers asked for
//! metrics_listen = "127.0.0.1:9700"      # optional; /metrics, /healthz, /readyz (off if absent)
//!
//! [relay]                                 # optional
//! address = "198.51.100.1:3478"           # or "relay.example.com:3478", resolved at start
//! grant_key = "relay-grant.key"           # hex 32-byte secret shared with the relay
//! stream_port = 443                       # the relay's TCP/TLS port told in grants; 0: none
//!
//! [stream]                                # optional: TCP/TLS for endpoints without UDP
//! port = 443                              # on the `listen` IP; 0: off (spec/stream.md)
//! cert = "tls.crt"                        # optional PEM chain and key; default self-signed
//! key = "tls.key"
//! max_connections = 1024
//! idle_timeout_ms = 60000
//!
//! [deployment]                            # optional: one node of several (spec/multinode.md)
//! node = "rv1"                            # this node's name in `nodes`
//! nodes = ["rv1", "rv2", "rv3"]           # every node's name, the list devices hash over
//!
//! [limits]                                # optional; defaults in CoreConfig
//! keepalive_interval_ms = 20000
//! presence_ttl_ms = 60000
//! max_presence = 1000000
//! max_sessions = 1065536                  # Noise sessions: max_presence + 65536 viewers
//! under_load_initiations_per_second = 256 # cookie replies above it (spec/operations.md §2)
//! ```

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sightwire_signal::cert::{IssuerPublicKey, TrustedIssuers};
use sightwire_signal::grant::RelayGrantKey;
use sightwire_signal::server_addr::{ServerAddr, ServerAddrError};

use crate::Rate;
use sightwire_signal::nodes::{NodeList, NodeListError, NodeName};

use crate::core::{CoreConfig, Deployment, RelayConfig};

/// The file's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// File holding the server's static X25519 private key (64 hex digits).
    pub static_key: PathBuf,
    /// Where the registry is: a SQLite file, or a PostgreSQL database.
    pub registry: RegistrySetting,
    /// Ed25519 public keys (64 hex digits each) whose certificates are accepted.
    pub trusted_issuers: Vec<String>,
    /// The relay, if any.
    pub relay: Option<RelaySection>,
    /// Overrides of the core's limits and timers.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The TCP/TLS stream listener (`spec/stream.md`).
    #[serde(default)]
    pub stream: StreamSection,
    /// UDP socket buffer size asked for, each way (default
    /// [`DEFAULT_SERVER_SOCKET_BUFFER_BYTES`]: 8 MiB). The kernel caps it at
    /// `net.core.rmem_max`/`wmem_max`; the server logs what it granted.
    pub socket_buffer_bytes: Option<usize>,
    /// TCP address of the operator's HTTP endpoints (`/metrics`, `/healthz`,
    /// `/readyz`; `spec/operations.md`). Absent: none (the command line's
    /// `--metrics-listen` can set it).
    pub metrics_listen: Option<SocketAddr>,
    /// The deployment's nodes, when this is one of several (`spec/multinode.md`).
    pub deployment: Option<DeploymentSection>,
}

/// `[deployment]`: the names of the deployment's nodes and this node's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DeploymentSection {
    /// This node's name; it must be in `nodes`.
    pub node: String,
    /// Every node's name (the same list, in any order, on every node, device and
    /// viewer); at most [`sightwire_signal::nodes::MAX_NODES`].
    pub nodes: Vec<String>,
}

impl DeploymentSection {
    /// The checked list and this node's place in it.
    pub fn deployment(&self) -> Result<Deployment, ConfigError> {
        let names = self
            .nodes
            .iter()
            .map(|name| NodeName::new(name).map(|name| (name, ())))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::Nodes)?;
        let nodes = NodeList::new(names).map_err(ConfigError::Nodes)?;
        let this = NodeName::new(&self.node).map_err(ConfigError::Nodes)?;
        Deployment::new(nodes, &this).ok_or_else(|| ConfigError::NodeNotListed {
            node: self.node.clone(),
        })
    }
}

/// `registry`: a path (SQLite) or `{ postgres = "...", connections = N }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum RegistrySetting {
    /// The SQLite file (feature `sqlite`, the default).
    Sqlite(PathBuf),
    /// A PostgreSQL database (feature `postgres`) that several nodes may share.
    Postgres(PostgresSection),
}

/// `registry = { postgres = "...", connections = N }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PostgresSection {
    /// libpq connection parameters (`host=... user=... dbname=...`) or a
    /// `postgresql://` URL. No TLS: use a Unix socket or loopback (spec/registration.md
    /// §6.2).
    pub postgres: String,
    /// Connections (registry worker threads); default [`DEFAULT_POSTGRES_CONNECTIONS`].
    pub connections: Option<usize>,
}

/// Registry connections a node opens to PostgreSQL by default: queries in flight at
/// once (each worker waits one round trip per query).
pub const DEFAULT_POSTGRES_CONNECTIONS: usize = 4;

/// Most registry connections a node may open.
pub const MAX_POSTGRES_CONNECTIONS: usize = 64;

pub use sightwire_ops::udp::DEFAULT_SERVER_SOCKET_BUFFER_BYTES;

/// The stream port used when `[stream] port` (or `[relay] stream_port`) is not given.
pub const DEFAULT_STREAM_PORT: u16 = 443;

/// `[stream]`; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StreamSection {
    /// TCP port on the `listen` IP; 0 turns the listener off. Not given: 443, and a
    /// server that cannot bind it (not root) warns and serves UDP only.
    pub port: Option<u16>,
    /// PEM certificate chain (default: a fresh self-signed certificate; endpoints do not
    /// verify it).
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Most connections at once.
    pub max_connections: Option<usize>,
    /// A connection with no datagram for this long is closed, ms.
    pub idle_timeout_ms: Option<u64>,
}

/// `[relay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RelaySection {
    /// The relay's public address given to peers: `a.b.c.d:port`, `[v6]:port`, or
    /// `host:port`. Grants carry an IP address, so a name is resolved once, when the
    /// configuration is loaded ([`ServerConfig::core`]); the first IPv4 address is used
    /// (what endpoints on IPv4 sockets can reach), else the first. A relay that moves
    /// needs a restart of the rendezvous.
    pub address: String,
    /// File holding the grant key (64 hex digits).
    pub grant_key: PathBuf,
    /// The relay's TCP/TLS stream port, told to endpoints in grants; 0: none. Default
    /// [`DEFAULT_STREAM_PORT`].
    pub stream_port: Option<u16>,
}

/// `[limits]`; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsSection {
    /// Keepalive interval told to devices, ms.
    pub keepalive_interval_ms: Option<u64>,
    /// Answer keepalive probes after the delay they ask for (default true; false
    /// behaves as a rendezvous that predates probes).
    pub keepalive_probes: Option<bool>,
    /// Presence lifetime without keepalive, ms.
    pub presence_ttl_ms: Option<u64>,
    /// Connect attempt lifetime, ms.
    pub connect_ttl_ms: Option<u64>,
    /// Margin of each peer's punch start, ms (spec/signaling.md §2).
    pub punch_start_delay_ms: Option<u64>,
    /// Relay grant lifetime, s.
    pub relay_grant_ttl_secs: Option<u64>,
    /// Most online devices.
    pub max_presence: Option<usize>,
    /// Most pending connect attempts.
    pub max_pending_connects: Option<usize>,
    /// Most sources per rate limiter.
    pub max_rate_sources: Option<usize>,
    /// Lookups per second per source.
    pub lookups_per_second: Option<u32>,
    /// Lookup burst per source.
    pub lookup_burst: Option<u32>,
    /// Registrations per second per source.
    pub registers_per_second: Option<u32>,
    /// Registration burst per source.
    pub register_burst: Option<u32>,
    /// Refuse certificates not recorded in the registry.
    pub require_issued: Option<bool>,
    /// Most requests waiting for the registry at once.
    pub max_pending_lookups: Option<usize>,
    /// How long a request waits for the registry before `INTERNAL`, ms.
    pub registry_timeout_ms: Option<u64>,
    /// Most Noise sessions (devices and viewers together); default `max_presence` +
    /// [`VIEWER_SESSIONS`] ([`DEFAULT_MAX_SESSIONS`] with the default presence bound).
    pub max_sessions: Option<usize>,
    /// Handshake initiations per second above which the session layer is "under load"
    /// and answers with cookies (`spec/session.md` §4, `spec/operations.md` §2); default
    /// the session layer's [`sightwire_session::UNDER_LOAD_INITIATIONS_PER_SECOND`]
    /// (256/s). The half-open bounds follow a higher value.
    pub under_load_initiations_per_second: Option<u32>,
}

/// Sessions the default session bound keeps beside one per online device: viewers
/// asking for devices (as many as connect attempts may be pending).
pub const VIEWER_SESSIONS: usize = crate::DEFAULT_MAX_PENDING_CONNECTS;

/// Default bound on the server's Noise sessions: every online device holds one, and
/// viewers need theirs ([`VIEWER_SESSIONS`]). Sessions are stored compactly
/// ([`sightwire_session::Footprint::Compact`], `spec/session.md` §6).
pub const DEFAULT_MAX_SESSIONS: usize = crate::DEFAULT_MAX_PRESENCE + VIEWER_SESSIONS;

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is invalid.
    #[error("invalid configuration")]
    Toml(#[from] toml::de::Error),
    /// A key is not 64 hex digits or not a valid key.
    #[error("invalid key in {what}")]
    Key {
        /// Which key.
        what: String,
    },
    /// No trusted issuer, or too many.
    #[error("trusted_issuers must list between 1 and {max} keys", max = sightwire_signal::cert::MAX_TRUSTED_ISSUERS)]
    Issuers,
    /// The relay address is neither an address nor a valid `host:port`.
    #[error("invalid relay address {address:?}")]
    RelayAddress {
        /// As written.
        address: String,
        /// What is wrong with it.
        #[source]
        error: ServerAddrError,
    },
    /// The relay's host name did not resolve.
    #[error("cannot resolve the relay address {address}")]
    RelayUnresolved {
        /// As written.
        address: String,
        /// The resolver's error (`None`: it resolved to no address).
        #[source]
        source: Option<std::io::Error>,
    },
    /// `[deployment]`: a node name or the node list is invalid.
    #[error("invalid [deployment] node list")]
    Nodes(#[source] NodeListError),
    /// `[deployment] node` is not one of `nodes`.
    #[error("[deployment] node {node:?} is not in nodes")]
    NodeNotListed {
        /// The name given.
        node: String,
    },
}

/// The relay's address for grants: `text` parsed, and resolved if it is a name (blocking:
/// this runs once, at start).
pub fn resolve_relay_address(text: &str) -> Result<SocketAddr, ConfigError> {
    let address: ServerAddr = text.parse().map_err(|error| ConfigError::RelayAddress {
        address: text.to_owned(),
        error,
    })?;
    let name = match address {
        ServerAddr::Ip(address) => return Ok(address),
        ServerAddr::Name(name) => name,
    };
    let unresolved = |source| ConfigError::RelayUnresolved {
        address: text.to_owned(),
        source,
    };
    let addresses: Vec<SocketAddr> = (name.host(), name.port())
        .to_socket_addrs()
        .map_err(|e| unresolved(Some(e)))?
        .collect();
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| unresolved(None))
}

/// Reads a file holding 32 bytes as 64 hex digits (whitespace ignored).
pub fn read_hex_key(path: &Path) -> Result<[u8; 32], ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_hex_key(text.trim()).ok_or_else(|| ConfigError::Key {
        what: path.display().to_string(),
    })
}

/// Parses 64 hex digits.
pub fn parse_hex_key(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

impl ServerConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(toml::from_str(&text)?)
    }

    /// The trusted issuer set.
    pub fn trusted_issuers(&self) -> Result<TrustedIssuers, ConfigError> {
        let mut trust = TrustedIssuers::default();
        for text in &self.trusted_issuers {
            let key = parse_hex_key(text)
                .and_then(|bytes| IssuerPublicKey::from_bytes(&bytes).ok())
                .ok_or_else(|| ConfigError::Key {
                    what: format!("trusted_issuers entry {text}"),
                })?;
            trust.add(key).map_err(|_| ConfigError::Issuers)?;
        }
        if trust.is_empty() {
            return Err(ConfigError::Issuers);
        }
        Ok(trust)
    }

    /// The session layer's configuration.
    pub fn session(&self) -> sightwire_session::Config {
        let mut config = sightwire_session::Config::default();
        let presence = self
            .limits
            .max_presence
            .unwrap_or(crate::DEFAULT_MAX_PRESENCE);
        config.max_sessions = self
            .limits
            .max_sessions
            .unwrap_or(presence.saturating_add(VIEWER_SESSIONS));
        // Cookie replies above the threshold are the server's only backpressure on
        // handshakes: they cost no DH, and the initiator comes back one round trip (or
        // one retransmission timeout) later. A node starved of CPU with the threshold
        // raised to its rekey rate collapsed under its own rekeys (benches/HISTORY.md,
        // "Rendezvous: operability and the way to 1 M"), so the default stays 256/s.
        if let Some(rate) = self.limits.under_load_initiations_per_second {
            config.under_load_initiations_per_second = rate;
        }
        // Half-open sessions last a round trip (longer on a busy node): allow a second's
        // worth of initiations at the threshold, and call it load at a quarter of that.
        let rate = usize::try_from(config.under_load_initiations_per_second).unwrap_or(usize::MAX);
        config.max_half_open = config.max_half_open.max(rate);
        config.under_load_half_open = config.under_load_half_open.max(rate / 4);
        // Up to a million mostly idle sessions: raw keys and a small replay window.
        config.footprint = sightwire_session::Footprint::Compact;
        // A client configured with another key learns it at once (spec/session.md §2.5).
        config.key_mismatch_notices_per_second = sightwire_session::KEY_MISMATCH_NOTICES_PER_SECOND;
        config
    }

    /// The core configuration (reads the relay grant key file if a relay is configured).
    pub fn core(&self) -> Result<CoreConfig, ConfigError> {
        let mut core = CoreConfig::default();
        let l = &self.limits;
        let ms = Duration::from_millis;
        if let Some(v) = l.keepalive_interval_ms {
            core.keepalive_interval = ms(v);
        }
        if let Some(v) = l.keepalive_probes {
            core.keepalive_probes = v;
        }
        if let Some(v) = l.presence_ttl_ms {
            core.presence_ttl = ms(v);
        }
        if let Some(v) = l.connect_ttl_ms {
            core.connect_ttl = ms(v);
        }
        if let Some(v) = l.punch_start_delay_ms {
            core.punch_start_delay = ms(v);
        }
        if let Some(v) = l.relay_grant_ttl_secs {
            core.relay_grant_ttl = Duration::from_secs(v);
        }
        if let Some(v) = l.max_presence {
            core.max_presence = v;
        }
        if let Some(v) = l.max_pending_connects {
            core.max_pending_connects = v;
        }
        if let Some(v) = l.max_rate_sources {
            core.max_rate_sources = v;
        }
        core.lookup_rate = Rate::new(
            l.lookups_per_second.unwrap_or(core.lookup_rate.per_second),
            l.lookup_burst.unwrap_or(core.lookup_rate.burst),
        );
        core.register_rate = Rate::new(
            l.registers_per_second
                .unwrap_or(core.register_rate.per_second),
            l.register_burst.unwrap_or(core.register_rate.burst),
        );
        if let Some(v) = l.require_issued {
            core.require_issued = v;
        }
        if let Some(v) = l.max_pending_lookups {
            core.max_pending_lookups = v;
        }
        if let Some(v) = l.registry_timeout_ms {
            core.registry_timeout = ms(v);
        }
        if let Some(section) = &self.deployment {
            core.deployment = Some(section.deployment()?);
        }
        if let Some(relay) = &self.relay {
            core.relay = Some(RelayConfig {
                address: resolve_relay_address(&relay.address)?,
                stream_port: Some(relay.stream_port.unwrap_or(DEFAULT_STREAM_PORT))
                    .filter(|port| *port != 0),
                key: RelayGrantKey::from_bytes(read_hex_key(&relay.grant_key)?),
            });
        }
        Ok(core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_configuration_parses() {
        let text = r#"
            listen = "127.0.0.1:7700"
            static_key = "rendezvous.key"
            registry = "registry.sqlite"
            trusted_issuers = ["d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"]
            [limits]
            keepalive_interval_ms = 5000
            lookups_per_second = 7
        "#;
        let config: ServerConfig = toml::from_str(text).unwrap();
        assert_eq!(config.trusted_issuers().unwrap().len(), 1);
        let core = config.core().unwrap();
        assert_eq!(core.keepalive_interval, Duration::from_secs(5));
        assert_eq!(core.lookup_rate.per_second, 7);
        assert!(core.relay.is_none());
        assert_eq!(config.session().max_sessions, DEFAULT_MAX_SESSIONS);
        assert_eq!(DEFAULT_MAX_SESSIONS, 1_000_000 + 65_536);
        assert_eq!(
            config.session().footprint,
            sightwire_session::Footprint::Compact
        );
        // The session bound follows the presence bound unless given.
        let smaller: ServerConfig = toml::from_str(&format!(
            "{text}
max_presence = 5000"
        ))
        .unwrap();
        assert_eq!(smaller.session().max_sessions, 5000 + VIEWER_SESSIONS);
        // Under load above 256 initiations/s unless configured.
        let session = config.session();
        assert_eq!(session.under_load_initiations_per_second, 256);
        assert_eq!(session.max_half_open, sightwire_session::MAX_HALF_OPEN);
        assert_eq!(
            session.under_load_half_open,
            sightwire_session::UNDER_LOAD_HALF_OPEN
        );
        let under_load: ServerConfig = toml::from_str(&format!(
            "{text}
under_load_initiations_per_second = 9"
        ))
        .unwrap();
        assert_eq!(under_load.session().under_load_initiations_per_second, 9);
        let raised: ServerConfig = toml::from_str(&format!(
            "{text}
under_load_initiations_per_second = 20000"
        ))
        .unwrap();
        let raised = raised.session();
        assert_eq!(raised.under_load_initiations_per_second, 20_000);
        assert_eq!(raised.max_half_open, 20_000);
        assert_eq!(raised.under_load_half_open, 5_000);
        assert_eq!(config.socket_buffer_bytes, None);
        assert_eq!(config.metrics_listen, None);
        assert!(core.deployment.is_none());
        let with_nodes = |section: &str| {
            toml::from_str::<ServerConfig>(&format!("{text}\n[deployment]\n{section}"))
                .unwrap()
                .core()
        };
        let deployment = with_nodes("node = \"rv2\"\nnodes = [\"rv1\", \"rv2\", \"rv3\"]")
            .unwrap()
            .deployment
            .unwrap();
        assert_eq!(deployment.this, 1);
        assert_eq!(deployment.nodes.len(), 3);
        assert!(matches!(
            with_nodes("node = \"rv4\"\nnodes = [\"rv1\", \"rv2\"]"),
            Err(ConfigError::NodeNotListed { .. })
        ));
        assert!(matches!(
            with_nodes("node = \"rv1\"\nnodes = [\"rv1\", \"rv1\"]"),
            Err(ConfigError::Nodes(NodeListError::Duplicate { .. }))
        ));
        assert!(matches!(
            with_nodes("node = \"rv1\"\nnodes = []"),
            Err(ConfigError::Nodes(NodeListError::Empty))
        ));
        let ops: ServerConfig = toml::from_str(&text.replace(
            "[limits]",
            "socket_buffer_bytes = 1048576\nmetrics_listen = \"127.0.0.1:9700\"\n[limits]",
        ))
        .unwrap();
        assert_eq!(ops.socket_buffer_bytes, Some(1 << 20));
        assert_eq!(ops.metrics_listen, Some("127.0.0.1:9700".parse().unwrap()));
        let given: ServerConfig = toml::from_str(&format!(
            "{text}
max_presence = 5000
max_sessions = 7"
        ))
        .unwrap();
        assert_eq!(given.session().max_sessions, 7);
        assert!(toml::from_str::<ServerConfig>(&format!("{text}\nbogus = 1")).is_err());
        assert_eq!(config.stream.port, None);
        let with_stream: ServerConfig = toml::from_str(&format!(
            "{text}\n[stream]\nport = 8443\nmax_connections = 3"
        ))
        .unwrap();
        assert_eq!(with_stream.stream.port, Some(8443));
        assert_eq!(with_stream.stream.max_connections, Some(3));
        assert!(
            matches!(config.registry, RegistrySetting::Sqlite(ref path) if path.as_os_str() == "registry.sqlite")
        );
    }

    #[test]
    fn registry_is_a_sqlite_path_or_a_postgres_table() {
        let text = |registry: &str| {
            format!(
                "listen = \"127.0.0.1:7700\"\nstatic_key = \"k\"\nregistry = {registry}\ntrusted_issuers = []\n[limits]\nregistry_timeout_ms = 500\nmax_pending_lookups = 9\n"
            )
        };
        let config: ServerConfig = toml::from_str(&text(
            r#"{ postgres = "host=/run/postgresql dbname=sw", connections = 8 }"#,
        ))
        .unwrap();
        match &config.registry {
            RegistrySetting::Postgres(section) => {
                assert_eq!(section.postgres, "host=/run/postgresql dbname=sw");
                assert_eq!(section.connections, Some(8));
            }
            other => panic!("{other:?}"),
        }
        let core = config.core().unwrap();
        assert_eq!(core.registry_timeout, Duration::from_millis(500));
        assert_eq!(core.max_pending_lookups, 9);
        // A typo in the table is an error, not a SQLite file named after it.
        assert!(toml::from_str::<ServerConfig>(&text(r#"{ postgress = "x" }"#)).is_err());
    }

    #[test]
    fn relay_addresses_by_ip_or_name() {
        assert_eq!(
            resolve_relay_address("198.51.100.1:3478").unwrap(),
            "198.51.100.1:3478".parse::<SocketAddr>().unwrap()
        );
        let local = resolve_relay_address("localhost:3478").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 3478, "{local}");
        // IPv4 first: what an endpoint on an IPv4 socket can reach.
        assert!(local.is_ipv4(), "{local}");
        assert!(matches!(
            resolve_relay_address("relay.example.com"),
            Err(ConfigError::RelayAddress {
                error: ServerAddrError::MissingPort,
                ..
            })
        ));
        // RFC 6761: `.invalid` never resolves.
        assert!(matches!(
            resolve_relay_address("relay.invalid:3478"),
            Err(ConfigError::RelayUnresolved { .. })
        ));
    }
}
