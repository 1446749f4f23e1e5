//! What the controller knows live about a node, beside what it stores: how
//! well it hears from the node, and the node's last info and telemetry.
//!
//! Nothing here is stored: after a restart every node starts unheard of.
//! [`crate::wire`] turns it, joined with the stored records, into the
//! `Node` of ListNodes and into the [`crate::scheduler::NodeView`] the
//! scheduler decides on. The info and the sample stay in their wire form
//! because they are shown as they came (ListNodes) and only a few of their
//! fields are read, all of them in [`crate::wire`].
//!
//! [`RunHeats`] follows the heat of each open run as its node's samples
//! arrive (peak temperature, throttled), so the run record is written only
//! when it changes enough, not on every sample.

use std::collections::HashMap;

use fleet_proto::v1;

use crate::model::UnixMicros;
use crate::scheduler::Link;

/// The timing and capacity settings the reconciler, the fleet view and
/// the metrics share.
pub struct Settings {
    pub heartbeat: std::time::Duration,
    pub lost_after: std::time::Duration,
    pub tick: std::time::Duration,
    pub slots_per_node: u32,
}

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

/// How much a run's peak temperature must rise over what is stored before
/// it is written again. Samples come several times a second; a write per
/// sample per run would be a flushed sled transaction each.
pub const PEAK_STEP_C: f64 = 1.0;

/// The heat of one open run as its node's samples came in: what the
/// telemetry said (`peak_c`, `throttled`) and what of it is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunHeat {
    pub epoch: u64,
    /// The hottest zone's highest reading during the run.
    pub peak_c: Option<f64>,
    /// The board was at or above warn at some point of the run.
    pub throttled: bool,
    stored_peak_c: Option<f64>,
    stored_throttled: bool,
}

impl RunHeat {
    /// True when what is stored lags enough to be written: a first peak, a
    /// rise of [`PEAK_STEP_C`] or more, or `throttled` turned on.
    pub fn due(&self) -> bool {
        let risen = match (self.peak_c, self.stored_peak_c) {
            (Some(_), None) => true,
            (Some(p), Some(s)) => p >= s + PEAK_STEP_C,
            (None, _) => false,
        };
        risen || self.throttled != self.stored_throttled
    }
}

/// The heat of every open run the controller follows, by node then
/// experiment. Kept in memory only: the store holds what was written, and
/// a controller that starts again takes up each run from there.
#[derive(Debug, Default)]
pub struct RunHeats {
    by_node: HashMap<String, HashMap<String, RunHeat>>,
    node_of: HashMap<String, String>,
}

impl RunHeats {
    /// Follows the open run `id`/`epoch` on `node` from what is stored of
    /// it (and, when given, the board's reading now). A run already
    /// followed is kept as it is; another run of the same experiment (an
    /// older epoch, another node) is forgotten.
    pub fn follow(
        &mut self,
        node: &str,
        id: &str,
        epoch: u64,
        stored_peak_c: Option<f64>,
        stored_throttled: bool,
    ) {
        if self
            .get(id)
            .is_some_and(|(n, h)| n == node && h.epoch == epoch)
        {
            return;
        }
        self.forget(id);
        let stored_peak_c = stored_peak_c.filter(|t| t.is_finite());
        self.by_node.entry(node.to_owned()).or_default().insert(
            id.to_owned(),
            RunHeat {
                epoch,
                peak_c: stored_peak_c,
                throttled: stored_throttled,
                stored_peak_c,
                stored_throttled,
            },
        );
        self.node_of.insert(id.to_owned(), node.to_owned());
    }

    /// Whether the run `id`/`epoch` is followed.
    pub fn follows(&self, id: &str, epoch: u64) -> bool {
        self.get(id).is_some_and(|(_, h)| h.epoch == epoch)
    }

    /// A reading of `node`: its hottest zone now and whether the board is
    /// at or above warn. Raises every run followed on the node; true when
    /// a run became due for a write with it.
    pub fn observe(&mut self, node: &str, hottest_c: Option<f64>, hot: bool) -> bool {
        let Some(runs) = self.by_node.get_mut(node) else {
            return false;
        };
        let hottest_c = hottest_c.filter(|t| t.is_finite());
        let mut became_due = false;
        for h in runs.values_mut() {
            let was_due = h.due();
            if let Some(t) = hottest_c {
                h.peak_c = Some(h.peak_c.map_or(t, |p| p.max(t)));
            }
            h.throttled |= hot;
            became_due |= !was_due && h.due();
        }
        became_due
    }

    /// The runs whose heat should be written: `(node, id, heat)`.
    pub fn due(&self) -> Vec<(String, String, RunHeat)> {
        self.by_node
            .iter()
            .flat_map(|(node, runs)| {
                runs.iter()
                    .filter(|(_, h)| h.due())
                    .map(|(id, h)| (node.clone(), id.clone(), *h))
            })
            .collect()
    }

    /// The store now holds `peak_c` and `throttled` for the run.
    pub fn stored(&mut self, id: &str, epoch: u64, peak_c: Option<f64>, throttled: bool) {
        if let Some(h) = self.get_mut(id).filter(|h| h.epoch == epoch) {
            h.stored_peak_c = peak_c;
            h.stored_throttled = throttled;
            // The store may know more (a peak written before a restart).
            if let Some(p) = peak_c {
                h.peak_c = Some(h.peak_c.map_or(p, |c| c.max(p)));
            }
            h.throttled |= throttled;
        }
    }

    /// The heat of the run `id`/`epoch`, if followed.
    pub fn heat(&self, id: &str, epoch: u64) -> Option<RunHeat> {
        self.get(id).map(|(_, h)| *h).filter(|h| h.epoch == epoch)
    }

    /// Stops following the experiment's run (it ended).
    pub fn forget(&mut self, id: &str) {
        if let Some(node) = self.node_of.remove(id) {
            if let Some(runs) = self.by_node.get_mut(&node) {
                runs.remove(id);
                if runs.is_empty() {
                    self.by_node.remove(&node);
                }
            }
        }
    }

    /// Stops following every run on `node` (the node was removed).
    pub fn forget_node(&mut self, node: &str) {
        if let Some(runs) = self.by_node.remove(node) {
            for id in runs.keys() {
                self.node_of.remove(id);
            }
        }
    }

    fn get(&self, id: &str) -> Option<(&str, &RunHeat)> {
        let node = self.node_of.get(id)?;
        Some((node.as_str(), self.by_node.get(node)?.get(id)?))
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut RunHeat> {
        let node = self.node_of.get(id)?;
        self.by_node.get_mut(node)?.get_mut(id)
    }
}

/// Whether a node's reading puts it at or above warn: its guard's state
/// says so, or its hottest zone is at or over the guard's warn threshold.
pub fn at_or_above_warn(state: i32, hottest_c: Option<f64>, warn_c: Option<f64>) -> bool {
    let by_state =
        state == v1::ThermalState::Warn as i32 || state == v1::ThermalState::Critical as i32;
    let by_reading = matches!((hottest_c, warn_c), (Some(h), Some(w)) if w > 0.0 && h >= w);
    by_state || by_reading
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heats() -> RunHeats {
        let mut h = RunHeats::default();
        h.follow("n1", "a", 3, None, false);
        h.follow("n1", "b", 4, None, false);
        h.follow("n2", "c", 5, None, false);
        h
    }

    #[test]
    fn a_first_reading_is_due_then_only_a_rise_of_a_degree() {
        let mut h = heats();
        assert!(h.due().is_empty());
        assert!(h.observe("n1", Some(40.0), false));
        let due = h.due();
        assert_eq!(due.len(), 2, "{due:?}");
        assert!(due
            .iter()
            .all(|(n, _, heat)| n == "n1" && heat.peak_c == Some(40.0)));
        h.stored("a", 3, Some(40.0), false);
        h.stored("b", 4, Some(40.0), false);
        assert!(h.due().is_empty());

        // Small rises and falls are kept in memory, not written.
        assert!(!h.observe("n1", Some(40.9), false));
        assert!(!h.observe("n1", Some(38.0), false));
        assert!(h.due().is_empty());
        assert_eq!(h.heat("a", 3).unwrap().peak_c, Some(40.9));
        // A degree over what is stored is due, once.
        assert!(h.observe("n1", Some(41.0), false));
        assert!(!h.observe("n1", Some(42.5), false), "already due");
        assert_eq!(h.due().len(), 2);
        assert_eq!(h.heat("b", 4).unwrap().peak_c, Some(42.5));
        // The other node's run saw none of it.
        assert_eq!(h.heat("c", 5).unwrap().peak_c, None);
    }

    #[test]
    fn throttled_turns_on_once_and_is_due() {
        let mut h = heats();
        h.observe("n2", Some(50.0), false);
        h.stored("c", 5, Some(50.0), false);
        assert!(h.observe("n2", Some(50.0), true));
        let heat = h.heat("c", 5).unwrap();
        assert!(heat.throttled && heat.due());
        h.stored("c", 5, Some(50.0), true);
        // Cooling down does not turn it off.
        assert!(!h.observe("n2", Some(45.0), false));
        let heat = h.heat("c", 5).unwrap();
        assert!(heat.throttled && !heat.due());
    }

    #[test]
    fn a_followed_run_resumes_from_the_store_and_ignores_nonsense() {
        let mut h = RunHeats::default();
        h.follow("n1", "a", 3, Some(80.0), true);
        assert!(h.due().is_empty(), "what is stored is not due again");
        assert!(!h.observe("n1", Some(f64::NAN), false));
        assert!(!h.observe("n1", Some(79.0), false));
        assert_eq!(h.heat("a", 3).unwrap().peak_c, Some(80.0));
        // Following it again keeps what memory has.
        h.observe("n1", Some(80.5), false);
        h.follow("n1", "a", 3, Some(80.0), true);
        assert_eq!(h.heat("a", 3).unwrap().peak_c, Some(80.5));
        // A new placement of the experiment starts afresh.
        h.follow("n2", "a", 9, None, false);
        assert_eq!(h.heat("a", 3), None);
        assert!(!h.follows("a", 3));
        assert!(h.follows("a", 9));
        assert!(!h.observe("n1", Some(99.0), true), "nothing runs on n1 now");
        assert_eq!(h.heat("a", 9).unwrap().peak_c, None);
    }

    #[test]
    fn the_store_knowing_more_raises_memory() {
        let mut h = RunHeats::default();
        h.follow("n1", "a", 3, None, false);
        h.observe("n1", Some(60.0), false);
        h.stored("a", 3, Some(70.0), true);
        let heat = h.heat("a", 3).unwrap();
        assert_eq!(
            (heat.peak_c, heat.throttled, heat.due()),
            (Some(70.0), true, false)
        );
        // A stale epoch changes nothing.
        h.stored("a", 2, Some(90.0), true);
        assert_eq!(h.heat("a", 3).unwrap().peak_c, Some(70.0));
    }

    #[test]
    fn forgetting_a_run_or_a_node() {
        let mut h = heats();
        h.forget("a");
        assert_eq!(h.heat("a", 3), None);
        assert!(h.follows("b", 4));
        h.forget_node("n1");
        assert!(!h.follows("b", 4));
        assert!(h.follows("c", 5));
        h.forget("nope");
    }

    #[test]
    fn warn_by_state_or_by_reading() {
        use v1::ThermalState as T;
        assert!(!at_or_above_warn(T::Normal as i32, Some(74.9), Some(75.0)));
        assert!(at_or_above_warn(T::Normal as i32, Some(75.0), Some(75.0)));
        assert!(at_or_above_warn(T::Warn as i32, Some(60.0), Some(75.0)));
        assert!(at_or_above_warn(T::Critical as i32, None, None));
        assert!(!at_or_above_warn(T::Unspecified as i32, Some(90.0), None));
        assert!(!at_or_above_warn(T::Normal as i32, Some(90.0), Some(0.0)));
    }
}
