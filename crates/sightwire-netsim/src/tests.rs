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
