//! Errors that say what happened, each within seconds (issue 14): a wrong rendezvous key,
//! a rendezvous that does not answer, an offline camera and no path, in the network
//! simulator, with the time each takes measured in virtual time.

mod sim;

use std::time::Duration;

use sightwire::proto::RENDEZVOUS_UNREACHABLE_AFTER;
use sightwire::{ConnectError, Event};
use sim::{CounterNode, Site, World};

/// Runs until `watch` of `viewer` failed (or `limit` passed); returns the error and how
/// long after `start` it came.
fn failure(
    world: &mut World,
    viewer: usize,
    watch: sightwire::proto::WatchId,
    limit: Duration,
) -> (Option<ConnectError>, Duration) {
    let start = world.now();
    world.run_until(limit, |w| w.viewer(viewer).watch(watch).failed.is_some());
    let log = world.viewer(viewer).watch(watch);
    let at = log.failed_at.map_or(limit, |t| t - start);
    println!("{:?} after {at:?}", log.failed);
    (log.failed, at)
}

fn wrong_key() -> sightwire_session::PublicKey {
    [0x42; 32].into()
}

#[test]
fn a_wrong_rendezvous_key_is_reported_within_a_round_trip() {
    let mut world = World::new(140, 0);
    let place = world.place(Site::Home);
    let camera = world.add_camera(place);
    world.run_for(Duration::from_secs(1));
    world.rendezvous_public_key = Some(wrong_key());
    let place = world.place(Site::Home);
    let viewer = world.add_viewer(place);
    let watch = world.watch(viewer, camera);
    let (error, after) = failure(&mut world, viewer, watch, Duration::from_secs(25));
    assert_eq!(error, Some(ConnectError::RendezvousKeyMismatch));
    assert!(after < Duration::from_secs(1), "{after:?}");
    let node = world.viewer(viewer);
    let reported = node
        .events
        .iter()
        .filter(|e| matches!(e.event, Event::RendezvousKeyMismatch))
        .count();
    assert_eq!(reported, 1, "reported once");
}

#[test]
fn a_camera_with_a_wrong_rendezvous_key_says_so_and_keeps_trying() {
    let mut world = World::new(141, 0);
    world.rendezvous_public_key = Some(wrong_key());
    let place = world.place(Site::Home);
    let camera = world.add_camera(place);
    world.run_for(Duration::from_secs(30));
    let node = world.camera(camera);
    assert_eq!(node.registrations, 0);
    let reported = node
        .events
        .iter()
        .filter(|e| matches!(e.event, Event::RendezvousKeyMismatch))
        .count();
    assert_eq!(reported, 1, "reported once while it keeps trying");
    // It kept trying (with backoff): the server saw several initiations, and answered
    // each with a notice.
    assert!(
        node.sent_to.values().sum::<u64>() >= 4,
        "{:?}",
        node.sent_to
    );
}

#[test]
fn a_stopped_rendezvous_is_reported_unreachable_within_four_seconds() {
    let mut world = World::new(142, 0);
    world.silence_rendezvous();
    let place = world.place(Site::Home);
    let viewer = world.add_viewer(place);
    let id: sightwire_id::DeviceId = "1C:C3:16:00:00:01".parse().unwrap();
    let watch = world.watch_id(viewer, id, sim::PASSWORD);
    let (error, after) = failure(&mut world, viewer, watch, Duration::from_secs(25));
    assert_eq!(error, Some(ConnectError::RendezvousUnreachable));
    assert!(after >= RENDEZVOUS_UNREACHABLE_AFTER, "{after:?}");
    assert!(after < Duration::from_secs(4), "{after:?}");
}

#[test]
fn a_wrong_rendezvous_address_is_reported_unreachable() {
    let mut world = World::new(143, 0);
    // A host that receives but never answers (a wrong host, or a closed port: Linux
    // reports no ICMP error on an unconnected UDP socket).
    let dead: std::net::SocketAddr = "198.51.100.99:3478".parse().unwrap();
    world.add_counter(dead.ip());
    world.rendezvous_address = dead.into();
    let place = world.place(Site::Home);
    let viewer = world.add_viewer(place);
    let id: sightwire_id::DeviceId = "1C:C3:16:00:00:01".parse().unwrap();
    let watch = world.watch_id(viewer, id, sim::PASSWORD);
    let (error, after) = failure(&mut world, viewer, watch, Duration::from_secs(25));
    assert_eq!(error, Some(ConnectError::RendezvousUnreachable));
    assert!(after < Duration::from_secs(4), "{after:?}");
}

#[test]
fn a_camera_reports_an_unreachable_rendezvous_once_and_registers_when_it_is_back() {
    let mut world = World::new(144, 0);
    let place = world.place(Site::Home);
    let camera = world.add_camera(place);
    world.run_for(Duration::from_secs(2));
    assert_eq!(world.camera(camera).registrations, 1);
    world.silence_rendezvous();
    world.run_for(Duration::from_secs(40));
    let count = |world: &World, unreachable: bool| {
        world
            .camera(camera)
            .events
            .iter()
            .filter(|e| {
                if unreachable {
                    matches!(e.event, Event::RendezvousUnreachable)
                } else {
                    matches!(e.event, Event::RendezvousLost)
                }
            })
            .count()
    };
    assert_eq!(count(&world, false), 1, "the link was lost");
    assert_eq!(count(&world, true), 1, "unreachable reported once");
    world.restart_rendezvous();
    let back = world.run_until(Duration::from_secs(20), |w| {
        w.camera(camera).registrations >= 2
    });
    assert!(back.is_some(), "registered again");
    assert_eq!(count(&world, true), 1);
}

#[test]
fn an_offline_camera_is_distinct_and_fast() {
    let mut world = World::new(145, 0);
    let place = world.place(Site::Home);
    let camera = world.add_camera(place);
    world.run_for(Duration::from_secs(1));
    let now = world.now();
    world.camera_mut(camera).endpoint.shutdown(now);
    world.run_for(Duration::from_secs(1));
    let place = world.place(Site::Home);
    let viewer = world.add_viewer(place);
    let watch = world.watch(viewer, camera);
    let (error, after) = failure(&mut world, viewer, watch, Duration::from_secs(25));
    assert_eq!(error, Some(ConnectError::Unavailable));
    // The consent window (3 s from the request) plus the rendezvous handshake.
    assert!(after < Duration::from_millis(3500), "{after:?}");
}

#[test]
fn no_path_is_reported_when_it_is_clear_not_at_the_deadline() {
    let mut world = World::new(146, 0);
    // Symmetric NATs on both sides: no direct path; and the relay does not answer.
    let place = world.place(Site::Symmetric);
    let camera = world.add_camera(place);
    world.run_for(Duration::from_secs(1));
    let relay = world.relay;
    world
        .net
        .replace_node(relay, Box::new(CounterNode::default()));
    let place = world.place(Site::Symmetric);
    let viewer = world.add_viewer(place);
    let watch = world.watch(viewer, camera);
    let (error, after) = failure(&mut world, viewer, watch, Duration::from_secs(25));
    assert_eq!(error, Some(ConnectError::NoPath));
    // The punch agent's verdict (every pair and the relay for 10 s), not the 20 s
    // connect deadline.
    assert!(after < Duration::from_secs(12), "{after:?}");
}
