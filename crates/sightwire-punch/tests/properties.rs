//! Property tests over random networks: whatever the NATs, loss, latency, jitter and
//! start skew, neither agent ends stuck, and the same seed replays the same run.

mod common;

use std::time::Duration;

use common::{Model, Setup, Topology, World};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use sightwire_netsim::SimConfig;
use sightwire_punch::{Event, RECOVERY_FAIL_AFTER};

const RUN: Duration = Duration::from_secs(40);

fn arb_setup() -> impl Strategy<Value = Setup> {
    let model = (0..Model::ALL.len()).prop_map(|i| Model::ALL[i]);
    let topology = prop_oneof![
        8 => (model.clone(), model.clone()).prop_map(|(a, b)| Topology::Apart(a, b)),
        1 => (model, any::<bool>()).prop_map(|(m, h)| Topology::SameLan(m, h)),
    ];
    (
        topology,
        any::<u64>(),
        0u32..100_000,
        0u64..40,
        5u64..100,
        0u64..60,
        prop::bool::weighted(0.85),
    )
        .prop_map(
            |(topology, seed, loss, jitter, uplink, skew, with_relay)| Setup {
                topology,
                sim: SimConfig {
                    seed,
                    loss_per_million: loss,
                    jitter: Duration::from_millis(jitter),
                    uplink_latency: Duration::from_millis(uplink),
                    ..SimConfig::default()
                },
                with_relay,
                start_skew: Duration::from_millis(skew),
            },
        )
}

fn config(cases: u32) -> ProptestConfig {
    // A fixed generator seed keeps CI deterministic; change it to explore further.
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(0x5167_4e77_6972_6531),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn never_stuck(setup in arb_setup()) {
        let mut world = World::new(setup);
        world.run_for(RUN);
        for side in 0..2 {
            let agent = &world.side(side).agent;
            let events = &world.side(side).events;
            let failed = matches!(events.last(), Some((_, Event::Failed(_))));
            let selected = agent.selected_path().is_some();
            // Every agent is in exactly one healthy end state: a selected path, a
            // terminal failure (asleep), or still recovering from a recent loss with a
            // timer running.
            let last_loss = events.iter().rev().find_map(|(t, e)| matches!(e, Event::PathLost(_)).then_some(*t));
            let recovering = last_loss.is_some_and(|t| RUN.saturating_sub(t) < RECOVERY_FAIL_AFTER + Duration::from_secs(1))
                && agent.poll_timeout().is_some();
            prop_assert!(selected || failed || recovering, "side {side} stuck: {setup:?} {events:?}");
            if failed {
                prop_assert_eq!(agent.poll_timeout(), None);
            } else {
                prop_assert!(agent.poll_timeout().is_some(), "side {} has no timer", side);
            }
            // With a relay, something always connects (possibly after retries).
            if setup.with_relay {
                prop_assert!(world.connected(side).is_some(), "side {side} never connected: {setup:?} {events:?}");
            }
        }
    }

    #[test]
    fn same_seed_same_outcome(setup in arb_setup()) {
        let run = |setup: Setup| {
            let mut world = World::new(setup);
            world.run_for(Duration::from_secs(15));
            (world.trace(), world.sim().stats(), world.side(0).agent.stats(), world.side(1).agent.stats())
        };
        let first = run(setup);
        let second = run(setup);
        prop_assert_eq!(first, second);
    }
}

#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// The direct route between the two sites is cut for this long.
    Outage(Duration),
    /// The viewer moves to a new network behind this NAT model.
    ViewerMoves(Model),
    /// The camera gets a new address on its LAN.
    CameraReaddressed,
    /// One side's router reboots and forgets every mapping.
    RouterReboot(usize),
}

fn arb_disruption() -> impl Strategy<Value = Disruption> {
    let model = (1..Model::ALL.len()).prop_map(|i| Model::ALL[i]);
    prop_oneof![
        (1u64..40).prop_map(|s| Disruption::Outage(Duration::from_secs(s))),
        model.prop_map(Disruption::ViewerMoves),
        Just(Disruption::CameraReaddressed),
        (0usize..2).prop_map(Disruption::RouterReboot),
    ]
}

proptest! {
    #![proptest_config(config(128))]

    /// After any disruption, with a relay available, both sides end up on a path again
    /// (never stuck, never failed), within a re-punch interval plus the failure
    /// deadline of the disruption ending.
    #[test]
    fn recovers_from_disruptions(
        a in (1..Model::ALL.len()).prop_map(|i| Model::ALL[i]),
        b in (1..Model::ALL.len()).prop_map(|i| Model::ALL[i]),
        seed in any::<u64>(),
        at in 3u64..30,
        disruption in arb_disruption(),
    ) {
        use sightwire_netsim::Attachment;
        let mut setup = Setup::new(Topology::Apart(a, b));
        setup.sim.seed = seed;
        setup.sim.loss_per_million = 10_000;
        let mut world = World::new(setup);
        world.run_for(Duration::from_secs(at));
        let sites = ("203.0.113.1".parse().unwrap(), "203.0.113.2".parse().unwrap());
        let mut end = Duration::from_secs(at);
        match disruption {
            Disruption::Outage(span) => {
                world.sim_mut().set_route_blocked(sites.0, sites.1, true);
                end += span;
                world.run_for(end);
                world.sim_mut().set_route_blocked(sites.0, sites.1, false);
            }
            Disruption::ViewerMoves(model) => {
                let nat = world.sim_mut().add_nat("203.0.113.3".parse().unwrap(), model.nat().unwrap());
                let ip = "172.16.5.5".parse().unwrap();
                world.move_side(0, Attachment::BehindNat(nat, ip), std::net::SocketAddr::new(ip, 5000));
            }
            Disruption::CameraReaddressed => {
                let ip: std::net::IpAddr = "10.0.0.77".parse().unwrap();
                let nat = world.side(1).nat.unwrap();
                world.move_side(1, Attachment::BehindNat(nat, ip), std::net::SocketAddr::new(ip, 6000));
            }
            Disruption::RouterReboot(side) => {
                let nat = world.side(side).nat.unwrap();
                world.sim_mut().flush_nat(nat);
            }
        }
        world.run_for(end + sightwire_punch::KEEPALIVE_INTERVAL + sightwire_punch::REPUNCH_INTERVAL + RECOVERY_FAIL_AFTER);
        for side in 0..2 {
            let events = &world.side(side).events;
            prop_assert!(
                world.side(side).agent.selected_path().is_some(),
                "side {side} has no path after {disruption:?}: {a:?} x {b:?} {events:?}"
            );
            prop_assert!(!events.iter().any(|(_, e)| matches!(e, Event::Failed(_))), "side {side} failed: {events:?}");
        }
    }
}
