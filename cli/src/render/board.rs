//! What a board's agent reports, for people: its experiments (`ps`,
//! `status`), journal lines, state changes, the board itself (`node info`),
//! its thermal zones and power mode switches.
//!
//! Shared by both modes: with `--agent` these are the agent's answers; with
//! a controller, the same messages passed on (an experiment's last status,
//! log lines, a node's info and telemetry) print the same way.

use std::time::Duration;

use fleet_proto::v1;

use crate::output::{self, key_values, Cell, Color, Column, Table, NONE};
use crate::time::{age, human_duration, local};
use crate::views::{state_word, ClocksView, NodeInfoView, NodeView, PowerView, TelemetryView};

/// The `ps` table.
pub fn experiment_table(experiments: &[v1::ExperimentStatus], now: i64) -> Table {
    let mut table = Table::new(vec![
        Column::left("ID").fixed(),
        Column::left("STATE").fixed(),
        Column::right("PID"),
        Column::right("CPU"),
        Column::right("MEMORY"),
        Column::right("UP"),
        Column::right("RESTARTS"),
        Column::right("CRASHES"),
        Column::left("AUTOSTART").fixed(),
        Column::left("NOTE").min(12),
    ]);
    for e in experiments {
        let state = e.state();
        let running = matches!(
            state,
            v1::ExperimentState::Running | v1::ExperimentState::Stopping
        );
        table.row(vec![
            Cell::new(e.id.clone()),
            Cell::colored(state_word(state), state_color(state)),
            Cell::new(opt(e.main_pid, |p| p != 0, |p| p.to_string())),
            Cell::new(e.cpu_percent.map_or(NONE.to_owned(), output::percent)),
            Cell::new(
                e.memory_current_bytes
                    .map_or(NONE.to_owned(), output::bytes),
            ),
            Cell::new(match e.active_since_unix_us {
                Some(t) if running && t != 0 => {
                    human_duration(Duration::from_micros(now.saturating_sub(t).unsigned_abs()))
                }
                _ => NONE.to_owned(),
            }),
            Cell::new(e.restarts.to_string()),
            Cell::new(e.crashes_total.to_string()),
            Cell::new(if e.autostart { "on" } else { "off" }),
            Cell::new(experiment_note(e)),
        ]);
    }
    table
}

fn opt<T: Copy>(v: T, present: impl Fn(T) -> bool, show: impl Fn(T) -> String) -> String {
    if present(v) {
        show(v)
    } else {
        NONE.to_owned()
    }
}

/// The colour of a state word.
pub fn state_color(state: v1::ExperimentState) -> Option<Color> {
    match state {
        v1::ExperimentState::Running => Some(Color::Green),
        v1::ExperimentState::Succeeded => Some(Color::Cyan),
        v1::ExperimentState::Failed => Some(Color::Red),
        v1::ExperimentState::Starting
        | v1::ExperimentState::Restarting
        | v1::ExperimentState::Stopping => Some(Color::Yellow),
        v1::ExperimentState::Disrupted => Some(Color::Magenta),
        v1::ExperimentState::Stopped
        | v1::ExperimentState::Unknown
        | v1::ExperimentState::Unspecified => Some(Color::Dim),
    }
}

/// Why an experiment ended, in a few words: the failure message, else the
/// exit code or signal.
pub fn experiment_note(e: &v1::ExperimentStatus) -> String {
    if !e.failure_message.is_empty() {
        return e.failure_message.clone();
    }
    let ended = matches!(
        e.state(),
        v1::ExperimentState::Failed
            | v1::ExperimentState::Succeeded
            | v1::ExperimentState::Stopped
            | v1::ExperimentState::Disrupted
            | v1::ExperimentState::Restarting
    );
    if !ended {
        return String::new();
    }
    match (e.exit_signal, e.exit_code) {
        (Some(sig), _) if sig != 0 => format!("killed by {}", signal_name(sig)),
        (_, Some(code)) => format!("exit code {code}"),
        _ => String::new(),
    }
}

/// `SIGKILL (9)` for 9; `signal 42` for a signal without a common name.
pub fn signal_name(sig: i32) -> String {
    match fleet_proto::unix::signal_name(sig) {
        Some(name) => format!("{name} ({sig})"),
        None => format!("signal {sig}"),
    }
}

/// `status` for people: every field, sizes in binary units, times local.
pub fn status_lines(s: &v1::ExperimentStatus, now: i64, color: bool) -> Vec<String> {
    let state = s.state();
    let mut state_text = output::paint(state_word(state), state_color(state), color);
    if !s.active_state.is_empty() {
        state_text.push_str(&format!(" (systemd: {}/{}", s.active_state, s.sub_state));
        if !s.result.is_empty() && s.result != "success" {
            state_text.push_str(&format!(", result {}", s.result));
        }
        state_text.push(')');
    }
    let mut pairs: Vec<(&str, String)> = vec![
        ("id", s.id.clone()),
        ("unit", s.unit.clone()),
        ("state", state_text),
    ];
    if s.main_pid != 0 {
        pairs.push(("pid", s.main_pid.to_string()));
    }
    if let Some(t) = s.active_since_unix_us.filter(|&t| t != 0) {
        pairs.push(("since", format!("{} ({})", local(t), age(t, now))));
    }
    let note = experiment_note(s);
    if let Some(reason) = crate::views::failure_word(s.failure()) {
        let text = if note.is_empty() {
            reason.to_owned()
        } else {
            format!("{reason}: {note}")
        };
        pairs.push(("failure", output::paint(&text, Some(Color::Red), color)));
    } else if !note.is_empty() {
        pairs.push(("ended", note));
    }
    if let Some(code) = s.exit_code {
        pairs.push(("exit code", code.to_string()));
    }
    if let Some(sig) = s.exit_signal.filter(|&sig| sig != 0) {
        pairs.push(("exit signal", signal_name(sig)));
    }
    let mut memory = s
        .memory_current_bytes
        .map_or_else(|| "unknown".to_owned(), output::bytes);
    let mut extra = Vec::new();
    extra.push(format!(
        "peak {}",
        s.memory_peak_bytes
            .map_or_else(|| "unknown".to_owned(), output::bytes)
    ));
    if let Some(max) = s.memory_max_bytes {
        extra.push(format!("limit {}", output::bytes(max)));
    }
    memory.push_str(&format!(" ({})", extra.join(", ")));
    pairs.push(("memory", memory));
    let cpu_now = s.cpu_percent.map(output::percent);
    let cpu_total = s
        .cpu_usage_nsec
        .map(|n| format!("{} CPU time", human_duration(Duration::from_nanos(n))));
    let cpu: Vec<String> = [cpu_now.map(|p| format!("{p} now")), cpu_total]
        .into_iter()
        .flatten()
        .collect();
    pairs.push((
        "cpu",
        if cpu.is_empty() {
            "unknown".to_owned()
        } else {
            cpu.join(", ")
        },
    ));
    pairs.push((
        "runs",
        format!(
            "{} automatic {} since the last start; {} and {} on this board in all",
            s.restarts,
            if s.restarts == 1 {
                "restart"
            } else {
                "restarts"
            },
            count(s.crashes_total, "crash", "crashes"),
            count(s.disruptions_total, "disruption", "disruptions"),
        ),
    ));
    pairs.push(("epoch", s.epoch.to_string()));
    pairs.push((
        "autostart",
        if s.autostart {
            "on (starts again when the board reboots)".to_owned()
        } else {
            "off".to_owned()
        },
    ));
    if !s.invocation_id.is_empty() {
        pairs.push(("invocation", s.invocation_id.clone()));
    }
    key_values(&pairs)
}

/// A journal line for people: local time, then the message coloured by
/// its priority (errors red, warnings yellow, debug dim).
pub fn log_line(line: &v1::LogLine, color: bool) -> String {
    let paint = match line.priority {
        0..=3 => Some(Color::Red),
        4 => Some(Color::Yellow),
        7 => Some(Color::Dim),
        _ => None,
    };
    let time = if line.timestamp_unix_us == 0 {
        String::new()
    } else {
        output::paint(&local(line.timestamp_unix_us), Some(Color::Dim), color) + "  "
    };
    format!("{time}{}", output::paint(&line.message, paint, color))
}

/// One state change for people: `2025-06-01 14:03:22  amnesiac-001  running  started`.
pub fn event_line(e: &v1::ExperimentEvent, color: bool) -> String {
    let time = if e.timestamp_unix_us == 0 {
        "-".to_owned()
    } else {
        local(e.timestamp_unix_us)
    };
    let (id, state) = match &e.status {
        Some(s) => (
            s.id.as_str(),
            output::paint(state_word(s.state()), state_color(s.state()), color),
        ),
        None => ("-", "-".to_owned()),
    };
    format!("{time}  {id}  {state}  {}", e.change)
        .trim_end()
        .to_owned()
}

/// Colour of a temperature by the board's own thresholds.
pub fn temperature_color(celsius: f64, warn_c: f64, critical_c: f64) -> Color {
    if critical_c > 0.0 && celsius >= critical_c {
        Color::Red
    } else if warn_c > 0.0 && celsius >= warn_c {
        Color::Yellow
    } else {
        Color::Green
    }
}

pub fn thermal_color(word: &str) -> Option<Color> {
    match word {
        "normal" => Some(Color::Green),
        "warn" => Some(Color::Yellow),
        "critical" => Some(Color::Red),
        _ => None,
    }
}

/// `node info` for people.
pub fn node_lines(v: &NodeView, color: bool) -> Vec<String> {
    key_values(&node_pairs(&v.info, v.telemetry.as_ref(), color))
}

/// The board and its last sample as key–value pairs, to print alone or
/// after what the controller knows of the node.
pub fn node_pairs(
    v: &NodeInfoView,
    telemetry: Option<&TelemetryView>,
    color: bool,
) -> Vec<(&'static str, String)> {
    let mode = |m: &crate::views::PowerModeView| format!("{} (id {})", m.name, m.id);
    let mut pairs: Vec<(&'static str, String)> = vec![
        ("node", v.node.clone()),
        ("model", v.model.clone()),
        ("l4t", v.l4t_release.clone()),
        ("agent", v.agent_version.clone()),
        ("cpu cores", v.cpu_cores.to_string()),
        ("memory", output::bytes(v.memory_total_bytes)),
        ("gpu", if v.gpu { "yes" } else { "no" }.to_owned()),
        (
            "power mode",
            match (&v.current_power_mode, v.nvpmodel) {
                (Some(m), _) => mode(m),
                (None, true) => "unknown".to_owned(),
                (None, false) => "no nvpmodel on this board".to_owned(),
            },
        ),
    ];
    if !v.power_modes.is_empty() {
        let modes: Vec<String> = v
            .power_modes
            .iter()
            .map(|m| {
                let mut s = format!("{}={}", m.id, m.name);
                if Some(m.id) == v.default_power_mode {
                    s.push_str(" (default)");
                }
                s
            })
            .collect();
        pairs.push(("power modes", modes.join(", ")));
    }
    pairs.push((
        "thresholds",
        format!("warn {:.0} °C, critical {:.0} °C", v.warn_c, v.critical_c),
    ));
    match telemetry {
        None => pairs.push(("telemetry", "none received".to_owned())),
        Some(t) => {
            let thermal = output::paint(t.thermal_state, thermal_color(t.thermal_state), color);
            let hottest = match (t.hottest_c, &t.hottest_zone) {
                (Some(c), Some(z)) => format!(", hottest {} at {c:.1} °C", z),
                (Some(c), None) => format!(", hottest {c:.1} °C"),
                _ => String::new(),
            };
            pairs.push(("thermal", format!("{thermal}{hottest}")));
            pairs.push((
                "accepting",
                if t.accepting {
                    "yes".to_owned()
                } else {
                    output::paint("no (too hot or draining)", Some(Color::Yellow), color)
                },
            ));
            pairs.push((
                "load",
                format!(
                    "{:.2} {:.2} {:.2}, cpu {}",
                    t.load[0],
                    t.load[1],
                    t.load[2],
                    output::percent(t.cpu_percent)
                ),
            ));
            pairs.push((
                "memory free",
                format!(
                    "{} of {}",
                    output::bytes(t.memory_available_bytes),
                    output::bytes(t.memory_total_bytes)
                ),
            ));
            if let Some(g) = t.gpu_load_percent {
                pairs.push(("gpu load", output::percent(g)));
            }
            if let Some(w) = t.power_total_watts {
                pairs.push(("power", format!("{w:.1} W")));
            }
            if let Some(c) = t.jetson_clocks {
                pairs.push(("jetson_clocks", if c { "on" } else { "off" }.to_owned()));
            }
            match (t.fan_pwm, t.fan_rpm) {
                (None, None) => {}
                (pwm, rpm) => pairs.push((
                    "fan",
                    [
                        pwm.map(|p| format!("pwm {p}")),
                        rpm.map(|r| format!("{r} rpm")),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", "),
                )),
            }
        }
    }
    pairs
}

/// Thermal zones, temperatures coloured by the board's thresholds.
pub fn zone_table(t: &TelemetryView, warn_c: f64, critical_c: f64) -> Table {
    let mut table = Table::new(vec![Column::left("ZONE").fixed(), Column::right("TEMP")]);
    for z in &t.zones {
        let cell = match (z.offline, z.celsius) {
            (true, _) | (false, None) => Cell::colored("offline", Some(Color::Dim)),
            (false, Some(c)) => Cell::colored(
                format!("{c:.1} °C"),
                Some(temperature_color(c, warn_c, critical_c)),
            ),
        };
        table.row(vec![Cell::new(z.name.clone()), cell]);
    }
    table
}

/// `1 crash`, `2 crashes`.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What a power mode switch did, for people; `node` when the command named
/// the board.
pub fn power_text(v: &PowerView, asked: &str) -> String {
    let name = v
        .mode
        .as_ref()
        .map_or_else(|| asked.to_owned(), |m| format!("{} (id {})", m.name, m.id));
    let subject = match &v.node {
        Some(node) => format!("power mode of {node}"),
        None => "power mode".to_owned(),
    };
    match (v.changed, v.reboot_required) {
        (true, true) => {
            format!("{subject} set to {name}; it takes effect after the board reboots")
        }
        (true, false) => format!("{subject} is now {name}"),
        (false, true) => format!(
            "{subject} {name} needs a reboot of the board; run again with --allow-reboot to switch"
        ),
        (false, false) => format!("{subject} is already {name}"),
    }
}

/// Prints what `power` did. A switch the board would only make with a
/// reboot did not happen: that is a refusal (exit 4), so a script never
/// takes it for a switch; JSON still prints the board's answer first.
pub fn power_outcome(
    context: &str,
    v: &PowerView,
    asked: &str,
    out: &mut crate::output::Out,
) -> Result<(), crate::exit::CliError> {
    let refused = v.reboot_required && !v.changed;
    if out.is_json() {
        out.json(v)?;
    } else if !refused {
        out.line(&power_text(v, asked))?;
    }
    if refused {
        return Err(crate::exit::CliError::rpc(
            context,
            tonic::Status::failed_precondition(power_text(v, asked)),
        ));
    }
    Ok(())
}

/// `jetson_clocks of jetson-01 is now on`.
pub fn clocks_text(v: &ClocksView) -> String {
    let state = if v.enabled { "on" } else { "off" };
    match &v.node {
        Some(node) => format!("jetson_clocks of {node} is now {state}"),
        None => format!("jetson_clocks is now {state}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_748_779_402_500_000;

    fn status() -> v1::ExperimentStatus {
        v1::ExperimentStatus {
            id: "amnesiac-001".into(),
            unit: "brain-experiment@amnesiac-001.service".into(),
            state: v1::ExperimentState::Running as i32,
            active_state: "active".into(),
            sub_state: "running".into(),
            result: "success".into(),
            main_pid: 4242,
            memory_current_bytes: Some(812 * 1024 * 1024),
            memory_max_bytes: Some(8 * 1024 * 1024 * 1024),
            cpu_usage_nsec: Some(3_725_000_000_000),
            cpu_percent: Some(37.5),
            active_since_unix_us: Some(T - 3 * 3600 * 1_000_000),
            restarts: 1,
            crashes_total: 2,
            disruptions_total: 1,
            epoch: 3,
            autostart: true,
            ..Default::default()
        }
    }

    #[test]
    fn ps_table_shows_sizes_durations_and_notes() {
        let mut failed = status();
        failed.id = "b".into();
        failed.state = v1::ExperimentState::Failed as i32;
        failed.main_pid = 0;
        failed.exit_signal = Some(9);
        failed.autostart = false;
        let lines = experiment_table(&[status(), failed], T).render(None, false);
        assert_eq!(
            lines[0],
            "ID            STATE     PID    CPU     MEMORY  UP  RESTARTS  CRASHES  AUTOSTART  NOTE"
        );
        assert_eq!(
            lines[1],
            "amnesiac-001  running  4242  37.5%  812.0 MiB  3h         1        2  on"
        );
        assert!(
            lines[2].ends_with("off        killed by SIGKILL (9)"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn status_is_all_human_readable() {
        let lines = status_lines(&status(), T, false).join("\n");
        for want in [
            "state:      running (systemd: active/running)",
            "pid:        4242",
            "ago)",
            "memory:     812.0 MiB (peak unknown, limit 8.0 GiB)",
            "cpu:        37.5% now, 1h 2m CPU time",
            "runs:       1 automatic restart since the last start; 2 crashes and 1 disruption",
            "autostart:  on",
        ] {
            assert!(lines.contains(want), "missing {want:?} in\n{lines}");
        }
        assert!(!lines.contains("Some("), "{lines}");
    }

    #[test]
    fn temperatures_colour_by_thresholds() {
        assert_eq!(temperature_color(50.0, 75.0, 85.0), Color::Green);
        assert_eq!(temperature_color(75.0, 75.0, 85.0), Color::Yellow);
        assert_eq!(temperature_color(90.0, 75.0, 85.0), Color::Red);
    }

    #[test]
    fn log_and_event_lines() {
        let line = v1::LogLine {
            timestamp_unix_us: 0,
            message: "loss 0.31".into(),
            priority: 3,
            ..Default::default()
        };
        assert_eq!(log_line(&line, false), "loss 0.31");
        assert_eq!(log_line(&line, true), "\x1b[31mloss 0.31\x1b[0m");
        let event = v1::ExperimentEvent {
            status: Some(status()),
            change: "started".into(),
            timestamp_unix_us: 0,
        };
        assert_eq!(
            event_line(&event, false),
            "-  amnesiac-001  running  started"
        );
    }

    #[test]
    fn power_switches_for_people() {
        let view = |node: Option<&str>, changed, reboot_required| PowerView {
            node: node.map(str::to_owned),
            mode: Some(crate::views::PowerModeView {
                id: 2,
                name: "MODE_30W".into(),
            }),
            changed,
            reboot_required,
        };
        assert_eq!(
            power_text(&view(None, true, false), "30W"),
            "power mode is now MODE_30W (id 2)"
        );
        assert_eq!(
            power_text(&view(Some("jetson-01"), true, true), "30W"),
            "power mode of jetson-01 set to MODE_30W (id 2); it takes effect after the board reboots"
        );
        assert_eq!(
            power_text(&view(None, false, true), "30W"),
            "power mode MODE_30W (id 2) needs a reboot of the board; run again with --allow-reboot to switch"
        );
        let unnamed = PowerView {
            mode: None,
            ..view(None, false, false)
        };
        assert_eq!(power_text(&unnamed, "30W"), "power mode is already 30W");
        assert_eq!(
            serde_json::to_string(&view(Some("jetson-01"), true, false)).unwrap(),
            r#"{"node":"jetson-01","mode":{"id":2,"name":"MODE_30W"},"changed":true,"reboot_required":false}"#
        );
    }

    #[test]
    fn node_info_reads_the_same_from_an_agent_and_a_controller() {
        let node = crate::testing::node("jetson-01", v1::ThermalState::Critical, 88.0);
        let view = NodeView::new(node.info.as_ref().unwrap(), node.telemetry.as_ref());
        let lines = node_lines(&view, false);
        assert_eq!(lines[0], "node:         jetson-01");
        assert!(
            lines.contains(&"thermal:      critical, hottest cpu-thermal at 88.0 °C".to_owned())
        );
        let zones = zone_table(view.telemetry.as_ref().unwrap(), 75.0, 85.0).render(None, true);
        assert!(zones[1].contains("\x1b[31m88.0 °C\x1b[0m"), "{zones:?}");
        // `node info --output json` keeps its flat shape: the board's
        // fields, then `telemetry`.
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["node"], "jetson-01");
        assert_eq!(json["warn_c"], 75.0);
        assert_eq!(json["telemetry"]["thermal_state"], "critical");
        assert_eq!(json.as_object().unwrap().len(), 16);
    }
}
