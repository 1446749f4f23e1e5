//! Prometheus text metrics on an optional plain-HTTP port: temperatures,
//! power rails, power mode, thermal state, and experiments by state.
//!
//! Rendered from the sampler's latest snapshot: a scrape never reads the
//! hardware itself.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::guard::ThermalState;
use crate::node::{Node, Snapshot};
use crate::status::State;

const STATES: [State; 9] = [
    State::Starting,
    State::Running,
    State::Restarting,
    State::Stopping,
    State::Succeeded,
    State::Failed,
    State::Stopped,
    State::Disrupted,
    State::Unknown,
];

/// Escapes a label value as the text format asks.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition of one snapshot.
pub fn render(node: &str, s: Option<&Snapshot>) -> String {
    let mut out = String::new();
    let n = label(node);
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in samples {
            let sep = if labels.is_empty() { "" } else { "," };
            let _ = writeln!(out, "{name}{{node=\"{n}\"{sep}{labels}}} {v}");
        }
    };
    let Some(s) = s else {
        gauge(
            "fleet_agent_up",
            "1 once the agent has a first sample.",
            &[(String::new(), 0.0)],
        );
        return out;
    };
    gauge(
        "fleet_agent_up",
        "1 once the agent has a first sample.",
        &[(String::new(), 1.0)],
    );
    let x = &s.sample;
    let temps: Vec<(String, f64)> = x
        .zones
        .iter()
        .filter_map(|z| Some((format!("zone=\"{}\"", label(&z.name)), z.celsius()?)))
        .collect();
    gauge(
        "fleet_zone_temperature_celsius",
        "Thermal zone temperature; offline zones are absent.",
        &temps,
    );
    let offline: Vec<(String, f64)> = x
        .zones
        .iter()
        .map(|z| {
            (
                format!("zone=\"{}\"", label(&z.name)),
                f64::from(u8::from(z.is_offline())),
            )
        })
        .collect();
    gauge(
        "fleet_zone_offline",
        "1 when the zone reads nothing usable.",
        &offline,
    );
    let rails: Vec<(String, f64)> = x
        .rails()
        .iter()
        .map(|r| (format!("rail=\"{}\"", label(&r.name)), r.watts))
        .collect();
    gauge("fleet_power_rail_watts", "Power per INA3221 rail.", &rails);
    if let Some(w) = x.total_watts() {
        gauge(
            "fleet_power_total_watts",
            "Board power.",
            &[(String::new(), w)],
        );
    }
    if let Some(g) = &x.gpu {
        gauge(
            "fleet_gpu_load_percent",
            "GPU load.",
            &[(String::new(), g.load_percent)],
        );
    }
    if let Some(m) = &x.power_mode {
        gauge(
            "fleet_power_mode",
            "The nvpmodel mode the board runs (value 1).",
            &[(
                format!(
                    "id=\"{}\",mode=\"{}\"",
                    m.id.map(|i| i.to_string()).unwrap_or_default(),
                    label(&m.name)
                ),
                1.0,
            )],
        );
    }
    let thermal = match s.thermal {
        ThermalState::Normal => 0.0,
        ThermalState::Warn => 1.0,
        ThermalState::Critical => 2.0,
    };
    gauge(
        "fleet_thermal_state",
        "0 normal, 1 warn, 2 critical.",
        &[(String::new(), thermal)],
    );
    gauge(
        "fleet_accepting_experiments",
        "1 when the thermal guard lets new experiments start.",
        &[(String::new(), f64::from(u8::from(s.accepting)))],
    );
    gauge(
        "fleet_load1",
        "Load average over one minute.",
        &[(String::new(), x.system.load_1)],
    );
    gauge(
        "fleet_memory_available_bytes",
        "Memory available.",
        &[(String::new(), x.system.memory_available_bytes as f64)],
    );
    let by_state: Vec<(String, f64)> = STATES
        .iter()
        .map(|st| {
            let count = s.experiments.iter().filter(|u| u.state == *st).count();
            (format!("state=\"{}\"", st.as_str()), count as f64)
        })
        .collect();
    gauge(
        "fleet_experiments",
        "Experiments on this board by state.",
        &by_state,
    );
    out
}

/// Serves `GET /metrics` (other paths answer 404) until the task is dropped.
pub async fn serve(listen: SocketAddr, node: Arc<Node>, name: String) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    fleet_proto::daemon::serve_metrics(listener, move || {
        let snapshot = node.latest().borrow().clone();
        Ok(render(&name, snapshot.as_deref()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::{Sample, SystemFigures, ZoneReading, ZoneState};
    use crate::node::Usage;

    #[test]
    fn renders_zones_states_and_escapes_labels() {
        let snapshot = Snapshot {
            sample: Sample {
                taken_at: std::time::SystemTime::UNIX_EPOCH,
                zones: vec![
                    ZoneReading {
                        index: 0,
                        kind: "cpu-thermal".into(),
                        name: "cpu".into(),
                        state: ZoneState::Online { celsius: 51.5 },
                    },
                    ZoneReading {
                        index: 1,
                        kind: "gpu-thermal".into(),
                        name: "gpu".into(),
                        state: ZoneState::Offline(crate::hw::OfflineReason::PoweredOff),
                    },
                ],
                power: None,
                gpu: None,
                fan: None,
                power_mode: None,
                clocks: None,
                system: SystemFigures {
                    load_1: 0.5,
                    load_5: 0.0,
                    load_15: 0.0,
                    cpu_percent: None,
                    cpu_count: 2,
                    memory_total_bytes: 0,
                    memory_available_bytes: 0,
                    swap_total_bytes: 0,
                    swap_used_bytes: 0,
                    uptime_secs: 0,
                },
                problems: vec![],
            },
            thermal: ThermalState::Warn,
            accepting: false,
            experiments: vec![Usage {
                id: "a".into(),
                state: State::Running,
                cpu_percent: None,
                memory_current: None,
            }],
        };
        let text = render("jet\"son", Some(&snapshot));
        assert!(
            text.contains("fleet_zone_temperature_celsius{node=\"jet\\\"son\",zone=\"cpu\"} 51.5"),
            "{text}"
        );
        assert!(
            !text.contains("zone=\"gpu\"} -"),
            "offline zones have no temperature"
        );
        assert!(text.contains("fleet_zone_offline{node=\"jet\\\"son\",zone=\"gpu\"} 1"));
        assert!(text.contains("fleet_thermal_state{node=\"jet\\\"son\"} 1"));
        assert!(text.contains("fleet_experiments{node=\"jet\\\"son\",state=\"running\"} 1"));
        assert!(text.contains("fleet_accepting_experiments{node=\"jet\\\"son\"} 0"));
        assert!(render("x", None).contains("fleet_agent_up{node=\"x\"} 0"));
    }
}
