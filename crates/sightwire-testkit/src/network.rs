//! Sans-IO cores on simulated hosts, driven in virtual time.

use std::any::{Any, type_name};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sightwire_netsim::{HostId, Sim, SimConfig};

/// Most steps [`Network`] takes at one virtual instant before it panics: more means a
/// node keeps returning a timeout at or before `now` without ever moving it on, or
/// packets loop with zero latency, and the run would never end.
pub const MAX_STEPS_AT_ONE_INSTANT: u32 = 10_000;

/// A datagram a node wants sent.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SimTransmit {
    /// Source address: an address of the node's host (its public or private IP).
    pub from: SocketAddr,
    /// Destination address.
    pub to: SocketAddr,
    /// IP TTL, or `None` for [`sightwire_netsim::DEFAULT_TTL`].
    pub ttl: Option<u8>,
    /// The datagram.
    pub payload: Vec<u8>,
}

/// A sans-IO core placed on a simulated host.
///
/// The [`Network`] calls it like a real driver would: an input
/// ([`Node::handle_datagram`] or [`Node::handle_timeout`]), then
/// [`Node::poll_transmit`] until it returns `None`. Usually an adapter around the real
/// core that also keeps what the test wants to check (events, received data).
///
/// Every `'static` type may be a node, and [`Network::node`] finds it again by its
/// concrete type: the `Any` supertrait is implemented for you.
pub trait Node: Any {
    /// A datagram arrived at the node's host at `now`, from `from` as the host sees it
    /// (after any NAT), to `to` (the host's own address), with `ttl` left.
    fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
        ttl: u8,
        payload: &[u8],
    );

    /// The time [`Node::poll_timeout`] asked for has come (`now` is at or after it).
    fn handle_timeout(&mut self, now: Instant);

    /// When the node next wants [`Node::handle_timeout`], if at all. A time in the past
    /// fires at the current time.
    fn poll_timeout(&mut self) -> Option<Instant>;

    /// The next datagram the node wants sent, if any.
    fn poll_transmit(&mut self, now: Instant) -> Option<SimTransmit>;
}

/// A node's place in a [`Network`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct NodeId(pub usize);

struct Slot {
    host: HostId,
    node: Box<dyn Node>,
}

/// A simulated network of nodes, driven in virtual time: it owns a [`Sim`] and one
/// node per simulated host that has one.
///
/// Each [`Network::step`] handles one instant: the earliest packet arrival or node
/// timeout. Packets arriving at a host without a node are dropped (and counted as
/// delivered by [`Sim::stats`]).
pub struct Network {
    sim: Sim,
    epoch: Instant,
    nodes: Vec<Slot>,
    /// The instant of the last step and how many steps it has taken.
    stalled: (Instant, u32),
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("sim", &self.sim)
            .field("epoch", &self.epoch)
            .field(
                "nodes",
                &self.nodes.iter().map(|slot| slot.host).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Network {
    /// An empty network; its virtual clock starts at [`Instant::now`], read once.
    pub fn new(config: SimConfig) -> Self {
        let epoch = Instant::now();
        Network {
            sim: Sim::new(epoch, config),
            epoch,
            nodes: Vec::new(),
            stalled: (epoch, 0),
        }
    }

    /// The virtual time the network started at.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.sim.now()
    }

    /// The simulator (for its hosts, NATs and counters).
    pub fn sim(&self) -> &Sim {
        &self.sim
    }

    /// The simulator, to add hosts and NATs, move hosts or send packets of the test's
    /// own.
    pub fn sim_mut(&mut self) -> &mut Sim {
        &mut self.sim
    }

    /// Places `node` on `host`.
    ///
    /// # Panics
    ///
    /// If `host` is not a host of the simulator or already has a node.
    pub fn add_node(&mut self, host: HostId, node: Box<dyn Node>) -> NodeId {
        assert!(
            self.sim.attachment(host).is_some(),
            "add_node: {host:?} is not a host of the simulator"
        );
        if let Some(existing) = self.nodes.iter().position(|slot| slot.host == host) {
            panic!(
                "add_node: {host:?} already has {:?} (one node per host)",
                NodeId(existing)
            );
        }
        self.nodes.push(Slot { host, node });
        NodeId(self.nodes.len() - 1)
    }

    /// The node `id`, as its concrete type.
    ///
    /// # Panics
    ///
    /// If there is no such node or it is not a `T`.
    pub fn node<T: Node + 'static>(&self, id: NodeId) -> &T {
        let node: &dyn Any = &*self.slot(id).node;
        match node.downcast_ref::<T>() {
            Some(node) => node,
            None => panic!("{id:?} is not a {}", type_name::<T>()),
        }
    }

    /// The node `id`, as its concrete type, to drive or inspect it. Whatever it queues
    /// to send goes out at the start of the next step.
    ///
    /// # Panics
    ///
    /// If there is no such node or it is not a `T`.
    pub fn node_mut<T: Node + 'static>(&mut self, id: NodeId) -> &mut T {
        let node: &mut dyn Any = &mut *self.slot_mut(id).node;
        match node.downcast_mut::<T>() {
            Some(node) => node,
            None => panic!("{id:?} is not a {}", type_name::<T>()),
        }
    }

    /// Replaces node `id` with `node` on the same host (a restart: the old node's
    /// state and unsent datagrams are gone; packets in flight still arrive).
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn replace_node(&mut self, id: NodeId, node: Box<dyn Node>) {
        self.slot_mut(id).node = node;
    }

    /// Takes one step: sends what nodes have queued, then moves to the earliest of the
    /// next packet arrival and every node's timeout (a timeout in the past counts as
    /// now), delivers the packets due, fires the timers due, and sends what the nodes
    /// queued in response (after each input, in order). Returns `false`, without
    /// moving time, when nothing is scheduled.
    ///
    /// # Panics
    ///
    /// After [`MAX_STEPS_AT_ONE_INSTANT`] steps without virtual time moving (a node
    /// keeps asking for a timeout at or before now, or packets loop with no latency).
    pub fn step(&mut self) -> bool {
        match self.next_event() {
            Some(at) => {
                self.step_at(at);
                true
            }
            None => false,
        }
    }

    /// Steps while the next event is at or before `deadline`, then moves the clock to
    /// `deadline` (never backwards).
    ///
    /// # Panics
    ///
    /// As [`Network::step`].
    pub fn run_until(&mut self, deadline: Instant) {
        while let Some(at) = self.next_event().filter(|&at| at <= deadline) {
            self.step_at(at);
        }
        self.sim.advance_to(deadline);
    }

    /// Runs for `duration` of virtual time from now.
    ///
    /// # Panics
    ///
    /// As [`Network::step`].
    pub fn run_for(&mut self, duration: Duration) {
        let deadline = self.now() + duration;
        self.run_until(deadline);
    }

    /// Steps until `done` holds (checked before the first step and after every step)
    /// or the next event is past `deadline`; returns whether `done` held. When it does
    /// not, the clock ends at `deadline`; when it does, at the step that met it.
    ///
    /// # Panics
    ///
    /// As [`Network::step`].
    pub fn run_until_condition(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&mut Network) -> bool,
    ) -> bool {
        loop {
            if done(self) {
                return true;
            }
            match self.next_event().filter(|&at| at <= deadline) {
                Some(at) => self.step_at(at),
                None => {
                    self.sim.advance_to(deadline);
                    return done(self);
                }
            }
        }
    }

    // ---- internals ----------------------------------------------------------------

    fn slot(&self, id: NodeId) -> &Slot {
        match self.nodes.get(id.0) {
            Some(slot) => slot,
            None => panic!("{id:?} is not a node of this network"),
        }
    }

    fn slot_mut(&mut self, id: NodeId) -> &mut Slot {
        match self.nodes.get_mut(id.0) {
            Some(slot) => slot,
            None => panic!("{id:?} is not a node of this network"),
        }
    }

    /// Sends what every node has queued (a test may have driven one directly), then
    /// returns the earliest packet arrival or node timeout, a past one as now.
    fn next_event(&mut self) -> Option<Instant> {
        let now = self.sim.now();
        for index in 0..self.nodes.len() {
            self.drain(index, now);
        }
        let mut next = self.sim.next_event_time();
        for slot in &mut self.nodes {
            if let Some(at) = slot.node.poll_timeout() {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next.map(|at| at.max(now))
    }

    fn step_at(&mut self, at: Instant) {
        if at == self.stalled.0 {
            self.stalled.1 += 1;
            if self.stalled.1 >= MAX_STEPS_AT_ONE_INSTANT {
                let due: Vec<NodeId> = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].node.poll_timeout().is_some_and(|t| t <= at))
                    .map(NodeId)
                    .collect();
                panic!(
                    "no virtual time passed in {MAX_STEPS_AT_ONE_INSTANT} steps at {:?} after \
                     the epoch: nodes {due:?} keep asking for a timeout at or before now, or \
                     packets loop with zero latency",
                    at - self.epoch
                );
            }
        } else {
            self.stalled = (at, 1);
        }
        self.sim.advance_to(at);
        while let Some(delivery) = self.sim.poll_delivery() {
            let Some(index) = self.nodes.iter().position(|s| s.host == delivery.host) else {
                continue;
            };
            self.nodes[index].node.handle_datagram(
                delivery.at,
                delivery.from,
                delivery.to,
                delivery.ttl,
                &delivery.payload,
            );
            self.drain(index, at);
        }
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index].node;
            if node.poll_timeout().is_some_and(|t| t <= at) {
                node.handle_timeout(at);
                self.drain(index, at);
            }
        }
    }

    fn drain(&mut self, index: usize, now: Instant) {
        while let Some(t) = self.nodes[index].node.poll_transmit(now) {
            self.sim.send(t.from, t.to, t.ttl, t.payload);
        }
    }
}
