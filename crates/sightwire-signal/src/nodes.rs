//! The rendezvous nodes of one deployment, and which of them a device ID lives on
//! (`spec/multinode.md` §3).
//!
//! Every party (device, viewer, node) holds the same list of named nodes and computes,
//! from the list and a device ID alone, the ID's **home** (the node with the highest
//! weight `H(name, ID)`) and its **successor** (the second highest): highest random
//! weight ("rendezvous") hashing. Nobody asks anybody where a device is, and removing a
//! node moves only the IDs whose home it was.
//!
//! The weight is the first 8 bytes (big-endian) of BLAKE2s-256 over
//! `len(name) ‖ name ‖ device ID` (one length byte, the name's ASCII bytes, the 6 ID
//! bytes). Names are unique in a list, so equal weights (which BLAKE2s makes
//! practically impossible) are still ordered: the larger name wins.
//!
//! ```
//! use sightwire_signal::nodes::{NodeList, NodeName};
//!
//! let list = NodeList::new(vec![
//!     (NodeName::new("rv1")?, "198.51.100.1:7000"),
//!     (NodeName::new("rv2")?, "198.51.100.2:7000"),
//!     (NodeName::new("rv3")?, "198.51.100.3:7000"),
//! ])?;
//! let id = [0x1c, 0xc3, 0x16, 0xab, 0xcd, 0xef];
//! let (home, successor) = list.home_and_successor(id);
//! assert_ne!(Some(home), successor);
//! assert!(list.serves(home, id) && list.serves(successor.unwrap(), id));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use blake2::{Blake2s256, Digest};

/// Most nodes in one list: bounds the work per lookup (one hash per node) and what a
/// configuration may ask to allocate.
pub const MAX_NODES: usize = 64;

/// Longest node name, in bytes.
pub const MAX_NODE_NAME_LEN: usize = 63;

/// A node's name in the list: 1 to [`MAX_NODE_NAME_LEN`] bytes of lower-case ASCII
/// letters, digits, `-`, `_` and `.`. The name, not the address or the key, is hashed,
/// so a node can move or rotate its key without moving its devices.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    /// A checked name.
    pub fn new(name: &str) -> Result<Self, NodeListError> {
        if name.is_empty() || name.len() > MAX_NODE_NAME_LEN {
            return Err(NodeListError::NameLength {
                len: name.len(),
                limit: MAX_NODE_NAME_LEN,
            });
        }
        if let Some((position, ch)) = name.char_indices().find(|(_, c)| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        }) {
            return Err(NodeListError::NameCharacter { ch, position });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for NodeName {
    type Err = NodeListError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

/// Why a name or a list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeListError {
    /// The list has no node.
    #[error("the node list is empty")]
    Empty,
    /// The list has more than [`MAX_NODES`] nodes.
    #[error("{count} nodes listed, at most {limit} allowed")]
    TooMany {
        /// Nodes listed.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Two nodes have the same name.
    #[error("node {name} is listed twice")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// A name is empty or longer than [`MAX_NODE_NAME_LEN`].
    #[error("a node name of {len} bytes (1 to {limit} allowed)")]
    NameLength {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A name holds a character other than `a-z`, `0-9`, `-`, `_`, `.`.
    #[error("node name character {ch:?} at byte {position} is not a-z, 0-9, '-', '_' or '.'")]
    NameCharacter {
        /// The character.
        ch: char,
        /// Its byte offset.
        position: usize,
    },
}

/// The weight of device `id` on node `name`; the highest weight is the ID's home.
pub fn weight(name: &NodeName, id: [u8; 6]) -> u64 {
    let mut hash = Blake2s256::new();
    // The name's length is at most 63: one byte, so no two (name, id) pairs hash the
    // same input.
    hash.update([name.0.len() as u8]);
    hash.update(name.0.as_bytes());
    hash.update(id);
    let digest = hash.finalize();
    let mut first = [0; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The nodes of a deployment, each with what its user needs to reach it (`T`: an
/// address and key for a client, nothing for a node that only asks "am I the home?").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeList<T> {
    nodes: Vec<(NodeName, T)>,
}

impl<T> NodeList<T> {
    /// A list of 1 to [`MAX_NODES`] nodes with distinct names. The order does not
    /// matter: homes depend on the names only.
    pub fn new(nodes: Vec<(NodeName, T)>) -> Result<Self, NodeListError> {
        if nodes.is_empty() {
            return Err(NodeListError::Empty);
        }
        if nodes.len() > MAX_NODES {
            return Err(NodeListError::TooMany {
                count: nodes.len(),
                limit: MAX_NODES,
            });
        }
        for (i, (name, _)) in nodes.iter().enumerate() {
            if nodes[..i].iter().any(|(other, _)| other == name) {
                return Err(NodeListError::Duplicate {
                    name: name.0.clone(),
                });
            }
        }
        Ok(Self { nodes })
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never: a list has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `index` (in the order given to [`NodeList::new`]).
    pub fn get(&self, index: usize) -> Option<(&NodeName, &T)> {
        self.nodes.get(index).map(|(name, value)| (name, value))
    }

    /// The position of the node named `name`.
    pub fn position(&self, name: &NodeName) -> Option<usize> {
        self.nodes.iter().position(|(n, _)| n == name)
    }

    /// The nodes in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeName, &T)> {
        self.nodes.iter().map(|(name, value)| (name, value))
    }

    /// The indexes of the ID's home and, with two or more nodes, its successor.
    pub fn home_and_successor(&self, id: [u8; 6]) -> (usize, Option<usize>) {
        let mut first: Option<(u64, usize)> = None;
        let mut second: Option<(u64, usize)> = None;
        for (index, (name, _)) in self.nodes.iter().enumerate() {
            let candidate = (weight(name, id), index);
            if self.beats(candidate, first) {
                second = first;
                first = Some(candidate);
            } else if self.beats(candidate, second) {
                second = Some(candidate);
            }
        }
        // A list is never empty.
        let home = first.map_or(0, |(_, index)| index);
        (home, second.map(|(_, index)| index))
    }

    /// The index of the ID's home.
    pub fn home(&self, id: [u8; 6]) -> usize {
        self.home_and_successor(id).0
    }

    /// Whether node `index` is the ID's home or its successor: the two nodes a device
    /// may register with (`spec/multinode.md` §3).
    pub fn serves(&self, index: usize, id: [u8; 6]) -> bool {
        let (home, successor) = self.home_and_successor(id);
        index == home || successor == Some(index)
    }

    fn beats(&self, (weight, index): (u64, usize), other: Option<(u64, usize)>) -> bool {
        match other {
            None => true,
            Some((other_weight, other_index)) => {
                (weight, &self.nodes[index].0) > (other_weight, &self.nodes[other_index].0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn list(count: usize) -> NodeList<()> {
        NodeList::new(
            (0..count)
                .map(|i| (NodeName::new(&format!("node-{i}")).unwrap(), ()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn names_and_lists_are_checked() {
        assert_eq!(
            NodeName::new(""),
            Err(NodeListError::NameLength { len: 0, limit: 63 })
        );
        assert!(NodeName::new(&"a".repeat(MAX_NODE_NAME_LEN)).is_ok());
        assert_eq!(
            NodeName::new(&"a".repeat(MAX_NODE_NAME_LEN + 1)),
            Err(NodeListError::NameLength { len: 64, limit: 63 })
        );
        assert_eq!(
            NodeName::new("rv-A"),
            Err(NodeListError::NameCharacter {
                ch: 'A',
                position: 3
            })
        );
        assert_eq!(NodeList::<()>::new(vec![]), Err(NodeListError::Empty));
        let a = NodeName::new("a").unwrap();
        assert_eq!(
            NodeList::new(vec![(a.clone(), ()), (a, ())]),
            Err(NodeListError::Duplicate { name: "a".into() })
        );
        assert_eq!(list(MAX_NODES).len(), MAX_NODES);
        assert_eq!(
            NodeList::new(
                (0..=MAX_NODES)
                    .map(|i| (NodeName::new(&format!("n{i}")).unwrap(), ()))
                    .collect()
            ),
            Err(NodeListError::TooMany {
                count: MAX_NODES + 1,
                limit: MAX_NODES
            })
        );
    }

    #[test]
    fn one_node_is_every_home_and_has_no_successor() {
        let one = list(1);
        assert_eq!(one.home_and_successor([1, 2, 3, 4, 5, 6]), (0, None));
        assert!(one.serves(0, [1, 2, 3, 4, 5, 6]));
    }

    /// Over many IDs every node is home to about 1/N of them.
    #[test]
    fn homes_spread_evenly() {
        for count in [2, 3, 5, 8] {
            let nodes = list(count);
            let mut homes = vec![0usize; count];
            let ids = 30_000u32;
            for i in 0..ids {
                let b = i.to_be_bytes();
                homes[nodes.home([0x1c, 0xc3, b[0], b[1], b[2], b[3]])] += 1;
            }
            let fair = ids as usize / count;
            for (node, &n) in homes.iter().enumerate() {
                // Binomial spread at 30 000 draws is about 1 %; 10 % is far outside it.
                assert!(
                    n.abs_diff(fair) * 10 < fair,
                    "{count} nodes: node {node} is home to {n} of {ids} IDs (fair {fair})"
                );
            }
        }
    }

    proptest! {
        /// Every ID has a home and (with two or more nodes) a different successor, and
        /// the answer does not depend on the order of the list.
        #[test]
        fn every_id_has_a_home(count in 1usize..12, id in any::<[u8; 6]>(), rotate in 0usize..12) {
            let nodes = list(count);
            let (home, successor) = nodes.home_and_successor(id);
            prop_assert!(home < count);
            prop_assert_eq!(successor.is_some(), count > 1);
            prop_assert_ne!(Some(home), successor);
            let w = |i: usize| weight(nodes.get(i).unwrap().0, id);
            for i in 0..count {
                prop_assert!(w(i) <= w(home));
                if let Some(s) = successor && i != home {
                    prop_assert!(w(i) <= w(s));
                }
            }
            let mut shuffled: Vec<_> = nodes.iter().map(|(n, ())| (n.clone(), ())).collect();
            shuffled.rotate_left(rotate % count);
            let shuffled = NodeList::new(shuffled).unwrap();
            let (h2, s2) = shuffled.home_and_successor(id);
            prop_assert_eq!(shuffled.get(h2).unwrap().0, nodes.get(home).unwrap().0);
            prop_assert_eq!(
                s2.map(|s| shuffled.get(s).unwrap().0.clone()),
                successor.map(|s| nodes.get(s).unwrap().0.clone())
            );
        }

        /// Removing one node moves only the IDs whose home it was, and those move to
        /// their successor.
        #[test]
        fn removing_a_node_moves_only_its_ids(
            count in 2usize..12,
            removed in 0usize..12,
            ids in proptest::collection::vec(any::<[u8; 6]>(), 1..64),
        ) {
            let removed = removed % count;
            let before = list(count);
            let after = NodeList::new(
                before
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != removed)
                    .map(|(_, (n, ()))| (n.clone(), ()))
                    .collect(),
            )
            .unwrap();
            let name = |l: &NodeList<()>, i: usize| l.get(i).unwrap().0.clone();
            for id in ids {
                let (home, successor) = before.home_and_successor(id);
                let new_home = name(&after, after.home(id));
                if home == removed {
                    prop_assert_eq!(new_home, name(&before, successor.unwrap()));
                } else {
                    prop_assert_eq!(new_home, name(&before, home));
                }
            }
        }
    }
}
