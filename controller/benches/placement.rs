//! Durable placement throughput of the controller with 1,000 in-process agents.
//!
//! Run with `cargo bench -p fleet-controller --bench placement`.
//!
//! It drives the path the reconciler takes for the queue, on a real sled
//! store in a temporary directory: `Store::submit` for each experiment, then
//! passes of `scheduler::plan_with(.., Detail::Compact)` over a `NodeView`
//! per node (built by `reconciler::views_cached` from the stored records and
//! live telemetry, as the reconciler's pass does, decoding again only the
//! records that changed since the last pass) and
//! `Store::record_pass`, which stores the pass in one transaction and
//! returns once it is flushed; only then are the agents told. Each
//! placement is handed to its node's agent, an in-memory task that
//! acknowledges the start; the loop records the acknowledgements as the
//! reconciler does, before the next pass: every one that arrived since the
//! last round (`placing → starting` with the run's start, and the agent's
//! crash count) in one `Store::record_transitions`, one transaction and one
//! flush. Concurrent writers (the submitters, the loop) share flushes
//! (group commit in the store); the report gives writes per flush.
//!
//! The real `Reconciler` is not used: its node links are gRPC clients over
//! mTLS (`Links::client`), so in-process agents would mean 1,000 TLS
//! servers, which measures the transport more than the controller.
//!
//! Two scenarios:
//!
//! - **burst**: every experiment is queued before the first pass; measures
//!   how fast a full queue drains onto the fleet.
//! - **stream**: submitters enqueue while the loop places, each submission
//!   poking the loop as the gRPC layer does; measures enqueue → placed
//!   latency under a sustained load.
//!
//! Latency runs from `submit` returning (the enqueue is durable) to the end
//! of the `record_pass` that placed the experiment (the placement is
//! durable). Environment: `FLEET_BENCH_NODES` (1000), `FLEET_BENCH_EXPERIMENTS`
//! (4000, the fleet's capacity at 4 slots a node), `FLEET_BENCH_SUBMITTERS`
//! (16).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_controller::live::{NodeLive, ViewConfig};
use fleet_controller::model::{Labels, ModeRef, NodeSource, Phase, RunObservation, RunStart};
use fleet_controller::reconciler;
use fleet_controller::scheduler::{self, Detail, Link, Policy};
use fleet_controller::store::{Batched, CommitStats, NewNode, RecordCache, Store, Transition};
use fleet_proto::spec::{ExperimentId, ExperimentSpec, NodeName};
use fleet_proto::v1;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

const GIB: u64 = 1 << 30;
const SLOTS_PER_NODE: u32 = 4;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn node_name(i: usize) -> NodeName {
    NodeName::new(format!("jetson-{i:04}")).expect("valid node name")
}

fn spec(i: usize) -> ExperimentSpec {
    ExperimentSpec::try_from(&v1::ExperimentSpec {
        id: format!("exp-{i:06}"),
        command: vec!["python3".into(), "train.py".into()],
        resources: Some(v1::Resources {
            memory_max: "2G".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .expect("valid spec")
}

fn mode(id: u32, name: &str) -> v1::PowerMode {
    v1::PowerMode {
        id,
        name: name.into(),
    }
}

/// What an AGX Orin's agent reports, with temperatures and load spread over
/// the fleet so that scores differ.
fn live(i: usize) -> NodeLive {
    #[allow(clippy::cast_precision_loss)]
    let spread = (i % 97) as f64 / 97.0;
    NodeLive {
        link: Link::Fresh,
        last_seen_unix_us: Some(1),
        info: Some(v1::NodeInfo {
            node: node_name(i).as_str().into(),
            model: "NVIDIA Jetson AGX Orin".into(),
            l4t_release: "36.4.0".into(),
            cpu_cores: 12,
            memory_total_bytes: 32 * GIB,
            power_modes: vec![mode(0, "MAXN"), mode(1, "MODE_15W")],
            current_power_mode: Some(mode(0, "MAXN")),
            gpu: true,
            nvpmodel: true,
            warn_c: 75.0,
            critical_c: 90.0,
            ..Default::default()
        }),
        sample: Some(v1::TelemetrySample {
            cpu_percent: 5.0 + 40.0 * spread,
            memory_total_bytes: 32 * GIB,
            power_mode: Some(mode(0, "MAXN")),
            thermal_state: v1::ThermalState::Normal as i32,
            hottest_c: Some(40.0 + 20.0 * spread),
            accepting: true,
            ..Default::default()
        }),
    }
}

/// A start an agent accepted, back to the loop.
struct Ack {
    id: ExperimentId,
    epoch: u64,
}

/// One in-process agent: accepts every start of its node.
fn spawn_agent(acks: mpsc::UnboundedSender<Ack>) -> mpsc::UnboundedSender<(ExperimentId, u64)> {
    let (tx, mut rx) = mpsc::unbounded_channel::<(ExperimentId, u64)>();
    tokio::spawn(async move {
        while let Some((id, epoch)) = rx.recv().await {
            if acks.send(Ack { id, epoch }).is_err() {
                return;
            }
        }
    });
    tx
}

#[derive(Default)]
struct Outcome {
    placed: usize,
    passes: usize,
    acked: usize,
    /// From the first pass to the last placement.
    placing: Duration,
    /// Time in views, in `plan`, and in `record_pass`, over all passes.
    viewing: Duration,
    planning: Duration,
    storing: Duration,
    latencies: Vec<Duration>,
}

/// The reconciler's scheduling loop, with in-process agents, until
/// `expected` experiments are placed.
async fn place_all(
    store: &Store,
    lives: &HashMap<NodeName, NodeLive>,
    agents: &HashMap<NodeName, mpsc::UnboundedSender<(ExperimentId, u64)>>,
    acks: &mut mpsc::UnboundedReceiver<Ack>,
    poke: &Notify,
    enqueued: &Mutex<HashMap<ExperimentId, Instant>>,
    expected: usize,
) -> Outcome {
    let config = ViewConfig {
        slots_per_node: SLOTS_PER_NODE,
    };
    let policy = Policy::default();
    let mut out = Outcome::default();
    let mut first: Option<Instant> = None;
    let mut records = RecordCache::default();
    while out.placed < expected {
        // Acknowledged starts first, as the reconciler drains its reports:
        // every one that arrived, in one write.
        let mut batch = Vec::new();
        while let Ok(ack) = acks.try_recv() {
            batch.push(started(ack));
        }
        out.acked += record_starts(store, &batch).await;
        let pending = store.pending().expect("queue readable");
        if pending.is_empty() {
            // Woken by the next submission, or by an acknowledgement.
            let _ = tokio::time::timeout(Duration::from_millis(1), poke.notified()).await;
            continue;
        }
        let started = Instant::now();
        first.get_or_insert(started);
        let views =
            reconciler::views_cached(store, &config, &mut records, |n| lives.get(n).cloned())
                .expect("views readable");
        let viewed = Instant::now();
        let decisions = scheduler::plan_with(&pending, &views, &policy, Detail::Compact);
        let planned = Instant::now();
        let results = store.record_pass(&decisions).await.expect("pass stored");
        let durable = Instant::now();
        out.viewing += viewed.duration_since(started);
        out.planning += planned.duration_since(viewed);
        out.storing += durable.duration_since(planned);
        out.passes += 1;
        let enqueued = enqueued.lock().expect("not poisoned");
        for placed in results.into_iter().flatten() {
            let node = placed.record.node.clone().expect("placed on a node");
            if let Some(at) = enqueued.get(&placed.record.id) {
                out.latencies.push(durable.duration_since(*at));
            }
            agents[&node]
                .send((placed.record.id.clone(), placed.epoch))
                .expect("agent alive");
            out.placed += 1;
            out.placing = durable.duration_since(*first.get_or_insert(started));
        }
    }
    // The last acknowledgements, so every start is recorded.
    while out.acked < out.placed {
        let Some(ack) = acks.recv().await else { break };
        let mut batch = vec![started(ack)];
        while let Ok(ack) = acks.try_recv() {
            batch.push(started(ack));
        }
        out.acked += record_starts(store, &batch).await;
    }
    out
}

/// An acknowledged start as the reconciler records it: `placing →
/// starting` with the run's start, and the agent's crash count merged in
/// the same write.
fn started(ack: Ack) -> Batched {
    Batched {
        transition: Transition::new(ack.id, Phase::Placing, Phase::Starting, "controller", "")
            .fenced(ack.epoch)
            .start_run(RunStart {
                power_mode: Some(ModeRef {
                    id: 0,
                    name: "MAXN".into(),
                }),
                jetson_clocks: Some(false),
                l4t_release: "36.4.0".into(),
            }),
        observe: Some((
            RunObservation {
                crashes: Some(0),
                peak_temp_c: None,
                throttled: false,
                board_restarts: None,
            },
            "agent/bench".into(),
        )),
    }
}

/// Records acknowledged starts in one transaction and one flush.
async fn record_starts(store: &Store, batch: &[Batched]) -> usize {
    let results = store
        .record_transitions(batch)
        .await
        .expect("starts recorded");
    for r in &results {
        r.as_ref().expect("start recorded");
    }
    results.len()
}

struct Fleet {
    _dir: tempfile::TempDir,
    store: Store,
    lives: HashMap<NodeName, NodeLive>,
    agents: HashMap<NodeName, mpsc::UnboundedSender<(ExperimentId, u64)>>,
    acks: mpsc::UnboundedReceiver<Ack>,
}

async fn fleet(nodes: usize) -> Fleet {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(&dir.path().join("controller.sled")).expect("store opens");
    let (ack_tx, acks) = mpsc::unbounded_channel();
    let mut lives = HashMap::new();
    let mut agents = HashMap::new();
    for i in 0..nodes {
        let name = node_name(i);
        store
            .add_node(
                &NewNode {
                    name: name.clone(),
                    address: format!("{}.lab:7443", name.as_str()),
                    source: NodeSource::Config,
                    labels: Labels::new(),
                    cordoned: false,
                },
                "bench",
            )
            .await
            .expect("node added");
        lives.insert(name.clone(), live(i));
        agents.insert(name, spawn_agent(ack_tx.clone()));
    }
    Fleet {
        _dir: dir,
        store,
        lives,
        agents,
        acks,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(
    name: &str,
    out: &mut Outcome,
    submit: Option<Duration>,
    commits: (CommitStats, CommitStats),
) {
    out.latencies.sort();
    let secs = out.placing.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let rate = if secs > 0.0 {
        out.placed as f64 / secs
    } else {
        0.0
    };
    println!("{name}:");
    if let Some(submit) = submit {
        #[allow(clippy::cast_precision_loss)]
        let submit_rate = out.placed as f64 / submit.as_secs_f64();
        println!(
            "  enqueued        {} in {:.2} s ({submit_rate:.0} durable submissions/s)",
            out.placed,
            submit.as_secs_f64()
        );
    }
    println!(
        "  placed          {} in {:.2} s over {} passes",
        out.placed, secs, out.passes
    );
    println!(
        "  pass time       views {:.2} s, plan {:.2} s, record_pass {:.2} s",
        out.viewing.as_secs_f64(),
        out.planning.as_secs_f64(),
        out.storing.as_secs_f64()
    );
    println!("  placements/s    {rate:.0}");
    println!(
        "  vs 5,000/s goal {:.3}x, vs Slurm 500/s {:.2}x",
        rate / 5000.0,
        rate / 500.0
    );
    println!(
        "  enqueue→placed  p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&out.latencies, 50.0).as_secs_f64() * 1e3,
        percentile(&out.latencies, 99.0).as_secs_f64() * 1e3,
        out.latencies
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    );
    println!("  starts acked    {}", out.acked);
    let (before, after) = commits;
    let writes = after.writes - before.writes;
    let flushes = after.flushes - before.flushes;
    #[allow(clippy::cast_precision_loss)]
    let per_flush = writes as f64 / flushes.max(1) as f64;
    println!("  durable writes  {writes} in {flushes} flushes ({per_flush:.1} a flush)");
}

async fn burst(nodes: usize, experiments: usize) {
    let mut f = fleet(nodes).await;
    let commits = f.store.commit_stats();
    let enqueued = Mutex::new(HashMap::new());
    let t0 = Instant::now();
    for i in 0..experiments {
        let s = f.store.submit(&spec(i), "bench").await.expect("submitted");
        enqueued
            .lock()
            .expect("not poisoned")
            .insert(s.record.id, Instant::now());
    }
    let submit = t0.elapsed();
    let poke = Notify::new();
    let mut out = place_all(
        &f.store,
        &f.lives,
        &f.agents,
        &mut f.acks,
        &poke,
        &enqueued,
        experiments,
    )
    .await;
    report(
        "burst (all queued, then placed)",
        &mut out,
        Some(submit),
        (commits, f.store.commit_stats()),
    );
}

async fn stream(nodes: usize, experiments: usize, submitters: usize) {
    let mut f = fleet(nodes).await;
    let commits = f.store.commit_stats();
    let enqueued = Arc::new(Mutex::new(HashMap::new()));
    let poke = Arc::new(Notify::new());
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..submitters {
        let store = f.store.clone();
        let enqueued = enqueued.clone();
        let poke = poke.clone();
        tasks.push(tokio::spawn(async move {
            for i in (s..experiments).step_by(submitters) {
                let done = store.submit(&spec(i), "bench").await.expect("submitted");
                enqueued
                    .lock()
                    .expect("not poisoned")
                    .insert(done.record.id, Instant::now());
                poke.notify_one();
            }
        }));
    }
    let submitted = async {
        for t in tasks {
            t.await.expect("submitter finished");
        }
        t0.elapsed()
    };
    let placing = place_all(
        &f.store,
        &f.lives,
        &f.agents,
        &mut f.acks,
        &poke,
        &enqueued,
        experiments,
    );
    let (submit, mut out) = tokio::join!(submitted, placing);
    report(
        &format!("stream ({submitters} submitters while placing)"),
        &mut out,
        Some(submit),
        (commits, f.store.commit_stats()),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter or other flags are ignored.
    let nodes = env_usize("FLEET_BENCH_NODES", 1000);
    let experiments = env_usize("FLEET_BENCH_EXPERIMENTS", 4000);
    let submitters = env_usize("FLEET_BENCH_SUBMITTERS", 16).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "fleet-controller placement: {nodes} in-process agents, {experiments} experiments \
         (2 GiB each, {SLOTS_PER_NODE} slots a node), {} CPUs",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    runtime.block_on(burst(nodes, experiments));
    runtime.block_on(stream(nodes, experiments, submitters));
}
