//! The node's domain types on the wire, and the `WatchNode` stream.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::v1;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};

use super::{event_to_wire, state_to_wire, BoxStream};
use crate::experiments::{Event, Experiments};
use crate::guard::ThermalState;
use crate::hw::{CurrentMode, SetModeOutcome};
use crate::node::{Node, NodeEvent, NodeInfo, Snapshot};

use fleet_proto::unix::unix_us;

pub fn thermal(t: ThermalState) -> v1::ThermalState {
    match t {
        ThermalState::Normal => v1::ThermalState::Normal,
        ThermalState::Warn => v1::ThermalState::Warn,
        ThermalState::Critical => v1::ThermalState::Critical,
    }
}

fn mode(m: &CurrentMode) -> v1::PowerMode {
    v1::PowerMode {
        id: m.id.unwrap_or(u32::MAX),
        name: m.name.clone(),
    }
}

pub fn info(n: &NodeInfo) -> v1::NodeInfo {
    v1::NodeInfo {
        node: n.name.clone(),
        model: n
            .identity
            .as_ref()
            .map(|i| i.model.clone())
            .unwrap_or_default(),
        l4t_release: n
            .identity
            .as_ref()
            .and_then(|i| i.l4t.as_ref())
            .map(|l| l.to_string())
            .unwrap_or_default(),
        cpu_cores: n.cpu_cores as u32,
        memory_total_bytes: n.memory_total,
        power_modes: n
            .modes
            .iter()
            .map(|(id, name)| v1::PowerMode {
                id: *id,
                name: name.clone(),
            })
            .collect(),
        current_power_mode: n.current_mode.as_ref().map(mode),
        default_power_mode: n.default_mode,
        gpu: n.gpu,
        nvpmodel: n.nvpmodel,
        jetson_clocks: n.jetson_clocks,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        zones: n.zones.clone(),
        warn_c: n.warn_c,
        critical_c: n.critical_c,
    }
}

pub fn set_mode(o: &SetModeOutcome) -> v1::SetPowerModeResponse {
    match o {
        SetModeOutcome::Switched { mode: m } => v1::SetPowerModeResponse {
            mode: Some(mode(m)),
            reboot_required: false,
            changed: true,
        },
        SetModeOutcome::RebootRequired { id, name } => v1::SetPowerModeResponse {
            mode: Some(v1::PowerMode {
                id: *id,
                name: name.clone(),
            }),
            reboot_required: true,
            changed: false,
        },
        SetModeOutcome::Rebooting { id, name } => v1::SetPowerModeResponse {
            mode: Some(v1::PowerMode {
                id: *id,
                name: name.clone(),
            }),
            reboot_required: true,
            changed: true,
        },
    }
}

pub fn sample(s: &Snapshot) -> v1::TelemetrySample {
    let x = &s.sample;
    let hottest = x.hottest_zone();
    v1::TelemetrySample {
        timestamp_unix_us: unix_us(x.taken_at),
        load1: x.system.load_1,
        load5: x.system.load_5,
        load15: x.system.load_15,
        cpu_percent: x.system.cpu_percent.map(f64::from).unwrap_or(0.0),
        memory_total_bytes: x.system.memory_total_bytes,
        memory_available_bytes: x.system.memory_available_bytes,
        zones: x
            .zones
            .iter()
            .map(|z| v1::ZoneReading {
                name: z.name.clone(),
                celsius: z.celsius(),
                offline: z.is_offline(),
            })
            .collect(),
        gpu_load_percent: x.gpu.as_ref().map(|g| g.load_percent),
        rails: x
            .rails()
            .iter()
            .map(|r| v1::PowerRail {
                name: r.name.clone(),
                watts: r.watts,
            })
            .collect(),
        power_total_watts: x.total_watts(),
        fan_pwm: x.fan.as_ref().and_then(|f| f.pwm).map(u32::from),
        fan_rpm: x.fan.as_ref().and_then(|f| f.rpm),
        power_mode: x.power_mode.as_ref().map(mode),
        jetson_clocks: x.clocks.map(|c| c == crate::hw::ClocksState::Locked),
        thermal_state: thermal(s.thermal) as i32,
        hottest_c: hottest.map(|(_, c)| c),
        hottest_zone: hottest.map(|(n, _)| n.to_owned()).unwrap_or_default(),
        experiments: s
            .experiments
            .iter()
            .map(|u| v1::ExperimentUsage {
                id: u.id.clone(),
                cpu_percent: u.cpu_percent,
                memory_current_bytes: u.memory_current,
                state: state_to_wire(u.state) as i32,
            })
            .collect(),
        accepting: s.accepting,
    }
}

pub fn event(e: &NodeEvent) -> v1::NodeEvent {
    match e {
        NodeEvent::Thermal {
            at,
            from,
            to,
            zone,
            celsius,
            action,
        } => v1::NodeEvent {
            timestamp_unix_us: unix_us(*at),
            kind: Some(v1::node_event::Kind::Thermal(v1::ThermalChanged {
                from: thermal(*from) as i32,
                to: thermal(*to) as i32,
                zone: zone.clone(),
                celsius: Some(*celsius),
                action: action.clone(),
            })),
        },
        NodeEvent::PowerMode {
            at,
            from,
            to,
            reason,
        } => v1::NodeEvent {
            timestamp_unix_us: unix_us(*at),
            kind: Some(v1::node_event::Kind::PowerMode(v1::PowerModeChanged {
                from: from.as_ref().map(mode),
                to: Some(mode(to)),
                reason: reason.clone(),
            })),
        },
    }
}

struct Watch {
    tick: tokio::time::Interval,
    latest: watch::Receiver<Option<Arc<Snapshot>>>,
    node: broadcast::Receiver<NodeEvent>,
    experiments: broadcast::Receiver<Event>,
}

/// Samples every `requested` (never faster than the sampler), interleaved
/// with node and experiment events as they happen.
pub fn watch(
    node: &Node,
    experiments: &Experiments,
    requested: Duration,
) -> BoxStream<v1::NodeUpdate> {
    let period = requested.max(node.interval());
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Watch {
        tick,
        latest: node.latest(),
        node: node.events(),
        experiments: experiments.subscribe(),
    };
    Box::pin(futures_util::stream::unfold(state, |mut w| async move {
        loop {
            let update = tokio::select! {
                _ = w.tick.tick() => {
                    let snap = w.latest.borrow_and_update().clone();
                    match snap {
                        Some(s) => v1::node_update::Update::Sample(sample(&s)),
                        // No sample yet: wait for the first one.
                        None => {
                            if w.latest.changed().await.is_err() {
                                return None;
                            }
                            continue;
                        }
                    }
                }
                ev = w.node.recv() => match ev {
                    Ok(e) => v1::node_update::Update::Event(event(&e)),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
                ev = w.experiments.recv() => match ev {
                    Ok(e) => v1::node_update::Update::Event(v1::NodeEvent {
                        timestamp_unix_us: e.timestamp_us,
                        kind: Some(v1::node_event::Kind::Experiment(event_to_wire(&e))),
                    }),
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                },
            };
            return Some((
                Ok(v1::NodeUpdate {
                    update: Some(update),
                }),
                w,
            ));
        }
    }))
}
