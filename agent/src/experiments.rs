//! The board's experiments: start, stop, restart, remove, autostart, watch.
//!
//! **Invariants.** systemd is the source of truth for what runs; the agent
//! never stops a unit because it stops itself. Only units named
//! `brain-experiment@<valid id>.service` are touched. Bad input is refused
//! before any file, record or D-Bus call. Mutations are serialised by one
//! lock; reads never take it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::spec::{ExperimentId, ExperimentSpec, InvalidValue, SpecError};
use fleet_proto::v1;
use futures_util::StreamExt;
use prost::Message;
use tokio::sync::{broadcast, Mutex};

use crate::status::{self, State, Status};
use crate::store::{Desired, Record, Store, StoreError, RECORD_VERSION};
use crate::systemd::{Systemd, SystemdError, UnitProps};
use crate::unit_file;

/// Name of the drop-in the agent owns inside `<unit>.d/`.
pub const DROPIN_NAME: &str = "50-fleet.conf";
/// The drop-in that records how each run ended.
pub const EXIT_DROPIN_NAME: &str = "60-fleet-exit.conf";
/// Waiting for a unit to go inactive allows this much over its stop timeout.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    #[error("invalid experiment id {id:?}")]
    InvalidId {
        id: String,
        #[source]
        source: InvalidValue,
    },
    #[error("no experiment {id} on this board; list them with ListExperiments")]
    NotFound { id: String },
    #[error("experiment {id} is held at epoch {held}, newer than the requested {requested}: a newer placement owns it")]
    StaleEpoch {
        id: String,
        held: u64,
        requested: u64,
    },
    #[error("experiment {id} runs epoch {held} here, not the {requested} this stop is for: that run is not on this board")]
    OtherEpoch {
        id: String,
        held: u64,
        requested: u64,
    },
    #[error("this board accepts no new experiments now: {reason}")]
    Refused { reason: String },
    #[error("experiment {id} was not given to this agent (its record is missing); remove it and start it again")]
    NoSpec { id: String },
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("experiment {id} did not stop within {waited:?}")]
    StopTimeout { id: String, waited: Duration },
}

type Result<T, E = ExperimentError> = std::result::Result<T, E>;

/// A change of one experiment, for `WatchExperiments` and the node stream.
#[derive(Debug, Clone)]
pub struct Event {
    pub status: Status,
    pub change: String,
    pub timestamp_us: i64,
}

/// Where the agent keeps an experiment's files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Persistent unit directory: drop-ins of autostart experiments.
    pub unit_dir: PathBuf,
    /// Runtime unit directory (a tmpfs on a real board): other drop-ins.
    pub runtime_unit_dir: PathBuf,
    /// `<state>/experiments/<id>/` holds the config file.
    pub state_dir: PathBuf,
    /// The kernel log, for OOM attribution on cgroup v1.
    pub kmsg: PathBuf,
    /// This program, which `ExecStopPost=` runs to record each run's end.
    pub agent_exe: PathBuf,
}

impl Paths {
    fn dropin_dir(&self, persistent: bool, unit: &str) -> PathBuf {
        let base = if persistent {
            &self.unit_dir
        } else {
            &self.runtime_unit_dir
        };
        base.join(format!("{unit}.d"))
    }

    fn experiment_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("experiments").join(id)
    }
}

/// Decides whether a new experiment may start now (the thermal guard).
pub trait Admission: Send + Sync {
    /// `Err(reason)` when new work must be refused.
    fn admit(&self) -> Result<(), String>;
}

pub struct Experiments {
    systemd: Systemd,
    store: Store,
    paths: Paths,
    admission: Arc<dyn Admission>,
    ops: Mutex<()>,
    records: Mutex<()>,
    last: std::sync::Mutex<HashMap<String, Status>>,
    latest: std::sync::Mutex<Latest>,
    events: broadcast::Sender<Event>,
}

/// The status each experiment's latest refresh derived, for the sampler:
/// an experiment that is not active changes only through a unit signal (or
/// a call of the agent's), which refreshes it, so the sampler takes it from
/// here instead of asking systemd on every sample.
///
/// Refreshes may overlap; each takes a sequence number before it reads
/// systemd and a status replaces one only if it was read later, so a slow
/// refresh never puts back an older state.
#[derive(Debug, Default)]
struct Latest {
    seq: u64,
    entries: BTreeMap<String, LatestEntry>,
}

#[derive(Debug)]
struct LatestEntry {
    seq: u64,
    /// `None` until a refresh after the record changed.
    status: Option<Status>,
}

/// What a sample reads from systemd and what it takes as it is.
#[derive(Debug, Default)]
struct Plan {
    read: Vec<String>,
    cached: Vec<Status>,
}

impl Latest {
    /// The sequence number of a refresh about to read systemd.
    fn begin(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The experiment's record changed and no refresh has read it since:
    /// the next sample reads it.
    fn track(&mut self, id: &str) {
        let seq = self.begin();
        self.entries
            .insert(id.to_owned(), LatestEntry { seq, status: None });
    }

    /// Keeps `st`, read by the refresh numbered `seq`, unless a later one
    /// already gave a status.
    fn put(&mut self, seq: u64, st: &Status) {
        let entry = self
            .entries
            .entry(st.id.clone())
            .or_insert(LatestEntry { seq, status: None });
        if seq >= entry.seq {
            entry.seq = seq;
            entry.status = Some(st.clone());
        }
    }

    fn remove(&mut self, id: &str) {
        self.entries.remove(id);
    }

    /// Active experiments, and those whose state is not known, are read
    /// from systemd (their usage changes, and an end must be seen even if a
    /// signal was lost); the others are taken from their latest status.
    fn plan(&self) -> Plan {
        let mut plan = Plan::default();
        for (id, entry) in &self.entries {
            match &entry.status {
                Some(st) if !st.state.is_active() && st.state != State::Unknown => {
                    plan.cached.push(st.clone())
                }
                _ => plan.read.push(id.clone()),
            }
        }
        plan
    }
}

/// Carries out a plan: `read` for each experiment that needs systemd, the
/// cached statuses for the others, in the order of the ids. An experiment
/// removed meanwhile is left out.
async fn sample_by<F, Fut>(plan: Plan, mut read: F) -> Result<Vec<Status>>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Status>>,
{
    let mut out = plan.cached;
    for id in plan.read {
        match read(id).await {
            Ok(st) => out.push(st),
            Err(ExperimentError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

use fleet_proto::unix::now_us;

fn write_atomic(path: &Path, content: &[u8]) -> Result<bool> {
    if std::fs::read(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    let io = |source| ExperimentError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(true)
}

fn remove_dir(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ExperimentError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

impl Experiments {
    pub fn new(
        systemd: Systemd,
        store: Store,
        paths: Paths,
        admission: Arc<dyn Admission>,
    ) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Experiments {
            systemd,
            store,
            paths,
            admission,
            ops: Mutex::new(()),
            records: Mutex::new(()),
            last: std::sync::Mutex::new(HashMap::new()),
            latest: std::sync::Mutex::new(Latest::default()),
            events,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn systemd(&self) -> &Systemd {
        &self.systemd
    }

    fn unit(id: &ExperimentId) -> String {
        unit_file::instance_unit_name(id)
    }

    fn parse_id(id: &str) -> Result<ExperimentId> {
        ExperimentId::new(id).map_err(|e| ExperimentError::InvalidId {
            id: id.to_owned(),
            source: e,
        })
    }

    fn spec_of(rec: &Record) -> Result<ExperimentSpec> {
        let wire = v1::ExperimentSpec::decode(rec.spec.as_slice())
            .map_err(|_| ExperimentError::NoSpec { id: rec.id.clone() })?;
        ExperimentSpec::try_from(&wire).map_err(|_| ExperimentError::NoSpec { id: rec.id.clone() })
    }

    /// Writes the config file and the drop-in where `autostart` says, and
    /// removes the drop-in from the other place. True when a file changed.
    fn write_files(&self, spec: &ExperimentSpec, epoch: u64, autostart: bool) -> Result<bool> {
        let id = spec.id().as_str();
        let unit = Self::unit(spec.id());
        let config_path = match spec.config() {
            Some(cfg) => {
                let path = self.paths.experiment_dir(id).join(cfg.name().as_str());
                write_atomic(&path, cfg.content())?;
                Some(path)
            }
            None => None,
        };
        let dropin = unit_file::render_dropin(spec, config_path.as_deref(), epoch);
        let keep = self.paths.dropin_dir(autostart, &unit);
        let drop = self.paths.dropin_dir(!autostart, &unit);
        let mut changed = write_atomic(&keep.join(DROPIN_NAME), dropin.as_bytes())?;
        let recorder = unit_file::render_exit_recorder(
            &self.paths.agent_exe,
            &self
                .paths
                .experiment_dir(id)
                .join(crate::exit_record::FILE_NAME),
        );
        std::fs::create_dir_all(self.paths.experiment_dir(id)).map_err(|source| {
            ExperimentError::Io {
                path: self.paths.experiment_dir(id),
                source,
            }
        })?;
        changed |= write_atomic(&keep.join(EXIT_DROPIN_NAME), recorder.as_bytes())?;
        if drop.exists() {
            remove_dir(&drop)?;
            changed = true;
        }
        Ok(changed)
    }

    /// Applies changed unit files to a unit systemd has loaded. A unit that
    /// is not loaded reads its files when started: no reload needed.
    async fn apply_files(&self, unit: &str) -> Result<()> {
        if let Some(p) = self.systemd.props(unit).await? {
            if !p.is_gone() {
                self.systemd.reload().await?;
            }
        }
        Ok(())
    }

    async fn wait_inactive(&self, id: &str, unit: &str, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match self.systemd.props(unit).await? {
                None => return Ok(()),
                Some(p) if matches!(p.active_state.as_str(), "inactive" | "failed") => {
                    return Ok(())
                }
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ExperimentError::StopTimeout {
                    id: id.to_owned(),
                    waited: limit,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn start(&self, wire: &v1::ExperimentSpec, epoch: u64) -> Result<Status> {
        let spec = ExperimentSpec::try_from(wire)?;
        let id = spec.id().as_str().to_owned();
        let unit = Self::unit(spec.id());
        let _ops = self.ops.lock().await;
        let existing = self.store.get(&id)?;
        let props = self.systemd.props(&unit).await?;
        let running = props.as_ref().is_some_and(|p| {
            matches!(
                p.active_state.as_str(),
                "active" | "activating" | "reloading"
            )
        });
        let epoch = match (&existing, epoch) {
            (Some(r), 0) if running => {
                let _ = r;
                return self.refresh(&id).await;
            }
            (Some(r), 0) => r.epoch + 1,
            (Some(r), e) if e < r.epoch => {
                return Err(ExperimentError::StaleEpoch {
                    id,
                    held: r.epoch,
                    requested: e,
                })
            }
            // The same placement again: one instance. A start of this epoch
            // that never reached systemd (an error half-way) is done again.
            (Some(r), e) if e == r.epoch && (running || r.last_outcome.is_some()) => {
                return self.refresh(&id).await
            }
            (_, 0) => 1,
            (_, e) => e,
        };
        if let Err(reason) = self.admission.admit() {
            return Err(ExperimentError::Refused { reason });
        }
        if running {
            // A newer placement replaces the copy that runs.
            let old_timeout = existing
                .as_ref()
                .and_then(|r| Self::spec_of(r).ok())
                .map(|s| s.lifecycle().stop_timeout())
                .unwrap_or(Duration::from_secs(90));
            if let Some(r) = &existing {
                let mut r = r.clone();
                r.desired = Desired::Stopped;
                self.store.put(&r).await?;
            }
            self.systemd.stop(&unit).await?;
            self.wait_inactive(&id, &unit, old_timeout + STOP_GRACE)
                .await?;
        }
        let autostart = spec.lifecycle().autostart();
        let changed = self.write_files(&spec, epoch, autostart)?;
        let mut rec = existing.unwrap_or(Record {
            version: RECORD_VERSION,
            id: id.clone(),
            spec: Vec::new(),
            epoch,
            autostart,
            restart_on_failure: true,
            desired: Desired::Running,
            crashes_before: 0,
            crashes_in_run: 0,
            disruptions: 0,
            board_restarts: 0,
            run_started_us: 0,
            last_outcome: None,
            superseded_invocation: None,
        });
        rec.spec = wire.encode_to_vec();
        rec.epoch = epoch;
        rec.autostart = autostart;
        rec.restart_on_failure = spec.lifecycle().restarts_on_failure();
        rec.desired = Desired::Running;
        rec.new_run(self.invocation(&id, props.as_ref()).as_deref());
        {
            let _r = self.records.lock().await;
            self.store.put(&rec).await?;
            self.latest.lock().expect("not poisoned").track(&id);
        }
        if changed {
            self.apply_files(&unit).await?;
        }
        self.systemd.reset_failed(&unit).await?;
        if autostart {
            self.systemd.enable(&unit).await?;
        } else {
            self.systemd.disable(&unit).await?;
        }
        self.systemd.start(&unit).await?;
        self.systemd.hold(&unit).await?;
        tracing::info!(experiment = %id, epoch, "started");
        self.refresh(&id).await
    }

    async fn record(&self, id: &str) -> Result<Record> {
        self.store
            .get(id)?
            .ok_or_else(|| ExperimentError::NotFound { id: id.to_owned() })
    }

    async fn set_desired(&self, id: &str, desired: Desired) -> Result<Record> {
        let _r = self.records.lock().await;
        let mut rec = self.record(id).await?;
        if desired == Desired::Disrupted && rec.desired != Desired::Disrupted {
            rec.disruptions += 1;
        }
        rec.desired = desired;
        self.store.put(&rec).await?;
        Ok(rec)
    }

    /// Graceful stop: SIGTERM, then SIGKILL after the stop timeout.
    /// `disruption` marks a stop by the board (thermal, drain), which never
    /// counts against the crash budget.
    pub async fn stop(&self, id: &str, disruption: bool) -> Result<Status> {
        let eid = Self::parse_id(id)?;
        let _ops = self.ops.lock().await;
        self.stop_locked(&eid, disruption).await
    }

    /// A stop of one run, the one started with `epoch` (the controller's
    /// stops are all of this kind). A stop for another epoch is refused: a
    /// stop decided for run N must never end run N+1 of the same id. A run
    /// of this epoch that already ended on its own (it succeeded, failed,
    /// or is on its way out) is left as it ended: stopping it would turn its
    /// outcome into `stopped`.
    pub async fn stop_epoch(&self, id: &str, epoch: u64) -> Result<Status> {
        let eid = Self::parse_id(id)?;
        let unit = Self::unit(&eid);
        let _ops = self.ops.lock().await;
        let rec = self.record(id).await?;
        if rec.epoch != epoch {
            return Err(ExperimentError::OtherEpoch {
                id: id.to_owned(),
                held: rec.epoch,
                requested: epoch,
            });
        }
        let props = self.systemd.props(&unit).await?;
        let running = props.as_ref().is_some_and(|p| {
            !p.is_gone()
                && matches!(
                    p.active_state.as_str(),
                    "active" | "activating" | "reloading"
                )
        });
        if !running && rec.desired == Desired::Running && rec.superseded_invocation.is_none() {
            tracing::info!(experiment = %id, epoch, "stop of a run that already ended: left as it ended");
            return self.refresh(id).await;
        }
        self.stop_locked(&eid, false).await
    }

    async fn stop_locked(&self, eid: &ExperimentId, disruption: bool) -> Result<Status> {
        let id = eid.as_str();
        let unit = Self::unit(eid);
        let desired = if disruption {
            Desired::Disrupted
        } else {
            Desired::Stopped
        };
        let rec = self.set_desired(id, desired).await?;
        if rec.autostart {
            // A stopped experiment does not come back at the next boot.
            self.systemd.disable(&unit).await?;
        }
        self.systemd.stop(&unit).await?;
        tracing::info!(experiment = %id, disruption, "stopping");
        self.refresh(id).await
    }

    pub async fn restart(&self, id: &str) -> Result<Status> {
        let eid = Self::parse_id(id)?;
        let unit = Self::unit(&eid);
        let _ops = self.ops.lock().await;
        if let Err(reason) = self.admission.admit() {
            return Err(ExperimentError::Refused { reason });
        }
        let mut rec = self.record(id).await?;
        let spec = Self::spec_of(&rec)?;
        // Files in the runtime directory are gone after a reboot.
        if self.write_files(&spec, rec.epoch, rec.autostart)? {
            self.apply_files(&unit).await?;
        }
        rec.desired = Desired::Running;
        let props = self.systemd.props(&unit).await?;
        rec.new_run(self.invocation(id, props.as_ref()).as_deref());
        {
            let _r = self.records.lock().await;
            self.store.put(&rec).await?;
        }
        self.systemd.reset_failed(&unit).await?;
        if rec.autostart {
            self.systemd.enable(&unit).await?;
        }
        self.systemd.restart(&unit).await?;
        self.systemd.hold(&unit).await?;
        self.refresh(id).await
    }

    /// Stops, resets the failed state, disables and deletes the board-side
    /// files. True when there was something to remove.
    pub async fn remove(&self, id: &str) -> Result<bool> {
        let eid = Self::parse_id(id)?;
        let unit = Self::unit(&eid);
        let _ops = self.ops.lock().await;
        let rec = self.store.get(id)?;
        let props = self.systemd.props(&unit).await?;
        let existed = rec.is_some() || props.as_ref().is_some_and(|p| !p.is_gone());
        if !existed {
            return Ok(false);
        }
        let timeout = rec
            .as_ref()
            .and_then(|r| Self::spec_of(r).ok())
            .map(|s| s.lifecycle().stop_timeout())
            .unwrap_or(Duration::from_secs(90));
        if rec.is_some() {
            self.set_desired(id, Desired::Stopped).await?;
        }
        self.systemd.stop(&unit).await?;
        self.wait_inactive(id, &unit, timeout + STOP_GRACE).await?;
        self.systemd.disable(&unit).await?;
        self.systemd.reset_failed(&unit).await?;
        self.systemd.release(&unit).await;
        remove_dir(&self.paths.dropin_dir(true, &unit))?;
        remove_dir(&self.paths.dropin_dir(false, &unit))?;
        remove_dir(&self.paths.experiment_dir(id))?;
        {
            // Under the records lock: a refresh either sees the record and
            // is done before, or finds it gone and keeps no status.
            let _r = self.records.lock().await;
            self.store.remove(id).await?;
            self.last.lock().expect("not poisoned").remove(id);
            self.latest.lock().expect("not poisoned").remove(id);
        }
        tracing::info!(experiment = %id, "removed");
        Ok(true)
    }

    pub async fn set_autostart(&self, id: &str, enabled: bool) -> Result<Status> {
        let eid = Self::parse_id(id)?;
        let unit = Self::unit(&eid);
        let _ops = self.ops.lock().await;
        let mut rec = self.record(id).await?;
        let spec = Self::spec_of(&rec)?;
        self.write_files(&spec, rec.epoch, enabled)?;
        rec.autostart = enabled;
        {
            let _r = self.records.lock().await;
            self.store.put(&rec).await?;
        }
        if enabled {
            self.systemd.enable(&unit).await?;
        } else {
            self.systemd.disable(&unit).await?;
        }
        self.refresh(id).await
    }

    /// The experiment's status as systemd reports it now. Reading also
    /// records what the watcher may not have seen yet, so a status never
    /// shows a newer state with older counters.
    pub async fn get(&self, id: &str) -> Result<Status> {
        self.refresh(id).await
    }

    pub async fn list(&self) -> Result<Vec<Status>> {
        let mut out = Vec::new();
        for rec in self.store.list()? {
            match self.refresh(&rec.id).await {
                Ok(st) => out.push(st),
                // Removed while listing.
                Err(ExperimentError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every experiment's status for the sampler, without reading systemd
    /// for experiments that have ended: those whose latest status is active
    /// (or unknown) are refreshed, the others are as their last refresh
    /// left them, which every signal about their unit renews. The cost of a
    /// sample grows with the active experiments, not with every experiment
    /// the board keeps.
    pub async fn sample(&self) -> Result<Vec<Status>> {
        let plan = self.latest.lock().expect("not poisoned").plan();
        sample_by(plan, |id| async move { self.refresh(&id).await }).await
    }

    /// Starts every enabled experiment through the target.
    pub async fn start_all(&self, target: &str) -> Result<Vec<Status>> {
        let _ops = self.ops.lock().await;
        for rec in self.store.list()? {
            if rec.autostart && rec.desired != Desired::Running {
                let mut rec = rec;
                rec.desired = Desired::Running;
                let unit = Self::unit(&Self::parse_id(&rec.id)?);
                let props = self.systemd.props(&unit).await?;
                let current = self.invocation(&rec.id, props.as_ref());
                rec.new_run(current.as_deref());
                self.store.put(&rec).await?;
            }
        }
        // The target's wants are symlinks that enable/disable changed since
        // the manager last read them: let it see the current set.
        self.systemd.reload().await?;
        self.systemd.start(target).await?;
        drop(_ops);
        self.list().await
    }

    /// Stops every experiment, and the target.
    pub async fn stop_all(&self, target: &str) -> Result<Vec<Status>> {
        for rec in self.store.list()? {
            if rec.desired == Desired::Running {
                self.stop(&rec.id, false).await?;
            }
        }
        self.systemd.stop(target).await?;
        self.list().await
    }

    /// Re-reads one experiment from systemd, updates counters and the last
    /// outcome, and emits an event when something a person would notice
    /// changed. Called on every signal about the unit.
    pub async fn refresh(&self, id: &str) -> Result<Status> {
        let eid = Self::parse_id(id)?;
        let unit = Self::unit(&eid);
        let seq = self.latest.lock().expect("not poisoned").begin();
        let props = self.systemd.props(&unit).await?;
        if let Some(p) = &props {
            tracing::debug!(
                experiment = %id,
                active = %p.active_state,
                sub = %p.sub_state,
                result = %p.result,
                code = p.exec_main_code,
                status = p.exec_main_status,
                restarts = p.n_restarts,
                "unit changed"
            );
        }
        let _r = self.records.lock().await;
        let Some(mut rec) = self.store.get(id)? else {
            return Err(ExperimentError::NotFound { id: id.to_owned() });
        };
        let mut dirty = false;
        let live = props.as_ref().filter(|p| !p.is_gone());
        if let Some(p) = live.filter(|p| {
            rec.superseded_invocation.is_some()
                && !rec.is_superseded(&p.invocation_id)
                && !p.invocation_id.is_empty()
        }) {
            // systemd started the new run: what it says is this run's now.
            tracing::debug!(experiment = %id, invocation = %p.invocation_id, "new run started");
            rec.superseded_invocation = None;
            dirty = true;
        }
        // Until then its counters and its end are the old run's, which the
        // new run already banked.
        if let Some(p) = live.filter(|p| !rec.is_superseded(&p.invocation_id)) {
            dirty |= rec.observe_crashes(status::crashes_in_run(p, &rec));
            let known = rec.last_outcome.as_ref().is_some_and(|o| {
                o.invocation_id == p.invocation_id
                    && o.result == p.result
                    && o.exec_main_status == p.exec_main_status
            });
            if !known {
                if let Some(mut o) = self.ended(&unit, p) {
                    self.mark_shutdown(&mut rec, &mut o).await;
                    rec.last_outcome = Some(o);
                    dirty = true;
                }
            }
            // An autostart unit the board started again at boot: the run the
            // shutdown interrupted ended with the old invocation, which only
            // systemd's exit record saw. The work starts over: a disruption
            // of the run, and the record says the board restarted it.
            if let Some(o) = self.interrupted_by_boot(id, &rec, p).await {
                tracing::info!(experiment = %id, invocation = %o.invocation_id, "the board started the run over after its shutdown");
                rec.board_restarts += 1;
                rec.disruptions += 1;
                rec.last_outcome = Some(o);
                dirty = true;
            }
            // systemd restarts a unit that hit RuntimeMaxSec like any other
            // failure; max_runtime means the experiment is over, so cancel
            // the pending restart and leave it failed by timeout.
            if p.sub_state == "auto-restart"
                && p.result == "timeout"
                && rec.desired == Desired::Running
            {
                tracing::info!(experiment = %id, "max_runtime reached; not restarting");
                self.systemd.stop(&unit).await?;
            }
        }
        if props.as_ref().is_none_or(|p| p.is_gone()) && rec.desired == Desired::Running {
            // Collected before we saw it end: systemd's own record of it.
            let path = self
                .paths
                .experiment_dir(id)
                .join(crate::exit_record::FILE_NAME);
            if let Some(r) = crate::exit_record::ExitRecord::read(&path) {
                let newer = rec
                    .last_outcome
                    .as_ref()
                    .is_none_or(|o| o.invocation_id != r.invocation_id)
                    && !rec.is_superseded(&r.invocation_id);
                if newer && !r.invocation_id.is_empty() {
                    let killed = r.code == "killed" && r.status == "KILL"
                        || r.code == "exited" && r.status == "137";
                    let oom = r.result == "oom-kill"
                        || killed && crate::oom::killed_since(&self.paths.kmsg, &unit, 0);
                    let mut o = r.outcome(oom);
                    self.mark_shutdown(&mut rec, &mut o).await;
                    rec.last_outcome = Some(o);
                    rec.superseded_invocation = None;
                    dirty = true;
                }
            }
        }
        if dirty {
            self.store.put(&rec).await?;
        }
        let st = status::derive(&unit, &rec, props.as_ref());
        self.latest.lock().expect("not poisoned").put(seq, &st);
        self.emit(&st);
        Ok(st)
    }

    /// A run that died of a clean-exit signal the agent did not send ended
    /// in the board's shutdown when the manager is stopping, or when it
    /// ended before the manager that runs now started (the agent was down
    /// with the board). Such a run is a disruption, counted once.
    ///
    /// A run that ends, however, while the manager is stopping (a program
    /// that traps the shutdown's SIGTERM and exits) is one too: its work was
    /// cut short, and it is requeued rather than taken for its own end.
    async fn mark_shutdown(&self, rec: &mut Record, o: &mut crate::store::Outcome) {
        if rec.desired != Desired::Running {
            return;
        }
        let state = self.systemd.system_state().await;
        let stopping = matches!(state.as_deref(), Ok("stopping"));
        let signal = status::unrequested_signal(o);
        if !signal && !stopping {
            return;
        }
        let before_boot = self
            .systemd
            .started_us()
            .await
            .is_some_and(|boot| o.ended_us < boot);
        // A manager that cannot be asked is taken to be going down when the
        // run died of a signal: that is what a shutdown looks like from here.
        o.shutdown = stopping || signal && (before_boot || state.is_err());
        if o.shutdown {
            rec.disruptions += 1;
        }
        tracing::info!(
            experiment = %rec.id,
            code = o.exec_main_code,
            status = o.exec_main_status,
            shutdown = o.shutdown,
            "the run ended while fleet wanted it running"
        );
    }

    /// The end of an earlier invocation of this run that the board's shutdown
    /// interrupted, seen now that the unit runs again under another
    /// invocation (autostart at boot): what systemd's exit record says, when
    /// it died of a signal the agent did not send before the current boot
    /// and the agent has not taken it in yet.
    async fn interrupted_by_boot(
        &self,
        id: &str,
        rec: &Record,
        p: &UnitProps,
    ) -> Option<crate::store::Outcome> {
        if rec.desired != Desired::Running
            || !matches!(
                p.active_state.as_str(),
                "active" | "activating" | "reloading"
            )
        {
            return None;
        }
        let path = self
            .paths
            .experiment_dir(id)
            .join(crate::exit_record::FILE_NAME);
        let r = crate::exit_record::ExitRecord::read(&path)?;
        let seen = rec
            .last_outcome
            .as_ref()
            .is_some_and(|o| o.invocation_id == r.invocation_id);
        if r.invocation_id.is_empty()
            || r.invocation_id == p.invocation_id
            || seen
            || rec.is_superseded(&r.invocation_id)
            || r.at_us < rec.run_started_us
        {
            return None;
        }
        let mut o = r.outcome(false);
        let boot = self.systemd.started_us().await?;
        if !status::unrequested_signal(&o) || o.ended_us >= boot {
            return None;
        }
        o.shutdown = true;
        Some(o)
    }

    /// The unit's current or last invocation: systemd's, or, for a unit
    /// it has collected, the one its exit record names.
    fn invocation(&self, id: &str, props: Option<&UnitProps>) -> Option<String> {
        match props.filter(|p| !p.is_gone()) {
            Some(p) => Some(p.invocation_id.clone()),
            None => crate::exit_record::ExitRecord::read(
                &self
                    .paths
                    .experiment_dir(id)
                    .join(crate::exit_record::FILE_NAME),
            )
            .map(|r| r.invocation_id),
        }
    }

    /// The outcome of the invocation that just ended, if it ended.
    fn ended(&self, unit: &str, p: &UnitProps) -> Option<crate::store::Outcome> {
        let ended = matches!(p.active_state.as_str(), "inactive" | "failed")
            || p.sub_state == "auto-restart";
        if !ended || p.exec_main_code == 0 {
            return None;
        }
        let killed = p.exec_main_code == status::CLD_KILLED && p.exec_main_status == libc::SIGKILL
            || p.exec_main_code == status::CLD_EXITED && p.exec_main_status == 137;
        let oom = p.result == "oom-kill"
            || killed
                && crate::oom::killed_since(
                    &self.paths.kmsg,
                    unit,
                    p.exec_main_start_mono_us.unwrap_or(0),
                );
        Some(status::outcome_of(p, oom, now_us() as u64))
    }

    fn emit(&self, st: &Status) {
        let mut last = self.last.lock().expect("not poisoned");
        let prev = last.get(&st.id);
        let change = describe(prev, st);
        if let Some(change) = change {
            last.insert(st.id.clone(), st.clone());
            let _ = self.events.send(Event {
                status: st.clone(),
                change,
                timestamp_us: now_us(),
            });
        }
    }

    /// On start: holds every unit the store knows and adopts instances that
    /// systemd runs but the store does not, so nothing that runs is lost.
    pub async fn adopt(&self, pattern: &str) -> Result<usize> {
        let mut n = 0;
        for unit in self.systemd.list(pattern).await? {
            let Some(id) = unit_file::parse_instance_unit(&unit) else {
                continue;
            };
            if self.store.get(id.as_str())?.is_none() {
                tracing::warn!(experiment = %id.as_str(), "adopting a unit the store does not know");
                self.store
                    .put(&Record {
                        version: RECORD_VERSION,
                        id: id.as_str().to_owned(),
                        spec: Vec::new(),
                        epoch: 0,
                        autostart: false,
                        restart_on_failure: true,
                        desired: Desired::Running,
                        crashes_before: 0,
                        crashes_in_run: 0,
                        disruptions: 0,
                        board_restarts: 0,
                        run_started_us: 0,
                        last_outcome: None,
                        superseded_invocation: None,
                    })
                    .await?;
            }
        }
        for rec in self.store.list()? {
            let eid = Self::parse_id(&rec.id)?;
            let unit = Self::unit(&eid);
            if self.systemd.props(&unit).await?.is_some() {
                self.systemd.hold(&unit).await?;
            }
            self.refresh(&rec.id).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Follows systemd's signals until the bus goes away. A transition comes
    /// as a burst of signals (one per interface and job); each burst is
    /// folded into one refresh per experiment.
    pub async fn watch(self: Arc<Self>) -> Result<()> {
        use futures_util::FutureExt;
        let mut changes = Box::pin(self.systemd.unit_changes().await?);
        // What changed after the agent adopted its units and before it
        // listened came with no signal it heard: read everything once.
        if let Err(e) = self.list().await {
            tracing::warn!(error = %e, "cannot refresh experiments");
        }
        while let Some(first) = changes.next().await {
            let mut units = vec![first];
            while let Some(Some(more)) = changes.next().now_or_never() {
                if !units.contains(&more) {
                    units.push(more);
                }
            }
            for unit in units {
                let Some(id) = unit_file::parse_instance_unit(&unit) else {
                    continue;
                };
                match self.refresh(id.as_str()).await {
                    Ok(_) | Err(ExperimentError::NotFound { .. }) => {}
                    Err(e) => {
                        tracing::warn!(experiment = %id.as_str(), error = %e, "cannot refresh")
                    }
                }
            }
        }
        Ok(())
    }

    /// True when any experiment is active (for the thermal guard's stop-all).
    pub async fn active_ids(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for st in self.list().await? {
            if st.state.is_active() {
                out.push(st.id);
            }
        }
        Ok(out)
    }
}

/// A short description of what changed, or `None` when nothing a person
/// would notice did.
fn describe(prev: Option<&Status>, st: &Status) -> Option<String> {
    let same = prev.is_some_and(|p| {
        p.state == st.state
            && p.sub_state == st.sub_state
            && p.main_pid == st.main_pid
            && p.restarts == st.restarts
            && p.crashes_total == st.crashes_total
            && p.invocation_id == st.invocation_id
            && p.autostart == st.autostart
    });
    if same {
        return None;
    }
    Some(match st.state {
        State::Restarting => format!(
            "crashed ({}), restart {} pending",
            if st.failure_message.is_empty() {
                st.result.clone()
            } else {
                st.failure_message.clone()
            },
            st.restarts + 1
        ),
        State::Failed => format!("failed: {}", st.failure_message),
        State::Running if st.main_pid != 0 => format!("running (pid {})", st.main_pid),
        s => s.as_str().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Failure;
    use std::cell::RefCell;

    fn status(id: &str, state: State) -> Status {
        Status {
            id: id.to_owned(),
            unit: format!("brain-experiment@{id}.service"),
            state,
            active_state: String::new(),
            sub_state: String::new(),
            result: String::new(),
            main_pid: 0,
            exit_code: None,
            exit_signal: None,
            failure: Failure::None,
            failure_message: String::new(),
            memory_current: None,
            memory_peak: None,
            memory_max: None,
            cpu_usage_nsec: None,
            active_since_us: None,
            restarts: 0,
            crashes_total: 0,
            disruptions_total: 0,
            board_restarts: 0,
            epoch: 1,
            autostart: false,
            invocation_id: String::new(),
        }
    }

    fn refreshed(latest: &mut Latest, st: Status) {
        let seq = latest.begin();
        latest.put(seq, &st);
    }

    /// Samples `latest` with a reader that answers from `systemd` and counts
    /// its reads.
    fn sample(latest: &Latest, systemd: &HashMap<String, Status>) -> (Vec<Status>, Vec<String>) {
        let reads = RefCell::new(Vec::new());
        let out = futures_util::FutureExt::now_or_never(sample_by(latest.plan(), |id| {
            reads.borrow_mut().push(id.clone());
            let st = systemd.get(&id).cloned();
            async move { st.ok_or(ExperimentError::NotFound { id }) }
        }))
        .expect("no await pending")
        .expect("sampled");
        (out, reads.into_inner())
    }

    #[test]
    fn a_sample_reads_systemd_only_for_active_experiments() {
        let mut latest = Latest::default();
        let mut systemd = HashMap::new();
        let finished = [
            State::Succeeded,
            State::Failed,
            State::Stopped,
            State::Disrupted,
        ];
        for i in 0..200 {
            let st = status(&format!("done-{i:03}"), finished[i % finished.len()]);
            refreshed(&mut latest, st.clone());
            systemd.insert(st.id.clone(), st);
        }
        refreshed(&mut latest, status("run", State::Running));
        let mut now = status("run", State::Running);
        now.memory_current = Some(4096);
        now.cpu_usage_nsec = Some(1_000);
        systemd.insert("run".into(), now.clone());

        let (out, reads) = sample(&latest, &systemd);
        assert_eq!(reads, ["run"], "one systemd read per active experiment");
        assert_eq!(out.len(), 201);
        assert!(out.windows(2).all(|w| w[0].id < w[1].id), "in id order");
        let run = out.iter().find(|s| s.id == "run").expect("listed");
        assert_eq!(run, &now, "the active experiment's usage is current");
        for (i, st) in out.iter().filter(|s| s.id != "run").enumerate() {
            assert_eq!(st.state, finished[i % finished.len()], "{}", st.id);
        }
    }

    #[test]
    fn an_ending_seen_by_a_refresh_stops_the_reads() {
        let mut latest = Latest::default();
        refreshed(&mut latest, status("a", State::Running));
        // The unit's signal refreshed it: it failed.
        refreshed(&mut latest, status("a", State::Failed));
        let systemd = HashMap::from([("a".to_owned(), status("a", State::Failed))]);
        let (out, reads) = sample(&latest, &systemd);
        assert!(reads.is_empty(), "{reads:?}");
        assert_eq!(out[0].state, State::Failed);
    }

    #[test]
    fn a_slow_refresh_never_puts_back_an_older_state() {
        let mut latest = Latest::default();
        refreshed(&mut latest, status("a", State::Running));
        // The sampler reads systemd (still running), then the unit ends and
        // its signal's refresh reads and stores the end first.
        let slow = latest.begin();
        refreshed(&mut latest, status("a", State::Stopped));
        latest.put(slow, &status("a", State::Running));
        let plan = latest.plan();
        assert!(plan.read.is_empty());
        assert_eq!(plan.cached[0].state, State::Stopped);
    }

    #[test]
    fn unknown_changed_and_new_records_are_read() {
        let mut latest = Latest::default();
        refreshed(&mut latest, status("done", State::Succeeded));
        refreshed(&mut latest, status("lost", State::Unknown));
        refreshed(&mut latest, status("again", State::Failed));
        // A start stored a new run's record; its refresh has not come yet,
        // and one that began before the change must not count.
        let before = latest.begin();
        latest.track("again");
        latest.put(before, &status("again", State::Failed));
        latest.track("new");
        let mut plan = latest.plan();
        plan.read.sort();
        assert_eq!(plan.read, ["again", "lost", "new"]);
        assert_eq!(plan.cached.len(), 1);
        latest.remove("done");
        assert!(
            latest.plan().cached.is_empty(),
            "a removed experiment is gone"
        );
    }

    #[test]
    fn an_experiment_removed_while_sampling_is_left_out() {
        let mut latest = Latest::default();
        refreshed(&mut latest, status("a", State::Running));
        refreshed(&mut latest, status("b", State::Stopped));
        let (out, reads) = sample(&latest, &HashMap::new());
        assert_eq!(reads, ["a"]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, "b");
    }
}
