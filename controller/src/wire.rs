//! The controller's domain and store types in their wire form
//! (`fleet_proto::v1`), and back where the wire sends them in.
//!
//! One function per message. Each takes its record apart field by field and
//! matches every enum without a wildcard arm, so a new field or variant on
//! either side fails to compile here until someone decides how it crosses.
//! Only the gRPC layer, and the reconciler where it reads telemetry, call
//! these: the store and the scheduler never see a generated type.
//!
//! What comes in is checked: a bad value is a [`WireError`] that names the
//! field and says what to do, e.g.
//! `labels.Room: label key "Room" is invalid: use lowercase letters, ...`.
//! Every [`WireError`] is the caller's mistake (`InvalidArgument`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use fleet_proto::spec::{
    ExperimentId, ExperimentSpec, FieldPath, InvalidValue, LabelKey, LabelValue, NodeName,
};
use fleet_proto::v1;

use crate::live::{NodeLive, ViewConfig};
use crate::model::{
    Disruption, DrainMode, EventKind, Failure, Labels, ModeRef, NodeSource, Phase, RunOutcome,
    RunRecord, RunStart, UnixMicros,
};
use crate::scheduler::{
    Decision, Link, ModeInfo, NodeVerdict, NodeView, Outcome, Policy, PolicyError, PolicyName,
    Term, Thermal, Weights,
};
use crate::store::{DecisionRecord, EventRecord, ExperimentRecord, NodeRecord, PolicyRecord};

/// `updated_by` of a policy that comes from the config file, before any
/// SetPolicy.
pub const CONFIG_ACTOR: &str = "config";

/// The power mode id an agent reports when nvpmodel names the current mode
/// but gives no id (the agent's convention); such a mode is found by name.
pub const UNKNOWN_MODE_ID: u32 = u32::MAX;

/// A value from the wire that the controller cannot take.
///
/// The problem is part of the message rather than a `#[source]`: it is the
/// whole explanation, as in `fleet_proto::spec::FieldError`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A name, id or label that breaks its rules.
    #[error("{field}: {problem}")]
    Invalid {
        field: FieldPath,
        problem: InvalidValue,
    },
    /// An enum left at 0 where a value is needed.
    #[error("{field}: the {what} is unspecified: use {known}")]
    Unspecified {
        field: FieldPath,
        what: &'static str,
        known: String,
    },
    /// An enum number this controller does not know, e.g. from a newer
    /// client.
    #[error(
        "{field}: {what} {value} is unknown to this controller: use {known}, or upgrade the \
         controller"
    )]
    Unknown {
        field: FieldPath,
        what: &'static str,
        value: i32,
        known: String,
    },
}

/// Every wire error is the caller's to fix.
impl From<WireError> for tonic::Status {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Invalid { .. }
            | WireError::Unspecified { .. }
            | WireError::Unknown { .. } => tonic::Status::invalid_argument(e.to_string()),
        }
    }
}

// Experiments.

/// An experiment as Get, List, Cancel, Stop, Restart and Submit return it.
///
/// `spec` is the stored spec; without it (a listing that does not read
/// every spec, which may hold a 1 MiB config file) the message's spec
/// carries only the id and the priority. `last_status` is the agent's last
/// report of the current run.
pub fn experiment(
    rec: &ExperimentRecord,
    spec: Option<&ExperimentSpec>,
    last_status: Option<&v1::ExperimentStatus>,
) -> v1::Experiment {
    let ExperimentRecord {
        version: _,
        revision,
        id,
        req,
        requeue_on_disruption: _,
        phase: p,
        reason,
        submit_seq,
        queue_seq: _,
        submitted_at,
        submitted_by,
        updated_at,
        node,
        epoch,
        runs,
    } = rec;
    let spec = spec.map_or_else(
        || v1::ExperimentSpec {
            id: id.to_string(),
            priority: i32::try_from(req.priority).unwrap_or(i32::MAX),
            ..v1::ExperimentSpec::default()
        },
        ExperimentSpec::to_proto,
    );
    v1::Experiment {
        spec: Some(spec),
        phase: phase(*p) as i32,
        reason: reason.clone(),
        node: node.as_ref().map(ToString::to_string).unwrap_or_default(),
        epoch: *epoch,
        runs: runs.iter().map(run).collect(),
        crashes: rec.crashes(),
        disruptions: rec.disruptions(),
        submitted_at_unix_us: *submitted_at,
        submitted_by: submitted_by.clone(),
        submit_seq: *submit_seq,
        updated_at_unix_us: *updated_at,
        revision: *revision,
        status: last_status.cloned(),
    }
}

pub fn run(r: &RunRecord) -> v1::RunRecord {
    let RunRecord {
        node,
        epoch,
        started_at,
        ended_at,
        outcome,
        message,
        failure: f,
        exit_code,
        exit_signal,
        disruption: d,
        crashes,
        power_mode,
        jetson_clocks,
        l4t_release,
        peak_temp_c,
        throttled,
        board_restarts,
    } = r;
    v1::RunRecord {
        node: node.to_string(),
        epoch: *epoch,
        started_at_unix_us: *started_at,
        ended_at_unix_us: *ended_at,
        outcome: run_outcome(*outcome) as i32,
        message: message.clone(),
        failure: failure(*f) as i32,
        exit_code: *exit_code,
        exit_signal: *exit_signal,
        disruption: disruption(*d) as i32,
        crashes: *crashes,
        power_mode: power_mode.as_ref().map(|m| v1::PowerMode {
            id: m.id,
            name: m.name.clone(),
        }),
        jetson_clocks: *jetson_clocks,
        l4t_release: l4t_release.clone(),
        peak_temp_c: *peak_temp_c,
        throttled: *throttled,
        board_restarts: *board_restarts,
    }
}

pub fn phase(p: Phase) -> v1::ExperimentPhase {
    match p {
        Phase::Queued => v1::ExperimentPhase::Queued,
        Phase::Placing => v1::ExperimentPhase::Placing,
        Phase::Starting => v1::ExperimentPhase::Starting,
        Phase::Running => v1::ExperimentPhase::Running,
        Phase::Stopping => v1::ExperimentPhase::Stopping,
        Phase::Unknown => v1::ExperimentPhase::Unknown,
        Phase::Succeeded => v1::ExperimentPhase::Succeeded,
        Phase::Failed => v1::ExperimentPhase::Failed,
        Phase::Stopped => v1::ExperimentPhase::Stopped,
        Phase::Cancelled => v1::ExperimentPhase::Cancelled,
    }
}

/// A phase a request names, e.g. in List's filter; `field` is where it
/// sits, for the error.
pub fn phase_from(value: i32, field: FieldPath) -> Result<Phase, WireError> {
    let known = || {
        Phase::ALL
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wire = v1::ExperimentPhase::try_from(value).map_err(|_| WireError::Unknown {
        field: field.clone(),
        what: "experiment phase",
        value,
        known: known(),
    })?;
    match wire {
        v1::ExperimentPhase::Unspecified => Err(WireError::Unspecified {
            field,
            what: "experiment phase",
            known: known(),
        }),
        v1::ExperimentPhase::Queued => Ok(Phase::Queued),
        v1::ExperimentPhase::Placing => Ok(Phase::Placing),
        v1::ExperimentPhase::Starting => Ok(Phase::Starting),
        v1::ExperimentPhase::Running => Ok(Phase::Running),
        v1::ExperimentPhase::Stopping => Ok(Phase::Stopping),
        v1::ExperimentPhase::Unknown => Ok(Phase::Unknown),
        v1::ExperimentPhase::Succeeded => Ok(Phase::Succeeded),
        v1::ExperimentPhase::Failed => Ok(Phase::Failed),
        v1::ExperimentPhase::Stopped => Ok(Phase::Stopped),
        v1::ExperimentPhase::Cancelled => Ok(Phase::Cancelled),
    }
}

/// `None`: the run still lasts.
pub fn run_outcome(o: Option<RunOutcome>) -> v1::RunOutcome {
    match o {
        None => v1::RunOutcome::Unspecified,
        Some(RunOutcome::Succeeded) => v1::RunOutcome::Succeeded,
        Some(RunOutcome::Failed) => v1::RunOutcome::Failed,
        Some(RunOutcome::Stopped) => v1::RunOutcome::Stopped,
        Some(RunOutcome::Cancelled) => v1::RunOutcome::Cancelled,
        Some(RunOutcome::Disrupted) => v1::RunOutcome::Disrupted,
        Some(RunOutcome::StartFailed) => v1::RunOutcome::StartFailed,
    }
}

pub fn failure(f: Option<Failure>) -> v1::FailureReason {
    match f {
        None => v1::FailureReason::None,
        Some(Failure::ExitCode) => v1::FailureReason::ExitCode,
        Some(Failure::Signal) => v1::FailureReason::Signal,
        Some(Failure::OomKill) => v1::FailureReason::OomKill,
        Some(Failure::Timeout) => v1::FailureReason::Timeout,
        Some(Failure::StartLimit) => v1::FailureReason::StartLimit,
        Some(Failure::CoreDump) => v1::FailureReason::CoreDump,
        Some(Failure::Resources) => v1::FailureReason::Resources,
        Some(Failure::Other) => v1::FailureReason::Other,
    }
}

/// The failure an agent reported (`ExperimentStatus.failure`). A number
/// this controller does not know, from a newer agent, is still a failure:
/// [`Failure::Other`].
pub fn failure_from(value: i32) -> Option<Failure> {
    let Ok(wire) = v1::FailureReason::try_from(value) else {
        return Some(Failure::Other);
    };
    match wire {
        v1::FailureReason::None => None,
        v1::FailureReason::ExitCode => Some(Failure::ExitCode),
        v1::FailureReason::Signal => Some(Failure::Signal),
        v1::FailureReason::OomKill => Some(Failure::OomKill),
        v1::FailureReason::Timeout => Some(Failure::Timeout),
        v1::FailureReason::StartLimit => Some(Failure::StartLimit),
        v1::FailureReason::CoreDump => Some(Failure::CoreDump),
        v1::FailureReason::Resources => Some(Failure::Resources),
        v1::FailureReason::Other => Some(Failure::Other),
    }
}

pub fn disruption(d: Option<Disruption>) -> v1::Disruption {
    match d {
        None => v1::Disruption::Unspecified,
        Some(Disruption::Thermal) => v1::Disruption::Thermal,
        Some(Disruption::Drain) => v1::Disruption::Drain,
        Some(Disruption::NodeLost) => v1::Disruption::NodeLost,
        Some(Disruption::NodeRemoved) => v1::Disruption::NodeRemoved,
        Some(Disruption::Restart) => v1::Disruption::Restart,
        Some(Disruption::Shutdown) => v1::Disruption::Shutdown,
    }
}

/// What the board was like when a run starts, from what its link knows:
/// the power mode of the last sample (or of the node info), jetson_clocks
/// of the last sample, the L4T release of the node info.
pub fn run_start(live: Option<&NodeLive>) -> RunStart {
    run_start_switched(live, None)
}

/// [`run_start`] on a board the controller just switched to `switched`
/// (the mode the board confirmed): the run starts in that mode, whatever
/// the last sample said.
pub fn run_start_switched(live: Option<&NodeLive>, switched: Option<&v1::PowerMode>) -> RunStart {
    let info = live.and_then(|l| l.info.as_ref());
    let sample = live.and_then(|l| l.sample.as_ref());
    let modes = info.map_or(&[][..], |i| &i.power_modes[..]);
    let power_mode = switched
        .or_else(|| sample.and_then(|s| s.power_mode.as_ref()))
        .or_else(|| info.and_then(|i| i.current_power_mode.as_ref()))
        .and_then(|m| {
            mode_id(m, modes).map(|id| ModeRef {
                id,
                name: m.name.clone(),
            })
        });
    RunStart {
        power_mode,
        jetson_clocks: sample.and_then(|s| s.jetson_clocks),
        l4t_release: info.map(|i| i.l4t_release.clone()).unwrap_or_default(),
    }
}

/// A reported mode's id; one reported without an id is found by name.
fn mode_id(mode: &v1::PowerMode, modes: &[v1::PowerMode]) -> Option<u32> {
    if mode.id != UNKNOWN_MODE_ID {
        return Some(mode.id);
    }
    modes
        .iter()
        .find(|m| m.name == mode.name && m.id != UNKNOWN_MODE_ID)
        .map(|m| m.id)
}

/// Which experiments List returns: every non-empty part must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExperimentFilter {
    /// Empty: every phase.
    pub phases: BTreeSet<Phase>,
    /// Placed on this node now.
    pub node: Option<NodeName>,
    /// Required by the experiment's placement, each with this value.
    pub labels: Labels,
}

impl ExperimentFilter {
    pub fn matches(&self, rec: &ExperimentRecord) -> bool {
        (self.phases.is_empty() || self.phases.contains(&rec.phase))
            && self
                .node
                .as_ref()
                .is_none_or(|n| rec.node.as_ref() == Some(n))
            && self
                .labels
                .iter()
                .all(|(k, v)| rec.req.labels.get(k) == Some(v))
    }
}

/// List's filter. Paging (`limit`, `page_token`) is the handler's.
pub fn experiment_filter(req: &v1::ListRequest) -> Result<ExperimentFilter, WireError> {
    let v1::ListRequest {
        phases,
        node,
        labels,
        limit: _,
        page_token: _,
    } = req;
    let phases = phases
        .iter()
        .enumerate()
        .map(|(i, p)| phase_from(*p, FieldPath::of(&["phases"]).index(i)))
        .collect::<Result<_, _>>()?;
    let node = if node.is_empty() {
        None
    } else {
        Some(node_name(node, FieldPath::of(&["node"]))?)
    };
    Ok(ExperimentFilter {
        phases,
        node,
        labels: labels_from(labels)?,
    })
}

// Decisions.

/// One scheduling decision. `at` is when it was made; `epoch` the epoch of
/// the placement it stored, if any; `dry_run` for a decision that stored
/// nothing (Submit's dry run, Explain's `now`).
pub fn decision(d: &Decision, at: UnixMicros, epoch: Option<u64>, dry_run: bool) -> v1::Decision {
    let Decision {
        experiment,
        policy,
        outcome,
        verdicts,
        tally: _,
    } = d;
    let (outcome, node) = match outcome {
        // The summary says when it switches the node's mode.
        Outcome::Placed { node, switch_to: _ } => (v1::DecisionOutcome::Placed, node.to_string()),
        Outcome::Unschedulable => (v1::DecisionOutcome::Unschedulable, String::new()),
        // The summary names the experiment it waits behind.
        Outcome::Blocked { behind: _ } => (v1::DecisionOutcome::Blocked, String::new()),
    };
    v1::Decision {
        experiment: experiment.to_string(),
        timestamp_unix_us: at,
        policy: policy.as_str().to_owned(),
        outcome: outcome as i32,
        node,
        epoch: epoch.unwrap_or(0),
        summary: summary(d),
        nodes: verdicts.iter().map(verdict).collect(),
        dry_run,
    }
}

/// The decision's summary; when it does not list every node, it says which
/// it lists and how the others fared, so the list is not read as the fleet.
fn summary(d: &Decision) -> String {
    let mut s = d.summary();
    if d.lists_every_node() {
        return s;
    }
    let tally = d.tally();
    let fit_shown = d.verdicts.iter().filter(|v| v.fits()).count();
    let mut shown = vec![];
    if fit_shown > 0 {
        shown.push(format!("the {fit_shown} best that fit"));
    }
    if fit_shown < d.verdicts.len() {
        shown.push(format!(
            "up to {} per reason for refusal",
            crate::scheduler::COMPACT_PER_FILTER
        ));
    }
    let mut counts = vec![format!("{} fit", tally.fit)];
    counts.extend(
        tally
            .rejected
            .iter()
            .map(|(f, n)| format!("{n} {}", f.short())),
    );
    s.push_str(&format!(
        "; {} of {} nodes listed ({}); of all nodes: {}",
        d.verdicts.len(),
        tally.nodes,
        shown.join(", "),
        counts.join(", ")
    ));
    s
}

/// One node's filter results and score; each rejection as a person reads
/// it, each term with its weight.
pub fn verdict(v: &NodeVerdict) -> v1::NodeVerdict {
    let NodeVerdict {
        node,
        rejections,
        score,
    } = v;
    v1::NodeVerdict {
        node: node.to_string(),
        fits: v.fits(),
        reasons: rejections.iter().map(ToString::to_string).collect(),
        score: score.map(|s| s.total),
        terms: score
            .iter()
            .flat_map(|s| {
                Term::ALL.iter().zip(s.terms.iter().zip(&s.weights)).map(
                    |(term, (value, weight))| v1::ScoreTerm {
                        name: term.as_str().to_owned(),
                        value: *value,
                        weight: *weight,
                    },
                )
            })
            .collect(),
    }
}

/// A stored decision: made by a pass that may have placed the experiment.
pub fn decision_record(r: &DecisionRecord) -> v1::Decision {
    let DecisionRecord {
        version: _,
        at,
        decision: d,
        epoch,
    } = r;
    decision(d, *at, *epoch, false)
}

/// Explain's answer: the experiment, its last stored decision, and, for a
/// queued one, what the scheduler would decide `now` (made at `now_at`).
pub fn explanation(
    experiment: v1::Experiment,
    last: Option<&DecisionRecord>,
    now: Option<&Decision>,
    now_at: UnixMicros,
) -> v1::Explanation {
    v1::Explanation {
        experiment: Some(experiment),
        last: last.map(decision_record),
        now: now.map(|d| decision(d, now_at, None, true)),
    }
}

// Events.

/// Every event kind, for messages and tests.
const EVENT_KINDS: [EventKind; 18] = [
    EventKind::Submitted,
    EventKind::PhaseChanged,
    EventKind::Placed,
    EventKind::Crashed,
    EventKind::Disrupted,
    EventKind::NodeAdded,
    EventKind::NodeJoined,
    EventKind::NodeRemoved,
    EventKind::NodeConnected,
    EventKind::NodeUnreachable,
    EventKind::NodeLost,
    EventKind::NodeCordoned,
    EventKind::NodeUncordoned,
    EventKind::NodeDraining,
    EventKind::NodeLabelsChanged,
    EventKind::NodePowerModeChanged,
    EventKind::NodeThermalChanged,
    EventKind::PolicyChanged,
];

pub fn event(e: &EventRecord) -> v1::Event {
    let EventRecord {
        version: _,
        seq,
        at,
        kind,
        experiment,
        node,
        epoch,
        from,
        to,
        message,
        actor,
    } = e;
    let phase_or_unspecified =
        |p: &Option<Phase>| p.map_or(v1::ExperimentPhase::Unspecified, phase) as i32;
    v1::Event {
        seq: *seq,
        timestamp_unix_us: *at,
        kind: event_kind(*kind) as i32,
        experiment: experiment
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        node: node.as_ref().map(ToString::to_string).unwrap_or_default(),
        epoch: epoch.unwrap_or(0),
        from: phase_or_unspecified(from),
        to: phase_or_unspecified(to),
        message: message.clone(),
        actor: actor.clone(),
    }
}

pub fn event_kind(k: EventKind) -> v1::EventKind {
    match k {
        EventKind::Submitted => v1::EventKind::Submitted,
        EventKind::PhaseChanged => v1::EventKind::PhaseChanged,
        EventKind::Placed => v1::EventKind::Placed,
        EventKind::Crashed => v1::EventKind::Crashed,
        EventKind::Disrupted => v1::EventKind::Disrupted,
        EventKind::NodeAdded => v1::EventKind::NodeAdded,
        EventKind::NodeJoined => v1::EventKind::NodeJoined,
        EventKind::NodeRemoved => v1::EventKind::NodeRemoved,
        EventKind::NodeConnected => v1::EventKind::NodeConnected,
        EventKind::NodeUnreachable => v1::EventKind::NodeUnreachable,
        EventKind::NodeLost => v1::EventKind::NodeLost,
        EventKind::NodeCordoned => v1::EventKind::NodeCordoned,
        EventKind::NodeUncordoned => v1::EventKind::NodeUncordoned,
        EventKind::NodeDraining => v1::EventKind::NodeDraining,
        EventKind::NodeLabelsChanged => v1::EventKind::NodeLabelsChanged,
        EventKind::NodePowerModeChanged => v1::EventKind::NodePowerModeChanged,
        EventKind::NodeThermalChanged => v1::EventKind::NodeThermalChanged,
        EventKind::PolicyChanged => v1::EventKind::PolicyChanged,
    }
}

/// An event kind a request names; `field` is where it sits, for the error.
pub fn event_kind_from(value: i32, field: FieldPath) -> Result<EventKind, WireError> {
    // The wire names without their prefix: "phase_changed", "node_lost".
    let known = || {
        EVENT_KINDS
            .iter()
            .map(|k| {
                event_kind(*k)
                    .as_str_name()
                    .trim_start_matches("EVENT_KIND_")
                    .to_ascii_lowercase()
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let wire = v1::EventKind::try_from(value).map_err(|_| WireError::Unknown {
        field: field.clone(),
        what: "event kind",
        value,
        known: known(),
    })?;
    match wire {
        v1::EventKind::Unspecified => Err(WireError::Unspecified {
            field,
            what: "event kind",
            known: known(),
        }),
        v1::EventKind::Submitted => Ok(EventKind::Submitted),
        v1::EventKind::PhaseChanged => Ok(EventKind::PhaseChanged),
        v1::EventKind::Placed => Ok(EventKind::Placed),
        v1::EventKind::Crashed => Ok(EventKind::Crashed),
        v1::EventKind::Disrupted => Ok(EventKind::Disrupted),
        v1::EventKind::NodeAdded => Ok(EventKind::NodeAdded),
        v1::EventKind::NodeJoined => Ok(EventKind::NodeJoined),
        v1::EventKind::NodeRemoved => Ok(EventKind::NodeRemoved),
        v1::EventKind::NodeConnected => Ok(EventKind::NodeConnected),
        v1::EventKind::NodeUnreachable => Ok(EventKind::NodeUnreachable),
        v1::EventKind::NodeLost => Ok(EventKind::NodeLost),
        v1::EventKind::NodeCordoned => Ok(EventKind::NodeCordoned),
        v1::EventKind::NodeUncordoned => Ok(EventKind::NodeUncordoned),
        v1::EventKind::NodeDraining => Ok(EventKind::NodeDraining),
        v1::EventKind::NodeLabelsChanged => Ok(EventKind::NodeLabelsChanged),
        v1::EventKind::NodePowerModeChanged => Ok(EventKind::NodePowerModeChanged),
        v1::EventKind::NodeThermalChanged => Ok(EventKind::NodeThermalChanged),
        v1::EventKind::PolicyChanged => Ok(EventKind::PolicyChanged),
    }
}

/// Which events WatchEvents sends: those that match every non-empty set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventFilter {
    pub experiments: BTreeSet<ExperimentId>,
    pub nodes: BTreeSet<NodeName>,
    pub kinds: HashSet<EventKind>,
}

impl EventFilter {
    pub fn matches(&self, e: &EventRecord) -> bool {
        let about = |set_empty: bool, contains: Option<bool>| set_empty || contains == Some(true);
        about(
            self.experiments.is_empty(),
            e.experiment.as_ref().map(|x| self.experiments.contains(x)),
        ) && about(
            self.nodes.is_empty(),
            e.node.as_ref().map(|n| self.nodes.contains(n)),
        ) && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
    }
}

/// WatchEvents' filter; an empty one (the default, for an absent one)
/// lets every event through. Errors name the field under `filter`.
pub fn event_filter(f: &v1::EventFilter) -> Result<EventFilter, WireError> {
    let v1::EventFilter {
        experiments,
        nodes,
        kinds,
    } = f;
    let at = |name: &str, i: usize| FieldPath::of(&["filter", name]).index(i);
    Ok(EventFilter {
        experiments: experiments
            .iter()
            .enumerate()
            .map(|(i, x)| experiment_id(x, at("experiments", i)))
            .collect::<Result<_, _>>()?,
        nodes: nodes
            .iter()
            .enumerate()
            .map(|(i, n)| node_name(n, at("nodes", i)))
            .collect::<Result<_, _>>()?,
        kinds: kinds
            .iter()
            .enumerate()
            .map(|(i, k)| event_kind_from(*k, at("kinds", i)))
            .collect::<Result<_, _>>()?,
    })
}

// Nodes.

/// A node as ListNodes, Cordon, Drain, SetLabels, AddNode and Join return
/// it: the stored record joined with what its link knows now.
///
/// `experiments` must hold at least every experiment placed on the node
/// (every stored one will do, as a slice or a map's values): the memory it
/// reserves is theirs.
pub fn node<'a>(
    rec: &NodeRecord,
    live: Option<&NodeLive>,
    experiments: impl IntoIterator<Item = &'a ExperimentRecord>,
    config: &ViewConfig,
) -> v1::Node {
    let NodeRecord {
        version: _,
        revision,
        name,
        address,
        source,
        labels,
        cordoned,
        cordon_reason,
        drain,
        experiments: placed_ids,
        added_at: _,
        updated_at: _,
    } = rec;
    let placed = Placed::on(rec, experiments, &[]);
    let sample = live.and_then(|l| l.sample.as_ref());
    v1::Node {
        name: name.to_string(),
        address: address.clone(),
        source: node_source(*source) as i32,
        connection: connection(live) as i32,
        cordoned: *cordoned,
        cordon_reason: cordon_reason.clone(),
        draining: drain.is_some(),
        drain_mode: drain_mode_to_wire(*drain) as i32,
        labels: labels_to_wire(labels),
        info: live.and_then(|l| l.info.clone()),
        telemetry: sample.cloned(),
        last_seen_unix_us: live.and_then(|l| l.last_seen_unix_us).unwrap_or(0),
        experiments: placed_ids.iter().map(ToString::to_string).collect(),
        memory_reserved_bytes: placed.memory_reserved,
        slots_used: placed.slots_used,
        slots_max: config.slots_per_node,
        thermally_limited: sample.is_some_and(|s| !s.accepting),
        revision: *revision,
    }
}

/// How the controller hears from the node; see [`NodeLive::link`].
pub fn connection(live: Option<&NodeLive>) -> v1::NodeConnection {
    let Some(live) = live else {
        return v1::NodeConnection::Pending;
    };
    match (live.link, live.last_seen_unix_us) {
        (Link::Fresh, _) => v1::NodeConnection::Connected,
        (Link::Stale, None) => v1::NodeConnection::Pending,
        (Link::Stale, Some(_)) => v1::NodeConnection::Unreachable,
        (Link::Down, _) => v1::NodeConnection::Lost,
    }
}

pub fn node_source(s: NodeSource) -> v1::NodeSource {
    match s {
        NodeSource::Config => v1::NodeSource::Config,
        NodeSource::Joined => v1::NodeSource::Joined,
        NodeSource::Added => v1::NodeSource::Added,
    }
}

/// `None`: not draining (the wire's unspecified).
pub fn drain_mode_to_wire(d: Option<DrainMode>) -> v1::DrainMode {
    match d {
        None => v1::DrainMode::Unspecified,
        Some(DrainMode::Wait) => v1::DrainMode::Wait,
        Some(DrainMode::Requeue) => v1::DrainMode::Requeue,
    }
}

/// Drain's `mode`; unspecified is WAIT, as the proto says.
pub fn drain_mode(value: i32) -> Result<DrainMode, WireError> {
    let wire = v1::DrainMode::try_from(value).map_err(|_| WireError::Unknown {
        field: FieldPath::of(&["mode"]),
        what: "drain mode",
        value,
        known: "WAIT or REQUEUE".to_owned(),
    })?;
    match wire {
        v1::DrainMode::Unspecified | v1::DrainMode::Wait => Ok(DrainMode::Wait),
        v1::DrainMode::Requeue => Ok(DrainMode::Requeue),
    }
}

pub fn labels_to_wire(labels: &Labels) -> HashMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Labels a request sets or filters by (its `labels` field). Keys are
/// checked in sorted order, so the same request always gets the same error.
pub fn labels_from(labels: &HashMap<String, String>) -> Result<Labels, WireError> {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    sorted
        .into_iter()
        .map(|(k, v)| {
            let field = FieldPath::of(&["labels"]).key(k);
            let key = LabelKey::new(k.as_str()).map_err(|problem| WireError::Invalid {
                field: field.clone(),
                problem,
            })?;
            let value = LabelValue::new(v.as_str())
                .map_err(|problem| WireError::Invalid { field, problem })?;
            Ok((key, value))
        })
        .collect()
}

/// Label keys SetLabels removes (its `remove` field).
pub fn label_keys_from(keys: &[String]) -> Result<Vec<LabelKey>, WireError> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            LabelKey::new(k.as_str()).map_err(|problem| WireError::Invalid {
                field: FieldPath::of(&["remove"]).index(i),
                problem,
            })
        })
        .collect()
}

/// A node name a request gives; `field` is where it sits, for the error.
pub fn node_name(s: &str, field: FieldPath) -> Result<NodeName, WireError> {
    NodeName::new(s).map_err(|problem| WireError::Invalid { field, problem })
}

/// An experiment id a request gives; `field` is where it sits.
pub fn experiment_id(s: &str, field: FieldPath) -> Result<ExperimentId, WireError> {
    ExperimentId::new(s).map_err(|problem| WireError::Invalid { field, problem })
}

/// Which nodes ListNodes returns: every non-empty part must match.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeFilter {
    /// Empty: every node.
    pub names: BTreeSet<NodeName>,
    /// Carried by the node, each with this value.
    pub labels: Labels,
}

impl NodeFilter {
    pub fn matches(&self, rec: &NodeRecord) -> bool {
        (self.names.is_empty() || self.names.contains(&rec.name))
            && self
                .labels
                .iter()
                .all(|(k, v)| rec.labels.get(k) == Some(v))
    }
}

pub fn node_filter(req: &v1::ListNodesRequest) -> Result<NodeFilter, WireError> {
    let v1::ListNodesRequest { names, labels } = req;
    Ok(NodeFilter {
        names: names
            .iter()
            .enumerate()
            .map(|(i, n)| node_name(n, FieldPath::of(&["names"]).index(i)))
            .collect::<Result<_, _>>()?,
        labels: labels_from(labels)?,
    })
}

/// What the scheduler sees of a node: the stored record (cordon, drain,
/// labels), the live telemetry, and what the experiments placed there
/// take.
///
/// Unknowns lean towards refusing work: without a sample the thermal state
/// is unknown, the guard not accepting, no temperature reads and the CPU
/// counts as busy; without node info the warn temperature is 0 °C and
/// there is no GPU and no nvpmodel. `experiments` must hold at least every
/// experiment placed on the node (every stored one will do).
pub fn node_view<'a>(
    rec: &NodeRecord,
    live: Option<&NodeLive>,
    experiments: impl IntoIterator<Item = &'a ExperimentRecord>,
    config: &ViewConfig,
) -> NodeView {
    let info = live.and_then(|l| l.info.as_ref());
    let sample = live.and_then(|l| l.sample.as_ref());
    let wire_modes: &[v1::PowerMode] = match info {
        Some(i) if i.nvpmodel => &i.power_modes,
        Some(_) | None => &[],
    };
    let power_modes: Vec<ModeInfo> = wire_modes
        .iter()
        .filter(|m| m.id != UNKNOWN_MODE_ID)
        .map(|m| ModeInfo {
            id: m.id,
            name: m.name.clone(),
            // The agent does not say which switches need a reboot; the
            // switch itself reports it, and is refused without
            // allow_reboot.
            needs_reboot: false,
        })
        .collect();
    let placed = Placed::on(rec, experiments, &power_modes);
    let memory_total = match (sample, info) {
        (Some(s), _) if s.memory_total_bytes > 0 => s.memory_total_bytes,
        (_, Some(i)) => i.memory_total_bytes,
        (Some(_) | None, None) => 0,
    };
    let power_mode = sample
        .and_then(|s| s.power_mode.as_ref())
        .or_else(|| info.and_then(|i| i.current_power_mode.as_ref()))
        .and_then(|m| mode_id(m, wire_modes));
    NodeView {
        name: rec.name.clone(),
        link: live.map_or(Link::Down, |l| l.link),
        cordoned: rec.cordoned,
        draining: rec.drain.is_some(),
        thermal: sample.map_or(Thermal::Unknown, |s| thermal(s.thermal_state)),
        accepting: sample.is_some_and(|s| s.accepting),
        hottest_c: sample.and_then(|s| s.hottest_c),
        warn_c: info.map_or(0.0, |i| i.warn_c),
        memory_total,
        memory_reserved: placed.memory_reserved,
        slots_used: placed.slots_used,
        slots_max: config.slots_per_node,
        cpu_cores: info.map_or(0, |i| i.cpu_cores),
        cpu_percent: sample.map_or(100.0, |s| s.cpu_percent),
        labels: rec.labels.clone(),
        power_modes,
        power_mode,
        modes_in_use: placed.modes_in_use,
        gpu: info.is_some_and(|i| i.gpu),
    }
}

/// The node's guard state as its telemetry reports it; a number this
/// controller does not know reads as unknown.
pub fn thermal(value: i32) -> Thermal {
    let Ok(wire) = v1::ThermalState::try_from(value) else {
        return Thermal::Unknown;
    };
    match wire {
        v1::ThermalState::Unspecified => Thermal::Unknown,
        v1::ThermalState::Normal => Thermal::Normal,
        v1::ThermalState::Warn => Thermal::Warn,
        v1::ThermalState::Critical => Thermal::Critical,
    }
}

/// What the experiments placed on a node take from it.
struct Placed {
    memory_reserved: u64,
    slots_used: u32,
    /// Ids of the modes they asked for, as far as `modes` resolves names.
    modes_in_use: BTreeSet<u32>,
}

impl Placed {
    fn on<'a>(
        node: &NodeRecord,
        experiments: impl IntoIterator<Item = &'a ExperimentRecord>,
        modes: &[ModeInfo],
    ) -> Self {
        let mut out = Placed {
            memory_reserved: 0,
            // Every placement takes a slot, known record or not.
            slots_used: u32::try_from(node.experiments.len()).unwrap_or(u32::MAX),
            modes_in_use: BTreeSet::new(),
        };
        for e in experiments
            .into_iter()
            .filter(|e| node.experiments.contains(&e.id))
        {
            out.memory_reserved = out
                .memory_reserved
                .saturating_add(e.req.memory_max.unwrap_or(0));
            let Some(wanted) = &e.req.power_mode else {
                continue;
            };
            let id = wanted.id().or_else(|| {
                modes
                    .iter()
                    .find(|m| Some(m.name.as_str()) == wanted.name())
                    .map(|m| m.id)
            });
            out.modes_in_use.extend(id);
        }
        out
    }
}

// Policy.

/// The policy of the config file, in effect until the first SetPolicy:
/// updated by [`CONFIG_ACTOR`], at 0. A policy set at run time is a
/// [`policy_record`].
pub fn policy(p: &Policy) -> v1::Policy {
    let Policy {
        policy: name,
        strict_order,
        temp_margin_c,
        weights: _,
    } = p;
    v1::Policy {
        name: name.as_str().to_owned(),
        weights: Some(weights(&p.weights())),
        strict_order: *strict_order,
        temp_margin_c: *temp_margin_c,
        updated_at_unix_us: 0,
        updated_by: CONFIG_ACTOR.to_owned(),
    }
}

/// A policy set at run time.
pub fn policy_record(r: &PolicyRecord) -> v1::Policy {
    let PolicyRecord {
        version: _,
        policy: p,
        updated_at,
        updated_by,
    } = r;
    v1::Policy {
        updated_at_unix_us: *updated_at,
        updated_by: updated_by.clone(),
        ..policy(p)
    }
}

pub fn weights(w: &Weights) -> v1::ScoreWeights {
    let Weights {
        temperature,
        load,
        memory,
        spread,
        pack,
    } = *w;
    v1::ScoreWeights {
        temperature,
        load,
        memory,
        spread,
        pack,
    }
}

pub fn weights_from(w: &v1::ScoreWeights) -> Weights {
    let v1::ScoreWeights {
        temperature,
        load,
        memory,
        spread,
        pack,
    } = *w;
    Weights {
        temperature,
        load,
        memory,
        spread,
        pack,
    }
}

/// The policy SetPolicy asks for, applied to the one in effect.
///
/// An empty name keeps the policy in effect (proto3 cannot tell absent
/// from empty). Weights replace the named policy's weights as a whole,
/// never term by term: a term left out weighs 0. Absent `strict_order` and
/// `temp_margin_c` keep their values. The result is checked as the store
/// will check it.
pub fn policy_from(req: &v1::SetPolicyRequest, current: &Policy) -> Result<Policy, PolicyError> {
    let v1::SetPolicyRequest {
        name,
        weights,
        strict_order,
        temp_margin_c,
    } = req;
    let mut p = *current;
    if !name.is_empty() {
        p.policy = PolicyName::parse(name)?;
    }
    if let Some(w) = weights {
        p.weights.set(p.policy, weights_from(w));
    }
    if let Some(strict) = strict_order {
        p.strict_order = *strict;
    }
    if let Some(margin) = temp_margin_c {
        p.temp_margin_c = *margin;
    }
    p.check()?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use fleet_proto::spec::PowerMode;

    use super::*;
    use crate::scheduler::{self, Pending, Requirements, DEFAULT_BALANCED_WEIGHTS};
    use crate::store::RECORD_VERSION;

    const GIB: u64 = 1024 * 1024 * 1024;
    const T0: UnixMicros = 1_700_000_000_000_000;

    fn id(s: &str) -> ExperimentId {
        ExperimentId::new(s).unwrap()
    }

    fn name(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (LabelKey::new(*k).unwrap(), LabelValue::new(*v).unwrap()))
            .collect()
    }

    fn wire_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn spec(i: &str) -> ExperimentSpec {
        ExperimentSpec::try_from(&v1::ExperimentSpec {
            id: i.into(),
            command: vec!["python3".into(), "train.py".into()],
            priority: 7,
            resources: Some(v1::Resources {
                memory_max: "2G".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap()
    }

    fn record(i: &str, phase: Phase) -> ExperimentRecord {
        ExperimentRecord {
            version: RECORD_VERSION,
            revision: 3,
            id: id(i),
            req: Requirements {
                priority: 7,
                memory_max: Some(2 * GIB),
                ..Requirements::default()
            },
            requeue_on_disruption: true,
            phase,
            reason: String::new(),
            submit_seq: 11,
            queue_seq: 12,
            submitted_at: T0,
            submitted_by: "user/alice".into(),
            updated_at: T0 + 5,
            node: None,
            epoch: 0,
            runs: Vec::new(),
        }
    }

    /// An experiment placed on `n` with `epoch`, asking for `memory` and
    /// maybe a power mode.
    fn placed(i: &str, n: &str, memory: u64, mode: Option<&str>) -> ExperimentRecord {
        let mut r = record(i, Phase::Running);
        r.node = Some(name(n));
        r.epoch = 4;
        r.req.memory_max = Some(memory);
        r.req.power_mode = mode.map(|m| PowerMode::new(m).unwrap());
        r
    }

    fn open_run(n: &str, epoch: u64) -> RunRecord {
        RunRecord::begin(
            name(n),
            epoch,
            T0 + 10,
            &RunStart {
                power_mode: Some(ModeRef {
                    id: 0,
                    name: "MAXN".into(),
                }),
                jetson_clocks: Some(true),
                l4t_release: "36.4.0".into(),
            },
        )
    }

    fn node_rec(n: &str, placed: &[&str]) -> NodeRecord {
        NodeRecord {
            version: RECORD_VERSION,
            revision: 9,
            name: name(n),
            address: format!("{n}.lab:7443"),
            source: NodeSource::Config,
            labels: labels(&[("model", "agx-orin")]),
            cordoned: false,
            cordon_reason: String::new(),
            drain: None,
            experiments: placed.iter().map(|i| id(i)).collect(),
            added_at: T0,
            updated_at: T0,
        }
    }

    fn mode(id: u32, name: &str) -> v1::PowerMode {
        v1::PowerMode {
            id,
            name: name.into(),
        }
    }

    fn info() -> v1::NodeInfo {
        v1::NodeInfo {
            node: "j1".into(),
            model: "NVIDIA Jetson AGX Orin".into(),
            l4t_release: "36.4.0".into(),
            cpu_cores: 8,
            memory_total_bytes: 30 * GIB,
            power_modes: vec![mode(0, "MAXN"), mode(1, "MODE_15W"), mode(2, "MODE_30W")],
            current_power_mode: Some(mode(1, "MODE_15W")),
            gpu: true,
            nvpmodel: true,
            warn_c: 75.0,
            critical_c: 90.0,
            ..Default::default()
        }
    }

    fn sample() -> v1::TelemetrySample {
        v1::TelemetrySample {
            timestamp_unix_us: T0,
            cpu_percent: 25.0,
            memory_total_bytes: 32 * GIB,
            power_mode: Some(mode(0, "MAXN")),
            jetson_clocks: Some(false),
            thermal_state: v1::ThermalState::Normal as i32,
            hottest_c: Some(45.5),
            hottest_zone: "cpu-thermal".into(),
            accepting: true,
            ..Default::default()
        }
    }

    fn live() -> NodeLive {
        NodeLive {
            link: Link::Fresh,
            last_seen_unix_us: Some(T0 + 100),
            info: Some(info()),
            sample: Some(sample()),
        }
    }

    const VIEW: ViewConfig = ViewConfig { slots_per_node: 4 };

    // Experiments.

    #[test]
    fn an_experiment_carries_every_field_of_its_record() {
        let mut rec = record("train-1", Phase::Running);
        rec.node = Some(name("j1"));
        rec.epoch = 4;
        rec.reason = "started".into();
        let mut first = open_run("j2", 2);
        first.outcome = Some(RunOutcome::Disrupted);
        first.disruption = Some(Disruption::Thermal);
        first.ended_at = Some(T0 + 20);
        first.crashes = 2;
        let mut second = open_run("j1", 4);
        second.crashes = 1;
        rec.runs = vec![first, second];
        let status = v1::ExperimentStatus {
            id: "train-1".into(),
            state: v1::ExperimentState::Running as i32,
            epoch: 4,
            ..Default::default()
        };

        let w = experiment(&rec, Some(&spec("train-1")), Some(&status));
        assert_eq!(w.spec, Some(spec("train-1").to_proto()));
        assert_eq!(w.phase(), v1::ExperimentPhase::Running);
        assert_eq!(w.reason, "started");
        assert_eq!(w.node, "j1");
        assert_eq!(w.epoch, 4);
        assert_eq!(w.runs.len(), 2);
        assert_eq!(w.runs[0].node, "j2");
        assert_eq!(w.runs[1].outcome(), v1::RunOutcome::Unspecified);
        assert_eq!(w.crashes, 3);
        assert_eq!(w.disruptions, 1);
        assert_eq!(w.submitted_at_unix_us, T0);
        assert_eq!(w.submitted_by, "user/alice");
        assert_eq!(w.submit_seq, 11);
        assert_eq!(w.updated_at_unix_us, T0 + 5);
        assert_eq!(w.revision, 3);
        assert_eq!(w.status, Some(status));
    }

    #[test]
    fn without_its_spec_an_experiment_still_names_its_id_and_priority() {
        let w = experiment(&record("queued-1", Phase::Queued), None, None);
        let spec = w.spec.unwrap();
        assert_eq!(spec.id, "queued-1");
        assert_eq!(spec.priority, 7);
        assert!(spec.command.is_empty());
        assert_eq!(w.node, "", "a queued experiment has no node");
        assert_eq!(w.status, None);
    }

    #[test]
    fn a_run_shows_how_it_ended() {
        let open = run(&open_run("j1", 4));
        assert_eq!(open.outcome(), v1::RunOutcome::Unspecified);
        assert_eq!(open.ended_at_unix_us, None);
        assert_eq!(open.failure(), v1::FailureReason::None);
        assert_eq!(open.disruption(), v1::Disruption::Unspecified);
        assert_eq!(open.power_mode, Some(mode(0, "MAXN")));
        assert_eq!(open.jetson_clocks, Some(true));
        assert_eq!(open.l4t_release, "36.4.0");
        assert_eq!(open.started_at_unix_us, T0 + 10);

        let mut r = open_run("j1", 4);
        r.ended_at = Some(T0 + 99);
        r.outcome = Some(RunOutcome::Failed);
        r.message = "killed for memory".into();
        r.failure = Some(Failure::OomKill);
        r.exit_signal = Some(9);
        r.peak_temp_c = Some(71.5);
        r.throttled = true;
        let ended = run(&r);
        assert_eq!(ended.outcome(), v1::RunOutcome::Failed);
        assert_eq!(ended.ended_at_unix_us, Some(T0 + 99));
        assert_eq!(ended.failure(), v1::FailureReason::OomKill);
        assert_eq!(ended.message, "killed for memory");
        assert_eq!(ended.exit_signal, Some(9));
        assert_eq!(ended.exit_code, None);
        assert_eq!(ended.peak_temp_c, Some(71.5));
        assert!(ended.throttled);
    }

    #[test]
    fn every_phase_crosses_both_ways() {
        let mut seen = BTreeSet::new();
        for p in Phase::ALL {
            let w = phase(p);
            assert!(seen.insert(w as i32), "{p} shares a wire value");
            assert_eq!(phase_from(w as i32, FieldPath::of(&["phases"])), Ok(p));
        }
        // Every wire phase but unspecified is a domain phase.
        let wire: Vec<i32> = (0..64)
            .filter(|v| v1::ExperimentPhase::try_from(*v).is_ok())
            .collect();
        assert_eq!(wire.len(), Phase::ALL.len() + 1);
    }

    #[test]
    fn a_phase_left_unspecified_or_unknown_is_refused_with_its_field() {
        let at = FieldPath::of(&["phases"]).index(1);
        let e = phase_from(0, at.clone()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "phases[1]: the experiment phase is unspecified: use queued, placing, starting, \
             running, stopping, unknown, succeeded, failed, stopped, cancelled"
        );
        let e = phase_from(42, at).unwrap_err();
        assert!(
            e.to_string().starts_with(
                "phases[1]: experiment phase 42 is unknown to this controller: use queued,"
            ),
            "{e}"
        );
        assert!(e.to_string().ends_with("or upgrade the controller"), "{e}");
    }

    #[test]
    fn an_agent_failure_is_kept_even_from_a_newer_agent() {
        assert_eq!(failure_from(v1::FailureReason::None as i32), None);
        for f in [
            Failure::ExitCode,
            Failure::Signal,
            Failure::OomKill,
            Failure::Timeout,
            Failure::StartLimit,
            Failure::CoreDump,
            Failure::Resources,
            Failure::Other,
        ] {
            assert_eq!(failure_from(failure(Some(f)) as i32), Some(f));
        }
        assert_eq!(failure_from(1000), Some(Failure::Other));
    }

    #[test]
    fn a_run_starts_with_the_board_as_its_link_last_saw_it() {
        let start = run_start(Some(&live()));
        assert_eq!(
            start.power_mode,
            Some(ModeRef {
                id: 0,
                name: "MAXN".into()
            }),
            "the sample's mode is newer than the node info's"
        );
        assert_eq!(start.jetson_clocks, Some(false));
        assert_eq!(start.l4t_release, "36.4.0");

        // A mode reported without an id is found by name.
        let mut l = live();
        l.sample = None;
        l.info.as_mut().unwrap().current_power_mode = Some(mode(UNKNOWN_MODE_ID, "MODE_30W"));
        let start = run_start(Some(&l));
        assert_eq!(start.power_mode.unwrap().id, 2);
        assert_eq!(start.jetson_clocks, None);

        assert_eq!(run_start(None), RunStart::default());
    }

    #[test]
    fn a_run_starts_in_the_mode_the_controller_switched_the_board_to() {
        // The last sample still shows the mode before the switch.
        let start = run_start_switched(Some(&live()), Some(&mode(2, "MODE_30W")));
        assert_eq!(
            start.power_mode,
            Some(ModeRef {
                id: 2,
                name: "MODE_30W".into()
            })
        );
        assert_eq!(start.l4t_release, "36.4.0");
        // Without a switch, the sample says.
        assert_eq!(
            run_start_switched(Some(&live()), None),
            run_start(Some(&live()))
        );
    }

    #[test]
    fn list_filters_by_phase_node_and_required_labels() {
        let req = v1::ListRequest {
            phases: vec![phase(Phase::Running) as i32, phase(Phase::Queued) as i32],
            node: "j1".into(),
            labels: wire_map(&[("model", "agx-orin")]),
            limit: 10,
            page_token: String::new(),
        };
        let f = experiment_filter(&req).unwrap();
        let mut hit = placed("a", "j1", GIB, None);
        hit.req.labels = labels(&[("model", "agx-orin"), ("room", "b")]);
        assert!(f.matches(&hit));
        let mut elsewhere = hit.clone();
        elsewhere.node = Some(name("j2"));
        assert!(!f.matches(&elsewhere));
        let mut without_label = hit.clone();
        without_label.req.labels = labels(&[("model", "nano")]);
        assert!(!f.matches(&without_label));
        let mut finished = hit.clone();
        finished.phase = Phase::Succeeded;
        assert!(!f.matches(&finished));

        let all = experiment_filter(&v1::ListRequest::default()).unwrap();
        assert!(all.matches(&finished) && all.matches(&record("q", Phase::Queued)));

        let bad = v1::ListRequest {
            node: "J1".into(),
            ..Default::default()
        };
        assert!(experiment_filter(&bad)
            .unwrap_err()
            .to_string()
            .starts_with("node: node name \"J1\" is invalid: use lowercase letters"));
    }

    // Decisions.

    fn view(n: &str) -> NodeView {
        node_view(&node_rec(n, &[]), Some(&live()), &[], &VIEW)
    }

    fn pending(i: &str, memory: u64) -> Pending {
        Pending {
            id: id(i),
            seq: 1,
            req: Requirements {
                memory_max: Some(memory),
                ..Requirements::default()
            },
        }
    }

    #[test]
    fn a_placement_shows_every_node_with_its_reasons_and_terms() {
        let cool = view("j1");
        let mut hot = view("j2");
        hot.cordoned = true;
        hot.hottest_c = Some(73.5);
        let d = &scheduler::plan(&[pending("a", GIB)], &[hot, cool], &Policy::default())[0];

        let w = decision(d, T0, Some(8), false);
        assert_eq!(w.experiment, "a");
        assert_eq!(w.timestamp_unix_us, T0);
        assert_eq!(w.policy, "balanced");
        assert_eq!(w.outcome(), v1::DecisionOutcome::Placed);
        assert_eq!(w.node, "j1");
        assert_eq!(w.epoch, 8);
        assert!(!w.dry_run);
        assert_eq!(w.summary, d.summary());
        assert!(
            w.summary.starts_with("placed on j1 (score "),
            "{}",
            w.summary
        );

        let [fits, rejected] = &w.nodes[..] else {
            panic!("two verdicts: {:?}", w.nodes);
        };
        assert_eq!(fits.node, "j1");
        assert!(fits.fits && fits.reasons.is_empty());
        let score = d.verdicts[0].score.unwrap();
        assert_eq!(fits.score, Some(score.total));
        let terms: Vec<(&str, f64, f64)> = fits
            .terms
            .iter()
            .map(|t| (t.name.as_str(), t.value, t.weight))
            .collect();
        let w8 = DEFAULT_BALANCED_WEIGHTS;
        assert_eq!(
            terms,
            vec![
                ("temperature", score.terms[0], w8.temperature),
                ("load", score.terms[1], w8.load),
                ("memory", score.terms[2], w8.memory),
                ("spread", score.terms[3], w8.spread),
                ("pack", score.terms[4], w8.pack),
            ]
        );

        assert_eq!(rejected.node, "j2");
        assert!(!rejected.fits);
        assert_eq!(rejected.score, None);
        assert!(rejected.terms.is_empty());
        assert_eq!(
            rejected.reasons,
            vec![
                "cordoned".to_owned(),
                "too hot: 73.5 °C ≥ warn 75.0 − margin 5.0".to_owned()
            ]
        );
    }

    #[test]
    fn an_unplaced_decision_has_no_node_and_says_why() {
        let d = &scheduler::plan(
            &[pending("big", 64 * GIB)],
            &[view("j1")],
            &Policy::default(),
        )[0];
        let w = decision(d, T0, None, true);
        assert_eq!(w.outcome(), v1::DecisionOutcome::Unschedulable);
        assert_eq!(w.node, "");
        assert_eq!(w.epoch, 0);
        assert!(w.dry_run);
        assert_eq!(w.summary, "no node fits: 1 short of memory");
        assert_eq!(
            w.nodes[0].reasons,
            vec!["not enough memory: needs 64.0 GiB, 32.0 GiB of 32.0 GiB unreserved".to_owned()]
        );

        let strict = Policy {
            strict_order: true,
            ..Policy::default()
        };
        let mut second = pending("small", GIB);
        second.seq = 2;
        let ds = scheduler::plan(&[pending("big", 64 * GIB), second], &[view("j1")], &strict);
        let w = decision(&ds[1], T0, None, false);
        assert_eq!(w.outcome(), v1::DecisionOutcome::Blocked);
        assert_eq!(w.node, "");
        assert!(w.summary.contains("behind big"), "{}", w.summary);
    }

    #[test]
    fn a_decision_that_lists_some_nodes_says_so_and_counts_the_rest() {
        let mut nodes: Vec<NodeView> = (0..8).map(|i| view(&format!("j{i}"))).collect();
        let mut hot = view("k-hot");
        hot.hottest_c = Some(72.0);
        nodes.push(hot);
        let p = Policy::default();
        let compact =
            scheduler::plan_with(&[pending("a", GIB)], &nodes, &p, scheduler::Detail::Compact);
        let w = decision(&compact[0], T0, Some(3), false);
        assert_eq!(w.nodes.len(), 6);
        assert!(
            w.summary.starts_with("placed on j0 (score ")
                && w.summary.ends_with(
                    "; 6 of 9 nodes listed (the 5 best that fit, up to 3 per reason for \
                     refusal); of all nodes: 8 fit, 1 too hot"
                ),
            "{}",
            w.summary
        );
        // Every node listed: the summary alone.
        let full = scheduler::plan(&[pending("a", GIB)], &nodes, &p);
        let w = decision(&full[0], T0, Some(3), false);
        assert_eq!(w.nodes.len(), 9);
        assert_eq!(w.summary, full[0].summary());
    }

    #[test]
    fn an_explanation_keeps_the_stored_decision_apart_from_the_one_now() {
        let d = scheduler::plan(&[pending("a", GIB)], &[view("j1")], &Policy::default()).remove(0);
        let stored = DecisionRecord {
            version: RECORD_VERSION,
            at: T0,
            decision: d.clone(),
            epoch: Some(5),
        };
        let e = experiment(&record("a", Phase::Queued), None, None);
        let x = explanation(e.clone(), Some(&stored), Some(&d), T0 + 1);
        assert_eq!(x.experiment, Some(e.clone()));
        let last = x.last.unwrap();
        assert_eq!(
            (last.timestamp_unix_us, last.epoch, last.dry_run),
            (T0, 5, false)
        );
        let now = x.now.unwrap();
        assert_eq!(
            (now.timestamp_unix_us, now.epoch, now.dry_run),
            (T0 + 1, 0, true)
        );

        let x = explanation(e, None, None, T0);
        assert_eq!((x.last, x.now), (None, None));
    }

    // Events.

    fn event_rec(kind: EventKind) -> EventRecord {
        EventRecord {
            version: RECORD_VERSION,
            seq: 17,
            at: T0,
            kind,
            experiment: None,
            node: None,
            epoch: None,
            from: None,
            to: None,
            message: "something".into(),
            actor: "controller".into(),
        }
    }

    #[test]
    fn an_event_carries_every_field() {
        let mut e = event_rec(EventKind::PhaseChanged);
        e.experiment = Some(id("a"));
        e.node = Some(name("j1"));
        e.epoch = Some(4);
        e.from = Some(Phase::Starting);
        e.to = Some(Phase::Running);
        e.actor = "agent/j1".into();
        let w = event(&e);
        assert_eq!(w.seq, 17);
        assert_eq!(w.timestamp_unix_us, T0);
        assert_eq!(w.kind(), v1::EventKind::PhaseChanged);
        assert_eq!((w.experiment.as_str(), w.node.as_str()), ("a", "j1"));
        assert_eq!(w.epoch, 4);
        assert_eq!(w.from(), v1::ExperimentPhase::Starting);
        assert_eq!(w.to(), v1::ExperimentPhase::Running);
        assert_eq!(w.message, "something");
        assert_eq!(w.actor, "agent/j1");

        let w = event(&event_rec(EventKind::PolicyChanged));
        assert_eq!(
            (w.experiment.as_str(), w.node.as_str(), w.epoch),
            ("", "", 0)
        );
        assert_eq!(w.from(), v1::ExperimentPhase::Unspecified);
        assert_eq!(w.to(), v1::ExperimentPhase::Unspecified);
    }

    #[test]
    fn every_event_kind_crosses_both_ways() {
        let mut seen = BTreeSet::new();
        for k in EVENT_KINDS {
            let w = event_kind(k);
            assert!(seen.insert(w as i32), "{k:?} shares a wire value");
            assert_eq!(event_kind_from(w as i32, FieldPath::of(&["kinds"])), Ok(k));
        }
        // The list holds every kind the wire has, but unspecified.
        let wire = (0..64)
            .filter(|v| v1::EventKind::try_from(*v).is_ok())
            .count();
        assert_eq!(wire, EVENT_KINDS.len() + 1);
    }

    #[test]
    fn an_event_filter_passes_events_matching_every_nonempty_list() {
        let f = event_filter(&v1::EventFilter {
            experiments: vec!["a".into()],
            nodes: vec![],
            kinds: vec![
                v1::EventKind::Placed as i32,
                v1::EventKind::PhaseChanged as i32,
            ],
        })
        .unwrap();
        let mut placed_a = event_rec(EventKind::Placed);
        placed_a.experiment = Some(id("a"));
        placed_a.node = Some(name("j1"));
        assert!(f.matches(&placed_a));
        let mut placed_b = placed_a.clone();
        placed_b.experiment = Some(id("b"));
        assert!(!f.matches(&placed_b));
        let mut crashed_a = placed_a.clone();
        crashed_a.kind = EventKind::Crashed;
        assert!(!f.matches(&crashed_a));
        // An event about no experiment never matches an experiment list.
        assert!(!f.matches(&event_rec(EventKind::Placed)));

        let by_node = event_filter(&v1::EventFilter {
            nodes: vec!["j1".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(by_node.matches(&placed_a));
        assert!(!by_node.matches(&event_rec(EventKind::PolicyChanged)));

        let all = event_filter(&v1::EventFilter::default()).unwrap();
        assert_eq!(all, EventFilter::default());
        assert!(all.matches(&event_rec(EventKind::PolicyChanged)));
        assert!(all.matches(&placed_a));
    }

    #[test]
    fn a_bad_event_filter_names_the_entry() {
        let e = event_filter(&v1::EventFilter {
            experiments: vec!["a".into(), "../x".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "filter.experiments[1]: experiment id \"../x\" is invalid: use lowercase letters, \
             digits, '-' and '_' (at most 63), starting with a letter or digit"
        );
        let e = event_filter(&v1::EventFilter {
            kinds: vec![0],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with(
                "filter.kinds[0]: the event kind is unspecified: use submitted, phase_changed, \
                 placed,"
            ),
            "{e}"
        );
        let e = event_filter(&v1::EventFilter {
            nodes: vec!["ok".into(), "Not Ok".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("filter.nodes[1]: node name"),
            "{e}"
        );
    }

    // Nodes.

    #[test]
    fn a_node_joins_its_record_with_its_link() {
        let mut rec = node_rec("j1", &["a", "b"]);
        rec.cordoned = true;
        rec.cordon_reason = "maintenance".into();
        rec.drain = Some(DrainMode::Requeue);
        let experiments = [
            placed("a", "j1", 2 * GIB, None),
            placed("b", "j1", 3 * GIB, None),
            placed("c", "j2", 5 * GIB, None),
            record("d", Phase::Queued),
        ];
        let l = live();
        let w = node(&rec, Some(&l), &experiments, &VIEW);
        assert_eq!(w.name, "j1");
        assert_eq!(w.address, "j1.lab:7443");
        assert_eq!(w.source(), v1::NodeSource::Config);
        assert_eq!(w.connection(), v1::NodeConnection::Connected);
        assert!(w.cordoned && w.draining);
        assert_eq!(w.cordon_reason, "maintenance");
        assert_eq!(w.drain_mode(), v1::DrainMode::Requeue);
        assert_eq!(w.labels, wire_map(&[("model", "agx-orin")]));
        assert_eq!(w.info, l.info);
        assert_eq!(w.telemetry, l.sample);
        assert_eq!(w.last_seen_unix_us, T0 + 100);
        assert_eq!(w.experiments, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(w.memory_reserved_bytes, 5 * GIB);
        assert_eq!((w.slots_used, w.slots_max), (2, 4));
        assert!(!w.thermally_limited);
        assert_eq!(w.revision, 9);
    }

    #[test]
    fn a_node_never_heard_from_is_pending_with_nothing_live() {
        let w = node(&node_rec("j1", &[]), None, &[], &VIEW);
        assert_eq!(w.connection(), v1::NodeConnection::Pending);
        assert_eq!(w.drain_mode(), v1::DrainMode::Unspecified);
        assert!(!w.draining);
        assert_eq!((w.info, w.telemetry, w.last_seen_unix_us), (None, None, 0));
        assert_eq!((w.memory_reserved_bytes, w.slots_used), (0, 0));
        assert!(!w.thermally_limited);
    }

    #[test]
    fn a_hot_node_is_thermally_limited() {
        let mut l = live();
        let s = l.sample.as_mut().unwrap();
        s.thermal_state = v1::ThermalState::Warn as i32;
        s.accepting = false;
        let w = node(&node_rec("j1", &[]), Some(&l), &[], &VIEW);
        assert!(w.thermally_limited);
    }

    #[test]
    fn the_connection_follows_the_link_and_when_the_node_was_last_heard() {
        let with = |link, last_seen_unix_us| NodeLive {
            link,
            last_seen_unix_us,
            info: None,
            sample: None,
        };
        let cases = [
            (with(Link::Fresh, Some(T0)), v1::NodeConnection::Connected),
            (with(Link::Stale, Some(T0)), v1::NodeConnection::Unreachable),
            (with(Link::Stale, None), v1::NodeConnection::Pending),
            (NodeLive::unheard(), v1::NodeConnection::Pending),
            (with(Link::Down, Some(T0)), v1::NodeConnection::Lost),
            (with(Link::Down, None), v1::NodeConnection::Lost),
        ];
        for (live, want) in cases {
            assert_eq!(connection(Some(&live)), want, "{live:?}");
        }
        assert_eq!(connection(None), v1::NodeConnection::Pending);
    }

    #[test]
    fn drain_mode_unspecified_means_wait() {
        assert_eq!(drain_mode(0), Ok(DrainMode::Wait));
        assert_eq!(drain_mode(v1::DrainMode::Wait as i32), Ok(DrainMode::Wait));
        assert_eq!(
            drain_mode(v1::DrainMode::Requeue as i32),
            Ok(DrainMode::Requeue)
        );
        assert_eq!(
            drain_mode(7).unwrap_err().to_string(),
            "mode: drain mode 7 is unknown to this controller: use WAIT or REQUEUE, or upgrade \
             the controller"
        );
        for d in [DrainMode::Wait, DrainMode::Requeue] {
            assert_eq!(drain_mode(drain_mode_to_wire(Some(d)) as i32), Ok(d));
        }
    }

    #[test]
    fn labels_cross_both_ways_and_bad_ones_name_their_key() {
        let ok = wire_map(&[("model", "agx-orin"), ("lab/room", "b2"), ("empty", "")]);
        let l = labels_from(&ok).unwrap();
        assert_eq!(
            l,
            labels(&[("model", "agx-orin"), ("lab/room", "b2"), ("empty", "")])
        );
        assert_eq!(labels_to_wire(&l), ok);

        let e = labels_from(&wire_map(&[("Room", "b"), ("zz", "bad value")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "labels.Room: label key \"Room\" is invalid: use lowercase letters, digits, '.', \
             '_', '-' and '/' (at most 63), starting with a letter or digit",
            "the first bad key in sorted order"
        );
        let e = labels_from(&wire_map(&[("room", "b 2")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "labels.room: label value \"b 2\" is invalid: use letters, digits, '.', '_' and '-' \
             (at most 63), or nothing"
        );

        assert_eq!(
            label_keys_from(&["model".into()]).unwrap(),
            vec![LabelKey::new("model").unwrap()]
        );
        let e = label_keys_from(&["model".into(), "".into()]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("remove[1]: label key \"\" is invalid"),
            "{e}"
        );
    }

    #[test]
    fn list_nodes_filters_by_name_and_labels() {
        let f = node_filter(&v1::ListNodesRequest {
            names: vec!["j1".into(), "j2".into()],
            labels: wire_map(&[("model", "agx-orin")]),
        })
        .unwrap();
        assert!(f.matches(&node_rec("j1", &[])));
        assert!(!f.matches(&node_rec("j3", &[])));
        let mut other = node_rec("j2", &[]);
        other.labels = labels(&[("model", "nano")]);
        assert!(!f.matches(&other));
        assert!(node_filter(&v1::ListNodesRequest::default())
            .unwrap()
            .matches(&other));
        let e = node_filter(&v1::ListNodesRequest {
            names: vec!["-x".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("names[0]: node name \"-x\""),
            "{e}"
        );
    }

    #[test]
    fn the_scheduler_sees_the_record_the_telemetry_and_the_placements() {
        let mut rec = node_rec("j1", &["a", "b"]);
        rec.cordoned = true;
        rec.drain = Some(DrainMode::Wait);
        let experiments = [
            placed("a", "j1", 2 * GIB, Some("MODE_15W")),
            placed("b", "j1", GIB, Some("0")),
            placed("c", "j2", 8 * GIB, Some("2")),
        ];
        let v = node_view(&rec, Some(&live()), &experiments, &VIEW);
        assert_eq!(
            v,
            NodeView {
                name: name("j1"),
                link: Link::Fresh,
                cordoned: true,
                draining: true,
                thermal: Thermal::Normal,
                accepting: true,
                hottest_c: Some(45.5),
                warn_c: 75.0,
                memory_total: 32 * GIB,
                memory_reserved: 3 * GIB,
                slots_used: 2,
                slots_max: 4,
                cpu_cores: 8,
                cpu_percent: 25.0,
                labels: labels(&[("model", "agx-orin")]),
                power_modes: vec![
                    ModeInfo {
                        id: 0,
                        name: "MAXN".into(),
                        needs_reboot: false
                    },
                    ModeInfo {
                        id: 1,
                        name: "MODE_15W".into(),
                        needs_reboot: false
                    },
                    ModeInfo {
                        id: 2,
                        name: "MODE_30W".into(),
                        needs_reboot: false
                    },
                ],
                power_mode: Some(0),
                modes_in_use: [0, 1].into_iter().collect(),
                gpu: true,
            }
        );
    }

    #[test]
    fn a_node_unknown_to_its_link_is_refused_for_every_unknown() {
        let v = node_view(&node_rec("j1", &[]), None, &[], &VIEW);
        assert_eq!(v.link, Link::Down);
        assert_eq!(v.thermal, Thermal::Unknown);
        assert!(!v.accepting && !v.gpu);
        assert_eq!(v.hottest_c, None);
        assert_eq!((v.memory_total, v.cpu_cores, v.warn_c), (0, 0, 0.0));
        assert_eq!(v.cpu_percent, 100.0);
        assert!(v.power_modes.is_empty());
        assert_eq!(v.power_mode, None);

        let d = &scheduler::plan(&[pending("a", GIB)], &[v], &Policy::default())[0];
        let reasons = &decision(d, T0, None, true).nodes[0].reasons;
        assert!(reasons.contains(&"not connected".to_owned()), "{reasons:?}");
        assert!(
            reasons.contains(&"no thermal zone reads a temperature".to_owned()),
            "{reasons:?}"
        );
    }

    #[test]
    fn node_view_reads_around_missing_or_partial_telemetry() {
        // No sample memory: the node info's; no nvpmodel: no modes at all.
        let mut l = live();
        l.sample.as_mut().unwrap().memory_total_bytes = 0;
        l.sample.as_mut().unwrap().thermal_state = 99;
        let i = l.info.as_mut().unwrap();
        i.nvpmodel = false;
        let v = node_view(&node_rec("j1", &[]), Some(&l), &[], &VIEW);
        assert_eq!(v.memory_total, 30 * GIB);
        assert!(v.power_modes.is_empty());
        assert_eq!(
            v.thermal,
            Thermal::Unknown,
            "a state this controller does not know"
        );

        // A current mode without an id is found by name.
        let mut l = live();
        l.sample.as_mut().unwrap().power_mode = Some(mode(UNKNOWN_MODE_ID, "MODE_30W"));
        let v = node_view(&node_rec("j1", &[]), Some(&l), &[], &VIEW);
        assert_eq!(v.power_mode, Some(2));
        l.sample.as_mut().unwrap().power_mode = Some(mode(UNKNOWN_MODE_ID, "CUSTOM"));
        let v = node_view(&node_rec("j1", &[]), Some(&l), &[], &VIEW);
        assert_eq!(v.power_mode, None);

        // Without a sample: the node info's current mode.
        l.sample = None;
        let v = node_view(&node_rec("j1", &[]), Some(&l), &[], &VIEW);
        assert_eq!(v.power_mode, Some(1));
    }

    #[test]
    fn a_mode_in_use_on_the_node_keeps_the_scheduler_from_switching_it() {
        // "a" runs in MAXN (asked by name); "b" wants MODE_15W.
        let rec = node_rec("j1", &["a"]);
        let experiments = [placed("a", "j1", GIB, Some("MAXN"))];
        let v = node_view(&rec, Some(&live()), &experiments, &VIEW);
        let mut b = pending("b", GIB);
        b.req.power_mode = Some(PowerMode::new("MODE_15W").unwrap());
        let d = &scheduler::plan(&[b], &[v], &Policy::default())[0];
        assert_eq!(
            decision(d, T0, None, true).nodes[0].reasons,
            vec![
                "switching to power mode MODE_15W would disturb experiments running in MAXN"
                    .to_owned()
            ]
        );
    }

    // Policy.

    #[test]
    fn the_policy_shows_the_weights_in_effect() {
        let p = Policy {
            policy: PolicyName::Coolest,
            strict_order: true,
            temp_margin_c: 7.5,
            ..Policy::default()
        };
        let w = policy(&p);
        assert_eq!(w.name, "coolest");
        assert_eq!(w.weights, Some(weights(&p.weights.coolest)));
        assert_eq!(w.weights.unwrap().temperature, 1.0);
        assert!(w.strict_order);
        assert_eq!(w.temp_margin_c, 7.5);
        assert_eq!(
            (w.updated_at_unix_us, w.updated_by.as_str()),
            (0, CONFIG_ACTOR)
        );

        let r = PolicyRecord {
            version: RECORD_VERSION,
            policy: p,
            updated_at: T0 + 1,
            updated_by: "user/admin/bob".into(),
        };
        assert_eq!(
            policy_record(&r),
            v1::Policy {
                updated_at_unix_us: T0 + 1,
                updated_by: "user/admin/bob".into(),
                ..w
            }
        );
    }

    #[test]
    fn set_policy_changes_only_what_it_names() {
        let current = Policy::default();
        // Nothing named: nothing changes.
        assert_eq!(
            policy_from(&v1::SetPolicyRequest::default(), &current),
            Ok(current)
        );

        let p = policy_from(
            &v1::SetPolicyRequest {
                name: "pack".into(),
                strict_order: Some(true),
                ..Default::default()
            },
            &current,
        )
        .unwrap();
        assert_eq!(p.policy, PolicyName::Pack);
        assert!(p.strict_order);
        assert_eq!(p.temp_margin_c, current.temp_margin_c);
        assert_eq!(p.weights, current.weights);

        // Weights replace the named policy's as a whole; an empty name
        // means the policy in effect.
        let p = policy_from(
            &v1::SetPolicyRequest {
                name: String::new(),
                weights: Some(v1::ScoreWeights {
                    temperature: 2.0,
                    load: 1.0,
                    ..Default::default()
                }),
                temp_margin_c: Some(10.0),
                ..Default::default()
            },
            &p,
        )
        .unwrap();
        assert_eq!(p.policy, PolicyName::Pack);
        assert_eq!(
            p.weights.pack,
            Weights {
                temperature: 2.0,
                load: 1.0,
                ..Weights::ZERO
            }
        );
        assert_eq!(p.weights.balanced, DEFAULT_BALANCED_WEIGHTS);
        assert_eq!(p.temp_margin_c, 10.0);
        assert!(p.strict_order, "kept");
    }

    #[test]
    fn set_policy_refuses_what_the_store_would_refuse() {
        let current = Policy::default();
        let set = |req: v1::SetPolicyRequest| policy_from(&req, &current).unwrap_err();
        assert_eq!(
            set(v1::SetPolicyRequest {
                name: "fastest".into(),
                ..Default::default()
            }),
            PolicyError::UnknownName("fastest".into())
        );
        assert_eq!(
            set(v1::SetPolicyRequest {
                weights: Some(v1::ScoreWeights::default()),
                ..Default::default()
            }),
            PolicyError::NoWeight {
                policy: PolicyName::Balanced
            }
        );
        assert!(matches!(
            set(v1::SetPolicyRequest {
                name: "spread".into(),
                weights: Some(v1::ScoreWeights {
                    spread: f64::NAN,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            PolicyError::BadWeight {
                policy: PolicyName::Spread,
                term: "spread",
                ..
            }
        ));
        assert_eq!(
            set(v1::SetPolicyRequest {
                temp_margin_c: Some(-1.0),
                ..Default::default()
            }),
            PolicyError::BadMargin(-1.0)
        );
    }

    #[test]
    fn weights_cross_both_ways() {
        let w = Weights {
            temperature: 0.1,
            load: 0.2,
            memory: 0.3,
            spread: 0.4,
            pack: 0.5,
        };
        assert_eq!(weights_from(&weights(&w)), w);
    }
}
