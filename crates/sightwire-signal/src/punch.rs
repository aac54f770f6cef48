//! Conversions between these messages and `sightwire-punch`'s signal types, so a driver
//! can hand rendezvous messages to the hole-punch agent and back without field-by-field
//! code (spec/signaling.md §2, "Mapping to punch").

use std::net::SocketAddr;

use sightwire_punch as punch;

use crate::{
    Candidate, CandidateKind, CandidateSet, ConnectOffer, ConnectResponse, MAX_CANDIDATES,
};

impl From<punch::CandidateKind> for CandidateKind {
    fn from(kind: punch::CandidateKind) -> Self {
        match kind {
            punch::CandidateKind::Host => CandidateKind::Host,
            punch::CandidateKind::ServerReflexive => CandidateKind::ServerReflexive,
            punch::CandidateKind::PeerReflexive => CandidateKind::PeerReflexive,
            punch::CandidateKind::Relay => CandidateKind::Relay,
        }
    }
}

impl From<CandidateKind> for punch::CandidateKind {
    fn from(kind: CandidateKind) -> Self {
        match kind {
            CandidateKind::Host => punch::CandidateKind::Host,
            CandidateKind::ServerReflexive => punch::CandidateKind::ServerReflexive,
            CandidateKind::PeerReflexive => punch::CandidateKind::PeerReflexive,
            CandidateKind::Relay => punch::CandidateKind::Relay,
        }
    }
}

impl From<punch::Candidate> for Candidate {
    fn from(candidate: punch::Candidate) -> Self {
        Candidate {
            kind: candidate.kind.into(),
            address: candidate.address,
            priority: candidate.priority,
        }
    }
}

impl From<Candidate> for punch::Candidate {
    fn from(candidate: Candidate) -> Self {
        punch::Candidate {
            kind: candidate.kind.into(),
            address: candidate.address,
            priority: candidate.priority,
        }
    }
}

/// A punch candidate set with more than [`MAX_CANDIDATES`] candidates cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{count} candidates exceed the signaling limit of {MAX_CANDIDATES}")]
#[non_exhaustive]
pub struct TooManyCandidates {
    /// How many the set had.
    pub count: usize,
}

impl TryFrom<punch::CandidateSet> for CandidateSet {
    type Error = TooManyCandidates;

    fn try_from(set: punch::CandidateSet) -> Result<Self, TooManyCandidates> {
        if set.candidates.len() > MAX_CANDIDATES {
            return Err(TooManyCandidates {
                count: set.candidates.len(),
            });
        }
        Ok(CandidateSet {
            generation: set.generation,
            candidates: set.candidates.into_iter().map(Candidate::from).collect(),
        })
    }
}

impl From<CandidateSet> for punch::CandidateSet {
    fn from(set: CandidateSet) -> Self {
        punch::CandidateSet {
            generation: set.generation,
            candidates: set
                .candidates
                .into_iter()
                .map(punch::Candidate::from)
                .collect(),
        }
    }
}

impl ConnectResponse {
    /// The viewer's punch start (role controlling), with its relay server if it holds a
    /// grant.
    pub fn to_punch_start(&self, relay: Option<SocketAddr>) -> punch::StartAttempt {
        punch::StartAttempt {
            role: punch::Role::Controlling,
            key: punch::PunchKey::new(self.punch.punch_key),
            start_in: self.punch.start_in,
            local_reflexive: Some(self.observed),
            relay,
            remote: self.candidates.clone().into(),
        }
    }
}

impl ConnectOffer {
    /// The device's punch start (role controlled), with its relay server if it holds a
    /// grant.
    pub fn to_punch_start(&self, relay: Option<SocketAddr>) -> punch::StartAttempt {
        punch::StartAttempt {
            role: punch::Role::Controlled,
            key: punch::PunchKey::new(self.punch.punch_key),
            start_in: self.punch.start_in,
            local_reflexive: Some(self.observed),
            relay,
            remote: self.candidates.clone().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConnectId, PunchParams};
    use std::time::Duration;

    #[test]
    fn candidate_sets_round_trip_through_punch_types() {
        let set = punch::CandidateSet {
            generation: 4,
            candidates: vec![
                punch::Candidate::new(
                    punch::CandidateKind::Host,
                    "192.168.1.2:5000".parse().unwrap(),
                ),
                punch::Candidate::new(
                    punch::CandidateKind::Relay,
                    "198.51.100.1:3478".parse().unwrap(),
                ),
            ],
        };
        let ours = CandidateSet::try_from(set.clone()).unwrap();
        assert_eq!(ours.candidates[1].kind, CandidateKind::Relay);
        assert_eq!(punch::CandidateSet::from(ours), set);
        let too_many = punch::CandidateSet {
            generation: 0,
            candidates: vec![set.candidates[0]; MAX_CANDIDATES + 1],
        };
        assert_eq!(
            CandidateSet::try_from(too_many),
            Err(TooManyCandidates {
                count: MAX_CANDIDATES + 1
            })
        );
    }

    #[test]
    fn offer_becomes_a_controlled_start_with_the_same_key() {
        let offer = ConnectOffer {
            connect_id: ConnectId(1),
            viewer_key: crate::PublicKey::from_bytes([1; 32]),
            candidates: CandidateSet::default(),
            punch: PunchParams {
                punch_key: [9; 32],
                start_in: Duration::from_millis(200),
            },
            observed: "203.0.113.1:4000".parse().unwrap(),
            ack_requested: true,
        };
        let start = offer.to_punch_start(None);
        assert_eq!(start.role, punch::Role::Controlled);
        assert_eq!(start.key.as_bytes(), &[9; 32]);
        assert_eq!(start.start_in, Duration::from_millis(200));
        assert_eq!(start.local_reflexive, Some(offer.observed));
    }
}
