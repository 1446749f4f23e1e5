//! The board itself: one sampler, the thermal guard, power modes, clocks,
//! and the fan-out of samples and events to every `WatchNode` subscriber.
//!
//! **Invariant.** One sampler per agent: subscribers read the latest sample,
//! they never cause a read of the hardware. The guard acts on every sample
//! whether or not anyone watches, and whether or not a controller exists.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, Mutex};
use tokio::time::Instant;

use crate::experiments::{Admission, Experiments};
use crate::guard::{GuardAction, GuardConfig, GuardInput, ThermalGuard, ThermalState, Transition};
use crate::hw::{
    BoardIdentity, Clocks, ClocksState, CurrentMode, HwConfig, JetsonHardware, ModeRef,
    NvpmodelConf, PowerModes, Sample, SetModeOutcome, SetModeRequest,
};
use crate::status::State;

pub const DEFAULT_SAMPLE_INTERVAL_MS: u64 = 1000;
/// The fastest sampling the agent allows.
pub const MIN_SAMPLE_INTERVAL_MS: u64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "power mode {mode:?} is not one of this board's modes ({known}); list them with GetNode"
    )]
    UnknownMode { mode: String, known: String },
    #[error("switching to power mode {mode} needs a reboot; ask again allowing a reboot to reboot the board")]
    RebootRequired { mode: String },
    #[error("{what} is not available on this board: {why}")]
    NotSupported { what: &'static str, why: String },
    /// A tool the call needs is not installed. The message names no path
    /// of the board (the agent's log does).
    #[error("{what} is not installed on this board (GetNode reports it false); {fix}")]
    NotInstalled {
        what: &'static str,
        fix: &'static str,
    },
    #[error("{0}")]
    Hardware(String),
}

/// The `[node]` part of the agent config: how often to sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// One hardware sample per interval; `WatchNode` subscribers asking for
    /// less get this.
    pub interval_ms: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            interval_ms: DEFAULT_SAMPLE_INTERVAL_MS,
        }
    }
}

/// How often the sampler reads every experiment from systemd, not only the
/// active ones.
const FULL_SWEEP: Duration = Duration::from_secs(60);

/// Whether new experiments may start; the guard sets it, starts read it.
#[derive(Default)]
pub struct Gate {
    refusal: RwLock<Option<String>>,
}

impl Gate {
    fn set(&self, refusal: Option<String>) {
        *self.refusal.write().expect("not poisoned") = refusal;
    }
    pub fn accepting(&self) -> bool {
        self.refusal.read().expect("not poisoned").is_none()
    }
}

impl Admission for Gate {
    fn admit(&self) -> Result<(), String> {
        match &*self.refusal.read().expect("not poisoned") {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }
}

/// One experiment's use of the board in a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub id: String,
    pub state: State,
    pub cpu_percent: Option<f64>,
    pub memory_current: Option<u64>,
}

/// A sample with what the agent derived from it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub sample: Sample,
    pub thermal: ThermalState,
    pub accepting: bool,
    pub experiments: Vec<Usage>,
}

#[derive(Debug, Clone)]
pub enum NodeEvent {
    Thermal {
        at: SystemTime,
        from: ThermalState,
        to: ThermalState,
        zone: String,
        celsius: f64,
        action: String,
    },
    PowerMode {
        at: SystemTime,
        from: Option<CurrentMode>,
        to: CurrentMode,
        reason: String,
    },
}

/// What `GetNode` reports.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub identity: Option<BoardIdentity>,
    pub cpu_cores: usize,
    pub memory_total: u64,
    pub modes: Vec<(u32, String)>,
    pub default_mode: Option<u32>,
    pub current_mode: Option<CurrentMode>,
    pub gpu: bool,
    pub nvpmodel: bool,
    pub jetson_clocks: bool,
    pub zones: Vec<String>,
    pub warn_c: f64,
    pub critical_c: f64,
}

pub struct Node {
    name: String,
    hw: Mutex<JetsonHardware>,
    conf: Option<NvpmodelConf>,
    conf_problem: String,
    identity: Option<BoardIdentity>,
    guard: std::sync::Mutex<ThermalGuard>,
    gate: Arc<Gate>,
    interval: Duration,
    latest: watch::Sender<Option<Arc<Snapshot>>>,
    events: broadcast::Sender<NodeEvent>,
    hw_config: HwConfig,
}

impl Node {
    /// Reads what does not change (identity, power modes) once.
    pub async fn new(
        name: String,
        hw_config: HwConfig,
        guard: GuardConfig,
        sampling: &SamplingConfig,
        gate: Arc<Gate>,
    ) -> anyhow::Result<Arc<Node>> {
        let guard = ThermalGuard::new(guard)?;
        let hw = JetsonHardware::from_config(&hw_config);
        let (conf, conf_problem) = match hw.power_modes().modes().await {
            Ok(c) => (Some(c), String::new()),
            Err(e) => (None, fleet_proto::daemon::error_chain(&e)),
        };
        if !conf_problem.is_empty() {
            tracing::info!(problem = %conf_problem, "no power modes on this board");
        }
        let identity = match crate::hw::read_identity(hw_config.identity_root()).await {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::info!(error = %fleet_proto::daemon::error_chain(&e), "board identity unknown");
                None
            }
        };
        let (latest, _) = watch::channel(None);
        let (events, _) = broadcast::channel(256);
        let interval = Duration::from_millis(sampling.interval_ms.max(MIN_SAMPLE_INTERVAL_MS));
        Ok(Arc::new(Node {
            name,
            hw: Mutex::new(hw),
            conf,
            conf_problem,
            identity,
            guard: std::sync::Mutex::new(guard),
            gate,
            interval,
            latest,
            events,
            hw_config,
        }))
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn latest(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.latest.subscribe()
    }

    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// The sampler: one hardware read per interval, the guard, the fan-out.
    pub async fn run(self: Arc<Self>, experiments: Arc<Experiments>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut cpu_prev: HashMap<String, (u64, Instant)> = HashMap::new();
        let mut swept = Instant::now();
        loop {
            tick.tick().await;
            let sample = self.hw.lock().await.sample().await;
            let now = Instant::now();
            let transition = self
                .guard
                .lock()
                .expect("not poisoned")
                .observe(&GuardInput::from_sample(&sample, now));
            if let Some(t) = transition {
                self.apply(t, &experiments, sample.power_mode.clone()).await;
            }
            // systemd is read only for active experiments; the others are
            // as their latest refresh (a unit signal) left them. A signal
            // lost to a full queue is made up for by reading every
            // experiment now and then.
            let read = if now.duration_since(swept) >= FULL_SWEEP {
                swept = now;
                experiments.list().await
            } else {
                experiments.sample().await
            };
            let usage = match read {
                Ok(list) => list
                    .into_iter()
                    .map(|st| {
                        let cpu_percent = st.cpu_usage_nsec.and_then(|ns| {
                            let prev = cpu_prev.insert(st.id.clone(), (ns, now));
                            let (pns, pat) = prev?;
                            let wall = now.duration_since(pat).as_nanos() as f64;
                            (wall > 0.0 && ns >= pns).then(|| (ns - pns) as f64 / wall * 100.0)
                        });
                        Usage {
                            id: st.id,
                            state: st.state,
                            cpu_percent,
                            memory_current: st.memory_current,
                        }
                    })
                    .collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!(error = %fleet_proto::daemon::error_chain(&e), "cannot list experiments for telemetry");
                    Vec::new()
                }
            };
            // Forget the CPU readings of experiments that are gone.
            cpu_prev.retain(|id, _| usage.iter().any(|u| &u.id == id));
            let thermal = self.guard.lock().expect("not poisoned").state();
            self.latest.send_replace(Some(Arc::new(Snapshot {
                sample,
                thermal,
                accepting: self.gate.accepting(),
                experiments: usage,
            })));
        }
    }

    async fn apply(&self, t: Transition, experiments: &Experiments, mode_now: Option<CurrentMode>) {
        tracing::warn!(from = %t.from, to = %t.to, zone = %t.zone, celsius = t.celsius, "{t}");
        let mut done = Vec::new();
        for action in &t.actions {
            match action {
                GuardAction::RefuseNewStarts => {
                    self.gate.set(Some(format!(
                        "thermal {}: zone {} at {:.1} °C",
                        t.to, t.zone, t.celsius
                    )));
                    done.push("refusing new experiments".to_owned());
                }
                GuardAction::AcceptNewStarts => {
                    self.gate.set(None);
                    done.push("accepting new experiments".to_owned());
                }
                GuardAction::StopAllGracefully => {
                    let ids = experiments.active_ids().await.unwrap_or_default();
                    for id in &ids {
                        if let Err(e) = experiments.stop(id, true).await {
                            tracing::error!(experiment = %id, error = %fleet_proto::daemon::error_chain(&e), "thermal stop failed");
                        }
                    }
                    done.push(format!("stopping {} experiment(s)", ids.len()));
                }
                GuardAction::SetPowerMode(mode) | GuardAction::RestorePowerMode(mode) => {
                    let reason = if matches!(action, GuardAction::SetPowerMode(_)) {
                        "thermal step-down"
                    } else {
                        "restored after cooling"
                    };
                    match self
                        .switch_mode(mode, false, mode_now.clone(), reason)
                        .await
                    {
                        Ok(_) => done.push(format!("power mode {mode} ({reason})")),
                        Err(e) => {
                            tracing::error!(%mode, error = %fleet_proto::daemon::error_chain(&e), "thermal power-mode switch failed");
                            done.push(format!("power mode {mode} failed: {e}"));
                        }
                    }
                }
            }
        }
        let _ = self.events.send(NodeEvent::Thermal {
            at: SystemTime::now(),
            from: t.from,
            to: t.to,
            zone: t.zone,
            celsius: t.celsius,
            action: done.join("; "),
        });
    }

    fn known_modes(&self) -> String {
        self.conf
            .as_ref()
            .map(|c| c.mode_list())
            .unwrap_or_else(|| "none".into())
    }

    async fn switch_mode(
        &self,
        mode: &ModeRef,
        allow_reboot: bool,
        from: Option<CurrentMode>,
        reason: &str,
    ) -> Result<SetModeOutcome, NodeError> {
        let Some(conf) = &self.conf else {
            return Err(NodeError::NotSupported {
                what: "nvpmodel",
                why: self.conf_problem.clone(),
            });
        };
        if conf.resolve(mode).is_none() {
            return Err(NodeError::UnknownMode {
                mode: mode.to_string(),
                known: self.known_modes(),
            });
        }
        let mut hw = self.hw.lock().await;
        let outcome = hw
            .power_modes()
            .set_mode(&SetModeRequest {
                mode: mode.clone(),
                allow_reboot,
            })
            .await
            .map_err(|e| NodeError::Hardware(fleet_proto::daemon::error_chain(&e)))?;
        hw.refresh_power_state();
        if let SetModeOutcome::Switched { mode: to } = &outcome {
            // GetNode and watchers see the confirmed mode now, not after
            // the next sample.
            self.latest.send_modify(|latest| {
                if let Some(s) = latest {
                    let mut snap = (**s).clone();
                    snap.sample.power_mode = Some(to.clone());
                    *s = Arc::new(snap);
                }
            });
            if from.as_ref() != Some(to) {
                let _ = self.events.send(NodeEvent::PowerMode {
                    at: SystemTime::now(),
                    from,
                    to: to.clone(),
                    reason: reason.to_owned(),
                });
            }
        }
        Ok(outcome)
    }

    /// `SetPowerMode`: by id or name; a switch that needs a reboot happens
    /// only when allowed, and is reported either way.
    pub async fn set_power_mode(
        &self,
        mode: &str,
        allow_reboot: bool,
    ) -> Result<SetModeOutcome, NodeError> {
        let mode_ref: ModeRef = mode.parse().expect("infallible");
        let from = self.hw.lock().await.power_modes().query().await.ok();
        self.switch_mode(&mode_ref, allow_reboot, from, "requested")
            .await
    }

    pub async fn set_clocks(&self, enabled: bool) -> Result<ClocksState, NodeError> {
        let program = &self.hw_config.jetson_clocks;
        if !program.exists() {
            tracing::warn!(
                path = %program.display(),
                "SetClocks refused: jetson_clocks is not at the configured path ([hardware] jetson_clocks)"
            );
            return Err(NodeError::NotInstalled {
                what: "jetson_clocks",
                fix: "install it (NVIDIA's nvidia-l4t-tools package), or set [hardware] jetson_clocks in the agent's config to where it is",
            });
        }
        let mut hw = self.hw.lock().await;
        let result = if enabled {
            hw.clocks().lock().await
        } else {
            hw.clocks().unlock().await
        };
        hw.refresh_power_state();
        result.map_err(|e| NodeError::Hardware(fleet_proto::daemon::error_chain(&e)))
    }

    pub async fn info(&self) -> NodeInfo {
        // Right after start there is no sample yet: wait for the first one
        // (bounded), so GPU and zones are not reported missing.
        let mut rx = self.latest.subscribe();
        let _ = tokio::time::timeout(self.interval * 5, rx.wait_for(|s| s.is_some())).await;
        let snapshot = self.latest.borrow().clone();
        let current_mode = match &snapshot {
            Some(s) => s.sample.power_mode.clone(),
            None => self.hw.lock().await.power_modes().query().await.ok(),
        };
        let guard = self.guard.lock().expect("not poisoned").config().clone();
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        NodeInfo {
            name: self.name.clone(),
            identity: self.identity.clone(),
            cpu_cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_total: sys.total_memory(),
            modes: self
                .conf
                .as_ref()
                .map(|c| c.modes.iter().map(|m| (m.id, m.name.clone())).collect())
                .unwrap_or_default(),
            default_mode: self.conf.as_ref().map(|c| c.default().id),
            current_mode,
            gpu: snapshot.as_ref().is_some_and(|s| s.sample.gpu.is_some()),
            nvpmodel: self.conf.is_some(),
            jetson_clocks: self.hw_config.jetson_clocks.exists(),
            zones: snapshot
                .as_ref()
                .map(|s| s.sample.zones.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default(),
            warn_c: guard.warn_c,
            critical_c: guard.critical_c,
        }
    }
}
