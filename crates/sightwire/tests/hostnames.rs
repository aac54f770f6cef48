//! A rendezvous given by host name, in the network simulator: the core asks for the name
//! to be resolved (the harness answers as the driver would), tries every address, keeps
//! the one that answers, resolves again when the server goes silent, and reports a name
//! that does not resolve at once instead of timing out.

mod sim;

use std::net::SocketAddr;
use std::time::Duration;

use sightwire::proto::ADDRESS_TRY;
use sightwire::{ConnectError, Event, ResolveError};
use sim::{PASSWORD, RENDEZVOUS, RendezvousNode, Site, World};

const NAME: &str = "rendezvous.test";
/// A public address where nothing listens.
const DEAD: &str = "198.51.100.99:3478";
/// Where the rendezvous moves to.
const MOVED: &str = "198.51.100.77:3478";

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn named_world(seed: u64, addresses: &[&str]) -> World {
    let mut world = World::new(seed, 0);
    world.rendezvous_address = format!("{NAME}:3478").parse().unwrap();
    world
        .dns
        .insert(NAME.into(), Ok(addresses.iter().map(|a| addr(a)).collect()));
    world
}

#[test]
fn every_address_is_tried_and_the_one_that_answers_is_kept() {
    let mut world = named_world(1, &[DEAD, RENDEZVOUS]);
    let placement = world.place(Site::Home);
    world.add_camera(placement);
    let took = world
        .run_until(Duration::from_secs(10), |w| w.online() == 1)
        .expect("the camera registers through the second address");
    // One try of the silent address, then the handshake with the live one.
    assert!(took >= ADDRESS_TRY, "took {took:?}");
    assert!(took < ADDRESS_TRY * 2, "took {took:?}");
    let camera = world.camera(0);
    let to_dead = camera.sent_to.get(&addr(DEAD)).copied().unwrap_or(0);
    assert!(to_dead >= 1, "the first address was tried");
    assert_eq!(camera.lookups.len(), 1);

    // It sticks with the address that answered: keepalives, no more tries, no lookups.
    world.run_for(Duration::from_secs(90));
    let camera = world.camera(0);
    assert_eq!(
        camera.sent_to.get(&addr(DEAD)).copied().unwrap_or(0),
        to_dead
    );
    assert_eq!(camera.lookups.len(), 1);
    assert_eq!(camera.registrations, 1);
    assert_eq!(world.online(), 1);
}

#[test]
fn every_address_silent_means_slower_rounds_and_fresh_lookups() {
    let mut world = named_world(2, &[DEAD, "198.51.100.98:3478"]);
    let placement = world.place(Site::Public);
    world.add_camera(placement);
    world.run_for(Duration::from_secs(60));
    let camera = world.camera(0);
    // Rounds of 2 × 1 s, 2 × 2 s, 2 × 4 s, then 2 × 8 s: a lookup after each.
    let lookups = camera.lookups.len();
    assert!((5..=8).contains(&lookups), "{lookups} lookups in a minute");
    for dead in [DEAD, "198.51.100.98:3478"] {
        assert!(camera.sent_to.get(&addr(dead)).copied().unwrap_or(0) >= 4);
    }
    // Once the name points at a live server, the next round finds it.
    world
        .camera_mut(0)
        .dns
        .insert(NAME.into(), Ok(vec![addr(RENDEZVOUS)]));
    world
        .run_until(Duration::from_secs(20), |w| w.online() == 1)
        .expect("registered after the name changed");
}

#[test]
fn a_silent_rendezvous_is_resolved_again_and_found_at_its_new_address() {
    let mut world = named_world(3, &[RENDEZVOUS]);
    let placement = world.place(Site::Home);
    world.add_camera(placement);
    world
        .run_until(Duration::from_secs(5), |w| w.online() == 1)
        .expect("registered");
    assert_eq!(world.camera(0).lookups.len(), 1);

    // The operator moves the service: the old address goes silent, the name points at
    // the new one.
    let moved = world.add_rendezvous_at(addr(MOVED));
    world
        .camera_mut(0)
        .dns
        .insert(NAME.into(), Ok(vec![addr(MOVED)]));
    world.silence_rendezvous();
    let silent_at = world.now();
    world
        .run_until(Duration::from_secs(40), |w| {
            w.camera(0)
                .events
                .iter()
                .any(|e| matches!(e.event, Event::RendezvousLost))
        })
        .expect("the camera noticed the silence");
    // The lost link itself asks for the name again (not a later round of silent tries).
    let lost_seen = world.now();
    let camera = world.camera(0);
    assert_eq!(camera.lookups.len(), 2);
    assert!(camera.lookups[1] > silent_at && camera.lookups[1] <= lost_seen);
    let took = world
        .run_until(Duration::from_secs(60), |w| {
            w.net.node::<RendezvousNode>(moved).online() == 1
        })
        .expect("the camera found the rendezvous at its new address");
    // Silence is noticed by the next keepalive (20 s) and its retries; then one lookup
    // and the new address answers at once.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The acknowledgement is on its way back.
    world.run_for(Duration::from_secs(1));
    let camera = world.camera(0);
    assert_eq!(camera.lookups.len(), 2);
    assert_eq!(camera.registrations, 2);
}

#[test]
fn a_name_that_does_not_resolve_fails_the_watch_at_once() {
    let mut world = World::new(4, 0);
    world.rendezvous_address = "nowhere.test:3478".parse().unwrap();
    let placement = world.place(Site::Home);
    let viewer = world.add_viewer(placement);
    let id = "1C:C3:16:00:00:99".parse().unwrap();
    let watch = world.watch_id(viewer, id, PASSWORD);
    world.run_for(Duration::from_millis(100));
    let log = world.viewer(viewer).watch(watch);
    assert_eq!(
        log.failed,
        Some(ConnectError::RendezvousUnresolved(ResolveError::NotFound))
    );

    // A device keeps trying, with backoff, and says why each time.
    let mut world = World::new(5, 0);
    world.rendezvous_address = "nowhere.test:3478".parse().unwrap();
    let placement = world.place(Site::Home);
    world.add_camera(placement);
    world.run_for(Duration::from_secs(60));
    let camera = world.camera(0);
    let lookups = camera.lookups.len();
    // 0.5, 1, 2, 4, 8, 8, ... s apart: about a dozen in a minute, not a storm.
    assert!((6..=14).contains(&lookups), "{lookups} lookups");
    let reported = camera
        .events
        .iter()
        .filter(|e| matches!(e.event, Event::RendezvousUnresolved { .. }))
        .count();
    assert_eq!(reported, lookups);
    // The name appears: the next try registers.
    world
        .camera_mut(0)
        .dns
        .insert("nowhere.test".into(), Ok(vec![addr(RENDEZVOUS)]));
    world
        .run_until(Duration::from_secs(10), |w| w.online() == 1)
        .expect("registered once the name resolves");
}

#[test]
fn an_address_is_never_resolved() {
    let mut world = World::new(6, 0);
    let placement = world.place(Site::Home);
    world.add_camera(placement);
    world
        .run_until(Duration::from_secs(5), |w| w.online() == 1)
        .expect("registered");
    world.silence_rendezvous();
    world.run_for(Duration::from_secs(60));
    assert!(world.camera(0).lookups.is_empty());
}
