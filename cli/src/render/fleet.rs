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
        if r.board_restarts > 0 {
            let again = format!(
                "started over {}× after its board shut down",
                r.board_restarts
            );
            message = if message.is_empty() {
                again
            } else {
                format!("{message}; {again}")
            };
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
/// 14:03:22, policy balanced): placed on jetson-03 (score 0.82)`, the
/// summary coloured by the outcome.
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
    let summary = if d.summary.is_empty() {
        d.outcome
    } else {
        d.summary.as_str()
    };
    format!(
        "{title}{context}: {}",
        output::paint(summary, outcome_color, color)
    )
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
        // The controller's own message may already say it.
        (Some(m), false) if m.starts_with(&change) => m.clone(),
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
    let updated = match (p.updated_at_unix_us, p.updated_by.as_deref()) {
        // Never switched: the policy of the controller's config file.
        (0, Some("config") | None) => "never: the policy of the controller's config".to_owned(),
        (0, Some(by)) => format!("by {by}"),
        (t, by) => format!(
            "{} ({}){}",
            local(t),
            age(t, now),
            by.map(|b| format!(" by {b}")).unwrap_or_default()
        ),
    };
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

#[cfg(test)]
mod event_detail_tests {
    use super::*;

    #[test]
    fn a_change_is_said_once() {
        let mut e = FleetEventView {
            seq: 1,
            time: None,
            time_unix_us: 0,
            kind: "phase-changed",
            experiment: Some("a".into()),
            node: None,
            epoch: 1,
            from: Some("placing"),
            to: Some("starting"),
            message: Some("placing → starting".into()),
            actor: None,
        };
        assert_eq!(event_detail(&e), "placing → starting");
        e.message = Some("stop: user/admin/ada".into());
        assert_eq!(event_detail(&e), "placing → starting: stop: user/admin/ada");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, redact, T};
    use crate::views::ExplanationView;

    fn render(table: &Table) -> String {
        redact(&table.render(None, false).join("\n"))
    }

    fn json<V: serde::Serialize>(v: &V) -> String {
        redact(&serde_json::to_string_pretty(v).unwrap())
    }

    fn experiments() -> (FleetExperimentView, FleetExperimentView) {
        (
            FleetExperimentView::from(&testing::experiment()),
            FleetExperimentView::from(&testing::queued()),
        )
    }

    fn nodes() -> Vec<FleetNodeView> {
        let mut cordoned = testing::node("jetson-01", v1::ThermalState::Warn, 78.5);
        cordoned.cordoned = true;
        cordoned.cordon_reason = "fan replacement".into();
        let mut lost = testing::node("jetson-09", v1::ThermalState::Normal, 40.0);
        lost.connection = v1::NodeConnection::Lost as i32;
        lost.telemetry = None;
        lost.info = None;
        lost.experiments.clear();
        lost.labels.clear();
        lost.slots_max = 0;
        [
            cordoned,
            testing::node("jetson-03", v1::ThermalState::Normal, 52.0),
            lost,
        ]
        .iter()
        .map(FleetNodeView::from)
        .collect()
    }

    #[test]
    fn ps_table() {
        let (running, queued) = experiments();
        assert_eq!(
            render(&experiments_table(&[running, queued], T)),
            "\
ID            PHASE    NODE       PRI     AGE  RUNS  CRASHES  DISRUPTIONS  REASON
amnesiac-001  running  jetson-03   50      4h     2        1            1
big-train     queued   -            0  1m 30s     0        0            0  no node fits: 1 too hot, 1 cordoned"
        );
        // Colours: the phase only.
        let (running, _) = experiments();
        let colored = experiments_table(&[running], T).render(None, true);
        assert!(colored[1].contains("\x1b[32mrunning\x1b[0m"), "{colored:?}");
    }

    #[test]
    fn status_with_spec_board_report_and_runs() {
        let (e, _) = experiments();
        let raw = testing::experiment();
        let lines = redact(&status_lines(&e, raw.status.as_ref(), T, false).join("\n"));
        assert_eq!(
            lines,
            "\
id:         amnesiac-001
phase:      running on jetson-03 (epoch 2)
submitted:  <time> (4h ago) by user/ada
updated:    <time> (1h ago), revision 9
runs:       2 runs; 1 crash and 1 disruption in all
command:    python3 run.py
priority:   50
resources:  memory at most 8G
placement:  any board
lifecycle:  restarted on failure up to 3 times, 5s apart; no time limit; \
stop timeout 30s; on disruption requeue; autostart off

last report of the board:
  id:         amnesiac-001
  unit:       brain-experiment@amnesiac-001.service
  state:      running (systemd: active/running)
  pid:        4242
  memory:     812.0 MiB (peak unknown)
  cpu:        unknown
  runs:       0 automatic restarts since the last start; 0 crashes and 0 disruptions on this board in all
  epoch:      2
  autostart:  off"
        );
        assert_eq!(
            render(&runs_table(&e.runs, T)),
            "\
RUN  NODE       EPOCH  STARTED              LASTED  OUTCOME    POWER     CLOCKS  L4T         PEAK  THROTTLED  CRASHES  MESSAGE
  1  jetson-01      1  <time>      1h  disrupted  MAXN      on      R36.4.3  86.0 °C  yes              0  stopped by the thermal guard at 86.0 °C
  2  jetson-03      2  <time>      1h  running    MODE_30W  off     R36.4.3  61.5 °C  no               1"
        );
        let (_, queued) = experiments();
        let lines = status_lines(&queued, None, T, false).join("\n");
        assert!(
            lines.contains("reason:     no node fits: 1 too hot, 1 cordoned"),
            "{lines}"
        );
        assert!(!lines.contains("last report"), "{lines}");
    }

    #[test]
    fn experiment_json_is_complete() {
        let (e, _) = experiments();
        let v = serde_json::to_value(&e).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        // serde_json's maps are sorted.
        assert_eq!(
            keys,
            [
                "crashes",
                "disruptions",
                "epoch",
                "id",
                "node",
                "phase",
                "priority",
                "reason",
                "revision",
                "runs",
                "spec",
                "status",
                "submit_seq",
                "submitted_at",
                "submitted_at_unix_us",
                "submitted_by",
                "updated_at",
                "updated_at_unix_us"
            ]
        );
        assert_eq!(
            redact(&serde_json::to_string(&e.runs[1]).unwrap()),
            "{\"node\":\"jetson-03\",\"epoch\":2,\"started_at\":\"<time>\",\
             \"started_at_unix_us\":1748775802500000,\"ended_at\":null,\
             \"ended_at_unix_us\":null,\"outcome\":\"running\",\"message\":null,\
             \"failure\":null,\"exit_code\":null,\"exit_signal\":null,\"disruption\":null,\
             \"crashes\":1,\"power_mode\":{\"id\":2,\"name\":\"MODE_30W\"},\
             \"jetson_clocks\":false,\"l4t_release\":\"R36.4.3\",\"peak_temp_c\":61.5,\
             \"throttled\":false,\"board_restarts\":0}"
        );
        // The board's report has the shape `--agent status` prints.
        assert_eq!(v["status"]["state"], "running");
        assert_eq!(v["status"].as_object().unwrap().len(), 24);
    }

    #[test]
    fn decisions_show_every_node() {
        let d = DecisionView::from(&testing::decision(false));
        assert_eq!(
            redact(&decision_heading("last decision", &d, false)),
            "last decision (<time>, policy balanced): placed on jetson-03 (score 0.82)"
        );
        assert_eq!(
            render(&verdict_table(&d)),
            "\
NODE       VERDICT   SCORE  DETAIL
jetson-03  placed     0.82  temperature 0.90×0.50, load 0.74×0.50
jetson-02  fits       0.61  temperature 0.50×0.50, load 0.72×0.50
jetson-01  excluded      -  too hot: 73.5 °C ≥ warn 75.0 − margin 5.0; cordoned"
        );
        let dry = DecisionView::from(&testing::decision(true));
        assert!(render(&verdict_table(&dry)).contains("jetson-03  would place   0.82"));
        // Cut to the terminal, the reasons go first; names and verdicts stay.
        let narrow = verdict_table(&d).render(Some(50), false);
        assert!(narrow.iter().all(|l| l.chars().count() <= 50), "{narrow:?}");
        assert!(narrow[3].starts_with("jetson-01  excluded      -  too hot"));
        assert_eq!(
            json(&ExplanationView {
                experiment: None,
                last: None,
                now: Some(DecisionView {
                    nodes: Vec::new(),
                    ..dry
                }),
            }),
            r#"{
  "experiment": null,
  "last": null,
  "now": {
    "experiment": "amnesiac-001",
    "time": "<time>",
    "time_unix_us": 1748779402500000,
    "policy": "balanced",
    "outcome": "placed",
    "node": "jetson-03",
    "epoch": 0,
    "summary": "placed on jetson-03 (score 0.82)",
    "dry_run": true,
    "nodes": []
  }
}"#
        );
        let verdict = serde_json::to_value(&d.nodes[2]).unwrap();
        assert_eq!(
            verdict,
            serde_json::json!({
                "node": "jetson-01",
                "fits": false,
                "reasons": ["too hot: 73.5 °C ≥ warn 75.0 − margin 5.0", "cordoned"],
                "score": null,
                "terms": []
            })
        );
    }

    #[test]
    fn events_as_a_table_as_lines_and_as_json() {
        let events: Vec<FleetEventView> =
            testing::events().iter().map(FleetEventView::from).collect();
        assert_eq!(
            render(&events_table(&events)),
            "\
SEQ  TIME                 KIND           EXPERIMENT    NODE       BY         DETAIL
 41  <time>  submitted      amnesiac-001  -          user/ada   priority 50
 42  <time>  phase-changed  amnesiac-001  jetson-03  scheduler  queued → placing
 43  <time>  node-cordoned  -             jetson-01  user/ada   fan replacement"
        );
        let lines: Vec<String> = events
            .iter()
            .map(|e| redact(&event_line(e, false)))
            .collect();
        assert_eq!(
            lines,
            [
                "#41  <time>  submitted  amnesiac-001  priority 50  (by user/ada)",
                "#42  <time>  phase-changed  amnesiac-001  jetson-03  queued → placing  (by scheduler)",
                "#43  <time>  node-cordoned  jetson-01  fan replacement  (by user/ada)",
            ]
        );
        assert!(event_line(&events[1], true).contains("\x1b[33mphase-changed\x1b[0m"));
        assert_eq!(
            redact(&serde_json::to_string(&events[1]).unwrap()),
            "{\"seq\":42,\"time\":\"<time>\",\"time_unix_us\":1748779403500000,\
             \"kind\":\"phase-changed\",\"experiment\":\"amnesiac-001\",\"node\":\"jetson-03\",\
             \"epoch\":2,\"from\":\"queued\",\"to\":\"placing\",\"message\":null,\
             \"actor\":\"scheduler\"}"
        );
    }

    #[test]
    fn nodes_table_colours_temperatures_by_thermal_state() {
        let nodes = nodes();
        assert_eq!(
            render(&nodes_table(&nodes)),
            "\
NAME       STATE     THERMAL         LOAD         MEMORY  POWER  EXPERIMENTS  LABELS
jetson-01  cordoned  warn 78.5 °C    1.25  24.0/64.0 GiB  MAXN           1/4  model=agx-orin
jetson-03  ready     normal 52.0 °C  1.25  24.0/64.0 GiB  MAXN           1/4  model=agx-orin
jetson-09  lost      -                  -              -  -                0  -"
        );
        let colored = nodes_table(&nodes).render(None, true);
        assert!(
            colored[1].contains("\x1b[33mwarn 78.5 °C\x1b[0m"),
            "{colored:?}"
        );
        assert!(
            colored[2].contains("\x1b[32mnormal 52.0 °C\x1b[0m"),
            "{colored:?}"
        );
        assert!(colored[3].contains("\x1b[31mlost\x1b[0m"), "{colored:?}");
        assert_eq!(
            memory_of(512 * 1024 * 1024, 8 * 1024 * 1024 * 1024),
            "512.0 MiB/8.0 GiB"
        );
    }

    #[test]
    fn one_node_in_full() {
        let nodes = nodes();
        assert_eq!(
            redact(&node_lines(&nodes[0], T, false).join("\n")),
            "\
node:         jetson-01
address:      jetson-01.lab:7443
state:        cordoned (fan replacement)
connection:   connected (from joined)
last seen:    <time> (2s ago)
labels:       model=agx-orin
experiments:  amnesiac-001
slots:        1 of 4 used, 8.0 GiB reserved
model:        NVIDIA Jetson AGX Orin Developer Kit
l4t:          R36.4.3
agent:        0.1.0
cpu cores:    12
memory:       64.0 GiB
gpu:          yes
power mode:   MAXN (id 0)
power modes:  0=MAXN (default)
thresholds:   warn 75 °C, critical 85 °C
thermal:      warn, hottest cpu-thermal at 78.5 °C
accepting:    no (too hot or draining)
load:         1.25 1.00 0.50, cpu 20.0%
memory free:  40.0 GiB of 64.0 GiB"
        );
        assert_eq!(
            render(&node_zone_table(&nodes[0]).unwrap()),
            "ZONE            TEMP\ncpu-thermal  78.5 °C"
        );
        let lost = node_lines(&nodes[2], T, false).join("\n");
        assert!(lost.contains("board:        not reached yet"), "{lost}");
        assert!(node_zone_table(&nodes[2]).is_none());
        let v = serde_json::to_value(&nodes[0]).unwrap();
        assert_eq!(v["state"], "cordoned");
        assert_eq!(v["cordon_reason"], "fan replacement");
        assert_eq!(v["info"]["warn_c"], 75.0);
        assert_eq!(v["telemetry"]["thermal_state"], "warn");
        assert_eq!(v.as_object().unwrap().len(), 20);
        assert_eq!(
            serde_json::to_value(&nodes[2]).unwrap()["info"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn policy_for_people_and_scripts() {
        let p = PolicyView::from(&testing::policy());
        assert_eq!(
            redact(&policy_lines(&p, T).join("\n")),
            "\
policy:        balanced
weights:       temperature 0.40, load 0.30, memory 0.20, spread 0.10, pack 0.00
strict order:  off: experiments that fit pass one that cannot be placed
temp margin:   5.0 °C: a board is too hot from its warn temperature minus this
updated:       <time> (1m ago) by user/ada"
        );
        assert_eq!(
            json(&p),
            r#"{
  "name": "balanced",
  "weights": {
    "temperature": 0.4,
    "load": 0.3,
    "memory": 0.2,
    "spread": 0.1,
    "pack": 0.0
  },
  "strict_order": false,
  "temp_margin_c": 5.0,
  "updated_at": "<time>",
  "updated_at_unix_us": 1748779342500000,
  "updated_by": "user/ada"
}"#
        );
    }

    #[test]
    fn drains_say_what_happens_to_the_experiments() {
        let view = |mode, experiments: &[&str]| DrainView {
            node: None,
            mode,
            experiments: experiments.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            drain_text("jetson-01", &view("wait", &["a", "b"])),
            "draining jetson-01: waiting for 2 experiments to finish: a, b"
        );
        assert_eq!(
            drain_text("jetson-01", &view("requeue", &["a"])),
            "draining jetson-01: stopping 1 experiment and queueing it again: a"
        );
        assert_eq!(
            drain_text("jetson-01", &view("wait", &[])),
            "draining jetson-01: nothing runs there; nothing new will be placed"
        );
        assert_eq!(
            serde_json::to_string(&view("requeue", &["a"])).unwrap(),
            r#"{"node":null,"mode":"requeue","experiments":["a"]}"#
        );
        assert_eq!(labels_text(&BTreeMap::new()), "-");
    }
}
