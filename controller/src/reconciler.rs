//! The reconciler: one task that owns every decision. It runs on a tick,
//! when poked, and on each report from an agent link; it re-reads stored
//! state and decides idempotently.
//!
//! - what the agents say → experiment phases and run records;
//! - silent nodes → unreachable (experiments `unknown`), then lost
//!   (experiments requeued with a new epoch elsewhere);
//! - a returning node or a restarted controller → adopt what runs with the
//!   current epoch, stop stale copies, requeue what vanished;
//! - the queue → placements (each with a new epoch, flushed) → dispatch.
//!
//! **Invariant.** Nothing that runs with the current epoch is ever
//! restarted by the controller.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::spec::{ExperimentId, NodeName};
use fleet_proto::v1::{self, ExperimentState};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::links::{Links, Report};
use crate::model::{
    Disruption, EventKind, Failure, NewEvent, Phase, RunEnd, RunObservation, RunOutcome, RunStart,
};
use crate::scheduler::{self, Link, ModeInfo, NodeView, Policy};
use crate::store::{
    Batched, ExperimentRecord, RecordCache, RunChange, Store, StoreError, Transition, Transitioned,
};

const ACTOR: &str = "controller";
/// Starts of one placement that may be cut off by their connection before
/// the placement goes back to the queue as not started.
const MAX_STARTS_CUT_OFF: u32 = 5;
/// How long a start may take on a board before the placement is retried.
const DISPATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the controller stopped an experiment; kept in the phase reason so a
/// restarted controller knows what a `stopped` report means.
pub const REASON_CANCEL: &str = "cancel: ";
pub const REASON_STOP: &str = "stop: ";
pub const REASON_DRAIN: &str = "requeue: drained";
pub const REASON_RESTART: &str = "requeue: restart";

pub use crate::links::{node_live, placement_live};
pub use crate::live::Settings;

/// Results of calls the reconciler made without waiting.
#[derive(Debug)]
pub enum Done {
    Started {
        id: ExperimentId,
        node: String,
        epoch: u64,
        /// The link's connection the start was sent on.
        connection: u64,
        result: Result<v1::ExperimentStatus, tonic::Status>,
    },
}

/// A call that failed because its connection failed (cut off mid-call, or
/// no connection to be had), not because the board answered so: the board
/// may or may not have done what was asked. A status the board sent has
/// no source; one made on this side from a transport error has.
fn connection_failed(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
    ) && std::error::Error::source(status).is_some()
}

pub struct Reconciler {
    store: Store,
    links: Arc<Links>,
    settings: Settings,
    poke: Arc<Notify>,
    done_tx: mpsc::Sender<Done>,
    started: Instant,
    /// Nodes already reported unreachable / lost, so each is said once.
    said_unreachable: BTreeSet<String>,
    said_lost: BTreeSet<String>,
    /// Dispatches in flight, so a pass does not dispatch twice.
    in_flight: BTreeSet<(String, u64)>,
    /// Starts cut off by their connection, per placement (experiment,
    /// epoch); see [`MAX_STARTS_CUT_OFF`].
    cut_off: HashMap<(String, u64), u32>,
    /// The power mode a dispatch switched the board to before starting the
    /// placement (experiment, epoch): the mode its run starts in, whether
    /// the board's news of the switch arrived before the start or not.
    switched: Arc<Mutex<HashMap<(String, u64), v1::PowerMode>>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Records decoded by the last pass's views.
    records: RecordCache,
}

fn failure_of(st: &v1::ExperimentStatus) -> Option<Failure> {
    use v1::FailureReason as F;
    match st.failure() {
        F::None => None,
        F::ExitCode => Some(Failure::ExitCode),
        F::Signal => Some(Failure::Signal),
        F::OomKill => Some(Failure::OomKill),
        F::Timeout => Some(Failure::Timeout),
        F::StartLimit => Some(Failure::StartLimit),
        F::CoreDump => Some(Failure::CoreDump),
        F::Resources => Some(Failure::Resources),
        F::Other => Some(Failure::Other),
    }
}

impl Reconciler {
    pub fn new(
        store: Store,
        links: Arc<Links>,
        settings: Settings,
        poke: Arc<Notify>,
    ) -> (Self, mpsc::Receiver<Done>) {
        let (done_tx, done_rx) = mpsc::channel(1024);
        (
            Reconciler {
                store,
                links,
                settings,
                poke,
                done_tx,
                started: Instant::now(),
                said_unreachable: BTreeSet::new(),
                said_lost: BTreeSet::new(),
                in_flight: BTreeSet::new(),
                cut_off: HashMap::new(),
                switched: Arc::default(),
                metrics: Arc::default(),
                records: RecordCache::default(),
            },
            done_rx,
        )
    }

    /// Counts placements into `metrics` (served by [`crate::metrics`]).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub async fn run(
        mut self,
        mut reports: mpsc::Receiver<Report>,
        mut done: mpsc::Receiver<Done>,
    ) {
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let poke = self.poke.clone();
        loop {
            let mut dones = Vec::new();
            tokio::select! {
                _ = tick.tick() => {}
                _ = poke.notified() => {}
                Some(r) = reports.recv() => self.on_report(r).await,
                Some(d) = done.recv() => dones.push(d),
            }
            // Drain whatever else arrived, then decide once.
            while let Ok(r) = reports.try_recv() {
                self.on_report(r).await;
            }
            while let Ok(d) = done.try_recv() {
                dones.push(d);
            }
            self.on_dones(dones).await;
            self.write_heat().await;
            if let Err(e) = self.health().await {
                tracing::error!(error = %e, "node health pass failed");
            }
            if let Err(e) = self.schedule().await {
                tracing::error!(error = %e, "scheduling pass failed");
            }
        }
    }

    /// What the scheduler sees of every node.
    pub fn views(store: &Store, links: &Links, s: &Settings) -> Result<Vec<NodeView>, StoreError> {
        let now = Instant::now();
        let live = links.all_live();
        let config = crate::live::ViewConfig {
            slots_per_node: s.slots_per_node,
        };
        views_with(store, &config, |name| {
            live.get(name.as_str()).map(|l| placement_live(l, now, s))
        })
    }

    async fn schedule(&mut self) -> Result<(), StoreError> {
        let pending = self.store.pending()?;
        if pending.is_empty() {
            return self.redispatch_placing().await;
        }
        let views = {
            let now = Instant::now();
            let live = self.links.all_live();
            let s = &self.settings;
            let config = crate::live::ViewConfig {
                slots_per_node: s.slots_per_node,
            };
            views_cached(&self.store, &config, &mut self.records, |name| {
                live.get(name.as_str()).map(|l| placement_live(l, now, s))
            })?
        };
        let policy = self.store.policy()?.map(|p| p.policy).unwrap_or_default();
        // What a pass stores for Explain: the nodes that matter and counts
        // for the rest (a full table per experiment is for people asking).
        let decisions = scheduler::plan_with(&pending, &views, &policy, scheduler::Detail::Compact);
        let switches: HashMap<ExperimentId, ModeInfo> = decisions
            .iter()
            .filter_map(|d| match &d.outcome {
                scheduler::Outcome::Placed {
                    switch_to: Some(m), ..
                } => Some((d.experiment.clone(), m.clone())),
                _ => None,
            })
            .collect();
        for placed in self
            .store
            .record_pass(&decisions)
            .await?
            .into_iter()
            .flatten()
        {
            let r = &placed.record;
            self.metrics
                .placed(r.runs.is_empty().then(|| r.updated_at - r.submitted_at));
            let id = placed.record.id.clone();
            let node = placed.record.node.clone().expect("placed on a node");
            self.dispatch(id.clone(), node, placed.epoch, switches.get(&id).cloned());
        }
        self.redispatch_placing().await
    }

    /// Experiments placed but not confirmed started (a controller killed
    /// between placement and start): the start is idempotent per epoch.
    async fn redispatch_placing(&mut self) -> Result<(), StoreError> {
        for rec in self.store.experiments()? {
            if rec.phase != Phase::Placing {
                continue;
            }
            let Some(node) = rec.node.clone() else {
                continue;
            };
            let fresh = self.links.live(node.as_str()).is_some_and(|l| l.connected);
            if fresh {
                self.dispatch(rec.id.clone(), node, rec.epoch, None);
            }
        }
        Ok(())
    }

    fn dispatch(&mut self, id: ExperimentId, node: NodeName, epoch: u64, switch: Option<ModeInfo>) {
        let key = (id.as_str().to_owned(), epoch);
        if self.in_flight.contains(&key) {
            return;
        }
        let Some(mut client) = self.links.client(node.as_str()) else {
            tracing::debug!(experiment = %id.as_str(), node = %node.as_str(), "no link to dispatch on");
            return;
        };
        let Ok(Some(spec)) = self.store.spec(&id) else {
            tracing::warn!(experiment = %id.as_str(), "no stored spec to dispatch");
            return;
        };
        tracing::debug!(experiment = %id.as_str(), node = %node.as_str(), epoch, "dispatching");
        let connection = self.links.connection(node.as_str()).unwrap_or_default();
        self.in_flight.insert(key);
        let done = self.done_tx.clone();
        let switched = self.switched.clone();
        tokio::spawn(async move {
            if let Some(mode) = switch {
                match client
                    .set_power_mode(v1::SetPowerModeRequest {
                        mode: mode.id.to_string(),
                        allow_reboot: false,
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        // The board confirmed it runs the mode now.
                        if let Some(m) = r.mode.filter(|_| r.changed && !r.reboot_required) {
                            switched
                                .lock()
                                .expect("not poisoned")
                                .insert((id.as_str().to_owned(), epoch), m);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(experiment = %id.as_str(), node = %node.as_str(), error = %e.message(), "power mode switch before start failed");
                    }
                }
            }
            let call = client.start_experiment(v1::StartExperimentRequest {
                spec: Some(spec.to_proto()),
                epoch,
            });
            // A board that stopped answering: give the placement back; the
            // start is idempotent per epoch if it did arrive.
            let result = match tokio::time::timeout(DISPATCH_TIMEOUT, call).await {
                Ok(r) => r.map(|r| r.into_inner()),
                Err(_) => Err(tonic::Status::deadline_exceeded(
                    "the board did not answer the start in time",
                )),
            };
            let _ = done
                .send(Done::Started {
                    id,
                    node: node.as_str().to_owned(),
                    epoch,
                    connection,
                    result,
                })
                .await;
        });
    }

    /// The results of dispatches. The starts the agents accepted are
    /// recorded together, in one write and one flush
    /// ([`Store::record_transitions`]), each with the agent's crash count
    /// in the same write; the rest (refusals, reports of another kind) one
    /// by one.
    async fn on_dones(&mut self, dones: Vec<Done>) {
        let mut starts = Vec::new();
        let mut rest = Vec::new();
        for d in dones {
            let Done::Started {
                id,
                node,
                epoch,
                connection,
                result,
            } = d;
            let status = match result {
                Ok(status) => status,
                Err(e) => {
                    rest.push(Done::Started {
                        id,
                        node,
                        epoch,
                        connection,
                        result: Err(e),
                    });
                    continue;
                }
            };
            match self.accepted_start(&node, &status) {
                Ok(Some(b)) => {
                    self.in_flight.remove(&(id.as_str().to_owned(), epoch));
                    self.cut_off.remove(&(id.as_str().to_owned(), epoch));
                    tracing::debug!(experiment = %id.as_str(), %node, epoch, ok = true, "dispatch done");
                    starts.push((node, b));
                }
                Ok(None) => rest.push(Done::Started {
                    id,
                    node,
                    epoch,
                    connection,
                    result: Ok(status),
                }),
                Err(e) => {
                    self.in_flight.remove(&(id.as_str().to_owned(), epoch));
                    tracing::warn!(error = %e, "recording a start failed");
                }
            }
        }
        if !starts.is_empty() {
            self.record_starts(starts).await;
        }
        for d in rest {
            self.on_done(d).await;
        }
    }

    /// The write that records an accepted start reported in `st`, when
    /// there is one to make: the experiment is ours on `node` and not yet
    /// in the phase the agent reports. The run starts with it if none is
    /// open, taking the board's reading now; the agent's crash count is
    /// merged in the same write.
    fn accepted_start(
        &self,
        node: &str,
        st: &v1::ExperimentStatus,
    ) -> Result<Option<Batched>, StoreError> {
        let to = match st.state() {
            ExperimentState::Running => Phase::Running,
            ExperimentState::Starting | ExperimentState::Restarting => Phase::Starting,
            _ => return Ok(None),
        };
        let Ok(id) = ExperimentId::new(st.id.clone()) else {
            return Ok(None);
        };
        let Some(rec) = self.store.experiment(&id)? else {
            return Ok(None);
        };
        let ours = rec.node.as_ref().is_some_and(|n| n.as_str() == node) && rec.epoch == st.epoch;
        if !ours
            || !matches!(rec.phase, Phase::Placing | Phase::Unknown | Phase::Starting)
            || rec.phase == to
        {
            return Ok(None);
        }
        let mut t = Transition::new(id, rec.phase, to, ACTOR, "").fenced(rec.epoch);
        if rec.open_run().is_none() {
            let live = self.links.live(node);
            t = t.start_run(self.run_start(&rec, live.as_ref()));
            if let Some((hottest, hot)) = self.reading(node) {
                t = t.heat(hottest, hot);
            }
        }
        Ok(Some(Batched {
            transition: t,
            observe: Some((
                RunObservation {
                    crashes: Some(u64::from(st.restarts)),
                    peak_temp_c: None,
                    throttled: false,
                    board_restarts: Some(st.board_restarts),
                },
                format!("agent/{node}"),
            )),
        }))
    }

    /// Stores accepted starts in one write, then follows the heat of each
    /// run, as [`Reconciler::apply`] and [`Reconciler::transition`] do for
    /// one.
    async fn record_starts(&self, starts: Vec<(String, Batched)>) {
        let batch: Vec<Batched> = starts.iter().map(|(_, b)| b.clone()).collect();
        let results = match self.store.record_transitions(&batch).await {
            Ok(results) => results,
            Err(e) => {
                // Still placing: redispatched (a start is idempotent per
                // epoch), and recorded when the agent answers again.
                tracing::warn!(error = %e, starts = batch.len(), "recording starts failed");
                return;
            }
        };
        for ((node, b), result) in starts.iter().zip(results) {
            let done = match result {
                Ok(done) => done,
                Err(e) => {
                    tracing::warn!(error = %e, "recording a start failed");
                    continue;
                }
            };
            let rec = &done.record;
            if matches!(b.transition.run, RunChange::Start(_)) {
                if let Some(run) = rec.open_run() {
                    self.links.heats().follow(
                        node,
                        rec.id.as_str(),
                        run.epoch,
                        run.peak_temp_c,
                        run.throttled,
                    );
                }
            }
            // A run the controller did not see start (it was down): its
            // heat is followed from what is stored of it.
            let live = self.links.live(node);
            self.follow_heat(node, rec, live.as_ref());
        }
    }

    async fn on_done(&mut self, d: Done) {
        let Done::Started {
            id,
            node,
            epoch,
            connection,
            result,
        } = d;
        self.in_flight.remove(&(id.as_str().to_owned(), epoch));
        tracing::debug!(experiment = %id.as_str(), %node, epoch, ok = result.is_ok(), "dispatch done");
        if result.is_err() {
            self.switched
                .lock()
                .expect("not poisoned")
                .remove(&(id.as_str().to_owned(), epoch));
        }
        let outcome = match result {
            Ok(status) => self.apply(&node, &status).await,
            // The connection failed under the start (an agent restarting,
            // a board going away): the start may have run. The placement
            // stays, with its epoch; the link's reconnection adopts the run
            // or sends the start again (it is idempotent per epoch), and a
            // board silent for the heartbeat timeout gives it back to the
            // queue (`health`). Nothing more goes to the node meanwhile.
            Err(status)
                if connection_failed(&status)
                    && self.start_cut_off(&id, epoch) <= MAX_STARTS_CUT_OFF =>
            {
                tracing::info!(experiment = %id.as_str(), %node, epoch, error = %status.message(), "the connection failed under a start; waiting for the link");
                self.links.connection_lost(&node, connection);
                Ok(())
            }
            Err(status) => {
                self.cut_off.remove(&(id.as_str().to_owned(), epoch));
                let rec = match self.store.experiment(&id) {
                    Ok(Some(r)) if r.epoch == epoch && r.phase == Phase::Placing => r,
                    _ => return,
                };
                // Bad input is final; a refusal (heat, a newer epoch, a
                // board that went away) sends it back to the queue.
                let to = if status.code() == tonic::Code::InvalidArgument {
                    Phase::Failed
                } else {
                    Phase::Queued
                };
                let msg = format!("{node} did not start it: {}", status.message());
                let t = Transition::new(id, rec.phase, to, ACTOR, msg.clone())
                    .fenced(epoch)
                    .end_run(RunEnd::new(RunOutcome::StartFailed, msg));
                self.transition(t).await.map(drop)
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "recording a start failed");
        }
    }

    /// Counts a start of (`id`, `epoch`) cut off by its connection; the
    /// count so far. A placement whose starts keep failing so while its link
    /// looks up goes back to the queue like a refusal.
    fn start_cut_off(&mut self, id: &ExperimentId, epoch: u64) -> u32 {
        // Placements adopted on a reconnection leave their count behind:
        // forget them all now and then rather than keep them for ever.
        if self.cut_off.len() > 4096 {
            self.cut_off.clear();
        }
        let n = self
            .cut_off
            .entry((id.as_str().to_owned(), epoch))
            .or_insert(0);
        *n += 1;
        *n
    }

    async fn on_report(&mut self, r: Report) {
        let result = match r {
            Report::Connected { node, experiments } => self.reconcile(&node, experiments).await,
            Report::Status { node, status } => self.apply(&node, &status).await,
            Report::NodeEvent { node, event } => self.node_event(&node, event).await,
            // Written once the reports are drained (see `write_heat`).
            Report::Heat { .. } => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "handling an agent report failed");
        }
    }

    async fn node_event(&mut self, node: &str, event: v1::NodeEvent) -> Result<(), StoreError> {
        let Ok(name) = NodeName::new(node) else {
            return Ok(());
        };
        let (kind, message) = match event.kind {
            Some(v1::node_event::Kind::Thermal(t)) => {
                (EventKind::NodeThermalChanged, thermal_message(&t))
            }
            Some(v1::node_event::Kind::PowerMode(p)) => (
                EventKind::NodePowerModeChanged,
                format!(
                    "power mode → {} ({})",
                    p.to.map(|m| m.name).unwrap_or_default(),
                    p.reason
                ),
            ),
            _ => return Ok(()),
        };
        self.store
            .append_event(NewEvent::new(kind, format!("agent/{node}"), message).node(name))
            .await
            .map(drop)
    }

    /// A (re)connected agent: adopt, stop stale copies, requeue what vanished.
    async fn reconcile(
        &mut self,
        node: &str,
        on_board: Vec<v1::ExperimentStatus>,
    ) -> Result<(), StoreError> {
        self.said_unreachable.remove(node);
        self.said_lost.remove(node);
        if let Ok(name) = NodeName::new(node) {
            self.store
                .append_event(
                    NewEvent::new(EventKind::NodeConnected, ACTOR, format!("{node} connected"))
                        .node(name),
                )
                .await?;
        }
        let mut seen = BTreeSet::new();
        for st in &on_board {
            seen.insert(st.id.clone());
            self.apply(node, st).await?;
        }
        for rec in self.store.experiments()? {
            let here = rec.node.as_ref().is_some_and(|n| n.as_str() == node);
            if !here || !rec.phase.holds_node() || seen.contains(rec.id.as_str()) {
                continue;
            }
            match rec.phase {
                Phase::Placing => self.dispatch(
                    rec.id.clone(),
                    rec.node.clone().expect("here"),
                    rec.epoch,
                    None,
                ),
                Phase::Stopping => {
                    // It is gone: the stop is done.
                    self.finish_stop(&rec, None).await?;
                }
                _ => {
                    let t = Transition::new(
                        rec.id.clone(),
                        rec.phase,
                        self.disrupted_to(&rec),
                        ACTOR,
                        format!("vanished from {node}"),
                    )
                    .fenced(rec.epoch)
                    .end_run(RunEnd::disrupted(
                        Disruption::NodeLost,
                        format!("vanished from {node}"),
                    ));
                    self.transition(t).await?;
                }
            }
        }
        self.poke.notify_one();
        Ok(())
    }

    fn disrupted_to(&self, rec: &ExperimentRecord) -> Phase {
        if rec.requeue_on_disruption {
            Phase::Queued
        } else {
            Phase::Failed
        }
    }

    /// Stops a copy the fleet no longer wants on `node`: the run of `epoch`
    /// only (the agent refuses the stop if it runs another by then, and
    /// leaves a run that already ended as it ended).
    fn stop_stale(&self, node: &str, id: &str, epoch: u64) {
        let Some(mut client) = self.links.client(node) else {
            return;
        };
        tracing::warn!(%node, experiment = %id, epoch, "stopping a stale copy");
        let id = id.to_owned();
        tokio::spawn(async move {
            if let Err(e) = client
                .stop_experiment(v1::StopExperimentRequest {
                    id: id.clone(),
                    epoch: Some(epoch),
                })
                .await
            {
                tracing::warn!(experiment = %id, error = %e.message(), "stopping a stale copy failed");
            }
        });
    }

    /// What an agent says about one experiment, applied to its record.
    async fn apply(&mut self, node: &str, st: &v1::ExperimentStatus) -> Result<(), StoreError> {
        let Ok(id) = ExperimentId::new(st.id.clone()) else {
            return Ok(());
        };
        tracing::debug!(%node, experiment = %st.id, state = ?st.state(), epoch = st.epoch, "agent reports");
        let active = matches!(
            st.state(),
            ExperimentState::Starting
                | ExperimentState::Running
                | ExperimentState::Restarting
                | ExperimentState::Stopping
        );
        let Some(rec) = self.store.experiment(&id)? else {
            if active {
                self.stop_stale(node, &st.id, st.epoch);
            }
            return Ok(());
        };
        let ours = rec.node.as_ref().is_some_and(|n| n.as_str() == node) && rec.epoch == st.epoch;
        if !ours {
            if active {
                self.stop_stale(node, &st.id, st.epoch);
            }
            return Ok(());
        }
        let live = self.links.live(node);
        match st.state() {
            ExperimentState::Starting | ExperimentState::Running | ExperimentState::Restarting => {
                let mut rec = rec;
                if matches!(rec.phase, Phase::Placing | Phase::Unknown | Phase::Starting) {
                    let to = if st.state() == ExperimentState::Running {
                        Phase::Running
                    } else {
                        Phase::Starting
                    };
                    if to != rec.phase {
                        let mut t =
                            Transition::new(id.clone(), rec.phase, to, ACTOR, "").fenced(rec.epoch);
                        if rec.open_run().is_none() {
                            t = t.start_run(self.run_start(&rec, live.as_ref()));
                        }
                        rec = self.transition(t).await?.record;
                    }
                }
                if rec.open_run().is_some() {
                    // A run the controller did not see start (it was down):
                    // its heat is followed from what is stored of it.
                    self.follow_heat(node, &rec, live.as_ref());
                    // The heat goes by the samples (see `write_heat`).
                    self.store
                        .observe_run(
                            &id,
                            rec.epoch,
                            RunObservation {
                                crashes: Some(u64::from(st.restarts)),
                                peak_temp_c: None,
                                throttled: false,
                                board_restarts: Some(st.board_restarts),
                            },
                            &format!("agent/{node}"),
                        )
                        .await?;
                }
            }
            ExperimentState::Succeeded | ExperimentState::Failed => {
                if !rec.phase.holds_node() {
                    return Ok(());
                }
                let (outcome, to) = if st.state() == ExperimentState::Succeeded {
                    (RunOutcome::Succeeded, Phase::Succeeded)
                } else {
                    (RunOutcome::Failed, Phase::Failed)
                };
                if rec.phase == Phase::Stopping {
                    return self.finish_stop(&rec, Some(st)).await;
                }
                self.ensure_run(&rec, live.as_ref()).await?;
                // The last crash is only counted by the final report.
                if let Some(r) = self.store.experiment(&id)? {
                    if r.open_run().is_some() {
                        self.store
                            .observe_run(
                                &id,
                                r.epoch,
                                RunObservation {
                                    crashes: Some(u64::from(st.restarts)),
                                    peak_temp_c: None,
                                    throttled: false,
                                    board_restarts: Some(st.board_restarts),
                                },
                                &format!("agent/{node}"),
                            )
                            .await?;
                    }
                }
                let mut end = RunEnd::new(outcome, st.failure_message.clone());
                end.failure = failure_of(st);
                end.exit_code = st.exit_code;
                end.exit_signal = st.exit_signal;
                let t = Transition::new(
                    id,
                    self.current_phase(&rec)?,
                    to,
                    format!("agent/{node}"),
                    st.failure_message.clone(),
                )
                .fenced(rec.epoch)
                .end_run(end);
                self.transition(t).await?;
            }
            ExperimentState::Stopped => {
                if rec.phase.holds_node() {
                    self.finish_stop(&rec, Some(st)).await?;
                }
            }
            ExperimentState::Disrupted => {
                if !rec.phase.holds_node() {
                    return Ok(());
                }
                self.ensure_run(&rec, live.as_ref()).await?;
                // The guard stops with no failure; a board's shutdown kills
                // with a signal the agent did not send, and says so.
                let (why, msg) = if failure_of(st).is_some() {
                    (
                        Disruption::Shutdown,
                        format!("{node} shut down: {}", st.failure_message),
                    )
                } else {
                    self.links.hold_critical(node);
                    (
                        Disruption::Thermal,
                        format!("stopped by {node}'s thermal guard"),
                    )
                };
                let t = Transition::new(
                    id,
                    self.current_phase(&rec)?,
                    self.disrupted_to(&rec),
                    format!("agent/{node}"),
                    msg.clone(),
                )
                .fenced(rec.epoch)
                .end_run(RunEnd::disrupted(why, msg));
                self.transition(t).await?;
                self.poke.notify_one();
            }
            ExperimentState::Stopping | ExperimentState::Unknown | ExperimentState::Unspecified => {
            }
        }
        Ok(())
    }

    /// Power mode, clocks and L4T release at the start of the run of
    /// `rec`'s placement. The mode is the one the dispatch switched the
    /// board to, when it did: the board confirmed it, and its news of the
    /// switch may still be on its way.
    fn run_start(&self, rec: &ExperimentRecord, live: Option<&crate::links::Live>) -> RunStart {
        let live = live.map(|l| node_live(l, Instant::now(), &self.settings));
        let switched = self
            .switched
            .lock()
            .expect("not poisoned")
            .remove(&(rec.id.as_str().to_owned(), rec.epoch));
        crate::wire::run_start_switched(live.as_ref(), switched.as_ref())
    }

    /// Stores a transition and keeps the heat of runs in step with it: a
    /// run that starts takes the board's reading now and is followed from
    /// then on; a run that ends takes the peak seen so far into the same
    /// write, and is no longer followed.
    async fn transition(&self, mut t: Transition) -> Result<Transitioned, StoreError> {
        let id = t.id.as_str().to_owned();
        match &t.run {
            RunChange::Start(_) => {
                let node = self.store.experiment(&t.id)?.and_then(|r| r.node);
                if let Some((hottest, hot)) = node.and_then(|n| self.reading(n.as_str())) {
                    t = t.heat(hottest, hot);
                }
            }
            RunChange::End(_) => {
                let heat = t.epoch.and_then(|e| self.links.heats().heat(&id, e));
                if let Some(h) = heat {
                    t = t.heat(h.peak_c, h.throttled);
                }
            }
            RunChange::None => {}
        }
        let done = self.store.transition(&t).await?;
        match &t.run {
            RunChange::Start(_) => {
                if let (Some(node), Some(run)) = (&done.record.node, done.record.open_run()) {
                    self.links.heats().follow(
                        node.as_str(),
                        &id,
                        run.epoch,
                        run.peak_temp_c,
                        run.throttled,
                    );
                }
            }
            RunChange::End(_) => self.links.heats().forget(&id),
            RunChange::None => {}
        }
        Ok(done)
    }

    /// The hottest zone of `node` now and whether it is at or above warn,
    /// from its last sample.
    fn reading(&self, node: &str) -> Option<(Option<f64>, bool)> {
        let l = self.links.live(node)?;
        reading_of(&l)
    }

    /// Follows the heat of `rec`'s open run on `node`, from what is stored
    /// of it and the board's reading now, unless it is followed already.
    fn follow_heat(&self, node: &str, rec: &ExperimentRecord, live: Option<&crate::links::Live>) {
        let Some(run) = rec.open_run() else {
            return;
        };
        let id = rec.id.as_str();
        let mut heats = self.links.heats();
        if heats.follows(id, run.epoch) {
            return;
        }
        heats.follow(node, id, run.epoch, run.peak_temp_c, run.throttled);
        if let Some((hottest, hot)) = live.and_then(reading_of) {
            heats.observe(node, hottest, hot);
        }
    }

    /// Writes the heat of every run that rose enough since it was last
    /// written (see [`crate::live::RunHeats`]).
    async fn write_heat(&self) {
        let due = self.links.heats().due();
        for (node, id, h) in due {
            let Ok(eid) = ExperimentId::new(id.clone()) else {
                self.links.heats().forget(&id);
                continue;
            };
            let obs = RunObservation {
                crashes: None,
                peak_temp_c: h.peak_c,
                throttled: h.throttled,
                board_restarts: None,
            };
            match self
                .store
                .observe_run(&eid, h.epoch, obs, &format!("agent/{node}"))
                .await
            {
                Ok(rec) => {
                    let run = rec.open_run().filter(|r| r.epoch == h.epoch);
                    let mut heats = self.links.heats();
                    match run {
                        Some(r) => heats.stored(&id, h.epoch, r.peak_temp_c, r.throttled),
                        None => heats.forget(&id),
                    }
                }
                // The run is over, or the experiment is gone.
                Err(
                    StoreError::StaleEpoch { .. }
                    | StoreError::Run { .. }
                    | StoreError::ExperimentNotFound { .. },
                ) => self.links.heats().forget(&id),
                Err(e) => {
                    tracing::warn!(experiment = %id, error = %e, "recording a run's heat failed");
                }
            }
        }
    }

    fn current_phase(&self, rec: &ExperimentRecord) -> Result<Phase, StoreError> {
        Ok(self
            .store
            .experiment(&rec.id)?
            .map(|r| r.phase)
            .unwrap_or(rec.phase))
    }

    /// A run that ended before the controller saw it start still gets its
    /// record.
    async fn ensure_run(
        &self,
        rec: &ExperimentRecord,
        live: Option<&crate::links::Live>,
    ) -> Result<(), StoreError> {
        if rec.open_run().is_some() || rec.phase != Phase::Placing {
            return Ok(());
        }
        let t = Transition::new(rec.id.clone(), Phase::Placing, Phase::Starting, ACTOR, "")
            .fenced(rec.epoch)
            .start_run(self.run_start(rec, live));
        self.transition(t).await.map(drop)
    }

    /// The end of a stop the controller asked for, by the reason it gave.
    async fn finish_stop(
        &self,
        rec: &ExperimentRecord,
        st: Option<&v1::ExperimentStatus>,
    ) -> Result<(), StoreError> {
        let rec = self
            .store
            .experiment(&rec.id)?
            .unwrap_or_else(|| rec.clone());
        let reason = rec.reason.clone();
        let (to, end) = if reason.starts_with(REASON_CANCEL) {
            (
                Phase::Cancelled,
                RunEnd::new(RunOutcome::Cancelled, reason.clone()),
            )
        } else if reason.starts_with(REASON_DRAIN) {
            (
                self.disrupted_to(&rec),
                RunEnd::disrupted(Disruption::Drain, "drained".to_owned()),
            )
        } else if reason.starts_with(REASON_RESTART) {
            (
                Phase::Queued,
                RunEnd::disrupted(Disruption::Restart, "restarted".to_owned()),
            )
        } else {
            (
                Phase::Stopped,
                RunEnd::new(RunOutcome::Stopped, reason.clone()),
            )
        };
        let mut end = end;
        if let Some(st) = st {
            end.exit_code = st.exit_code;
            end.exit_signal = st.exit_signal;
        }
        if rec.open_run().is_none() && rec.phase == Phase::Placing {
            self.ensure_run(&rec, None).await?;
        }
        let from = self.current_phase(&rec)?;
        let t = Transition::new(rec.id.clone(), from, to, ACTOR, reason)
            .fenced(rec.epoch)
            .end_run(end);
        self.transition(t).await?;
        self.poke.notify_one();
        Ok(())
    }

    /// A start of `rec`'s placement is on its way.
    fn dispatching(&self, rec: &ExperimentRecord) -> bool {
        self.in_flight
            .contains(&(rec.id.as_str().to_owned(), rec.epoch))
    }

    /// Unreachable and lost nodes.
    async fn health(&mut self) -> Result<(), StoreError> {
        let now = Instant::now();
        let live = self.links.all_live();
        let grace = now.duration_since(self.started) < self.settings.lost_after;
        for node in self.store.nodes()? {
            let name = node.name.as_str().to_owned();
            let l = live.get(&name).cloned().unwrap_or_default();
            // Just started: a board not heard from yet is not silent yet.
            // (Marking its experiments unknown on every controller restart
            // would be noise, and wrong.)
            if l.last_seen.is_none() && now.duration_since(self.started) < self.settings.heartbeat {
                continue;
            }
            let link = l.link(now, self.settings.heartbeat, self.settings.lost_after);
            let link = if link == Link::Down || (l.last_seen.is_none() && !grace) {
                Link::Down
            } else {
                link
            };
            match link {
                Link::Fresh => {
                    // Back after a silence on the same connection (a paused
                    // agent, a network blip): reconcile as on a reconnect.
                    if self.said_unreachable.contains(&name) || self.said_lost.contains(&name) {
                        if let Some(mut c) = self.links.client(&name) {
                            let ask = c.list_experiments(v1::ListExperimentsRequest {});
                            if let Ok(Ok(list)) =
                                tokio::time::timeout(Duration::from_secs(5), ask).await
                            {
                                self.reconcile(&name, list.into_inner().experiments).await?;
                            }
                        }
                    }
                }
                Link::Stale => {
                    if self.said_unreachable.insert(name.clone()) && l.last_seen.is_some() {
                        self.store
                            .append_event(
                                NewEvent::new(
                                    EventKind::NodeUnreachable,
                                    ACTOR,
                                    format!("{name} is silent; its experiments are unknown"),
                                )
                                .node(node.name.clone()),
                            )
                            .await?;
                    }
                    for id in &node.experiments {
                        if let Some(rec) = self.store.experiment(id)? {
                            // Not started (or not known to be): another
                            // node may take it; a copy that did start here
                            // is stale when the board is back.
                            if rec.phase == Phase::Placing && !self.dispatching(&rec) {
                                let msg = format!("{name} is unreachable; not started there");
                                let t = Transition::new(
                                    rec.id.clone(),
                                    rec.phase,
                                    Phase::Queued,
                                    ACTOR,
                                    msg.clone(),
                                )
                                .fenced(rec.epoch)
                                .end_run(RunEnd::new(RunOutcome::StartFailed, msg));
                                self.transition(t).await?;
                                self.poke.notify_one();
                                continue;
                            }
                            if matches!(rec.phase, Phase::Running | Phase::Starting) {
                                let t = Transition::new(
                                    rec.id.clone(),
                                    rec.phase,
                                    Phase::Unknown,
                                    ACTOR,
                                    format!("{name} is unreachable"),
                                )
                                .fenced(rec.epoch);
                                self.transition(t).await?;
                            }
                        }
                    }
                }
                Link::Down => {
                    if self.said_lost.insert(name.clone()) {
                        self.store
                            .append_event(
                                NewEvent::new(
                                    EventKind::NodeLost,
                                    ACTOR,
                                    format!("{name} is lost; requeueing its experiments"),
                                )
                                .node(node.name.clone()),
                            )
                            .await?;
                    }
                    for id in &node.experiments {
                        let Some(rec) = self.store.experiment(id)? else {
                            continue;
                        };
                        if !rec.phase.holds_node() {
                            continue;
                        }
                        let msg = format!("{name} is lost");
                        let mut t = Transition::new(
                            rec.id.clone(),
                            rec.phase,
                            self.disrupted_to(&rec),
                            ACTOR,
                            msg.clone(),
                        )
                        .fenced(rec.epoch);
                        if rec.open_run().is_some() || rec.phase == Phase::Placing {
                            t = t.end_run(RunEnd::disrupted(Disruption::NodeLost, msg));
                        }
                        if rec.phase == Phase::Placing && rec.open_run().is_none() {
                            t.run = crate::store::RunChange::End(RunEnd::new(
                                RunOutcome::StartFailed,
                                format!("{name} was lost before it started"),
                            ));
                            t.to = Phase::Queued;
                        }
                        self.transition(t).await?;
                        self.poke.notify_one();
                    }
                }
            }
        }
        Ok(())
    }
}

/// What the scheduler sees of every stored node, with its live state from
/// `live`: stored records and telemetry joined by [`crate::wire::node_view`].
pub fn views_with(
    store: &Store,
    config: &crate::live::ViewConfig,
    live: impl Fn(&NodeName) -> Option<crate::live::NodeLive>,
) -> Result<Vec<NodeView>, StoreError> {
    views_cached(store, config, &mut RecordCache::default(), live)
}

/// [`views_with`], decoding only the stored records that changed since
/// `cache` last saw them (the reconciler keeps one across passes).
pub fn views_cached(
    store: &Store,
    config: &crate::live::ViewConfig,
    cache: &mut RecordCache,
    live: impl Fn(&NodeName) -> Option<crate::live::NodeLive>,
) -> Result<Vec<NodeView>, StoreError> {
    let nodes = store.nodes_cached(cache)?;
    // Only what is placed somewhere counts: queued and finished
    // experiments are not read.
    let experiments = store.experiments_cached(cache, nodes.iter().flat_map(|n| &n.experiments))?;
    let by_id: HashMap<&ExperimentId, &ExperimentRecord> =
        experiments.iter().map(|e| (&e.id, e)).collect();
    Ok(nodes
        .iter()
        .map(|n| {
            let l = live(&n.name);
            // Each node's own experiments, not the whole list per node.
            let here = n.experiments.iter().filter_map(|id| by_id.get(id).copied());
            crate::wire::node_view(n, l.as_ref(), here, config)
        })
        .collect())
}

/// A node's hottest zone in its last sample and whether the board is at or
/// above warn.
fn reading_of(l: &crate::links::Live) -> Option<(Option<f64>, bool)> {
    let s = l.sample.as_ref()?;
    let warn_c = l.info.as_ref().map(|i| i.warn_c);
    Some((
        s.hottest_c,
        crate::live::at_or_above_warn(s.thermal_state, s.hottest_c, warn_c),
    ))
}

/// An event's message for a thermal change: "thermal normal → warn: zone
/// CPU-therm at 76.0 °C; stopped accepting experiments".
fn thermal_message(t: &v1::ThermalChanged) -> String {
    let state = |s: v1::ThermalState| match s {
        v1::ThermalState::Normal => "normal",
        v1::ThermalState::Warn => "warn",
        v1::ThermalState::Critical => "critical",
        v1::ThermalState::Unspecified => "unknown",
    };
    let mut m = format!(
        "thermal {} → {}: zone {}",
        state(t.from()),
        state(t.to()),
        t.zone
    );
    if let Some(c) = t.celsius.filter(|c| c.is_finite()) {
        m.push_str(&format!(" at {c:.1} °C"));
    }
    let action = t.action.trim();
    if !action.is_empty() {
        m.push_str("; ");
        m.push_str(action);
    }
    m
}

/// The default policy when none was ever set.
pub fn policy_of(store: &Store) -> Result<Policy, StoreError> {
    Ok(store.policy()?.map(|p| p.policy).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thermal(from: v1::ThermalState, to: v1::ThermalState, action: &str) -> v1::ThermalChanged {
        v1::ThermalChanged {
            from: from as i32,
            to: to as i32,
            zone: "CPU-therm".into(),
            celsius: Some(85.5),
            action: action.into(),
        }
    }

    #[test]
    fn a_thermal_message_keeps_the_zone_and_unit_and_ends_without_an_empty_action() {
        use v1::ThermalState as T;
        assert_eq!(
            thermal_message(&thermal(T::Warn, T::Critical, "stopped 1 experiment")),
            "thermal warn → critical: zone CPU-therm at 85.5 °C; stopped 1 experiment"
        );
        assert_eq!(
            thermal_message(&thermal(T::Critical, T::Warn, "")),
            "thermal critical → warn: zone CPU-therm at 85.5 °C"
        );
        let mut t = thermal(T::Warn, T::Normal, "  ");
        t.celsius = None;
        assert_eq!(thermal_message(&t), "thermal warn → normal: zone CPU-therm");
    }

    #[test]
    fn a_failed_connection_is_told_from_a_board_that_refused() {
        // What the board answers: a refusal (too hot, systemd busy).
        assert!(!connection_failed(&tonic::Status::unavailable(
            "refused: the board is too hot"
        )));
        assert!(!connection_failed(&tonic::Status::invalid_argument("bad")));
        // What this side makes of a connection that failed.
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let cut = tonic::Status::from_error(Box::new(refused));
        assert!(connection_failed(&cut), "{cut:?}");
        // Our own deadline: the board may be frozen; the old rule stands.
        assert!(!connection_failed(&tonic::Status::deadline_exceeded(
            "the board did not answer the start in time"
        )));
    }

    #[test]
    fn a_reading_is_at_warn_by_state_or_by_the_hottest_zone() {
        let mut l = crate::links::Live::default();
        assert_eq!(reading_of(&l), None);
        l.info = Some(v1::NodeInfo {
            warn_c: 75.0,
            ..Default::default()
        });
        l.sample = Some(v1::TelemetrySample {
            hottest_c: Some(70.0),
            thermal_state: v1::ThermalState::Normal as i32,
            ..Default::default()
        });
        assert_eq!(reading_of(&l), Some((Some(70.0), false)));
        l.sample.as_mut().unwrap().hottest_c = Some(75.5);
        assert_eq!(reading_of(&l), Some((Some(75.5), true)));
        let s = l.sample.as_mut().unwrap();
        s.hottest_c = Some(60.0);
        s.thermal_state = v1::ThermalState::Warn as i32;
        assert_eq!(reading_of(&l), Some((Some(60.0), true)));
    }
}
