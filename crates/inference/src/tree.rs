//! The distribution tree of a run: built from placement, and reduced to the logical tree
//! that end-to-end measurement can resolve.

use std::collections::BTreeMap;

use measurelab_api::result::{DistributionTree, TreeNode, TreeNodeKind};

/// Id of the lab switch node.
pub const SWITCH_ID: &str = "switch:lab";

/// Why a tree cannot be used for inference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The tree has no nodes.
    #[error("tree: no nodes")]
    Empty,
    /// A node's parent is not listed before it.
    #[error("tree.nodes[{index}].parent: {parent:?} is not an earlier node")]
    UnknownParent {
        /// Position of the node.
        index: usize,
        /// The parent it names.
        parent: String,
    },
    /// Only the first node may lack a parent.
    #[error("tree.nodes[{index}]: only the first node may be the root")]
    SecondRoot {
        /// Position of the node.
        index: usize,
    },
    /// Two nodes share an id.
    #[error("tree.nodes[{index}].id: {id:?} is used twice")]
    DuplicateId {
        /// Position of the second one.
        index: usize,
        /// The id.
        id: String,
    },
    /// A receiver with receipts has no leaf in the tree.
    #[error("receiver {0:?} is not a leaf of the tree")]
    ReceiverNotInTree(String),
    /// Fewer than two receivers to compare.
    #[error("inference needs at least two receivers, got {0}")]
    TooFewReceivers(usize),
}

/// Where one point of a run runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement<'a> {
    /// The measurement point's name.
    pub point: &'a str,
    /// The node its VM is placed on.
    pub node: &'a str,
}

fn vm_id(point: &str) -> String {
    format!("vm:{point}")
}

fn bridge_id(node: &str) -> String {
    format!("bridge:{node}")
}

fn node(
    id: String,
    kind: TreeNodeKind,
    parent: Option<String>,
    link: Option<String>,
    point: Option<&str>,
) -> TreeNode {
    TreeNode {
        id,
        kind,
        parent,
        link,
        point: point.map(str::to_string),
    }
}

/// The tree multicast takes from `source` to `receivers`: the source's port into its
/// node's bridge; receivers on that node directly off it; the node's uplink to the lab
/// switch; each other node's uplink down to its bridge, shared by the receivers there.
/// Nodes appear in the order of the receivers' first mention.
pub fn distribution_tree(source: &Placement<'_>, receivers: &[Placement<'_>]) -> DistributionTree {
    let source_bridge = bridge_id(source.node);
    let mut nodes = vec![
        node(
            vm_id(source.point),
            TreeNodeKind::Source,
            None,
            None,
            Some(source.point),
        ),
        node(
            source_bridge.clone(),
            TreeNodeKind::Bridge,
            Some(vm_id(source.point)),
            Some(format!("port:{}", source.point)),
            None,
        ),
    ];
    let remote: Vec<&Placement<'_>> = receivers.iter().filter(|r| r.node != source.node).collect();
    if !remote.is_empty() {
        nodes.push(node(
            SWITCH_ID.into(),
            TreeNodeKind::Switch,
            Some(source_bridge.clone()),
            Some(format!("uplink:{}", source.node)),
            None,
        ));
    }
    let mut bridges: Vec<&str> = Vec::new();
    for receiver in &remote {
        if !bridges.contains(&receiver.node) {
            bridges.push(receiver.node);
            nodes.push(node(
                bridge_id(receiver.node),
                TreeNodeKind::Bridge,
                Some(SWITCH_ID.into()),
                Some(format!("uplink:{}", receiver.node)),
                None,
            ));
        }
    }
    for receiver in receivers {
        nodes.push(node(
            vm_id(receiver.point),
            TreeNodeKind::Receiver,
            Some(bridge_id(receiver.node)),
            Some(format!("port:{}", receiver.point)),
            Some(receiver.point),
        ));
    }
    DistributionTree { nodes }
}

/// One link of the logical tree: a chain of tree links with no branching between them,
/// which end-to-end measurement sees only as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalLink {
    /// Tree links, upstream first.
    pub links: Vec<String>,
    /// Id of the tree node it ends at.
    pub child: String,
    /// Index of the parent logical node (`None`: the source).
    pub parent: Option<usize>,
    /// Logical nodes below it, in order.
    pub children: Vec<usize>,
    /// Indices (into the receiver list) of the receivers below it.
    pub receivers: Vec<usize>,
}

impl LogicalLink {
    /// Its name: the member links joined with `+`.
    pub fn name(&self) -> String {
        self.links.join("+")
    }

    /// Whether it ends at a receiver.
    pub fn is_leaf(&self) -> bool {
        self.children.is_empty()
    }
}

/// The tree reduced to what the receivers can resolve: only branch points and receivers
/// remain, every logical node but the root has at least two children or is a receiver,
/// and parts of the tree without a receiver are dropped. Logical node `i` is the end of
/// logical link `i`; parents come before children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalTree {
    /// The logical links, parents first.
    pub links: Vec<LogicalLink>,
    /// Index of the top logical links (children of the source).
    pub top: Vec<usize>,
}

impl LogicalTree {
    /// Reduces `tree` for `receivers` (point names, the order the caller's receipts use).
    pub fn new(tree: &DistributionTree, receivers: &[String]) -> Result<Self, TreeError> {
        if receivers.len() < 2 {
            return Err(TreeError::TooFewReceivers(receivers.len()));
        }
        if tree.nodes.is_empty() {
            return Err(TreeError::Empty);
        }
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); tree.nodes.len()];
        for (i, n) in tree.nodes.iter().enumerate() {
            if index.insert(n.id.as_str(), i).is_some() {
                return Err(TreeError::DuplicateId {
                    index: i,
                    id: n.id.clone(),
                });
            }
            match (&n.parent, i) {
                (None, 0) => {}
                (None, _) => return Err(TreeError::SecondRoot { index: i }),
                (Some(parent), _) => match index.get(parent.as_str()) {
                    Some(&p) if p < i => children[p].push(i),
                    _ => {
                        return Err(TreeError::UnknownParent {
                            index: i,
                            parent: parent.clone(),
                        })
                    }
                },
            }
        }
        // Which receiver (if any) each tree node is.
        let mut receiver_at: Vec<Option<usize>> = vec![None; tree.nodes.len()];
        for (r, name) in receivers.iter().enumerate() {
            let at = tree
                .nodes
                .iter()
                .position(|n| n.kind == TreeNodeKind::Receiver && n.point.as_deref() == Some(name))
                .ok_or_else(|| TreeError::ReceiverNotInTree(name.clone()))?;
            receiver_at[at] = Some(r);
        }
        // Receivers below each tree node (children come after parents, so walk backwards).
        let mut below: Vec<Vec<usize>> = vec![Vec::new(); tree.nodes.len()];
        for i in (0..tree.nodes.len()).rev() {
            let mut here: Vec<usize> = receiver_at[i].into_iter().collect();
            for c in &children[i] {
                here.extend(below[*c].iter().copied());
            }
            below[i] = here;
        }
        let mut logical = LogicalTree {
            links: Vec::new(),
            top: Vec::new(),
        };
        let link_name = |i: usize| {
            tree.nodes[i]
                .link
                .clone()
                .unwrap_or_else(|| format!("link:{}", tree.nodes[i].id))
        };
        // Depth-first from each child of the root; a chain continues while exactly one
        // child carries receivers and the node itself is no receiver.
        let mut stack: Vec<(usize, Option<usize>)> = children[0]
            .iter()
            .rev()
            .filter(|c| !below[**c].is_empty())
            .map(|c| (*c, None))
            .collect();
        while let Some((start, parent)) = stack.pop() {
            let mut links = vec![link_name(start)];
            let mut at = start;
            loop {
                let live: Vec<usize> = children[at]
                    .iter()
                    .copied()
                    .filter(|c| !below[*c].is_empty())
                    .collect();
                if receiver_at[at].is_some() || live.len() != 1 {
                    break;
                }
                at = live[0];
                links.push(link_name(at));
            }
            let id = logical.links.len();
            logical.links.push(LogicalLink {
                links,
                child: tree.nodes[at].id.clone(),
                parent,
                children: Vec::new(),
                receivers: below[at].clone(),
            });
            match parent {
                Some(p) => logical.links[p].children.push(id),
                None => logical.top.push(id),
            }
            for c in children[at].iter().rev() {
                if !below[*c].is_empty() {
                    stack.push((*c, Some(id)));
                }
            }
        }
        Ok(logical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(point: &'a str, node: &'a str) -> Placement<'a> {
        Placement { point, node }
    }

    fn names(tree: &LogicalTree) -> Vec<String> {
        tree.links.iter().map(LogicalLink::name).collect()
    }

    #[test]
    fn two_remote_nodes_with_two_receivers_each() {
        let tree = distribution_tree(
            &at("p1", "n1"),
            &[
                at("p2", "n2"),
                at("p3", "n2"),
                at("p4", "n3"),
                at("p5", "n3"),
            ],
        );
        let receivers: Vec<String> = ["p2", "p3", "p4", "p5"].map(String::from).to_vec();
        let logical = LogicalTree::new(&tree, &receivers).unwrap();
        assert_eq!(
            names(&logical),
            [
                "port:p1+uplink:n1",
                "uplink:n2",
                "port:p2",
                "port:p3",
                "uplink:n3",
                "port:p4",
                "port:p5"
            ]
        );
        assert_eq!(logical.links[0].child, SWITCH_ID);
        assert_eq!(logical.links[1].receivers, vec![0, 1]);
        assert_eq!(logical.links[0].children, vec![1, 4]);
    }

    #[test]
    fn a_lone_receiver_on_a_node_merges_with_its_uplink_and_local_receivers_branch_early() {
        let tree = distribution_tree(&at("s", "n1"), &[at("a", "n1"), at("b", "n2")]);
        let receivers: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let logical = LogicalTree::new(&tree, &receivers).unwrap();
        assert_eq!(
            names(&logical),
            ["port:s", "uplink:n1+uplink:n2+port:b", "port:a"]
        );
    }

    #[test]
    fn malformed_trees_name_the_problem() {
        let mut tree = distribution_tree(&at("s", "n1"), &[at("a", "n2"), at("b", "n2")]);
        let receivers: Vec<String> = ["a", "b"].map(String::from).to_vec();
        assert_eq!(
            LogicalTree::new(&tree, &receivers[..1]),
            Err(TreeError::TooFewReceivers(1))
        );
        assert_eq!(
            LogicalTree::new(&tree, &["a".to_string(), "zz".to_string()]),
            Err(TreeError::ReceiverNotInTree("zz".into()))
        );
        tree.nodes[1].parent = Some("nowhere".into());
        assert!(matches!(
            LogicalTree::new(&tree, &receivers),
            Err(TreeError::UnknownParent { index: 1, .. })
        ));
    }
}
