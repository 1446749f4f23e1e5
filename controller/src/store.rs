//! The controller's durable state: one sled database.
//!
//! | tree          | key                                   | value                         |
//! |---------------|---------------------------------------|-------------------------------|
//! | `experiments` | id                                    | [`ExperimentRecord`] (JSON)   |
//! | `specs`       | id                                    | the spec's wire form (protobuf), written once |
//! | `queue`       | inverted priority (u32 BE), queue seq (u64 BE) | id                   |
//! | `nodes`       | name                                  | [`NodeRecord`] (JSON)         |
//! | `placements`  | id                                    | [`PlacementRecord`] (JSON)    |
//! | `events`      | seq (u64 BE)                          | [`EventRecord`] (JSON)        |
//! | `decisions`   | id                                    | [`DecisionRecord`] (JSON): the last one, compact ([`crate::scheduler::Detail`]) |
//! | `meta`        | counter or setting name               | u64 BE counters, [`PolicyRecord`] |
//!
//! Invariants, each kept by doing every change in one sled transaction over
//! all the trees:
//!
//! - An experiment is in `queue` exactly when its phase is `queued`, and has
//!   a `placements` entry (and sits in its node's `experiments`) exactly
//!   when its phase holds a node.
//! - Every change appends its event in the same transaction, so the log
//!   never misses a change and never shows one that did not happen. Event
//!   seqs start at 1 and have no gaps.
//! - Epochs only grow, across restarts too: each placement takes the next.
//! - A write that fails a check writes nothing, and takes no seq or epoch.
//! - Every method that writes returns only after the database is flushed
//!   to disk (fsync), so whatever a caller acknowledges survives a crash.
//!
//! Records carry `version` ([`RECORD_VERSION`], the layout) and, where they
//! change, `revision` (bumped by every write). Specs keep their wire form
//! because they can hold a 1 MiB config file that no transition should
//! rewrite; the scheduling part of a spec is copied into the record
//! ([`Requirements`]).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fleet_proto::spec::{DisruptionPolicy, ExperimentId, ExperimentSpec, LabelKey, NodeName};
use fleet_proto::v1;
use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use sled::{IVec, Tree};
use tokio::sync::broadcast;

use crate::model::{
    DrainMode, EventKind, Labels, NewEvent, NodeSource, Phase, RunEnd, RunObservation, RunOutcome,
    RunRecord, RunStart, UnixMicros,
};
use crate::scheduler::{Decision, Outcome, Pending, Policy, PolicyError, Requirements};

/// The layout of every record; bumped on an incompatible change.
pub const RECORD_VERSION: u32 = 1;
/// Events a slow subscriber may fall behind by before it must re-read the
/// log ([`broadcast::error::RecvError::Lagged`]).
pub const EVENT_BUFFER: usize = 4096;

const META_SUBMIT_SEQ: &[u8] = b"submit_seq";
const META_EVENT_SEQ: &[u8] = b"event_seq";
const META_EPOCH: &[u8] = b"epoch";
const META_POLICY: &[u8] = b"policy";

/// Where the store reads the time; tests pass a fixed one.
pub type Clock = Arc<dyn Fn() -> UnixMicros + Send + Sync>;

/// The wall clock, in microseconds since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the controller's store at {path}; check that the directory is writable \
         and that no other controller holds it"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("cannot read or write the controller's store")]
    Sled(#[source] sled::Error),
    #[error("the flush of the controller's store did not finish")]
    FlushAborted(#[source] tokio::task::JoinError),
    #[error("{tree} record {key:?} in the controller's store is unreadable")]
    Corrupt {
        tree: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode a {tree} record")]
    Encode {
        tree: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{tree} record {key:?} has version {found}; this controller reads version \
         {RECORD_VERSION}: upgrade the controller"
    )]
    Version {
        tree: &'static str,
        key: String,
        found: u32,
    },
    #[error("the stored spec of experiment {id} is unreadable: {problem}")]
    CorruptSpec { id: ExperimentId, problem: String },
    #[error("the controller's store is inconsistent: {0}")]
    Inconsistent(String),
    #[error("experiment {id} already exists with another spec: choose another id, or leave it out to get one")]
    ExperimentExists { id: ExperimentId },
    #[error("experiment {id} does not exist")]
    ExperimentNotFound { id: ExperimentId },
    #[error("experiment {id} is {found}, not {expected}: it changed meanwhile; read it again")]
    PhaseConflict {
        id: ExperimentId,
        expected: Phase,
        found: Phase,
    },
    #[error("experiment {id} cannot go from {from} to {to}")]
    InvalidTransition {
        id: ExperimentId,
        from: Phase,
        to: Phase,
    },
    #[error("epoch {given} of experiment {id} is stale: its placement has epoch {current}")]
    StaleEpoch {
        id: ExperimentId,
        given: u64,
        current: u64,
    },
    #[error("run of experiment {id}: {problem}")]
    Run { id: ExperimentId, problem: String },
    #[error("node {node} does not exist: add it, or let its agent join")]
    NodeNotFound { node: NodeName },
    #[error("node {node} already exists")]
    NodeExists { node: NodeName },
    #[error("node {node} takes no new experiments: it is {why}")]
    NodeUnavailable { node: NodeName, why: &'static str },
    #[error(
        "node {node} still has experiments placed on it ({}): drain it first, or remove it by force",
        list(.experiments)
    )]
    NodeBusy {
        node: NodeName,
        experiments: Vec<ExperimentId>,
    },
    #[error("agent address {address:?} is invalid: use host:port, e.g. jetson-03.lab:7443")]
    BadAddress { address: String },
    #[error("decision for experiment {id} places nothing")]
    NotPlaced { id: ExperimentId },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

fn list(ids: &[ExperimentId]) -> String {
    ids.iter()
        .map(ExperimentId::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An experiment as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    pub version: u32,
    pub revision: u64,
    pub id: ExperimentId,
    /// The scheduling part of the spec.
    pub req: Requirements,
    /// What a disruption does to it: back to the queue, or failed.
    pub requeue_on_disruption: bool,
    pub phase: Phase,
    /// Why it is in this phase, for people.
    pub reason: String,
    /// Submission order, never changed.
    pub submit_seq: u64,
    /// Its place in the queue among equal priorities: `submit_seq`, or a
    /// later seq after Restart. A requeue after a disruption keeps it.
    pub queue_seq: u64,
    pub submitted_at: UnixMicros,
    pub submitted_by: String,
    pub updated_at: UnixMicros,
    /// The node of the current placement.
    pub node: Option<NodeName>,
    /// The epoch of the latest placement; 0 before the first.
    pub epoch: u64,
    pub runs: Vec<RunRecord>,
}

impl ExperimentRecord {
    /// Automatic restarts after crashes, over every run.
    pub fn crashes(&self) -> u64 {
        self.runs.iter().map(|r| r.crashes).sum()
    }

    /// Runs the fleet ended (thermal, drain, node lost or removed); a
    /// restart on request is not one.
    pub fn disruptions(&self) -> u64 {
        let n = self
            .runs
            .iter()
            .filter(|r| {
                r.outcome == Some(RunOutcome::Disrupted)
                    && r.disruption != Some(crate::model::Disruption::Restart)
            })
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    pub fn open_run(&self) -> Option<&RunRecord> {
        self.runs.last().filter(|r| r.is_open())
    }

    /// The scheduler's view, for a queued experiment.
    pub fn pending(&self) -> Pending {
        Pending {
            id: self.id.clone(),
            seq: self.queue_seq,
            req: self.req.clone(),
        }
    }
}

/// A node as stored: what the controller was told about it. Its live state
/// (connection, telemetry) is not stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub version: u32,
    pub revision: u64,
    pub name: NodeName,
    /// host:port of its agent.
    pub address: String,
    pub source: NodeSource,
    pub labels: Labels,
    pub cordoned: bool,
    pub cordon_reason: String,
    pub drain: Option<DrainMode>,
    /// Experiments placed there now.
    pub experiments: BTreeSet<ExperimentId>,
    pub added_at: UnixMicros,
    pub updated_at: UnixMicros,
}

impl NodeRecord {
    /// Why nothing new may go there, if so.
    pub fn unavailable(&self) -> Option<&'static str> {
        if self.drain.is_some() {
            Some("draining")
        } else if self.cordoned {
            Some("cordoned")
        } else {
            None
        }
    }
}

/// A node to add.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNode {
    pub name: NodeName,
    pub address: String,
    pub source: NodeSource,
    pub labels: Labels,
    pub cordoned: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementRecord {
    pub version: u32,
    pub id: ExperimentId,
    pub node: NodeName,
    pub epoch: u64,
    pub placed_at: UnixMicros,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub version: u32,
    pub seq: u64,
    pub at: UnixMicros,
    pub kind: EventKind,
    pub experiment: Option<ExperimentId>,
    pub node: Option<NodeName>,
    pub epoch: Option<u64>,
    /// Set on every event that changes an experiment's phase.
    pub from: Option<Phase>,
    pub to: Option<Phase>,
    pub message: String,
    pub actor: String,
}

/// The last scheduling decision for an experiment, for Explain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub version: u32,
    pub at: UnixMicros,
    pub decision: Decision,
    /// The epoch of the placement it made, if it made one.
    pub epoch: Option<u64>,
}

/// The scheduling policy set at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub version: u32,
    pub policy: Policy,
    pub updated_at: UnixMicros,
    pub updated_by: String,
}

/// A record with a layout version, checked when read.
trait Versioned {
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),*) => {
        $(impl Versioned for $t {
            fn version(&self) -> u32 {
                self.version
            }
        })*
    };
}
versioned!(
    ExperimentRecord,
    NodeRecord,
    PlacementRecord,
    EventRecord,
    DecisionRecord,
    PolicyRecord
);

/// An accepted submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub record: ExperimentRecord,
    /// The seq of its `submitted` event; 0 when it was already there.
    pub event_seq: u64,
    /// An identical spec was already stored under this id (a client that
    /// retried a submission whose answer it lost): nothing was written.
    pub already: bool,
}

/// A stored placement.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub record: ExperimentRecord,
    pub epoch: u64,
    pub event_seq: u64,
}

/// A phase change to store; see [`Store::transition`].
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub id: ExperimentId,
    /// The phase the caller saw; the change is refused if it is no longer so.
    pub from: Phase,
    pub to: Phase,
    /// Fencing: with `Some`, the change applies only while the experiment's
    /// latest placement has this epoch, so a report from a stale copy
    /// cannot move a newer placement.
    pub epoch: Option<u64>,
    /// Why, for people; becomes the experiment's reason and the event's
    /// message.
    pub reason: String,
    pub actor: String,
    pub run: RunChange,
    /// The run's heat as the controller last saw it (peak temperature,
    /// throttled), merged into the run this transition starts, ends or
    /// leaves open, in the same write: the end of a run carries its final
    /// peak.
    pub heat: Option<RunObservation>,
}

/// What a transition does to the run record.
#[derive(Debug, Clone, PartialEq)]
pub enum RunChange {
    None,
    /// The agent accepted the placement: a run begins on its node and epoch.
    Start(RunStart),
    /// The open run ended (or, with [`RunOutcome::StartFailed`], a run that
    /// never began is recorded as ended).
    End(RunEnd),
}

impl Transition {
    pub fn new(
        id: ExperimentId,
        from: Phase,
        to: Phase,
        actor: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            id,
            from,
            to,
            epoch: None,
            reason: reason.into(),
            actor: actor.into(),
            run: RunChange::None,
            heat: None,
        }
    }

    pub fn fenced(mut self, epoch: u64) -> Self {
        self.epoch = Some(epoch);
        self
    }

    pub fn start_run(mut self, start: RunStart) -> Self {
        self.run = RunChange::Start(start);
        self
    }

    pub fn end_run(mut self, end: RunEnd) -> Self {
        self.run = RunChange::End(end);
        self
    }

    /// Merges the run's heat (its peak and throttled; crashes are not
    /// taken from it) into the run record.
    pub fn heat(mut self, peak_temp_c: Option<f64>, throttled: bool) -> Self {
        self.heat = Some(RunObservation {
            crashes: None,
            peak_temp_c,
            throttled,
            board_restarts: None,
        });
        self
    }
}

/// A stored transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Transitioned {
    pub record: ExperimentRecord,
    pub event_seq: u64,
}

/// A transition to store with others in one write
/// ([`Store::record_transitions`]), and what an agent said of the run it
/// leaves open, merged after it as [`Store::observe_run`] does.
#[derive(Debug, Clone, PartialEq)]
pub struct Batched {
    pub transition: Transition,
    /// The observation and its actor.
    pub observe: Option<(RunObservation, String)>,
}

/// Durable writes and the flushes that made them so, since the store was
/// opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    pub writes: u64,
    pub flushes: u64,
}

/// Records decoded by an earlier read, each decoded again only when its
/// stored bytes changed: a scheduling pass reads every node and what is
/// placed on it, and most of them did not change since the last pass.
/// Comparing the bytes is much cheaper than decoding them.
#[derive(Default)]
pub struct RecordCache {
    nodes: HashMap<IVec, (IVec, NodeRecord)>,
    experiments: HashMap<IVec, (IVec, ExperimentRecord)>,
}

/// The record stored as `bytes`, from `old` when it holds the same bytes
/// (the entry moves to `new`).
fn cached<T: DeserializeOwned + Versioned + Clone>(
    tree: &'static str,
    old: &mut HashMap<IVec, (IVec, T)>,
    new: &mut HashMap<IVec, (IVec, T)>,
    key: IVec,
    bytes: IVec,
) -> Result<T, StoreError> {
    let rec = match old.remove(&key) {
        Some((seen, rec)) if seen == bytes => rec,
        _ => decode(tree, &key, &bytes)?,
    };
    new.insert(key, (bytes, rec.clone()));
    Ok(rec)
}

/// The controller's store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    experiments: Tree,
    specs: Tree,
    queue: Tree,
    nodes: Tree,
    placements: Tree,
    events: Tree,
    decisions: Tree,
    meta: Tree,
    clock: Clock,
    /// The highest event seq known to be flushed and sent to subscribers.
    published: Mutex<u64>,
    events_tx: broadcast::Sender<EventRecord>,
    /// Concurrent writers share flushes ([`group::GroupCommit`]).
    group: group::GroupCommit,
    /// The highest event seq a completed flush covered: set by the flush
    /// alone, never by the writer waiting for it.
    durable_event_seq: AtomicU64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("published", &*self.lock_published())
            .finish_non_exhaustive()
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// The trees of one transaction.
struct Tx<'a> {
    experiments: &'a TransactionalTree,
    specs: &'a TransactionalTree,
    queue: &'a TransactionalTree,
    nodes: &'a TransactionalTree,
    placements: &'a TransactionalTree,
    events: &'a TransactionalTree,
    decisions: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    now: UnixMicros,
}

impl Tx<'_> {
    fn get<T: DeserializeOwned + Versioned>(
        tree: &TransactionalTree,
        name: &'static str,
        key: &[u8],
    ) -> TxResult<Option<T>> {
        match tree.get(key)? {
            None => Ok(None),
            Some(bytes) => decode(name, key, &bytes).map(Some).or_else(abort),
        }
    }

    fn put<T: Serialize>(
        tree: &TransactionalTree,
        name: &'static str,
        key: &[u8],
        value: &T,
    ) -> TxResult<()> {
        let bytes = encode(name, value).or_else(abort)?;
        tree.insert(key, bytes)?;
        Ok(())
    }

    fn experiment(&self, id: &ExperimentId) -> TxResult<ExperimentRecord> {
        match Self::get(self.experiments, "experiments", id.as_str().as_bytes())? {
            Some(rec) => Ok(rec),
            None => abort(StoreError::ExperimentNotFound { id: id.clone() }),
        }
    }

    fn put_experiment(&self, rec: &mut ExperimentRecord) -> TxResult<()> {
        rec.revision += 1;
        rec.updated_at = self.now;
        Self::put(
            self.experiments,
            "experiments",
            rec.id.as_str().as_bytes(),
            rec,
        )
    }

    fn node(&self, name: &NodeName) -> TxResult<Option<NodeRecord>> {
        Self::get(self.nodes, "nodes", name.as_str().as_bytes())
    }

    fn put_node(&self, rec: &mut NodeRecord) -> TxResult<()> {
        rec.revision += 1;
        rec.updated_at = self.now;
        Self::put(self.nodes, "nodes", rec.name.as_str().as_bytes(), rec)
    }

    /// The next value of a counter in `meta`; the first is 1.
    fn bump(&self, key: &[u8]) -> TxResult<u64> {
        let current = match self.meta.get(key)? {
            None => 0,
            Some(bytes) => match <[u8; 8]>::try_from(bytes.as_ref()) {
                Ok(b) => u64::from_be_bytes(b),
                Err(_) => {
                    return abort(StoreError::Inconsistent(format!(
                        "counter {} is not 8 bytes",
                        String::from_utf8_lossy(key)
                    )))
                }
            },
        };
        let next = current + 1;
        self.meta.insert(key, &next.to_be_bytes())?;
        Ok(next)
    }

    fn append(
        &self,
        new: NewEvent,
        from: Option<Phase>,
        to: Option<Phase>,
    ) -> TxResult<EventRecord> {
        let seq = self.bump(META_EVENT_SEQ)?;
        let event = EventRecord {
            version: RECORD_VERSION,
            seq,
            at: self.now,
            kind: new.kind,
            experiment: new.experiment,
            node: new.node,
            epoch: new.epoch,
            from,
            to,
            message: new.message,
            actor: new.actor,
        };
        Self::put(self.events, "events", &seq.to_be_bytes(), &event)?;
        Ok(event)
    }

    /// Records the decision unless the stored one says the same.
    fn record_decision(&self, decision: &Decision, epoch: Option<u64>) -> TxResult<()> {
        let key = decision.experiment.as_str().as_bytes();
        // A placement's epoch is new: no stored decision says the same.
        if epoch.is_none() {
            let old: Option<DecisionRecord> = Self::get(self.decisions, "decisions", key)?;
            if old.is_some_and(|old| old.decision == *decision && old.epoch == epoch) {
                return Ok(());
            }
        }
        let rec = DecisionRecord {
            version: RECORD_VERSION,
            at: self.now,
            decision: decision.clone(),
            epoch,
        };
        Self::put(self.decisions, "decisions", key, &rec)
    }
}

fn queue_key(priority: u32, seq: u64) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(&(u32::MAX - priority).to_be_bytes());
    key[4..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn encode<T: Serialize>(tree: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { tree, source })
}

fn decode<T: DeserializeOwned + Versioned>(
    tree: &'static str,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    let key_text = || {
        if tree == "events" {
            <[u8; 8]>::try_from(key)
                .map(|b| u64::from_be_bytes(b).to_string())
                .unwrap_or_else(|_| format!("{key:?}"))
        } else {
            String::from_utf8_lossy(key).into_owned()
        }
    };
    /// Only the version, to explain a record that does not parse.
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let version_error = |found| StoreError::Version {
        tree,
        key: key_text(),
        found,
    };
    match serde_json::from_slice::<T>(bytes) {
        Ok(rec) if rec.version() == RECORD_VERSION => Ok(rec),
        Ok(rec) => Err(version_error(rec.version())),
        Err(source) => match serde_json::from_slice::<VersionOnly>(bytes) {
            Ok(v) if v.version != RECORD_VERSION => Err(version_error(v.version)),
            _ => Err(StoreError::Corrupt {
                tree,
                key: key_text(),
                source,
            }),
        },
    }
}

fn check_address(address: &str) -> Result<(), StoreError> {
    let bad = || StoreError::BadAddress {
        address: address.to_owned(),
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'_'));
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(()),
        _ => Err(bad()),
    }
}

impl Store {
    /// Opens (or creates) the store in the directory `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_clock(path, system_clock())
    }

    pub fn open_with_clock(path: &Path, clock: Clock) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let db = sled::open(path).map_err(open_err)?;
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        let inner = Inner {
            experiments: tree("experiments")?,
            specs: tree("specs")?,
            queue: tree("queue")?,
            nodes: tree("nodes")?,
            placements: tree("placements")?,
            events: tree("events")?,
            decisions: tree("decisions")?,
            meta: tree("meta")?,
            db,
            clock,
            published: Mutex::new(0),
            events_tx: broadcast::channel(EVENT_BUFFER).0,
            group: group::GroupCommit::new(),
            durable_event_seq: AtomicU64::new(0),
        };
        let store = Self {
            inner: Arc::new(inner),
        };
        // Everything found on disk was flushed by an earlier run, or
        // survived without a flush: either way it is what the log now says.
        let stored = store.stored_event_seq()?;
        *store.lock_published() = stored;
        store
            .inner
            .durable_event_seq
            .store(stored, Ordering::SeqCst);
        Ok(store)
    }

    pub fn now(&self) -> UnixMicros {
        (self.inner.clock)()
    }

    fn lock_published(&self) -> std::sync::MutexGuard<'_, u64> {
        // A panic while holding it cannot leave the number half-written.
        self.inner
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stored_event_seq(&self) -> Result<u64, StoreError> {
        self.counter(META_EVENT_SEQ)
    }

    fn counter(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.inner.meta.get(key).map_err(StoreError::Sled)? {
            None => Ok(0),
            Some(bytes) => <[u8; 8]>::try_from(bytes.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    StoreError::Inconsistent(format!(
                        "counter {} is not 8 bytes",
                        String::from_utf8_lossy(key)
                    ))
                }),
        }
    }

    /// Runs `f` as one transaction over every tree; retried by sled on a
    /// conflict, so `f` must have no effect outside the trees.
    fn txn<T>(&self, f: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<T, StoreError> {
        let i = &*self.inner;
        let now = self.now();
        let trees = (
            &i.experiments,
            &i.specs,
            &i.queue,
            &i.nodes,
            &i.placements,
            &i.events,
            &i.decisions,
            &i.meta,
        );
        trees
            .transaction(
                |(experiments, specs, queue, nodes, placements, events, decisions, meta)| {
                    f(&Tx {
                        experiments,
                        specs,
                        queue,
                        nodes,
                        placements,
                        events,
                        decisions,
                        meta,
                        now,
                    })
                },
            )
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => StoreError::Sled(e),
            })
    }

    /// Returns once everything written so far is on disk, then sends
    /// subscribers the events up to `up_to` they have not had, in order.
    /// Called right after the caller's write.
    ///
    /// Concurrent writers share flushes (group commit, [`group`]): a writer
    /// waits for the flush that is running and flushes again only if that
    /// one started before its write. sled runs transactions one at a time,
    /// so an event with a lower seq was committed before the caller's and
    /// the flush that covers the caller covers it too.
    async fn commit(&self, up_to: u64) -> Result<(), StoreError> {
        let ticket = self.inner.group.ticket();
        self.inner.group.wait(ticket, || self.flush()).await?;
        let mut published = self.lock_published();
        if *published < up_to {
            for event in self.read_events(*published + 1, up_to, usize::MAX)? {
                // No subscriber is not an error.
                let _ = self.inner.events_tx.send(event);
            }
            *published = up_to;
        }
        Ok(())
    }

    /// Flushes everything written before it starts (sled's `flush`).
    ///
    /// The flush is sled's blocking one on tokio's blocking pool: sled
    /// 0.34's `flush_async` can hang for ever when several run at once
    /// (spacejam/sled#1241, #1308; fixed only after 0.34.7). Group commit
    /// runs one flush at a time; a caller dropped mid-flush leaves its
    /// flush running on the pool, which sled's blocking flush allows.
    async fn flush(&self) -> Result<(), StoreError> {
        // Committed before the flush starts, so durable when it returns.
        let covers = self.stored_event_seq()?;
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(StoreError::FlushAborted)?
            .map_err(StoreError::Sled)?;
        self.inner
            .durable_event_seq
            .fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Writes and flushes so far: concurrent writers share flushes.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            writes: self.inner.group.written(),
            flushes: self.inner.group.flushes(),
        }
    }

    /// The highest event seq a completed flush covered.
    #[cfg(test)]
    fn durable_event_seq(&self) -> u64 {
        self.inner.durable_event_seq.load(Ordering::SeqCst)
    }

    // Experiments.

    /// Stores a validated spec as a new queued experiment, with the next
    /// submission seq and a `submitted` event. An id in use by another spec
    /// is refused and nothing is written; the same spec again is answered
    /// with what is stored (submission is idempotent: a client that lost
    /// the answer to a submission that was stored may send it again).
    pub async fn submit(&self, spec: &ExperimentSpec, by: &str) -> Result<Submitted, StoreError> {
        let id = spec.id().clone();
        let key = id.as_str().as_bytes();
        let proto = spec.to_proto();
        let wire = proto.encode_to_vec();
        let req = Requirements::of(spec);
        let requeue_on_disruption = spec.lifecycle().on_disruption() == DisruptionPolicy::Requeue;
        let written = self.txn(|tx| {
            if let Some(bytes) = tx.experiments.get(key)? {
                // The same spec again: compared as values, not bytes (maps
                // such as env encode in no fixed order).
                let same = tx
                    .specs
                    .get(key)?
                    .and_then(|stored| v1::ExperimentSpec::decode(stored.as_ref()).ok())
                    .is_some_and(|stored| stored == proto);
                if !same {
                    return abort(StoreError::ExperimentExists { id: id.clone() });
                }
                return Ok(Err(bytes));
            }
            let seq = tx.bump(META_SUBMIT_SEQ)?;
            let mut record = ExperimentRecord {
                version: RECORD_VERSION,
                revision: 0,
                id: id.clone(),
                req: req.clone(),
                requeue_on_disruption,
                phase: Phase::Queued,
                reason: "waiting for the scheduler".to_owned(),
                submit_seq: seq,
                queue_seq: seq,
                submitted_at: tx.now,
                submitted_by: by.to_owned(),
                updated_at: tx.now,
                node: None,
                epoch: 0,
                runs: Vec::new(),
            };
            tx.put_experiment(&mut record)?;
            tx.specs.insert(key, wire.as_slice())?;
            tx.queue.insert(&queue_key(req.priority, seq), key)?;
            let event = tx.append(
                NewEvent::new(EventKind::Submitted, by, format!("submitted by {by}"))
                    .experiment(id.clone()),
                None,
                Some(Phase::Queued),
            )?;
            Ok(Ok((record, event)))
        })?;
        let (record, event) = match written {
            Ok(written) => written,
            Err(bytes) => {
                let record: ExperimentRecord = decode("experiments", key, &bytes)?;
                // What answered the first time may not have been flushed yet.
                self.commit(self.stored_event_seq()?).await?;
                return Ok(Submitted {
                    record,
                    event_seq: 0,
                    already: true,
                });
            }
        };
        self.commit(event.seq).await?;
        Ok(Submitted {
            record,
            event_seq: event.seq,
            already: false,
        })
    }

    pub fn experiment(&self, id: &ExperimentId) -> Result<Option<ExperimentRecord>, StoreError> {
        let key = id.as_str().as_bytes();
        self.inner
            .experiments
            .get(key)
            .map_err(StoreError::Sled)?
            .map(|bytes| decode("experiments", key, &bytes))
            .transpose()
    }

    /// The spec as accepted, validated again on the way out.
    pub fn spec(&self, id: &ExperimentId) -> Result<Option<ExperimentSpec>, StoreError> {
        let Some(bytes) = self
            .inner
            .specs
            .get(id.as_str().as_bytes())
            .map_err(StoreError::Sled)?
        else {
            return Ok(None);
        };
        let corrupt = |problem: String| StoreError::CorruptSpec {
            id: id.clone(),
            problem,
        };
        let wire =
            v1::ExperimentSpec::decode(bytes.as_ref()).map_err(|e| corrupt(e.to_string()))?;
        ExperimentSpec::try_from(&wire)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Every experiment, by id.
    pub fn experiments(&self) -> Result<Vec<ExperimentRecord>, StoreError> {
        self.inner
            .experiments
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(StoreError::Sled)?;
                decode("experiments", &k, &v)
            })
            .collect()
    }

    /// Queued experiments in queue order: priority, then age.
    pub fn queued(&self) -> Result<Vec<ExperimentRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.inner.queue.iter() {
            let (_, id) = kv.map_err(StoreError::Sled)?;
            let id_text = String::from_utf8_lossy(&id);
            let rec: ExperimentRecord =
                match self.inner.experiments.get(&id).map_err(StoreError::Sled)? {
                    Some(bytes) => decode("experiments", &id, &bytes)?,
                    None => {
                        return Err(StoreError::Inconsistent(format!(
                            "queued experiment {id_text} has no record"
                        )))
                    }
                };
            if rec.phase != Phase::Queued {
                return Err(StoreError::Inconsistent(format!(
                    "experiment {id_text} is in the queue but {}",
                    rec.phase
                )));
            }
            out.push(rec);
        }
        Ok(out)
    }

    /// The queue as the scheduler sees it.
    pub fn pending(&self) -> Result<Vec<Pending>, StoreError> {
        Ok(self
            .queued()?
            .iter()
            .map(ExperimentRecord::pending)
            .collect())
    }

    /// Places a queued experiment on a node with the next epoch: phase
    /// `placing`, a placement, the node's reservation and a `placed` event,
    /// all at once. Refused when the experiment is no longer queued, or the
    /// node is gone, cordoned or draining.
    pub async fn place(&self, id: &ExperimentId, node: &NodeName) -> Result<Placed, StoreError> {
        let placed = self.txn(|tx| place_in(tx, id, node, None))?;
        self.commit(placed.event_seq).await?;
        Ok(placed)
    }

    /// Stores a scheduler pass: each placing decision becomes a placement
    /// (as [`Store::place`]) and every decision is kept for Explain. The
    /// pass is one transaction in which each placement is checked on its
    /// own: one refused (the experiment cancelled meanwhile, the node
    /// cordoned) writes nothing and does not undo the others. One flush
    /// covers the pass; it returns after it, so every placement it reports
    /// is durable before anyone is told to start it.
    pub async fn record_pass(
        &self,
        decisions: &[Decision],
    ) -> Result<Vec<Result<Placed, StoreError>>, StoreError> {
        let results = self.txn(|tx| {
            let mut results = Vec::new();
            for decision in decisions {
                match &decision.outcome {
                    Outcome::Placed { node, .. } => {
                        results.push(match check_place(tx, &decision.experiment, node)? {
                            Ok((rec, node_rec)) => {
                                Ok(write_place(tx, rec, node_rec, Some(decision))?)
                            }
                            Err(e) => Err(e),
                        });
                    }
                    Outcome::Unschedulable | Outcome::Blocked { .. } => {
                        tx.record_decision(decision, None)?;
                        // The queued reason follows the decision, so List shows it.
                        let summary = decision.summary();
                        let key = decision.experiment.as_str().as_bytes();
                        if let Some(mut rec) =
                            Tx::get::<ExperimentRecord>(tx.experiments, "experiments", key)?
                        {
                            if rec.phase == Phase::Queued && rec.reason != summary {
                                rec.reason = summary;
                                tx.put_experiment(&mut rec)?;
                            }
                        }
                    }
                }
            }
            Ok(results)
        })?;
        let up_to = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|p| p.event_seq)
            .max()
            .unwrap_or(0);
        self.commit(up_to).await?;
        Ok(results)
    }

    /// Changes an experiment's phase, with everything that goes with it: the
    /// queue entry, the placement and the node's reservation, the run
    /// record, and the event, all in one transaction.
    ///
    /// Refused, with nothing written, when the experiment is not in
    /// `t.from`, the step is not allowed ([`Phase::can_become`]), the epoch
    /// is stale, or the run change does not fit: a run starts only on a
    /// placement, and a transition that leaves the node must say how an
    /// open run ended. A run ended by a disruption goes back to the queue or
    /// to failed as the experiment's `on_disruption` says; a restart goes
    /// back to the queue.
    pub async fn transition(&self, t: &Transition) -> Result<Transitioned, StoreError> {
        let done = self.txn(|tx| transition_in(tx, t))?;
        self.commit(done.event_seq).await?;
        Ok(done)
    }

    /// Merges what telemetry and the agent said about the open run of
    /// `epoch`: crashes so far, the peak temperature, throttling. A new
    /// crash appends a `crashed` event. Writes nothing when nothing changed.
    pub async fn observe_run(
        &self,
        id: &ExperimentId,
        epoch: u64,
        obs: RunObservation,
        actor: &str,
    ) -> Result<ExperimentRecord, StoreError> {
        let (record, written) = self.txn(|tx| observe_in(tx, id, epoch, &obs, actor))?;
        // Flushed even without an event (the peak temperature is part of
        // the run record), but not when nothing was written.
        if let Some(event) = written {
            self.commit(event.map_or(0, |e| e.seq)).await?;
        }
        Ok(record)
    }

    /// Stores several transitions in one transaction and one flush, each
    /// checked on its own as [`Store::transition`] does: one refused writes
    /// nothing and leaves the others. A transition stored with an
    /// observation has it merged into the run it leaves open (as
    /// [`Store::observe_run`], its `crashed` event included) in the same
    /// write. Transitions apply in order: a later one sees the earlier.
    /// Returns after the flush, so every transition it reports is durable.
    pub async fn record_transitions(
        &self,
        batch: &[Batched],
    ) -> Result<Vec<Result<Transitioned, StoreError>>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (results, up_to) = self.txn(|tx| {
            let mut results = Vec::with_capacity(batch.len());
            let mut up_to = 0;
            for b in batch {
                let t = &b.transition;
                let checked = match check_transition(tx, t)? {
                    Ok(checked) => checked,
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                };
                let mut done = write_transition(tx, t, checked)?;
                up_to = up_to.max(done.event_seq);
                let epoch = done.record.epoch;
                let open = done.record.open_run().is_some_and(|r| r.epoch == epoch);
                if let (Some((obs, actor)), true) = (&b.observe, open) {
                    let (rec, written) = observe_in(tx, &t.id, epoch, obs, actor)?;
                    if let Some(Some(event)) = written {
                        up_to = up_to.max(event.seq);
                    }
                    done.record = rec;
                }
                results.push(Ok(done));
            }
            Ok((results, up_to))
        })?;
        if results.iter().any(Result::is_ok) {
            self.commit(up_to).await?;
        }
        Ok(results)
    }

    pub fn placement(&self, id: &ExperimentId) -> Result<Option<PlacementRecord>, StoreError> {
        let key = id.as_str().as_bytes();
        self.inner
            .placements
            .get(key)
            .map_err(StoreError::Sled)?
            .map(|bytes| decode("placements", key, &bytes))
            .transpose()
    }

    pub fn placements(&self) -> Result<Vec<PlacementRecord>, StoreError> {
        self.inner
            .placements
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(StoreError::Sled)?;
                decode("placements", &k, &v)
            })
            .collect()
    }

    /// The last decision recorded for an experiment.
    pub fn decision(&self, id: &ExperimentId) -> Result<Option<DecisionRecord>, StoreError> {
        let key = id.as_str().as_bytes();
        self.inner
            .decisions
            .get(key)
            .map_err(StoreError::Sled)?
            .map(|bytes| decode("decisions", key, &bytes))
            .transpose()
    }

    /// Takes the next epoch without placing anything (for a direct start
    /// outside the scheduler); placements take theirs in their own
    /// transaction.
    pub async fn next_epoch(&self) -> Result<u64, StoreError> {
        let epoch = self.txn(|tx| tx.bump(META_EPOCH))?;
        self.commit(0).await?;
        Ok(epoch)
    }

    // Nodes.

    /// Adds a node; refused if one of that name exists.
    pub async fn add_node(&self, node: &NewNode, actor: &str) -> Result<NodeRecord, StoreError> {
        check_address(&node.address)?;
        let (rec, event) = self.txn(|tx| {
            if tx.node(&node.name)?.is_some() {
                return abort(StoreError::NodeExists {
                    node: node.name.clone(),
                });
            }
            insert_node(tx, node, actor)
        })?;
        self.commit(event.seq).await?;
        Ok(rec)
    }

    /// A node announcing itself (an agent joining, or a node from the config
    /// file at start-up): added when unknown, its address updated when it
    /// moved. Labels and cordon set at run time are kept. Writes nothing when
    /// nothing changed.
    pub async fn ensure_node(&self, node: &NewNode, actor: &str) -> Result<NodeRecord, StoreError> {
        check_address(&node.address)?;
        if let Some(rec) = self.node(&node.name)? {
            if rec.address == node.address {
                return Ok(rec);
            }
        }
        let (rec, event) = self.txn(|tx| match tx.node(&node.name)? {
            Some(rec) if rec.address == node.address => Ok((rec, None)),
            Some(mut rec) => {
                let message = format!(
                    "node {} moved from {} to {}",
                    rec.name, rec.address, node.address
                );
                rec.address = node.address.clone();
                tx.put_node(&mut rec)?;
                let event = tx.append(
                    NewEvent::new(EventKind::NodeJoined, actor, message).node(rec.name.clone()),
                    None,
                    None,
                )?;
                Ok((rec, Some(event)))
            }
            None => {
                let (rec, event) = insert_node(tx, node, actor)?;
                Ok((rec, Some(event)))
            }
        })?;
        if let Some(event) = event {
            self.commit(event.seq).await?;
        }
        Ok(rec)
    }

    pub fn node(&self, name: &NodeName) -> Result<Option<NodeRecord>, StoreError> {
        let key = name.as_str().as_bytes();
        self.inner
            .nodes
            .get(key)
            .map_err(StoreError::Sled)?
            .map(|bytes| decode("nodes", key, &bytes))
            .transpose()
    }

    /// Every node, by name.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.inner
            .nodes
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(StoreError::Sled)?;
                decode("nodes", &k, &v)
            })
            .collect()
    }

    /// Every node, by name, as [`Store::nodes`], decoding only the records
    /// that changed since `cache` saw them.
    pub fn nodes_cached(&self, cache: &mut RecordCache) -> Result<Vec<NodeRecord>, StoreError> {
        let mut old = std::mem::take(&mut cache.nodes);
        let mut out = Vec::new();
        for kv in self.inner.nodes.iter() {
            let (k, v) = kv.map_err(StoreError::Sled)?;
            out.push(cached("nodes", &mut old, &mut cache.nodes, k, v)?);
        }
        Ok(out)
    }

    /// The experiments of `ids` that exist, as [`Store::experiment`],
    /// decoding only the records that changed since `cache` saw them; the
    /// cache keeps only these.
    pub fn experiments_cached<'a>(
        &self,
        cache: &mut RecordCache,
        ids: impl IntoIterator<Item = &'a ExperimentId>,
    ) -> Result<Vec<ExperimentRecord>, StoreError> {
        let mut old = std::mem::take(&mut cache.experiments);
        let mut out = Vec::new();
        for id in ids {
            let key = id.as_str().as_bytes();
            let Some(v) = self.inner.experiments.get(key).map_err(StoreError::Sled)? else {
                continue;
            };
            out.push(cached(
                "experiments",
                &mut old,
                &mut cache.experiments,
                IVec::from(key),
                v,
            )?);
        }
        Ok(out)
    }

    /// Applies `change` to a stored node; when it returns an event, the
    /// node and the event are written together and flushed. With `None`
    /// nothing is written.
    async fn update_node(
        &self,
        name: &NodeName,
        change: impl Fn(&mut NodeRecord) -> Option<NewEvent>,
    ) -> Result<NodeRecord, StoreError> {
        let (rec, event) = self.txn(|tx| {
            let Some(mut rec) = tx.node(name)? else {
                return abort(StoreError::NodeNotFound { node: name.clone() });
            };
            match change(&mut rec) {
                None => Ok((rec, None)),
                Some(new) => {
                    tx.put_node(&mut rec)?;
                    let event = tx.append(new.node(name.clone()), None, None)?;
                    Ok((rec, Some(event)))
                }
            }
        })?;
        if let Some(event) = event {
            self.commit(event.seq).await?;
        }
        Ok(rec)
    }

    /// Nothing new is placed on a cordoned node.
    pub async fn cordon(
        &self,
        name: &NodeName,
        reason: &str,
        actor: &str,
    ) -> Result<NodeRecord, StoreError> {
        self.update_node(name, |rec| {
            if rec.cordoned && rec.cordon_reason == reason {
                return None;
            }
            rec.cordoned = true;
            rec.cordon_reason = reason.to_owned();
            Some(NewEvent::new(
                EventKind::NodeCordoned,
                actor,
                with_reason("cordoned", reason),
            ))
        })
        .await
    }

    /// Ends a cordon and a drain.
    pub async fn uncordon(&self, name: &NodeName, actor: &str) -> Result<NodeRecord, StoreError> {
        self.update_node(name, |rec| {
            if !rec.cordoned && rec.drain.is_none() {
                return None;
            }
            rec.cordoned = false;
            rec.cordon_reason.clear();
            rec.drain = None;
            Some(NewEvent::new(
                EventKind::NodeUncordoned,
                actor,
                "uncordoned",
            ))
        })
        .await
    }

    /// Cordons the node and marks it draining; the experiments placed there
    /// are in the returned record, for the caller to wait for or stop.
    pub async fn drain(
        &self,
        name: &NodeName,
        mode: DrainMode,
        reason: &str,
        actor: &str,
    ) -> Result<NodeRecord, StoreError> {
        self.update_node(name, |rec| {
            if rec.drain == Some(mode) && rec.cordon_reason == reason {
                return None;
            }
            rec.cordoned = true;
            rec.cordon_reason = reason.to_owned();
            rec.drain = Some(mode);
            let how = match mode {
                DrainMode::Wait => "draining: waiting for its experiments to finish",
                DrainMode::Requeue => "draining: requeueing its experiments",
            };
            Some(NewEvent::new(
                EventKind::NodeDraining,
                actor,
                with_reason(how, reason),
            ))
        })
        .await
    }

    /// Sets (adds or replaces) and removes labels.
    pub async fn set_labels(
        &self,
        name: &NodeName,
        set: &Labels,
        remove: &[LabelKey],
        actor: &str,
    ) -> Result<NodeRecord, StoreError> {
        self.update_node(name, |rec| {
            let before = rec.labels.clone();
            for key in remove {
                rec.labels.remove(key);
            }
            rec.labels
                .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
            if rec.labels == before {
                return None;
            }
            let text: Vec<String> = rec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Some(NewEvent::new(
                EventKind::NodeLabelsChanged,
                actor,
                format!("labels: {}", text.join(", ")),
            ))
        })
        .await
    }

    /// Forgets a node. Refused while experiments are placed there: the
    /// caller disrupts them first. Returns whether it existed.
    pub async fn remove_node(&self, name: &NodeName, actor: &str) -> Result<bool, StoreError> {
        let event = self.txn(|tx| {
            let Some(rec) = tx.node(name)? else {
                return Ok(None);
            };
            if !rec.experiments.is_empty() {
                return abort(StoreError::NodeBusy {
                    node: name.clone(),
                    experiments: rec.experiments.iter().cloned().collect(),
                });
            }
            tx.nodes.remove(name.as_str().as_bytes())?;
            let event = tx.append(
                NewEvent::new(
                    EventKind::NodeRemoved,
                    actor,
                    format!("node {name} removed"),
                )
                .node(name.clone()),
                None,
                None,
            )?;
            Ok(Some(event))
        })?;
        match event {
            Some(event) => {
                self.commit(event.seq).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    // Policy.

    /// The policy set at run time; `None` until the first SetPolicy, when the
    /// config's applies.
    pub fn policy(&self) -> Result<Option<PolicyRecord>, StoreError> {
        self.inner
            .meta
            .get(META_POLICY)
            .map_err(StoreError::Sled)?
            .map(|bytes| decode("meta", META_POLICY, &bytes))
            .transpose()
    }

    /// Stores a new policy after checking it; a policy that fails its
    /// check writes nothing.
    pub async fn set_policy(
        &self,
        policy: &Policy,
        actor: &str,
    ) -> Result<PolicyRecord, StoreError> {
        policy.check()?;
        let (rec, event) = self.txn(|tx| {
            let rec = PolicyRecord {
                version: RECORD_VERSION,
                policy: *policy,
                updated_at: tx.now,
                updated_by: actor.to_owned(),
            };
            Tx::put(tx.meta, "meta", META_POLICY, &rec)?;
            let event = tx.append(
                NewEvent::new(
                    EventKind::PolicyChanged,
                    actor,
                    format!(
                        "policy {}{}, margin {:.1} °C",
                        policy.policy,
                        if policy.strict_order {
                            ", strict order"
                        } else {
                            ""
                        },
                        policy.temp_margin_c
                    ),
                ),
                None,
                None,
            )?;
            Ok((rec, event))
        })?;
        self.commit(event.seq).await?;
        Ok(rec)
    }

    // Events.

    /// Appends an event that goes with no stored change: a node connecting
    /// or going silent, a thermal or power mode change.
    pub async fn append_event(&self, event: NewEvent) -> Result<EventRecord, StoreError> {
        let event = self.txn(|tx| tx.append(event.clone(), None, None))?;
        self.commit(event.seq).await?;
        Ok(event)
    }

    /// Flushed events from `from` on (inclusive), at most `limit`.
    pub fn events_from(&self, from: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let up_to = *self.lock_published();
        self.read_events(from.max(1), up_to, limit)
    }

    /// The seq of the last flushed event; 0 when the log is empty.
    pub fn last_event_seq(&self) -> u64 {
        *self.lock_published()
    }

    /// Every event flushed from now on, in seq order.
    ///
    /// To replay and then follow without a gap or a duplicate: subscribe
    /// first, replay with [`Store::events_from`], then skip received events
    /// up to the last replayed seq. On `Lagged`, replay again from the last
    /// seq seen.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.inner.events_tx.subscribe()
    }

    fn read_events(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        if from > to {
            return Ok(Vec::new());
        }
        self.inner
            .events
            .range(from.to_be_bytes()..=to.to_be_bytes())
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(StoreError::Sled)?;
                decode("events", &k, &v)
            })
            .collect()
    }
}

/// Stores a new node and its `added` (or `joined`) event.
fn insert_node(tx: &Tx<'_>, node: &NewNode, actor: &str) -> TxResult<(NodeRecord, EventRecord)> {
    let mut rec = NodeRecord {
        version: RECORD_VERSION,
        revision: 0,
        name: node.name.clone(),
        address: node.address.clone(),
        source: node.source,
        labels: node.labels.clone(),
        cordoned: node.cordoned,
        cordon_reason: String::new(),
        drain: None,
        experiments: BTreeSet::new(),
        added_at: tx.now,
        updated_at: tx.now,
    };
    tx.put_node(&mut rec)?;
    let kind = match node.source {
        NodeSource::Joined => EventKind::NodeJoined,
        NodeSource::Config | NodeSource::Added => EventKind::NodeAdded,
    };
    let event = tx.append(
        NewEvent::new(
            kind,
            actor,
            format!("node {} at {}", node.name, node.address),
        )
        .node(node.name.clone()),
        None,
        None,
    )?;
    Ok((rec, event))
}

fn with_reason(what: &str, reason: &str) -> String {
    if reason.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {reason}")
    }
}

fn place_in(
    tx: &Tx<'_>,
    id: &ExperimentId,
    node: &NodeName,
    decision: Option<&Decision>,
) -> TxResult<Placed> {
    match check_place(tx, id, node)? {
        Ok((rec, node_rec)) => write_place(tx, rec, node_rec, decision),
        Err(e) => abort(e),
    }
}

/// Whether a placement may be stored: the experiment is still queued, and
/// pinned to this node if pinned; the node exists and takes new work. The
/// records to change come back with a yes; a no writes nothing.
fn check_place(
    tx: &Tx<'_>,
    id: &ExperimentId,
    node: &NodeName,
) -> TxResult<Result<(ExperimentRecord, NodeRecord), StoreError>> {
    let Some(rec) =
        Tx::get::<ExperimentRecord>(tx.experiments, "experiments", id.as_str().as_bytes())?
    else {
        return Ok(Err(StoreError::ExperimentNotFound { id: id.clone() }));
    };
    if rec.phase != Phase::Queued {
        return Ok(Err(StoreError::PhaseConflict {
            id: id.clone(),
            expected: Phase::Queued,
            found: rec.phase,
        }));
    }
    if let Some(pin) = &rec.req.node {
        if pin != node {
            return Ok(Err(StoreError::Inconsistent(format!(
                "experiment {id} is pinned to {pin}, not {node}"
            ))));
        }
    }
    let Some(node_rec) = tx.node(node)? else {
        return Ok(Err(StoreError::NodeNotFound { node: node.clone() }));
    };
    if let Some(why) = node_rec.unavailable() {
        return Ok(Err(StoreError::NodeUnavailable {
            node: node.clone(),
            why,
        }));
    }
    Ok(Ok((rec, node_rec)))
}

/// Writes a placement [`check_place`] allowed: the next epoch, the queue
/// entry gone, the placement, the node's reservation, the experiment's
/// phase, the decision and the `placed` event.
fn write_place(
    tx: &Tx<'_>,
    mut rec: ExperimentRecord,
    mut node_rec: NodeRecord,
    decision: Option<&Decision>,
) -> TxResult<Placed> {
    let id = &rec.id.clone();
    let node = &node_rec.name.clone();
    let epoch = tx.bump(META_EPOCH)?;
    let key = id.as_str().as_bytes();
    tx.queue
        .remove(&queue_key(rec.req.priority, rec.queue_seq))?;
    Tx::put(
        tx.placements,
        "placements",
        key,
        &PlacementRecord {
            version: RECORD_VERSION,
            id: id.clone(),
            node: node.clone(),
            epoch,
            placed_at: tx.now,
        },
    )?;
    node_rec.experiments.insert(id.clone());
    tx.put_node(&mut node_rec)?;
    let message = decision.map_or_else(|| format!("placed on {node}"), Decision::summary);
    rec.phase = Phase::Placing;
    rec.node = Some(node.clone());
    rec.epoch = epoch;
    rec.reason.clone_from(&message);
    tx.put_experiment(&mut rec)?;
    if let Some(d) = decision {
        tx.record_decision(d, Some(epoch))?;
    }
    let event = tx.append(
        NewEvent {
            kind: EventKind::Placed,
            experiment: Some(id.clone()),
            node: Some(node.clone()),
            epoch: Some(epoch),
            message,
            actor: "scheduler".to_owned(),
        },
        Some(Phase::Queued),
        Some(Phase::Placing),
    )?;
    Ok(Placed {
        record: rec,
        epoch,
        event_seq: event.seq,
    })
}

/// Merges an observation into the open run of `epoch` (see
/// [`Store::observe_run`]). Returns the record and, when it wrote, the
/// `crashed` event it appended if any; `None` when nothing changed.
#[allow(clippy::option_option)]
fn observe_in(
    tx: &Tx<'_>,
    id: &ExperimentId,
    epoch: u64,
    obs: &RunObservation,
    actor: &str,
) -> TxResult<(ExperimentRecord, Option<Option<EventRecord>>)> {
    let mut rec = tx.experiment(id)?;
    if rec.epoch != epoch {
        return abort(StoreError::StaleEpoch {
            id: id.clone(),
            given: epoch,
            current: rec.epoch,
        });
    }
    let Some(run) = rec
        .runs
        .last_mut()
        .filter(|r| r.is_open() && r.epoch == epoch)
    else {
        return abort(StoreError::Run {
            id: id.clone(),
            problem: format!("no run of epoch {epoch} is open"),
        });
    };
    let before = run.clone();
    let new_crashes = obs.crashes.filter(|c| *c > run.crashes);
    if let Some(c) = new_crashes {
        run.crashes = c;
    }
    run.observe_heat(obs.peak_temp_c, obs.throttled);
    let restarted = obs.board_restarts.filter(|n| *n > run.board_restarts);
    if let Some(n) = restarted {
        run.board_restarts = n;
    }
    if *run == before {
        return Ok((rec, None));
    }
    let node = run.node.clone();
    let crashes = run.crashes;
    tx.put_experiment(&mut rec)?;
    let event = match (new_crashes, restarted) {
        (None, Some(n)) => Some(tx.append(
            NewEvent {
                kind: EventKind::Disrupted,
                experiment: Some(id.clone()),
                node: Some(node),
                epoch: Some(epoch),
                message: format!(
                    "its board shut down and started it over from the beginning ({n} in this run)"
                ),
                actor: actor.to_owned(),
            },
            None,
            None,
        )?),
        (Some(_), _) => Some(tx.append(
            NewEvent {
                kind: EventKind::Crashed,
                experiment: Some(id.clone()),
                node: Some(node),
                epoch: Some(epoch),
                message: format!("crashed and restarted ({crashes} in this run)"),
                actor: actor.to_owned(),
            },
            None,
            None,
        )?),
        (None, None) => None,
    };
    Ok((rec, Some(event)))
}

fn transition_in(tx: &Tx<'_>, t: &Transition) -> TxResult<Transitioned> {
    match check_transition(tx, t)? {
        Ok(checked) => write_transition(tx, t, checked),
        Err(e) => abort(e),
    }
}

/// A transition [`check_transition`] allowed: the record with its run
/// changed (not yet written), and how the run ended, if it did.
struct Checked<'t> {
    rec: ExperimentRecord,
    ended: Option<&'t RunEnd>,
}

/// Whether a transition may be stored, and the record as it will be. It
/// only reads: a refusal writes nothing.
fn check_transition<'t>(
    tx: &Tx<'_>,
    t: &'t Transition,
) -> TxResult<Result<Checked<'t>, StoreError>> {
    let id = &t.id;
    let Some(mut rec) =
        Tx::get::<ExperimentRecord>(tx.experiments, "experiments", id.as_str().as_bytes())?
    else {
        return Ok(Err(StoreError::ExperimentNotFound { id: id.clone() }));
    };
    if rec.phase != t.from {
        return Ok(Err(StoreError::PhaseConflict {
            id: id.clone(),
            expected: t.from,
            found: rec.phase,
        }));
    }
    // Placing needs a node and an epoch: only `place` goes there.
    if !t.from.can_become(t.to) || t.to == Phase::Placing {
        return Ok(Err(StoreError::InvalidTransition {
            id: id.clone(),
            from: t.from,
            to: t.to,
        }));
    }
    if let Some(epoch) = t.epoch {
        if epoch != rec.epoch {
            return Ok(Err(StoreError::StaleEpoch {
                id: id.clone(),
                given: epoch,
                current: rec.epoch,
            }));
        }
    }
    let run_problem = |problem: String| {
        Ok(Err(StoreError::Run {
            id: id.clone(),
            problem,
        }))
    };

    let mut ended: Option<&RunEnd> = None;
    match &t.run {
        RunChange::None => {
            if rec.open_run().is_some() && !t.to.holds_node() {
                return run_problem(format!(
                    "its run is open and it is leaving its node for {}: say how the run ended",
                    t.to
                ));
            }
        }
        RunChange::Start(start) => {
            let Some(node) = rec.node.clone().filter(|_| t.to.holds_node()) else {
                return run_problem(format!("a run cannot start when going to {}", t.to));
            };
            if rec.open_run().is_some() {
                return run_problem("a run is already open".to_owned());
            }
            rec.runs
                .push(RunRecord::begin(node, rec.epoch, tx.now, start));
        }
        RunChange::End(end) => {
            if t.to.holds_node() {
                return run_problem(format!("a run cannot end when going to {}", t.to));
            }
            if (end.outcome == RunOutcome::Disrupted) != end.disruption.is_some() {
                return run_problem(
                    "a disrupted run says what disrupted it, and only a disrupted run".to_owned(),
                );
            }
            if rec.open_run().is_none() {
                // A start the agent refused still reached the board: record it.
                let Some(node) = rec
                    .node
                    .clone()
                    .filter(|_| end.outcome == RunOutcome::StartFailed)
                else {
                    return run_problem("no run is open".to_owned());
                };
                rec.runs.push(RunRecord::begin(
                    node,
                    rec.epoch,
                    tx.now,
                    &RunStart::default(),
                ));
            }
            let run = rec.runs.last_mut().expect("a run is open");
            run.ended_at = Some(tx.now);
            run.outcome = Some(end.outcome);
            run.message.clone_from(&end.message);
            run.failure = end.failure;
            run.exit_code = end.exit_code;
            run.exit_signal = end.exit_signal;
            run.disruption = end.disruption;
            ended = Some(end);
        }
    }

    // Where a run may go after it ends.
    if let Some(end) = ended {
        use crate::model::Disruption;
        let allowed: &[Phase] = match (end.outcome, end.disruption) {
            (RunOutcome::Disrupted, Some(Disruption::Restart)) => &[Phase::Queued],
            (RunOutcome::Disrupted, _) if rec.requeue_on_disruption => &[Phase::Queued],
            (RunOutcome::Disrupted, _) => &[Phase::Failed],
            (RunOutcome::StartFailed, _) => &[Phase::Queued, Phase::Failed],
            (RunOutcome::Succeeded, _) => &[Phase::Succeeded],
            (RunOutcome::Failed, _) => &[Phase::Failed],
            (RunOutcome::Stopped, _) => &[Phase::Stopped],
            (RunOutcome::Cancelled, _) => &[Phase::Cancelled],
        };
        if !allowed.contains(&t.to) {
            return run_problem(format!(
                "a run that ended as {} cannot lead to {}",
                end.outcome, t.to
            ));
        }
    }
    Ok(Ok(Checked { rec, ended }))
}

/// Writes a transition [`check_transition`] allowed: the run's heat, the
/// queue entry, the placement and the node's reservation, the record and
/// the event.
fn write_transition(tx: &Tx<'_>, t: &Transition, checked: Checked<'_>) -> TxResult<Transitioned> {
    let Checked { mut rec, ended } = checked;
    let id = &t.id;
    if let Some(heat) = &t.heat {
        // The run this transition is about: the one it started or ended,
        // or the open one it leaves open. A run ended before is not
        // touched.
        let touched = !matches!(t.run, RunChange::None) || rec.open_run().is_some();
        if let Some(run) = rec
            .runs
            .last_mut()
            .filter(|r| touched && r.epoch == rec.epoch)
        {
            run.observe_heat(heat.peak_temp_c, heat.throttled);
        }
    }

    if t.from == Phase::Queued {
        tx.queue
            .remove(&queue_key(rec.req.priority, rec.queue_seq))?;
    }
    if t.to == Phase::Queued {
        // A restart queues behind what is already waiting; a requeue keeps
        // its place.
        if t.from.is_terminal() {
            rec.queue_seq = tx.bump(META_SUBMIT_SEQ)?;
        }
        tx.queue.insert(
            &queue_key(rec.req.priority, rec.queue_seq),
            id.as_str().as_bytes(),
        )?;
    }
    let node = rec.node.clone();
    if t.from.holds_node() && !t.to.holds_node() {
        tx.placements.remove(id.as_str().as_bytes())?;
        if let Some(node) = &node {
            // The node may be gone already (removed by force).
            if let Some(mut node_rec) = tx.node(node)? {
                node_rec.experiments.remove(id);
                tx.put_node(&mut node_rec)?;
            }
        }
        rec.node = None;
    }

    rec.phase = t.to;
    rec.reason.clone_from(&t.reason);
    tx.put_experiment(&mut rec)?;
    let kind = match ended {
        Some(end) if end.outcome == RunOutcome::Disrupted => EventKind::Disrupted,
        _ => EventKind::PhaseChanged,
    };
    let message = if t.reason.is_empty() {
        format!("{} → {}", t.from, t.to)
    } else {
        t.reason.clone()
    };
    let event = tx.append(
        NewEvent {
            kind,
            experiment: Some(id.clone()),
            node,
            epoch: (rec.epoch > 0).then_some(rec.epoch),
            message,
            actor: t.actor.clone(),
        },
        Some(t.from),
        Some(t.to),
    )?;
    Ok(Transitioned {
        record: rec,
        event_seq: event.seq,
    })
}

mod group;

#[cfg(test)]
mod tests;
