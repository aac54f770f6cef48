//! Every pair of NAT models (plus no NAT and same LAN) connects within a bound, direct
//! where a direct path is possible with this strategy, relayed otherwise. The expected
//! outcomes are derived from the NAT axes (see `direct_possible`) and listed in
//! `spec/punch.md` §"Matrix of expected outcomes".

mod common;

use std::time::Duration;

use common::{Model, Setup, Topology, World};
use sightwire_punch::{DIRECT_WINDOW, PathKind, RELAY_AFTER};

/// Bound on the time from the synchronized start to both sides on a direct (or LAN)
/// path. Includes port prediction, which starts at `PREDICTION_AFTER` (meanwhile the call
/// may already run on the relay).
const DIRECT_BOUND: Duration = Duration::from_millis(1000);
/// Bound on the time to the first path of any kind: the relay is nominated at
/// `RELAY_AFTER` once its pair works, plus one relayed round trip for the nomination.
const FIRST_PATH_BOUND: Duration = Duration::from_millis(700);
/// How long each cell runs: long enough for any late upgrade to have happened.
const RUN: Duration = Duration::from_secs(8);

/// Whether this agent's strategy reaches a direct path between the two NAT models.
fn direct_possible(a: Model, b: Model) -> bool {
    use Model::*;
    let open_to_all = |m| matches!(m, Public | FullCone);
    // Endpoint-independent mapping: the port the peer must reach is the one the
    // rendezvous saw (Linux keeps the port unless a tuple collides).
    let eim = |m| matches!(m, Restricted | PortRestricted | LinuxBare | LinuxFirewall);
    // Filtering on the address only: a check from any port of the peer's IP passes once
    // we have sent anything to that IP.
    let address_filter = |m| matches!(m, Restricted | AddressDependentMapping);
    // Dependent mapping whose next port follows the previous one (port prediction).
    let predictable = |m| matches!(m, AddressDependentMapping | SymmetricSequential);
    let one_way = |x: Model, y: Model| {
        // x has endpoint-independent mapping with port filtering, y is predictable: x's
        // prediction probes open x towards y's new mapping, except that on a bare
        // Linux masquerade y's first check lands first and the conntrack collision
        // moves x's packets to a port y's filter does not know.
        eim(x) && predictable(y) && x != LinuxBare
    };
    open_to_all(a)
        || open_to_all(b)
        || (eim(a) && eim(b))
        || address_filter(a)
        || address_filter(b)
        || one_way(a, b)
        || one_way(b, a)
}

fn expected(topology: Topology) -> PathKind {
    match topology {
        Topology::SameLan(..) => PathKind::Lan,
        Topology::Apart(a, b) if direct_possible(a, b) => PathKind::Direct,
        Topology::Apart(..) => PathKind::Relay,
    }
}

struct Cell {
    kind: PathKind,
    /// Both sides connected on any path.
    first: Duration,
    /// Both sides on the expected path.
    settled: Duration,
}

fn run(topology: Topology) -> Cell {
    let setup = Setup::new(topology);
    let mut world = World::new(setup);
    world.run_for(RUN);
    let (ta, ka) = world
        .connected(0)
        .unwrap_or_else(|| panic!("{topology}: viewer never connected"));
    let (tb, kb) = world
        .connected(1)
        .unwrap_or_else(|| panic!("{topology}: camera never connected"));
    let want = expected(topology);
    let first = ta.max(tb);
    assert!(
        (ka, kb) == (want, want)
            || (want == PathKind::Direct && (ka, kb) == (PathKind::Relay, PathKind::Relay)),
        "{topology}: first path {:?}, expected {want:?} (or the relay first, then direct)",
        (ka, kb)
    );
    assert_eq!(
        world.selected_kind(0),
        Some(want),
        "{topology}: viewer's path after {RUN:?}"
    );
    assert_eq!(
        world.selected_kind(1),
        Some(want),
        "{topology}: camera's path after {RUN:?}"
    );
    assert!(
        first <= FIRST_PATH_BOUND,
        "{topology}: first path after {first:?}, bound {FIRST_PATH_BOUND:?}"
    );
    if ka == PathKind::Relay {
        assert!(
            first >= RELAY_AFTER,
            "{topology}: relay before the direct pairs had their chance"
        );
    }
    let settled = world
        .reached(0, want)
        .zip(world.reached(1, want))
        .map(|(a, b)| a.max(b))
        .unwrap_or_else(|| panic!("{topology}: never on {want:?}"));
    if want != PathKind::Relay {
        assert!(
            settled <= DIRECT_BOUND && settled < DIRECT_WINDOW,
            "{topology}: on {want:?} after {settled:?}, bound {DIRECT_BOUND:?}"
        );
    }
    Cell {
        kind: want,
        first,
        settled,
    }
}

fn label(cell: &Cell, rtt: Duration) -> String {
    let letter = match cell.kind {
        PathKind::Lan => "LAN",
        PathKind::Direct => "dir",
        PathKind::Relay => "RLY",
        _ => "???",
    };
    let in_rtt = |d: Duration| d.as_secs_f64() / rtt.as_secs_f64();
    if cell.first == cell.settled {
        format!("{letter} {:>4.1}", in_rtt(cell.first))
    } else {
        format!(
            "{:.1}>{letter} {:.1}",
            in_rtt(cell.first),
            in_rtt(cell.settled)
        )
    }
}

#[test]
fn nat_matrix() {
    let rtt = Setup::new(Topology::Apart(Model::Public, Model::Public))
        .sim
        .uplink_latency
        * 4;
    println!(
        "\nNAT matrix: path kind and time to connect (both sides) in internet RTTs ({rtt:?}); \
         `f>dir s`: on the relay after f, direct after s"
    );
    print!("{:<11}", "A \\ B");
    for b in Model::ALL {
        print!("| {:<10}", b.short());
    }
    println!();
    let mut direct = 0;
    let mut relayed = 0;
    for (i, &a) in Model::ALL.iter().enumerate() {
        print!("{:<11}", a.short());
        for (j, &b) in Model::ALL.iter().enumerate() {
            if j < i {
                print!("| {:<10}", "");
                continue;
            }
            let cell = run(Topology::Apart(a, b));
            match cell.kind {
                PathKind::Relay => relayed += 1,
                _ => direct += 1,
            }
            print!("| {:<10}", label(&cell, rtt));
        }
        println!();
    }
    for (model, hairpin) in [
        (Model::PortRestricted, false),
        (Model::PortRestricted, true),
        (Model::SymmetricRandom, false),
        (Model::LinuxBare, true),
    ] {
        let topology = Topology::SameLan(model, hairpin);
        let cell = run(topology);
        println!("{topology}: {} ({:?})", label(&cell, rtt), cell.first);
    }
    println!(
        "{direct} direct, {relayed} relayed of {} NAT pairs",
        direct + relayed
    );
    assert_eq!(direct + relayed, 45);
    assert!(
        relayed > 0 && direct > relayed,
        "the matrix must exercise both outcomes"
    );
}
