//! The controller's gRPC edge: `fleet.v1.Controller`, its role table as a
//! tower layer, and the one mapping from store errors to `tonic::Status`.

use std::pin::Pin;
use std::sync::Arc;

use fleet_proto::identity::Principal;
use fleet_proto::spec::{ExperimentId, ExperimentSpec, NodeName};
use fleet_proto::v1;
use fleet_proto::v1::controller_server::Controller;
use futures_util::{Stream, StreamExt};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::links::Links;
use crate::live::NodeLive;
use crate::model::{DrainMode, NodeSource, Phase};
use crate::reconciler::{self, Reconciler, Settings};
use crate::scheduler;
use crate::store::{ExperimentRecord, NewNode, Store, StoreError, Transition};
use crate::wire;

/// How long a read waits for a board before answering from the store.
const BOARD_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a switch on a board (jetson_clocks runs a script) may take.
const BOARD_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An error of a call the controller forwarded to a board's agent: a board
/// it cannot reach is `Unavailable`, one that answered and refused is
/// `FailedPrecondition` (a bad argument stays `InvalidArgument`), each
/// message naming the board and what was asked.
fn board_refusal(node: &str, what: &str, s: Status) -> Status {
    use tonic::Code;
    match s.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => {
            Status::unavailable(format!(
                "cannot reach the agent of {node} to {what}: {}",
                s.message()
            ))
        }
        Code::InvalidArgument => Status::invalid_argument(format!(
            "the agent of {node} refused to {what}: {}",
            s.message()
        )),
        Code::PermissionDenied | Code::Unauthenticated => Status::permission_denied(format!(
            "the agent of {node} does not let the controller {what}: {}",
            s.message()
        )),
        _ => Status::failed_precondition(format!(
            "the agent of {node} refused to {what}: {}",
            s.message()
        )),
    }
}

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct ControllerService {
    pub store: Store,
    pub links: Arc<Links>,
    pub poke: Arc<Notify>,
    pub settings: Arc<Settings>,
}

pub use fleet_proto::daemon::error_chain;

pub fn store_status(e: StoreError) -> Status {
    let msg = error_chain(&e);
    match e {
        StoreError::Open { .. }
        | StoreError::Sled(_)
        | StoreError::Corrupt { .. }
        | StoreError::Encode { .. }
        | StoreError::Version { .. }
        | StoreError::CorruptSpec { .. }
        | StoreError::Inconsistent(_) => Status::internal(msg),
        StoreError::FlushAborted(_) => Status::unavailable(msg),
        StoreError::ExperimentExists { .. } | StoreError::NodeExists { .. } => {
            Status::already_exists(msg)
        }
        StoreError::ExperimentNotFound { .. }
        | StoreError::NodeNotFound { .. }
        | StoreError::NotPlaced { .. } => Status::not_found(msg),
        StoreError::PhaseConflict { .. }
        | StoreError::InvalidTransition { .. }
        | StoreError::StaleEpoch { .. }
        | StoreError::Run { .. }
        | StoreError::NodeUnavailable { .. }
        | StoreError::NodeBusy { .. } => Status::failed_precondition(msg),
        StoreError::BadAddress { .. } | StoreError::Policy(_) => Status::invalid_argument(msg),
    }
}

fn peer<T>(req: &Request<T>) -> Result<fleet_proto::identity::Identity, Status> {
    Ok(fleet_proto::tls::peer_info(req)?.identity().clone())
}

fn actor<T>(req: &Request<T>) -> String {
    peer(req)
        .map(|p| p.principal().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn exp_id(id: &str) -> Result<ExperimentId, Status> {
    ExperimentId::new(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn node_name(n: &str) -> Result<NodeName, Status> {
    NodeName::new(n).map_err(|e| Status::invalid_argument(e.to_string()))
}

impl ControllerService {
    fn live(&self, node: &str) -> Option<NodeLive> {
        let l = self.links.live(node)?;
        Some(NodeLive {
            link: l.link(
                tokio::time::Instant::now(),
                self.settings.heartbeat,
                self.settings.lost_after,
            ),
            last_seen_unix_us: l.last_seen_unix_us,
            info: l.info,
            sample: l.sample,
        })
    }

    fn experiment_wire(&self, rec: &ExperimentRecord) -> v1::Experiment {
        let spec = self.store.spec(&rec.id).ok().flatten();
        wire::experiment(rec, spec.as_ref(), None)
    }

    fn get_record(&self, id: &ExperimentId) -> Result<ExperimentRecord, Status> {
        self.store
            .experiment(id)
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no experiment {}; list them with `fleetctl ps`",
                    id.as_str()
                ))
            })
    }

    /// Asks the board to stop the experiment; the reconciler finishes the
    /// transition when the board reports it stopped.
    async fn stop_on_board(&self, rec: &ExperimentRecord) {
        let Some(node) = &rec.node else { return };
        if let Some(mut c) = self.links.client(node.as_str()) {
            if let Err(e) = c
                .stop_experiment(v1::StopExperimentRequest {
                    id: rec.id.as_str().to_owned(),
                    epoch: Some(rec.epoch),
                })
                .await
            {
                tracing::warn!(experiment = %rec.id.as_str(), error = %e.message(), "stop on the board failed");
            }
        }
    }

    /// Moves an experiment that holds a node to `stopping` with `reason`,
    /// then stops it on its board.
    async fn begin_stop(
        &self,
        rec: ExperimentRecord,
        reason: String,
        who: &str,
    ) -> Result<ExperimentRecord, Status> {
        let rec = if rec.phase == Phase::Stopping {
            rec
        } else {
            let t = Transition::new(rec.id.clone(), rec.phase, Phase::Stopping, who, reason)
                .fenced(rec.epoch);
            self.store
                .transition(&t)
                .await
                .map_err(store_status)?
                .record
        };
        self.stop_on_board(&rec).await;
        Ok(rec)
    }

    /// One node with the experiments placed on it, read by id.
    fn node_wire(&self, n: &crate::store::NodeRecord) -> Result<v1::Node, Status> {
        let mut placed = Vec::with_capacity(n.experiments.len());
        for id in &n.experiments {
            if let Some(rec) = self.store.experiment(id).map_err(store_status)? {
                placed.push(rec);
            }
        }
        Ok(self.node_wire_with(n, &placed))
    }

    fn node_wire_with(
        &self,
        n: &crate::store::NodeRecord,
        experiments: &[ExperimentRecord],
    ) -> v1::Node {
        wire::node(
            n,
            self.live(n.name.as_str()).as_ref(),
            experiments,
            &crate::live::ViewConfig {
                slots_per_node: self.settings.slots_per_node,
            },
        )
    }

    fn views(&self) -> Result<Vec<scheduler::NodeView>, Status> {
        Reconciler::views(&self.store, &self.links, &self.settings).map_err(store_status)
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn submit(
        &self,
        req: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let wire_spec = r.spec.ok_or_else(|| {
            Status::invalid_argument("spec is missing: send the experiment's spec")
        })?;
        let spec = ExperimentSpec::try_from(&wire_spec)
            .map_err(|e| Status::invalid_argument(error_chain(&e)))?;
        if let Some(pin) = spec.placement().node() {
            if self.store.node(pin).map_err(store_status)?.is_none() {
                return Err(Status::invalid_argument(format!(
                    "placement.node: no node {} in this fleet; list them with `fleetctl nodes`",
                    pin.as_str()
                )));
            }
        }
        if let Some(mode) = spec.placement().power_mode() {
            let known: Vec<(u32, String)> = self
                .links
                .all_live()
                .values()
                .filter_map(|l| l.info.as_ref())
                .flat_map(|i| i.power_modes.iter().map(|m| (m.id, m.name.clone())))
                .collect();
            let found = known
                .iter()
                .any(|(id, name)| mode.id() == Some(*id) || mode.name() == Some(name.as_str()));
            if !known.is_empty() && !found {
                return Err(Status::invalid_argument(format!(
                    "placement.power_mode: no node of this fleet has power mode {mode}; known modes: {}",
                    known
                        .iter()
                        .map(|(i, n)| format!("{i}={n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if r.dry_run {
            let mut pending = self.store.pending().map_err(store_status)?;
            let req_of = scheduler::Requirements::of(&spec);
            pending.push(scheduler::Pending {
                id: spec.id().clone(),
                seq: u64::MAX,
                req: req_of,
            });
            let policy = reconciler::policy_of(&self.store).map_err(store_status)?;
            let now = self.store.now();
            let decision = scheduler::plan_for(&pending, &self.views()?, &policy, spec.id())
                .map(|d| wire::decision(&d, now, None, true));
            return Ok(Response::new(v1::SubmitResponse {
                experiment: None,
                decision,
                event_seq: 0,
                already_submitted: false,
            }));
        }
        let submitted = self.store.submit(&spec, &who).await.map_err(store_status)?;
        self.poke.notify_one();
        Ok(Response::new(v1::SubmitResponse {
            experiment: Some(wire::experiment(&submitted.record, Some(&spec), None)),
            decision: None,
            event_seq: submitted.event_seq,
            already_submitted: submitted.already,
        }))
    }

    async fn cancel(
        &self,
        req: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let rec = self.get_record(&exp_id(&r.id)?)?;
        let reason = format!(
            "{}{}{}",
            reconciler::REASON_CANCEL,
            who,
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            }
        );
        let rec = match rec.phase {
            Phase::Queued => {
                let t = Transition::new(
                    rec.id.clone(),
                    Phase::Queued,
                    Phase::Cancelled,
                    &who,
                    reason,
                );
                self.store
                    .transition(&t)
                    .await
                    .map_err(store_status)?
                    .record
            }
            p if p.holds_node() => self.begin_stop(rec, reason, &who).await?,
            p => {
                return Err(Status::failed_precondition(format!(
                    "experiment {} is already {p}",
                    rec.id.as_str()
                )))
            }
        };
        Ok(Response::new(self.experiment_wire(&rec)))
    }

    async fn stop(
        &self,
        req: Request<v1::StopRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let rec = self.get_record(&exp_id(&r.id)?)?;
        if !rec.phase.holds_node() {
            return Err(Status::failed_precondition(format!(
                "experiment {} is {}, not running; a queued one is taken out with `fleetctl cancel`",
                rec.id.as_str(),
                rec.phase
            )));
        }
        let reason = format!(
            "{}{}{}",
            reconciler::REASON_STOP,
            who,
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            }
        );
        let rec = self.begin_stop(rec, reason, &who).await?;
        Ok(Response::new(self.experiment_wire(&rec)))
    }

    async fn restart(
        &self,
        req: Request<v1::RestartRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let rec = self.get_record(&exp_id(&r.id)?)?;
        let rec = if rec.phase.is_terminal() {
            let t = Transition::new(
                rec.id.clone(),
                rec.phase,
                Phase::Queued,
                &who,
                format!("restarted by {who}"),
            );
            let rec = self
                .store
                .transition(&t)
                .await
                .map_err(store_status)?
                .record;
            self.poke.notify_one();
            rec
        } else if rec.phase.holds_node() {
            self.begin_stop(rec, reconciler::REASON_RESTART.to_owned(), &who)
                .await?
        } else {
            rec
        };
        Ok(Response::new(self.experiment_wire(&rec)))
    }

    async fn get(&self, req: Request<v1::GetRequest>) -> Result<Response<v1::Experiment>, Status> {
        let rec = self.get_record(&exp_id(&req.into_inner().id)?)?;
        let mut exp = self.experiment_wire(&rec);
        // The board's own view, when it runs there now.
        if let (Some(node), true) = (&rec.node, rec.phase.holds_node()) {
            let fresh = self
                .live(node.as_str())
                .is_some_and(|l| l.link == scheduler::Link::Fresh);
            let client = self.links.client(node.as_str()).filter(|_| fresh);
            if let Some(mut c) = client {
                // A board that stopped answering must not hold up a read.
                let ask = c.get_experiment(v1::ExperimentRef {
                    id: rec.id.as_str().to_owned(),
                });
                if let Ok(Ok(st)) = tokio::time::timeout(BOARD_READ_TIMEOUT, ask).await {
                    let st = st.into_inner();
                    if st.epoch == rec.epoch {
                        exp = wire::experiment(
                            &rec,
                            self.store.spec(&rec.id).ok().flatten().as_ref(),
                            Some(&st),
                        );
                    }
                }
            }
        }
        Ok(Response::new(exp))
    }

    async fn list(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        let r = req.into_inner();
        let filter = wire::experiment_filter(&r)?;
        let limit = if r.limit == 0 {
            1000
        } else {
            r.limit.min(1000)
        } as usize;
        let mut out = Vec::new();
        let mut next = String::new();
        for rec in self.store.experiments().map_err(store_status)? {
            if !r.page_token.is_empty() && rec.id.as_str() <= r.page_token.as_str() {
                continue;
            }
            if !filter.matches(&rec) {
                continue;
            }
            if out.len() == limit {
                break;
            }
            next = rec.id.as_str().to_owned();
            out.push(wire::experiment(&rec, None, None));
        }
        Ok(Response::new(v1::ListResponse {
            experiments: out,
            next_page_token: next,
        }))
    }

    async fn explain(
        &self,
        req: Request<v1::ExplainRequest>,
    ) -> Result<Response<v1::Explanation>, Status> {
        let id = exp_id(&req.into_inner().id)?;
        let rec = self.get_record(&id)?;
        let last = self.store.decision(&id).map_err(store_status)?;
        let now = if rec.phase == Phase::Queued {
            let pending = self.store.pending().map_err(store_status)?;
            let policy = reconciler::policy_of(&self.store).map_err(store_status)?;
            scheduler::plan_for(&pending, &self.views()?, &policy, &id)
        } else {
            None
        };
        Ok(Response::new(wire::explanation(
            self.experiment_wire(&rec),
            last.as_ref(),
            now.as_ref(),
            self.store.now(),
        )))
    }

    type LogsStream = BoxStream<v1::LogLine>;

    async fn logs(
        &self,
        req: Request<v1::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = req.into_inner();
        let rec = self.get_record(&exp_id(&r.id)?)?;
        let node = rec
            .node
            .clone()
            .or_else(|| rec.runs.last().map(|run| run.node.clone()))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "experiment {} has not run yet",
                    rec.id.as_str()
                ))
            })?;
        let mut c = self
            .links
            .client(node.as_str())
            .ok_or_else(|| Status::unavailable(format!("no link to {}", node.as_str())))?;
        let stream = c
            .stream_logs(v1::StreamLogsRequest {
                id: r.id,
                tail: r.tail,
                since_unix_us: r.since_unix_us,
                follow: r.follow,
            })
            .await?
            .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchEventsStream = BoxStream<v1::Event>;

    async fn watch_events(
        &self,
        req: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let r = req.into_inner();
        let filter = wire::event_filter(r.filter.as_ref().unwrap_or(&v1::EventFilter::default()))?;
        // Subscribe first, then replay: an event in between comes twice at
        // most, and is dropped by its seq.
        let live = self.store.subscribe();
        let mut replay = Vec::new();
        let mut last = self.store.last_event_seq();
        if let Some(from) = r.from_seq {
            let mut next = from.max(1);
            loop {
                let batch = self.store.events_from(next, 1000).map_err(store_status)?;
                if batch.is_empty() {
                    break;
                }
                if next == from.max(1) && batch[0].seq > next {
                    return Err(Status::out_of_range(format!(
                        "events before {} are no longer kept; ask from {}",
                        batch[0].seq, batch[0].seq
                    )));
                }
                next = batch.last().expect("non-empty").seq + 1;
                replay.extend(batch);
            }
            last = next.saturating_sub(1);
        }
        let first: Vec<Result<v1::Event, Status>> = replay
            .iter()
            .filter(|e| filter.matches(e))
            .map(|e| Ok(wire::event(e)))
            .collect();
        if r.replay_only {
            return Ok(Response::new(Box::pin(futures_util::stream::iter(first))));
        }
        let follow = tokio_stream::wrappers::BroadcastStream::new(live).filter_map(move |e| {
            let out = match e {
                Ok(e) if e.seq > last && filter.matches(&e) => Some(Ok(wire::event(&e))),
                Ok(_) => None,
                Err(_) => Some(Err(Status::data_loss(
                    "this watcher fell behind and missed events; reconnect with from_seq",
                ))),
            };
            std::future::ready(out)
        });
        Ok(Response::new(Box::pin(
            futures_util::stream::iter(first).chain(follow),
        )))
    }

    async fn list_nodes(
        &self,
        req: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let r = req.into_inner();
        let filter = wire::node_filter(&r)?;
        // Every experiment read once for all nodes, not once per node.
        let experiments = self.store.experiments().map_err(store_status)?;
        let nodes = self
            .store
            .nodes()
            .map_err(store_status)?
            .into_iter()
            .filter(|n| filter.matches(n))
            .map(|n| self.node_wire_with(&n, &experiments))
            .collect();
        Ok(Response::new(v1::ListNodesResponse { nodes }))
    }

    async fn cordon(&self, req: Request<v1::CordonRequest>) -> Result<Response<v1::Node>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let n = self
            .store
            .cordon(&node_name(&r.node)?, &r.reason, &who)
            .await
            .map_err(store_status)?;
        Ok(Response::new(self.node_wire(&n)?))
    }

    async fn uncordon(
        &self,
        req: Request<v1::UncordonRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let n = self
            .store
            .uncordon(&node_name(&r.node)?, &who)
            .await
            .map_err(store_status)?;
        self.poke.notify_one();
        Ok(Response::new(self.node_wire(&n)?))
    }

    async fn drain(
        &self,
        req: Request<v1::DrainRequest>,
    ) -> Result<Response<v1::DrainResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let mode = wire::drain_mode(r.mode)?;
        let name = node_name(&r.node)?;
        let n = self
            .store
            .drain(&name, mode, &r.reason, &who)
            .await
            .map_err(store_status)?;
        let mut affected = Vec::new();
        for id in &n.experiments {
            let Some(rec) = self.store.experiment(id).map_err(store_status)? else {
                continue;
            };
            if !rec.phase.holds_node() {
                continue;
            }
            affected.push(id.as_str().to_owned());
            if mode == DrainMode::Requeue {
                self.begin_stop(rec, reconciler::REASON_DRAIN.to_owned(), &who)
                    .await?;
            }
        }
        Ok(Response::new(v1::DrainResponse {
            node: Some(self.node_wire(&n)?),
            experiments: affected,
        }))
    }

    async fn set_labels(
        &self,
        req: Request<v1::SetLabelsRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let set = wire::labels_from(&r.labels)?;
        let remove = wire::label_keys_from(&r.remove)?;
        let n = self
            .store
            .set_labels(&node_name(&r.node)?, &set, &remove, &who)
            .await
            .map_err(store_status)?;
        self.poke.notify_one();
        Ok(Response::new(self.node_wire(&n)?))
    }

    async fn set_power_mode(
        &self,
        req: Request<v1::SetNodePowerModeRequest>,
    ) -> Result<Response<v1::SetNodePowerModeResponse>, Status> {
        let r = req.into_inner();
        let name = node_name(&r.node)?;
        let n = self
            .store
            .node(&name)
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no node {}", name.as_str())))?;
        if !r.force {
            for id in &n.experiments {
                if let Some(rec) = self.store.experiment(id).map_err(store_status)? {
                    if rec.phase.holds_node() && rec.req.power_mode.is_some() {
                        return Err(Status::failed_precondition(format!(
                            "experiment {} on {} needs its power mode; stop it first or pass --force",
                            id.as_str(),
                            name.as_str()
                        )));
                    }
                }
            }
        }
        let mut c = self
            .links
            .client(name.as_str())
            .ok_or_else(|| Status::unavailable(format!("no link to {}", name.as_str())))?;
        let out = c
            .set_power_mode(v1::SetPowerModeRequest {
                mode: r.mode,
                allow_reboot: r.allow_reboot,
            })
            .await?
            .into_inner();
        Ok(Response::new(v1::SetNodePowerModeResponse {
            node: Some(self.node_wire(&n)?),
            mode: out.mode,
            reboot_required: out.reboot_required,
            changed: out.changed,
        }))
    }

    async fn set_clocks(
        &self,
        req: Request<v1::SetNodeClocksRequest>,
    ) -> Result<Response<v1::SetNodeClocksResponse>, Status> {
        let r = req.into_inner();
        let name = node_name(&r.node)?;
        let n = self
            .store
            .node(&name)
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no node {}; list them with `fleetctl nodes`",
                    name.as_str()
                ))
            })?;
        let state = if r.enabled { "on" } else { "off" };
        let link = self.live(name.as_str()).map(|l| l.link);
        let client = self
            .links
            .client(name.as_str())
            .filter(|_| link == Some(scheduler::Link::Fresh));
        let Some(mut c) = client else {
            return Err(Status::unavailable(format!(
                "{} is not connected to the controller ({}); jetson_clocks was not switched {state}",
                name.as_str(),
                match link {
                    Some(scheduler::Link::Down) => "lost",
                    _ => "unreachable",
                }
            )));
        };
        let ask = c.set_clocks(v1::SetClocksRequest { enabled: r.enabled });
        let out = match tokio::time::timeout(BOARD_CALL_TIMEOUT, ask).await {
            Ok(Ok(out)) => out.into_inner(),
            Ok(Err(s)) => return Err(board_refusal(name.as_str(), &format!("turn jetson_clocks {state}"), s)),
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "the agent of {} did not answer within {}s; jetson_clocks may or may not be {state}",
                    name.as_str(),
                    BOARD_CALL_TIMEOUT.as_secs()
                )))
            }
        };
        Ok(Response::new(v1::SetNodeClocksResponse {
            node: Some(self.node_wire(&n)?),
            enabled: out.enabled,
        }))
    }

    async fn add_node(
        &self,
        req: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let new = NewNode {
            name: node_name(&r.name)?,
            address: r.address,
            source: NodeSource::Added,
            labels: wire::labels_from(&r.labels)?,
            cordoned: r.cordoned,
        };
        let n = self
            .store
            .add_node(&new, &who)
            .await
            .map_err(store_status)?;
        self.links.ensure(n.name.as_str(), &n.address);
        Ok(Response::new(self.node_wire(&n)?))
    }

    async fn remove_node(
        &self,
        req: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let name = node_name(&r.name)?;
        let held: Vec<String> = match self.store.node(&name).map_err(store_status)? {
            Some(n) => n
                .experiments
                .iter()
                .map(|i| i.as_str().to_owned())
                .collect(),
            None => Vec::new(),
        };
        if !held.is_empty() && !r.force {
            return Err(Status::failed_precondition(format!(
                "{} still holds {}; drain it first or pass force",
                name.as_str(),
                held.join(", ")
            )));
        }
        let existed = self
            .store
            .remove_node(&name, &who)
            .await
            .map_err(store_status)?;
        self.links.remove(name.as_str());
        self.poke.notify_one();
        Ok(Response::new(v1::RemoveNodeResponse {
            name: r.name,
            existed,
            disrupted: held,
        }))
    }

    async fn get_policy(
        &self,
        _req: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        let rec = self.store.policy().map_err(store_status)?;
        Ok(Response::new(match rec {
            Some(rec) => wire::policy_record(&rec),
            None => wire::policy(&scheduler::Policy::default()),
        }))
    }

    async fn set_policy(
        &self,
        req: Request<v1::SetPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        let who = actor(&req);
        let r = req.into_inner();
        let current = reconciler::policy_of(&self.store).map_err(store_status)?;
        let policy = wire::policy_from(&r, &current)
            .map_err(|e| Status::invalid_argument(error_chain(&e)))?;
        let rec = self
            .store
            .set_policy(&policy, &who)
            .await
            .map_err(store_status)?;
        self.poke.notify_one();
        Ok(Response::new(wire::policy_record(&rec)))
    }

    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let id = peer(&req)?;
        let Principal::Agent { node } = id.principal() else {
            return Err(Status::permission_denied(
                "only an agent may join, as the node its certificate names",
            ));
        };
        let node = node.clone();
        let r = req.into_inner();
        let name = node_name(&node)?;
        // A node the config lists is reached where the config says: the
        // config is the administrator's word, and taking the announced
        // address would only have the next restart set it back.
        if let Some(n) = self.store.node(&name).map_err(store_status)? {
            if n.source == NodeSource::Config {
                if n.address != r.address {
                    tracing::info!(
                        node = %node,
                        configured = %n.address,
                        announced = %r.address,
                        "a node of the config joined; keeping the configured address"
                    );
                }
                self.links.ensure(n.name.as_str(), &n.address);
                return Ok(Response::new(v1::JoinResponse {
                    node: Some(self.node_wire(&n)?),
                }));
            }
        }
        let new = NewNode {
            name,
            address: r.address,
            source: NodeSource::Joined,
            labels: Default::default(),
            cordoned: false,
        };
        let n = self
            .store
            .ensure_node(&new, &format!("agent/{node}"))
            .await
            .map_err(store_status)?;
        self.links.ensure(n.name.as_str(), &n.address);
        Ok(Response::new(v1::JoinResponse {
            node: Some(self.node_wire(&n)?),
        }))
    }
}

/// Refuses every call the controller's role table does not allow, before any handler
/// runs (see [`fleet_proto::authz`]).
pub fn authz_layer(tls: fleet_proto::tls::ServerTls) -> fleet_proto::authz::AuthzLayer {
    fleet_proto::authz::AuthzLayer::new(tls, crate::authz::verdict, "")
}
