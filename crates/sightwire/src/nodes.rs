//! Several rendezvous nodes serving one deployment (`spec/multinode.md`): which node a
//! device registers with, which nodes a viewer asks, and in what order.
//!
//! Every party computes a device ID's **home** and **successor** from the node list and
//! the ID alone (highest random weight hashing, [`sightwire_signal::nodes`]). A device
//! registers with its home, moves to the successor when the home stops answering, and
//! goes back home later; a viewer asks the home and, if the home cannot introduce it,
//! the successor.

use std::time::Duration;

use rand::Rng;
use sightwire_id::DeviceId;
use sightwire_signal::nodes::NodeList;
pub use sightwire_signal::nodes::{MAX_NODE_NAME_LEN, MAX_NODES, NodeListError, NodeName};

use crate::config::RendezvousServer;

/// The rendezvous nodes of a deployment: the same list (in any order) on every node,
/// device and viewer. Each node is named (the name is what is hashed, so a node may
/// change its address or key without moving its devices) and has the address and static
/// key a client needs to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousNodes {
    list: NodeList<RendezvousServer>,
}

impl RendezvousNodes {
    /// 1 to [`MAX_NODES`] nodes with distinct names.
    pub fn new(nodes: Vec<(NodeName, RendezvousServer)>) -> Result<Self, NodeListError> {
        NodeList::new(nodes).map(|list| Self { list })
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Never: a list has at least one node.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The nodes, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeName, &RendezvousServer)> {
        self.list.iter()
    }

    /// `id`'s home and, with two nodes or more, its successor: where the device
    /// registers, and where a viewer asks for it.
    pub fn home_and_successor(
        &self,
        id: DeviceId,
    ) -> (
        (&NodeName, &RendezvousServer),
        Option<(&NodeName, &RendezvousServer)>,
    ) {
        let (home, successor) = self.list.home_and_successor(*id.as_bytes());
        let node = |index: usize| self.list.get(index).expect("an index of this list");
        (node(home), successor.map(node))
    }

    /// The indexes of the nodes to ask for `id`, home first.
    pub(crate) fn indexes_for(&self, id: DeviceId) -> Vec<usize> {
        let (home, successor) = self.list.home_and_successor(id.to_bytes());
        std::iter::once(home).chain(successor).collect()
    }

    /// The servers to try for `id`, home first.
    pub(crate) fn servers_for(&self, id: DeviceId) -> Vec<RendezvousServer> {
        let (home, successor) = self.list.home_and_successor(id.to_bytes());
        std::iter::once(home)
            .chain(successor)
            .filter_map(|index| self.list.get(index).map(|(_, server)| server.clone()))
            .collect()
    }
}

/// Least time a device registered with its successor waits before it tries its home
/// again (then doubling after every failed try, up to [`HOME_RETRY_MAX`]); a random
/// delay of up to as long again is added, so the devices of a node that comes back do
/// not all return at the same moment.
pub const HOME_RETRY_MIN: Duration = Duration::from_secs(60);
/// Most time between two tries to go back home.
pub const HOME_RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// First wait after a node answered `NOT_HOME` before the other node is tried; doubles
/// with every further refusal until a registration is accepted, up to
/// [`NOT_HOME_RETRY_MAX`], so two nodes that both refuse (a list that disagrees with
/// the deployment's) are not asked in a loop at round-trip pace.
pub const NOT_HOME_RETRY_MIN: Duration = Duration::from_secs(1);
/// Most time between two registrations refused with `NOT_HOME`.
pub const NOT_HOME_RETRY_MAX: Duration = Duration::from_secs(5 * 60);

/// A device's way through the node list: its home, then its successor.
#[derive(Debug, Clone)]
pub(crate) struct NodeRoute {
    /// Home first, then the successor (one server when the list has one node).
    servers: Vec<RendezvousServer>,
    current: usize,
    /// How long to stay away from home before trying it again (without the jitter).
    home_retry: Duration,
    home_retry_min: Duration,
    /// The wait before the next node after a `NOT_HOME`.
    not_home_retry: Duration,
}

impl NodeRoute {
    pub(crate) fn new(nodes: &RendezvousNodes, id: DeviceId, home_retry_min: Duration) -> Self {
        Self {
            servers: nodes.servers_for(id),
            current: 0,
            home_retry: home_retry_min,
            home_retry_min,
            not_home_retry: NOT_HOME_RETRY_MIN,
        }
    }

    /// The server in use.
    pub(crate) fn current(&self) -> &RendezvousServer {
        &self.servers[self.current]
    }

    /// Whether there is another node to move to.
    pub(crate) fn has_alternative(&self) -> bool {
        self.servers.len() > 1
    }

    pub(crate) fn at_home(&self) -> bool {
        self.current == 0
    }

    /// The other node of the two (home → successor, successor → home).
    pub(crate) fn advance(&mut self) -> &RendezvousServer {
        self.current = (self.current + 1) % self.servers.len();
        self.current()
    }

    /// Back to the home; the next wait away from it doubles (a home that still does not
    /// answer is tried less and less often).
    pub(crate) fn go_home(&mut self) -> &RendezvousServer {
        self.current = 0;
        self.home_retry = (self.home_retry * 2).min(HOME_RETRY_MAX.max(self.home_retry_min));
        self.current()
    }

    /// Registered at home: the next absence starts with the shortest wait again.
    pub(crate) fn registered_at_home(&mut self) {
        self.home_retry = self.home_retry_min;
    }

    /// Registered (anywhere): `NOT_HOME` refusals start over.
    pub(crate) fn registered(&mut self) {
        self.not_home_retry = NOT_HOME_RETRY_MIN;
    }

    /// A node answered `NOT_HOME`: how long to wait before asking the next one.
    pub(crate) fn refused(&mut self) -> Duration {
        let wait = self.not_home_retry;
        self.not_home_retry = (wait * 2).min(NOT_HOME_RETRY_MAX);
        wait
    }

    /// When to try the home again, from now: the wait plus up to as long again, at
    /// random.
    pub(crate) fn home_retry_delay(&self, rng: &mut impl Rng) -> Duration {
        let jitter =
            rng.gen_range(0..=self.home_retry.as_millis().min(u128::from(u64::MAX)) as u64);
        self.home_retry + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn nodes(count: u8) -> RendezvousNodes {
        RendezvousNodes::new(
            (1..=count)
                .map(|i| {
                    let server = RendezvousServer::new(
                        std::net::SocketAddr::from(([127, 0, 0, i], 7000)),
                        [i; 32].into(),
                    );
                    (NodeName::new(&format!("rv{i}")).unwrap(), server)
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_route_goes_home_successor_home_and_backs_off() {
        let list = nodes(3);
        let id = DeviceId::from_bytes([0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef]).unwrap();
        let ((_, home), successor) = list.home_and_successor(id);
        let (_, successor) = successor.unwrap();
        let mut route = NodeRoute::new(&list, id, Duration::from_secs(10));
        assert!(route.at_home() && route.has_alternative());
        assert_eq!(route.current(), home);
        assert_eq!(route.advance(), successor);
        assert!(!route.at_home());
        assert_eq!(route.advance(), home);
        route.advance();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let delay = route.home_retry_delay(&mut rng);
            assert!(delay >= Duration::from_secs(10) && delay <= Duration::from_secs(20));
        }
        assert_eq!(route.go_home(), home);
        assert!(route.home_retry_delay(&mut rng) >= Duration::from_secs(20));
        for _ in 0..20 {
            route.go_home();
        }
        assert!(route.home_retry_delay(&mut rng) <= HOME_RETRY_MAX * 2);
        route.registered_at_home();
        assert!(route.home_retry_delay(&mut rng) <= Duration::from_secs(20));
        // NOT_HOME refusals back off to the limit, and start over once registered.
        let waits: Vec<Duration> = (0..12).map(|_| route.refused()).collect();
        assert_eq!(waits[0], NOT_HOME_RETRY_MIN);
        assert_eq!(waits[1], NOT_HOME_RETRY_MIN * 2);
        assert_eq!(waits[11], NOT_HOME_RETRY_MAX);
        route.registered();
        assert_eq!(route.refused(), NOT_HOME_RETRY_MIN);
        // One node: nowhere else to go.
        let single = NodeRoute::new(&nodes(1), id, HOME_RETRY_MIN);
        assert!(!single.has_alternative());
    }
}
