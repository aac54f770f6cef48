//! The NAT lab: real Linux NATs in network namespaces, the real binaries, real H.264.
//!
//! `selftest_*` prove the lab itself (each NAT profile's mapping and filtering, the
//! conntrack race, the access links' delay, loss and rate shaping, the fault tools,
//! cleanup); `endpoint_*` run the camera and viewer through every pair of profiles,
//! through faults and over a shaped uplink. See `spec/lab.md` ("How to run", "Contract").
//!
//! ```text
//! cargo test -p sightwire-examples --test lab -- --nocapture --test-threads=1
//! ```

#[path = "lab/mod.rs"]
mod lab;

use std::fmt::Write as _;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use lab::h264;
use lab::netns;
use lab::peers::{Camera, FileWatch, Stop, ViewerReport, ViewerRun};
use lab::probe::Probe;
use lab::servers::{self, LAB_KEEPALIVE_MS, Pki, ServerBinaries, Servers};
use lab::topology::{
    ACCESS_DELAY_MS, Direction, HostId, OUTSIDER_IP, Profile, REFLECTOR_IP, RENDEZVOUS_IP,
    ShaperStats, SiteId, Topology,
};

// ---------------------------------------------------------------------------------------
// Self-tests: what each NAT profile does to real packets.
// ---------------------------------------------------------------------------------------

/// Reflector 1, 2 and an outsider (a public host nobody behind a NAT talked to).
struct Internet {
    r1: Probe,
    r2: Probe,
    outsider: Probe,
}

fn addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn internet(topology: &Topology) -> anyhow::Result<Internet> {
    let run = topology.run();
    let netns = topology.internet();
    Ok(Internet {
        r1: Probe::reflector(run, netns, "reflector1", addr(REFLECTOR_IP, 3478))?,
        r2: Probe::reflector(run, netns, "reflector2", addr(REFLECTOR_IP, 3479))?,
        outsider: Probe::start(run, netns, "outsider", addr(OUTSIDER_IP, 5000))?,
    })
}

/// Sends a datagram from each host to a reflector on the internet and waits for the
/// answer. A fresh site's first packets would otherwise wait for ARP across its access
/// link (25 ms each way): the matrix's first row came out 40-60 ms slower than the others
/// for that alone. A home network's neighbours are known; so are the lab's before
/// anything is timed.
fn warm_up<'a>(
    topology: &Topology,
    hosts: impl IntoIterator<Item = &'a HostId>,
) -> anyhow::Result<()> {
    let reflector = Probe::reflector(
        topology.run(),
        topology.internet(),
        "warm-up-reflector",
        addr(REFLECTOR_IP, 3478),
    )?;
    for (n, host) in hosts.into_iter().enumerate() {
        let mut probe = Probe::start(
            topology.run(),
            topology.host(*host),
            &format!("warm-up-{n}"),
            any_port(0),
        )?;
        probe
            .mapping_via(reflector.local, "warm-up")
            .context("warming up a host's path to the internet")?;
    }
    Ok(())
}

/// A topology with one site of `profile` and one host `h` in it.
fn one_site(run: &lab::Run, profile: Profile) -> anyhow::Result<(Topology, SiteId, HostId)> {
    let mut topology = Topology::new(run)?;
    let site = topology.add_site(profile.name(), profile)?;
    let host = match profile {
        Profile::Public => topology.public_host(site)?,
        _ => topology.add_host(site, "h")?,
    };
    Ok((topology, site, host))
}

fn any_port(port: u16) -> SocketAddr {
    addr(std::net::Ipv4Addr::UNSPECIFIED, port)
}

/// Mapping: the host's socket seen from two reflectors (different destination ports).
/// Returns both mappings.
fn mappings(
    topology: &Topology,
    host: HostId,
    net: &mut Internet,
    port: u16,
) -> anyhow::Result<(Probe, SocketAddr, SocketAddr)> {
    let mut h = Probe::start(
        topology.run(),
        topology.host(host),
        &format!("h{port}"),
        any_port(port),
    )?;
    let r1 = net.r1.local;
    let r2 = net.r2.local;
    let m1 = h.mapping_via(r1, "map1")?;
    let m2 = h.mapping_via(r2, "map2")?;
    Ok((h, m1, m2))
}

/// Filtering: the outsider sends to the host's mapping; does it arrive?
fn unsolicited_arrives(
    h: &mut Probe,
    net: &mut Internet,
    mapping: SocketAddr,
) -> anyhow::Result<bool> {
    net.outsider.send(mapping, "unsolicited")?;
    Ok(!h.arrivals("unsolicited")?.is_empty())
}

/// The conntrack race of DESIGN.md: the outsider's packet reaches the NAT at
/// `public:port` before the host (bound to `port`) sends its first packet to the
/// outsider. Returns the port the outsider then sees the host at, and whether a second
/// packet from the outsider to `public:port` reaches the host.
fn race(
    topology: &Topology,
    host: HostId,
    site: SiteId,
    net: &mut Internet,
    port: u16,
) -> anyhow::Result<(u16, bool)> {
    let public = addr(topology.public_ip(site), port);
    let mut h = Probe::start(
        topology.run(),
        topology.host(host),
        &format!("race{port}"),
        any_port(port),
    )?;
    net.outsider.send(public, "early")?;
    // Let it reach the NAT (25 ms link) and settle in conntrack.
    std::thread::sleep(Duration::from_millis(200));
    h.send(net.outsider.local, "out")?;
    let (seen, _) = net.outsider.expect("out")?;
    net.outsider.send(public, "back")?;
    let back = !h.arrivals("back")?.is_empty();
    Ok((seen.port(), back))
}

fn report(lines: &mut String, claim: &str, ok: bool) {
    let _ = writeln!(lines, "  [{}] {claim}", if ok { "ok" } else { "FAILED" });
}

fn finish_selftest(name: &str, lines: &str) -> anyhow::Result<()> {
    lab::publish(&format!("\nNAT profile self-test `{name}`:\n{lines}"));
    ensure!(
        !lines.contains("[FAILED]"),
        "profile `{name}` does not behave as documented"
    );
    Ok(())
}

#[test]
fn selftest_home() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("selftest_home", &[]) else {
        return Ok(());
    };
    let (topology, site, host) = one_site(lab.run(), Profile::Home)?;
    let mut net = internet(&topology)?;
    let public = topology.public_ip(site);
    let mut lines = String::new();

    let (mut h, m1, m2) = mappings(&topology, host, &mut net, 40000)?;
    report(
        &mut lines,
        &format!("port-preserving: 192.168.1.x:40000 -> {m1}"),
        m1 == addr(public, 40000),
    );
    report(
        &mut lines,
        &format!(
            "endpoint-independent mapping (both reflectors answered): {m1} via reflector 1, {m2} via reflector 2"
        ),
        m1 == m2,
    );
    let arrived = unsolicited_arrives(&mut h, &mut net, m1)?;
    report(
        &mut lines,
        "unsolicited inbound from an uncontacted endpoint is dropped (ct state new drop)",
        !arrived,
    );
    let (port, back) = race(&topology, host, site, &mut net, 41000)?;
    report(
        &mut lines,
        &format!(
            "race: inbound before outbound leaves no conntrack entry, the port stays 41000 (seen {port})"
        ),
        port == 41000,
    );
    report(
        &mut lines,
        "race: the peer's next packet to :41000 arrives (the hole is open)",
        back,
    );
    finish_selftest("home", &lines)?;
    lab.pass();
    Ok(())
}

#[test]
fn selftest_bare() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("selftest_bare", &[]) else {
        return Ok(());
    };
    let (topology, site, host) = one_site(lab.run(), Profile::Bare)?;
    let mut net = internet(&topology)?;
    let public = topology.public_ip(site);
    let mut lines = String::new();

    let (mut h, m1, m2) = mappings(&topology, host, &mut net, 40000)?;
    report(
        &mut lines,
        &format!("port-preserving: 192.168.1.x:40000 -> {m1}"),
        m1 == addr(public, 40000),
    );
    report(
        &mut lines,
        &format!("endpoint-independent mapping while no tuple clashes: {m1} / {m2}"),
        m1 == m2,
    );
    let arrived = unsolicited_arrives(&mut h, &mut net, m1)?;
    report(
        &mut lines,
        "unsolicited inbound is not forwarded (conntrack only forwards replies)",
        !arrived,
    );
    let (port, back) = race(&topology, host, site, &mut net, 41000)?;
    report(
        &mut lines,
        &format!(
            "race: the early inbound packet's conntrack entry moves the host's mapping off 41000 (seen {port})"
        ),
        port != 41000,
    );
    report(
        &mut lines,
        "race: the peer's next packet to :41000 is lost (it hits the router's own entry)",
        !back,
    );

    // The fix of spec/punch.md: a TTL-2 opening packet creates the mapping and dies in
    // the internet core before the peer's NAT (here: a public peer on another site)
    // sees it.
    let mut topology = topology;
    let peer_site = topology.add_site("peer", Profile::Public)?;
    let peer_host = topology.public_host(peer_site)?;
    let mut peer = Probe::start(
        topology.run(),
        topology.host(peer_host),
        "peer",
        any_port(6000),
    )?;
    let peer_addr = addr(topology.public_ip(peer_site), 6000);
    let mut opener = Probe::start(
        topology.run(),
        topology.host(host),
        "opener",
        any_port(42000),
    )?;
    opener.set_ttl(2)?;
    opener.send(peer_addr, "opening")?;
    let reached = !peer.arrivals("opening")?.is_empty();
    report(
        &mut lines,
        "a TTL-2 opening packet crosses the NAT and dies in the core (the peer never sees it)",
        !reached,
    );
    peer.send(addr(public, 42000), "after-opening")?;
    let through = !opener.arrivals("after-opening")?.is_empty();
    report(
        &mut lines,
        "after the opening packet the peer's packet to :42000 arrives",
        through,
    );
    opener.set_ttl(64)?;
    opener.send(peer_addr, "check")?;
    let (seen, _) = peer.expect("check")?;
    report(
        &mut lines,
        &format!(
            "and the host's own packets leave from :42000 (seen {})",
            seen.port()
        ),
        seen.port() == 42000,
    );
    finish_selftest("bare", &lines)?;
    lab.pass();
    Ok(())
}

#[test]
fn selftest_symmetric() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("selftest_symmetric", &[]) else {
        return Ok(());
    };
    let (topology, site, host) = one_site(lab.run(), Profile::Symmetric)?;
    let mut net = internet(&topology)?;
    let public = topology.public_ip(site);
    let mut lines = String::new();

    let (mut h, m1, m2) = mappings(&topology, host, &mut net, 40000)?;
    report(
        &mut lines,
        &format!(
            "endpoint-dependent mapping: one socket, {m1} towards reflector 1, {m2} towards reflector 2"
        ),
        m1.port() != m2.port(),
    );
    report(
        &mut lines,
        "both on the router's public address",
        m1.ip() == std::net::IpAddr::V4(public) && m2.ip() == std::net::IpAddr::V4(public),
    );
    let arrived = unsolicited_arrives(&mut h, &mut net, m1)?;
    report(&mut lines, "unsolicited inbound is dropped", !arrived);
    net.r2.send(m1, "cross")?;
    let crossed = !h.arrivals("cross")?.is_empty();
    report(
        &mut lines,
        "reflector 2 cannot use the mapping made towards reflector 1 (port-dependent filtering)",
        !crossed,
    );
    finish_selftest("symmetric", &lines)?;
    lab.pass();
    Ok(())
}

#[test]
fn selftest_public() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("selftest_public", &[]) else {
        return Ok(());
    };
    let (topology, site, host) = one_site(lab.run(), Profile::Public)?;
    let mut net = internet(&topology)?;
    let public = topology.public_ip(site);
    let mut lines = String::new();

    let (mut h, m1, m2) = mappings(&topology, host, &mut net, 40000)?;
    report(
        &mut lines,
        &format!("no translation: the host is seen at its own address {m1}"),
        m1 == addr(public, 40000) && m2 == m1,
    );
    let arrived = unsolicited_arrives(&mut h, &mut net, m1)?;
    report(
        &mut lines,
        "unsolicited inbound arrives (no firewall)",
        arrived,
    );
    finish_selftest("public", &lines)?;
    lab.pass();
    Ok(())
}

#[test]
fn selftest_same_lan() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("selftest_same_lan", &[]) else {
        return Ok(());
    };
    let mut topology = Topology::new(lab.run())?;
    let site = topology.add_site("lan", Profile::Home)?;
    let a = topology.add_host(site, "a")?;
    let b = topology.add_host(site, "b")?;
    let net = internet(&topology)?;
    let mut lines = String::new();

    let mut pa = Probe::start(topology.run(), topology.host(a), "a", any_port(40000))?;
    let mut pb = Probe::start(topology.run(), topology.host(b), "b", any_port(40001))?;
    let mb = pb.mapping_via(net.r1.local, "map-b")?;
    pa.send(addr(topology.host_ip(b), 40001), "lan")?;
    let (from, _) = pb.expect("lan")?;
    report(
        &mut lines,
        &format!("LAN path: a reaches b at its private address, from {from}"),
        from == addr(topology.host_ip(a), 40000),
    );
    pa.send(mb, "hairpin")?;
    let hairpinned = !pb.arrivals("hairpin")?.is_empty();
    report(
        &mut lines,
        &format!(
            "no hairpinning: a's packet to b's public mapping {mb} is not looped back (Linux masquerade)"
        ),
        !hairpinned,
    );
    finish_selftest("same-lan", &lines)?;
    lab.pass();
    Ok(())
}

#[test]
fn selftest_double() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("selftest_double", &[]) else {
        return Ok(());
    };
    let (topology, site, host) = one_site(lab.run(), Profile::Double)?;
    let mut net = internet(&topology)?;
    let public = topology.public_ip(site);
    let mut lines = String::new();

    let (mut h, m1, m2) = mappings(&topology, host, &mut net, 40000)?;
    report(
        &mut lines,
        &format!(
            "two NATs: 192.168.1.x:40000 -> 100.64.k.2:40000 -> {m1} (the carrier's address, port kept)"
        ),
        m1 == addr(public, 40000),
    );
    report(
        &mut lines,
        &format!("endpoint-independent through both: {m1} / {m2}"),
        m1 == m2,
    );
    let arrived = unsolicited_arrives(&mut h, &mut net, m1)?;
    report(&mut lines, "unsolicited inbound is dropped", !arrived);
    let (port, back) = race(&topology, host, site, &mut net, 41000)?;
    report(
        &mut lines,
        &format!("race: the carrier NAT drops the early packet, port stays 41000 (seen {port})"),
        port == 41000,
    );
    report(&mut lines, "race: the peer's next packet arrives", back);
    ensure!(topology.routers(site).len() == 2, "double has two routers");
    finish_selftest("double", &lines)?;
    lab.pass();
    Ok(())
}

#[test]
fn selftest_access_link_delay_and_loss() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("selftest_access_link", &[]) else {
        return Ok(());
    };
    let (mut topology, site, host) = one_site(lab.run(), Profile::Home)?;
    let mut net = internet(&topology)?;
    let mut h = Probe::start(topology.run(), topology.host(host), "h", any_port(40000))?;
    let mut lines = String::new();

    let rtts = |h: &mut Probe, net: &mut Internet, tag: &str| -> anyhow::Result<Vec<u64>> {
        let mut rtts = Vec::new();
        for i in 0..5 {
            let text = format!("{tag}-{i}");
            h.send(net.r1.local, &text)?;
            let sent = h.sent_at(&text)?;
            let line = h.expect_prefix("seen ")?;
            rtts.push(line.u64("t_ms").unwrap_or(0).saturating_sub(sent));
        }
        rtts.sort_unstable();
        Ok(rtts)
    };
    let base = u64::from(2 * ACCESS_DELAY_MS);
    let measured = rtts(&mut h, &mut net, "rtt")?;
    report(
        &mut lines,
        &format!("RTT to the internet is 2 x {ACCESS_DELAY_MS} ms: measured {measured:?} ms"),
        measured[0] >= base && measured[2] < base + 40,
    );
    topology.set_access(site, 100, 0)?;
    let slow = rtts(&mut h, &mut net, "slow")?;
    report(
        &mut lines,
        &format!("delay changes at run time: 100 ms one-way -> {slow:?} ms"),
        slow[0] >= 200 && slow[2] < 240,
    );
    topology.set_access(site, ACCESS_DELAY_MS, 200)?;
    h.burst(net.r1.local, 300, "loss")?;
    let echoed = h.count_received("seen ", Duration::from_secs(1))?;
    let (_, dropped) = topology.access_stats(site)?;
    // 20 % each way: 300 * 0.8 * 0.8 = 192 expected; bounds are > 6 standard deviations.
    report(
        &mut lines,
        &format!(
            "20 % loss each way: {echoed} of 300 round trips survived (expected ~192), link dropped {dropped:?}"
        ),
        (140..=240).contains(&echoed) && dropped[0] > 0 && dropped[1] > 0,
    );
    finish_selftest("access link", &lines)?;
    lab.pass();
    Ok(())
}

/// Payload of the shaping self-test's datagrams.
const BLAST_SIZE: usize = 1200;

/// Bytes an access link carries per datagram besides its payload: UDP, IPv4 and Ethernet
/// headers (what `tbf` counts on the link's VXLAN device).
const LINK_OVERHEAD: u64 = 8 + 20 + 14;

/// Rate each blast offers to its link (Ethernet frames).
const BLAST_OFFERED_BPS: u64 = 8_000_000;

/// Length of each blast.
const BLAST_LENGTH: Duration = Duration::from_millis(1500);

/// How long a receiver listens after its sender finished: the longest queue plus the
/// link's delay, with room for a loaded machine.
const BLAST_SETTLE: Duration = Duration::from_millis(600);

/// One direction of a blast, as its receiver saw it.
#[derive(Debug, Clone, Copy)]
struct Throughput {
    /// Datagrams sent.
    sent: u64,
    /// Datagrams received.
    received: u64,
    /// Rate at the receiver (Ethernet frames), from its first to its last datagram.
    bps: f64,
    /// How much longer the arrivals lasted than the sending: the queueing delay of the
    /// last datagram over the first one's.
    queued: Duration,
}

impl Throughput {
    fn of(sent: lab::probe::Blasted, arrivals: &[(u64, u64)]) -> Self {
        let (Some(first), Some(last)) = (arrivals.first(), arrivals.last()) else {
            return Self {
                sent: sent.count,
                received: 0,
                bps: 0.0,
                queued: Duration::ZERO,
            };
        };
        let span_ms = last.0.saturating_sub(first.0).max(1);
        // The first datagram's bytes arrived at the start of the span.
        let bytes: u64 = arrivals[1..]
            .iter()
            .map(|(_, len)| len + LINK_OVERHEAD)
            .sum();
        Self {
            sent: sent.count,
            received: arrivals.len() as u64,
            bps: bytes as f64 * 8_000.0 / span_ms as f64,
            queued: Duration::from_millis(span_ms.saturating_sub(sent.last_ms - sent.first_ms)),
        }
    }
}

impl std::fmt::Display for Throughput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} Mbit/s ({} of {} datagrams, last ones queued {:?} longer)",
            self.bps / 1e6,
            self.received,
            self.sent,
            self.queued
        )
    }
}

/// Blasts `BLAST_OFFERED_BPS` through both directions of the host's access link at once
/// (the host to the outsider, the outsider to the host's `mapping`).
fn blast_both_ways(
    h: &mut Probe,
    net: &mut Internet,
    mapping: SocketAddr,
    tag: &str,
) -> anyhow::Result<(Throughput, Throughput)> {
    let payload_bps = BLAST_OFFERED_BPS * BLAST_SIZE as u64 / (BLAST_SIZE as u64 + LINK_OVERHEAD);
    let (up, down) = (format!("{tag}-up"), format!("{tag}-down"));
    h.mark()?;
    net.outsider.mark()?;
    h.blast(
        net.outsider.local,
        payload_bps,
        BLAST_SIZE,
        BLAST_LENGTH,
        &up,
    )?;
    net.outsider
        .blast(mapping, payload_bps, BLAST_SIZE, BLAST_LENGTH, &down)?;
    let sent_up = h.wait_blasted(BLAST_LENGTH)?;
    let sent_down = net.outsider.wait_blasted(BLAST_LENGTH)?;
    let up = Throughput::of(sent_up, &net.outsider.blast_arrivals(&up, BLAST_SETTLE)?);
    // The settling above covered this direction too.
    let down = Throughput::of(sent_down, &h.blast_arrivals(&down, Duration::ZERO)?);
    Ok((up, down))
}

/// Whether a measured rate is within 10 % of `bps`.
fn near_rate(measured: f64, bps: u64) -> bool {
    (measured - bps as f64).abs() <= bps as f64 * 0.10
}

#[test]
fn selftest_access_link_rate() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("selftest_access_link_rate", &["tc"]) else {
        return Ok(());
    };
    let (topology, site, host) = one_site(lab.run(), Profile::Home)?;
    let mut net = internet(&topology)?;
    let mut h = Probe::start(topology.run(), topology.host(host), "h", any_port(40000))?;
    let mut lines = String::new();
    // The outsider answers to the mapping the host's first datagram opened.
    h.send(net.outsider.local, "open")?;
    let (mapping, _) = net.outsider.expect("open")?;

    let (up_rate, up_queue) = (4_000_000, Duration::from_millis(200));
    topology.set_access_rate(site, Direction::Uplink, up_rate, up_queue)?;
    let (up, down) = blast_both_ways(&mut h, &mut net, mapping, "shaped-up")?;
    let shaper = topology.access_rate_stats(site, Direction::Uplink)?;
    report(
        &mut lines,
        &format!(
            "uplink shaped to 4 Mbit/s, {up_queue:?} queue, 8 Mbit/s offered: {up}; the \
             shaper dropped {} packets",
            shaper.dropped
        ),
        near_rate(up.bps, up_rate) && shaper.dropped > 0,
    );
    report(
        &mut lines,
        &format!(
            "the queue holds ~{up_queue:?} at the rate: the last datagrams arrived {:?} later \
             than the first ones' delay",
            up.queued
        ),
        up.queued >= up_queue / 2 && up.queued <= up_queue + Duration::from_millis(100),
    );
    report(
        &mut lines,
        &format!("the downlink is not shaped meanwhile: {down}"),
        down.bps >= BLAST_OFFERED_BPS as f64 * 0.9 && down.received * 100 >= down.sent * 98,
    );

    let (down_rate, down_queue) = (2_000_000, Duration::from_millis(50));
    topology.clear_access_rate(site, Direction::Uplink)?;
    topology.set_access_rate(site, Direction::Downlink, down_rate, down_queue)?;
    let (up, down) = blast_both_ways(&mut h, &mut net, mapping, "shaped-down")?;
    let shaper = topology.access_rate_stats(site, Direction::Downlink)?;
    report(
        &mut lines,
        &format!(
            "downlink shaped to 2 Mbit/s, {down_queue:?} queue: {down}; the shaper dropped {} \
             packets",
            shaper.dropped
        ),
        near_rate(down.bps, down_rate)
            && shaper.dropped > 0
            && down.queued >= down_queue / 2
            && down.queued <= down_queue + Duration::from_millis(100),
    );
    report(
        &mut lines,
        &format!("the uplink's shaping is removed: {up}"),
        up.bps >= BLAST_OFFERED_BPS as f64 * 0.9
            && up.received * 100 >= up.sent * 98
            && topology.access_rate_stats(site, Direction::Uplink)? == ShaperStats::default(),
    );
    finish_selftest("access link rate", &lines)?;
    lab.pass();
    Ok(())
}

#[test]
fn selftest_fault_tools() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("selftest_fault_tools", &["conntrack"]) else {
        return Ok(());
    };
    let mut topology = Topology::new(lab.run())?;
    let home = topology.add_site("home", Profile::Home)?;
    let other = topology.add_site("other", Profile::Home)?;
    let host = topology.add_host(home, "h")?;
    let mut net = internet(&topology)?;
    let mut lines = String::new();

    let mut h = Probe::start(topology.run(), topology.host(host), "h", any_port(40000))?;
    h.send(net.outsider.local, "hello")?;
    let (mapping, _) = net.outsider.expect("hello")?;
    net.outsider.send(mapping, "reply1")?;
    h.expect("reply1")?;
    topology.flush_conntrack(home)?;
    net.outsider.send(mapping, "reply2")?;
    let lost = h.arrivals("reply2")?.is_empty();
    report(
        &mut lines,
        "conntrack -F forgets the mapping: the peer's next packet is dropped",
        lost,
    );
    h.send(net.outsider.local, "again")?;
    let (again, _) = net.outsider.expect("again")?;
    net.outsider.send(again, "reply3")?;
    h.expect("reply3")?;
    report(
        &mut lines,
        &format!(
            "the host's next packet maps it anew ({mapping} -> {again}) and replies flow again"
        ),
        again.ip() == mapping.ip(),
    );

    let before = h.mapping_via(net.r1.local, "before")?;
    let old_ip = topology.host_ip(host);
    let new_ip = topology.renumber_host(host)?;
    let after = h.mapping_via(net.r1.local, "after")?;
    report(
        &mut lines,
        &format!(
            "renumbering {old_ip} -> {new_ip}: the same socket keeps working, new mapping {before} -> {after}"
        ),
        after != before && after.ip() == before.ip(),
    );

    topology.move_host(host, other)?;
    let moved = h.mapping_via(net.r1.local, "moved")?;
    report(
        &mut lines,
        &format!("moving the host to another NAT: the same socket now appears at {moved}"),
        moved.ip() == std::net::IpAddr::V4(topology.public_ip(other)),
    );
    ensure!(topology.host_site(host) == other, "host moved");
    finish_selftest("fault tools", &lines)?;
    lab.pass();
    Ok(())
}

/// A pid that is not running.
fn dead_pid() -> u32 {
    (1..4_000_000u32)
        .rev()
        .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .unwrap_or(4_000_000)
}

#[test]
fn selftest_cleanup() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("selftest_cleanup", &[]) else {
        return Ok(());
    };
    // A panic inside a lab scope removes its namespaces and processes.
    let recorded = std::sync::Mutex::new((Vec::new(), None));
    eprintln!("lab: the panic below is deliberate (cleanup test)");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (topology, _, host) = one_site(lab.run(), Profile::Home).expect("topology");
        let probe = Probe::start(
            topology.run(),
            topology.host(host),
            "victim",
            any_port(40000),
        )
        .expect("probe");
        *recorded.lock().expect("lock") = (topology.namespace_names(), probe.pid());
        panic!("deliberate panic inside a lab topology");
    }));
    ensure!(outcome.is_err(), "the closure panicked");
    let (names, pid) = recorded
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    ensure!(!names.is_empty(), "the topology had namespaces");
    let existing = netns::list_namespaces()?;
    let left: Vec<_> = names.iter().filter(|n| existing.contains(n)).collect();
    ensure!(left.is_empty(), "namespaces left after a panic: {left:?}");
    let pid = pid.context("probe pid")?;
    ensure!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived the panic"
    );
    lab::publish(&format!(
        "lab: after a panic: {} namespaces and process {pid} removed",
        names.len()
    ));

    // Leftovers of a crashed run (owner pid dead) are removed, with their processes;
    // namespaces of a live run are not.
    let dead = dead_pid();
    let stale = netns::Netns::create(&format!("{dead}-crashed"), "h")?;
    let mut sleeper = std::process::Command::new("ip")
        .args(["netns", "exec", stale.name(), "sleep", "600"])
        .spawn()?;
    let live = netns::Netns::create(&format!("{}-live", std::process::id()), "h")?;
    let removed = netns::remove_stale()?;
    let existing = netns::list_namespaces()?;
    let _ = live.delete();
    ensure!(
        removed.contains(&stale.name().to_owned()),
        "stale namespace {} not removed: {removed:?}",
        stale.name()
    );
    ensure!(
        !existing.contains(&stale.name().to_owned()),
        "stale namespace still listed"
    );
    ensure!(
        existing.contains(&live.name().to_owned()),
        "a live run's namespace was removed"
    );
    let waited = Instant::now();
    while sleeper.try_wait()?.is_none() {
        ensure!(
            waited.elapsed() < Duration::from_secs(5),
            "the stale run's process survived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lab::publish(&format!(
        "lab: stale namespace of dead pid {dead} removed with its process; live one kept"
    ));

    // Two topologies in a row with the same roles do not collide.
    for _ in 0..2 {
        let (topology, site, host) = one_site(lab.run(), Profile::Home)?;
        let net = internet(&topology)?;
        let mut h = Probe::start(
            topology.run(),
            topology.host(host),
            "again",
            any_port(40000),
        )?;
        let mapping = h.mapping_via(net.r1.local, "twice")?;
        ensure!(
            mapping.ip() == std::net::IpAddr::V4(topology.public_ip(site)),
            "mapping {mapping}"
        );
    }
    lab.pass();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The endpoint under test: camera and viewer through the profiles and through faults.
// ---------------------------------------------------------------------------------------

/// Camera/viewer binaries, or `None` after saying why the endpoint tests wait.
fn endpoint() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let binaries = servers::endpoint_binaries();
    if binaries.is_none() {
        lab::publish(
            "lab: waiting for camera/viewer binaries (examples/src/bin/camera.rs, viewer.rs)",
        );
    }
    binaries
}

/// What a viewer in a pair of profiles is expected to end up on.
fn expected_path(camera: Profile, viewer: Profile) -> &'static str {
    use Profile::{Public, Symmetric};
    match (camera, viewer) {
        // One side accepts packets from wherever the other's NAT maps them.
        (Public, _) | (_, Public) => "direct",
        // A random-port endpoint-dependent NAT against port-dependent filtering.
        (Symmetric, _) | (_, Symmetric) => "relay",
        // Both endpoint-independent mappings (home, bare, double): opening packets make
        // both mappings exist before any check lands.
        _ => "direct",
    }
}

/// The paths a viewer may first connect on, `expected_path` being where it must end.
/// With a symmetric NAT on either side the device's server-reflexive address is not
/// where a direct path ends, so only the initiation raced through the relay is served
/// at once (spec/endpoint.md §2): such a pair may start on the relay and move to direct
/// (the issue's "start on the relay, move to direct"), never the other way round.
fn first_paths(camera: Profile, viewer: Profile) -> &'static [&'static str] {
    match (camera, viewer, expected_path(camera, viewer)) {
        (Profile::Symmetric, _, "direct") | (_, Profile::Symmetric, "direct") => {
            &["direct", "relay"]
        }
        (_, _, "direct") => &["direct"],
        _ => &["relay"],
    }
}

/// Everything an endpoint test needs: servers up, keys made.
struct Bed {
    topology: Topology,
    bins: ServerBinaries,
    servers: Servers,
    camera_bin: std::path::PathBuf,
    viewer_bin: std::path::PathBuf,
    devices: u8,
    /// What the peers are given as `--rendezvous`.
    rendezvous: String,
}

impl Bed {
    fn new(
        run: &lab::Run,
        camera_bin: std::path::PathBuf,
        viewer_bin: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        Self::with_limits(
            run,
            camera_bin,
            viewer_bin,
            &format!("keepalive_interval_ms = {LAB_KEEPALIVE_MS}\n"),
        )
    }

    /// As [`Bed::new`], with `limits` as the rendezvous's `[limits]` section.
    fn with_limits(
        run: &lab::Run,
        camera_bin: std::path::PathBuf,
        viewer_bin: std::path::PathBuf,
        limits: &str,
    ) -> anyhow::Result<Self> {
        let bins = servers::server_binaries()?;
        let pki = servers::provision(run, &bins)?;
        let topology = Topology::new(run)?;
        let servers = Servers::start_with(&topology, &bins, pki, limits)?;
        Ok(Self {
            topology,
            bins,
            servers,
            camera_bin,
            viewer_bin,
            devices: 0,
            rendezvous: Servers::rendezvous_addr(),
        })
    }

    fn pki(&self) -> &Pki {
        &self.servers.pki
    }

    /// Provisions a new device and starts a camera for it on `host`.
    fn camera(&mut self, host: HostId, label: &str, source: &str) -> anyhow::Result<Camera> {
        let state = self.provision(label)?;
        Camera::start(
            self.topology.run(),
            self.topology.host(host),
            label,
            &self.camera_bin,
            self.pki(),
            &state,
            source,
            &self.rendezvous,
        )
    }

    /// As [`Self::camera`], with `extra` camera arguments.
    fn camera_with(
        &mut self,
        host: HostId,
        label: &str,
        source: &str,
        extra: &[&str],
    ) -> anyhow::Result<Camera> {
        let state = self.provision(label)?;
        Camera::start_with(
            self.topology.run(),
            self.topology.host(host),
            label,
            &self.camera_bin,
            self.pki(),
            &state,
            source,
            &self.rendezvous,
            extra,
        )
    }

    /// A new device ID with its key and certificate in `<label>-state`.
    fn provision(&mut self, label: &str) -> anyhow::Result<std::path::PathBuf> {
        self.devices += 1;
        let device_id = format!("02:5e:00:00:10:{:02x}", self.devices);
        let state = self.topology.run().path(&format!("{label}-state"));
        servers::provision_device(self.pki(), &self.bins, &state, &device_id)?;
        Ok(state)
    }

    fn viewer(
        &self,
        host: HostId,
        label: &str,
        device: &str,
        stop: Stop,
    ) -> anyhow::Result<ViewerRun> {
        ViewerRun::start(
            self.topology.run(),
            self.topology.host(host),
            label,
            &self.viewer_bin,
            self.pki(),
            device,
            stop,
            &self.rendezvous,
        )
    }
}

/// The source the cameras stream: the real clip when ffmpeg is there, else synthetic.
fn camera_source() -> String {
    if lab::have_program("ffmpeg") && lab::have_program("ffprobe") {
        match h264::clip() {
            Ok(path) => return path.display().to_string(),
            Err(error) => eprintln!("lab: no clip ({error:#}); using the synthetic source"),
        }
    }
    "synthetic".into()
}

/// Seconds of video each matrix cell streams after connecting.
const CELL_SECONDS: f64 = 3.0;

/// A viewer must finish within: connect timeout (20 s) + streaming + slack.
const VIEWER_DEADLINE: Duration = Duration::from_secs(45);

fn cell_text(report: &ViewerReport) -> String {
    match (&report.connected_path, report.exit_ok) {
        (Some(path), ok) => format!(
            "{}{} {}/{}",
            path,
            if ok { "" } else { "!" },
            report.connect_ms.map_or("-".into(), |ms| ms.to_string()),
            report
                .first_keyframe_ms
                .map_or("-".into(), |ms| ms.to_string()),
        ),
        (None, _) => "FAILED".into(),
    }
}

#[test]
fn endpoint_matrix() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_matrix", &[]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let source = camera_source();
    let mut bed = Bed::new(lab.run(), camera_bin, viewer_bin)?;
    let mut cameras = Vec::new();
    let mut viewer_hosts = Vec::new();
    for profile in Profile::ALL {
        let site = bed
            .topology
            .add_site(&format!("c{}", profile.name()), profile)?;
        let host = match profile {
            Profile::Public => bed.topology.public_host(site)?,
            _ => bed
                .topology
                .add_host(site, &format!("cam{}", profile.name()))?,
        };
        cameras.push((
            profile,
            bed.camera(host, &format!("camera-{profile}"), &source)?,
        ));
        let site = bed
            .topology
            .add_site(&format!("v{}", profile.name()), profile)?;
        viewer_hosts.push(match profile {
            Profile::Public => bed.topology.public_host(site)?,
            _ => bed
                .topology
                .add_host(site, &format!("view{}", profile.name()))?,
        });
    }
    let lan = bed.topology.add_site("lan", Profile::Home)?;
    let lan_camera_host = bed.topology.add_host(lan, "camlan")?;
    let lan_viewer_host = bed.topology.add_host(lan, "viewlan")?;
    let lan_camera = bed.camera(lan_camera_host, "camera-lan", &source)?;

    warm_up(
        &bed.topology,
        viewer_hosts.iter().chain(std::iter::once(&lan_viewer_host)),
    )?;

    let mut cells = Vec::new();
    for (camera_profile, camera) in &cameras {
        for (viewer_profile, host) in Profile::ALL.iter().zip(&viewer_hosts) {
            let label = format!("viewer-{camera_profile}-{viewer_profile}");
            let mut viewer = bed.viewer(*host, &label, &camera.id, Stop::Seconds(CELL_SECONDS))?;
            let report = viewer.finish(VIEWER_DEADLINE)?;
            eprintln!(
                "lab: camera {camera_profile:>9} viewer {viewer_profile:>9}: {} ({:?})",
                cell_text(&report),
                report.failure
            );
            cells.push((*camera_profile, *viewer_profile, report));
        }
    }
    let mut lan_viewer = bed.viewer(
        lan_viewer_host,
        "viewer-same-lan",
        &lan_camera.uri,
        Stop::Seconds(CELL_SECONDS),
    )?;
    let lan_report = lan_viewer.finish(VIEWER_DEADLINE)?;

    // The table: path connect_ms/first_keyframe_ms (ms since the viewer started
    // connecting), `!` when the viewer did not exit 0.
    let mut table = String::new();
    let _ = write!(table, "{:<16}", "camera \\ viewer");
    for profile in Profile::ALL {
        let _ = write!(table, "| {profile:<18}");
    }
    for (row, (camera_profile, _)) in cameras.iter().enumerate() {
        let _ = write!(table, "\n{camera_profile:<16}");
        for cell in &cells[row * Profile::ALL.len()..(row + 1) * Profile::ALL.len()] {
            let _ = write!(table, "| {:<18}", cell_text(&cell.2));
        }
    }
    let _ = write!(
        table,
        "\nsame LAN (home, viewer by URI): {}",
        cell_text(&lan_report)
    );
    lab::publish(&format!(
        "\nNAT lab matrix: path connect_ms/first_keyframe_ms, {ACCESS_DELAY_MS} ms per access link\n{table}\n"
    ));

    ensure!(
        bed.servers.relay.try_status()?.is_none(),
        "the relay died during the matrix\n{}",
        bed.servers.relay.describe()
    );
    let mut problems = Vec::new();
    for (camera_profile, viewer_profile, report) in &cells {
        let expected = expected_path(*camera_profile, *viewer_profile);
        check_cell(
            &mut problems,
            &format!("{camera_profile} -> {viewer_profile}"),
            report,
            expected,
            first_paths(*camera_profile, *viewer_profile),
        );
    }
    check_cell(&mut problems, "same LAN", &lan_report, "lan", &["lan"]);
    ensure!(
        problems.is_empty(),
        "matrix cells differ from the expected table:\n{}",
        problems.join("\n")
    );
    lab.pass();
    Ok(())
}

fn check_cell(
    problems: &mut Vec<String>,
    name: &str,
    report: &ViewerReport,
    expected: &str,
    first: &[&str],
) {
    if !report.exit_ok {
        problems.push(format!("{name}: viewer failed: {:?}", report.failure));
    }
    if !report
        .connected_path
        .as_deref()
        .is_some_and(|path| first.contains(&path))
    {
        problems.push(format!(
            "{name}: connected on {:?}, expected one of {first:?}",
            report.connected_path
        ));
    }
    if report.final_path().as_deref() != Some(expected) {
        problems.push(format!(
            "{name}: ended on {:?}, expected {expected}",
            report.final_path()
        ));
    }
    if report.first_keyframe_ms.is_none() || report.frames() == 0 {
        problems.push(format!(
            "{name}: no video (first keyframe {:?}, {} frames)",
            report.first_keyframe_ms,
            report.frames()
        ));
    }
}

#[test]
fn endpoint_real_video() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_real_video", &["ffmpeg", "ffprobe"]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let clip = h264::clip()?;
    let mut bed = Bed::new(lab.run(), camera_bin, viewer_bin)?;
    let camera_site = bed.topology.add_site("cam", Profile::Home)?;
    let camera_host = bed.topology.add_host(camera_site, "camera")?;
    let viewer_site = bed.topology.add_site("view", Profile::Home)?;
    let viewer_host = bed.topology.add_host(viewer_site, "viewer")?;
    let camera = bed.camera(camera_host, "camera", &clip.display().to_string())?;
    let total = u64::from(h264::CLIP_FPS * h264::CLIP_SECONDS);
    let mut viewer = bed.viewer(viewer_host, "viewer", &camera.id, Stop::Frames(total))?;
    let report = viewer.finish(Duration::from_secs(90))?;
    ensure!(report.exit_ok, "viewer failed: {:?}", report.failure);

    let source_bytes = std::fs::read(&clip)?;
    let source = h264::access_units(&source_bytes);
    let received_bytes = std::fs::read(&viewer.out)?;
    let received = h264::access_units(&received_bytes);
    let comparison = h264::compare(&source, &received)?;
    let source_decoded = h264::frame_count(&clip)?;
    let received_decoded = h264::frame_count(&viewer.out)?;
    lab::publish(&format!(
        "\nreal video: {} source frames ({} decoded by ffprobe); received {} frames from source frame {}, \
         {} skipped ({} non-reference frames left out by the catch-up from the GOP cache), \
         keyframe first: {}; ffprobe decodes {} frames of the received file; path {:?}, \
         connected at {} ms, first keyframe at {:?} ms\n",
        source.len(),
        source_decoded,
        comparison.received,
        comparison.first_source_index,
        comparison.skipped,
        comparison.left_out_by_catch_up,
        comparison.starts_with_keyframe,
        received_decoded,
        report.final_path(),
        report.summary_u64("connect_ms"),
        report.first_keyframe_ms,
    ));
    ensure!(
        source.len() as u64 == total && source_decoded == total,
        "the clip has {total} frames"
    );
    ensure!(
        comparison.received as u64 == total,
        "received {} frames, expected {total}",
        comparison.received
    );
    ensure!(
        comparison.skipped == 0,
        "{} frames missing in a loss-free run",
        comparison.skipped
    );
    // The first picture comes from the device's GOP cache, not the clip's next keyframe
    // (up to its 2 s GOP away).
    let keyframe_after = report
        .first_keyframe_ms
        .unwrap_or(u64::MAX)
        .saturating_sub(report.summary_u64("connect_ms"));
    ensure!(
        keyframe_after < 1000,
        "the first keyframe came {keyframe_after} ms after connecting"
    );
    ensure!(
        comparison.starts_with_keyframe,
        "the received file does not start with a keyframe"
    );
    ensure!(
        received_decoded == source_decoded,
        "ffprobe decodes {received_decoded} frames, the source {source_decoded}"
    );
    ensure!(
        report.frames() == total,
        "summary says {} frames",
        report.frames()
    );
    lab.pass();
    Ok(())
}

/// When each viewer of [`endpoint_mid_gop_join`] starts, after the camera is ready: one
/// per 5 s slot, at a different point of the clip's 4 s GOP each, on a direct (home) and a
/// relayed (symmetric) path alternately.
const MID_GOP_JOINS: [(Profile, Duration); 4] = [
    (Profile::Home, Duration::from_millis(1_000)),
    (Profile::Symmetric, Duration::from_millis(6_900)),
    (Profile::Home, Duration::from_millis(12_800)),
    (Profile::Symmetric, Duration::from_millis(18_500)),
];

/// How soon after connecting a mid-GOP joiner must have its first picture: the GOP cache
/// answers the connect at once (a keyframe and what follows it, paced), instead of the
/// encoder's next keyframe up to 4 s later.
const MID_GOP_FIRST_PICTURE_AFTER_CONNECT: Duration = Duration::from_millis(500);

/// Issue 14: viewers join a camera whose clip has a keyframe every 4 s at different points
/// of its GOP, over a direct and a relayed path. Each gets a decodable picture (the
/// cached keyframe, byte for byte) within moments of connecting, however far the encoder
/// is from its next keyframe.
#[test]
fn endpoint_mid_gop_join() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_mid_gop_join", &["ffmpeg", "ffprobe"]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let clip = h264::long_gop_clip()?;
    let source_bytes = std::fs::read(&clip)?;
    let source = h264::access_units(&source_bytes);
    let mut bed = Bed::new(lab.run(), camera_bin, viewer_bin)?;
    let camera_site = bed.topology.add_site("cam", Profile::Home)?;
    let camera_host = bed.topology.add_host(camera_site, "camera")?;
    let camera = bed.camera(camera_host, "camera", &clip.display().to_string())?;
    let camera_ready = Instant::now();
    let gop = Duration::from_millis(u64::from(h264::LONG_GOP) * 1000 / u64::from(h264::CLIP_FPS));

    let mut lines = String::new();
    let mut problems = Vec::new();
    for (index, (profile, at)) in MID_GOP_JOINS.iter().enumerate() {
        let site = bed.topology.add_site(&format!("v{index}"), *profile)?;
        let host = bed.topology.add_host(site, &format!("viewer{index}"))?;
        warm_up(&bed.topology, [&host])?;
        if let Some(wait) = at.checked_sub(camera_ready.elapsed()) {
            std::thread::sleep(wait);
        }
        // The camera loops its clip from when it became ready; the clip is a whole
        // number of GOPs, so this is where the encoder stood when the viewer started
        // (to within the camera's start-up, a few ms).
        let into_gop_ms = camera_ready.elapsed().as_millis() % gop.as_millis();
        let label = format!("viewer{index}-{profile}");
        let mut viewer = bed.viewer(host, &label, &camera.id, Stop::Seconds(2.0))?;
        let report = viewer.finish(VIEWER_DEADLINE)?;
        let connect_ms = report.connect_ms.unwrap_or(u64::MAX);
        let first_ms = report.first_keyframe_ms.unwrap_or(u64::MAX);
        let received_bytes = std::fs::read(&viewer.out).unwrap_or_default();
        let received = h264::access_units(&received_bytes);
        let comparison = h264::compare(&source, &received);
        let decoded = h264::frame_count(&viewer.out).unwrap_or(0);
        let _ = writeln!(
            lines,
            "  joined ~{into_gop_ms} ms into the GOP on {:?}: connected {connect_ms} ms, first picture {first_ms} ms \
             ({} ms after connecting), {} frames, first frame is source frame {:?} (keyframe: {:?}), \
             {:?} passed over, ffprobe decodes {decoded}",
            report.final_path(),
            first_ms.saturating_sub(connect_ms),
            received.len(),
            comparison.as_ref().map(|c| c.first_source_index).ok(),
            comparison.as_ref().map(|c| c.starts_with_keyframe).ok(),
            comparison.as_ref().map(|c| c.skipped).ok(),
        );
        if !report.exit_ok {
            problems.push(format!("{label}: viewer failed: {:?}", report.failure));
        }
        // Frames may be passed over: a catch-up that the encoder's next keyframe
        // overtakes ends there (spec/endpoint.md §4.1). What must hold is that every
        // frame shown decodes, which ffprobe checks below.
        match &comparison {
            Ok(c) if c.starts_with_keyframe => {}
            Ok(_) => problems.push(format!("{label}: does not start with a keyframe")),
            Err(error) => problems.push(format!("{label}: received video: {error:#}")),
        }
        if decoded == 0 || decoded as usize != received.len() {
            problems.push(format!(
                "{label}: ffprobe decodes {decoded} of {} received frames",
                received.len()
            ));
        }
        if Duration::from_millis(first_ms.saturating_sub(connect_ms))
            > MID_GOP_FIRST_PICTURE_AFTER_CONNECT
        {
            problems.push(format!(
                "{label}: first picture {} ms after connecting",
                first_ms.saturating_sub(connect_ms)
            ));
        }
    }
    lab::publish(&format!(
        "\nmid-GOP joins (4 s GOP, {ACCESS_DELAY_MS} ms per access link, ms since the viewer started):\n{lines}"
    ));
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    lab.pass();
    Ok(())
}

/// The name the peers are given for the rendezvous in [`endpoint_rendezvous_by_name`].
const RENDEZVOUS_NAME: &str = "rendezvous.lab.test";

/// Camera and viewer are given the rendezvous by name, through hosts files in their
/// namespaces; the name has a dead address first and the rendezvous second, so both peers
/// must try past the first. A name that does not resolve fails a viewer at once.
#[test]
fn endpoint_rendezvous_by_name() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_rendezvous_by_name", &[]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let mut bed = Bed::new(lab.run(), camera_bin, viewer_bin)?;
    let camera_site = bed.topology.add_site("cam", Profile::Home)?;
    let camera_host = bed.topology.add_host(camera_site, "camera")?;
    let viewer_site = bed.topology.add_site("view", Profile::Home)?;
    let viewer_host = bed.topology.add_host(viewer_site, "viewer")?;
    // Beside the rendezvous on the public network, where nothing answers. Same /24, so
    // the resolver's address sorting (RFC 6724) keeps the file's order: dead first.
    let dead = std::net::Ipv4Addr::new(203, 0, 113, 11);
    let hosts = format!(
        "127.0.0.1 localhost\n{dead} {RENDEZVOUS_NAME}\n{RENDEZVOUS_IP} {RENDEZVOUS_NAME}\n"
    );
    // Any other name goes to a resolver on loopback where nothing listens: refused at
    // once, as a resolver answering "no such name" would be.
    let _etc = netns::EtcFiles::write(
        &[
            bed.topology.host(camera_host),
            bed.topology.host(viewer_host),
        ],
        &[
            ("hosts", hosts.as_str()),
            ("resolv.conf", "nameserver 127.0.0.1\noptions attempts:1\n"),
        ],
    )?;
    bed.rendezvous = format!("{RENDEZVOUS_NAME}:{}", servers::RENDEZVOUS_PORT);

    let started = Instant::now();
    let camera = bed.camera(camera_host, "camera", "synthetic")?;
    let registered = started.elapsed();
    let mut viewer = bed.viewer(viewer_host, "viewer", &camera.id, Stop::Frames(60))?;
    let report = viewer.finish(VIEWER_DEADLINE)?;
    let camera_tries = camera.process.count_text("rendezvous address silent");
    let viewer_tries = viewer.process.count_text("rendezvous address silent");
    lab::publish(&format!(
        "\nrendezvous by name ({dead} dead, {RENDEZVOUS_IP} live): camera registered in {} ms, \
         viewer {} ({} silent-address moves by the camera, {} by the viewer)\n",
        registered.as_millis(),
        cell_text(&report),
        camera_tries,
        viewer_tries,
    ));
    ensure!(report.exit_ok, "viewer failed: {:?}", report.failure);
    ensure!(
        report.frames() == 60,
        "viewer got {} frames",
        report.frames()
    );
    ensure!(
        camera_tries >= 1,
        "the camera never moved past the dead address"
    );
    ensure!(
        viewer_tries >= 1,
        "the viewer never moved past the dead address"
    );
    ensure!(
        camera.process.count_text("rendezvous name resolved") >= 1,
        "the camera did not log the resolved addresses"
    );

    // A name nobody knows: the viewer says so at once, not after its 20 s timeout.
    let mut lost = ViewerRun::start(
        bed.topology.run(),
        bed.topology.host(viewer_host),
        "viewer-unknown",
        &bed.viewer_bin,
        bed.pki(),
        &camera.id,
        Stop::Frames(1),
        &format!("nowhere.lab.test:{}", servers::RENDEZVOUS_PORT),
    )?;
    let started = Instant::now();
    let failed = lost.finish(Duration::from_secs(15))?;
    let took = started.elapsed();
    lab::publish(&format!(
        "unknown name: {:?} after {} ms\n",
        failed.failure,
        took.as_millis()
    ));
    ensure!(
        !failed.exit_ok,
        "the viewer connected through a name that does not exist"
    );
    ensure!(
        failed
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("cannot resolve the rendezvous")),
        "failure {:?}",
        failed.failure
    );
    ensure!(took < Duration::from_secs(3), "took {took:?}");
    lab.pass();
    Ok(())
}

/// Codec negotiation through real NATs (spec/control.md): the camera (synthetic H.264)
/// announces its catalog; a viewer that takes only H.265 is refused with a named error
/// (exit 4) instead of writing frames it cannot decode, and the camera sees its SELECT;
/// a viewer that takes H.264 gets its frames. Talk-back: the viewers send G.711 with
/// `--talk`, the camera writes it with `--talk-out`.
#[test]
fn endpoint_codec_negotiation() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_codec_negotiation", &[]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let mut bed = Bed::new(lab.run(), camera_bin, viewer_bin)?;
    let camera_site = bed.topology.add_site("cam", Profile::Home)?;
    let camera_host = bed.topology.add_host(camera_site, "camera")?;
    let viewer_site = bed.topology.add_site("view", Profile::Home)?;
    let viewer_host = bed.topology.add_host(viewer_site, "viewer")?;
    // Talk-back: 1 s of G.711 A-law from the viewer, written by the camera.
    let talk = bed.topology.run().path("talk.alaw");
    let talk_samples: Vec<u8> = (0..8000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&talk, &talk_samples)?;
    let talk_out = bed.topology.run().path("talk-out.alaw");
    let talk_out_arg = talk_out.display().to_string();
    let camera = bed.camera_with(
        camera_host,
        "camera",
        "synthetic",
        &["--talk-out", &talk_out_arg],
    )?;
    let talk_arg = talk.display().to_string();
    let viewer_run = |label: &str, stop: Stop, accept: &str| {
        ViewerRun::start_with(
            bed.topology.run(),
            bed.topology.host(viewer_host),
            label,
            &bed.viewer_bin,
            bed.pki(),
            &camera.id,
            stop,
            &bed.rendezvous,
            &["--accept", accept, "--talk", &talk_arg],
        )
    };
    let started = Instant::now();
    let mut refused = viewer_run("viewer-h265-only", Stop::Seconds(15.0), "h265")?;
    let refused_report = refused.finish(VIEWER_DEADLINE)?;
    let refused_ms = started.elapsed().as_millis();
    // 2 s: the talk-back (1 s) is all sent before the viewer stops.
    let mut taken = viewer_run("viewer-h264", Stop::Seconds(2.0), "h264,aac")?;
    let taken_report = taken.finish(VIEWER_DEADLINE)?;
    lab::publish(&format!(
        "\ncodec negotiation: H.265-only viewer refused ({:?}) {refused_ms} ms after start; \
         H.264 viewer {} frames\n",
        refused_report.error,
        taken_report.frames(),
    ));
    ensure!(!refused_report.exit_ok, "the H.265-only viewer exited 0");
    ensure!(
        refused_report.error.as_deref() == Some("codec_not_accepted"),
        "error {:?}, failure {:?}",
        refused_report.error,
        refused_report.failure
    );
    ensure!(
        refused
            .process
            .count_text("which this viewer does not take")
            >= 1,
        "no clear line from the refused viewer"
    );
    ensure!(
        camera.process.count_text(r#""event":"viewer_select""#) >= 2,
        "the camera did not see both viewers' choices"
    );
    ensure!(
        taken_report.exit_ok,
        "viewer failed: {:?}",
        taken_report.failure
    );
    ensure!(
        taken_report.frames() >= 30,
        "got {} frames",
        taken_report.frames()
    );
    // The refused viewer may have talked before the catalog came; the H.264 viewer's
    // whole second of A-law is the end of the camera's file, byte for byte.
    let written = std::fs::read(&talk_out)?;
    lab::publish(&format!(
        "talk-back: camera wrote {} bytes of A-law ({} sent by the second viewer)\n",
        written.len(),
        talk_samples.len()
    ));
    ensure!(
        written.ends_with(&talk_samples),
        "the camera's talk-back file ({} bytes) does not end with the viewer's clip",
        written.len()
    );
    lab.pass();
    Ok(())
}

/// A viewer on a network that lets only TCP to ports 80 and 443 out (its router drops
/// everything else from the LAN, UDP included), the camera on an ordinary home site
/// (UDP works there). The servers listen for TCP/TLS streams on 443. The viewer must find
/// UDP blocked, fall back to TLS on 443 for the rendezvous and the relay, and show video
/// within 5 s of starting (`spec/stream.md`).
#[test]
fn endpoint_udp_blocked() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_udp_blocked", &[]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let mut bed = Bed::new(lab.run(), camera_bin, viewer_bin)?;
    let camera_site = bed.topology.add_site("cam", Profile::Home)?;
    let camera_host = bed.topology.add_host(camera_site, "camera")?;
    let viewer_site = bed.topology.add_site("view", Profile::Home)?;
    bed.topology.allow_only_web(viewer_site)?;
    let viewer_host = bed.topology.add_host(viewer_site, "viewer")?;
    let camera = bed.camera(camera_host, "camera", "synthetic")?;
    let mut viewer = bed.viewer(viewer_host, "viewer", &camera.id, Stop::Frames(60))?;
    let report = viewer.finish(VIEWER_DEADLINE)?;
    let dropped = bed.topology.web_only_drops(viewer_site)?;
    let fell_back = viewer.process.count_text("falling back to TCP/TLS");
    lab::publish(&format!(
        "\nUDP blocked (only TCP 80/443 out of the viewer's site): viewer {}; \
         {dropped} packets dropped by the site's firewall\n",
        cell_text(&report),
    ));
    ensure!(report.exit_ok, "viewer failed: {:?}", report.failure);
    ensure!(
        dropped > 0,
        "the site's firewall dropped nothing: UDP was not blocked"
    );
    ensure!(fell_back >= 1, "the viewer never fell back to TCP/TLS");
    ensure!(
        report.connected_path.as_deref() == Some("relay-tcp"),
        "path {:?}",
        report.connected_path
    );
    ensure!(
        report.frames() == 60,
        "viewer got {} frames",
        report.frames()
    );
    let first = report.first_keyframe_ms.context("no first keyframe")?;
    ensure!(
        first <= 5_000,
        "first picture after {first} ms (target 5 s)"
    );
    lab.pass();
    Ok(())
}

/// A camera on a home site, a viewer on another home site, both on the real clip (or
/// the synthetic source).
struct StreamBed {
    bed: Bed,
    camera_site: SiteId,
    viewer_site: SiteId,
    viewer_host: HostId,
    camera: Camera,
    source: String,
}

fn stream_bed(
    run: &lab::Run,
    camera_bin: std::path::PathBuf,
    viewer_bin: std::path::PathBuf,
) -> anyhow::Result<StreamBed> {
    stream_bed_behind(run, camera_bin, viewer_bin, Profile::Home)
}

/// As [`stream_bed`], both sites behind `profile` (a NAT profile).
fn stream_bed_behind(
    run: &lab::Run,
    camera_bin: std::path::PathBuf,
    viewer_bin: std::path::PathBuf,
    profile: Profile,
) -> anyhow::Result<StreamBed> {
    let source = camera_source();
    let mut bed = Bed::new(run, camera_bin, viewer_bin)?;
    let camera_site = bed.topology.add_site("cam", profile)?;
    let camera_host = bed.topology.add_host(camera_site, "camera")?;
    let viewer_site = bed.topology.add_site("view", profile)?;
    let viewer_host = bed.topology.add_host(viewer_site, "viewer")?;
    let camera = bed.camera(camera_host, "camera", &source)?;
    Ok(StreamBed {
        bed,
        camera_site,
        viewer_site,
        viewer_host,
        camera,
        source,
    })
}

/// Checks a received file against the source (when it is the clip): every frame
/// byte-identical to a source frame, in order. Returns (received, skipped).
fn check_frames(source: &str, received: &std::path::Path) -> anyhow::Result<(usize, usize)> {
    if source == "synthetic" {
        let bytes = std::fs::read(received)?;
        return Ok((h264::access_units(&bytes).len(), 0));
    }
    let source_bytes = std::fs::read(source)?;
    let received_bytes = std::fs::read(received)?;
    let comparison = h264::compare(
        &h264::access_units(&source_bytes),
        &h264::access_units(&received_bytes),
    )?;
    Ok((comparison.received, comparison.skipped))
}

/// Stall bound after `conntrack -F` on both NATs: the viewer's next feedback packet
/// re-creates its mapping; the bound leaves room for liveness detection (3.5 s) and
/// re-nomination.
const FLUSH_RECOVERY: Duration = Duration::from_secs(8);

/// Stall bound after the viewer's address changes.
const ROAM_RECOVERY: Duration = Duration::from_secs(8);

/// The media path does not involve the rendezvous: a restart may stall the stream this
/// long at most.
const RENDEZVOUS_RESTART_STALL: Duration = Duration::from_secs(1);

/// The device re-registers within: its keepalive interval, twice, plus a handshake.
const REREGISTER: Duration = Duration::from_millis(2 * LAB_KEEPALIVE_MS + 5_000);

/// Streams for `seconds`, applies `fault` 3 s after the first keyframe, and returns the
/// report, the longest stall after the fault (and whether the stream grew after
/// `bound`), and the frame check.
fn stream_with_fault(
    sb: &mut StreamBed,
    label: &str,
    seconds: f64,
    bound: Duration,
    fault: impl FnOnce(&mut StreamBed) -> anyhow::Result<()>,
) -> anyhow::Result<(ViewerReport, Duration, bool, (usize, usize))> {
    let mut viewer = sb.bed.viewer(
        sb.viewer_host,
        label,
        &sb.camera.id.clone(),
        Stop::Seconds(seconds),
    )?;
    let watch = FileWatch::start(&viewer.out);
    viewer
        .process
        .wait_event("first_keyframe", Duration::from_secs(30), |_| true)?;
    std::thread::sleep(Duration::from_secs(3));
    let at = Instant::now();
    fault(sb)?;
    let report = viewer.finish(VIEWER_DEADLINE + Duration::from_secs_f64(seconds))?;
    let (stall, recovered) = watch.longest_stall(at, at + bound);
    let frames = check_frames(&sb.source, &viewer.out)?;
    Ok((report, stall, recovered, frames))
}

/// What a viewer wrote of the clip, next to what the camera sent it, from the viewer's
/// first keyframe on.
///
/// The viewer writes nothing before its first keyframe (nothing before it could be
/// decoded), and its `--seconds` count from connecting; the clip's next keyframe comes up
/// to one GOP later. The frames the camera sent before that keyframe are never anyone's
/// to deliver, so they are not counted as sent.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    /// Frames written, each byte-identical to a source frame, in the source's order.
    delivered: usize,
    /// Frames the camera sent from the first delivered keyframe to the viewer's stop:
    /// the source positions from the first to the last delivered frame (the camera plays
    /// the clip in order, one frame per tick), or the window's length at `CLIP_FPS` when
    /// that is more (frames lost at the end of the window leave no position). Frames
    /// still in flight when the viewer stopped (at most the latency budget's worth) count
    /// as sent and not delivered.
    sent: usize,
    /// Source frames between the first and the last delivered one that never arrived.
    passed_over: usize,
    /// Source position of the first delivered frame.
    first_source_index: usize,
    /// Whether the first delivered frame is a keyframe.
    starts_with_keyframe: bool,
    /// Frames a camera at `CLIP_FPS` sends in the viewer's window from its first keyframe
    /// to its stop.
    by_clock: usize,
    /// From connected to the first keyframe.
    keyframe_after_connect: Duration,
}

impl Delivery {
    /// Delivered frames in percent of sent ones.
    fn percent(&self) -> f64 {
        100.0 * self.delivered as f64 / self.sent.max(1) as f64
    }
}

/// Compares the viewer's output with the clip (an error names the first frame that is
/// not a source frame, i.e. a corrupt one) and counts what the camera sent.
fn delivery(
    clip: &std::path::Path,
    out: &std::path::Path,
    report: &ViewerReport,
) -> anyhow::Result<Delivery> {
    let source_bytes = std::fs::read(clip)?;
    let received_bytes = std::fs::read(out)?;
    let comparison = h264::compare(
        &h264::access_units(&source_bytes),
        &h264::access_units(&received_bytes),
    )?;
    let connect_ms = report.summary_u64("connect_ms");
    let keyframe_ms = report.first_keyframe_ms.unwrap_or(connect_ms);
    let window_ms = (report.summary_u64("streaming_ms") + connect_ms).saturating_sub(keyframe_ms);
    let by_clock = (window_ms * u64::from(h264::CLIP_FPS) / 1000) as usize;
    Ok(Delivery {
        delivered: comparison.received,
        sent: (comparison.received + comparison.skipped).max(by_clock),
        passed_over: comparison.skipped,
        first_source_index: comparison.first_source_index,
        starts_with_keyframe: comparison.starts_with_keyframe,
        by_clock,
        keyframe_after_connect: Duration::from_millis(keyframe_ms.saturating_sub(connect_ms)),
    })
}

/// Loss of each direction of both access links in `endpoint_fault_loss` (per mille).
const FAULT_LOSS_PERMILLE: u32 = 50;

/// Share of the frames the camera sent after the viewer's first keyframe that must arrive
/// under [`FAULT_LOSS_PERMILLE`] (percent).
const FAULT_LOSS_DELIVERED_PERCENT: f64 = 95.0;

/// 5 % loss on each direction of both access links (~10 % camera to viewer): every frame
/// the camera sends after the viewer's first keyframe must arrive, repaired by NACK
/// within the latency budget, and none corrupt.
///
/// Frames are counted from the first keyframe, against what the camera sent from then
/// on ([`Delivery`]): the viewer's `--seconds` run from connecting, and the up to one GOP
/// before the first keyframe is the same with or without loss (issue 13: "251 of ~300
/// frames" was that GOP, not loss).
#[test]
fn endpoint_fault_loss() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_fault_loss", &["ffmpeg", "ffprobe"]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let mut sb = stream_bed(lab.run(), camera_bin, viewer_bin)?;
    let (camera_site, viewer_site) = (sb.camera_site, sb.viewer_site);
    sb.bed
        .topology
        .set_access(camera_site, ACCESS_DELAY_MS, FAULT_LOSS_PERMILLE)?;
    sb.bed
        .topology
        .set_access(viewer_site, ACCESS_DELAY_MS, FAULT_LOSS_PERMILLE)?;
    let seconds = 10;
    let mut viewer = sb.bed.viewer(
        sb.viewer_host,
        "viewer",
        &sb.camera.id.clone(),
        Stop::Seconds(f64::from(seconds)),
    )?;
    let report = viewer.finish(VIEWER_DEADLINE + Duration::from_secs(10))?;
    ensure!(report.exit_ok, "viewer failed: {:?}", report.failure);
    let frames = delivery(std::path::Path::new(&sb.source), &viewer.out, &report)?;
    let (_, dropped_camera) = sb.bed.topology.access_stats(camera_site)?;
    let (_, dropped_viewer) = sb.bed.topology.access_stats(viewer_site)?;
    lab::publish(&format!(
        "\n{} % loss on both access links (each direction), {seconds} s from connecting: first \
         keyframe (source frame {}) {:?} after connecting; after it the camera sent {} frames \
         ({} by the clock), {} delivered ({:.1} %), {} passed over, none corrupt; viewer \
         summary lost {} late {} skipped before the keyframe {}; links dropped camera \
         {dropped_camera:?} viewer {dropped_viewer:?}; path {:?}\n",
        f64::from(FAULT_LOSS_PERMILLE) / 10.0,
        frames.first_source_index,
        frames.keyframe_after_connect,
        frames.sent,
        frames.by_clock,
        frames.delivered,
        frames.percent(),
        frames.passed_over,
        report.summary_u64("lost"),
        report.summary_u64("late"),
        report.summary_u64("skipped_before_keyframe"),
        report.final_path()
    ));
    ensure!(
        frames.starts_with_keyframe,
        "the output does not start with a keyframe"
    );
    // The first keyframe comes within a GOP (plus its transfer) of connecting: the window
    // after it is most of the run, not a handful of frames.
    let floor = ((seconds - 1) * h264::CLIP_FPS - h264::CLIP_GOP) as usize;
    ensure!(
        frames.sent >= floor,
        "the camera sent only {} frames after the first keyframe (at least {floor} expected)",
        frames.sent
    );
    // Frames the camera left out on purpose were never sent: its frame dropper follows the
    // target, which backs off under ~10 % loss (spec/media.md 4.6), and the sender's
    // policy drops a frame that would miss its latency budget behind retransmissions
    // (4.7; the viewer sees the gap). What the test asks is that every frame *sent*
    // arrives.
    let camera_dropped = sb
        .camera
        .process
        .lines()?
        .iter()
        .filter(|line| line.event() == Some("frame_dropped"))
        .count();
    let sent = frames.sent.saturating_sub(camera_dropped);
    let percent = 100.0 * frames.delivered as f64 / sent.max(1) as f64;
    lab::publish(&format!(
        "  the camera left out {camera_dropped} frames on purpose (its target); {} of the {sent} \
         it sent delivered ({percent:.1} %)\n",
        frames.delivered
    ));
    ensure!(
        percent >= FAULT_LOSS_DELIVERED_PERCENT,
        "only {} of {} frames the camera sent delivered under {} permille loss ({} left out \
         by the camera)",
        frames.delivered,
        sent,
        FAULT_LOSS_PERMILLE,
        camera_dropped
    );
    ensure!(
        dropped_camera.iter().chain(&dropped_viewer).all(|&d| d > 0),
        "the links dropped nothing"
    );
    lab.pass();
    Ok(())
}

/// The camera site's uplink in `endpoint_shaped_uplink`: less than the clip's
/// [`h264::HEAVY_CLIP_BPS`].
const SHAPED_UPLINK_BPS: u64 = 4_000_000;

/// The shaped uplink's queue: 200 ms at 4 Mbit/s (100 kB), a moderate home modem buffer
/// (many cable and DSL modems buffer far longer; an AQM such as DOCSIS-PIE keeps ~10 ms).
const SHAPED_UPLINK_QUEUE_MS: u64 = 200;
/// The shaped uplink's queue, as time at its rate.
const SHAPED_UPLINK_QUEUE: Duration = Duration::from_millis(SHAPED_UPLINK_QUEUE_MS);

/// How long the viewer of `endpoint_shaped_uplink` watches.
const SHAPED_SECONDS: f64 = 20.0;

/// The longest freeze a viewer may see on a shaped uplink: one GOP (the time a decoder
/// waits for the next keyframe after losing a frame), measured between arrivals at the
/// viewer, so plus the arrival jitter of one keyframe against the one before: at most the
/// uplink's queue. (Runs of 2026-12-02 measured 1.71–2.00 s against the 2 s GOP.)
const SHAPED_MAX_FREEZE: Duration = Duration::from_millis(
    1000 * h264::CLIP_GOP as u64 / h264::CLIP_FPS as u64 + SHAPED_UPLINK_QUEUE_MS,
);

/// A 6 Mbit/s stream over a 4 Mbit/s home uplink (issue 13): the viewer must keep a
/// picture (no freeze longer than one GOP after its first keyframe), report a target
/// bitrate below the uplink's rate and receive no corrupt frame.
///
/// The camera plays a file and cannot follow a target bitrate, so the stream fits only
/// once the sender adapts (frame dropping, or an encoder that follows `TargetBitrate`).
/// Note that `bitrate_bps` of the viewer's summary is the viewer endpoint's own estimate;
/// until a receive-side (delay-based) estimate exists, it is the target for what the
/// viewer sends, which stays at its initial value.
#[test]
fn endpoint_shaped_uplink() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_shaped_uplink", &["ffmpeg", "ffprobe", "tc"]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let clip = h264::heavy_clip()?;
    let (clip_bps, clip_peak_bps) = h264::bitrate(&h264::access_units(&std::fs::read(&clip)?));
    let mut bed = Bed::new(lab.run(), camera_bin, viewer_bin)?;
    let camera_site = bed.topology.add_site("cam", Profile::Home)?;
    let camera_host = bed.topology.add_host(camera_site, "camera")?;
    let viewer_site = bed.topology.add_site("view", Profile::Home)?;
    let viewer_host = bed.topology.add_host(viewer_site, "viewer")?;
    bed.topology.set_access_rate(
        camera_site,
        Direction::Uplink,
        SHAPED_UPLINK_BPS,
        SHAPED_UPLINK_QUEUE,
    )?;
    let mut camera = bed.camera(camera_host, "camera", &clip.display().to_string())?;
    let mut viewer = bed.viewer(
        viewer_host,
        "viewer",
        &camera.id,
        Stop::Seconds(SHAPED_SECONDS),
    )?;
    let watch = FileWatch::start(&viewer.out);
    let report = viewer.finish(VIEWER_DEADLINE + Duration::from_secs_f64(SHAPED_SECONDS))?;
    let shaper = bed
        .topology
        .access_rate_stats(camera_site, Direction::Uplink)?;
    let delivered = delivery(&clip, &viewer.out, &report);
    // The freeze: the longest time without a new frame from the first keyframe to the
    // viewer's stop (a stream that dies early freezes until the stop).
    let connect_ms = report.summary_u64("connect_ms");
    let window = Duration::from_millis(
        (report.summary_u64("streaming_ms") + connect_ms)
            .saturating_sub(report.first_keyframe_ms.unwrap_or(connect_ms)),
    );
    let freeze = match watch.growth().first() {
        Some(&(first, _)) => watch.longest_stall(first, first + window).0,
        None => Duration::from_secs_f64(SHAPED_SECONDS),
    };
    let bitrate_bps = report.summary_u64("bitrate_bps");
    let received_bps = report.summary_u64("bytes") * 8_000 / (window.as_millis() as u64).max(1);
    // What the camera was told to send (its `target_bitrate` events, spec/media.md 4.6).
    let targets: Vec<u64> = camera
        .process
        .lines()?
        .iter()
        .filter(|line| line.event() == Some("target_bitrate"))
        .filter_map(|line| line.u64("bps"))
        .collect();
    let last_target = targets.last().copied();
    let keyframe = report.first_keyframe_ms.map_or_else(
        || "no keyframe".to_owned(),
        |ms| format!("first keyframe {} ms", ms.saturating_sub(connect_ms)),
    );
    let frames = match &delivered {
        Ok(d) => format!(
            "{} of {} frames the camera sent after the first keyframe delivered ({:.1} %, {} \
             passed over, {} by the clock), none corrupt",
            d.delivered,
            d.sent,
            d.percent(),
            d.passed_over,
            d.by_clock
        ),
        Err(error) => format!("frames not checked: {error:#}"),
    };
    lab::publish(&format!(
        "\n{:.1} Mbit/s clip (peak {:.1} Mbit/s over 1 s) over a {} Mbit/s uplink ({:?} queue), \
         {SHAPED_SECONDS} s: connected after {connect_ms} ms, {keyframe} after that; {frames}; \
         longest freeze {freeze:?} (bound {SHAPED_MAX_FREEZE:?}); received {:.2} Mbit/s; the \
         camera's target {} ({} TargetBitrate events); viewer summary bitrate {:.2} Mbit/s, late \
         {} lost {} skipped before a keyframe {}; the shaper passed {} packets ({:.1} MB) and \
         dropped {}; path {:?}\n",
        clip_bps as f64 / 1e6,
        clip_peak_bps as f64 / 1e6,
        SHAPED_UPLINK_BPS / 1_000_000,
        SHAPED_UPLINK_QUEUE,
        received_bps as f64 / 1e6,
        last_target.map_or("never set".to_owned(), |bps| format!(
            "{:.2} Mbit/s at the end",
            bps as f64 / 1e6
        )),
        targets.len(),
        bitrate_bps as f64 / 1e6,
        report.summary_u64("late"),
        report.summary_u64("lost"),
        report.summary_u64("skipped_before_keyframe"),
        shaper.packets,
        shaper.bytes as f64 / 1e6,
        shaper.dropped,
        report.final_path()
    ));
    ensure!(report.exit_ok, "viewer failed: {:?}", report.failure);
    ensure!(
        clip_bps > SHAPED_UPLINK_BPS,
        "the clip ({clip_bps} bit/s) fits the uplink"
    );
    ensure!(
        freeze <= SHAPED_MAX_FREEZE,
        "the picture froze for {freeze:?} (more than one GOP, {SHAPED_MAX_FREEZE:?})"
    );
    // The lower rate is reported: the camera is told a target below the uplink, and the
    // viewer receives less than the uplink carries. (The viewer summary's `bitrate_bps` is
    // the target of what the viewer itself sends, so it says nothing here.)
    ensure!(
        last_target.is_some_and(|bps| bps < SHAPED_UPLINK_BPS),
        "the camera's target {last_target:?} is not below the {SHAPED_UPLINK_BPS} bit/s uplink"
    );
    ensure!(
        received_bps > 0 && received_bps < SHAPED_UPLINK_BPS,
        "the viewer received {received_bps} bit/s over a {SHAPED_UPLINK_BPS} bit/s uplink"
    );
    let delivered = delivered.context("checking the received frames against the clip")?;
    ensure!(
        delivered.starts_with_keyframe,
        "the output does not start with a keyframe"
    );
    lab.pass();
    Ok(())
}

#[test]
fn endpoint_fault_conntrack_flush() -> anyhow::Result<()> {
    conntrack_flush(Profile::Home, "endpoint_fault_conntrack_flush")
}

/// Behind bare masquerades a flush is harder: the camera's next packets reach the
/// viewer's NAT first and leave a colliding conntrack entry, so the viewer's mapping
/// moves to another port (the conntrack race, mid-stream).
#[test]
fn endpoint_fault_conntrack_flush_bare() -> anyhow::Result<()> {
    conntrack_flush(Profile::Bare, "endpoint_fault_conntrack_flush_bare")
}

fn conntrack_flush(profile: Profile, test: &str) -> anyhow::Result<()> {
    let Some(mut lab) = lab::start(test, &["conntrack"]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let mut sb = stream_bed_behind(lab.run(), camera_bin, viewer_bin, profile)?;
    let (report, stall, recovered, (received, skipped)) =
        stream_with_fault(&mut sb, "viewer", 15.0, FLUSH_RECOVERY, |sb| {
            sb.bed.topology.flush_conntrack(sb.camera_site)?;
            sb.bed.topology.flush_conntrack(sb.viewer_site)
        })?;
    lab::publish(&format!(
        "\nconntrack -F on both {profile} NATs mid-stream: longest stall {stall:?} (bound \
         {FLUSH_RECOVERY:?}), recovered {recovered}, {received} frames ({skipped} passed over), \
         paths {:?} then {:?}\n",
        report.connected_path, report.path_changes
    ));
    ensure!(report.exit_ok, "viewer failed: {:?}", report.failure);
    ensure!(
        recovered && stall <= FLUSH_RECOVERY,
        "the stream did not recover within {FLUSH_RECOVERY:?} (stall {stall:?})"
    );
    lab.pass();
    Ok(())
}

#[test]
fn endpoint_fault_rendezvous_restart() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_fault_rendezvous_restart", &[]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let mut sb = stream_bed(lab.run(), camera_bin, viewer_bin)?;
    let second_host = sb.bed.topology.add_host(sb.viewer_site, "viewer2")?;
    let restart_at = std::cell::Cell::new(Instant::now());
    let (report, stall, _, (received, _)) = stream_with_fault(
        &mut sb,
        "viewer",
        12.0,
        RENDEZVOUS_RESTART_STALL + Duration::from_secs(3),
        |sb| {
            restart_at.set(Instant::now());
            sb.camera.process.mark()?;
            sb.bed.servers.restart_rendezvous(Duration::from_secs(2))
        },
    )?;
    // Re-registration: the camera says so, and a new viewer finds it by ID.
    let registered = sb
        .camera
        .process
        .wait_event("registered", REREGISTER, |_| true);
    let deadline = restart_at.get() + REREGISTER + Duration::from_secs(20);
    let mut second = None;
    let mut attempts = 0;
    while Instant::now() < deadline {
        attempts += 1;
        let mut viewer = sb.bed.viewer(
            second_host,
            &format!("viewer2-{attempts}"),
            &sb.camera.id.clone(),
            Stop::Seconds(2.0),
        )?;
        let r = viewer.finish(VIEWER_DEADLINE)?;
        if r.exit_ok && r.frames() > 0 {
            second = Some((r, restart_at.get().elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    lab::publish(&format!(
        "\nrendezvous killed and restarted 3 s into the stream: longest stall {stall:?} (bound \
         {RENDEZVOUS_RESTART_STALL:?}), {received} frames; camera re-registered: {}; a new viewer \
         connected after {:?} ({attempts} attempts)\n",
        registered.is_ok(),
        second.as_ref().map(|(_, t)| *t)
    ));
    ensure!(
        report.exit_ok,
        "viewer failed across the restart: {:?}",
        report.failure
    );
    ensure!(
        stall <= RENDEZVOUS_RESTART_STALL,
        "the stream stalled {stall:?} while the rendezvous restarted"
    );
    registered.context("the camera did not report re-registration")?;
    ensure!(
        second.is_some(),
        "no new viewer could connect after the restart"
    );
    lab.pass();
    Ok(())
}

#[test]
fn endpoint_fault_viewer_renumbered() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_fault_viewer_renumbered", &[]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let mut sb = stream_bed(lab.run(), camera_bin, viewer_bin)?;
    let (report, stall, recovered, (received, skipped)) =
        stream_with_fault(&mut sb, "viewer", 15.0, ROAM_RECOVERY, |sb| {
            let host = sb.viewer_host;
            sb.bed.topology.renumber_host(host).map(drop)
        })?;
    lab::publish(&format!(
        "\nviewer renumbered mid-stream (192.168.1.x -> another address, new NAT mapping): longest \
         stall {stall:?} (bound {ROAM_RECOVERY:?}), recovered {recovered}, {received} frames ({skipped} \
         passed over), paths {:?} then {:?}\n",
        report.connected_path, report.path_changes
    ));
    ensure!(report.exit_ok, "viewer failed: {:?}", report.failure);
    ensure!(
        recovered && stall <= ROAM_RECOVERY,
        "the stream did not recover within {ROAM_RECOVERY:?} (stall {stall:?})"
    );
    lab.pass();
    Ok(())
}

#[test]
fn endpoint_fault_viewer_moves_to_other_nat() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_fault_viewer_moves", &[]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let mut sb = stream_bed(lab.run(), camera_bin, viewer_bin)?;
    let other = sb.bed.topology.add_site("view2", Profile::Home)?;
    let (report, stall, recovered, (received, skipped)) =
        stream_with_fault(&mut sb, "viewer", 15.0, ROAM_RECOVERY, |sb| {
            let host = sb.viewer_host;
            sb.bed.topology.move_host(host, other)
        })?;
    lab::publish(&format!(
        "\nviewer moved to another home NAT mid-stream: longest stall {stall:?} (bound \
         {ROAM_RECOVERY:?}), recovered {recovered}, {received} frames ({skipped} passed over), paths \
         {:?} then {:?}\n",
        report.connected_path, report.path_changes
    ));
    ensure!(report.exit_ok, "viewer failed: {:?}", report.failure);
    ensure!(
        recovered && stall <= ROAM_RECOVERY,
        "the stream did not recover within {ROAM_RECOVERY:?} (stall {stall:?})"
    );
    lab.pass();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Connect errors that say what happened, and a NAT that forgets idle mappings fast.
// ---------------------------------------------------------------------------------------

/// Runs the example viewer against `rendezvous` with `pki` (its rendezvous key) for
/// `device`; returns its report and how long the process took.
fn failing_viewer(
    bed: &Bed,
    host: HostId,
    label: &str,
    pki: &Pki,
    device: &str,
    rendezvous: &str,
    stream_port: u16,
) -> anyhow::Result<(ViewerReport, Duration)> {
    let started = Instant::now();
    let stream_port = stream_port.to_string();
    let mut viewer = ViewerRun::start_with(
        bed.topology.run(),
        bed.topology.host(host),
        label,
        &bed.viewer_bin,
        pki,
        device,
        Stop::Frames(1),
        rendezvous,
        &["--rendezvous-stream-port", &stream_port],
    )?;
    let report = viewer.finish(Duration::from_secs(30))?;
    Ok((report, started.elapsed()))
}

#[test]
fn endpoint_connect_errors() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_connect_errors", &[]) else {
        return Ok(());
    };
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        lab.pass();
        return Ok(());
    };
    let mut bed = Bed::new(lab.run(), camera_bin, viewer_bin)?;
    let camera_site = bed.topology.add_site("cam", Profile::Home)?;
    let camera_host = bed.topology.add_host(camera_site, "camera")?;
    let viewer_site = bed.topology.add_site("view", Profile::Home)?;
    let viewer_host = bed.topology.add_host(viewer_site, "viewer")?;
    // A camera that registers, then goes away (power cut: no goodbye).
    let mut camera = bed.camera(camera_host, "camera", "synthetic")?;
    camera.process.kill();
    let device = camera.id.clone();
    let good = Servers::rendezvous_addr();
    let mut wrong_key = bed.pki().clone();
    wrong_key.rendezvous_public = "42".repeat(32);
    // (case, rendezvous, its TCP/TLS stream port, key, expected error name, bound on the
    // viewer's own `ms`). The lab's rendezvous also listens for TCP/TLS on 443, which a
    // viewer tries after 2 s without an answer over UDP (spec/stream.md): a wrong UDP
    // port with the right host still reaches it, so the wrong-port case gets a wrong
    // stream port too (refused: reported at the fallback), and a wrong host waits for the
    // stream's own 3.5 s.
    let cases: [(&str, String, u16, Pki, &str, u64); 4] = [
        (
            "device offline",
            good.clone(),
            443,
            bed.pki().clone(),
            "device_offline",
            4_500,
        ),
        (
            "wrong rendezvous key",
            good.clone(),
            443,
            wrong_key,
            "rendezvous_key_mismatch",
            1_000,
        ),
        (
            "wrong ports",
            format!("{RENDEZVOUS_IP}:{}", servers::RENDEZVOUS_PORT + 1),
            444,
            bed.pki().clone(),
            "rendezvous_unreachable",
            3_000,
        ),
        (
            "wrong host",
            format!("203.0.113.11:{}", servers::RENDEZVOUS_PORT),
            443,
            bed.pki().clone(),
            "rendezvous_unreachable",
            6_000,
        ),
    ];
    let mut lines = String::from("\nconnect errors (example viewer, home NAT):\n");
    let mut problems = Vec::new();
    let mut check =
        |case: &str, expected: &str, bound: u64, report: &ViewerReport, took: Duration| {
            let _ = writeln!(
                lines,
                "  {case:22} -> {:?} after {:?} ms ({} ms with process start); {:?}",
                report.error,
                report.failed_ms,
                took.as_millis(),
                report.failure
            );
            if report.exit_ok || report.error.as_deref() != Some(expected) {
                problems.push(format!(
                    "{case}: expected {expected}, got {:?}",
                    report.error
                ));
            }
            if report.failed_ms.is_none_or(|ms| ms > bound) {
                problems.push(format!(
                    "{case}: {:?} ms, bound {bound} ms",
                    report.failed_ms
                ));
            }
        };
    for (index, (case, rendezvous, stream_port, pki, expected, bound)) in cases.iter().enumerate() {
        let label = format!("viewer-{index}");
        let (report, took) = failing_viewer(
            &bed,
            viewer_host,
            &label,
            pki,
            &device,
            rendezvous,
            *stream_port,
        )?;
        check(case, expected, *bound, &report, took);
    }
    // Last: the rendezvous itself stops.
    bed.servers.rendezvous.kill();
    let (report, took) = failing_viewer(
        &bed,
        viewer_host,
        "viewer-stopped",
        bed.pki(),
        &device,
        &good,
        443,
    )?;
    // UDP unanswered for 2 s, then the stream's connection is refused.
    check(
        "rendezvous stopped",
        "rendezvous_unreachable",
        3_000,
        &report,
        took,
    );
    lab::publish(&lines);
    ensure!(problems.is_empty(), "{problems:#?}");
    lab.pass();
    Ok(())
}

/// The conntrack UDP timeouts of the camera's home router in the short-mapping profile.
const SHORT_UDP_TIMEOUT_SECS: u64 = 12;

/// A camera behind a home router whose conntrack forgets idle UDP flows after
/// [`SHORT_UDP_TIMEOUT_SECS`], a rendezvous with the default 20 s keepalive interval
/// (`probes`: answering keepalive probes or not).
fn short_mapping_bed(
    lab: &lab::Run,
    probes: bool,
) -> anyhow::Result<Option<(Bed, HostId, Camera)>> {
    let Some((camera_bin, viewer_bin)) = endpoint() else {
        return Ok(None);
    };
    let limits = format!("keepalive_interval_ms = 20000\nkeepalive_probes = {probes}\n");
    let mut bed = Bed::with_limits(lab, camera_bin, viewer_bin, &limits)?;
    let camera_site = bed.topology.add_site("cam", Profile::Home)?;
    let camera_host = bed.topology.add_host(camera_site, "camera")?;
    let viewer_site = bed.topology.add_site("view", Profile::Home)?;
    let viewer_host = bed.topology.add_host(viewer_site, "viewer")?;
    let timeout = SHORT_UDP_TIMEOUT_SECS.to_string();
    for router in bed.topology.routers(camera_site) {
        router.sysctl("net.netfilter.nf_conntrack_udp_timeout", &timeout)?;
        router.sysctl("net.netfilter.nf_conntrack_udp_timeout_stream", &timeout)?;
    }
    let camera = bed.camera(camera_host, "camera", "synthetic")?;
    Ok(Some((bed, viewer_host, camera)))
}

#[test]
fn endpoint_short_mapping_timeout() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_short_mapping_timeout", &[]) else {
        return Ok(());
    };
    let Some((bed, viewer_host, mut camera)) = short_mapping_bed(lab.run(), true)? else {
        lab.pass();
        return Ok(());
    };
    let registered = Instant::now();
    // The camera learns the mapping lifetime: its interval goes under the timeout.
    let limit = SHORT_UDP_TIMEOUT_SECS * 1000;
    let learned =
        camera
            .process
            .wait_event("keepalive_interval", Duration::from_secs(150), |line| {
                line.u64("ms").is_some_and(|ms| ms < limit)
            })?;
    let learned_after = registered.elapsed();
    let interval_ms = learned.u64("ms").unwrap_or(0);
    // Then nobody watches for more than 40 s.
    let idle = Duration::from_secs(45);
    std::thread::sleep(idle);
    let intervals: Vec<u64> = camera
        .process
        .lines()?
        .iter()
        .filter(|l| l.event() == Some("keepalive_interval"))
        .filter_map(|l| l.u64("ms"))
        .collect();
    let mut viewer = bed.viewer(viewer_host, "viewer", &camera.id, Stop::Frames(60))?;
    let report = viewer.finish(VIEWER_DEADLINE)?;
    lab::publish(&format!(
        "\nshort mapping timeout (camera router conntrack UDP timeouts {SHORT_UDP_TIMEOUT_SECS} s, \
         rendezvous keepalive 20 s): intervals {intervals:?} ms, {interval_ms} ms learned {} s \
         after registering; after {} s idle a viewer: {}\n",
        learned_after.as_secs(),
        idle.as_secs(),
        cell_text(&report),
    ));
    ensure!(report.exit_ok, "viewer failed: {:?}", report.failure);
    ensure!(
        report.frames() == 60,
        "viewer got {} frames",
        report.frames()
    );
    ensure!(
        intervals.last().is_some_and(|ms| *ms < limit),
        "final interval {intervals:?}"
    );
    lab.pass();
    Ok(())
}

#[test]
fn endpoint_short_mapping_timeout_without_probes() -> anyhow::Result<()> {
    let Some(mut lab) = lab::start("endpoint_short_mapping_timeout_without_probes", &[]) else {
        return Ok(());
    };
    let Some((bed, viewer_host, mut camera)) = short_mapping_bed(lab.run(), false)? else {
        lab.pass();
        return Ok(());
    };
    let registered = Instant::now();
    // The rendezvous answers the probe at once: the camera keeps the 20 s interval.
    let fixed = camera
        .process
        .wait_event("keepalive_interval", Duration::from_secs(5), |_| true)?;
    ensure!(fixed.u64("ms") == Some(20_000), "{:?}", fixed.json);
    // Its keepalives leave at registration + 20 s·k; the router forgets the mapping
    // 12 s after each. A viewer arriving 14 s after one is refused: nothing the
    // rendezvous forwards reaches the camera before the consent window (3 s) closes.
    let at = Duration::from_secs(20 + 14);
    std::thread::sleep(at.saturating_sub(registered.elapsed()));
    let mut viewer = bed.viewer(viewer_host, "viewer", &camera.id, Stop::Frames(10))?;
    let report = viewer.finish(VIEWER_DEADLINE)?;
    lab::publish(&format!(
        "\nshort mapping timeout, rendezvous without probes (fixed 20 s keepalive): a viewer \
         {} s after registering: {:?} after {:?} ms\n",
        at.as_secs(),
        report.error,
        report.failed_ms,
    ));
    ensure!(
        report.error.as_deref() == Some("device_offline"),
        "the camera was reachable after all: {:?}",
        report.failure
    );
    lab.pass();
    Ok(())
}
