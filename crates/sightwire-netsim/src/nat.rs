//! NAT behaviour along the RFC 4787 axes, plus Linux conntrack.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::rng::SplitMix64;

/// Most mappings (and conntrack entries) one NAT keeps; when full, expired entries are
/// pruned and then the least recently used one is evicted.
pub const MAX_NAT_ENTRIES: usize = 4096;
/// Most remote endpoints remembered per mapping for filtering; the oldest is forgotten.
pub const MAX_CONTACTED_PER_MAPPING: usize = 64;
/// Lowest external port a NAT allocates when it does not preserve the internal port.
pub const FIRST_DYNAMIC_PORT: u16 = 20_000;

/// RFC 4787 §4.1 mapping behaviour: what decides whether an outbound packet reuses an
/// existing external port.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Mapping {
    /// One external port per internal endpoint ("cone").
    EndpointIndependent,
    /// One external port per internal endpoint and remote IP.
    AddressDependent,
    /// One external port per internal endpoint and remote IP and port ("symmetric").
    AddressAndPortDependent,
}

/// RFC 4787 §5 filtering behaviour: which inbound packets a mapping lets through.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Filtering {
    /// Anyone ("full cone").
    EndpointIndependent,
    /// Only IPs the internal endpoint has sent to through this mapping.
    AddressDependent,
    /// Only IP and port pairs the internal endpoint has sent to through this mapping.
    AddressAndPortDependent,
}

/// How a new mapping's external port is chosen.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PortAllocation {
    /// The internal port if free, else the next free port upwards.
    Preserve,
    /// A counter from [`FIRST_DYNAMIC_PORT`] upwards (predictable).
    Sequential,
    /// Uniformly random free port from [`FIRST_DYNAMIC_PORT`] up (unpredictable).
    Random,
}

/// What a Linux NAT does with an unsolicited inbound packet.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum LinuxInput {
    /// Bare `masquerade`, no input firewall: the packet is addressed to the router
    /// itself, conntrack confirms an entry for it, and that entry's tuple then collides
    /// with the local host's later outbound packet to the same remote, which masquerade
    /// therefore maps to a *different* external port.
    BareMasquerade,
    /// `ct state new drop` on the WAN input (what home routers ship): the unsolicited
    /// packet is dropped before its conntrack entry is confirmed, so nothing collides.
    CtStateNewDrop,
}

/// A NAT model.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum NatBehavior {
    /// A NAT described by the RFC 4787 axes.
    Rfc4787 {
        /// Mapping behaviour.
        mapping: Mapping,
        /// Filtering behaviour.
        filtering: Filtering,
        /// External port choice.
        ports: PortAllocation,
    },
    /// Linux netfilter `masquerade`: one conntrack entry per 5-tuple, external port
    /// preserved unless that exact tuple is taken (then a random free one), inbound
    /// allowed only as the reply direction of an entry.
    Linux(LinuxInput),
}

/// A NAT's configuration.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NatConfig {
    /// The model.
    pub behavior: NatBehavior,
    /// Whether a packet from inside to the NAT's own public address is looped back in.
    pub hairpinning: bool,
    /// Lifetime of a mapping after its last outbound packet (and of a conntrack entry).
    pub mapping_timeout: Duration,
}

impl NatConfig {
    /// A NAT with the given behaviour, hairpinning off and a 30 s mapping timeout (the
    /// Linux default for unreplied UDP, and the short end of home routers).
    pub fn new(behavior: NatBehavior) -> Self {
        NatConfig {
            behavior,
            hairpinning: false,
            mapping_timeout: Duration::from_secs(30),
        }
    }

    /// Same, with hairpinning switched on or off.
    pub fn with_hairpinning(mut self, on: bool) -> Self {
        self.hairpinning = on;
        self
    }

    /// Same, with another mapping timeout.
    pub fn with_mapping_timeout(mut self, timeout: Duration) -> Self {
        self.mapping_timeout = timeout;
        self
    }
}

#[derive(Clone, Debug)]
struct Entry {
    internal: SocketAddr,
    external_port: u16,
    /// Remote IP (ADM) or endpoint (APDM, Linux) the mapping is keyed on.
    key_remote: Option<SocketAddr>,
    /// Remote endpoints sent to (filtering).
    contacted: Vec<SocketAddr>,
    expires: Instant,
    last_used: Instant,
    /// Linux: an entry created by an unsolicited inbound packet to the router itself.
    collision: bool,
}

/// Why a NAT dropped a packet.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum NatDrop {
    /// Inbound packet with no mapping on that port (or rejected by the firewall).
    NoMapping,
    /// Inbound packet refused by the mapping's filter.
    Filtered,
    /// Inbound packet that created a Linux conntrack collision entry.
    ConntrackCollision,
    /// Hairpin packet on a NAT without hairpinning.
    NoHairpin,
    /// No free external port.
    PortsExhausted,
}

#[derive(Debug)]
pub(crate) struct NatState {
    pub(crate) public_ip: IpAddr,
    pub(crate) config: NatConfig,
    entries: Vec<Entry>,
    next_port: u16,
}

impl NatState {
    pub(crate) fn new(public_ip: IpAddr, config: NatConfig) -> Self {
        NatState {
            public_ip,
            config,
            entries: Vec::new(),
            next_port: FIRST_DYNAMIC_PORT,
        }
    }

    pub(crate) fn flush(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn entry_count(&self) -> usize {
        self.entries.len()
    }

    fn prune(&mut self, now: Instant) {
        self.entries.retain(|e| e.expires > now);
    }

    fn key_for(&self, remote: SocketAddr) -> Option<SocketAddr> {
        match self.config.behavior {
            NatBehavior::Rfc4787 {
                mapping: Mapping::EndpointIndependent,
                ..
            } => None,
            NatBehavior::Rfc4787 {
                mapping: Mapping::AddressDependent,
                ..
            } => Some(SocketAddr::new(remote.ip(), 0)),
            NatBehavior::Rfc4787 {
                mapping: Mapping::AddressAndPortDependent,
                ..
            }
            | NatBehavior::Linux(_) => Some(remote),
        }
    }

    fn port_free(&self, port: u16, remote: SocketAddr) -> bool {
        match self.config.behavior {
            // Linux only needs the full tuple to be unique.
            NatBehavior::Linux(_) => !self
                .entries
                .iter()
                .any(|e| e.external_port == port && e.key_remote == Some(remote)),
            NatBehavior::Rfc4787 { .. } => !self.entries.iter().any(|e| e.external_port == port),
        }
    }

    fn allocate(
        &mut self,
        internal: SocketAddr,
        remote: SocketAddr,
        rng: &mut SplitMix64,
    ) -> Option<u16> {
        let span = u32::from(u16::MAX - FIRST_DYNAMIC_PORT) + 1;
        let preserve = matches!(
            self.config.behavior,
            NatBehavior::Linux(_)
                | NatBehavior::Rfc4787 {
                    ports: PortAllocation::Preserve,
                    ..
                }
        );
        if preserve && self.port_free(internal.port(), remote) {
            return Some(internal.port());
        }
        let random = matches!(
            self.config.behavior,
            NatBehavior::Linux(_)
                | NatBehavior::Rfc4787 {
                    ports: PortAllocation::Random,
                    ..
                }
        );
        if random {
            for _ in 0..64 {
                let offset = u16::try_from(rng.below(u64::from(span))).unwrap_or(0);
                let port = FIRST_DYNAMIC_PORT.saturating_add(offset);
                if self.port_free(port, remote) {
                    return Some(port);
                }
            }
        }
        // Sequential search (also the fallback of the random and preserving modes);
        // bounded by the size of the port range.
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if self.next_port == u16::MAX {
                FIRST_DYNAMIC_PORT
            } else {
                self.next_port + 1
            };
            if self.port_free(port, remote) {
                return Some(port);
            }
        }
        None
    }

    fn make_room(&mut self, now: Instant) {
        if self.entries.len() >= MAX_NAT_ENTRIES {
            self.prune(now);
        }
        if self.entries.len() >= MAX_NAT_ENTRIES
            && let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
        {
            self.entries.swap_remove(oldest);
        }
    }

    /// Translates an outbound packet's source; returns the external port.
    pub(crate) fn outbound(
        &mut self,
        now: Instant,
        internal: SocketAddr,
        remote: SocketAddr,
        rng: &mut SplitMix64,
    ) -> Result<u16, NatDrop> {
        let key = self.key_for(remote);
        let timeout = self.config.mapping_timeout;
        if let Some(entry) = self.entries.iter_mut().find(|e| {
            !e.collision && e.internal == internal && e.key_remote == key && e.expires > now
        }) {
            entry.expires = now + timeout;
            entry.last_used = now;
            if !entry.contacted.contains(&remote) {
                if entry.contacted.len() >= MAX_CONTACTED_PER_MAPPING {
                    entry.contacted.remove(0);
                }
                entry.contacted.push(remote);
            }
            return Ok(entry.external_port);
        }
        self.prune(now);
        self.make_room(now);
        let port = self
            .allocate(internal, remote, rng)
            .ok_or(NatDrop::PortsExhausted)?;
        self.entries.push(Entry {
            internal,
            external_port: port,
            key_remote: key,
            contacted: vec![remote],
            expires: now + timeout,
            last_used: now,
            collision: false,
        });
        Ok(port)
    }

    /// Filters and translates an inbound packet to `external_port` from `remote`;
    /// returns the internal endpoint.
    pub(crate) fn inbound(
        &mut self,
        now: Instant,
        external_port: u16,
        remote: SocketAddr,
    ) -> Result<SocketAddr, NatDrop> {
        match self.config.behavior {
            NatBehavior::Linux(input) => {
                // Conntrack refreshes an entry's timeout on every packet it matches,
                // in either direction (a colliding entry included).
                let timeout = self.config.mapping_timeout;
                if let Some(entry) = self.entries.iter_mut().find(|e| {
                    e.external_port == external_port
                        && e.key_remote == Some(remote)
                        && e.expires > now
                }) {
                    entry.expires = now + timeout;
                    return if entry.collision {
                        Err(NatDrop::ConntrackCollision)
                    } else {
                        Ok(entry.internal)
                    };
                }
                match input {
                    LinuxInput::CtStateNewDrop => Err(NatDrop::NoMapping),
                    LinuxInput::BareMasquerade => {
                        self.prune(now);
                        self.make_room(now);
                        self.entries.push(Entry {
                            internal: SocketAddr::new(self.public_ip, external_port),
                            external_port,
                            key_remote: Some(remote),
                            contacted: Vec::new(),
                            expires: now + self.config.mapping_timeout,
                            last_used: now,
                            collision: true,
                        });
                        Err(NatDrop::ConntrackCollision)
                    }
                }
            }
            NatBehavior::Rfc4787 { filtering, .. } => {
                let entry = self
                    .entries
                    .iter()
                    .find(|e| e.external_port == external_port && e.expires > now)
                    .ok_or(NatDrop::NoMapping)?;
                let allowed = match filtering {
                    Filtering::EndpointIndependent => true,
                    Filtering::AddressDependent => {
                        entry.contacted.iter().any(|c| c.ip() == remote.ip())
                    }
                    Filtering::AddressAndPortDependent => entry.contacted.contains(&remote),
                };
                if allowed {
                    Ok(entry.internal)
                } else {
                    Err(NatDrop::Filtered)
                }
            }
        }
    }
}
