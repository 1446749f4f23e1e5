use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};

use fleet_proto::spec::LabelValue;

use super::*;
use crate::model::{Disruption, Failure, ModeRef};
use crate::scheduler::{self, Link, NodeView, PolicyName, Thermal};

const T0: UnixMicros = 1_700_000_000_000_000;

/// A clock that moves one second per reading, so every write has its own time.
fn ticking_clock() -> Clock {
    let now = Arc::new(AtomicI64::new(T0));
    Arc::new(move || now.fetch_add(1_000_000, Ordering::SeqCst))
}

fn open(dir: &Path) -> Store {
    Store::open_with_clock(dir, ticking_clock()).unwrap()
}

/// Opens a store another `Store` in this process had open. sled lets go of
/// its file lock a moment after the last handle is dropped (its background
/// writers finish first), so this waits for the lock; a restarted
/// controller is a new process and never needs to.
async fn reopen(dir: &Path) -> Store {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open_with_clock(dir, ticking_clock()) {
            Ok(store) => return store,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!(
                "the store at {} did not reopen within 10 s: {e:?}",
                dir.display()
            ),
        }
    }
}

fn id(s: &str) -> ExperimentId {
    ExperimentId::new(s).unwrap()
}

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn wire(i: &str, priority: i32) -> v1::ExperimentSpec {
    v1::ExperimentSpec {
        id: i.into(),
        command: vec!["python3".into(), "-m".into(), "runner".into()],
        priority,
        resources: Some(v1::Resources {
            memory_max: "2G".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn spec(i: &str, priority: i32) -> ExperimentSpec {
    ExperimentSpec::try_from(&wire(i, priority)).unwrap()
}

fn failing_on_disruption(i: &str) -> ExperimentSpec {
    let mut w = wire(i, 0);
    w.lifecycle = Some(v1::Lifecycle {
        on_disruption: "fail".into(),
        ..Default::default()
    });
    ExperimentSpec::try_from(&w).unwrap()
}

fn new_node(n: &str) -> NewNode {
    NewNode {
        name: name(n),
        address: format!("{n}.lab:7443"),
        source: NodeSource::Config,
        labels: Labels::new(),
        cordoned: false,
    }
}

/// Every key and value of every tree, by tree name.
type Dump = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// Every key and value of every tree, to show that a refused write wrote
/// nothing.
fn dump(store: &Store) -> Dump {
    let i = &store.inner;
    [
        ("experiments", &i.experiments),
        ("specs", &i.specs),
        ("queue", &i.queue),
        ("nodes", &i.nodes),
        ("placements", &i.placements),
        ("events", &i.events),
        ("decisions", &i.decisions),
        ("meta", &i.meta),
    ]
    .into_iter()
    .map(|(n, t)| {
        let kvs = t
            .iter()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect();
        (n.to_owned(), kvs)
    })
    .collect()
}

fn kinds(store: &Store) -> Vec<EventKind> {
    store
        .events_from(1, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect()
}

fn queue_ids(store: &Store) -> Vec<String> {
    store
        .queued()
        .unwrap()
        .iter()
        .map(|r| r.id.to_string())
        .collect()
}

/// Submits `i` and places it on `n` (added when unknown).
async fn placed(store: &Store, i: &str, n: &str) -> Placed {
    store.submit(&spec(i, 0), "user/alice").await.unwrap();
    store.ensure_node(&new_node(n), "controller").await.unwrap();
    store.place(&id(i), &name(n)).await.unwrap()
}

/// Submits, places and starts `i` on `n`: it ends running with an open run.
async fn running(store: &Store, i: &str, n: &str) -> ExperimentRecord {
    let p = placed(store, i, n).await;
    let start = RunStart {
        power_mode: Some(ModeRef {
            id: 0,
            name: "MAXN".into(),
        }),
        jetson_clocks: Some(true),
        l4t_release: "R36.4.3".into(),
    };
    store
        .transition(
            &Transition::new(
                id(i),
                Phase::Placing,
                Phase::Starting,
                "agent/n1",
                "starting",
            )
            .fenced(p.epoch)
            .start_run(start),
        )
        .await
        .unwrap();
    store
        .transition(
            &Transition::new(
                id(i),
                Phase::Starting,
                Phase::Running,
                "agent/n1",
                "running",
            )
            .fenced(p.epoch),
        )
        .await
        .unwrap()
        .record
}

// Submissions and the queue.

#[tokio::test]
async fn a_submission_is_stored_queued_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = store
        .submit(&spec("amnesiac-001", 50), "user/alice")
        .await
        .unwrap();
    assert_eq!(s.record.submit_seq, 1);
    assert_eq!(s.record.phase, Phase::Queued);
    assert_eq!(s.record.version, RECORD_VERSION);
    assert_eq!(s.record.revision, 1);
    assert_eq!(s.record.req.priority, 50);
    assert_eq!(s.record.req.memory_max, Some(2 * 1024 * 1024 * 1024));
    assert!(s.record.requeue_on_disruption);
    assert_eq!(s.record.submitted_by, "user/alice");

    let id = id("amnesiac-001");
    assert_eq!(store.experiment(&id).unwrap(), Some(s.record.clone()));
    assert_eq!(store.spec(&id).unwrap(), Some(spec("amnesiac-001", 50)));
    assert_eq!(queue_ids(&store), ["amnesiac-001"]);
    let events = store.events_from(1, 10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, s.event_seq);
    assert_eq!(events[0].kind, EventKind::Submitted);
    assert_eq!(events[0].experiment, Some(id));
    assert_eq!(events[0].to, Some(Phase::Queued));
    assert_eq!(events[0].actor, "user/alice");
}

#[tokio::test]
async fn a_duplicate_id_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.submit(&spec("a", 0), "user/alice").await.unwrap();
    let before = dump(&store);
    let err = store.submit(&spec("a", 9), "user/bob").await.unwrap_err();
    assert!(matches!(err, StoreError::ExperimentExists { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "experiment a already exists with another spec: choose another id, or leave it out to get one"
    );
    assert_eq!(dump(&store), before);
    // No seq was used up.
    let b = store.submit(&spec("b", 0), "user/alice").await.unwrap();
    assert_eq!(b.record.submit_seq, 2);
    assert_eq!(b.event_seq, 2);
}

/// A client that lost the answer to a submission that was stored sends it
/// again: the same spec is answered with what is stored, writes nothing and
/// uses up no seq; only a different spec under the id is a clash.
#[tokio::test]
async fn the_same_spec_again_is_answered_as_already_there() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = store.submit(&spec("a", 3), "user/alice").await.unwrap();
    assert!(!first.already);
    let before = dump(&store);
    let again = store.submit(&spec("a", 3), "user/alice").await.unwrap();
    assert!(again.already);
    assert_eq!(again.record, first.record);
    assert_eq!(again.event_seq, 0);
    assert_eq!(dump(&store), before);
    let err = store.submit(&spec("a", 4), "user/alice").await.unwrap_err();
    assert!(matches!(err, StoreError::ExperimentExists { .. }), "{err}");
    assert_eq!(dump(&store), before);
    let b = store.submit(&spec("b", 0), "user/alice").await.unwrap();
    assert_eq!((b.record.submit_seq, b.event_seq), (2, 2));

    // Maps (env, labels) encode in no fixed order: the same spec built
    // anew, as a retrying client builds it, is still the same spec.
    let with_env = || {
        let mut w = wire("c", 0);
        w.env = (0..16)
            .map(|i| (format!("VAR_{i}"), format!("value {i}")))
            .collect();
        ExperimentSpec::try_from(&w).unwrap()
    };
    assert!(
        !store
            .submit(&with_env(), "user/alice")
            .await
            .unwrap()
            .already
    );
    for _ in 0..8 {
        let again = store.submit(&with_env(), "user/alice").await.unwrap();
        assert!(again.already);
    }
}

#[tokio::test]
async fn the_queue_is_in_priority_then_age_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for (i, p) in [("low-old", 1), ("high-new", 0), ("mid", 5), ("high-old", 9)] {
        store.submit(&spec(i, p), "user/alice").await.unwrap();
    }
    store
        .submit(&spec("high-newer", 9), "user/alice")
        .await
        .unwrap();
    store
        .submit(&spec("top", 1000), "user/alice")
        .await
        .unwrap();
    assert_eq!(
        queue_ids(&store),
        [
            "top",
            "high-old",
            "high-newer",
            "mid",
            "low-old",
            "high-new"
        ]
    );
    let pending = store.pending().unwrap();
    assert_eq!(pending[0].id.as_str(), "top");
    assert_eq!(pending[0].req.priority, 1000);
}

// Durability.

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (record, epoch, last_seq) = {
        let store = open(dir.path());
        let r = running(&store, "a", "n1").await;
        store.submit(&spec("b", 3), "user/bob").await.unwrap();
        store
            .cordon(&name("n1"), "fan noise", "user/admin")
            .await
            .unwrap();
        let policy = scheduler::Policy {
            policy: PolicyName::Coolest,
            ..scheduler::Policy::default()
        };
        store.set_policy(&policy, "user/admin").await.unwrap();
        (r.clone(), r.epoch, store.last_event_seq())
    };
    let store = reopen(dir.path()).await;
    assert_eq!(store.experiment(&id("a")).unwrap(), Some(record));
    assert_eq!(store.spec(&id("b")).unwrap(), Some(spec("b", 3)));
    assert_eq!(queue_ids(&store), ["b"]);
    assert_eq!(store.placement(&id("a")).unwrap().unwrap().epoch, epoch);
    let n1 = store.node(&name("n1")).unwrap().unwrap();
    assert!(n1.cordoned);
    assert_eq!(n1.cordon_reason, "fan noise");
    assert_eq!(n1.experiments, [id("a")].into());
    assert_eq!(
        store.policy().unwrap().unwrap().policy.policy,
        PolicyName::Coolest
    );
    assert_eq!(store.last_event_seq(), last_seq);
    assert_eq!(
        store.events_from(1, usize::MAX).unwrap().len() as u64,
        last_seq
    );
    // Counters go on where they were.
    assert_eq!(store.next_epoch().await.unwrap(), epoch + 1);
    let c = store.submit(&spec("c", 0), "user/alice").await.unwrap();
    assert_eq!(c.record.submit_seq, 3);
    assert_eq!(c.event_seq, last_seq + 1);
}

#[tokio::test]
async fn epochs_only_grow() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = open(dir.path());
        let a = placed(&store, "a", "n1").await;
        assert_eq!(a.epoch, 1);
        assert_eq!(store.next_epoch().await.unwrap(), 2);
        let b = placed(&store, "b", "n1").await;
        assert_eq!(b.epoch, 3);
        b.epoch
    };
    let store = reopen(dir.path()).await;
    let c = placed(&store, "c", "n1").await;
    assert!(c.epoch > first);
}

// Placements.

#[tokio::test]
async fn a_placement_reserves_the_node_and_takes_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = placed(&store, "a", "n1").await;
    assert_eq!(p.record.phase, Phase::Placing);
    assert_eq!(p.record.node, Some(name("n1")));
    assert_eq!(p.record.epoch, p.epoch);
    assert_eq!(queue_ids(&store), Vec::<String>::new());
    let placement = store.placement(&id("a")).unwrap().unwrap();
    assert_eq!((placement.node, placement.epoch), (name("n1"), p.epoch));
    assert_eq!(
        store.node(&name("n1")).unwrap().unwrap().experiments,
        [id("a")].into()
    );
    let last = store.events_from(p.event_seq, 1).unwrap().remove(0);
    assert_eq!(last.kind, EventKind::Placed);
    assert_eq!(
        (last.from, last.to, last.epoch),
        (Some(Phase::Queued), Some(Phase::Placing), Some(p.epoch))
    );
}

#[tokio::test]
async fn a_placement_on_an_unavailable_node_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.submit(&spec("a", 0), "user/alice").await.unwrap();
    store.add_node(&new_node("n1"), "user/admin").await.unwrap();

    let before = dump(&store);
    let err = store.place(&id("a"), &name("ghost")).await.unwrap_err();
    assert!(matches!(err, StoreError::NodeNotFound { .. }), "{err}");
    assert_eq!(dump(&store), before);

    store.cordon(&name("n1"), "", "user/admin").await.unwrap();
    let before = dump(&store);
    let err = store.place(&id("a"), &name("n1")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "node n1 takes no new experiments: it is cordoned"
    );
    assert_eq!(dump(&store), before);

    store
        .drain(&name("n1"), DrainMode::Wait, "", "user/admin")
        .await
        .unwrap();
    let err = store.place(&id("a"), &name("n1")).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::NodeUnavailable {
            why: "draining",
            ..
        }
    ));

    store.uncordon(&name("n1"), "user/admin").await.unwrap();
    let p = store.place(&id("a"), &name("n1")).await.unwrap();
    assert_eq!(p.epoch, 1, "refused placements took no epoch");
}

#[tokio::test]
async fn only_a_queued_experiment_is_placed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    placed(&store, "a", "n1").await;
    let before = dump(&store);
    let err = store.place(&id("a"), &name("n1")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "experiment a is placing, not queued: it changed meanwhile; read it again"
    );
    assert_eq!(dump(&store), before);
    let err = store.place(&id("nope"), &name("n1")).await.unwrap_err();
    assert!(matches!(err, StoreError::ExperimentNotFound { .. }));
}

// Transitions and runs.

#[tokio::test]
async fn a_run_is_recorded_from_start_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = running(&store, "a", "n1").await;
    assert_eq!(r.phase, Phase::Running);
    let run = r.open_run().unwrap();
    assert_eq!((run.node.as_str(), run.epoch), ("n1", r.epoch));
    assert_eq!(run.power_mode.as_ref().unwrap().name, "MAXN");
    assert_eq!(run.jetson_clocks, Some(true));
    assert_eq!(run.l4t_release, "R36.4.3");

    let mut end = RunEnd::new(RunOutcome::Succeeded, "exited with code 0");
    end.exit_code = Some(0);
    let done = store
        .transition(
            &Transition::new(
                id("a"),
                Phase::Running,
                Phase::Succeeded,
                "agent/n1",
                "exited with code 0",
            )
            .fenced(r.epoch)
            .end_run(end),
        )
        .await
        .unwrap()
        .record;
    assert_eq!(done.phase, Phase::Succeeded);
    assert_eq!(done.node, None);
    assert_eq!(done.reason, "exited with code 0");
    let run = &done.runs[0];
    assert_eq!(run.outcome, Some(RunOutcome::Succeeded));
    assert_eq!(run.exit_code, Some(0));
    assert!(run.ended_at.unwrap() > run.started_at);
    assert_eq!(store.placement(&id("a")).unwrap(), None);
    assert!(store
        .node(&name("n1"))
        .unwrap()
        .unwrap()
        .experiments
        .is_empty());
    assert_eq!(
        kinds(&store),
        [
            EventKind::Submitted,
            EventKind::NodeAdded,
            EventKind::Placed,
            EventKind::PhaseChanged,
            EventKind::PhaseChanged,
            EventKind::PhaseChanged,
        ]
    );
}

#[tokio::test]
async fn refused_transitions_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = running(&store, "a", "n1").await;
    store.submit(&spec("q", 0), "user/alice").await.unwrap();
    let before = dump(&store);

    let t = |from, to| Transition::new(id("a"), from, to, "test", "");
    let cases: Vec<(Transition, &str)> = vec![
        (
            t(Phase::Starting, Phase::Running),
            "experiment a is running, not starting: it changed meanwhile; read it again",
        ),
        (
            Transition::new(id("q"), Phase::Queued, Phase::Running, "test", ""),
            "experiment q cannot go from queued to running",
        ),
        (
            Transition::new(id("q"), Phase::Queued, Phase::Placing, "test", ""),
            "experiment q cannot go from queued to placing",
        ),
        (
            t(Phase::Running, Phase::Stopping).fenced(r.epoch + 1),
            "epoch 2 of experiment a is stale: its placement has epoch 1",
        ),
        (
            t(Phase::Running, Phase::Failed),
            "run of experiment a: its run is open and it is leaving its node for failed: say how the run ended",
        ),
        (
            t(Phase::Running, Phase::Stopping).start_run(RunStart::default()),
            "run of experiment a: a run is already open",
        ),
        (
            t(Phase::Running, Phase::Failed).end_run(RunEnd::new(RunOutcome::Succeeded, "")),
            "run of experiment a: a run that ended as succeeded cannot lead to failed",
        ),
        (
            t(Phase::Running, Phase::Queued).end_run(RunEnd::new(RunOutcome::Disrupted, "")),
            "run of experiment a: a disrupted run says what disrupted it, and only a disrupted run",
        ),
        (
            Transition::new(id("ghost"), Phase::Queued, Phase::Cancelled, "test", ""),
            "experiment ghost does not exist",
        ),
    ];
    for (t, message) in cases {
        let err = store.transition(&t).await.unwrap_err();
        assert_eq!(err.to_string(), message);
        assert_eq!(dump(&store), before, "{message}");
    }
}

#[tokio::test]
async fn a_disruption_requeues_in_place_and_is_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.submit(&spec("first", 0), "user/alice").await.unwrap();
    let r = running(&store, "a", "n1").await;
    store.submit(&spec("later", 0), "user/alice").await.unwrap();
    store
        .observe_run(
            &id("a"),
            r.epoch,
            RunObservation {
                crashes: Some(1),
                ..Default::default()
            },
            "agent/n1",
        )
        .await
        .unwrap();

    let t = Transition::new(
        id("a"),
        Phase::Running,
        Phase::Queued,
        "agent/n1",
        "stopped by the thermal guard at 86.0 °C",
    )
    .fenced(r.epoch)
    .end_run(RunEnd::disrupted(
        Disruption::Thermal,
        "stopped by the thermal guard at 86.0 °C",
    ));
    let done = store.transition(&t).await.unwrap();
    let rec = done.record;
    assert_eq!(rec.phase, Phase::Queued);
    assert_eq!(rec.disruptions(), 1);
    assert_eq!(rec.crashes(), 1, "the crash before stays a crash");
    assert_eq!(rec.node, None);
    assert_eq!(rec.runs[0].disruption, Some(Disruption::Thermal));
    // Back in its old place: ahead of "later", behind "first".
    assert_eq!(queue_ids(&store), ["first", "a", "later"]);
    let event = store.events_from(done.event_seq, 1).unwrap().remove(0);
    assert_eq!(event.kind, EventKind::Disrupted);
    assert_eq!(event.node, Some(name("n1")));
    assert_eq!(
        (event.from, event.to),
        (Some(Phase::Running), Some(Phase::Queued))
    );

    // The next placement gets a new epoch and a second run.
    let p = store.place(&id("a"), &name("n1")).await.unwrap();
    assert!(p.epoch > r.epoch);
    let stale = Transition::new(id("a"), Phase::Placing, Phase::Starting, "agent/n1", "")
        .fenced(r.epoch)
        .start_run(RunStart::default());
    assert!(matches!(
        store.transition(&stale).await.unwrap_err(),
        StoreError::StaleEpoch { .. }
    ));
}

#[tokio::test]
async fn on_disruption_fail_ends_the_experiment() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .submit(&failing_on_disruption("f"), "user/alice")
        .await
        .unwrap();
    store
        .ensure_node(&new_node("n1"), "controller")
        .await
        .unwrap();
    let p = store.place(&id("f"), &name("n1")).await.unwrap();
    store
        .transition(
            &Transition::new(id("f"), Phase::Placing, Phase::Running, "agent/n1", "")
                .start_run(RunStart::default()),
        )
        .await
        .unwrap();
    let lost = |to| {
        Transition::new(id("f"), Phase::Running, to, "controller", "node lost")
            .fenced(p.epoch)
            .end_run(RunEnd::disrupted(Disruption::NodeLost, "node n1 lost"))
    };
    let err = store.transition(&lost(Phase::Queued)).await.unwrap_err();
    assert!(matches!(err, StoreError::Run { .. }), "{err}");
    let rec = store.transition(&lost(Phase::Failed)).await.unwrap().record;
    assert_eq!(rec.phase, Phase::Failed);
    assert_eq!(rec.disruptions(), 1);
}

#[tokio::test]
async fn a_drain_stops_then_requeues() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = running(&store, "a", "n1").await;
    let node = store
        .drain(&name("n1"), DrainMode::Requeue, "maintenance", "user/admin")
        .await
        .unwrap();
    assert_eq!(node.experiments, [id("a")].into());
    store
        .transition(
            &Transition::new(
                id("a"),
                Phase::Running,
                Phase::Stopping,
                "controller",
                "draining n1",
            )
            .fenced(r.epoch),
        )
        .await
        .unwrap();
    let rec = store
        .transition(
            &Transition::new(
                id("a"),
                Phase::Stopping,
                Phase::Queued,
                "agent/n1",
                "drained",
            )
            .fenced(r.epoch)
            .end_run(RunEnd::disrupted(
                Disruption::Drain,
                "stopped for the drain",
            )),
        )
        .await
        .unwrap()
        .record;
    assert_eq!(rec.phase, Phase::Queued);
    assert_eq!(rec.disruptions(), 1);
    assert!(store
        .node(&name("n1"))
        .unwrap()
        .unwrap()
        .experiments
        .is_empty());
    store.remove_node(&name("n1"), "user/admin").await.unwrap();
}

#[tokio::test]
async fn a_start_failure_is_a_run_and_may_be_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = placed(&store, "a", "n1").await;
    let mut end = RunEnd::new(RunOutcome::StartFailed, "agent refused: disk full");
    end.failure = Some(Failure::Resources);
    let rec = store
        .transition(
            &Transition::new(
                id("a"),
                Phase::Placing,
                Phase::Queued,
                "agent/n1",
                "start failed",
            )
            .fenced(p.epoch)
            .end_run(end),
        )
        .await
        .unwrap()
        .record;
    assert_eq!(rec.phase, Phase::Queued);
    assert_eq!(rec.runs.len(), 1);
    assert_eq!(rec.runs[0].outcome, Some(RunOutcome::StartFailed));
    assert_eq!(rec.runs[0].failure, Some(Failure::Resources));
    assert_eq!(rec.disruptions(), 0);
    assert_eq!(queue_ids(&store), ["a"]);
}

#[tokio::test]
async fn a_restart_queues_behind_waiting_experiments_and_keeps_every_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = running(&store, "a", "n1").await;
    store
        .transition(
            &Transition::new(
                id("a"),
                Phase::Running,
                Phase::Failed,
                "agent/n1",
                "exited with code 3",
            )
            .fenced(r.epoch)
            .end_run(RunEnd::new(RunOutcome::Failed, "exited with code 3")),
        )
        .await
        .unwrap();
    store
        .submit(&spec("waiting", 0), "user/alice")
        .await
        .unwrap();
    let rec = store
        .transition(&Transition::new(
            id("a"),
            Phase::Failed,
            Phase::Queued,
            "user/alice",
            "restarted",
        ))
        .await
        .unwrap()
        .record;
    assert!(rec.queue_seq > rec.submit_seq);
    assert_eq!(queue_ids(&store), ["waiting", "a"]);
    let again = store.place(&id("a"), &name("n1")).await.unwrap();
    store
        .transition(
            &Transition::new(id("a"), Phase::Placing, Phase::Running, "agent/n1", "")
                .fenced(again.epoch)
                .start_run(RunStart::default()),
        )
        .await
        .unwrap();
    let rec = store.experiment(&id("a")).unwrap().unwrap();
    assert_eq!(rec.runs.len(), 2);
    assert_eq!(rec.runs[0].outcome, Some(RunOutcome::Failed));
    assert!(rec.runs[1].is_open());
    assert_eq!(rec.runs[1].epoch, again.epoch);
}

#[tokio::test]
async fn cancelling_a_queued_experiment_takes_it_out_of_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.submit(&spec("a", 0), "user/alice").await.unwrap();
    let rec = store
        .transition(&Transition::new(
            id("a"),
            Phase::Queued,
            Phase::Cancelled,
            "user/alice",
            "not needed",
        ))
        .await
        .unwrap()
        .record;
    assert_eq!(rec.phase, Phase::Cancelled);
    assert!(queue_ids(&store).is_empty());
}

#[tokio::test]
async fn observations_merge_into_the_open_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let r = running(&store, "a", "n1").await;
    let a = id("a");
    let observe = |crashes, peak, throttled| {
        store.observe_run(
            &a,
            r.epoch,
            RunObservation {
                crashes,
                peak_temp_c: peak,
                throttled,
                board_restarts: None,
            },
            "agent/n1",
        )
    };
    observe(None, Some(61.0), false).await.unwrap();
    let seq = store.last_event_seq();
    let rec = observe(Some(2), Some(58.0), true).await.unwrap();
    let run = rec.open_run().unwrap();
    assert_eq!(run.peak_temp_c, Some(61.0), "the peak only grows");
    assert!(run.throttled);
    assert_eq!(rec.crashes(), 2);
    let crashed = store.events_from(seq + 1, 10).unwrap();
    assert_eq!(crashed.len(), 1);
    assert_eq!(crashed[0].kind, EventKind::Crashed);
    assert_eq!(crashed[0].message, "crashed and restarted (2 in this run)");

    // Nothing new: nothing written.
    let before = dump(&store);
    observe(Some(1), Some(50.0), false).await.unwrap();
    assert_eq!(dump(&store), before);
    // A stale copy's report is refused.
    let err = store
        .observe_run(&id("a"), r.epoch + 7, RunObservation::default(), "agent/n1")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleEpoch { .. }));
}

#[tokio::test]
async fn a_run_takes_its_heat_at_start_and_its_final_peak_with_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let p = placed(&store, "a", "n1").await;
    let rec = store
        .transition(
            &Transition::new(id("a"), Phase::Placing, Phase::Running, "agent/n1", "")
                .fenced(p.epoch)
                .start_run(RunStart::default())
                .heat(Some(41.0), false),
        )
        .await
        .unwrap()
        .record;
    let run = rec.open_run().unwrap();
    assert_eq!((run.peak_temp_c, run.throttled), (Some(41.0), false));

    // Written on the way: 80 and throttled.
    store
        .observe_run(
            &id("a"),
            p.epoch,
            RunObservation {
                crashes: None,
                peak_temp_c: Some(80.0),
                throttled: true,
                board_restarts: None,
            },
            "agent/n1",
        )
        .await
        .unwrap();
    // The end carries a higher final peak; a lower one would not lower it.
    let seq = store.last_event_seq();
    let rec = store
        .transition(
            &Transition::new(id("a"), Phase::Running, Phase::Succeeded, "agent/n1", "")
                .fenced(p.epoch)
                .end_run(RunEnd::new(RunOutcome::Succeeded, "exited with code 0"))
                .heat(Some(80.7), false),
        )
        .await
        .unwrap()
        .record;
    let run = rec.runs.last().unwrap();
    assert_eq!(run.outcome, Some(RunOutcome::Succeeded));
    assert_eq!((run.peak_temp_c, run.throttled), (Some(80.7), true));
    assert_eq!(
        store.events_from(seq + 1, 10).unwrap().len(),
        1,
        "one write: the end and its peak"
    );
    drop(store);
    let store = reopen(dir.path()).await;
    let run = store
        .experiment(&id("a"))
        .unwrap()
        .unwrap()
        .runs
        .pop()
        .unwrap();
    assert_eq!((run.peak_temp_c, run.throttled), (Some(80.7), true));

    // A run ended before is not touched by a later transition's heat.
    let rec = store
        .transition(
            &Transition::new(
                id("a"),
                Phase::Succeeded,
                Phase::Queued,
                "user/alice",
                "again",
            )
            .heat(Some(99.0), true),
        )
        .await
        .unwrap()
        .record;
    assert_eq!(rec.runs.last().unwrap().peak_temp_c, Some(80.7));
}

// Events.

#[tokio::test]
async fn events_replay_from_a_seq_and_follow_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut rx = store.subscribe();
    for i in ["a", "b", "c", "d"] {
        store.submit(&spec(i, 0), "user/alice").await.unwrap();
    }
    let seqs: Vec<u64> = store
        .events_from(2, 2)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [2, 3]);
    assert!(store.events_from(5, 10).unwrap().is_empty());
    assert_eq!(store.events_from(0, 10).unwrap()[0].seq, 1);
    for want in 1..=4 {
        let e = rx.recv().await.unwrap();
        assert_eq!(e.seq, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_a_gapless_log_and_unique_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut rx = store.subscribe();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .submit(&spec(&format!("e{i}"), i % 4), "user/alice")
                    .await
                    .unwrap()
                    .record
                    .submit_seq
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
    let log: Vec<u64> = store
        .events_from(1, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(log, (1..=40).collect::<Vec<u64>>());
    // Subscribers see them in seq order, whatever order the flushes ended in.
    for want in 1..=40 {
        assert_eq!(rx.recv().await.unwrap().seq, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submits_reply_after_a_flush_covers_them_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = store.commit_stats();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let s = store
                    .submit(&spec(&format!("c{i:02}"), 0), "user/alice")
                    .await
                    .unwrap();
                // Set only by a flush that started after the write, once
                // it completed: the reply came after its data was on disk.
                let durable = store.durable_event_seq();
                assert!(
                    durable >= s.event_seq,
                    "submission with event {} acknowledged when only {durable} was flushed",
                    s.event_seq
                );
                s.record.id
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().to_string());
    }
    let stats = store.commit_stats();
    assert_eq!(stats.writes - before.writes, 64);
    let flushes = stats.flushes - before.flushes;
    assert!(
        (1..=64).contains(&flushes),
        "{flushes} flushes for 64 writes"
    );
    drop(store);

    let store = reopen(dir.path()).await;
    ids.sort();
    let mut queued = queue_ids(&store);
    queued.sort();
    assert_eq!(queued, ids, "every acknowledged submission survived");
    let log: Vec<u64> = store
        .events_from(1, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(log, (1..=64).collect::<Vec<u64>>());
    assert_eq!(store.durable_event_seq(), 64);
}

/// Places `ids` on node n1, each with its epoch.
async fn placed_all(store: &Store, ids: &[&str]) -> Vec<u64> {
    let mut epochs = Vec::new();
    for i in ids {
        epochs.push(placed(store, i, "n1").await.epoch);
    }
    epochs
}

fn start_ack(i: &str, epoch: u64, crashes: u64) -> Batched {
    Batched {
        transition: Transition::new(id(i), Phase::Placing, Phase::Starting, "controller", "")
            .fenced(epoch)
            .start_run(RunStart::default())
            .heat(Some(51.5), false),
        observe: Some((
            RunObservation {
                crashes: Some(crashes),
                peak_temp_c: None,
                throttled: false,
                board_restarts: None,
            },
            "agent/n1".to_owned(),
        )),
    }
}

#[tokio::test]
async fn acknowledged_starts_are_stored_in_one_write_and_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let epochs = placed_all(&store, &["a", "b", "c"]).await;
    let seq_before = store.last_event_seq();
    let before = store.commit_stats();
    let results = store
        .record_transitions(&[
            start_ack("a", epochs[0], 0),
            start_ack("b", epochs[1], 2),
            start_ack("c", epochs[2], 0),
        ])
        .await
        .unwrap();
    let after = store.commit_stats();
    assert_eq!(after.writes - before.writes, 1, "one write");
    assert_eq!(after.flushes - before.flushes, 1, "one flush");

    let records: Vec<ExperimentRecord> = results.into_iter().map(|r| r.unwrap().record).collect();
    for (rec, want) in records.iter().zip([0, 2, 0]) {
        assert_eq!(rec.phase, Phase::Starting);
        let run = rec.open_run().unwrap();
        assert_eq!(run.epoch, rec.epoch);
        assert_eq!(run.crashes, want, "the crash count is in the same write");
        assert_eq!(run.peak_temp_c, Some(51.5));
        assert_eq!(store.experiment(&rec.id).unwrap().as_ref(), Some(rec));
    }
    // Each start has its event, and the crash its own, all durable and
    // gapless; a start without a crash wrote the record once.
    let events = store.events_from(seq_before + 1, usize::MAX).unwrap();
    let got: Vec<(u64, EventKind, String)> = events
        .iter()
        .map(|e| (e.seq, e.kind, e.experiment.as_ref().unwrap().to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            (seq_before + 1, EventKind::PhaseChanged, "a".to_owned()),
            (seq_before + 2, EventKind::PhaseChanged, "b".to_owned()),
            (seq_before + 3, EventKind::Crashed, "b".to_owned()),
            (seq_before + 4, EventKind::PhaseChanged, "c".to_owned()),
        ]
    );
    assert_eq!(store.durable_event_seq(), seq_before + 4);
    assert_eq!(records[0].revision + 1, records[1].revision);
}

#[tokio::test]
async fn a_refused_start_in_a_batch_writes_nothing_and_leaves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let epochs = placed_all(&store, &["a", "b"]).await;
    let b_before = store.experiment(&id("b")).unwrap().unwrap();
    let results = store
        .record_transitions(&[
            start_ack("a", epochs[0], 0),
            // A stale copy's acknowledgement.
            start_ack("b", epochs[1] - 1, 0),
            // Not placed anywhere.
            start_ack("nope", 1, 0),
        ])
        .await
        .unwrap();
    assert_eq!(results[0].as_ref().unwrap().record.phase, Phase::Starting);
    assert!(matches!(results[1], Err(StoreError::StaleEpoch { .. })));
    assert!(matches!(
        results[2],
        Err(StoreError::ExperimentNotFound { .. })
    ));
    assert_eq!(store.experiment(&id("b")).unwrap().unwrap(), b_before);

    // A batch refused whole writes nothing and does not flush.
    let dumped = dump(&store);
    let before = store.commit_stats();
    let results = store
        .record_transitions(&[start_ack("a", epochs[0], 0)])
        .await
        .unwrap();
    assert!(matches!(results[0], Err(StoreError::PhaseConflict { .. })));
    assert_eq!(dump(&store), dumped);
    assert_eq!(store.commit_stats(), before);
}

#[tokio::test]
async fn an_observation_that_changes_nothing_writes_and_flushes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rec = running(&store, "a", "n1").await;
    let dumped = dump(&store);
    let before = store.commit_stats();
    let obs = RunObservation {
        crashes: Some(0),
        peak_temp_c: None,
        throttled: false,
        board_restarts: None,
    };
    let same = store
        .observe_run(&rec.id, rec.epoch, obs, "agent/n1")
        .await
        .unwrap();
    assert_eq!(same, rec);
    assert_eq!(dump(&store), dumped);
    assert_eq!(store.commit_stats(), before);
}

/// The board started the run over after its shutdown (autostart): the run
/// record counts it, with an event saying so, once per start-over.
#[tokio::test]
async fn a_start_over_by_the_board_is_counted_once_with_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rec = running(&store, "a", "n1").await;
    let obs = |n| RunObservation {
        crashes: Some(0),
        peak_temp_c: None,
        throttled: false,
        board_restarts: Some(n),
    };
    let seq = store.last_event_seq();
    let after = store
        .observe_run(&rec.id, rec.epoch, obs(1), "agent/n1")
        .await
        .unwrap();
    assert_eq!(after.runs.last().unwrap().board_restarts, 1);
    let events = store.events_from(seq + 1, 10).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, EventKind::Disrupted);
    assert!(events[0].message.contains("started it over"), "{events:?}");
    // The same count again writes nothing; a smaller one never lowers it.
    let dumped = dump(&store);
    for n in [1, 0] {
        store
            .observe_run(&rec.id, rec.epoch, obs(n), "agent/n1")
            .await
            .unwrap();
    }
    assert_eq!(dump(&store), dumped);
}

#[tokio::test]
async fn cached_reads_see_every_change_and_only_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut cache = RecordCache::default();
    placed(&store, "a", "n1").await;
    placed(&store, "b", "n2").await;
    assert_eq!(
        store.nodes_cached(&mut cache).unwrap(),
        store.nodes().unwrap()
    );
    let ids = [id("a"), id("b"), id("gone")];
    let read = |cache: &mut RecordCache| store.experiments_cached(cache, &ids).unwrap();
    let first = read(&mut cache);
    assert_eq!(
        first,
        vec![
            store.experiment(&id("a")).unwrap().unwrap(),
            store.experiment(&id("b")).unwrap().unwrap()
        ]
    );
    assert_eq!(read(&mut cache), first, "unchanged records read the same");

    // A change to a record and to a node is seen at the next read.
    store
        .cordon(&name("n2"), "fan", "user/alice")
        .await
        .unwrap();
    let a = store.experiment(&id("a")).unwrap().unwrap();
    store
        .transition(
            &Transition::new(id("a"), Phase::Placing, Phase::Starting, "controller", "")
                .fenced(a.epoch)
                .start_run(RunStart::default()),
        )
        .await
        .unwrap();
    let second = read(&mut cache);
    assert_eq!(second[0].phase, Phase::Starting);
    assert_eq!(second[0], store.experiment(&id("a")).unwrap().unwrap());
    assert_eq!(second[1], first[1]);
    let nodes = store.nodes_cached(&mut cache).unwrap();
    assert_eq!(nodes, store.nodes().unwrap());
    assert!(nodes[1].cordoned);

    // A removed node is gone from the next read.
    store.add_node(&new_node("n3"), "user/alice").await.unwrap();
    assert_eq!(store.nodes_cached(&mut cache).unwrap().len(), 3);
    store.remove_node(&name("n3"), "user/alice").await.unwrap();
    assert_eq!(
        store.nodes_cached(&mut cache).unwrap(),
        store.nodes().unwrap()
    );
}

#[tokio::test]
async fn node_events_stand_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let e = store
        .append_event(
            NewEvent::new(EventKind::NodeUnreachable, "controller", "silent for 15 s")
                .node(name("n1")),
        )
        .await
        .unwrap();
    assert_eq!(e.seq, 1);
    assert_eq!(store.events_from(1, 1).unwrap(), [e]);
}

// Nodes.

#[tokio::test]
async fn nodes_are_added_once_and_moved_when_they_announce_another_address() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let n = store.add_node(&new_node("n1"), "user/admin").await.unwrap();
    assert_eq!(n.address, "n1.lab:7443");
    let err = store
        .add_node(&new_node("n1"), "user/admin")
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "node n1 already exists");

    let before = dump(&store);
    store
        .ensure_node(&new_node("n1"), "agent/n1")
        .await
        .unwrap();
    assert_eq!(
        dump(&store),
        before,
        "an unchanged announcement writes nothing"
    );

    let mut moved = new_node("n1");
    moved.address = "10.0.0.7:7443".into();
    moved.source = NodeSource::Joined;
    let n = store.ensure_node(&moved, "agent/n1").await.unwrap();
    assert_eq!(n.address, "10.0.0.7:7443");
    assert_eq!(
        n.source,
        NodeSource::Config,
        "where it was first learned of"
    );
    let n2 = NewNode {
        source: NodeSource::Joined,
        ..new_node("n2")
    };
    let joined = store.ensure_node(&n2, "agent/n2").await.unwrap();
    assert_eq!(joined.source, NodeSource::Joined);
    assert_eq!(
        kinds(&store),
        [
            EventKind::NodeAdded,
            EventKind::NodeJoined,
            EventKind::NodeJoined
        ]
    );
    let names: Vec<String> = store
        .nodes()
        .unwrap()
        .iter()
        .map(|n| n.name.to_string())
        .collect();
    assert_eq!(names, ["n1", "n2"]);
}

#[tokio::test]
async fn a_bad_address_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = dump(&store);
    for bad in [
        "", "n1", "n1:", ":7443", "n1:0", "n1:99999", "n 1:7443", "n1:74a3",
    ] {
        let node = NewNode {
            address: bad.into(),
            ..new_node("n1")
        };
        let err = store.add_node(&node, "user/admin").await.unwrap_err();
        assert!(matches!(err, StoreError::BadAddress { .. }), "{bad}: {err}");
        assert!(store.ensure_node(&node, "agent/n1").await.is_err());
    }
    assert_eq!(dump(&store), before);
    for good in ["jetson-03.lab:7443", "10.0.0.7:1", "[fe80::1]:7443"] {
        check_address(good).unwrap();
    }
}

#[tokio::test]
async fn cordon_drain_and_labels_are_stored_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_node(&new_node("n1"), "user/admin").await.unwrap();
    let n1 = name("n1");

    let n = store.cordon(&n1, "fan noise", "user/admin").await.unwrap();
    assert!(n.cordoned && n.drain.is_none());
    let n = store
        .drain(&n1, DrainMode::Wait, "maintenance", "user/admin")
        .await
        .unwrap();
    assert_eq!(n.drain, Some(DrainMode::Wait));
    assert_eq!(n.cordon_reason, "maintenance");
    let n = store.uncordon(&n1, "user/admin").await.unwrap();
    assert!(!n.cordoned && n.drain.is_none() && n.cordon_reason.is_empty());
    // Uncordoning an uncordoned node changes nothing.
    let before = dump(&store);
    store.uncordon(&n1, "user/admin").await.unwrap();
    assert_eq!(dump(&store), before);

    let model = LabelKey::new("model").unwrap();
    let room = LabelKey::new("room").unwrap();
    let set: Labels = [
        (model.clone(), LabelValue::new("agx-orin").unwrap()),
        (room.clone(), LabelValue::new("b12").unwrap()),
    ]
    .into();
    store
        .set_labels(&n1, &set, &[], "user/admin")
        .await
        .unwrap();
    let n = store
        .set_labels(&n1, &Labels::new(), &[room], "user/admin")
        .await
        .unwrap();
    assert_eq!(n.labels.keys().collect::<Vec<_>>(), [&model]);

    let events = store.events_from(1, usize::MAX).unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::NodeAdded,
            EventKind::NodeCordoned,
            EventKind::NodeDraining,
            EventKind::NodeUncordoned,
            EventKind::NodeLabelsChanged,
            EventKind::NodeLabelsChanged,
        ]
    );
    assert_eq!(events[1].message, "cordoned: fan noise");
    assert_eq!(events[4].message, "labels: model=agx-orin, room=b12");
    assert!(events.iter().all(|e| e.node == Some(n1.clone())));

    let err = store
        .cordon(&name("ghost"), "", "user/admin")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NodeNotFound { .. }));
}

#[tokio::test]
async fn a_node_with_experiments_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    placed(&store, "a", "n1").await;
    let before = dump(&store);
    let err = store
        .remove_node(&name("n1"), "user/admin")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "node n1 still has experiments placed on it (a): drain it first, or remove it by force"
    );
    assert_eq!(dump(&store), before);
    assert!(!store
        .remove_node(&name("ghost"), "user/admin")
        .await
        .unwrap());
}

// Policy and decisions.

#[tokio::test]
async fn an_invalid_policy_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.policy().unwrap(), None);
    let bad = scheduler::Policy {
        temp_margin_c: -3.0,
        ..scheduler::Policy::default()
    };
    let before = dump(&store);
    assert!(matches!(
        store.set_policy(&bad, "user/admin").await,
        Err(StoreError::Policy(_))
    ));
    assert_eq!(dump(&store), before);
    let rec = store
        .set_policy(&scheduler::Policy::default(), "user/admin")
        .await
        .unwrap();
    assert_eq!(rec.updated_by, "user/admin");
    assert_eq!(kinds(&store), [EventKind::PolicyChanged]);
}

fn view(n: &str) -> NodeView {
    NodeView {
        name: name(n),
        link: Link::Fresh,
        cordoned: false,
        draining: false,
        thermal: Thermal::Normal,
        accepting: true,
        hottest_c: Some(40.0),
        warn_c: 75.0,
        memory_total: 8 * 1024 * 1024 * 1024,
        memory_reserved: 0,
        slots_used: 0,
        slots_max: 1,
        cpu_cores: 8,
        cpu_percent: 0.0,
        labels: Labels::new(),
        power_modes: Vec::new(),
        power_mode: None,
        modes_in_use: BTreeSet::new(),
        gpu: false,
    }
}

#[tokio::test]
async fn a_pass_stores_its_placements_and_keeps_every_decision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_node(&new_node("n1"), "user/admin").await.unwrap();
    for i in ["a", "b"] {
        store.submit(&spec(i, 0), "user/alice").await.unwrap();
    }
    let mut pinned = wire("pinned", 0);
    pinned.placement = Some(v1::Placement {
        power_mode: "MAXN".into(),
        ..Default::default()
    });
    store
        .submit(&ExperimentSpec::try_from(&pinned).unwrap(), "user/alice")
        .await
        .unwrap();

    let decisions = scheduler::plan(
        &store.pending().unwrap(),
        &[view("n1")],
        &scheduler::Policy::default(),
    );
    let results = store.record_pass(&decisions).await.unwrap();
    assert_eq!(results.len(), 1, "one slot: one placement");
    let placed = results[0].as_ref().unwrap();
    assert_eq!(placed.record.id.as_str(), "a");

    let a = store.decision(&id("a")).unwrap().unwrap();
    assert_eq!(a.epoch, Some(placed.epoch));
    assert_eq!(a.decision, decisions[0]);
    let b = store.experiment(&id("b")).unwrap().unwrap();
    assert_eq!(b.reason, "no node fits: 1 full");
    let pinned = store.experiment(&id("pinned")).unwrap().unwrap();
    assert_eq!(
        pinned.reason,
        "no node fits: 1 full, 1 power mode unavailable"
    );
    assert_eq!(
        store.decision(&id("pinned")).unwrap().unwrap().decision,
        decisions[2]
    );
    assert_eq!(placed.record.reason, decisions[0].summary());

    // The same decision again rewrites nothing.
    let again = scheduler::plan(
        &store.pending().unwrap(),
        &[NodeView {
            slots_used: 1,
            ..view("n1")
        }],
        &scheduler::Policy::default(),
    );
    let before = dump(&store);
    assert!(store.record_pass(&again).await.unwrap().is_empty());
    assert_eq!(dump(&store), before);
}

#[tokio::test]
async fn a_refused_placement_in_a_pass_leaves_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_node(&new_node("n1"), "user/admin").await.unwrap();
    store.add_node(&new_node("n2"), "user/admin").await.unwrap();
    for i in ["a", "b"] {
        store.submit(&spec(i, 0), "user/alice").await.unwrap();
    }
    let decisions = scheduler::plan(
        &store.pending().unwrap(),
        &[view("n1"), view("n2")],
        &scheduler::Policy::default(),
    );
    // The node was cordoned after the snapshot the pass saw.
    store.cordon(&name("n1"), "", "user/admin").await.unwrap();
    let results = store.record_pass(&decisions).await.unwrap();
    assert!(matches!(
        results[0],
        Err(StoreError::NodeUnavailable { .. })
    ));
    assert_eq!(results[1].as_ref().unwrap().record.node, Some(name("n2")));
    assert_eq!(queue_ids(&store), ["a"]);
}

// Records.

#[tokio::test]
async fn records_of_another_version_or_unreadable_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.submit(&spec("a", 0), "user/alice").await.unwrap();
    let key = b"a";
    let bytes = store.inner.experiments.get(key).unwrap().unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json["version"] = 2.into();
    json["phase"] = "a phase from the future".into();
    store
        .inner
        .experiments
        .insert(key, serde_json::to_vec(&json).unwrap())
        .unwrap();
    let err = store.experiment(&id("a")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "experiments record \"a\" has version 2; this controller reads version 1: upgrade the controller"
    );

    store
        .inner
        .experiments
        .insert(key, b"{not json".to_vec())
        .unwrap();
    let err = store.experiment(&id("a")).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                tree: "experiments",
                ..
            }
        ),
        "{err}"
    );

    store.inner.specs.insert(key, b"\xff\xff".to_vec()).unwrap();
    assert!(matches!(
        store.spec(&id("a")).unwrap_err(),
        StoreError::CorruptSpec { .. }
    ));
}

#[test]
fn the_queue_key_sorts_by_priority_then_seq() {
    let mut keys = [
        queue_key(0, 1),
        queue_key(1000, 9),
        queue_key(5, 2),
        queue_key(5, 1),
        queue_key(u32::MAX, u64::MAX),
    ];
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            queue_key(u32::MAX, u64::MAX),
            queue_key(1000, 9),
            queue_key(5, 1),
            queue_key(5, 2),
            queue_key(0, 1),
        ]
    );
}

#[test]
fn every_phase_step_is_allowed_or_not_on_purpose() {
    use Phase::*;
    let allowed: BTreeMap<Phase, Vec<Phase>> = Phase::ALL
        .iter()
        .map(|from| {
            let tos = Phase::ALL
                .iter()
                .copied()
                .filter(|to| from.can_become(*to))
                .collect();
            (*from, tos)
        })
        .collect();
    let expected: BTreeMap<Phase, Vec<Phase>> = [
        (Queued, vec![Placing, Cancelled]),
        (
            Placing,
            vec![Queued, Starting, Running, Stopping, Unknown, Failed],
        ),
        (
            Starting,
            vec![Queued, Running, Stopping, Unknown, Succeeded, Failed],
        ),
        (
            Running,
            vec![Queued, Starting, Stopping, Unknown, Succeeded, Failed],
        ),
        (
            Stopping,
            vec![Queued, Unknown, Succeeded, Failed, Stopped, Cancelled],
        ),
        (
            Unknown,
            vec![Queued, Starting, Running, Stopping, Succeeded, Failed],
        ),
        (Succeeded, vec![Queued]),
        (Failed, vec![Queued]),
        (Stopped, vec![Queued]),
        (Cancelled, vec![Queued]),
    ]
    .into();
    assert_eq!(allowed, expected);
    // Only phases that hold a node may lead to another node-holding phase
    // other than through the queue.
    for from in Phase::ALL {
        for to in Phase::ALL {
            if from.can_become(to) && to.holds_node() && to != Placing {
                assert!(from.holds_node(), "{from} → {to}");
            }
        }
    }
}
