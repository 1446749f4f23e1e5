//! The documented shapes of `--output json`, converted from the wire.
//!
//! These structs are fleetctl's promise to scripts: a field is only ever
//! added, never renamed or removed. Every field is always present (`null`
//! when unknown); sizes are bytes, durations nanoseconds or seconds as
//! their names say, times RFC 3339 in UTC beside the same instant in
//! microseconds since the epoch; enums are lowercase words.

use std::collections::BTreeMap;

use fleet_proto::v1;
use serde::Serialize;

use crate::time::rfc3339_utc;

mod fleet;
pub use fleet::*;

/// An experiment's state word, the same in tables and JSON.
pub fn state_word(state: v1::ExperimentState) -> &'static str {
    match state {
        v1::ExperimentState::Unspecified => "unspecified",
        v1::ExperimentState::Starting => "starting",
        v1::ExperimentState::Running => "running",
        v1::ExperimentState::Restarting => "restarting",
        v1::ExperimentState::Stopping => "stopping",
        v1::ExperimentState::Succeeded => "succeeded",
        v1::ExperimentState::Failed => "failed",
        v1::ExperimentState::Stopped => "stopped",
        v1::ExperimentState::Disrupted => "disrupted",
        v1::ExperimentState::Unknown => "unknown",
    }
}

/// Why an experiment failed, or `None`.
pub fn failure_word(reason: v1::FailureReason) -> Option<&'static str> {
    match reason {
        v1::FailureReason::None => None,
        v1::FailureReason::ExitCode => Some("exit-code"),
        v1::FailureReason::Signal => Some("signal"),
        v1::FailureReason::OomKill => Some("oom-kill"),
        v1::FailureReason::Timeout => Some("timeout"),
        v1::FailureReason::StartLimit => Some("start-limit"),
        v1::FailureReason::CoreDump => Some("core-dump"),
        v1::FailureReason::Resources => Some("resources"),
        v1::FailureReason::Other => Some("other"),
    }
}

pub fn thermal_word(state: v1::ThermalState) -> &'static str {
    match state {
        v1::ThermalState::Unspecified => "unknown",
        v1::ThermalState::Normal => "normal",
        v1::ThermalState::Warn => "warn",
        v1::ThermalState::Critical => "critical",
    }
}

/// A time as RFC 3339, `None` for the wire's "unset" (0).
pub fn time_opt(us: i64) -> Option<String> {
    (us != 0).then(|| rfc3339_utc(us))
}

/// One experiment on one board.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentView {
    pub id: String,
    /// The systemd unit, `brain-experiment@<id>.service`.
    pub unit: String,
    /// starting, running, restarting, stopping, succeeded, failed, stopped,
    /// disrupted or unknown.
    pub state: &'static str,
    /// systemd's ActiveState, SubState and Result.
    pub active_state: String,
    pub sub_state: String,
    pub result: String,
    /// The main process, when one runs.
    pub main_pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    /// exit-code, signal, oom-kill, timeout, start-limit, core-dump,
    /// resources or other; `null` when it did not fail.
    pub failure: Option<&'static str>,
    pub failure_message: Option<String>,
    pub memory_current_bytes: Option<u64>,
    pub memory_peak_bytes: Option<u64>,
    pub memory_max_bytes: Option<u64>,
    pub cpu_usage_nsec: Option<u64>,
    pub cpu_percent: Option<f64>,
    /// When the current run started.
    pub active_since: Option<String>,
    pub active_since_unix_us: Option<i64>,
    /// Automatic restarts since the last explicit start.
    pub restarts: u32,
    /// Crashes over the experiment's life on this board.
    pub crashes_total: u64,
    /// Stops by the board (thermal, drain), never counted as crashes.
    pub disruptions_total: u64,
    pub epoch: u64,
    pub autostart: bool,
    pub invocation_id: Option<String>,
}

pub fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

impl From<&v1::ExperimentStatus> for ExperimentView {
    fn from(s: &v1::ExperimentStatus) -> Self {
        ExperimentView {
            id: s.id.clone(),
            unit: s.unit.clone(),
            state: state_word(s.state()),
            active_state: s.active_state.clone(),
            sub_state: s.sub_state.clone(),
            result: s.result.clone(),
            main_pid: (s.main_pid != 0).then_some(s.main_pid),
            exit_code: s.exit_code,
            exit_signal: s.exit_signal,
            failure: failure_word(s.failure()),
            failure_message: non_empty(&s.failure_message),
            memory_current_bytes: s.memory_current_bytes,
            memory_peak_bytes: s.memory_peak_bytes,
            memory_max_bytes: s.memory_max_bytes,
            cpu_usage_nsec: s.cpu_usage_nsec,
            cpu_percent: s.cpu_percent,
            active_since: s.active_since_unix_us.and_then(time_opt),
            active_since_unix_us: s.active_since_unix_us.filter(|&t| t != 0),
            restarts: s.restarts,
            crashes_total: s.crashes_total,
            disruptions_total: s.disruptions_total,
            epoch: s.epoch,
            autostart: s.autostart,
            invocation_id: non_empty(&s.invocation_id),
        }
    }
}

/// `ps`, `start-all`, `stop-all`.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentList {
    pub experiments: Vec<ExperimentView>,
}

/// One state change (`watch`, one JSON object per line).
#[derive(Debug, Clone, Serialize)]
pub struct EventView {
    pub time: Option<String>,
    pub time_unix_us: i64,
    /// What changed, for people: "started", "exited with code 3", ...
    pub change: String,
    pub experiment: Option<ExperimentView>,
}

impl From<&v1::ExperimentEvent> for EventView {
    fn from(e: &v1::ExperimentEvent) -> Self {
        EventView {
            time: time_opt(e.timestamp_unix_us),
            time_unix_us: e.timestamp_unix_us,
            change: e.change.clone(),
            experiment: e.status.as_ref().map(ExperimentView::from),
        }
    }
}

/// One log line (`logs`, one JSON object per line).
#[derive(Debug, Clone, Serialize)]
pub struct LogLineView {
    pub time: Option<String>,
    pub time_unix_us: i64,
    /// syslog priority 0 (emerg) .. 7 (debug); 6 (info) for stdout.
    pub priority: u32,
    pub pid: Option<u32>,
    pub message: String,
    /// The journal cursor, to resume from.
    pub cursor: Option<String>,
}

impl From<&v1::LogLine> for LogLineView {
    fn from(l: &v1::LogLine) -> Self {
        LogLineView {
            time: time_opt(l.timestamp_unix_us),
            time_unix_us: l.timestamp_unix_us,
            priority: l.priority,
            pid: (l.pid != 0).then_some(l.pid),
            message: l.message.clone(),
            cursor: non_empty(&l.cursor),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PowerModeView {
    pub id: u32,
    pub name: String,
}

impl From<&v1::PowerMode> for PowerModeView {
    fn from(m: &v1::PowerMode) -> Self {
        PowerModeView {
            id: m.id,
            name: m.name.clone(),
        }
    }
}

/// `node info`: the board as its agent describes itself, and one
/// telemetry sample.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub info: NodeInfoView,
    /// One telemetry sample, `null` when the agent sent none in time.
    pub telemetry: Option<TelemetryView>,
}

impl NodeView {
    pub fn new(n: &v1::NodeInfo, telemetry: Option<&v1::TelemetrySample>) -> Self {
        NodeView {
            info: NodeInfoView::from(n),
            telemetry: telemetry.map(TelemetryView::from),
        }
    }
}

/// A board as its agent describes itself (GetNode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeInfoView {
    pub node: String,
    pub model: String,
    pub l4t_release: String,
    pub cpu_cores: u32,
    pub memory_total_bytes: u64,
    pub power_modes: Vec<PowerModeView>,
    pub current_power_mode: Option<PowerModeView>,
    pub default_power_mode: Option<u32>,
    pub gpu: bool,
    /// Whether the board has nvpmodel and jetson_clocks.
    pub nvpmodel: bool,
    pub jetson_clocks: bool,
    pub agent_version: String,
    pub zones: Vec<String>,
    /// The agent's thermal thresholds, °C.
    pub warn_c: f64,
    pub critical_c: f64,
}

impl From<&v1::NodeInfo> for NodeInfoView {
    fn from(n: &v1::NodeInfo) -> Self {
        NodeInfoView {
            node: n.node.clone(),
            model: n.model.clone(),
            l4t_release: n.l4t_release.clone(),
            cpu_cores: n.cpu_cores,
            memory_total_bytes: n.memory_total_bytes,
            power_modes: n.power_modes.iter().map(PowerModeView::from).collect(),
            current_power_mode: n.current_power_mode.as_ref().map(PowerModeView::from),
            default_power_mode: n.default_power_mode,
            gpu: n.gpu,
            nvpmodel: n.nvpmodel,
            jetson_clocks: n.jetson_clocks,
            agent_version: n.agent_version.clone(),
            zones: n.zones.clone(),
            warn_c: n.warn_c,
            critical_c: n.critical_c,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneView {
    pub name: String,
    pub celsius: Option<f64>,
    pub offline: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TelemetryView {
    pub time: Option<String>,
    pub time_unix_us: i64,
    /// normal, warn, critical or unknown.
    pub thermal_state: &'static str,
    pub hottest_c: Option<f64>,
    pub hottest_zone: Option<String>,
    pub zones: Vec<ZoneView>,
    pub load: [f64; 3],
    pub cpu_percent: f64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub gpu_load_percent: Option<f64>,
    pub power_total_watts: Option<f64>,
    pub rails: BTreeMap<String, f64>,
    pub fan_pwm: Option<u32>,
    pub fan_rpm: Option<u32>,
    pub power_mode: Option<PowerModeView>,
    pub jetson_clocks: Option<bool>,
    /// Whether the board takes new experiments now.
    pub accepting: bool,
}

impl From<&v1::TelemetrySample> for TelemetryView {
    fn from(t: &v1::TelemetrySample) -> Self {
        TelemetryView {
            time: time_opt(t.timestamp_unix_us),
            time_unix_us: t.timestamp_unix_us,
            thermal_state: thermal_word(t.thermal_state()),
            hottest_c: t.hottest_c,
            hottest_zone: non_empty(&t.hottest_zone),
            zones: t
                .zones
                .iter()
                .map(|z| ZoneView {
                    name: z.name.clone(),
                    celsius: z.celsius,
                    offline: z.offline,
                })
                .collect(),
            load: [t.load1, t.load5, t.load15],
            cpu_percent: t.cpu_percent,
            memory_total_bytes: t.memory_total_bytes,
            memory_available_bytes: t.memory_available_bytes,
            gpu_load_percent: t.gpu_load_percent,
            power_total_watts: t.power_total_watts,
            rails: t.rails.iter().map(|r| (r.name.clone(), r.watts)).collect(),
            fan_pwm: t.fan_pwm,
            fan_rpm: t.fan_rpm,
            power_mode: t.power_mode.as_ref().map(PowerModeView::from),
            jetson_clocks: t.jetson_clocks,
            accepting: t.accepting,
        }
    }
}

/// A spec as it would be sent (`submit --dry-run`), defaults written out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpecView {
    /// `null` when the file names none and one is generated on submission.
    pub id: Option<String>,
    pub command: Vec<String>,
    pub working_dir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub config_name: Option<String>,
    pub config_bytes: usize,
    pub priority: i32,
    pub memory_max: Option<String>,
    pub cpu_quota: Option<String>,
    pub gpu: bool,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub power_mode: Option<String>,
    pub max_temp_c: Option<f64>,
    pub max_runtime: Option<String>,
    pub restart: String,
    pub max_restarts: Option<u32>,
    pub restart_delay: String,
    pub stop_timeout: String,
    pub on_disruption: String,
    pub autostart: bool,
}

impl From<&v1::ExperimentSpec> for SpecView {
    fn from(s: &v1::ExperimentSpec) -> Self {
        let r = s.resources.clone().unwrap_or_default();
        let p = s.placement.clone().unwrap_or_default();
        let l = s.lifecycle.clone().unwrap_or_default();
        SpecView {
            id: non_empty(&s.id),
            command: s.command.clone(),
            working_dir: non_empty(&s.working_dir),
            env: s.env.clone().into_iter().collect(),
            config_name: non_empty(&s.config_name),
            config_bytes: s.config_content.len(),
            priority: s.priority,
            memory_max: non_empty(&r.memory_max),
            cpu_quota: non_empty(&r.cpu_quota),
            gpu: r.gpu,
            node: non_empty(&p.node),
            labels: p.labels.into_iter().collect(),
            power_mode: non_empty(&p.power_mode),
            max_temp_c: p.max_temp_c,
            max_runtime: non_empty(&l.max_runtime),
            restart: l.restart,
            max_restarts: l.max_restarts,
            restart_delay: l.restart_delay,
            stop_timeout: l.stop_timeout,
            on_disruption: l.on_disruption,
            autostart: l.autostart,
        }
    }
}

/// `submit`: one entry per file.
#[derive(Debug, Clone, Serialize)]
pub struct SubmitView {
    pub file: String,
    pub dry_run: bool,
    pub spec: SpecView,
    /// The experiment as the board reported it; `null` on a dry run.
    pub status: Option<ExperimentView>,
    /// With a controller: the experiment as the controller stored it (on a
    /// dry run, as it would be stored).
    pub experiment: Option<FleetExperimentView>,
    /// With a controller's dry run: where the scheduler would place it now.
    pub decision: Option<DecisionView>,
    /// With a controller: the sequence number of the `submitted` event
    /// (`null` when it was already there).
    pub event_seq: Option<u64>,
    /// The same spec was already stored under this id (a retried
    /// submission): nothing new was written.
    pub already_submitted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubmitList {
    pub submitted: Vec<SubmitView>,
}

/// `rm`.
#[derive(Debug, Clone, Serialize)]
pub struct RemoveView {
    pub id: String,
    /// Whether the board knew the experiment.
    pub existed: bool,
}

/// `power`.
#[derive(Debug, Clone, Serialize)]
pub struct PowerView {
    /// The board, when the command named it.
    pub node: Option<String>,
    pub mode: Option<PowerModeView>,
    pub changed: bool,
    pub reboot_required: bool,
}

/// `clocks`.
#[derive(Debug, Clone, Serialize)]
pub struct ClocksView {
    /// The board, when the command named it.
    pub node: Option<String>,
    /// jetson_clocks as the board reports it after the switch.
    pub enabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiment_json_is_stable_and_readable() {
        let status = v1::ExperimentStatus {
            id: "amnesiac-001".into(),
            unit: "brain-experiment@amnesiac-001.service".into(),
            state: v1::ExperimentState::Failed as i32,
            failure: v1::FailureReason::OomKill as i32,
            failure_message: "killed by the OOM killer".into(),
            exit_signal: Some(9),
            active_since_unix_us: Some(1_748_779_402_500_000),
            memory_peak_bytes: None,
            crashes_total: 2,
            ..Default::default()
        };
        let json = serde_json::to_value(ExperimentView::from(&status)).unwrap();
        assert_eq!(json["state"], "failed");
        assert_eq!(json["failure"], "oom-kill");
        assert_eq!(json["exit_signal"], 9);
        assert_eq!(json["main_pid"], serde_json::Value::Null);
        assert_eq!(json["memory_peak_bytes"], serde_json::Value::Null);
        assert_eq!(json["active_since"], "2025-06-01T12:03:22.500000Z");
        assert_eq!(json["crashes_total"], 2);
        // Every documented key is there, even when unknown.
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 24, "{keys:?}");
    }
}
