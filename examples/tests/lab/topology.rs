//! Topologies: a "public internet" namespace (router + servers), sites behind NAT
//! profiles, emulated access links.
//!
//! ```text
//!   host ──veth── [home router] ──access link── ┐
//!   host ──veth── [CGN-less NAT] ─access link── ├── internet (router; rendezvous, relay,
//!   host ─────────(public host)──access link──── ┘            reflectors at 203.0.113.0/24)
//! ```
//!
//! Addresses: servers 203.0.113.0/24 (TEST-NET-3) on the internet namespace's loopback;
//! access link of site `k` is 198.18.k.0/24 (benchmarking range; `.1` internet side, `.2`
//! the site's edge); every NAT's LAN is 192.168.1.0/24 like a shipped home router (so
//! both ends of a call can have the same private subnet, as in real life), hosts get
//! 192.168.1.(100+n) with `n` unique in the run; the carrier-grade NAT of `double` sits on
//! 100.64.k.0/24 (RFC 6598 shared address space).
//!
//! Access links are VXLAN pairs whose underlay runs through `lab-wire` (user-space delay
//! and loss: the machines' kernels have no `sch_netem`). LAN links are plain veth. A
//! direction of an access link can also be shaped to a rate with a bounded queue, like a
//! home uplink ([`Topology::set_access_rate`]: a `tbf` qdisc on the sending end).

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;

use super::Run;
use super::netns::Netns;
use super::process::Process;

/// Default one-way delay of every access link (each direction).
pub(crate) const ACCESS_DELAY_MS: u32 = 25;

/// Address of the rendezvous server.
pub(crate) const RENDEZVOUS_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Address of the relay server.
pub(crate) const RELAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// Address of the lab's reflectors (answer `seen <source>`).
pub(crate) const REFLECTOR_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
/// Address of a plain public host in the internet namespace ("someone on the internet").
pub(crate) const OUTSIDER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 40);

/// The LAN gateway of every NAT profile.
pub(crate) const LAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

/// Underlay addresses of the access links (inside the run's two wire namespaces).
const UNDERLAY_VXLAN: &str = "10.255.0.1";
const UNDERLAY_WIRE: &str = "10.255.0.2";

/// How long `lab-wire` may take to confirm a command.
const WIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes of a full-size frame on an access link (1500-byte MTU plus the Ethernet
/// header): what `tbf` counts per packet there.
const MAX_LINK_FRAME: u64 = 1514;

/// Shortest queue a shaped direction may be given: one full-size frame at 100 Mbit/s.
const MIN_SHAPER_QUEUE: Duration = Duration::from_micros(125);

/// A direction of a site's access link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Site → internet: shaped on the egress of the site edge's `wan0`.
    Uplink,
    /// Internet → site: shaped on the egress of `a<k>` in the internet namespace.
    Downlink,
}

/// Counters of a shaped direction (`tc -s qdisc`), since the shaper was set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ShaperStats {
    /// Bytes the shaper let through (Ethernet frames).
    pub(crate) bytes: u64,
    /// Packets it let through.
    pub(crate) packets: u64,
    /// Packets it dropped because its queue was full.
    pub(crate) dropped: u64,
}

/// How a site reaches the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// A host with a public address on the access link; no NAT, no firewall.
    Public,
    /// Home router: port-preserving `masquerade`, WAN input and forward accept only
    /// established/related (`ct state new drop`). RFC 4787: endpoint-independent mapping
    /// (while no conntrack tuple clashes), address-and-port-dependent filtering.
    Home,
    /// `masquerade` with no firewall at all: an unsolicited inbound packet creates a
    /// conntrack entry (to the router itself) that later moves the host's mapping to
    /// another port — the conntrack race of DESIGN.md.
    Bare,
    /// `masquerade random`: a new random external port per destination
    /// (endpoint-dependent mapping), firewall as `Home`.
    Symmetric,
    /// A `Home` router behind a carrier-grade NAT (port-preserving `masquerade`, WAN
    /// input `ct state new drop`).
    Double,
}

impl Profile {
    /// Every profile, in table order.
    pub(crate) const ALL: [Profile; 5] = [
        Profile::Public,
        Profile::Home,
        Profile::Bare,
        Profile::Symmetric,
        Profile::Double,
    ];

    /// Short name used in tables and namespace names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Profile::Public => "public",
            Profile::Home => "home",
            Profile::Bare => "bare",
            Profile::Symmetric => "symmetric",
            Profile::Double => "double",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The nftables ruleset of a NAT router whose WAN interface is `wan0`.
pub(crate) fn nat_ruleset(random_ports: bool, firewall: bool) -> String {
    let masquerade = if random_ports {
        "masquerade random"
    } else {
        "masquerade"
    };
    let mut rules = format!(
        "table ip nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"wan0\" {masquerade}\n  }}\n}}\n"
    );
    if firewall {
        rules.push_str(
            "table ip filter {\n  chain input {\n    type filter hook input priority filter; policy accept;\n    iifname \"wan0\" ct state established,related accept\n    iifname \"wan0\" drop\n  }\n  chain forward {\n    type filter hook forward priority filter; policy accept;\n    iifname \"wan0\" ct state established,related accept\n    iifname \"wan0\" drop\n  }\n}\n",
        );
    }
    rules
}

/// Index of a site in its topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SiteId(usize);

/// Index of a host in its topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostId(usize);

#[derive(Debug)]
struct Site {
    name: String,
    /// `k`: the access link is 198.18.k.0/24, its internet end is `a<k>`.
    index: usize,
    /// The namespace holding the site end (`wan0`) of the access link: the outermost
    /// router, or the public host.
    edge: Netns,
    /// Its public address (the edge of the access link).
    public_ip: Ipv4Addr,
    /// The wire link name of its access link.
    link: String,
    /// NAT routers, outermost first (empty for `Public`).
    routers: Vec<Netns>,
    /// The public host of a `Public` site.
    public_host: Option<usize>,
}

impl Site {
    /// The router that holds the LAN bridge.
    fn lan_router(&self) -> Option<&Netns> {
        self.routers.last()
    }
}

#[derive(Debug)]
struct Host {
    netns: Netns,
    site: usize,
    ip: Ipv4Addr,
    number: u8,
}

/// A lab topology. Dropping it kills every process in its namespaces and deletes them.
#[derive(Debug)]
pub(crate) struct Topology {
    run: Run,
    internet: Netns,
    wire_netns: [Netns; 2],
    wire: Option<Process>,
    namespaces: Vec<Netns>,
    sites: Vec<Site>,
    hosts: Vec<Host>,
    next_host_number: u8,
}

impl Topology {
    /// The internet namespace (a router holding the server addresses) and the access
    /// link emulator.
    pub(crate) fn new(run: &Run) -> anyhow::Result<Self> {
        let mut topology = Self {
            run: run.clone(),
            internet: Netns::create(run.id(), "internet")?,
            wire_netns: [
                Netns::create(run.id(), "underlay")?,
                Netns::create(run.id(), "wire")?,
            ],
            wire: None,
            namespaces: Vec::new(),
            sites: Vec::new(),
            hosts: Vec::new(),
            next_host_number: 1,
        };
        topology.namespaces.push(topology.internet.clone());
        topology
            .namespaces
            .extend(topology.wire_netns.iter().cloned());
        topology.build_core()?;
        Ok(topology)
    }

    fn build_core(&mut self) -> anyhow::Result<()> {
        let internet = &self.internet;
        internet.sysctl("net.ipv4.ip_forward", "1")?;
        for ip in [RENDEZVOUS_IP, RELAY_IP, REFLECTOR_IP, OUTSIDER_IP] {
            internet.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])?;
        }
        // The underlay: VXLAN endpoints in one namespace, lab-wire in the other (VXLAN
        // short-cuts destinations local to its own namespace, so they must differ).
        let [underlay, wire] = &self.wire_netns;
        underlay.ip(&[
            "link",
            "add",
            "u0",
            "type",
            "veth",
            "peer",
            "name",
            "u0",
            "netns",
            wire.name(),
        ])?;
        underlay.ip(&["link", "set", "u0", "mtu", "9000", "up"])?;
        underlay.ip(&["addr", "add", &format!("{UNDERLAY_VXLAN}/24"), "dev", "u0"])?;
        wire.ip(&["link", "set", "u0", "mtu", "9000", "up"])?;
        wire.ip(&["addr", "add", &format!("{UNDERLAY_WIRE}/24"), "dev", "u0"])?;
        let mut process = Process::start(
            &self.run,
            wire,
            "lab-wire",
            std::path::Path::new(env!("CARGO_BIN_EXE_lab-wire")),
            &[],
        )?;
        process.mark()?;
        self.wire = Some(process);
        Ok(())
    }

    fn wire(&mut self) -> anyhow::Result<&mut Process> {
        self.wire.as_mut().context("lab-wire is not running")
    }

    /// An access link between the internet namespace (`a<k>`) and `edge` (`wan0`), with
    /// the default delay and no loss.
    fn access_link(
        &mut self,
        k: usize,
        edge: &Netns,
        edge_ip: Ipv4Addr,
        prefix: u8,
    ) -> anyhow::Result<String> {
        let underlay = self.wire_netns[0].clone();
        let port = |n: usize| (10_000 + 4 * k + n).to_string();
        let (vx_inet, vx_edge) = (format!("vx{k}i"), format!("vx{k}e"));
        for (device, listen, wire_in) in
            [(&vx_inet, port(0), port(2)), (&vx_edge, port(1), port(3))]
        {
            underlay.ip(&[
                "link",
                "add",
                device,
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                UNDERLAY_VXLAN,
                "dstport",
                &listen,
                "nolearning",
            ])?;
            crate::lab::netns::run(std::process::Command::new("bridge").args([
                "-n",
                underlay.name(),
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                device,
                "dst",
                UNDERLAY_WIRE,
                "port",
                &wire_in,
            ]))?;
        }
        let link = format!("L{k}");
        let wire = self.wire()?;
        wire.send_line(&format!(
            "link {link} {} {UNDERLAY_VXLAN}:{} {} {UNDERLAY_VXLAN}:{}",
            port(2),
            port(1),
            port(3),
            port(0)
        ))?;
        wire.wait_event("link", WIRE_TIMEOUT, |line| {
            line.str("name") == Some(link.as_str())
        })?;
        wire.send_line(&format!("set {link} {ACCESS_DELAY_MS} 0"))?;
        wire.wait_event("set", WIRE_TIMEOUT, |line| {
            line.str("name") == Some(link.as_str())
        })?;

        let inet_name = format!("a{k}");
        underlay.ip(&["link", "set", &vx_inet, "netns", self.internet.name()])?;
        self.internet
            .ip(&["link", "set", &vx_inet, "name", &inet_name])?;
        self.internet
            .ip(&["link", "set", &inet_name, "mtu", "1500", "up"])?;
        // No GSO super-packets on the link: a real access link carries packets of its
        // MTU. With them, TCP segments reached the far end larger than its 1500-byte
        // MTU (the router counted IpFragFails) and a quarter of a TCP stream's segments
        // were retransmitted (spec/stream.md, endpoint_udp_blocked).
        self.internet
            .ip(&["link", "set", &inet_name, "gso_max_size", "1500"])?;
        self.internet.ip(&[
            "addr",
            "add",
            &format!("198.18.{k}.1/24"),
            "dev",
            &inet_name,
        ])?;
        underlay.ip(&["link", "set", &vx_edge, "netns", edge.name()])?;
        edge.ip(&["link", "set", &vx_edge, "name", "wan0"])?;
        edge.ip(&["link", "set", "wan0", "mtu", "1500", "up"])?;
        edge.ip(&["link", "set", "wan0", "gso_max_size", "1500"])?;
        edge.ip(&["addr", "add", &format!("{edge_ip}/{prefix}"), "dev", "wan0"])?;
        edge.ip(&["route", "add", "default", "via", &format!("198.18.{k}.1")])?;
        Ok(link)
    }

    /// Adds a site. For `Public` it is a single host (the site's public host); for the
    /// NAT profiles it is the router(s) with an empty LAN (add hosts with
    /// [`Self::add_host`]).
    pub(crate) fn add_site(&mut self, name: &str, profile: Profile) -> anyhow::Result<SiteId> {
        let k = self.sites.len() + 1;
        anyhow::ensure!(k < 250, "too many sites");
        let public_ip = Ipv4Addr::new(198, 18, k as u8, 2);
        let mut routers = Vec::new();
        let mut public_host = None;
        let link = match profile {
            Profile::Public => {
                let netns = Netns::create(self.run.id(), name)?;
                self.namespaces.push(netns.clone());
                let link = self.access_link(k, &netns, public_ip, 24)?;
                public_host = Some(self.hosts.len());
                self.hosts.push(Host {
                    netns,
                    site: self.sites.len(),
                    ip: public_ip,
                    number: 0,
                });
                link
            }
            Profile::Home | Profile::Bare | Profile::Symmetric => {
                let router = self.router(&format!("{name}-nat"))?;
                let link = self.access_link(k, &router, public_ip, 24)?;
                router.nft(&nat_ruleset(
                    profile == Profile::Symmetric,
                    profile != Profile::Bare,
                ))?;
                self.lan_bridge(&router)?;
                routers.push(router);
                link
            }
            Profile::Double => {
                let cgn = self.router(&format!("{name}-cgn"))?;
                let link = self.access_link(k, &cgn, public_ip, 24)?;
                cgn.nft(&nat_ruleset(false, true))?;
                let home = self.router(&format!("{name}-nat"))?;
                cgn.ip(&[
                    "link",
                    "add",
                    "lan0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "wan0",
                    "netns",
                    home.name(),
                ])?;
                cgn.ip(&["addr", "add", &format!("100.64.{k}.1/24"), "dev", "lan0"])?;
                cgn.ip(&["link", "set", "lan0", "up"])?;
                home.ip(&["addr", "add", &format!("100.64.{k}.2/24"), "dev", "wan0"])?;
                home.ip(&["link", "set", "wan0", "up"])?;
                home.ip(&["route", "add", "default", "via", &format!("100.64.{k}.1")])?;
                home.nft(&nat_ruleset(false, true))?;
                self.lan_bridge(&home)?;
                routers.push(cgn);
                routers.push(home);
                link
            }
        };
        // The site end of the access link: the public host, or the outermost router.
        let edge = match (public_host, routers.first()) {
            (Some(host), _) => self.hosts[host].netns.clone(),
            (None, Some(router)) => router.clone(),
            (None, None) => anyhow::bail!("site {name} has no end of its access link"),
        };
        self.sites.push(Site {
            name: name.to_owned(),
            index: k,
            edge,
            public_ip,
            link,
            routers,
            public_host,
        });
        Ok(SiteId(self.sites.len() - 1))
    }

    fn router(&mut self, role: &str) -> anyhow::Result<Netns> {
        let router = Netns::create(self.run.id(), role)?;
        self.namespaces.push(router.clone());
        router.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(router)
    }

    fn lan_bridge(&self, router: &Netns) -> anyhow::Result<()> {
        router.ip(&["link", "add", "br0", "type", "bridge"])?;
        router.ip(&["addr", "add", &format!("{LAN_GATEWAY}/24"), "dev", "br0"])?;
        router.ip(&["link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Makes a NAT site's router forward from its LAN only TCP to ports 80 and 443, as
    /// hotel and office networks that block UDP do (`spec/stream.md`): everything else
    /// from the LAN, UDP included, is dropped and counted ([`Self::web_only_drops`]).
    pub(crate) fn allow_only_web(&self, site: SiteId) -> anyhow::Result<()> {
        let router = self.sites[site.0]
            .lan_router()
            .with_context(|| format!("site {} has no LAN", self.sites[site.0].name))?;
        router.nft(
            "table inet webonly {\n  chain forward {\n    type filter hook forward priority -10; policy accept;\n    iifname \"br0\" tcp dport { 80, 443 } accept\n    iifname \"br0\" counter drop\n  }\n}\n",
        )
    }

    /// Packets [`Self::allow_only_web`] dropped at a site so far.
    pub(crate) fn web_only_drops(&self, site: SiteId) -> anyhow::Result<u64> {
        let router = self.sites[site.0]
            .lan_router()
            .with_context(|| format!("site {} has no LAN", self.sites[site.0].name))?;
        let table = router.exec("nft", &["list", "table", "inet", "webonly"])?;
        let packets = table
            .split_whitespace()
            .skip_while(|word| *word != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .context("no drop counter in the webonly table")?;
        Ok(packets)
    }

    /// Adds a host to the LAN of a NAT site. The namespace is `swlab-<run>-<name>`.
    pub(crate) fn add_host(&mut self, site: SiteId, name: &str) -> anyhow::Result<HostId> {
        let router = self.sites[site.0]
            .lan_router()
            .cloned()
            .with_context(|| format!("site {} has no LAN", self.sites[site.0].name))?;
        let number = self.next_host_number;
        self.next_host_number = number.checked_add(1).context("too many hosts")?;
        anyhow::ensure!(number < 75, "too many hosts");
        let netns = Netns::create(self.run.id(), name)?;
        self.namespaces.push(netns.clone());
        // A renumbered host keeps its routes when its first address goes.
        netns.sysctl("net.ipv4.conf.all.promote_secondaries", "1")?;
        netns.sysctl("net.ipv4.conf.default.promote_secondaries", "1")?;
        let ip = Ipv4Addr::new(192, 168, 1, 100 + number);
        Self::attach(&router, &netns, number, ip)?;
        self.hosts.push(Host {
            netns,
            site: site.0,
            ip,
            number,
        });
        Ok(HostId(self.hosts.len() - 1))
    }

    /// A veth from the router's LAN bridge to the host's `eth0`.
    fn attach(router: &Netns, host: &Netns, number: u8, ip: Ipv4Addr) -> anyhow::Result<()> {
        let port = format!("h{number}");
        router.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            host.name(),
        ])?;
        router.ip(&["link", "set", &port, "master", "br0", "up"])?;
        host.sysctl("net.ipv4.conf.eth0.promote_secondaries", "1")?;
        host.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        host.ip(&["link", "set", "eth0", "up"])?;
        host.ip(&["route", "add", "default", "via", &LAN_GATEWAY.to_string()])?;
        Ok(())
    }

    /// The public host of a `Public` site.
    pub(crate) fn public_host(&self, site: SiteId) -> anyhow::Result<HostId> {
        self.sites[site.0]
            .public_host
            .map(HostId)
            .context("not a public site")
    }

    /// A host's namespace.
    pub(crate) fn host(&self, host: HostId) -> &Netns {
        &self.hosts[host.0].netns
    }

    /// A host's current address.
    pub(crate) fn host_ip(&self, host: HostId) -> Ipv4Addr {
        self.hosts[host.0].ip
    }

    /// The site a host is in now.
    pub(crate) fn host_site(&self, host: HostId) -> SiteId {
        SiteId(self.hosts[host.0].site)
    }

    /// The internet namespace (servers, reflectors, outsiders run here).
    pub(crate) fn internet(&self) -> &Netns {
        &self.internet
    }

    /// A site's public address.
    pub(crate) fn public_ip(&self, site: SiteId) -> Ipv4Addr {
        self.sites[site.0].public_ip
    }

    /// A site's NAT routers, outermost first.
    pub(crate) fn routers(&self, site: SiteId) -> &[Netns] {
        &self.sites[site.0].routers
    }

    /// Sets one-way delay and loss (per mille) of both directions of a site's access
    /// link.
    pub(crate) fn set_access(
        &mut self,
        site: SiteId,
        delay_ms: u32,
        loss_permille: u32,
    ) -> anyhow::Result<()> {
        let link = self.sites[site.0].link.clone();
        let wire = self.wire()?;
        wire.send_line(&format!("set {link} {delay_ms} {loss_permille}"))?;
        wire.wait_event("set", WIRE_TIMEOUT, |line| {
            line.str("name") == Some(link.as_str())
        })?;
        Ok(())
    }

    /// The namespace and interface whose egress carries `direction` of a site's access
    /// link.
    fn shaped_interface(&self, site: SiteId, direction: Direction) -> (&Netns, String) {
        let site = &self.sites[site.0];
        match direction {
            Direction::Uplink => (&site.edge, "wan0".to_owned()),
            Direction::Downlink => (&self.internet, format!("a{}", site.index)),
        }
    }

    /// Shapes one direction of a site's access link to `rate_bps` (counting Ethernet
    /// frames) with a drop-tail queue of `queue` at that rate, like the modem buffer of a
    /// home uplink: a `tbf` qdisc on the sending end (the kernel has no `netem`, but
    /// `tbf` is built in). Packets beyond the queue are dropped; the link's delay and loss
    /// (`lab-wire`, [`Self::set_access`]) come after the shaper and still apply. Replaces
    /// an earlier rate of the same direction.
    pub(crate) fn set_access_rate(
        &self,
        site: SiteId,
        direction: Direction,
        rate_bps: u64,
        queue: Duration,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            (8_000..=10_000_000_000).contains(&rate_bps),
            "a shaped rate of {rate_bps} bit/s is outside 8 kbit/s ..= 10 Gbit/s"
        );
        anyhow::ensure!(
            queue >= MIN_SHAPER_QUEUE,
            "a shaper queue of {queue:?} is shorter than {MIN_SHAPER_QUEUE:?}"
        );
        let bytes_per_second = rate_bps / 8;
        // The bucket: 10 ms at the rate, at least two full frames (a bucket smaller
        // than a frame would never let it out). tbf's queue limit counts the bucket too.
        let burst = (bytes_per_second / 100).max(2 * MAX_LINK_FRAME);
        let queued = (bytes_per_second as f64 * queue.as_secs_f64()) as u64;
        let limit = queued.max(MAX_LINK_FRAME) + burst;
        let (netns, interface) = self.shaped_interface(site, direction);
        netns.exec(
            "tc",
            &[
                "qdisc",
                "replace",
                "dev",
                &interface,
                "root",
                "tbf",
                "rate",
                &format!("{rate_bps}bit"),
                "burst",
                &burst.to_string(),
                "limit",
                &limit.to_string(),
            ],
        )?;
        Ok(())
    }

    /// Removes the shaping of one direction of a site's access link (back to the
    /// interface's default: no queue, no rate).
    pub(crate) fn clear_access_rate(
        &self,
        site: SiteId,
        direction: Direction,
    ) -> anyhow::Result<()> {
        let (netns, interface) = self.shaped_interface(site, direction);
        netns.exec("tc", &["qdisc", "del", "dev", &interface, "root"])?;
        Ok(())
    }

    /// The counters of a shaped direction (zero when it is not shaped).
    pub(crate) fn access_rate_stats(
        &self,
        site: SiteId,
        direction: Direction,
    ) -> anyhow::Result<ShaperStats> {
        let (netns, interface) = self.shaped_interface(site, direction);
        let out = netns.exec("tc", &["-s", "-j", "qdisc", "show", "dev", &interface])?;
        let qdiscs: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("tc said {out:?}"))?;
        let Some(tbf) = qdiscs
            .as_array()
            .and_then(|all| all.iter().find(|q| q["kind"] == "tbf"))
        else {
            return Ok(ShaperStats::default());
        };
        let field = |name: &str| tbf[name].as_u64().unwrap_or(0);
        Ok(ShaperStats {
            bytes: field("bytes"),
            packets: field("packets"),
            dropped: field("drops"),
        })
    }

    /// Packets forwarded and dropped by a site's access link, `[inbound, outbound]`
    /// each (inbound: internet → site).
    pub(crate) fn access_stats(&mut self, site: SiteId) -> anyhow::Result<([u64; 2], [u64; 2])> {
        let link = self.sites[site.0].link.clone();
        let wire = self.wire()?;
        wire.mark()?;
        wire.send_line("stats")?;
        let line = wire.wait_event("stats", WIRE_TIMEOUT, |line| {
            line.str("name") == Some(link.as_str())
        })?;
        let pair = |field: &str| -> anyhow::Result<[u64; 2]> {
            let values = line
                .json
                .as_ref()
                .and_then(|j| j.get(field))
                .and_then(|v| v.as_array())
                .context("stats")?;
            Ok([
                values
                    .first()
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
                values
                    .get(1)
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0),
            ])
        };
        Ok((pair("forwarded")?, pair("dropped")?))
    }

    /// Flushes the conntrack table of every NAT router of a site (`conntrack -F`): all
    /// mappings are forgotten at once, as after a router reboot.
    pub(crate) fn flush_conntrack(&self, site: SiteId) -> anyhow::Result<()> {
        for router in &self.sites[site.0].routers {
            // conntrack -F reports the count on stderr; success is the exit status.
            router.exec("conntrack", &["-F"])?;
        }
        Ok(())
    }

    /// Gives a host a new LAN address (the old one is removed, the default route
    /// stays): its NAT sees a new source and maps it anew.
    pub(crate) fn renumber_host(&mut self, host: HostId) -> anyhow::Result<Ipv4Addr> {
        let entry = &self.hosts[host.0];
        let old = entry.ip;
        let new = Ipv4Addr::new(192, 168, 1, 175 + entry.number);
        entry
            .netns
            .ip(&["addr", "add", &format!("{new}/24"), "dev", "eth0"])?;
        entry
            .netns
            .ip(&["addr", "del", &format!("{old}/24"), "dev", "eth0"])?;
        // Some kernels drop the default route with the primary address; make sure.
        let _ = entry.netns.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &LAN_GATEWAY.to_string(),
        ]);
        self.hosts[host.0].ip = new;
        Ok(new)
    }

    /// Moves a host to the LAN of another NAT site (Wi-Fi to another network): its link
    /// goes down, a new one comes up behind the other router, same LAN address.
    pub(crate) fn move_host(&mut self, host: HostId, to: SiteId) -> anyhow::Result<()> {
        let router = self.sites[to.0]
            .lan_router()
            .cloned()
            .context("the target site has no LAN")?;
        let entry = &self.hosts[host.0];
        entry.netns.ip(&["link", "del", "eth0"])?;
        Self::attach(&router, &entry.netns, entry.number, entry.ip)?;
        self.hosts[host.0].site = to.0;
        Ok(())
    }

    /// Names of every namespace of the topology.
    pub(crate) fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|n| n.name().to_owned())
            .collect()
    }

    /// The run this topology belongs to.
    pub(crate) fn run(&self) -> &Run {
        &self.run
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Some(mut wire) = self.wire.take() {
            wire.kill();
        }
        for netns in self.namespaces.iter().rev() {
            netns.kill_all();
        }
        for netns in self.namespaces.iter().rev() {
            if let Err(error) = netns.delete() {
                eprintln!("lab: cleanup: {error:#}");
            }
        }
    }
}
