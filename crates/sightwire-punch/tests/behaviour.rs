//! Scenario tests in the simulated network: the conntrack race, relay fallback and
//! upgrade, keepalive, path loss and re-selection, roaming, and failure.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Model, Setup, Topology, World, addr};
use sightwire_netsim::{Attachment, LinuxInput, NatBehavior, NatConfig};
use sightwire_punch::{
    DIRECT_WINDOW, Event, FAIL_AFTER, KEEPALIVE_INTERVAL, MAX_PREDICTION_PROBES, PathKind,
    RECOVERY_FAIL_AFTER, RELAY_AFTER, REPUNCH_INTERVAL, REPUNCH_WINDOW,
};

const SITE_A: &str = "203.0.113.1";
const SITE_B: &str = "203.0.113.2";

fn kinds(world: &World, side: usize) -> Vec<String> {
    world
        .side(side)
        .events
        .iter()
        .map(|(_, e)| match e {
            Event::Connected(p) => format!("Connected({:?})", p.kind),
            Event::PathChanged(p) => format!("PathChanged({:?})", p.kind),
            Event::PathLost(p) => format!("PathLost({:?})", p.kind),
            Event::Failed(_) => "Failed".to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn block(world: &mut World, blocked: bool) {
    world.sim_mut().set_route_blocked(
        addr(&format!("{SITE_A}:0")).ip(),
        addr(&format!("{SITE_B}:0")).ip(),
        blocked,
    );
}

#[test]
fn linux_conntrack_race_is_avoided_within_the_start_tolerance() {
    // The camera hears of the attempt 80 ms late (less than the start delay plus the
    // one-way delay, 50 + 40 ms): its low-TTL opening packets, sent on receipt, still
    // open both masquerades before any check lands, so conntrack never records an
    // unsolicited packet.
    let mut setup = Setup::new(Topology::Apart(Model::LinuxBare, Model::LinuxBare));
    setup.start_skew = Duration::from_millis(80);
    let mut world = World::new(setup);
    world.run_for(Duration::from_secs(5));
    assert_eq!(
        world.sim().stats().conntrack_collisions,
        0,
        "{:?}",
        world.sim().stats()
    );
    for side in 0..2 {
        let (t, kind) = world.connected(side).expect("connected");
        assert_eq!(kind, PathKind::Direct, "side {side}");
        assert!(t < Duration::from_secs(1), "side {side} took {t:?}");
    }
}

#[test]
fn linux_conntrack_race_beyond_the_start_tolerance_recovers_in_a_repunch_round() {
    // 300 ms late: the viewer's checks reach the camera's bare masquerade first, the
    // collision moves the camera's mapping, and both NATs then block each other's
    // packets for as long as anything refreshes the collision entries. The relay
    // carries the call; the direct pairs go quiet until the re-punch round, when all
    // conntrack state has expired and both sides open their NATs together.
    let mut setup = Setup::new(Topology::Apart(Model::LinuxBare, Model::LinuxBare));
    setup.start_skew = Duration::from_millis(300);
    let mut world = World::new(setup);
    world.run_for(Duration::from_secs(5));
    assert!(
        world.sim().stats().conntrack_collisions > 0,
        "the race must happen"
    );
    for side in 0..2 {
        let (t, kind) = world.connected(side).expect("connected");
        assert_eq!(kind, PathKind::Relay, "side {side}");
        assert!(t < Duration::from_secs(3), "side {side} took {t:?}");
    }
    // Quiet until the round: the collision entries expire.
    world.run_for(Duration::from_secs(30));
    let before_round = world.sim().stats().conntrack_collisions;
    world.run_for(Duration::from_secs(3) + REPUNCH_INTERVAL + REPUNCH_WINDOW);
    for side in 0..2 {
        assert_eq!(
            kinds(&world, side),
            ["Connected(Relay)", "PathChanged(Direct)"],
            "side {side}"
        );
    }
    assert_eq!(
        world.sim().stats().conntrack_collisions,
        before_round,
        "the round collided nowhere"
    );
}

#[test]
fn a_direct_path_that_opens_within_the_direct_window_takes_over_the_relay_call() {
    // The direct route is down at the start: the call starts on the relay soon after
    // RELAY_AFTER instead of waiting for direct pairs. The route comes up at 1 s, inside
    // the direct window, and the still-running checks move the call to direct at once
    // (not at the first re-punch round, 35 s later).
    let mut world = World::new(Setup::new(Topology::Apart(
        Model::PortRestricted,
        Model::PortRestricted,
    )));
    block(&mut world, true);
    world.run_for(Duration::from_secs(1));
    for side in 0..2 {
        let (t, kind) = world.connected(side).expect("connected on the relay");
        assert_eq!(kind, PathKind::Relay, "side {side}");
        assert!(
            t >= RELAY_AFTER && t < Duration::from_millis(700),
            "side {side} on the relay after {t:?}"
        );
    }
    block(&mut world, false);
    world.run_for(DIRECT_WINDOW);
    for side in 0..2 {
        assert_eq!(
            kinds(&world, side),
            ["Connected(Relay)", "PathChanged(Direct)"],
            "side {side}"
        );
        let direct = world.reached(side, PathKind::Direct).expect("direct");
        assert!(
            direct < DIRECT_WINDOW,
            "side {side} direct after {direct:?}"
        );
    }
}

#[test]
fn a_call_on_the_relay_checks_direct_pairs_for_a_bounded_time_then_goes_quiet() {
    // The direct route stays down: every direct check and prediction probe is lost
    // (counted by the simulator). The call runs on the relay; the direct pairs are checked
    // through the direct window and port prediction spends its per-attempt budget, then
    // nothing is sent towards the peer directly until the re-punch round.
    let mut world = World::new(Setup::new(Topology::Apart(
        Model::PortRestricted,
        Model::PortRestricted,
    )));
    block(&mut world, true);
    world.run_for(Duration::from_millis(700));
    assert_eq!(world.selected_kind(0), Some(PathKind::Relay));
    let on_relay = world.sim().stats().lost;
    world.run_for(DIRECT_WINDOW);
    let in_window = world.sim().stats().lost;
    assert!(
        in_window > on_relay,
        "nothing sent directly after the relay was selected ({on_relay} lost before, {in_window} after)"
    );
    // Prediction rounds are 1 s apart and capped per attempt (both sides).
    world.run_for(DIRECT_WINDOW + Duration::from_secs(4));
    let spent = world.sim().stats().lost;
    let budget = 2 * (u64::from(MAX_PREDICTION_PROBES) + 20);
    assert!(spent <= budget, "{spent} direct packets, budget {budget}");
    world.run_for(REPUNCH_INTERVAL);
    assert_eq!(
        world.sim().stats().lost,
        spent,
        "direct packets between the direct window and the re-punch round"
    );
    assert_eq!(world.selected_kind(0), Some(PathKind::Relay));
    assert_eq!(world.selected_kind(1), Some(PathKind::Relay));
}

#[test]
fn relay_first_then_upgrade_to_direct_with_only_a_path_change() {
    let mut world = World::new(Setup::new(Topology::Apart(
        Model::PortRestricted,
        Model::PortRestricted,
    )));
    block(&mut world, true);
    world.run_for(Duration::from_secs(4));
    assert_eq!(world.selected_kind(0), Some(PathKind::Relay));
    assert_eq!(world.selected_kind(1), Some(PathKind::Relay));
    block(&mut world, false);
    world.run_for(Duration::from_secs(3) + REPUNCH_INTERVAL + REPUNCH_WINDOW);
    for side in 0..2 {
        assert_eq!(
            kinds(&world, side),
            ["Connected(Relay)", "PathChanged(Direct)"],
            "side {side}"
        );
        assert_eq!(world.selected_kind(side), Some(PathKind::Direct));
    }
    assert!(world.relay_forwarded() > 0);
}

#[test]
fn keepalives_hold_the_path_across_nat_timeouts() {
    let mut world = World::new(Setup::new(Topology::Apart(
        Model::PortRestricted,
        Model::LinuxFirewall,
    )));
    world.run_for(Duration::from_secs(180));
    for side in 0..2 {
        assert_eq!(kinds(&world, side), ["Connected(Direct)"], "side {side}");
    }
    // The NATs forget a mapping after 30 s without outbound traffic.
    assert!(KEEPALIVE_INTERVAL < Duration::from_secs(25));
    assert!(
        NatConfig::new(NatBehavior::Linux(LinuxInput::CtStateNewDrop)).mapping_timeout
            <= Duration::from_secs(30)
    );
}

#[test]
fn lost_direct_path_falls_back_to_relay_and_comes_back() {
    let mut world = World::new(Setup::new(Topology::Apart(
        Model::Restricted,
        Model::LinuxBare,
    )));
    world.run_for(Duration::from_secs(5));
    assert_eq!(world.selected_kind(0), Some(PathKind::Direct));
    block(&mut world, true);
    world.run_for(Duration::from_secs(5 + 25));
    for side in 0..2 {
        assert_eq!(
            kinds(&world, side),
            [
                "Connected(Direct)",
                "PathLost(Direct)",
                "PathChanged(Relay)"
            ],
            "side {side}"
        );
    }
    block(&mut world, false);
    world.run_for(Duration::from_secs(5 + 25) + REPUNCH_INTERVAL + REPUNCH_WINDOW);
    for side in 0..2 {
        assert_eq!(
            world.selected_kind(side),
            Some(PathKind::Direct),
            "side {side}: {:?}",
            kinds(&world, side)
        );
    }
}

#[test]
fn without_relay_a_lost_path_ends_in_failure_not_a_hang() {
    let mut setup = Setup::new(Topology::Apart(
        Model::PortRestricted,
        Model::PortRestricted,
    ));
    setup.with_relay = false;
    let mut world = World::new(setup);
    world.run_for(Duration::from_secs(3));
    block(&mut world, true);
    world.run_for(
        Duration::from_secs(3)
            + KEEPALIVE_INTERVAL
            + Duration::from_secs(4)
            + RECOVERY_FAIL_AFTER
            + Duration::from_secs(1),
    );
    for side in 0..2 {
        assert_eq!(
            kinds(&world, side),
            ["Connected(Direct)", "PathLost(Direct)", "Failed"],
            "side {side}"
        );
        assert_eq!(
            world.side(side).agent.poll_timeout(),
            None,
            "a failed agent sleeps"
        );
    }
}

#[test]
fn symmetric_pair_without_relay_fails_by_the_deadline() {
    let mut setup = Setup::new(Topology::Apart(
        Model::SymmetricRandom,
        Model::SymmetricRandom,
    ));
    setup.with_relay = false;
    let mut world = World::new(setup);
    world.run_for(FAIL_AFTER + Duration::from_millis(100));
    for side in 0..2 {
        assert_eq!(kinds(&world, side), ["Failed"], "side {side}");
    }
    // Port prediction ran into its hard cap and stopped there.
    for side in 0..2 {
        let stats = world.side(side).agent.stats();
        assert_eq!(
            stats.prediction_probes, MAX_PREDICTION_PROBES,
            "side {side}"
        );
    }
}

fn roam(side: usize, new_nat: Option<Model>, new_ip: &str) {
    let mut world = World::new(Setup::new(Topology::Apart(
        Model::PortRestricted,
        Model::Restricted,
    )));
    world.run_for(Duration::from_secs(3));
    assert_eq!(world.selected_kind(side), Some(PathKind::Direct));
    let old_remote = world.side(1 - side).agent.selected_path().map(|p| p.remote);
    let attachment = match new_nat {
        Some(model) => {
            let nat = world
                .sim_mut()
                .add_nat("203.0.113.3".parse().unwrap(), model.nat().unwrap());
            Attachment::BehindNat(nat, new_ip.parse().unwrap())
        }
        None => {
            let nat = world.side(side).nat.expect("behind a NAT");
            Attachment::BehindNat(nat, new_ip.parse().unwrap())
        }
    };
    let port = world.side(side).local.port();
    let new_local = SocketAddr::new(new_ip.parse().unwrap(), port);
    world.move_side(side, attachment, new_local);
    world.run_for(Duration::from_secs(30));
    for s in 0..2 {
        let events = kinds(&world, s);
        assert_eq!(
            events.first().map(String::as_str),
            Some("Connected(Direct)"),
            "side {s}: {events:?}"
        );
        assert_eq!(
            world.selected_kind(s),
            Some(PathKind::Direct),
            "side {s}: {events:?}"
        );
        assert!(
            !events.iter().any(|e| e == "Failed"),
            "side {s}: {events:?}"
        );
    }
    let new_remote = world.side(1 - side).agent.selected_path().map(|p| p.remote);
    assert_ne!(
        new_remote, old_remote,
        "the peer now sends to the new address"
    );
}

#[test]
fn viewer_moves_from_wifi_to_lte() {
    roam(0, Some(Model::SymmetricSequential), "100.64.7.9");
}

#[test]
fn camera_gets_a_new_dhcp_address() {
    roam(1, None, "10.0.0.99");
}

#[test]
fn a_failed_agent_tries_again_when_either_side_moves() {
    let mut setup = Setup::new(Topology::Apart(
        Model::SymmetricRandom,
        Model::PortRestricted,
    ));
    setup.with_relay = false;
    let mut world = World::new(setup);
    world.run_for(FAIL_AFTER + Duration::from_secs(1));
    for side in 0..2 {
        assert_eq!(kinds(&world, side), ["Failed"], "side {side}");
    }
    // The viewer leaves its symmetric NAT for a full-cone one: its agent is told, the
    // camera's agent learns it from the new candidate generation, and both retry.
    let nat = world.sim_mut().add_nat(
        "203.0.113.3".parse().unwrap(),
        Model::FullCone.nat().unwrap(),
    );
    let ip = "172.16.0.9".parse().unwrap();
    world.move_side(0, Attachment::BehindNat(nat, ip), SocketAddr::new(ip, 5000));
    world.run_for(FAIL_AFTER + Duration::from_secs(6));
    for side in 0..2 {
        assert_eq!(
            kinds(&world, side),
            ["Failed", "Connected(Direct)"],
            "side {side}"
        );
    }
}
