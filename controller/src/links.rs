//! One long-lived mTLS link per agent: its `WatchNode` stream feeds the
//! fleet view, its experiment events feed the reconciler, and its client
//! carries the controller's calls to the board.
//!
//! **Invariant.** A link never decides anything: it reports what the agent
//! says (through [`Report`]) and keeps the latest telemetry. The reconciler
//! decides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::tls::{ClientTls, Expect};
use fleet_proto::v1::{self, agent_client::AgentClient};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::scheduler::Link;

/// What a link tells the reconciler.
#[derive(Debug)]
pub enum Report {
    /// The stream to the agent is (re)established; `experiments` is what
    /// the board runs now, for reconciliation.
    Connected {
        node: String,
        experiments: Vec<v1::ExperimentStatus>,
    },
    /// An experiment on the board changed.
    Status {
        node: String,
        status: v1::ExperimentStatus,
    },
    /// A node event worth recording (thermal state, power mode).
    NodeEvent { node: String, event: v1::NodeEvent },
}

/// What the controller knows live about one node.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub last_seen: Option<Instant>,
    pub last_seen_unix_us: Option<i64>,
    pub info: Option<v1::NodeInfo>,
    pub sample: Option<v1::TelemetrySample>,
    /// Highest temperature seen per experiment's run, keyed by experiment.
    pub connected: bool,
}

impl Live {
    /// Fresh, stale (unreachable) or down (lost), from the age of the last
    /// message.
    pub fn link(&self, now: Instant, heartbeat: Duration, lost_after: Duration) -> Link {
        match self.last_seen {
            Some(t) if now.duration_since(t) < heartbeat && self.connected => Link::Fresh,
            Some(t) if now.duration_since(t) < lost_after => Link::Stale,
            // Never heard of since the controller started: unreachable, not
            // lost, until node_lost_after has passed since start.
            None => Link::Stale,
            Some(_) => Link::Down,
        }
    }
}

struct Entry {
    address: String,
    client: AgentClient<Channel>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Links {
    tls: ClientTls,
    interval: Duration,
    reports: mpsc::Sender<Report>,
    entries: Mutex<HashMap<String, Entry>>,
    live: Arc<Mutex<HashMap<String, Live>>>,
}

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Links {
    pub fn new(tls: ClientTls, interval: Duration, reports: mpsc::Sender<Report>) -> Arc<Self> {
        Arc::new(Links {
            tls,
            interval,
            reports,
            entries: Mutex::new(HashMap::new()),
            live: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Starts (or restarts, when the address changed) the link to `node`.
    pub fn ensure(&self, node: &str, address: &str) {
        let mut entries = self.entries.lock().expect("not poisoned");
        if entries.get(node).is_some_and(|e| e.address == address) {
            return;
        }
        if let Some(old) = entries.remove(node) {
            old.task.abort();
        }
        let channel = match self
            .tls
            .connect_lazy(address, Expect::Agent(node.to_owned()))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(node, address, error = %e, "bad agent address");
                return;
            }
        };
        let client = AgentClient::new(channel);
        let task = tokio::spawn(run_link(
            node.to_owned(),
            client.clone(),
            self.interval,
            self.reports.clone(),
            self.live.clone(),
        ));
        self.live
            .lock()
            .expect("not poisoned")
            .entry(node.to_owned())
            .or_default();
        entries.insert(
            node.to_owned(),
            Entry {
                address: address.to_owned(),
                client,
                task,
            },
        );
    }

    pub fn remove(&self, node: &str) {
        if let Some(e) = self.entries.lock().expect("not poisoned").remove(node) {
            e.task.abort();
        }
        self.live.lock().expect("not poisoned").remove(node);
    }

    pub fn client(&self, node: &str) -> Option<AgentClient<Channel>> {
        self.entries
            .lock()
            .expect("not poisoned")
            .get(node)
            .map(|e| e.client.clone())
    }

    pub fn live(&self, node: &str) -> Option<Live> {
        self.live.lock().expect("not poisoned").get(node).cloned()
    }

    pub fn all_live(&self) -> HashMap<String, Live> {
        self.live.lock().expect("not poisoned").clone()
    }
}

async fn run_link(
    node: String,
    mut client: AgentClient<Channel>,
    interval: Duration,
    reports: mpsc::Sender<Report>,
    live: Arc<Mutex<HashMap<String, Live>>>,
) {
    let mut backoff = BACKOFF_START;
    loop {
        match follow(&node, &mut client, interval, &reports, &live).await {
            Ok(()) => tracing::info!(%node, "agent stream ended; reconnecting"),
            Err(e) => tracing::debug!(%node, error = %e, "agent link down; retrying"),
        }
        if let Some(l) = live.lock().expect("not poisoned").get_mut(&node) {
            l.connected = false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: node info, the board's experiments, then the
/// stream until it breaks.
async fn follow(
    node: &str,
    client: &mut AgentClient<Channel>,
    interval: Duration,
    reports: &mpsc::Sender<Report>,
    live: &Arc<Mutex<HashMap<String, Live>>>,
) -> Result<(), tonic::Status> {
    let info = client.get_node(v1::GetNodeRequest {}).await?.into_inner();
    // Subscribe before listing so no change falls between the two.
    let mut stream = client
        .watch_node(v1::WatchNodeRequest {
            interval_ms: interval.as_millis() as u32,
        })
        .await?
        .into_inner();
    let experiments = client
        .list_experiments(v1::ListExperimentsRequest {})
        .await?
        .into_inner()
        .experiments;
    {
        let mut map = live.lock().expect("not poisoned");
        let l = map.entry(node.to_owned()).or_default();
        l.info = Some(info);
        l.connected = true;
        l.last_seen = Some(Instant::now());
        l.last_seen_unix_us = Some(now_us());
    }
    if reports
        .send(Report::Connected {
            node: node.to_owned(),
            experiments,
        })
        .await
        .is_err()
    {
        return Ok(());
    }
    tracing::info!(%node, "agent connected");
    while let Some(update) = stream.next().await {
        let update = update?;
        {
            let mut map = live.lock().expect("not poisoned");
            let l = map.entry(node.to_owned()).or_default();
            l.last_seen = Some(Instant::now());
            l.last_seen_unix_us = Some(now_us());
            match &update.update {
                Some(v1::node_update::Update::Sample(s)) => l.sample = Some(s.clone()),
                // A thermal change is news before the next sample: the
                // scheduler must not place on a board that just got hot.
                Some(v1::node_update::Update::Event(v1::NodeEvent {
                    kind: Some(v1::node_event::Kind::Thermal(t)),
                    ..
                })) => {
                    if let Some(s) = l.sample.as_mut() {
                        s.thermal_state = t.to;
                        s.accepting = t.to == v1::ThermalState::Normal as i32;
                        if let Some(c) = t.celsius {
                            s.hottest_c = Some(s.hottest_c.map_or(c, |h| h.max(c)));
                        }
                    }
                }
                _ => {}
            }
        }
        let report = match update.update {
            Some(v1::node_update::Update::Event(ev)) => match ev.kind {
                Some(v1::node_event::Kind::Experiment(e)) => {
                    e.status.map(|status| Report::Status {
                        node: node.to_owned(),
                        status,
                    })
                }
                Some(_) => Some(Report::NodeEvent {
                    node: node.to_owned(),
                    event: ev,
                }),
                None => None,
            },
            _ => None,
        };
        if let Some(r) = report {
            if reports.send(r).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}
