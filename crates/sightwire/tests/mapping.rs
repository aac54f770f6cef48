//! A camera behind a NAT that forgets idle UDP mappings after 12 s (shorter than the
//! rendezvous's 20 s keepalive interval) learns it with keepalive probes
//! (`spec/registration.md` §7) and stays reachable; against a rendezvous that does not
//! answer probes (the behaviour before them) it is unreachable part of the time.

mod sim;

use std::time::Duration;

use sightwire::Event;
use sightwire::proto::{MAX_PROBES, MIN_KEEPALIVE_INTERVAL};
use sightwire_testkit::sightwire_netsim::{LinuxInput, NatBehavior, NatConfig};
use sim::{RendezvousNode, Site, World};

const NAT_TIMEOUT: Duration = Duration::from_secs(12);

fn short_nat() -> NatConfig {
    NatConfig::new(NatBehavior::Linux(LinuxInput::CtStateNewDrop)).with_mapping_timeout(NAT_TIMEOUT)
}

/// A camera behind the short-timeout NAT, `learn` seconds to settle, then a viewer tries
/// to connect every 23 s (each on its own site, watching for 7 s; then 16 s idle, so the
/// tries fall at different phases of a 20 s keepalive). Returns how many
/// of `tries` connected, and the camera's keepalive intervals as reported.
fn reachability(seed: u64, probes: bool, learn: u64, tries: u32) -> (u32, Vec<Duration>) {
    let mut world = World::new(seed, 0);
    if !probes {
        world.set_keepalive_probes(false);
    }
    let place = world.place_behind(short_nat());
    let camera = world.add_camera(place);
    world.run_for(Duration::from_secs(learn));
    let mut connected = 0;
    for _ in 0..tries {
        let place = world.place(Site::Home);
        let viewer = world.add_viewer(place);
        let watch = world.watch(viewer, camera);
        world.run_for(Duration::from_secs(7));
        let log = world.viewer(viewer).watch(watch);
        println!(
            "try at {:?}: connected {:?}, failed {:?}",
            world.now() - world.net.epoch(),
            log.connected_at.is_some(),
            log.failed
        );
        if log.connected_at.is_some() {
            connected += 1;
        }
        let now = world.now();
        let _ = world.viewer_mut(viewer).endpoint.close_watch(now, watch);
        // The camera's last message to the rendezvous (the attempt's close) refreshed
        // its mapping: idle longer than the NAT's timeout before the next try.
        world.run_for(Duration::from_secs(16));
    }
    let intervals = world
        .camera(camera)
        .events
        .iter()
        .filter_map(|e| match e.event {
            Event::KeepaliveInterval { interval } => Some(interval),
            _ => None,
        })
        .collect();
    let stats = world.net.node::<RendezvousNode>(world.rendezvous).stats();
    println!(
        "intervals {intervals:?}, probes answered by the rendezvous {}",
        stats.keepalive_probes
    );
    assert!(stats.keepalive_probes <= u64::from(MAX_PROBES), "bounded");
    (connected, intervals)
}

#[test]
fn a_camera_learns_a_short_mapping_timeout_and_stays_reachable() {
    let (connected, intervals) = reachability(170, true, 90, 10);
    let last = *intervals.last().expect("the interval was reported");
    assert!(last < NAT_TIMEOUT, "{intervals:?}");
    assert!(last >= MIN_KEEPALIVE_INTERVAL, "{intervals:?}");
    assert_eq!(connected, 10, "every viewer connected");
}

#[test]
fn without_probes_the_same_camera_is_unreachable_part_of_the_time() {
    let (connected, intervals) = reachability(170, false, 90, 10);
    assert_eq!(
        intervals.last(),
        Some(&Duration::from_secs(20)),
        "the rendezvous's interval: {intervals:?}"
    );
    assert!(connected < 10, "{connected} of 10 connected");
}

#[test]
fn a_nat_that_keeps_mappings_long_costs_one_probe() {
    let mut world = World::new(171, 0);
    let place = world.place(Site::Home); // 30 s mapping timeout
    let camera = world.add_camera(place);
    world.run_for(Duration::from_secs(120));
    let stats = world.net.node::<RendezvousNode>(world.rendezvous).stats();
    assert_eq!(stats.keepalive_probes, 1);
    let intervals: Vec<_> = world
        .camera(camera)
        .events
        .iter()
        .filter_map(|e| match e.event {
            Event::KeepaliveInterval { interval } => Some(interval),
            _ => None,
        })
        .collect();
    assert_eq!(
        intervals.last(),
        Some(&Duration::from_secs(20)),
        "{intervals:?}"
    );
}
