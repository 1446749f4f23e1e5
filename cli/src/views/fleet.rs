//! The JSON shapes of what the controller answers: experiments with their
//! runs, scheduling decisions, the event log, nodes and the policy.
//!
//! Same promise as the rest of [`crate::views`]: fields are only ever added,
//! every field is always present (`null` when unknown), enums are lowercase
//! words, times are RFC 3339 in UTC beside microseconds since the epoch.
//! Where the controller passes on what a board reported (an experiment's
//! last status, a node's info and telemetry), the board's own view is
//! reused, so a script reads it the same way in both modes.

use std::collections::BTreeMap;

use fleet_proto::v1;
use serde::Serialize;

use super::{
    failure_word, non_empty, thermal_word, time_opt, ExperimentView, NodeInfoView, PowerModeView,
    SpecView, TelemetryView,
};

/// An experiment's phase as the controller sees it, the same word in
/// tables, JSON and `--state`.
pub fn phase_word(phase: v1::ExperimentPhase) -> &'static str {
    match phase {
        v1::ExperimentPhase::Unspecified => "unspecified",
        v1::ExperimentPhase::Queued => "queued",
        v1::ExperimentPhase::Placing => "placing",
        v1::ExperimentPhase::Starting => "starting",
        v1::ExperimentPhase::Running => "running",
        v1::ExperimentPhase::Stopping => "stopping",
        v1::ExperimentPhase::Unknown => "unknown",
        v1::ExperimentPhase::Succeeded => "succeeded",
        v1::ExperimentPhase::Failed => "failed",
        v1::ExperimentPhase::Stopped => "stopped",
        v1::ExperimentPhase::Cancelled => "cancelled",
    }
}

/// A phase from its wire number; a number this fleetctl does not know
/// reads as unspecified.
pub fn phase_of(n: i32) -> v1::ExperimentPhase {
    v1::ExperimentPhase::try_from(n).unwrap_or(v1::ExperimentPhase::Unspecified)
}

/// How a run ended; `running` while it lasts.
pub fn outcome_word(outcome: v1::RunOutcome) -> &'static str {
    match outcome {
        v1::RunOutcome::Unspecified => "running",
        v1::RunOutcome::Succeeded => "succeeded",
        v1::RunOutcome::Failed => "failed",
        v1::RunOutcome::Stopped => "stopped",
        v1::RunOutcome::Cancelled => "cancelled",
        v1::RunOutcome::Disrupted => "disrupted",
        v1::RunOutcome::StartFailed => "start-failed",
    }
}

pub fn disruption_word(d: v1::Disruption) -> Option<&'static str> {
    match d {
        v1::Disruption::Unspecified => None,
        v1::Disruption::Thermal => Some("thermal"),
        v1::Disruption::Drain => Some("drain"),
        v1::Disruption::NodeLost => Some("node-lost"),
        v1::Disruption::NodeRemoved => Some("node-removed"),
        v1::Disruption::Restart => Some("restart"),
        v1::Disruption::Shutdown => Some("shutdown"),
    }
}

pub fn decision_word(outcome: v1::DecisionOutcome) -> &'static str {
    match outcome {
        v1::DecisionOutcome::Unspecified => "unspecified",
        v1::DecisionOutcome::Placed => "placed",
        v1::DecisionOutcome::Unschedulable => "unschedulable",
        v1::DecisionOutcome::Blocked => "blocked",
    }
}

pub fn event_kind_word(kind: v1::EventKind) -> &'static str {
    match kind {
        v1::EventKind::Unspecified => "unspecified",
        v1::EventKind::Submitted => "submitted",
        v1::EventKind::PhaseChanged => "phase-changed",
        v1::EventKind::Placed => "placed",
        v1::EventKind::Crashed => "crashed",
        v1::EventKind::Disrupted => "disrupted",
        v1::EventKind::NodeAdded => "node-added",
        v1::EventKind::NodeJoined => "node-joined",
        v1::EventKind::NodeRemoved => "node-removed",
        v1::EventKind::NodeConnected => "node-connected",
        v1::EventKind::NodeUnreachable => "node-unreachable",
        v1::EventKind::NodeLost => "node-lost",
        v1::EventKind::NodeCordoned => "node-cordoned",
        v1::EventKind::NodeUncordoned => "node-uncordoned",
        v1::EventKind::NodeDraining => "node-draining",
        v1::EventKind::NodeLabelsChanged => "node-labels-changed",
        v1::EventKind::NodePowerModeChanged => "node-power-mode-changed",
        v1::EventKind::NodeThermalChanged => "node-thermal-changed",
        v1::EventKind::PolicyChanged => "policy-changed",
    }
}

pub fn connection_word(c: v1::NodeConnection) -> &'static str {
    match c {
        v1::NodeConnection::Unspecified => "unknown",
        v1::NodeConnection::Pending => "pending",
        v1::NodeConnection::Connected => "connected",
        v1::NodeConnection::Unreachable => "unreachable",
        v1::NodeConnection::Lost => "lost",
    }
}

pub fn source_word(s: v1::NodeSource) -> Option<&'static str> {
    match s {
        v1::NodeSource::Unspecified => None,
        v1::NodeSource::Config => Some("config"),
        v1::NodeSource::Joined => Some("joined"),
        v1::NodeSource::Added => Some("added"),
    }
}

pub fn drain_word(m: v1::DrainMode) -> &'static str {
    match m {
        // The controller's default.
        v1::DrainMode::Unspecified | v1::DrainMode::Wait => "wait",
        v1::DrainMode::Requeue => "requeue",
    }
}

/// One node's scheduling state in one word: how the controller reaches it
/// first, then whether it takes work.
pub fn node_state_word(n: &v1::Node) -> &'static str {
    match n.connection() {
        v1::NodeConnection::Connected if n.draining => "draining",
        v1::NodeConnection::Connected if n.cordoned => "cordoned",
        v1::NodeConnection::Connected => "ready",
        other => connection_word(other),
    }
}

/// One experiment as the controller holds it: its phase, its spec with
/// defaults written out, every run, and the board's last report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetExperimentView {
    pub id: String,
    /// queued, placing, starting, running, stopping, unknown, succeeded,
    /// failed, stopped or cancelled.
    pub phase: &'static str,
    /// Why it is in this phase, for people.
    pub reason: Option<String>,
    /// The node of the current placement.
    pub node: Option<String>,
    /// The epoch of the latest placement; 0 before the first.
    pub epoch: u64,
    pub priority: i32,
    /// Automatic restarts after crashes, over every run.
    pub crashes: u64,
    /// Runs ended by the fleet (thermal, drain, node lost).
    pub disruptions: u64,
    pub submitted_at: Option<String>,
    pub submitted_at_unix_us: i64,
    pub submitted_by: Option<String>,
    /// Order among experiments of the same priority.
    pub submit_seq: u64,
    pub updated_at: Option<String>,
    pub updated_at_unix_us: i64,
    pub revision: u64,
    pub spec: Option<SpecView>,
    /// Every placement that reached a board, oldest first.
    pub runs: Vec<RunView>,
    /// The board's last report of the current run, as `--agent status`
    /// shows it.
    pub status: Option<ExperimentView>,
}

impl From<&v1::Experiment> for FleetExperimentView {
    fn from(e: &v1::Experiment) -> Self {
        let spec = e.spec.as_ref();
        FleetExperimentView {
            id: spec.map(|s| s.id.clone()).unwrap_or_default(),
            phase: phase_word(e.phase()),
            reason: non_empty(&e.reason),
            node: non_empty(&e.node),
            epoch: e.epoch,
            priority: spec.map_or(0, |s| s.priority),
            crashes: e.crashes,
            disruptions: e.disruptions,
            submitted_at: time_opt(e.submitted_at_unix_us),
            submitted_at_unix_us: e.submitted_at_unix_us,
            submitted_by: non_empty(&e.submitted_by),
            submit_seq: e.submit_seq,
            updated_at: time_opt(e.updated_at_unix_us),
            updated_at_unix_us: e.updated_at_unix_us,
            revision: e.revision,
            spec: spec.map(SpecView::from),
            runs: e.runs.iter().map(RunView::from).collect(),
            status: e.status.as_ref().map(ExperimentView::from),
        }
    }
}

/// `ps`, `stop`, `cancel`, `restart` with a controller.
#[derive(Debug, Clone, Serialize)]
pub struct FleetExperimentList {
    pub experiments: Vec<FleetExperimentView>,
}

/// One run: a placement that reached a board, and the board as it was.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunView {
    pub node: String,
    pub epoch: u64,
    pub started_at: Option<String>,
    pub started_at_unix_us: i64,
    /// `null` while the run lasts.
    pub ended_at: Option<String>,
    pub ended_at_unix_us: Option<i64>,
    /// running, succeeded, failed, stopped, cancelled, disrupted or
    /// start-failed.
    pub outcome: &'static str,
    pub message: Option<String>,
    /// As in the board's view: exit-code, signal, oom-kill, ...
    pub failure: Option<&'static str>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    /// thermal, drain, node-lost, node-removed or restart.
    pub disruption: Option<&'static str>,
    /// Automatic restarts after crashes during this run.
    pub crashes: u64,
    /// The board's power mode, jetson_clocks and L4T release at start.
    pub power_mode: Option<PowerModeView>,
    pub jetson_clocks: Option<bool>,
    pub l4t_release: Option<String>,
    /// The hottest zone's peak over the run.
    pub peak_temp_c: Option<f64>,
    /// The board reached its warn temperature during the run.
    pub throttled: bool,
    /// Times the board started the run over after a shutdown or reboot
    /// interrupted it (autostart): the work was redone.
    pub board_restarts: u64,
}

impl From<&v1::RunRecord> for RunView {
    fn from(r: &v1::RunRecord) -> Self {
        RunView {
            node: r.node.clone(),
            epoch: r.epoch,
            started_at: time_opt(r.started_at_unix_us),
            started_at_unix_us: r.started_at_unix_us,
            ended_at: r.ended_at_unix_us.and_then(time_opt),
            ended_at_unix_us: r.ended_at_unix_us,
            outcome: outcome_word(r.outcome()),
            message: non_empty(&r.message),
            failure: failure_word(r.failure()),
            exit_code: r.exit_code,
            exit_signal: r.exit_signal,
            disruption: disruption_word(r.disruption()),
            crashes: r.crashes,
            power_mode: r.power_mode.as_ref().map(PowerModeView::from),
            jetson_clocks: r.jetson_clocks,
            l4t_release: non_empty(&r.l4t_release),
            peak_temp_c: r.peak_temp_c,
            throttled: r.throttled,
            board_restarts: r.board_restarts,
        }
    }
}

/// One term of a node's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreTermView {
    /// temperature, load, memory, spread or pack.
    pub name: String,
    /// In [0, 1], 1 best.
    pub value: f64,
    pub weight: f64,
}

/// One node as the scheduler saw it for one experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerdictView {
    pub node: String,
    pub fits: bool,
    /// Every filter the node failed, for people.
    pub reasons: Vec<String>,
    /// The weighted score in [0, 1] of a node that fits.
    pub score: Option<f64>,
    pub terms: Vec<ScoreTermView>,
}

/// What the scheduler decided for one experiment in one pass.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionView {
    pub experiment: String,
    pub time: Option<String>,
    pub time_unix_us: i64,
    pub policy: String,
    /// placed, unschedulable or blocked.
    pub outcome: &'static str,
    /// The chosen node, with `placed`.
    pub node: Option<String>,
    /// 0 for a dry run.
    pub epoch: u64,
    pub summary: String,
    pub dry_run: bool,
    /// Every node, best score first, then the ones that do not fit.
    pub nodes: Vec<VerdictView>,
}

impl From<&v1::Decision> for DecisionView {
    fn from(d: &v1::Decision) -> Self {
        DecisionView {
            experiment: d.experiment.clone(),
            time: time_opt(d.timestamp_unix_us),
            time_unix_us: d.timestamp_unix_us,
            policy: d.policy.clone(),
            outcome: decision_word(d.outcome()),
            node: non_empty(&d.node),
            epoch: d.epoch,
            summary: d.summary.clone(),
            dry_run: d.dry_run,
            nodes: d
                .nodes
                .iter()
                .map(|n| VerdictView {
                    node: n.node.clone(),
                    fits: n.fits,
                    reasons: n.reasons.clone(),
                    score: n.score,
                    terms: n
                        .terms
                        .iter()
                        .map(|t| ScoreTermView {
                            name: t.name.clone(),
                            value: t.value,
                            weight: t.weight,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// `explain`.
#[derive(Debug, Clone, Serialize)]
pub struct ExplanationView {
    pub experiment: Option<FleetExperimentView>,
    /// The last decision recorded; `null` before the scheduler saw it.
    pub last: Option<DecisionView>,
    /// For a queued experiment: what the scheduler would decide now.
    pub now: Option<DecisionView>,
}

impl From<&v1::Explanation> for ExplanationView {
    fn from(e: &v1::Explanation) -> Self {
        ExplanationView {
            experiment: e.experiment.as_ref().map(FleetExperimentView::from),
            last: e.last.as_ref().map(DecisionView::from),
            now: e.now.as_ref().map(DecisionView::from),
        }
    }
}

/// One entry of the event log (`events`, one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetEventView {
    pub seq: u64,
    pub time: Option<String>,
    pub time_unix_us: i64,
    /// submitted, phase-changed, placed, crashed, disrupted, node-added,
    /// node-joined, node-removed, node-connected, node-unreachable,
    /// node-lost, node-cordoned, node-uncordoned, node-draining,
    /// node-labels-changed, node-power-mode-changed, node-thermal-changed
    /// or policy-changed.
    pub kind: &'static str,
    pub experiment: Option<String>,
    pub node: Option<String>,
    pub epoch: u64,
    /// With phase-changed.
    pub from: Option<&'static str>,
    pub to: Option<&'static str>,
    pub message: Option<String>,
    /// "user/<role>/<name>", "scheduler", "agent/<node>", "controller".
    pub actor: Option<String>,
}

impl From<&v1::Event> for FleetEventView {
    fn from(e: &v1::Event) -> Self {
        let phase = |n: i32| match phase_of(n) {
            v1::ExperimentPhase::Unspecified => None,
            p => Some(phase_word(p)),
        };
        FleetEventView {
            seq: e.seq,
            time: time_opt(e.timestamp_unix_us),
            time_unix_us: e.timestamp_unix_us,
            kind: event_kind_word(e.kind()),
            experiment: non_empty(&e.experiment),
            node: non_empty(&e.node),
            epoch: e.epoch,
            from: phase(e.from),
            to: phase(e.to),
            message: non_empty(&e.message),
            actor: non_empty(&e.actor),
        }
    }
}

/// One node as the controller knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetNodeView {
    pub name: String,
    /// host:port of its agent.
    pub address: String,
    /// ready, cordoned, draining, pending, unreachable, lost or unknown.
    pub state: &'static str,
    /// pending, connected, unreachable, lost or unknown.
    pub connection: &'static str,
    /// config, joined or added.
    pub source: Option<&'static str>,
    pub cordoned: bool,
    pub cordon_reason: Option<String>,
    pub draining: bool,
    /// wait or requeue, while draining.
    pub drain_mode: Option<&'static str>,
    pub labels: BTreeMap<String, String>,
    /// The board as its agent describes itself (as `--agent node info`);
    /// `null` before the first connection.
    pub info: Option<NodeInfoView>,
    /// The last telemetry sample.
    pub telemetry: Option<TelemetryView>,
    pub last_seen: Option<String>,
    pub last_seen_unix_us: i64,
    /// Experiments placed there now.
    pub experiments: Vec<String>,
    pub memory_reserved_bytes: u64,
    pub slots_used: u32,
    pub slots_max: u32,
    /// Its thermal guard refuses new work.
    pub thermally_limited: bool,
    pub revision: u64,
}

impl From<&v1::Node> for FleetNodeView {
    fn from(n: &v1::Node) -> Self {
        FleetNodeView {
            name: n.name.clone(),
            address: n.address.clone(),
            state: node_state_word(n),
            connection: connection_word(n.connection()),
            source: source_word(n.source()),
            cordoned: n.cordoned,
            cordon_reason: non_empty(&n.cordon_reason),
            draining: n.draining,
            drain_mode: n.draining.then(|| drain_word(n.drain_mode())),
            labels: n.labels.clone().into_iter().collect(),
            info: n.info.as_ref().map(NodeInfoView::from),
            telemetry: n.telemetry.as_ref().map(TelemetryView::from),
            last_seen: time_opt(n.last_seen_unix_us),
            last_seen_unix_us: n.last_seen_unix_us,
            experiments: n.experiments.clone(),
            memory_reserved_bytes: n.memory_reserved_bytes,
            slots_used: n.slots_used,
            slots_max: n.slots_max,
            thermally_limited: n.thermally_limited,
            revision: n.revision,
        }
    }
}

impl FleetNodeView {
    /// The hottest temperature the last sample reported, and its thermal
    /// state word.
    pub fn thermal(&self) -> (&'static str, Option<f64>) {
        match &self.telemetry {
            Some(t) => (t.thermal_state, t.hottest_c),
            None => (thermal_word(v1::ThermalState::Unspecified), None),
        }
    }
}

/// `nodes`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetNodeList {
    pub nodes: Vec<FleetNodeView>,
}

/// `node drain`.
#[derive(Debug, Clone, Serialize)]
pub struct DrainView {
    pub node: Option<FleetNodeView>,
    /// wait or requeue.
    pub mode: &'static str,
    /// With wait: the experiments still running there; with requeue: the
    /// ones being stopped and requeued.
    pub experiments: Vec<String>,
}

/// The weights of a policy's score terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WeightsView {
    pub temperature: f64,
    pub load: f64,
    pub memory: f64,
    pub spread: f64,
    pub pack: f64,
}

impl From<&v1::ScoreWeights> for WeightsView {
    fn from(w: &v1::ScoreWeights) -> Self {
        WeightsView {
            temperature: w.temperature,
            load: w.load,
            memory: w.memory,
            spread: w.spread,
            pack: w.pack,
        }
    }
}

impl WeightsView {
    /// The terms by name, in the order people read them.
    pub fn terms(&self) -> [(&'static str, f64); 5] {
        [
            ("temperature", self.temperature),
            ("load", self.load),
            ("memory", self.memory),
            ("spread", self.spread),
            ("pack", self.pack),
        ]
    }
}

/// `policy get`, `policy set`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyView {
    /// balanced, coolest, least-loaded, spread or pack.
    pub name: String,
    pub weights: Option<WeightsView>,
    pub strict_order: bool,
    pub temp_margin_c: f64,
    pub updated_at: Option<String>,
    pub updated_at_unix_us: i64,
    /// "config" until changed at run time; then who changed it.
    pub updated_by: Option<String>,
}

impl From<&v1::Policy> for PolicyView {
    fn from(p: &v1::Policy) -> Self {
        PolicyView {
            name: p.name.clone(),
            weights: p.weights.as_ref().map(WeightsView::from),
            strict_order: p.strict_order,
            temp_margin_c: p.temp_margin_c,
            updated_at: time_opt(p.updated_at_unix_us),
            updated_at_unix_us: p.updated_at_unix_us,
            updated_by: non_empty(&p.updated_by),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_748_779_402_500_000;

    #[test]
    fn experiment_json_carries_runs_and_the_boards_report() {
        let e = v1::Experiment {
            spec: Some(v1::ExperimentSpec {
                id: "amnesiac-001".into(),
                command: vec!["/bin/true".into()],
                priority: 50,
                ..Default::default()
            }),
            phase: v1::ExperimentPhase::Running as i32,
            node: "jetson-03".into(),
            epoch: 3,
            runs: vec![v1::RunRecord {
                node: "jetson-01".into(),
                epoch: 1,
                started_at_unix_us: T,
                ended_at_unix_us: Some(T + 1_000_000),
                outcome: v1::RunOutcome::Disrupted as i32,
                disruption: v1::Disruption::Thermal as i32,
                power_mode: Some(v1::PowerMode {
                    id: 0,
                    name: "MAXN".into(),
                }),
                jetson_clocks: Some(true),
                l4t_release: "R36.4.3".into(),
                peak_temp_c: Some(86.0),
                throttled: true,
                ..Default::default()
            }],
            submitted_at_unix_us: T,
            status: Some(v1::ExperimentStatus {
                id: "amnesiac-001".into(),
                state: v1::ExperimentState::Running as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(FleetExperimentView::from(&e)).unwrap();
        assert_eq!(json["id"], "amnesiac-001");
        assert_eq!(json["phase"], "running");
        assert_eq!(json["priority"], 50);
        assert_eq!(json["reason"], serde_json::Value::Null);
        assert_eq!(json["submitted_at"], "2025-06-01T12:03:22.500000Z");
        let run = &json["runs"][0];
        assert_eq!(run["outcome"], "disrupted");
        assert_eq!(run["disruption"], "thermal");
        assert_eq!(run["power_mode"]["name"], "MAXN");
        assert_eq!(run["peak_temp_c"], 86.0);
        assert_eq!(run["throttled"], true);
        assert_eq!(run["failure"], serde_json::Value::Null);
        assert_eq!(json["status"]["state"], "running");
        assert_eq!(json.as_object().unwrap().len(), 18);
        assert_eq!(run.as_object().unwrap().len(), 19);
    }

    #[test]
    fn node_state_puts_the_connection_first() {
        let mut n = v1::Node {
            connection: v1::NodeConnection::Connected as i32,
            cordoned: true,
            ..Default::default()
        };
        assert_eq!(node_state_word(&n), "cordoned");
        n.draining = true;
        assert_eq!(node_state_word(&n), "draining");
        n.connection = v1::NodeConnection::Unreachable as i32;
        assert_eq!(node_state_word(&n), "unreachable");
        n.connection = v1::NodeConnection::Connected as i32;
        n.cordoned = false;
        n.draining = false;
        assert_eq!(node_state_word(&n), "ready");
        let view = FleetNodeView::from(&n);
        assert_eq!(view.thermal(), ("unknown", None));
        assert_eq!(view.drain_mode, None);
    }

    #[test]
    fn phase_words_cover_every_phase() {
        for n in 0..=10 {
            assert_ne!(phase_word(phase_of(n)), "", "{n}");
        }
        assert_eq!(phase_of(99), v1::ExperimentPhase::Unspecified);
    }
}
