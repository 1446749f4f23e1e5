//! The controller's domain: an experiment's phases and the rules between
//! them, its runs, nodes as stored, and events.
//!
//! These are the types the store keeps (as JSON) and the reconciler works
//! on; the gRPC layer converts them to and from `fleet_proto::v1` at the edge.

use std::collections::BTreeMap;
use std::fmt;

use fleet_proto::spec::{ExperimentId, LabelKey, LabelValue, NodeName};
use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch, as on the wire.
pub type UnixMicros = i64;

/// Where an experiment is in its life.
///
/// ```text
/// queued → placing → starting → running → succeeded | failed | stopped | cancelled
/// ```
///
/// A disruption (thermal stop, drain, node lost) ends the run and sends the
/// experiment back to `queued` (or to `failed`); [`Phase::can_become`] holds
/// every allowed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for a node.
    Queued,
    /// A node and an epoch are stored; the agent has not answered yet.
    Placing,
    /// The agent accepted it; systemd is starting the unit.
    Starting,
    Running,
    /// A graceful stop is under way.
    Stopping,
    /// Its node is unreachable; it may well still run.
    Unknown,
    Succeeded,
    Failed,
    Stopped,
    Cancelled,
}

impl Phase {
    pub const ALL: [Phase; 10] = [
        Self::Queued,
        Self::Placing,
        Self::Starting,
        Self::Running,
        Self::Stopping,
        Self::Unknown,
        Self::Succeeded,
        Self::Failed,
        Self::Stopped,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Placing => "placing",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Unknown => "unknown",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Cancelled => "cancelled",
        }
    }

    /// Ended; only Restart brings it back to the queue.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Stopped | Self::Cancelled
        )
    }

    /// Has a placement: a node, an epoch, and memory and a slot reserved
    /// there.
    pub fn holds_node(self) -> bool {
        matches!(
            self,
            Self::Placing | Self::Starting | Self::Running | Self::Stopping | Self::Unknown
        )
    }

    /// Whether a stored experiment may go from `self` to `to`.
    ///
    /// `queued → placing` is allowed here but only [`crate::store::Store::place`]
    /// takes it, since it needs a node and a new epoch.
    pub fn can_become(self, to: Phase) -> bool {
        use Phase::*;
        match self {
            Queued => matches!(to, Placing | Cancelled),
            // Placing → Queued: the agent refused or could not be reached
            // before anything started; Failed: the agent refused for good.
            // Never straight to Cancelled: the agent may have started it,
            // so a cancel goes through Stopping.
            Placing => matches!(
                to,
                Starting | Running | Queued | Failed | Stopping | Unknown
            ),
            Starting | Running | Unknown => {
                matches!(
                    to,
                    Starting | Running | Stopping | Unknown | Queued | Succeeded | Failed
                ) && to != self
            }
            Stopping => matches!(
                to,
                Stopped | Cancelled | Queued | Succeeded | Failed | Unknown
            ),
            Succeeded | Failed | Stopped | Cancelled => to == Queued,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Succeeded,
    Failed,
    Stopped,
    Cancelled,
    /// Stopped by the fleet, not by its own fault; see [`Disruption`].
    Disrupted,
    /// The agent refused or could not start it.
    StartFailed,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
            Self::Cancelled => "cancelled",
            Self::Disrupted => "disrupted",
            Self::StartFailed => "start failed",
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the fleet stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disruption {
    Thermal,
    Drain,
    NodeLost,
    NodeRemoved,
    /// Stopped for Restart; the next run follows.
    Restart,
    /// The board shut down or rebooted under it.
    Shutdown,
}

/// The failure an agent reported, in its own classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    ExitCode,
    Signal,
    OomKill,
    Timeout,
    StartLimit,
    CoreDump,
    Resources,
    Other,
}

/// An nvpmodel mode, as the agent reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeRef {
    pub id: u32,
    pub name: String,
}

/// One placement that reached its board. Every run is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub node: NodeName,
    pub epoch: u64,
    pub started_at: UnixMicros,
    pub ended_at: Option<UnixMicros>,
    /// `None` while the run lasts.
    pub outcome: Option<RunOutcome>,
    /// For people: "exited with code 3".
    pub message: String,
    pub failure: Option<Failure>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub disruption: Option<Disruption>,
    /// Automatic restarts after crashes during this run.
    pub crashes: u64,
    /// The board at start.
    pub power_mode: Option<ModeRef>,
    pub jetson_clocks: Option<bool>,
    pub l4t_release: String,
    pub peak_temp_c: Option<f64>,
    /// The board was at or above warn at some point of the run.
    pub throttled: bool,
    /// Times the board started this run over after a shutdown or reboot
    /// interrupted it (autostart): the work was redone from the beginning.
    #[serde(default)]
    pub board_restarts: u64,
}

impl RunRecord {
    /// An open run of a placement.
    pub fn begin(node: NodeName, epoch: u64, at: UnixMicros, start: &RunStart) -> Self {
        Self {
            node,
            epoch,
            started_at: at,
            ended_at: None,
            outcome: None,
            message: String::new(),
            failure: None,
            exit_code: None,
            exit_signal: None,
            disruption: None,
            crashes: 0,
            power_mode: start.power_mode.clone(),
            jetson_clocks: start.jetson_clocks,
            l4t_release: start.l4t_release.clone(),
            peak_temp_c: None,
            throttled: false,
            board_restarts: 0,
        }
    }

    pub fn is_open(&self) -> bool {
        self.outcome.is_none()
    }

    /// Merges what the board's telemetry said during the run: the peak only
    /// grows (a reading that is not a number is ignored) and `throttled`
    /// only turns on. True when the record changed.
    pub fn observe_heat(&mut self, peak_temp_c: Option<f64>, throttled: bool) -> bool {
        let before = (self.peak_temp_c, self.throttled);
        if let Some(t) = peak_temp_c.filter(|t| t.is_finite()) {
            self.peak_temp_c = Some(self.peak_temp_c.map_or(t, |p| p.max(t)));
        }
        self.throttled |= throttled;
        (self.peak_temp_c, self.throttled) != before
    }
}

/// What the board was like when a run started.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunStart {
    pub power_mode: Option<ModeRef>,
    pub jetson_clocks: Option<bool>,
    pub l4t_release: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    pub outcome: RunOutcome,
    pub message: String,
    pub failure: Option<Failure>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    /// With [`RunOutcome::Disrupted`].
    pub disruption: Option<Disruption>,
}

impl RunEnd {
    pub fn new(outcome: RunOutcome, message: impl Into<String>) -> Self {
        Self {
            outcome,
            message: message.into(),
            failure: None,
            exit_code: None,
            exit_signal: None,
            disruption: None,
        }
    }

    pub fn disrupted(disruption: Disruption, message: impl Into<String>) -> Self {
        Self {
            disruption: Some(disruption),
            ..Self::new(RunOutcome::Disrupted, message)
        }
    }
}

/// What the telemetry of a node said during a run; merged into the run
/// record (peaks only grow, `throttled` only turns on).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunObservation {
    /// Crashes in this run so far, as the agent counts them.
    pub crashes: Option<u64>,
    pub peak_temp_c: Option<f64>,
    pub throttled: bool,
    /// Times the board started the run over after its shutdown, as the
    /// agent counts them.
    pub board_restarts: Option<u64>,
}

/// Where the controller learned of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeSource {
    Config,
    Joined,
    Added,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainMode {
    /// Let experiments finish; place nothing new.
    Wait,
    /// Stop experiments gracefully now and requeue them as disrupted.
    Requeue,
}

/// What kind of change an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Submitted,
    PhaseChanged,
    Placed,
    Crashed,
    Disrupted,
    NodeAdded,
    NodeJoined,
    NodeRemoved,
    NodeConnected,
    NodeUnreachable,
    NodeLost,
    NodeCordoned,
    NodeUncordoned,
    NodeDraining,
    NodeLabelsChanged,
    NodePowerModeChanged,
    NodeThermalChanged,
    PolicyChanged,
}

/// An event before the store gives it a sequence number and a time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub kind: EventKind,
    pub experiment: Option<ExperimentId>,
    pub node: Option<NodeName>,
    pub epoch: Option<u64>,
    pub message: String,
    /// Who caused it: "user/<role>/<name>" (e.g. "user/operator/alice"),
    /// "scheduler", "agent/<node>", "controller".
    pub actor: String,
}

impl NewEvent {
    pub fn new(kind: EventKind, actor: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            experiment: None,
            node: None,
            epoch: None,
            message: message.into(),
            actor: actor.into(),
        }
    }

    pub fn node(mut self, node: NodeName) -> Self {
        self.node = Some(node);
        self
    }

    pub fn experiment(mut self, id: ExperimentId) -> Self {
        self.experiment = Some(id);
        self
    }
}

/// Node labels.
pub type Labels = BTreeMap<LabelKey, LabelValue>;
