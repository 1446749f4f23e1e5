//! The agent's gRPC edge: `fleet.v1.Agent`, converting between the wire and
//! the domain, and one exhaustive mapping from errors to `tonic::Status`.
//!
//! **API boundary.** Only this module touches generated types (besides the
//! stored wire form of a spec).

pub mod authz;
pub mod node_wire;

use std::pin::Pin;
use std::sync::Arc;

use fleet_proto::v1;
use fleet_proto::v1::agent_server::Agent;
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status as RpcStatus};

use crate::experiments::{Event, ExperimentError, Experiments};
use crate::logs::{self, LogQuery};
use crate::node::{Node, NodeError};
use crate::status::{Failure, State, Status};

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, RpcStatus>> + Send + 'static>>;

pub struct AgentService {
    pub experiments: Arc<Experiments>,
    pub node: Arc<Node>,
    pub journalctl: std::path::PathBuf,
    pub target: String,
}

impl From<ExperimentError> for RpcStatus {
    fn from(e: ExperimentError) -> Self {
        let msg = error_chain(&e);
        tracing::warn!(error = %msg, "request failed");
        match e {
            ExperimentError::InvalidSpec(_) => RpcStatus::invalid_argument(msg),
            ExperimentError::InvalidId { .. } => RpcStatus::invalid_argument(msg),
            ExperimentError::NotFound { .. } => RpcStatus::not_found(msg),
            ExperimentError::StaleEpoch { .. } => RpcStatus::failed_precondition(msg),
            ExperimentError::OtherEpoch { .. } => RpcStatus::failed_precondition(msg),
            ExperimentError::Refused { .. } => RpcStatus::unavailable(msg),
            ExperimentError::NoSpec { .. } => RpcStatus::failed_precondition(msg),
            ExperimentError::Systemd(_) => RpcStatus::unavailable(msg),
            ExperimentError::Store(_) => RpcStatus::internal(msg),
            ExperimentError::Io { .. } => RpcStatus::internal(msg),
            ExperimentError::StopTimeout { .. } => RpcStatus::deadline_exceeded(msg),
        }
    }
}

impl From<NodeError> for RpcStatus {
    fn from(e: NodeError) -> Self {
        let msg = error_chain(&e);
        match e {
            NodeError::UnknownMode { .. } => RpcStatus::invalid_argument(msg),
            NodeError::RebootRequired { .. } => RpcStatus::failed_precondition(msg),
            NodeError::NotSupported { .. } => RpcStatus::unimplemented(msg),
            NodeError::NotInstalled { .. } => RpcStatus::failed_precondition(msg),
            NodeError::Hardware(_) => RpcStatus::internal(msg),
        }
    }
}

pub use fleet_proto::daemon::error_chain;

pub fn state_to_wire(s: State) -> v1::ExperimentState {
    match s {
        State::Starting => v1::ExperimentState::Starting,
        State::Running => v1::ExperimentState::Running,
        State::Restarting => v1::ExperimentState::Restarting,
        State::Stopping => v1::ExperimentState::Stopping,
        State::Succeeded => v1::ExperimentState::Succeeded,
        State::Failed => v1::ExperimentState::Failed,
        State::Stopped => v1::ExperimentState::Stopped,
        State::Disrupted => v1::ExperimentState::Disrupted,
        State::Unknown => v1::ExperimentState::Unknown,
    }
}

fn failure_to_wire(f: Failure) -> v1::FailureReason {
    match f {
        Failure::None => v1::FailureReason::None,
        Failure::ExitCode => v1::FailureReason::ExitCode,
        Failure::Signal => v1::FailureReason::Signal,
        Failure::OomKill => v1::FailureReason::OomKill,
        Failure::Timeout => v1::FailureReason::Timeout,
        Failure::StartLimit => v1::FailureReason::StartLimit,
        Failure::CoreDump => v1::FailureReason::CoreDump,
        Failure::Resources => v1::FailureReason::Resources,
        Failure::Other => v1::FailureReason::Other,
    }
}

pub fn status_to_wire(s: &Status) -> v1::ExperimentStatus {
    v1::ExperimentStatus {
        id: s.id.clone(),
        unit: s.unit.clone(),
        state: state_to_wire(s.state) as i32,
        active_state: s.active_state.clone(),
        sub_state: s.sub_state.clone(),
        result: s.result.clone(),
        main_pid: s.main_pid,
        exit_code: s.exit_code,
        exit_signal: s.exit_signal,
        failure: failure_to_wire(s.failure) as i32,
        failure_message: s.failure_message.clone(),
        memory_current_bytes: s.memory_current,
        memory_peak_bytes: s.memory_peak,
        memory_max_bytes: s.memory_max,
        cpu_usage_nsec: s.cpu_usage_nsec,
        active_since_unix_us: s.active_since_us.map(|v| v as i64),
        restarts: s.restarts,
        crashes_total: s.crashes_total,
        disruptions_total: s.disruptions_total,
        board_restarts: s.board_restarts,
        epoch: s.epoch,
        autostart: s.autostart,
        invocation_id: s.invocation_id.clone(),
        cpu_percent: None,
    }
}

pub fn event_to_wire(e: &Event) -> v1::ExperimentEvent {
    v1::ExperimentEvent {
        status: Some(status_to_wire(&e.status)),
        change: e.change.clone(),
        timestamp_unix_us: e.timestamp_us,
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn start_experiment(
        &self,
        req: Request<v1::StartExperimentRequest>,
    ) -> Result<Response<v1::ExperimentStatus>, RpcStatus> {
        let req = req.into_inner();
        let spec = req.spec.ok_or_else(|| {
            RpcStatus::invalid_argument("spec is missing: send the experiment's spec")
        })?;
        let st = self.experiments.start(&spec, req.epoch).await?;
        Ok(Response::new(status_to_wire(&st)))
    }

    async fn stop_experiment(
        &self,
        req: Request<v1::StopExperimentRequest>,
    ) -> Result<Response<v1::ExperimentStatus>, RpcStatus> {
        let r = req.into_inner();
        let st = match r.epoch {
            Some(epoch) => self.experiments.stop_epoch(&r.id, epoch).await?,
            None => self.experiments.stop(&r.id, false).await?,
        };
        Ok(Response::new(status_to_wire(&st)))
    }

    async fn restart_experiment(
        &self,
        req: Request<v1::ExperimentRef>,
    ) -> Result<Response<v1::ExperimentStatus>, RpcStatus> {
        let st = self.experiments.restart(&req.into_inner().id).await?;
        Ok(Response::new(status_to_wire(&st)))
    }

    async fn remove_experiment(
        &self,
        req: Request<v1::ExperimentRef>,
    ) -> Result<Response<v1::RemoveExperimentResponse>, RpcStatus> {
        let id = req.into_inner().id;
        let existed = self.experiments.remove(&id).await?;
        Ok(Response::new(v1::RemoveExperimentResponse { id, existed }))
    }

    async fn set_autostart(
        &self,
        req: Request<v1::SetAutostartRequest>,
    ) -> Result<Response<v1::ExperimentStatus>, RpcStatus> {
        let r = req.into_inner();
        let st = self.experiments.set_autostart(&r.id, r.enabled).await?;
        Ok(Response::new(status_to_wire(&st)))
    }

    async fn get_experiment(
        &self,
        req: Request<v1::ExperimentRef>,
    ) -> Result<Response<v1::ExperimentStatus>, RpcStatus> {
        let st = self.experiments.get(&req.into_inner().id).await?;
        Ok(Response::new(status_to_wire(&st)))
    }

    async fn list_experiments(
        &self,
        _req: Request<v1::ListExperimentsRequest>,
    ) -> Result<Response<v1::ListExperimentsResponse>, RpcStatus> {
        let list = self.experiments.list().await?;
        Ok(Response::new(v1::ListExperimentsResponse {
            experiments: list.iter().map(status_to_wire).collect(),
        }))
    }

    type StreamLogsStream = BoxStream<v1::LogLine>;

    async fn stream_logs(
        &self,
        req: Request<v1::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, RpcStatus> {
        let r = req.into_inner();
        // Validates the id, and refuses experiments this board never had.
        self.experiments.get(&r.id).await?;
        let identifier = format!("brain-experiment-{}", r.id);
        let q = LogQuery {
            tail: r.tail,
            since_us: r.since_unix_us,
            follow: r.follow,
        };
        let lines = logs::stream(self.journalctl.clone(), identifier, q)
            .map_err(|e| RpcStatus::unavailable(error_chain(&e)))?;
        Ok(Response::new(Box::pin(lines.map(|l| {
            Ok(v1::LogLine {
                timestamp_unix_us: l.timestamp_us,
                message: l.message,
                priority: l.priority,
                pid: l.pid,
                cursor: l.cursor,
            })
        }))))
    }

    type WatchExperimentsStream = BoxStream<v1::ExperimentEvent>;

    async fn watch_experiments(
        &self,
        req: Request<v1::WatchExperimentsRequest>,
    ) -> Result<Response<Self::WatchExperimentsStream>, RpcStatus> {
        let filter = req.into_inner().id;
        // Subscribe before the snapshot so no change falls in between.
        let rx = self.experiments.subscribe();
        let snapshot = self.experiments.list().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let keep = {
            let filter = filter.clone();
            move |id: &str| filter.is_empty() || filter == id
        };
        let first: Vec<Result<v1::ExperimentEvent, RpcStatus>> = snapshot
            .iter()
            .filter(|s| keep(&s.id))
            .map(|s| {
                Ok(v1::ExperimentEvent {
                    status: Some(status_to_wire(s)),
                    change: "snapshot".into(),
                    timestamp_unix_us: now,
                })
            })
            .collect();
        let live = futures_util::stream::unfold(rx, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, rx)),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a watcher fell behind");
                        continue;
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |ev| std::future::ready(keep(&ev.status.id)))
        .map(|ev| Ok(event_to_wire(&ev)));
        Ok(Response::new(Box::pin(
            futures_util::stream::iter(first).chain(live),
        )))
    }

    async fn start_all(
        &self,
        _req: Request<v1::BulkRequest>,
    ) -> Result<Response<v1::BulkResponse>, RpcStatus> {
        let list = self.experiments.start_all(&self.target).await?;
        Ok(Response::new(v1::BulkResponse {
            experiments: list.iter().map(status_to_wire).collect(),
        }))
    }

    async fn stop_all(
        &self,
        _req: Request<v1::BulkRequest>,
    ) -> Result<Response<v1::BulkResponse>, RpcStatus> {
        let list = self.experiments.stop_all(&self.target).await?;
        Ok(Response::new(v1::BulkResponse {
            experiments: list.iter().map(status_to_wire).collect(),
        }))
    }

    async fn get_node(
        &self,
        _req: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::NodeInfo>, RpcStatus> {
        Ok(Response::new(node_wire::info(&self.node.info().await)))
    }

    async fn set_power_mode(
        &self,
        req: Request<v1::SetPowerModeRequest>,
    ) -> Result<Response<v1::SetPowerModeResponse>, RpcStatus> {
        let r = req.into_inner();
        let outcome = self.node.set_power_mode(&r.mode, r.allow_reboot).await?;
        Ok(Response::new(node_wire::set_mode(&outcome)))
    }

    async fn set_clocks(
        &self,
        req: Request<v1::SetClocksRequest>,
    ) -> Result<Response<v1::SetClocksResponse>, RpcStatus> {
        let state = self.node.set_clocks(req.into_inner().enabled).await?;
        Ok(Response::new(v1::SetClocksResponse {
            enabled: state == crate::hw::ClocksState::Locked,
        }))
    }

    type WatchNodeStream = BoxStream<v1::NodeUpdate>;

    async fn watch_node(
        &self,
        req: Request<v1::WatchNodeRequest>,
    ) -> Result<Response<Self::WatchNodeStream>, RpcStatus> {
        let requested = std::time::Duration::from_millis(u64::from(req.into_inner().interval_ms));
        Ok(Response::new(node_wire::watch(
            &self.node,
            &self.experiments,
            requested,
        )))
    }
}

/// Refuses every call the agent's table does not allow, before any handler
/// runs (see [`fleet_proto::authz`]).
pub fn authz_layer(tls: fleet_proto::tls::ServerTls) -> fleet_proto::authz::AuthzLayer {
    fleet_proto::authz::AuthzLayer::new(tls, authz::verdict, "on this agent")
}
