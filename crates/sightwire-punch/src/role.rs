//! The role an agent plays in an attempt. A leaf module: signals assign it, probes carry
//! it, the agent acts on it.

/// Which side of the attempt an agent is. The rendezvous assigns it (the viewer is
/// controlling, the device controlled); only the controlling agent nominates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[allow(
    clippy::exhaustive_enums,
    reason = "a closed set: two roles, as the protocol defines"
)]
pub enum Role {
    /// Chooses (nominates) the pair both sides use.
    Controlling,
    /// Follows the controlling agent's nomination.
    Controlled,
}
