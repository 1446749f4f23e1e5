//! What the controller answers, for people: the experiment queue (`ps`,
//! `status` with its runs), scheduling decisions (`explain`, `submit
//! --dry-run`), the event log, the nodes table and the policy.
//!
//! Every function here renders a view of [`crate::views`], the same data
//! `--output json` prints, so the two never disagree.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_proto::v1;

use crate::output::{self, key_values, Cell, Color, Column, Table, NONE};
use crate::render::board::{self, thermal_color};
use crate::render::spec::spec_pairs;
use crate::time::{age, human_duration, local};
use crate::views::{
    DecisionView, DrainView, FleetEventView, FleetExperimentView, FleetNodeView, PolicyView,
    RunView, VerdictView,
};

/// The colour of a phase word.
pub fn phase_color(phase: &str) -> Option<Color> {
    match phase {
        "running" => Some(Color::Green),
        "succeeded" => Some(Color::Cyan),
        "failed" => Some(Color::Red),
        "queued" | "placing" | "starting" | "stopping" => Some(Color::Yellow),
        "unknown" => Some(Color::Magenta),
        _ => Some(Color::Dim),
    }
}

/// The colour of a run's outcome word.
fn outcome_color(outcome: &str) -> Option<Color> {
    match outcome {
        "running" => Some(Color::Green),
        "succeeded" => Some(Color::Cyan),
        "failed" | "start-failed" => Some(Color::Red),
        "disrupted" => Some(Color::Magenta),
        _ => Some(Color::Dim),
    }
}

/// The colour of a node's state word.
pub fn node_state_color(state: &str) -> Option<Color> {
    match state {
        "ready" => Some(Color::Green),
        "cordoned" | "draining" => Some(Color::Yellow),
        "unreachable" | "lost" => Some(Color::Red),
        _ => Some(Color::Dim),
    }
}

/// `k=v,k2=v2`, or `-` for none.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return NONE.to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// How long ago `t` was, as a short duration (`3h 12m`); `-` when unset.
fn since(t: i64, now: i64) -> String {
    if t == 0 {
        return NONE.to_owned();
    }
    human_duration(Duration::from_micros(now.saturating_sub(t).unsigned_abs()))
}

/// A time for a table: local wall-clock, `-` when unset.
fn when(t: i64) -> String {
    if t == 0 {
        NONE.to_owned()
    } else {
        local(t)
    }
}

fn or_none(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| NONE.to_owned())
}

/// The `ps` table of the controller's experiments.
pub fn experiments_table(experiments: &[FleetExperimentView], now: i64) -> Table {
    let mut table = Table::new(vec![
        Column::left("ID").fixed(),
        Column::left("PHASE").fixed(),
        Column::left("NODE").fixed(),
        Column::right("PRI"),
        Column::right("AGE"),
        Column::right("RUNS"),
        Column::right("CRASHES"),
        Column::right("DISRUPTIONS"),
        Column::left("REASON").min(12),
    ]);
    for e in experiments {
        table.row(vec![
            Cell::new(e.id.clone()),
            Cell::colored(e.phase, phase_color(e.phase)),
            Cell::new(or_none(&e.node)),
            Cell::new(e.priority.to_string()),
            Cell::new(since(e.submitted_at_unix_us, now)),
            Cell::new(e.runs.len().to_string()),
            Cell::new(e.crashes.to_string()),
            Cell::new(e.disruptions.to_string()),
            Cell::new(e.reason.clone().unwrap_or_default()),
        ]);
    }
    table
}

/// `status ID` for people: the experiment as the controller holds it, its
/// spec, then the board's last report of the current run, indented.
/// The runs follow as [`runs_table`].
pub fn status_lines(
    e: &FleetExperimentView,
    board: Option<&v1::ExperimentStatus>,
    now: i64,
    color: bool,
) -> Vec<String> {
    let mut phase = output::paint(e.phase, phase_color(e.phase), color);
    if let Some(node) = &e.node {
        phase.push_str(&format!(" on {node} (epoch {})", e.epoch));
    }
    let mut pairs: Vec<(&str, String)> = vec![("id", e.id.clone()), ("phase", phase)];
    if let Some(reason) = &e.reason {
        pairs.push(("reason", reason.clone()));
    }
    let mut submitted = format!(
        "{} ({})",
        when(e.submitted_at_unix_us),
        age(e.submitted_at_unix_us, now)
    );
    if let Some(by) = &e.submitted_by {
        submitted.push_str(&format!(" by {by}"));
    }
    pairs.push(("submitted", submitted));
    if e.updated_at_unix_us != 0 {
        pairs.push((
            "updated",
            format!(
                "{} ({}), revision {}",
                local(e.updated_at_unix_us),
                age(e.updated_at_unix_us, now),
                e.revision
            ),
        ));
    }
    pairs.push((
        "runs",
        format!(
            "{}; {} and {} in all",
            board::count(e.runs.len() as u64, "run", "runs"),
            board::count(e.crashes, "crash", "crashes"),
            board::count(e.disruptions, "disruption", "disruptions"),
        ),
    ));
    if let Some(spec) = &e.spec {
        pairs.extend(spec_pairs(spec));
    }
    let mut lines = key_values(&pairs);
    if let Some(status) = board {
        lines.push(String::new());
        lines.push("last report of the board:".to_owned());
        lines.extend(
            board::status_lines(status, now, color)
                .into_iter()
                .map(|l| format!("  {l}")),
        );
    }
    lines
}

/// Every run of an experiment, with the board as it was at start.
pub fn runs_table(runs: &[RunView], now: i64) -> Table {
    let mut table = Table::new(vec![
        Column::right("RUN"),
        Column::left("NODE").fixed(),
        Column::right("EPOCH"),
        Column::left("STARTED").fixed(),
        Column::right("LASTED"),
        Column::left("OUTCOME").fixed(),
        Column::left("POWER").fixed(),
        Column::left("CLOCKS").fixed(),
        Column::left("L4T").fixed(),
        Column::right("PEAK"),
        Column::left("THROTTLED").fixed(),
        Column::right("CRASHES"),
        Column::left("MESSAGE").min(12),
    ]);
    for (i, r) in runs.iter().enumerate() {
        let end = r.ended_at_unix_us.unwrap_or(now);
        let lasted = if r.started_at_unix_us == 0 {
            NONE.to_owned()
        } else {
            human_duration(Duration::from_micros(
                end.saturating_sub(r.started_at_unix_us).unsigned_abs(),
            ))
        };
        let mut message = r.message.clone().unwrap_or_default();
        if message.is_empty() {
            message = [r.failure, r.disruption]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(", ");
        }
        table.row(vec![
            Cell::new((i + 1).to_string()),
            Cell::new(r.node.clone()),
            Cell::new(r.epoch.to_string()),
            Cell::new(when(r.started_at_unix_us)),
            Cell::new(lasted),
            Cell::colored(r.outcome, outcome_color(r.outcome)),
            Cell::new(
                r.power_mode
                    .as_ref()
                    .map_or(NONE.to_owned(), |m| m.name.clone()),
            ),
            Cell::new(match r.jetson_clocks {
                Some(true) => "on",
                Some(false) => "off",
                None => NONE,
            }),
            Cell::new(or_none(&r.l4t_release)),
            Cell::new(
                r.peak_temp_c
                    .map_or(NONE.to_owned(), |c| format!("{c:.1} °C")),
            ),
            Cell::colored(
                if r.throttled { "yes" } else { "no" },
                r.throttled.then_some(Color::Yellow),
            ),
            Cell::new(r.crashes.to_string()),
            Cell::new(message),
        ]);
    }
    table
}

/// The line above a decision's table: `last decision (2025-06-01
/// 14:03:22, policy balanced): placed: placed on jetson-03 (score 0.82)`.
pub fn decision_heading(title: &str, d: &DecisionView, color: bool) -> String {
    let mut context = Vec::new();
    if d.time_unix_us != 0 {
        context.push(local(d.time_unix_us));
    }
    if !d.policy.is_empty() {
        context.push(format!("policy {}", d.policy));
    }
    let context = if context.is_empty() {
        String::new()
    } else {
        format!(" ({})", context.join(", "))
    };
    let outcome_color = match d.outcome {
        "placed" => Some(Color::Green),
        "unschedulable" | "blocked" => Some(Color::Yellow),
        _ => None,
    };
    let outcome = output::paint(d.outcome, outcome_color, color);
    if d.summary.is_empty() {
        format!("{title}{context}: {outcome}")
    } else {
        format!("{title}{context}: {outcome}: {}", d.summary)
    }
}

/// Every node as the scheduler saw it: the chosen one, the ones that fit
/// with their score terms, the ones that do not with every reason.
pub fn verdict_table(d: &DecisionView) -> Table {
    let mut table = Table::new(vec![
        Column::left("NODE").fixed(),
        Column::left("VERDICT").fixed(),
        Column::right("SCORE"),
        Column::left("DETAIL").min(16),
    ]);
    for n in &d.nodes {
        let chosen = d.outcome == "placed" && d.node.as_deref() == Some(n.node.as_str());
        let verdict = match (chosen, n.fits, d.dry_run) {
            (true, _, true) => Cell::colored("would place", Some(Color::Green)),
            (true, _, false) => Cell::colored("placed", Some(Color::Green)),
            (false, true, _) => Cell::colored("fits", Some(Color::Cyan)),
            (false, false, _) => Cell::colored("excluded", Some(Color::Red)),
        };
        table.row(vec![
            Cell::new(n.node.clone()),
            verdict,
            Cell::new(n.score.map_or(NONE.to_owned(), |s| format!("{s:.2}"))),
            Cell::new(verdict_detail(n)),
        ]);
    }
    table
}

/// Why a node does not fit, or what its score is made of.
fn verdict_detail(n: &VerdictView) -> String {
    if !n.reasons.is_empty() {
        return n.reasons.join("; ");
    }
    n.terms
        .iter()
        .map(|t| format!("{} {:.2}×{:.2}", t.name, t.value, t.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What an event says beyond its kind: the phase change, then its message.
pub fn event_detail(e: &FleetEventView) -> String {
    let change = match (e.from, e.to) {
        (Some(from), Some(to)) => format!("{from} → {to}"),
        (None, Some(to)) => format!("→ {to}"),
        _ => String::new(),
    };
    match (&e.message, change.is_empty()) {
        (Some(m), true) => m.clone(),
        (Some(m), false) => format!("{change}: {m}"),
        (None, _) => change,
    }
}

/// The colour of an event: a phase change by its new phase, trouble red.
fn event_color(e: &FleetEventView) -> Option<Color> {
    match e.kind {
        "phase-changed" => e.to.and_then(phase_color),
        "crashed" | "node-lost" | "node-unreachable" => Some(Color::Red),
        "disrupted" | "node-thermal-changed" => Some(Color::Magenta),
        "submitted" | "placed" | "node-connected" => Some(Color::Cyan),
        _ => None,
    }
}

/// `events` without `-f`: the replayed log as a table.
pub fn events_table(events: &[FleetEventView]) -> Table {
    let mut table = Table::new(vec![
        Column::right("SEQ"),
        Column::left("TIME").fixed(),
        Column::left("KIND").fixed(),
        Column::left("EXPERIMENT").fixed(),
        Column::left("NODE").fixed(),
        Column::left("BY").min(8),
        Column::left("DETAIL").min(16),
    ]);
    for e in events {
        table.row(vec![
            Cell::new(e.seq.to_string()),
            Cell::new(when(e.time_unix_us)),
            Cell::colored(e.kind, event_color(e)),
            Cell::new(or_none(&e.experiment)),
            Cell::new(or_none(&e.node)),
            Cell::new(or_none(&e.actor)),
            Cell::new(event_detail(e)),
        ]);
    }
    table
}

/// One event as it arrives (`events -f`, `watch`): `#42  2025-06-01
/// 14:03:22  phase-changed  amnesiac-001  jetson-03  queued → placing  (by
/// scheduler)`.
pub fn event_line(e: &FleetEventView, color: bool) -> String {
    let mut parts = vec![
        format!("#{}", e.seq),
        when(e.time_unix_us),
        output::paint(e.kind, event_color(e), color),
    ];
    parts.extend(e.experiment.clone());
    parts.extend(e.node.clone());
    let detail = event_detail(e);
    if !detail.is_empty() {
        parts.push(detail);
    }
    if let Some(actor) = &e.actor {
        parts.push(format!("(by {actor})"));
    }
    parts.join("  ")
}

/// Memory in use of a total, one unit when both share it: `12.3/64.0 GiB`.
pub fn memory_of(used: u64, total: u64) -> String {
    let (u, t) = (output::bytes(used), output::bytes(total));
    match (u.rsplit_once(' '), t.rsplit_once(' ')) {
        (Some((un, uu)), Some((tn, tu))) if uu == tu => format!("{un}/{tn} {tu}"),
        _ => format!("{u}/{t}"),
    }
}

/// The thermal state and hottest temperature of a node's last sample,
/// coloured by the thermal state: `warn 78.5 °C`.
fn thermal_cell(n: &FleetNodeView) -> Cell {
    let (state, hottest) = n.thermal();
    let text = match hottest {
        Some(c) => format!("{state} {c:.1} °C"),
        None if n.telemetry.is_some() => state.to_owned(),
        None => NONE.to_owned(),
    };
    Cell::colored(text, thermal_color(state))
}

/// The `nodes` table.
pub fn nodes_table(nodes: &[FleetNodeView]) -> Table {
    let mut table = Table::new(vec![
        Column::left("NAME").fixed(),
        Column::left("STATE").fixed(),
        Column::left("THERMAL").fixed(),
        Column::right("LOAD"),
        Column::right("MEMORY"),
        Column::left("POWER").fixed(),
        Column::right("EXPERIMENTS"),
        Column::left("LABELS").min(10),
    ]);
    for n in nodes {
        let t = n.telemetry.as_ref();
        let memory = match t {
            Some(t) if t.memory_total_bytes > 0 => memory_of(
                t.memory_total_bytes
                    .saturating_sub(t.memory_available_bytes),
                t.memory_total_bytes,
            ),
            _ => NONE.to_owned(),
        };
        let power = t
            .and_then(|t| t.power_mode.as_ref())
            .or_else(|| n.info.as_ref().and_then(|i| i.current_power_mode.as_ref()))
            .map_or(NONE.to_owned(), |m| m.name.clone());
        let experiments = if n.slots_max > 0 {
            format!("{}/{}", n.experiments.len(), n.slots_max)
        } else {
            n.experiments.len().to_string()
        };
        table.row(vec![
            Cell::new(n.name.clone()),
            Cell::colored(n.state, node_state_color(n.state)),
            thermal_cell(n),
            Cell::new(t.map_or(NONE.to_owned(), |t| format!("{:.2}", t.load[0]))),
            Cell::new(memory),
            Cell::new(power),
            Cell::new(experiments),
            Cell::new(labels_text(&n.labels)),
        ]);
    }
    table
}

/// `node info NODE` with a controller: what the controller knows of the
/// node, then the board as its agent describes itself.
pub fn node_lines(n: &FleetNodeView, now: i64, color: bool) -> Vec<String> {
    let mut state = output::paint(n.state, node_state_color(n.state), color);
    if let Some(reason) = &n.cordon_reason {
        state.push_str(&format!(" ({reason})"));
    }
    if let Some(mode) = n.drain_mode {
        state.push_str(&format!(", draining with {mode}"));
    }
    let mut pairs: Vec<(&str, String)> = vec![
        ("node", n.name.clone()),
        ("address", n.address.clone()),
        ("state", state),
        (
            "connection",
            match n.source {
                Some(source) => format!("{} (from {source})", n.connection),
                None => n.connection.to_owned(),
            },
        ),
        (
            "last seen",
            if n.last_seen_unix_us == 0 {
                "never".to_owned()
            } else {
                format!(
                    "{} ({})",
                    local(n.last_seen_unix_us),
                    age(n.last_seen_unix_us, now)
                )
            },
        ),
        ("labels", labels_text(&n.labels)),
        (
            "experiments",
            if n.experiments.is_empty() {
                "none".to_owned()
            } else {
                n.experiments.join(", ")
            },
        ),
        (
            "slots",
            format!(
                "{} of {} used, {} reserved",
                n.slots_used,
                n.slots_max,
                output::bytes(n.memory_reserved_bytes)
            ),
        ),
    ];
    if n.thermally_limited {
        pairs.push((
            "limited",
            output::paint(
                "its thermal guard refuses new work",
                Some(Color::Yellow),
                color,
            ),
        ));
    }
    match &n.info {
        Some(info) => pairs.extend(
            board::node_pairs(info, n.telemetry.as_ref(), color)
                .into_iter()
                .filter(|(k, _)| *k != "node"),
        ),
        None => pairs.push(("board", "not reached yet".to_owned())),
    }
    key_values(&pairs)
}

/// The zones of a node's last sample, coloured by the board's thresholds.
pub fn node_zone_table(n: &FleetNodeView) -> Option<Table> {
    let t = n.telemetry.as_ref().filter(|t| !t.zones.is_empty())?;
    let (warn, critical) = n
        .info
        .as_ref()
        .map_or((0.0, 0.0), |i| (i.warn_c, i.critical_c));
    Some(board::zone_table(t, warn, critical))
}

/// `policy get` and `policy set` for people.
pub fn policy_lines(p: &PolicyView, now: i64) -> Vec<String> {
    let mut pairs: Vec<(&str, String)> = vec![("policy", p.name.clone())];
    pairs.push((
        "weights",
        match &p.weights {
            Some(w) => w
                .terms()
                .iter()
                .map(|(name, value)| format!("{name} {value:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            None => "the policy's defaults".to_owned(),
        },
    ));
    pairs.push((
        "strict order",
        if p.strict_order {
            "on: a queued experiment that cannot be placed holds every one behind it"
        } else {
            "off: experiments that fit pass one that cannot be placed"
        }
        .to_owned(),
    ));
    pairs.push((
        "temp margin",
        format!(
            "{:.1} °C: a board is too hot from its warn temperature minus this",
            p.temp_margin_c
        ),
    ));
    let mut updated = if p.updated_at_unix_us == 0 {
        "never".to_owned()
    } else {
        format!(
            "{} ({})",
            local(p.updated_at_unix_us),
            age(p.updated_at_unix_us, now)
        )
    };
    if let Some(by) = &p.updated_by {
        updated.push_str(&format!(" by {by}"));
    }
    pairs.push(("updated", updated));
    key_values(&pairs)
}

/// What `node drain` started.
pub fn drain_text(name: &str, d: &DrainView) -> String {
    let list = d.experiments.join(", ");
    match (d.mode, d.experiments.len()) {
        (_, 0) => format!("draining {name}: nothing runs there; nothing new will be placed"),
        ("requeue", n) => format!(
            "draining {name}: stopping {} and queueing {} again: {list}",
            board::count(n as u64, "experiment", "experiments"),
            if n == 1 { "it" } else { "them" }
        ),
        (_, n) => format!(
            "draining {name}: waiting for {} to finish: {list}",
            board::count(n as u64, "experiment", "experiments")
        ),
    }
}
