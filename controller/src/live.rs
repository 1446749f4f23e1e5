//! What the controller knows live about a node, beside what it stores: how
//! well it hears from the node, and the node's last info and telemetry.
//!
//! Nothing here is stored: after a restart every node starts unheard of.
//! [`crate::wire`] turns it, joined with the stored records, into the
//! `Node` of ListNodes and into the [`crate::scheduler::NodeView`] the
//! scheduler decides on. The info and the sample stay in their wire form
//! because they are shown as they came (ListNodes) and only a few of their
//! fields are read, all of them in [`crate::wire`].

use fleet_proto::v1;

use crate::model::UnixMicros;
use crate::scheduler::Link;

/// One node's live state, as the node links keep it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLive {
    /// How fresh the node's news is:
    ///
    /// - [`Link::Fresh`]: its stream is up and it spoke within the
    ///   heartbeat timeout (shown as connected);
    /// - [`Link::Stale`]: silent for longer than the heartbeat timeout but
    ///   not yet for `node_lost_after` (shown as unreachable, or as pending
    ///   while it has never been heard from since the controller started);
    /// - [`Link::Down`]: silent for longer than `node_lost_after` (shown as
    ///   lost).
    pub link: Link,
    /// When the node last spoke, by the controller's clock; `None` until it
    /// is first heard from after a controller start.
    pub last_seen_unix_us: Option<UnixMicros>,
    /// The agent's GetNode answer of the current (or last) connection.
    pub info: Option<v1::NodeInfo>,
    /// The last sample of its node stream.
    pub sample: Option<v1::TelemetrySample>,
}

impl NodeLive {
    /// A node known but not heard from yet.
    pub fn unheard() -> Self {
        Self {
            link: Link::Stale,
            last_seen_unix_us: None,
            info: None,
            sample: None,
        }
    }
}

/// The settings that shape a node's view but are not the node's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewConfig {
    /// Experiments a node runs at once, at most (the config's
    /// `slots_per_node`).
    pub slots_per_node: u32,
}
