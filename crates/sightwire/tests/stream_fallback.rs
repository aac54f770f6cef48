//! The core's TCP/TLS fallback decisions (`spec/stream.md` §1), in virtual time: when a
//! rendezvous that answers nothing over UDP makes transmits go to its stream port, when
//! it does not, and what a failed stream does to a waiting watch.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use sightwire::proto::{Endpoint, EndpointConfig, STREAM_FALLBACK_AFTER, WatchRequest};
use sightwire::{ConnectError, Credentials, Event, RendezvousServer};
use sightwire_session::StaticKeypair;
use sightwire_signal::cert::{IssuerKey, TrustedIssuers};

fn viewer(stream_port: Option<u16>, now: Instant) -> Endpoint {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let rendezvous = {
        let mut value = RendezvousServer::new(
            "198.51.100.1:3478".parse::<std::net::SocketAddr>().unwrap(),
            [1; 32].into(),
        );
        value.stream_port = stream_port;
        value
    };
    let config = EndpointConfig::new(StaticKeypair::generate(&mut rng), rendezvous, Box::new(rng));
    let issuers = TrustedIssuers::single(IssuerKey::from_seed(&[2; 32]).public());
    Endpoint::viewer(config, issuers, now).unwrap()
}

/// A viewer whose rendezvous is configured by host name.
fn named_viewer(stream_port: Option<u16>, now: Instant) -> Endpoint {
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut rendezvous = RendezvousServer::new(
        "rendezvous.test:3478"
            .parse::<sightwire::ServerAddr>()
            .unwrap(),
        [1; 32].into(),
    );
    rendezvous.stream_port = stream_port;
    let config = EndpointConfig::new(StaticKeypair::generate(&mut rng), rendezvous, Box::new(rng));
    let issuers = TrustedIssuers::single(IssuerKey::from_seed(&[2; 32]).public());
    Endpoint::viewer(config, issuers, now).unwrap()
}

/// Every transmit queued now: (destination, stream port).
fn drain(endpoint: &mut Endpoint) -> Vec<(std::net::SocketAddr, Option<u16>)> {
    std::iter::from_fn(|| {
        endpoint
            .poll_transmit()
            .map(|t| (t.destination, t.stream_port))
    })
    .collect()
}

fn events(endpoint: &mut Endpoint) -> Vec<Event> {
    std::iter::from_fn(|| endpoint.poll_event().map(|e| e.event)).collect()
}

/// Steps virtual time in 100 ms increments up to `until`, collecting transmits.
fn run_until(
    endpoint: &mut Endpoint,
    now: &mut Instant,
    until: Instant,
) -> Vec<(std::net::SocketAddr, Option<u16>)> {
    let mut sent = Vec::new();
    while *now < until {
        *now += Duration::from_millis(100);
        endpoint.handle_timeout(*now);
        sent.extend(drain(endpoint));
    }
    sent
}

#[test]
fn silence_over_udp_moves_the_rendezvous_to_its_stream_port() {
    let start = Instant::now();
    let mut now = start;
    let mut endpoint = viewer(Some(443), now);
    let request = WatchRequest::new(
        "1C:C3:16:AB:CD:EF".parse().unwrap(),
        Credentials::password("pw"),
    );
    endpoint.connect(now, request).unwrap();
    endpoint.handle_timeout(now);
    let before = run_until(
        &mut endpoint,
        &mut now,
        start + STREAM_FALLBACK_AFTER - Duration::from_millis(100),
    );
    assert!(!before.is_empty());
    assert!(
        before.iter().all(|(_, port)| port.is_none()),
        "UDP first: {before:?}"
    );
    assert!(!endpoint.udp_blocked());
    let after = run_until(
        &mut endpoint,
        &mut now,
        start + STREAM_FALLBACK_AFTER + Duration::from_millis(200),
    );
    assert!(endpoint.udp_blocked());
    assert!(
        events(&mut endpoint)
            .iter()
            .any(|e| matches!(e, Event::UdpBlocked)),
        "UdpBlocked reported"
    );
    // A fresh handshake, to the same address, over the stream.
    let rendezvous = "198.51.100.1:3478".parse().unwrap();
    assert!(after.contains(&(rendezvous, Some(443))), "{after:?}");
}

/// The race behind a UDP-blocked viewer's `RendezvousUnreachable`: the watch asks for
/// the name, the driver answers before the endpoint's first timer fires, and the UDP
/// handshake starts from the answer, not from the retry timer.
#[test]
fn a_name_resolved_before_the_first_timer_still_falls_back() {
    let start = Instant::now();
    let mut now = start;
    let mut endpoint = named_viewer(Some(443), now);
    let request = WatchRequest::new(
        "1C:C3:16:AB:CD:EF".parse().unwrap(),
        Credentials::password("pw"),
    );
    endpoint.connect(now, request).unwrap();
    let name = endpoint
        .poll_resolve()
        .expect("the watch asks for the name");
    assert_eq!(name.host(), "rendezvous.test");
    let rendezvous: std::net::SocketAddr = "198.51.100.1:3478".parse().unwrap();
    endpoint.handle_resolved(now, Ok(vec![rendezvous]));
    let first = drain(&mut endpoint);
    assert_eq!(
        first,
        vec![(rendezvous, None)],
        "the handshake starts on UDP at once"
    );
    let after = run_until(
        &mut endpoint,
        &mut now,
        start + STREAM_FALLBACK_AFTER + Duration::from_millis(200),
    );
    assert!(
        endpoint.udp_blocked(),
        "fell back within {STREAM_FALLBACK_AFTER:?}"
    );
    assert!(after.contains(&(rendezvous, Some(443))), "{after:?}");
}

#[test]
fn without_a_stream_port_there_is_no_fallback() {
    let start = Instant::now();
    let mut now = start;
    let mut endpoint = viewer(None, now);
    endpoint.handle_timeout(now);
    let sent = run_until(&mut endpoint, &mut now, start + Duration::from_secs(6));
    assert!(sent.iter().all(|(_, port)| port.is_none()));
    assert!(!endpoint.udp_blocked());
}

#[test]
fn a_failed_stream_fails_the_waiting_watch_at_once_and_goes_back_to_udp() {
    let start = Instant::now();
    let mut now = start;
    let mut endpoint = viewer(Some(443), now);
    let request = WatchRequest::new(
        "1C:C3:16:AB:CD:EF".parse().unwrap(),
        Credentials::password("pw"),
    );
    let watch = endpoint.connect(now, request).unwrap();
    endpoint.handle_timeout(now);
    run_until(
        &mut endpoint,
        &mut now,
        start + STREAM_FALLBACK_AFTER + Duration::from_millis(100),
    );
    assert!(endpoint.udp_blocked());
    let _ = events(&mut endpoint);
    // The driver could not open the stream.
    endpoint.handle_stream_closed(now, "198.51.100.1:3478".parse().unwrap());
    let failed: Vec<_> = std::iter::from_fn(|| endpoint.poll_event())
        .filter(|e| e.watch == Some(watch))
        .map(|e| e.event)
        .collect();
    assert!(
        failed.iter().any(|e| matches!(
            e,
            Event::ConnectFailed {
                error: ConnectError::RendezvousUnreachable
            }
        )),
        "{failed:?}"
    );
    assert!(!endpoint.udp_blocked(), "the next try starts on UDP");
    // A stream that closes for another server changes nothing.
    let mut other = viewer(Some(443), now);
    other.handle_stream_closed(now, "203.0.113.9:3479".parse().unwrap());
    assert!(events(&mut other).is_empty());
}
