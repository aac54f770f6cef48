use super::*;

const SERVER_A: &str = "198.51.100.1";
const SERVER_B: &str = "198.51.100.2";
const NAT_IP: &str = "203.0.113.1";
const CLIENT_IP: &str = "192.168.1.2";

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn rfc(mapping: Mapping, filtering: Filtering, ports: PortAllocation) -> NatConfig {
    NatConfig::new(NatBehavior::Rfc4787 {
        mapping,
        filtering,
        ports,
    })
}

struct Bed {
    sim: Sim,
    nat: NatId,
}

impl Bed {
    fn new(config: NatConfig) -> Self {
        let mut sim = Sim::new(Instant::now(), SimConfig::default());
        sim.add_public_host(SERVER_A.parse().unwrap());
        sim.add_public_host(SERVER_B.parse().unwrap());
        let nat = sim.add_nat(NAT_IP.parse().unwrap(), config);
        sim.add_host_behind(nat, CLIENT_IP.parse().unwrap());
        Bed { sim, nat }
    }

    /// Sends and runs the network dry; returns what arrived.
    fn exchange(&mut self, from: SocketAddr, to: SocketAddr, ttl: Option<u8>) -> Vec<Delivery> {
        self.sim.send(from, to, ttl, vec![1, 2, 3]);
        while let Some(t) = self.sim.next_event_time() {
            self.sim.advance_to(t);
        }
        std::iter::from_fn(|| self.sim.poll_delivery()).collect()
    }

    /// The external address the client's packet from `port` to `to` appears from.
    fn mapped(&mut self, port: u16, to: SocketAddr) -> SocketAddr {
        let got = self.exchange(addr(CLIENT_IP, port), to, None);
        assert_eq!(got.len(), 1, "outbound packet must arrive");
        got[0].from
    }

    /// Whether a packet from `from` to the NAT's `port` reaches the client.
    fn inbound_passes(&mut self, from: SocketAddr, port: u16) -> bool {
        let got = self.exchange(from, addr(NAT_IP, port), None);
        got.iter()
            .any(|d| d.to.ip() == CLIENT_IP.parse::<IpAddr>().unwrap())
    }
}

#[test]
fn mapping_behaviours() {
    use Mapping::*;
    let a1 = addr(SERVER_A, 1000);
    let a2 = addr(SERVER_A, 2000);
    let b1 = addr(SERVER_B, 1000);
    for (mapping, same_ip_other_port, other_ip) in [
        (EndpointIndependent, true, true),
        (AddressDependent, true, false),
        (AddressAndPortDependent, false, false),
    ] {
        let mut bed = Bed::new(rfc(
            mapping,
            Filtering::EndpointIndependent,
            PortAllocation::Sequential,
        ));
        let first = bed.mapped(5000, a1);
        assert_eq!(
            bed.mapped(5000, a1),
            first,
            "{mapping:?}: a mapping is reused"
        );
        assert_eq!(
            bed.mapped(5000, a2) == first,
            same_ip_other_port,
            "{mapping:?}"
        );
        assert_eq!(bed.mapped(5000, b1) == first, other_ip, "{mapping:?}");
    }
}

#[test]
fn filtering_behaviours() {
    use Filtering::*;
    for (filtering, other_port_passes, other_ip_passes) in [
        (EndpointIndependent, true, true),
        (AddressDependent, true, false),
        (AddressAndPortDependent, false, false),
    ] {
        let mut bed = Bed::new(rfc(
            Mapping::EndpointIndependent,
            filtering,
            PortAllocation::Preserve,
        ));
        let port = bed.mapped(5000, addr(SERVER_A, 1000)).port();
        assert!(
            bed.inbound_passes(addr(SERVER_A, 1000), port),
            "{filtering:?}: the reply passes"
        );
        assert_eq!(
            bed.inbound_passes(addr(SERVER_A, 1001), port),
            other_port_passes,
            "{filtering:?}"
        );
        assert_eq!(
            bed.inbound_passes(addr(SERVER_B, 1000), port),
            other_ip_passes,
            "{filtering:?}"
        );
        assert!(
            !bed.inbound_passes(addr(SERVER_A, 1000), port + 1),
            "no mapping, no entry"
        );
    }
}

#[test]
fn port_allocation() {
    let to = addr(SERVER_A, 1000);
    let mut bed = Bed::new(rfc(
        Mapping::AddressAndPortDependent,
        Filtering::EndpointIndependent,
        PortAllocation::Preserve,
    ));
    assert_eq!(bed.mapped(5000, to).port(), 5000);
    // Second mapping of the same internal port cannot have it again.
    assert_ne!(bed.mapped(5000, addr(SERVER_A, 1001)).port(), 5000);

    let mut bed = Bed::new(rfc(
        Mapping::AddressAndPortDependent,
        Filtering::EndpointIndependent,
        PortAllocation::Sequential,
    ));
    let first = bed.mapped(5000, to).port();
    assert_eq!(first, FIRST_DYNAMIC_PORT);
    assert_eq!(bed.mapped(5000, addr(SERVER_A, 1001)).port(), first + 1);
    assert_eq!(bed.mapped(5000, addr(SERVER_A, 1002)).port(), first + 2);

    let mut bed = Bed::new(rfc(
        Mapping::AddressAndPortDependent,
        Filtering::EndpointIndependent,
        PortAllocation::Random,
    ));
    let ports: Vec<u16> = (0..8)
        .map(|i| bed.mapped(5000, addr(SERVER_A, 1000 + i)).port())
        .collect();
    let sequential = ports.windows(2).all(|w| w[1] == w[0].wrapping_add(1));
    assert!(
        !sequential,
        "random ports must not be sequential: {ports:?}"
    );
    assert!(ports.iter().all(|&p| p >= FIRST_DYNAMIC_PORT));
}

#[test]
fn hairpinning() {
    for on in [false, true] {
        let config = rfc(
            Mapping::EndpointIndependent,
            Filtering::EndpointIndependent,
            PortAllocation::Preserve,
        )
        .with_hairpinning(on);
        let mut bed = Bed::new(config);
        let other = bed
            .sim
            .add_host_behind(bed.nat, "192.168.1.3".parse().unwrap());
        // The other host opens a mapping, then the client sends to its public address.
        let public = bed.mapped_from("192.168.1.3", 7000, addr(SERVER_A, 1));
        let got = bed.exchange(addr(CLIENT_IP, 5000), public, None);
        assert_eq!(got.iter().any(|d| d.host == other), on, "hairpinning {on}");
        if on {
            assert_eq!(
                got[0].from,
                addr(NAT_IP, 5000),
                "hairpinned packets come from the public mapping"
            );
        }
    }
}

impl Bed {
    fn mapped_from(&mut self, ip: &str, port: u16, to: SocketAddr) -> SocketAddr {
        let got = self.exchange(addr(ip, port), to, None);
        got[0].from
    }
}

#[test]
fn mapping_timeout() {
    let config = rfc(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
        PortAllocation::Preserve,
    )
    .with_mapping_timeout(Duration::from_secs(10));
    let mut bed = Bed::new(config);
    let server = addr(SERVER_A, 1000);
    let port = bed.mapped(5000, server).port();
    let t = bed.sim.now() + Duration::from_secs(9);
    bed.sim.advance_to(t);
    assert!(bed.inbound_passes(server, port), "alive before the timeout");
    let t = bed.sim.now() + Duration::from_secs(11);
    bed.sim.advance_to(t);
    assert!(
        !bed.inbound_passes(server, port),
        "expired after the timeout"
    );
}

#[test]
fn ttl_expires_at_routers() {
    let mut bed = Bed::new(rfc(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
        PortAllocation::Preserve,
    ));
    let server = addr(SERVER_A, 1000);
    // TTL 2 passes the NAT (which maps it) and dies in the core.
    assert!(
        bed.exchange(addr(CLIENT_IP, 5000), server, Some(2))
            .is_empty()
    );
    assert_eq!(bed.sim.stats().ttl_expired, 1);
    assert!(
        bed.inbound_passes(server, 5000),
        "the low-TTL packet still opened the NAT"
    );
    // TTL 1 dies at the NAT and maps nothing.
    assert!(
        bed.exchange(addr(CLIENT_IP, 6000), server, Some(1))
            .is_empty()
    );
    assert!(!bed.inbound_passes(server, 6000));
    // Enough TTL to cross the NAT and the core arrives with the rest.
    let hops = SimConfig::default().internet_hops;
    let got = bed.exchange(addr(CLIENT_IP, 5000), server, Some(hops + 2));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ttl, 1);
}

#[test]
fn linux_conntrack_collision() {
    let peer = addr(SERVER_A, 1000);
    // Bare masquerade: the peer's packet lands first and takes the tuple.
    let mut bed = Bed::new(NatConfig::new(NatBehavior::Linux(
        LinuxInput::BareMasquerade,
    )));
    assert!(!bed.inbound_passes(peer, 5000));
    assert_eq!(bed.sim.stats().conntrack_collisions, 1);
    let mapped = bed.mapped(5000, peer);
    assert_ne!(
        mapped.port(),
        5000,
        "the collision moves the local packet to another port"
    );
    assert!(
        !bed.inbound_passes(peer, 5000),
        "the original port stays blocked"
    );
    assert!(
        bed.inbound_passes(peer, mapped.port()),
        "the new port works as a reply"
    );
    // Other remotes still get the preserved port: the clash is per tuple.
    assert_eq!(bed.mapped(5000, addr(SERVER_B, 1000)).port(), 5000);

    // With `ct state new drop` the same order of packets keeps the port.
    let mut bed = Bed::new(NatConfig::new(NatBehavior::Linux(
        LinuxInput::CtStateNewDrop,
    )));
    assert!(!bed.inbound_passes(peer, 5000));
    assert_eq!(bed.sim.stats().conntrack_collisions, 0);
    assert_eq!(bed.mapped(5000, peer).port(), 5000);
    assert!(bed.inbound_passes(peer, 5000));
    assert!(
        !bed.inbound_passes(addr(SERVER_A, 1001), 5000),
        "Linux filters per endpoint"
    );
}

#[test]
fn same_lan_hosts_talk_directly() {
    let mut bed = Bed::new(rfc(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
        PortAllocation::Preserve,
    ));
    let other = bed
        .sim
        .add_host_behind(bed.nat, "192.168.1.3".parse().unwrap());
    let got = bed.exchange(addr(CLIENT_IP, 5000), addr("192.168.1.3", 7000), None);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].host, other);
    assert_eq!(got[0].from, addr(CLIENT_IP, 5000));
    assert_eq!(
        bed.sim.nat_entries(bed.nat),
        0,
        "LAN traffic does not touch the NAT"
    );
}

#[test]
fn private_destinations_are_unroutable_on_the_internet() {
    let mut bed = Bed::new(rfc(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
        PortAllocation::Preserve,
    ));
    assert!(
        bed.exchange(addr(CLIENT_IP, 5000), addr("10.9.9.9", 1), None)
            .is_empty()
    );
    assert_eq!(bed.sim.stats().unroutable, 1);
}

#[test]
fn detached_hosts_receive_nothing() {
    let mut bed = Bed::new(rfc(
        Mapping::EndpointIndependent,
        Filtering::EndpointIndependent,
        PortAllocation::Preserve,
    ));
    let client = HostId(2);
    let port = bed.mapped(5000, addr(SERVER_A, 1)).port();
    bed.sim.attach(client, Attachment::Detached);
    assert!(!bed.inbound_passes(addr(SERVER_A, 1), port));
    bed.sim.attach(
        client,
        Attachment::BehindNat(bed.nat, CLIENT_IP.parse().unwrap()),
    );
    assert!(bed.inbound_passes(addr(SERVER_A, 1), port));
    bed.sim.flush_nat(bed.nat);
    assert!(
        !bed.inbound_passes(addr(SERVER_A, 1), port),
        "a rebooted NAT forgets its mappings"
    );
}

#[test]
fn nat_table_is_bounded() {
    let mut bed = Bed::new(rfc(
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
        PortAllocation::Sequential,
    ));
    for i in 0..(MAX_NAT_ENTRIES as u32 + 10) {
        let port = 1 + (i % 60_000) as u16;
        bed.sim.send(
            addr(CLIENT_IP, 5000),
            addr(SERVER_A, port),
            None,
            Vec::new(),
        );
        let t = bed.sim.now() + Duration::from_micros(10);
        bed.sim.advance_to(t);
        while bed.sim.poll_delivery().is_some() {}
    }
    while let Some(t) = bed.sim.next_event_time() {
        bed.sim.advance_to(t);
    }
    assert_eq!(bed.sim.nat_entries(bed.nat), MAX_NAT_ENTRIES);
}

#[test]
fn filter_memory_per_mapping_is_bounded() {
    let mut bed = Bed::new(rfc(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
        PortAllocation::Preserve,
    ));
    let first = addr(SERVER_A, 1);
    bed.mapped(5000, first);
    for i in 0..MAX_CONTACTED_PER_MAPPING as u16 {
        bed.mapped(5000, addr(SERVER_A, 100 + i));
    }
    assert!(
        !bed.inbound_passes(first, 5000),
        "the oldest contact was forgotten"
    );
    assert!(bed.inbound_passes(addr(SERVER_A, 100), 5000));
}

#[test]
fn in_flight_and_unpolled_deliveries_are_bounded() {
    let mut sim = Sim::new(Instant::now(), SimConfig::default());
    sim.add_public_host(SERVER_A.parse().unwrap());
    sim.add_public_host(SERVER_B.parse().unwrap());
    for _ in 0..MAX_IN_FLIGHT + 5 {
        sim.send(addr(SERVER_A, 1), addr(SERVER_B, 1), None, Vec::new());
    }
    assert_eq!(sim.stats().overflow, 5);
    let t = sim.now() + Duration::from_secs(1);
    sim.advance_to(t);
    assert_eq!(sim.stats().delivered, MAX_IN_FLIGHT as u64);
    for _ in 0..10 {
        sim.send(addr(SERVER_A, 1), addr(SERVER_B, 1), None, Vec::new());
    }
    let t = sim.now() + Duration::from_secs(1);
    sim.advance_to(t);
    assert_eq!(
        sim.stats().overflow,
        15,
        "deliveries beyond the unpolled limit are dropped"
    );
}

fn run_lossy(seed: u64) -> (Vec<(Duration, u16)>, SimStats) {
    let epoch = Instant::now();
    let config = SimConfig {
        seed,
        jitter: Duration::from_millis(30),
        loss_per_million: 200_000,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(epoch, config);
    sim.add_public_host(SERVER_A.parse().unwrap());
    let nat = sim.add_nat(
        NAT_IP.parse().unwrap(),
        rfc(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
            PortAllocation::Random,
        ),
    );
    sim.add_host_behind(nat, CLIENT_IP.parse().unwrap());
    for i in 0..200u16 {
        sim.send(
            addr(CLIENT_IP, 5000),
            addr(SERVER_A, 1000 + i % 7),
            None,
            vec![i as u8],
        );
    }
    while let Some(t) = sim.next_event_time() {
        sim.advance_to(t);
    }
    let got = std::iter::from_fn(|| sim.poll_delivery())
        .map(|d| (d.at - epoch, d.from.port()))
        .collect();
    (got, sim.stats())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(16))]
    #[test]
    fn same_seed_same_run(seed in proptest::prelude::any::<u64>()) {
        let (a, stats_a) = run_lossy(seed);
        let (b, stats_b) = run_lossy(seed);
        proptest::prop_assert_eq!(&a, &b);
        proptest::prop_assert_eq!(stats_a, stats_b);
        // 20 % loss over 200 packets: some lost, most delivered.
        proptest::prop_assert!(stats_a.lost > 0 && stats_a.delivered > 100);
    }
}

#[test]
fn blocked_routes_drop_both_directions() {
    let mut bed = Bed::new(rfc(
        Mapping::EndpointIndependent,
        Filtering::EndpointIndependent,
        PortAllocation::Preserve,
    ));
    let nat_ip: IpAddr = NAT_IP.parse().unwrap();
    let server: IpAddr = SERVER_A.parse().unwrap();
    bed.sim.set_route_blocked(server, nat_ip, true);
    assert!(
        bed.exchange(addr(CLIENT_IP, 5000), addr(SERVER_A, 1), None)
            .is_empty()
    );
    assert_eq!(
        bed.exchange(addr(CLIENT_IP, 5000), addr(SERVER_B, 1), None)
            .len(),
        1,
        "other routes work"
    );
    assert!(!bed.inbound_passes(addr(SERVER_A, 1), 5000));
    bed.sim.set_route_blocked(nat_ip, server, false);
    assert_eq!(
        bed.exchange(addr(CLIENT_IP, 5000), addr(SERVER_A, 1), None)
            .len(),
        1
    );
}

#[test]
fn naive_simultaneous_open_between_bare_masquerades_fails() {
    // DESIGN.md: with a bare masquerade on both sides, a plain simultaneous open
    // fails: each side's first packet lands before the other's local packet, and
    // conntrack moves the local packet to another port.
    let mut sim = Sim::new(Instant::now(), SimConfig::default());
    let bare = NatConfig::new(NatBehavior::Linux(LinuxInput::BareMasquerade));
    let nat_a = sim.add_nat("203.0.113.1".parse().unwrap(), bare);
    let nat_b = sim.add_nat("203.0.113.2".parse().unwrap(), bare);
    sim.add_host_behind(nat_a, "192.168.1.2".parse().unwrap());
    sim.add_host_behind(nat_b, "10.0.0.2".parse().unwrap());
    let (a, b) = (addr("192.168.1.2", 5000), addr("10.0.0.2", 6000));
    let (pub_a, pub_b) = (addr("203.0.113.1", 5000), addr("203.0.113.2", 6000));
    // B is a little late, as a real peer always is.
    sim.send(a, pub_b, None, vec![1]);
    let t = sim.now() + Duration::from_millis(60);
    sim.advance_to(t);
    sim.send(b, pub_a, None, vec![2]);
    for _ in 0..5 {
        let t = sim.now() + Duration::from_millis(100);
        sim.advance_to(t);
        sim.send(a, pub_b, None, vec![1]);
        sim.send(b, pub_a, None, vec![2]);
    }
    let t = sim.now() + Duration::from_secs(1);
    sim.advance_to(t);
    assert_eq!(sim.poll_delivery(), None, "nothing gets through");
    assert!(sim.stats().conntrack_collisions >= 1);

    // Same race with `ct state new drop` on both routers: it succeeds.
    let mut sim = Sim::new(Instant::now(), SimConfig::default());
    let fw = NatConfig::new(NatBehavior::Linux(LinuxInput::CtStateNewDrop));
    let nat_a = sim.add_nat("203.0.113.1".parse().unwrap(), fw);
    let nat_b = sim.add_nat("203.0.113.2".parse().unwrap(), fw);
    sim.add_host_behind(nat_a, "192.168.1.2".parse().unwrap());
    sim.add_host_behind(nat_b, "10.0.0.2".parse().unwrap());
    sim.send(a, pub_b, None, vec![1]);
    let t = sim.now() + Duration::from_millis(60);
    sim.advance_to(t);
    sim.send(b, pub_a, None, vec![2]);
    let t = sim.now() + Duration::from_millis(100);
    sim.advance_to(t);
    sim.send(a, pub_b, None, vec![1]);
    let t = sim.now() + Duration::from_secs(1);
    sim.advance_to(t);
    let got: Vec<Delivery> = std::iter::from_fn(|| sim.poll_delivery()).collect();
    assert!(got.iter().any(|d| d.to == b), "A's retry reaches B");
    assert!(got.iter().any(|d| d.to == a), "B's packet reaches A");
}

#[test]
fn linux_conntrack_entries_are_refreshed_in_both_directions() {
    let timeout = Duration::from_secs(10);
    let config = NatConfig::new(NatBehavior::Linux(LinuxInput::BareMasquerade))
        .with_mapping_timeout(timeout);
    let mut bed = Bed::new(config);
    let peer = addr(SERVER_A, 1000);
    let port = bed.mapped(5000, peer).port();
    // Inbound packets alone keep the entry alive past the timeout...
    for _ in 0..3 {
        let t = bed.sim.now() + Duration::from_secs(8);
        bed.sim.advance_to(t);
        assert!(bed.inbound_passes(peer, port));
    }
    // ...and so does a colliding entry that keeps being hit: the peer's retries keep the
    // local host's port blocked.
    let other = addr(SERVER_B, 1000);
    assert!(!bed.inbound_passes(other, 6000));
    for _ in 0..3 {
        let t = bed.sim.now() + Duration::from_secs(8);
        bed.sim.advance_to(t);
        assert!(!bed.inbound_passes(other, 6000));
    }
    assert_ne!(
        bed.mapped(6000, other).port(),
        6000,
        "still colliding after 24 s of retries"
    );
}

// ---- nested NAT (double NAT / carrier-grade NAT) -----------------------------------

const CGN_PUBLIC: &str = "203.0.113.50";
const HOME_WAN: &str = "100.64.0.2";
const HOME_CLIENT: &str = "192.168.1.2";
const CGN_NEIGHBOUR: &str = "100.64.0.3";

/// A public server, a CGN (outer NAT) with a home router (inner NAT) and a neighbour host
/// on its LAN, and a client behind the home router.
struct Nested {
    sim: Sim,
    server: HostId,
    outer: NatId,
    inner: NatId,
    client: HostId,
    neighbour: HostId,
}

impl Nested {
    fn new(outer: NatConfig, inner: NatConfig) -> Self {
        let mut sim = Sim::new(Instant::now(), SimConfig::default());
        let server = sim.add_public_host(SERVER_A.parse().unwrap());
        let outer = sim.add_nat(CGN_PUBLIC.parse().unwrap(), outer);
        let inner = sim.add_nat_behind(outer, HOME_WAN.parse().unwrap(), inner);
        let client = sim.add_host_behind(inner, HOME_CLIENT.parse().unwrap());
        let neighbour = sim.add_host_behind(outer, CGN_NEIGHBOUR.parse().unwrap());
        Nested {
            sim,
            server,
            outer,
            inner,
            client,
            neighbour,
        }
    }

    fn exchange(&mut self, from: SocketAddr, to: SocketAddr) -> Vec<Delivery> {
        self.sim.send(from, to, None, vec![7]);
        while let Some(t) = self.sim.next_event_time() {
            self.sim.advance_to(t);
        }
        std::iter::from_fn(|| self.sim.poll_delivery()).collect()
    }
}

fn symmetric_sequential() -> NatConfig {
    rfc(
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
        PortAllocation::Sequential,
    )
}

fn port_restricted_cone() -> NatConfig {
    rfc(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
        PortAllocation::Preserve,
    )
}

#[test]
fn double_nat_round_trip_to_a_public_server() {
    let mut net = Nested::new(symmetric_sequential(), port_restricted_cone());
    assert_eq!(net.sim.nat_outer(net.inner), Some(net.outer));
    assert_eq!(net.sim.nat_outer(net.outer), None);
    assert_eq!(
        net.sim.nat_public_ip(net.inner),
        Some(HOME_WAN.parse().unwrap()),
        "a nested NAT's address is its WAN private address"
    );
    let client = addr(HOME_CLIENT, 5000);
    let server = addr(SERVER_A, 3478);
    let start = net.sim.now();
    let got = net.exchange(client, server);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].host, net.server);
    // The inner NAT preserves 5000; the outer allocates sequentially.
    assert_eq!(got[0].from, addr(CGN_PUBLIC, FIRST_DYNAMIC_PORT));
    let config = SimConfig::default();
    assert_eq!(
        got[0].at - start,
        2 * config.lan_latency + 2 * config.uplink_latency,
        "home LAN + CGN LAN + both uplinks"
    );
    assert_eq!(net.sim.nat_entries(net.inner), 1);
    assert_eq!(net.sim.nat_entries(net.outer), 1);

    // The reply finds its way back through both NATs.
    let got = net.exchange(server, got[0].from);
    assert_eq!(got.len(), 1, "reply delivered: {:?}", net.sim.stats());
    assert_eq!(got[0].host, net.client);
    assert_eq!(got[0].to, client);
    assert_eq!(got[0].from, server);
    // The internet cannot address the inner NAT's private WAN address.
    assert!(net.exchange(server, addr(HOME_WAN, 5000)).is_empty());
    assert_eq!(net.sim.stats().unroutable, 1);
}

#[test]
fn each_nat_decrements_the_ttl() {
    let mut net = Nested::new(port_restricted_cone(), port_restricted_cone());
    let server = addr(SERVER_A, 3478);
    let hops = SimConfig::default().internet_hops;
    let single = net.exchange(addr(CGN_NEIGHBOUR, 5000), server);
    let double = net.exchange(addr(HOME_CLIENT, 5000), server);
    assert_eq!(single[0].ttl, DEFAULT_TTL - 1 - hops);
    assert_eq!(
        double[0].ttl,
        single[0].ttl - 1,
        "one more NAT, one less TTL"
    );
    let reply = net.exchange(server, double[0].from);
    assert_eq!(reply[0].ttl, DEFAULT_TTL - hops - 2);
    // TTL 2 passes the inner NAT and dies at the outer one: no outer mapping made.
    let before = net.sim.stats().ttl_expired;
    net.sim
        .send(addr(HOME_CLIENT, 6000), server, Some(2), vec![1]);
    while let Some(t) = net.sim.next_event_time() {
        net.sim.advance_to(t);
    }
    assert_eq!(net.sim.stats().ttl_expired, before + 1);
    assert_eq!(net.sim.nat_entries(net.inner), 2);
    assert_eq!(
        net.sim.nat_entries(net.outer),
        2,
        "only the two earlier mappings"
    );
}

#[test]
fn flushing_either_nat_breaks_the_path() {
    for flush_inner in [true, false] {
        let mut net = Nested::new(port_restricted_cone(), port_restricted_cone());
        let server = addr(SERVER_A, 3478);
        let seen = net.exchange(addr(HOME_CLIENT, 5000), server)[0].from;
        assert_eq!(net.exchange(server, seen).len(), 1);
        let (flushed, kept) = if flush_inner {
            (net.inner, net.outer)
        } else {
            (net.outer, net.inner)
        };
        net.sim.flush_nat(flushed);
        assert_eq!(net.sim.nat_entries(flushed), 0);
        assert_eq!(
            net.sim.nat_entries(kept),
            1,
            "the other NAT keeps its mapping"
        );
        let dropped = net.sim.stats().nat_dropped;
        assert!(
            net.exchange(server, seen).is_empty(),
            "flush inner {flush_inner}: the reply no longer gets in"
        );
        assert_eq!(net.sim.stats().nat_dropped, dropped + 1);
        // A new outbound packet restores the path.
        let seen = net.exchange(addr(HOME_CLIENT, 5000), server)[0].from;
        assert_eq!(net.exchange(server, seen).len(), 1);
    }
}

#[test]
fn outer_lan_hosts_reach_the_inner_nat_wan_address() {
    for (filtering, passes) in [
        (Filtering::EndpointIndependent, true),
        (Filtering::AddressAndPortDependent, false),
    ] {
        let inner = rfc(
            Mapping::EndpointIndependent,
            filtering,
            PortAllocation::Preserve,
        );
        let mut net = Nested::new(symmetric_sequential(), inner);
        // The client opens a mapping on the home router by talking to the server.
        net.exchange(addr(HOME_CLIENT, 5000), addr(SERVER_A, 3478));
        let outer_entries = net.sim.nat_entries(net.outer);
        let start = net.sim.now();
        let got = net.exchange(addr(CGN_NEIGHBOUR, 7000), addr(HOME_WAN, 5000));
        assert_eq!(
            got.iter().any(|d| d.host == net.client),
            passes,
            "{filtering:?}"
        );
        if passes {
            assert_eq!(got[0].to, addr(HOME_CLIENT, 5000));
            assert_eq!(
                got[0].from,
                addr(CGN_NEIGHBOUR, 7000),
                "LAN traffic: no outer NAT"
            );
            assert_eq!(got[0].ttl, DEFAULT_TTL - 1, "only the inner NAT routed it");
            assert_eq!(got[0].at - start, 2 * SimConfig::default().lan_latency);
        }
        // The client answers the neighbour's private address directly, through its
        // home router only.
        let got = net.exchange(addr(HOME_CLIENT, 5000), addr(CGN_NEIGHBOUR, 7000));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].host, net.neighbour);
        assert_eq!(got[0].from, addr(HOME_WAN, 5000));
        assert_eq!(got[0].ttl, DEFAULT_TTL - 1);
        assert_eq!(
            net.sim.nat_entries(net.outer),
            outer_entries,
            "LAN traffic does not touch the outer NAT"
        );
        // Now the neighbour is a contacted endpoint: it passes any filter.
        let got = net.exchange(addr(CGN_NEIGHBOUR, 7000), addr(HOME_WAN, 5000));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].host, net.client);
    }
}

#[test]
fn hosts_move_between_the_inner_and_outer_lan() {
    let mut net = Nested::new(port_restricted_cone(), port_restricted_cone());
    let server = addr(SERVER_A, 3478);
    let hops = SimConfig::default().internet_hops;
    // Client moves from the home LAN onto the CGN LAN.
    let cgn_ip: IpAddr = "100.64.0.9".parse().unwrap();
    net.sim
        .attach(net.client, Attachment::BehindNat(net.outer, cgn_ip));
    assert!(
        net.exchange(addr(HOME_CLIENT, 5000), server).is_empty(),
        "the old address is gone"
    );
    let got = net.exchange(SocketAddr::new(cgn_ip, 5000), server);
    assert_eq!(got[0].ttl, DEFAULT_TTL - 1 - hops, "one NAT now");
    assert_eq!(net.sim.nat_entries(net.inner), 0);
    let reply = net.exchange(server, got[0].from);
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].host, net.client);
    // The neighbour moves behind the home router and reaches the server through both.
    net.sim.attach(
        net.neighbour,
        Attachment::BehindNat(net.inner, "192.168.1.3".parse().unwrap()),
    );
    let got = net.exchange(addr("192.168.1.3", 6000), server);
    assert_eq!(got[0].ttl, DEFAULT_TTL - 2 - hops, "two NATs now");
    assert_eq!(got[0].from.ip(), CGN_PUBLIC.parse::<IpAddr>().unwrap());
    let reply = net.exchange(server, got[0].from);
    assert_eq!(reply.len(), 1);
    assert_eq!(reply[0].host, net.neighbour);
    assert_eq!(reply[0].to, addr("192.168.1.3", 6000));
}

#[test]
fn hairpin_through_the_outer_nat_reaches_another_home() {
    // Two homes behind one CGN that hairpins: a client in one home reaches a client in
    // the other at its public (CGN) address, through four NAT traversals.
    let mut sim = Sim::new(Instant::now(), SimConfig::default());
    sim.add_public_host(SERVER_A.parse().unwrap());
    let full_cone = rfc(
        Mapping::EndpointIndependent,
        Filtering::EndpointIndependent,
        PortAllocation::Sequential,
    );
    let cgn = sim.add_nat(
        CGN_PUBLIC.parse().unwrap(),
        full_cone.with_hairpinning(true),
    );
    let home_a = sim.add_nat_behind(cgn, "100.64.0.2".parse().unwrap(), port_restricted_cone());
    let home_b = sim.add_nat_behind(cgn, "100.64.0.4".parse().unwrap(), full_cone);
    sim.add_host_behind(home_a, "192.168.1.2".parse().unwrap());
    let b = sim.add_host_behind(home_b, "192.168.2.2".parse().unwrap());
    let run = |sim: &mut Sim, from: SocketAddr, to: SocketAddr| {
        sim.send(from, to, None, vec![1]);
        while let Some(t) = sim.next_event_time() {
            sim.advance_to(t);
        }
        std::iter::from_fn(|| sim.poll_delivery()).collect::<Vec<_>>()
    };
    let server = addr(SERVER_A, 3478);
    let seen_b = run(&mut sim, addr("192.168.2.2", 6000), server)[0].from;
    assert_eq!(seen_b.ip(), CGN_PUBLIC.parse::<IpAddr>().unwrap());
    let got = run(&mut sim, addr("192.168.1.2", 5000), seen_b);
    assert_eq!(got.len(), 1, "{:?}", sim.stats());
    assert_eq!(got[0].host, b);
    assert_eq!(got[0].to, addr("192.168.2.2", 6000));
    assert_eq!(got[0].from.ip(), CGN_PUBLIC.parse::<IpAddr>().unwrap());
    assert_eq!(
        got[0].ttl,
        DEFAULT_TTL - 4,
        "home A, CGN out, CGN in, home B"
    );

    // Without hairpinning on the CGN the same packet is dropped there.
    let mut sim2 = Sim::new(Instant::now(), SimConfig::default());
    sim2.add_public_host(SERVER_A.parse().unwrap());
    let cgn = sim2.add_nat(CGN_PUBLIC.parse().unwrap(), full_cone);
    let home_a = sim2.add_nat_behind(cgn, "100.64.0.2".parse().unwrap(), full_cone);
    let home_b = sim2.add_nat_behind(cgn, "100.64.0.4".parse().unwrap(), full_cone);
    sim2.add_host_behind(home_a, "192.168.1.2".parse().unwrap());
    sim2.add_host_behind(home_b, "192.168.2.2".parse().unwrap());
    let seen_b = run(&mut sim2, addr("192.168.2.2", 6000), server)[0].from;
    assert!(run(&mut sim2, addr("192.168.1.2", 5000), seen_b).is_empty());
    assert_eq!(sim2.stats().nat_dropped, 1);
}

// ---- bottleneck links -------------------------------------------------------------

const MBIT: u64 = 1_000_000;
/// 10 ms on the wire at 1 Mbit/s.
const PKT: usize = 1250;
const MS: Duration = Duration::from_millis(1);

/// Two public hosts; a packet between them takes 40 ms (two 20 ms uplinks) plus any
/// queueing.
fn public_pair() -> (Sim, Instant, HostId, HostId) {
    let epoch = Instant::now();
    let mut sim = Sim::new(epoch, SimConfig::default());
    let a = sim.add_public_host(SERVER_A.parse().unwrap());
    let b = sim.add_public_host(SERVER_B.parse().unwrap());
    (sim, epoch, a, b)
}

/// Runs the network dry; returns arrival times (since `epoch`) of what arrived.
fn drain_times(sim: &mut Sim, epoch: Instant) -> Vec<Duration> {
    while let Some(t) = sim.next_event_time() {
        sim.advance_to(t);
    }
    std::iter::from_fn(|| sim.poll_delivery())
        .map(|d| d.at - epoch)
        .collect()
}

fn burst(sim: &mut Sim, n: usize) {
    for i in 0..n {
        sim.send(
            addr(SERVER_A, 1),
            addr(SERVER_B, 1),
            None,
            vec![i as u8; PKT],
        );
    }
}

#[test]
fn serialization_delay_of_one_packet_is_exact() {
    let (mut sim, epoch, a, _) = public_pair();
    sim.set_host_uplink(a, Link::new(MBIT, 100_000));
    burst(&mut sim, 1);
    assert_eq!(drain_times(&mut sim, epoch), [50 * MS], "10 ms + 40 ms");
    // Rounded up to the nanosecond: 8 bits at 3 bit/s.
    assert_eq!(
        Link::new(3, 1).serialization(1),
        Some(Duration::from_nanos(2_666_666_667))
    );
    assert_eq!(Link::unlimited().serialization(PKT), Some(Duration::ZERO));
    assert_eq!(Link::new(0, PKT).serialization(PKT), None);
    assert_eq!(Link::default(), Link::unlimited());
}

#[test]
fn a_burst_leaves_spaced_by_serialization_time() {
    let (mut sim, epoch, a, _) = public_pair();
    sim.set_host_uplink(a, Link::new(MBIT, 100_000));
    burst(&mut sim, 10);
    assert_eq!(sim.host_queued_bytes(a, LinkDirection::Up), 10 * PKT);
    sim.advance_to(epoch + 35 * MS);
    // Three have left; the fourth is on the wire until 40 ms.
    assert_eq!(sim.host_queued_bytes(a, LinkDirection::Up), 7 * PKT);
    let expected: Vec<Duration> = (0..10).map(|i| (50 + 10 * i) * MS).collect();
    assert_eq!(drain_times(&mut sim, epoch), expected);
    assert_eq!(sim.host_queued_bytes(a, LinkDirection::Up), 0);
}

#[test]
fn a_full_queue_drops_the_tail() {
    let (mut sim, epoch, a, _) = public_pair();
    sim.set_host_uplink(a, Link::new(MBIT, 5 * PKT));
    burst(&mut sim, 12);
    assert_eq!(sim.stats().queue_dropped, 7, "room for exactly five");
    // At 10 ms the first has left: room for one more, not two.
    sim.advance_to(epoch + 10 * MS);
    burst(&mut sim, 2);
    assert_eq!(sim.stats().queue_dropped, 8);
    let expected: Vec<Duration> = (0..6).map(|i| (50 + 10 * i) * MS).collect();
    assert_eq!(drain_times(&mut sim, epoch), expected);
    let stats = sim.stats();
    assert_eq!((stats.sent, stats.delivered, stats.lost), (14, 6, 0));
    // A link of capacity 0 carries nothing.
    sim.set_host_uplink(a, Link::new(0, 100_000));
    burst(&mut sim, 3);
    assert_eq!(sim.stats().queue_dropped, 11);
}

#[test]
fn a_capacity_change_applies_to_later_packets() {
    let (mut sim, epoch, a, _) = public_pair();
    sim.set_host_uplink(a, Link::new(MBIT, 100_000));
    burst(&mut sim, 3); // leave at 10, 20, 30 ms
    sim.advance_to(epoch + 5 * MS);
    sim.set_host_uplink(a, Link::new(2 * MBIT, 100_000));
    burst(&mut sim, 2); // behind the backlog, 5 ms each: 35, 40 ms
    sim.advance_to(epoch + 100 * MS);
    sim.set_host_uplink(a, Link::new(MBIT / 2, 100_000));
    burst(&mut sim, 2); // 20 ms each: 120, 140 ms
    let expected: Vec<Duration> = [50, 60, 70, 75, 80, 160, 180]
        .into_iter()
        .map(|ms| ms * MS)
        .collect();
    assert_eq!(drain_times(&mut sim, epoch), expected);
}

/// Each sender sends `PKT`-byte packets to server A, one per its mean interval (µs) on
/// average, until `until`, letting the simulator run in between; returns (arrival
/// time, source port) of what arrived. A lone sender is strictly periodic; several get
/// intervals uniform in half to one and a half times the mean, so that none keeps a
/// fixed phase against the queue (with fixed phases, tail drop can lock one flow out).
fn offered_load(
    sim: &mut Sim,
    epoch: Instant,
    senders: &[(SocketAddr, u64)],
    until: Duration,
) -> Vec<(Duration, u16)> {
    // Each sender's next send time.
    let mut rng = SplitMix64::new(7);
    let mut next: Vec<Duration> = senders.iter().map(|_| Duration::ZERO).collect();
    let mut got = Vec::new();
    loop {
        let (i, &at) = next
            .iter()
            .enumerate()
            .min_by_key(|&(_, t)| *t)
            .expect("senders");
        if at >= until {
            break;
        }
        sim.advance_to(epoch + at);
        got.extend(
            std::iter::from_fn(|| sim.poll_delivery()).map(|d| (d.at - epoch, d.from.port())),
        );
        sim.send(senders[i].0, addr(SERVER_A, 1), None, vec![0; PKT]);
        let mean = senders[i].1;
        let jitter = if senders.len() > 1 {
            rng.below(mean)
        } else {
            mean / 2
        };
        next[i] = at + Duration::from_micros(mean / 2 + jitter);
    }
    while let Some(t) = sim.next_event_time() {
        sim.advance_to(t);
    }
    got.extend(std::iter::from_fn(|| sim.poll_delivery()).map(|d| (d.at - epoch, d.from.port())));
    got
}

#[test]
fn throughput_over_a_second_is_the_capacity() {
    let epoch = Instant::now();
    let mut sim = Sim::new(epoch, SimConfig::default());
    sim.add_public_host(SERVER_A.parse().unwrap());
    let sender = sim.add_public_host(SERVER_B.parse().unwrap());
    // 4 Mbit/s shaped uplink, 8 Mbit/s offered.
    sim.set_host_uplink(sender, Link::new(4 * MBIT, 40 * PKT));
    let got = offered_load(
        &mut sim,
        epoch,
        &[(addr(SERVER_B, 5000), 1250)],
        Duration::from_secs(3),
    );
    let window = Duration::from_secs(1)..Duration::from_secs(2);
    let bytes = got.iter().filter(|(at, _)| window.contains(at)).count() * PKT;
    assert!(
        bytes.abs_diff(500_000) <= PKT,
        "{bytes} bytes in one second through 4 Mbit/s"
    );
    let stats = sim.stats();
    assert_eq!(stats.sent, stats.delivered + stats.queue_dropped);
    assert!(stats.queue_dropped > 1000, "{stats:?}");
}

#[test]
fn hosts_behind_one_nat_share_its_uplink() {
    let epoch = Instant::now();
    let mut sim = Sim::new(epoch, SimConfig::default());
    sim.add_public_host(SERVER_A.parse().unwrap());
    let nat = sim.add_nat(
        NAT_IP.parse().unwrap(),
        rfc(
            Mapping::EndpointIndependent,
            Filtering::AddressAndPortDependent,
            PortAllocation::Preserve,
        ),
    );
    sim.add_host_behind(nat, CLIENT_IP.parse().unwrap());
    sim.add_host_behind(nat, "192.168.1.3".parse().unwrap());
    sim.set_nat_uplink(nat, Link::new(MBIT, 10 * PKT));
    // Each offers 1 Mbit/s (one packet per 10 ms on average): twice the capacity.
    let got = offered_load(
        &mut sim,
        epoch,
        &[
            (addr(CLIENT_IP, 5000), 10_000),
            (addr("192.168.1.3", 5001), 10_000),
        ],
        Duration::from_secs(10),
    );
    let first = got.iter().filter(|(_, port)| *port == 5000).count();
    let second = got.iter().filter(|(_, port)| *port == 5001).count();
    // 10 s at 100 packets/s, plus what was queued at the end.
    assert!(
        (1000..=1011).contains(&(first + second)),
        "{first} + {second}"
    );
    for share in [first, second] {
        assert!((400..=600).contains(&share), "{first} vs {second}");
    }
    assert!(sim.stats().queue_dropped > 800, "{:?}", sim.stats());
}

#[test]
fn downlinks_queue_before_the_host_and_before_the_nat() {
    // A host's downlink: two senders' packets leave it one after the other.
    let (mut sim, epoch, a, b) = public_pair();
    let c = sim.add_public_host("198.51.100.3".parse().unwrap());
    sim.set_host_downlink(b, Link::new(MBIT, 100_000));
    sim.send(addr(SERVER_A, 1), addr(SERVER_B, 1), None, vec![0; PKT]);
    sim.send(
        addr("198.51.100.3", 1),
        addr(SERVER_B, 1),
        None,
        vec![0; PKT],
    );
    assert_eq!(drain_times(&mut sim, epoch), [50 * MS, 60 * MS]);
    let _ = (a, c);

    // A NAT's downlink: a server's answer waits there, then crosses the LAN.
    let mut bed = Bed::new(rfc(
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
        PortAllocation::Preserve,
    ));
    let public = bed.mapped(5000, addr(SERVER_A, 1));
    bed.sim.set_nat_downlink(bed.nat, Link::new(MBIT, 100_000));
    let start = bed.sim.now();
    bed.sim.send(addr(SERVER_A, 1), public, None, vec![0; PKT]);
    while let Some(t) = bed.sim.next_event_time() {
        bed.sim.advance_to(t);
    }
    let got = bed.sim.poll_delivery().expect("delivered");
    assert_eq!(got.at - start, 51 * MS, "40 ms + 10 ms queue + 1 ms LAN");
}

#[test]
fn hairpinned_packets_skip_the_nat_links() {
    let config = rfc(
        Mapping::EndpointIndependent,
        Filtering::EndpointIndependent,
        PortAllocation::Preserve,
    )
    .with_hairpinning(true);
    let mut bed = Bed::new(config);
    let other = bed
        .sim
        .add_host_behind(bed.nat, "192.168.1.3".parse().unwrap());
    let public = bed.mapped_from("192.168.1.3", 7000, addr(SERVER_A, 1));
    // Links that carry nothing.
    bed.sim.set_nat_uplink(bed.nat, Link::new(0, 0));
    bed.sim.set_nat_downlink(bed.nat, Link::new(0, 0));
    let got = bed.exchange(addr(CLIENT_IP, 5000), public, None);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].host, other);
    assert!(
        bed.exchange(addr(CLIENT_IP, 5000), addr(SERVER_A, 1), None)
            .is_empty()
    );
    assert_eq!(bed.sim.stats().queue_dropped, 1);
}

fn run_shaped(seed: u64) -> (Vec<(Duration, u16)>, SimStats) {
    let epoch = Instant::now();
    let config = SimConfig {
        seed,
        jitter: Duration::from_millis(30),
        loss_per_million: 100_000,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(epoch, config);
    let server = sim.add_public_host(SERVER_A.parse().unwrap());
    let nat = sim.add_nat(
        NAT_IP.parse().unwrap(),
        rfc(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
            PortAllocation::Random,
        ),
    );
    sim.add_host_behind(nat, CLIENT_IP.parse().unwrap());
    sim.set_nat_uplink(nat, Link::new(2 * MBIT, 20 * PKT));
    sim.set_host_downlink(server, Link::new(MBIT, 10 * PKT));
    let got = offered_load(
        &mut sim,
        epoch,
        &[(addr(CLIENT_IP, 5000), 3000)],
        Duration::from_secs(1),
    );
    (got, sim.stats())
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(8))]
    #[test]
    fn same_seed_same_run_through_bottlenecks(seed in proptest::prelude::any::<u64>()) {
        let (a, stats_a) = run_shaped(seed);
        let (b, stats_b) = run_shaped(seed);
        proptest::prop_assert_eq!(&a, &b);
        proptest::prop_assert_eq!(stats_a, stats_b);
        proptest::prop_assert!(stats_a.queue_dropped > 0 && stats_a.lost > 0);
    }
}
