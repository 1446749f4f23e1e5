//! End-to-end tests of the controller with three simulated boards: real
//! systemd managers, real agents on simulated Jetson hardware, a real
//! controller process and its sled file, mTLS everywhere.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use fleet_proto::identity::Role;
use fleet_proto::v1::{self, controller_client::ControllerClient, ExperimentPhase};
use fleet_testbed::agent::{AgentHandle, AgentOptions};
use fleet_testbed::controller::{
    experiment, wait_experiment, wait_nodes_connected, ControllerHandle, ControllerOptions,
};
use fleet_testbed::hwsim::{Fixture, HwSim, ThermalParams};
use fleet_testbed::pki::TestPki;
use fleet_testbed::poll::{wait_for, Check};
use fleet_testbed::testbed::{Board, Testbed};
use futures_util::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(60);

struct Fleet {
    bed: Testbed,
    boards: Vec<Board>,
    sims: Vec<HwSim>,
    agents: Vec<AgentHandle>,
    pki: TestPki,
    ctl: ControllerHandle,
    admin: ControllerClient<Channel>,
}

async fn fleet(name: &str, net: u8, opts: ControllerOptions) -> Fleet {
    fleet_of(name, net, opts, Fixture::AgxOrinR36).await
}

/// Three boards of `fixture`.
async fn fleet_of(name: &str, net: u8, opts: ControllerOptions, fixture: Fixture) -> Fleet {
    let mut bed = Testbed::new(name).await;
    let names: Vec<String> = (0..3).map(|i| format!("{name}-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let boards = bed.add_boards(&refs).await.expect("boards");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let mut sims = Vec::new();
    let mut agents = Vec::new();
    for (i, b) in boards.iter().enumerate() {
        let sim = HwSim::install(b, fixture, ThermalParams::bounded(40.0, 60.0)).expect("hwsim");
        let options = AgentOptions {
            hardware: Some(sim.clone()),
            guard_toml: Some("[guard]\ncooldown_s = 1\n".into()),
            sampling_ms: Some(200),
            ..Default::default()
        };
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, net, i as u8 + 1));
        agents.push(
            AgentHandle::start_with(b, &pki, ip, options)
                .await
                .expect("agent"),
        );
        sims.push(sim);
    }
    let refs: Vec<&AgentHandle> = agents.iter().collect();
    let ctl = ControllerHandle::start(
        &bed.dir().join("controller"),
        &pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, net, 100)),
        &refs,
        &opts,
    )
    .await
    .expect("controller");
    let admin = ctl.client(&pki, Role::Admin).await.expect("admin");
    let f = Fleet {
        bed,
        boards,
        sims,
        agents,
        pki,
        ctl,
        admin,
    };
    f.wait_connected().await;
    f
}

fn sh(id: &str, script: &str) -> v1::ExperimentSpec {
    v1::ExperimentSpec {
        id: id.into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        lifecycle: Some(v1::Lifecycle {
            stop_timeout: "5s".into(),
            restart_delay: "200ms".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

const FOREVER: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

impl Fleet {
    async fn wait_connected(&self) {
        wait_nodes_connected(&self.admin, 3, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    async fn submit(&self, spec: v1::ExperimentSpec) -> Result<v1::SubmitResponse, tonic::Status> {
        self.admin
            .clone()
            .submit(v1::SubmitRequest {
                spec: Some(spec),
                dry_run: false,
            })
            .await
            .map(|r| r.into_inner())
    }

    async fn get(&self, id: &str) -> v1::Experiment {
        experiment(&self.admin, id).await.expect("get")
    }

    async fn wait(
        &self,
        id: &str,
        what: &str,
        ok: impl Fn(&v1::Experiment) -> bool,
    ) -> v1::Experiment {
        wait_experiment(&self.admin, id, what, DEADLINE, ok)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn index_of(&self, node: &str) -> usize {
        self.boards
            .iter()
            .position(|b| b.name() == node)
            .expect("a board")
    }

    /// Every experiment active on each board, from the agents themselves.
    async fn on_boards(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for a in &self.agents {
            let mut c = a.client(&self.pki, Role::Viewer).await.expect("agent");
            for st in c
                .list_experiments(v1::ListExperimentsRequest {})
                .await
                .expect("list")
                .into_inner()
                .experiments
            {
                if matches!(
                    st.state(),
                    v1::ExperimentState::Running
                        | v1::ExperimentState::Starting
                        | v1::ExperimentState::Restarting
                ) {
                    out.entry(st.id).or_default().push(a.node.clone());
                }
            }
        }
        out
    }

    async fn finish(self) {
        drop(self.ctl);
        drop(self.agents);
        self.bed.shutdown().await.expect("teardown");
    }
}

fn running(e: &v1::Experiment) -> bool {
    e.phase() == ExperimentPhase::Running
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_avoids_hot_and_busy_boards_and_explains_why() {
    let opts = ControllerOptions {
        slots_per_node: 1,
        ..Default::default()
    };
    let f = fleet("place", 20, opts).await;
    let hot = f.boards[0].name().to_owned();
    let busy = f.boards[1].name().to_owned();
    let free = f.boards[2].name().to_owned();
    // Hot: above warn (75) − margin (5), below warn so the agent still accepts.
    for z in f.sims[0].zones() {
        f.sims[0].set_zone(&z, 72.0).unwrap();
    }
    // Busy: its one slot taken by an experiment pinned there.
    let mut pinned = sh("occupant", FOREVER);
    pinned.placement = Some(v1::Placement {
        node: busy.clone(),
        ..Default::default()
    });
    f.submit(pinned).await.unwrap();
    let occ = f
        .wait("occupant", "the pinned experiment to run", running)
        .await;
    assert_eq!(occ.node, busy);

    // Wait until the controller sees the hot board as hot.
    wait_for("the hot board's telemetry", DEADLINE, || async {
        let nodes = f
            .admin
            .clone()
            .list_nodes(v1::ListNodesRequest {
                names: vec![hot.clone()],
                ..Default::default()
            })
            .await?
            .into_inner()
            .nodes;
        let t = nodes
            .first()
            .and_then(|n| n.telemetry.as_ref())
            .and_then(|t| t.hottest_c);
        Ok(if t.is_some_and(|t| t >= 71.0) {
            Check::Ready(())
        } else {
            Check::not_yet(format!("{t:?}"))
        })
    })
    .await
    .unwrap();

    f.submit(sh("mover", FOREVER)).await.unwrap();
    let m = f.wait("mover", "the free experiment to run", running).await;
    assert_eq!(m.node, free, "placed on the only cool, free board");

    let why = f
        .admin
        .clone()
        .explain(v1::ExplainRequest { id: "mover".into() })
        .await
        .unwrap()
        .into_inner();
    let last = why.last.expect("a recorded decision");
    let verdict = |n: &str| {
        last.nodes
            .iter()
            .find(|v| v.node == n)
            .cloned()
            .expect("verdict")
    };
    let h = verdict(&hot);
    assert!(!h.fits, "{h:?}");
    assert!(
        h.reasons
            .iter()
            .any(|r| r.contains("°C") || r.contains("hot")),
        "{h:?}"
    );
    let b = verdict(&busy);
    assert!(!b.fits, "{b:?}");
    assert!(b.reasons.iter().any(|r| r.contains("slot")), "{b:?}");
    assert!(verdict(&free).fits);

    // A label no board carries: it waits, and Explain says why for each.
    let mut labelled = sh("choosy", FOREVER);
    labelled.placement = Some(v1::Placement {
        labels: HashMap::from([("rack".into(), "z".into())]),
        ..Default::default()
    });
    f.submit(labelled).await.unwrap();
    let why = wait_for("a decision for choosy", DEADLINE, || async {
        let w = f
            .admin
            .clone()
            .explain(v1::ExplainRequest {
                id: "choosy".into(),
            })
            .await?
            .into_inner();
        Ok(w.last.clone().or(w.now.clone()).into())
    })
    .await
    .unwrap();
    assert!(
        why.nodes
            .iter()
            .all(|v| !v.fits && v.reasons.iter().any(|r| r.contains("label"))),
        "{why:?}"
    );
    assert_eq!(f.get("choosy").await.phase(), ExperimentPhase::Queued);
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_controller_loses_no_submission_and_restarts_nothing() {
    let mut f = fleet("storm", 21, ControllerOptions::default()).await;
    for i in 0..3 {
        f.submit(sh(&format!("steady-{i}"), FOREVER)).await.unwrap();
    }
    let mut before = BTreeMap::new();
    for i in 0..3 {
        let id = format!("steady-{i}");
        let e = f
            .wait(&id, "steady to run", |e| {
                running(e)
                    && e.status
                        .as_ref()
                        .is_some_and(|s| !s.invocation_id.is_empty())
            })
            .await;
        before.insert(id, e.status.unwrap().invocation_id);
    }

    // A storm of submissions with the controller killed twice in it.
    let mut acknowledged = Vec::new();
    for i in 0..200 {
        if i % 50 == 25 {
            f.ctl.kill9().await.unwrap();
            f.ctl.restart().await.unwrap();
            f.admin = f.ctl.client(&f.pki, Role::Admin).await.unwrap();
        }
        let id = format!("storm-{i:03}");
        if f.submit(sh(&id, "sleep 1")).await.is_ok() {
            acknowledged.push(id);
        }
    }
    f.ctl.kill9().await.unwrap();
    f.ctl.restart().await.unwrap();
    f.admin = f.ctl.client(&f.pki, Role::Admin).await.unwrap();
    let listed: Vec<String> = f
        .admin
        .clone()
        .list(v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .experiments
        .into_iter()
        .map(|e| e.spec.map(|s| s.id).unwrap_or_default())
        .collect();
    for id in &acknowledged {
        assert!(
            listed.contains(id),
            "acknowledged {id} is missing after kill -9"
        );
    }
    // Submissions that raced a kill may be refused; every one that was
    // acknowledged must be there.
    assert!(acknowledged.len() >= 190, "{}", acknowledged.len());

    // Nothing runs twice at once, and what ran before runs on untouched.
    for (id, nodes) in f.on_boards().await {
        assert_eq!(nodes.len(), 1, "{id} runs on {nodes:?}");
    }
    f.wait_connected().await;
    for (id, inv) in &before {
        let e = f
            .wait(id, "steady to be running after the restarts", running)
            .await;
        assert_eq!(&e.status.unwrap().invocation_id, inv, "{id} was restarted");
    }
    // The storm drains: every one of them succeeds.
    for id in &acknowledged {
        f.wait(id, "a storm experiment to succeed", |e| {
            e.phase() == ExperimentPhase::Succeeded
        })
        .await;
    }
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_board_requeues_its_experiment_elsewhere_as_a_disruption() {
    let f = fleet("critical", 22, ControllerOptions::default()).await;
    f.submit(sh("nomad", FOREVER)).await.unwrap();
    let first = f.wait("nomad", "nomad to run", running).await;
    let i = f.index_of(&first.node);
    for z in f.sims[i].zones() {
        f.sims[i].set_zone(&z, 90.0).unwrap();
    }
    let moved = f
        .wait("nomad", "nomad to run on another board", |e| {
            running(e) && e.node != first.node
        })
        .await;
    assert_eq!(moved.disruptions, 1, "{moved:?}");
    assert_eq!(moved.crashes, 0, "{moved:?}");
    assert_eq!(moved.runs.len(), 2);
    assert_eq!(moved.runs[0].outcome(), v1::RunOutcome::Disrupted);
    assert_eq!(moved.runs[0].disruption(), v1::Disruption::Thermal);
    assert!(moved.epoch > first.epoch);
    f.finish().await;
}

/// Every event of the log so far.
async fn all_events(admin: &ControllerClient<Channel>) -> Vec<v1::Event> {
    let mut stream = admin
        .clone()
        .watch_events(v1::WatchEventsRequest {
            from_seq: Some(0),
            filter: None,
            replay_only: true,
        })
        .await
        .expect("events")
        .into_inner();
    let mut out = Vec::new();
    while let Some(ev) = stream.next().await {
        out.push(ev.expect("event"));
    }
    out
}

/// Restarting an agent, gracefully or with kill -9, changes nothing on its
/// board: the controller reconnects at once and, within the heartbeat
/// timeout, never calls the board unreachable nor its experiments unknown.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_is_not_an_outage() {
    let mut f = fleet("agentrestart", 32, ControllerOptions::default()).await;
    f.wait_connected().await;
    f.submit(sh("steady", FOREVER)).await.unwrap();
    let first = f.wait("steady", "steady to run", running).await;
    let i = f.index_of(&first.node);
    f.agents[i].keep_address().unwrap();
    let before = all_events(&f.admin).await;
    let seq0 = before.last().map_or(0, |e| e.seq);
    let connects = |events: &[v1::Event]| {
        events
            .iter()
            .filter(|e| e.kind() == v1::EventKind::NodeConnected && e.node == first.node)
            .count()
    };
    for (expected, graceful) in (connects(&before) + 1..).zip([true, false, true, false]) {
        let started = std::time::Instant::now();
        if graceful {
            // As systemd stops the agent: SIGTERM; the agent closes its
            // streams after its drain period instead of waiting on them.
            let stopped = f.agents[i].stop().await.unwrap();
            assert_eq!(stopped, fleet_testbed::process::Stopped::Exited);
        } else {
            f.agents[i].kill9().await.unwrap();
        }
        f.agents[i].start_again(&f.boards[i]).await.unwrap();
        wait_for("the controller to reconnect", DEADLINE, || async {
            let n = connects(&all_events(&f.admin).await);
            Ok(if n >= expected {
                Check::Ready(())
            } else {
                Check::not_yet(format!("{n} connections of {expected}"))
            })
        })
        .await
        .unwrap();
        eprintln!(
            "agent restart (graceful: {graceful}) and reconnection took {:?}",
            started.elapsed()
        );
    }
    let after: Vec<v1::Event> = all_events(&f.admin)
        .await
        .into_iter()
        .filter(|e| e.seq > seq0)
        .collect();
    let outages: Vec<&v1::Event> = after
        .iter()
        .filter(|e| {
            matches!(
                e.kind(),
                v1::EventKind::NodeUnreachable
                    | v1::EventKind::NodeLost
                    | v1::EventKind::PhaseChanged
                    | v1::EventKind::Disrupted
                    | v1::EventKind::Placed
            )
        })
        .collect();
    assert!(outages.is_empty(), "{outages:#?}");
    let now = f.get("steady").await;
    assert_eq!(now.phase(), ExperimentPhase::Running);
    assert_eq!((now.epoch, now.runs.len()), (first.epoch, 1), "{now:?}");
    f.finish().await;
}

/// A board that reboots under its experiments: one that the board starts
/// again by itself (autostart) keeps its run, which records that the board
/// started it over; one that it does not is a disruption by the shutdown,
/// requeued, never a success.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_reboot_is_a_disruption_and_autostart_work_starts_over() {
    let mut f = fleet("reboot", 34, ControllerOptions::default()).await;
    f.wait_connected().await;
    let node = f.boards[0].name().to_owned();
    for (id, autostart) in [("auto", true), ("plain", false)] {
        let mut spec = sh(id, "while true; do sleep 0.2; done");
        spec.placement = Some(v1::Placement {
            node: node.clone(),
            ..Default::default()
        });
        spec.lifecycle.as_mut().unwrap().autostart = autostart;
        f.submit(spec).await.unwrap();
    }
    let auto = f.wait("auto", "auto to run", running).await;
    f.wait("plain", "plain to run", running).await;
    f.agents[0].keep_address().unwrap();
    // As a board reboots: systemd stops the agent and every experiment,
    // then boots and starts what is enabled, the agent among them.
    f.agents[0].stop().await.unwrap();
    f.boards[0].reboot().await.unwrap();
    f.agents[0].start_again(&f.boards[0]).await.unwrap();

    let plain = f
        .wait("plain", "plain to run again after the reboot", |e| {
            running(e) && e.runs.len() >= 2
        })
        .await;
    assert_eq!(
        plain.runs[0].outcome(),
        v1::RunOutcome::Disrupted,
        "{plain:?}"
    );
    assert_eq!(plain.runs[0].disruption(), v1::Disruption::Shutdown);
    let after = f
        .wait("auto", "the board's start-over to be recorded", |e| {
            e.runs.first().is_some_and(|r| r.board_restarts == 1)
        })
        .await;
    assert!(running(&after), "{after:?}");
    assert_eq!(
        (after.epoch, after.runs.len()),
        (auto.epoch, 1),
        "{after:?}"
    );
    f.finish().await;
}

/// A run killed by a SIGTERM that fleet did not send (a `kill`, a
/// `systemctl stop` on the board) failed: the controller does not record it
/// as a success and drop the work.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_behind_fleets_back_is_not_a_success() {
    let f = fleet("sigterm", 31, ControllerOptions::default()).await;
    let mut spec = sh("sleeper", "");
    spec.command = vec!["/bin/sleep".into(), "900".into()];
    f.submit(spec).await.unwrap();
    let placed = f.wait("sleeper", "sleeper to run", running).await;
    let agent = &f.agents[f.index_of(&placed.node)];
    let mut c = agent.client(&f.pki, Role::Viewer).await.unwrap();
    let st = c
        .get_experiment(v1::ExperimentRef {
            id: "sleeper".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.main_pid > 0, "{st:?}");
    // SAFETY: kill(2) of the experiment's main process, by pid.
    assert_eq!(unsafe { libc::kill(st.main_pid as i32, libc::SIGTERM) }, 0);
    let ended = f
        .wait("sleeper", "sleeper to end", |e| {
            !matches!(
                e.phase(),
                ExperimentPhase::Running | ExperimentPhase::Starting | ExperimentPhase::Placing
            )
        })
        .await;
    assert_eq!(ended.phase(), ExperimentPhase::Failed, "{ended:?}");
    let run = &ended.runs[0];
    assert_eq!(run.outcome(), v1::RunOutcome::Failed, "{run:?}");
    assert_eq!(run.exit_signal, Some(libc::SIGTERM), "{run:?}");
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_wait_lets_work_finish_and_drain_requeue_moves_it() {
    let f = fleet("drain", 23, ControllerOptions::default()).await;
    f.submit(sh("mover", FOREVER)).await.unwrap();
    let a = f.wait("mover", "mover to run", running).await;
    let r = f
        .admin
        .clone()
        .drain(v1::DrainRequest {
            node: a.node.clone(),
            mode: v1::DrainMode::Requeue as i32,
            reason: "maintenance".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.experiments, vec!["mover".to_owned()]);
    let b = f
        .wait("mover", "mover to run elsewhere", |e| {
            running(e) && e.node != a.node
        })
        .await;
    assert_eq!(b.runs[0].disruption(), v1::Disruption::Drain);
    assert_eq!(b.crashes, 0);

    f.submit(sh("finisher", "sleep 2; echo done"))
        .await
        .unwrap();
    let c = f.wait("finisher", "finisher to run", running).await;
    f.admin
        .clone()
        .drain(v1::DrainRequest {
            node: c.node.clone(),
            mode: v1::DrainMode::Wait as i32,
            reason: String::new(),
        })
        .await
        .unwrap();
    let done = f
        .wait("finisher", "finisher to finish where it ran", |e| {
            e.phase() == ExperimentPhase::Succeeded
        })
        .await;
    assert_eq!(done.runs.len(), 1, "it was not moved: {done:?}");
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_replays_from_the_start_then_follows() {
    let f = fleet("events", 24, ControllerOptions::default()).await;
    f.submit(sh("early", "true")).await.unwrap();
    f.wait("early", "early to succeed", |e| {
        e.phase() == ExperimentPhase::Succeeded
    })
    .await;
    let mut stream = f
        .admin
        .clone()
        .watch_events(v1::WatchEventsRequest {
            from_seq: Some(0),
            filter: None,
            replay_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    let mut saw_early_submit = false;
    let mut saw_late = false;
    let late = tokio::time::timeout(DEADLINE, async {
        let mut submitted_late = false;
        while let Some(ev) = stream.next().await {
            let ev = ev.unwrap();
            seqs.push(ev.seq);
            if ev.experiment == "early" && ev.kind() == v1::EventKind::Submitted {
                saw_early_submit = true;
            }
            if ev.experiment == "late" {
                saw_late = true;
                break;
            }
            if saw_early_submit
                && !submitted_late
                && ev.experiment == "early"
                && ev.message.contains("succeeded")
            {
                submitted_late = true;
                f.submit(sh("late", "true")).await.unwrap();
            }
            if saw_early_submit && !submitted_late && seqs.len() > 3 {
                submitted_late = true;
                f.submit(sh("late", "true")).await.unwrap();
            }
        }
    })
    .await;
    assert!(late.is_ok(), "seqs {seqs:?}");
    assert!(saw_early_submit && saw_late);
    assert_eq!(seqs[0], 1, "the replay starts at the first event");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, no repeat: {seqs:?}"
    );
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_and_leave_nothing() {
    let f = fleet("badspec", 25, ControllerOptions::default()).await;
    let mut cases = Vec::new();
    let mut s = sh("pin-nowhere", "true");
    s.placement = Some(v1::Placement {
        node: "no-such-board".into(),
        ..Default::default()
    });
    cases.push(("placement.node", s));
    let mut s = sh("bad-label", "true");
    s.placement = Some(v1::Placement {
        labels: HashMap::from([("Bad Key".into(), "x".into())]),
        ..Default::default()
    });
    cases.push(("labels", s));
    let mut s = sh("bad-mode", "true");
    s.placement = Some(v1::Placement {
        power_mode: "WARP9".into(),
        ..Default::default()
    });
    cases.push(("power_mode", s));
    let mut s = sh("negative", "true");
    s.priority = -5;
    cases.push(("priority", s));
    let mut s = sh("huge-config", "true");
    s.config_name = "c.json".into();
    s.config_content = vec![b'x'; 2 << 20];
    cases.push(("config", s));
    cases.push(("id", sh("../etc", "true")));
    cases.push((
        "command",
        v1::ExperimentSpec {
            id: "no-command".into(),
            ..Default::default()
        },
    ));
    for (field, spec) in cases {
        let err = f.submit(spec).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().contains(field),
            "names {field}: {}",
            err.message()
        );
    }
    let listed = f
        .admin
        .clone()
        .list(v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.experiments.is_empty(), "{listed:?}");

    // Submission is idempotent: a client that retries after losing the
    // answer gets OK and is told it was already there; only a different
    // spec under the id is a clash.
    let first = f.submit(sh("twice", "true")).await.unwrap();
    assert!(!first.already_submitted);
    let again = f.submit(sh("twice", "true")).await.unwrap();
    assert!(again.already_submitted, "{again:?}");
    assert_eq!(again.event_seq, 0);
    assert_eq!(
        again.experiment.and_then(|e| e.spec),
        first.experiment.and_then(|e| e.spec)
    );
    let err = f.submit(sh("twice", "false")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let events = all_events(&f.admin).await;
    let submits = events
        .iter()
        .filter(|e| e.experiment == "twice" && e.kind() == v1::EventKind::Submitted)
        .count();
    assert_eq!(submits, 1);
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_is_lost_its_work_moves_and_the_stale_copy_is_stopped() {
    let opts = ControllerOptions {
        heartbeat_timeout_s: 2,
        node_lost_after_s: 4,
        ..Default::default()
    };
    let f = fleet("lost", 26, opts).await;
    f.submit(sh("wanderer", FOREVER)).await.unwrap();
    let first = f.wait("wanderer", "wanderer to run", running).await;
    let i = f.index_of(&first.node);
    let pid = f.agents[i].pid().expect("agent pid") as i32;
    // SAFETY: kill(2) on a child we own.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let unknown = f
        .wait("wanderer", "wanderer to become unknown", |e| {
            e.phase() == ExperimentPhase::Unknown
        })
        .await;
    assert_eq!(unknown.node, first.node);
    let moved = f
        .wait("wanderer", "wanderer to run elsewhere", |e| {
            running(e) && e.node != first.node
        })
        .await;
    assert!(moved.epoch > first.epoch);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // The old copy, with the old epoch, is stopped once the board is back.
    wait_for("the stale copy to stop", DEADLINE, || async {
        let on = f.on_boards().await;
        let nodes = on.get("wanderer").cloned().unwrap_or_default();
        Ok(if nodes == vec![moved.node.clone()] {
            Check::Ready(())
        } else {
            Check::not_yet(format!("{nodes:?}"))
        })
    })
    .await
    .unwrap();
    f.finish().await;
}

/// One scrape of the controller's Prometheus endpoint: each sample by its
/// name with labels, e.g. `fleet_controller_nodes{connection="connected"}`.
async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: controller\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP head in {text:?}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    anyhow::ensure!(head.contains("text/plain; version=0.0.4"), "{head}");
    let mut samples = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("bad sample line {line:?}"))?;
        samples.insert(name.to_owned(), value.parse::<f64>()?);
    }
    Ok(samples)
}

fn sample(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no sample {name} in {samples:#?}"))
}

const HISTOGRAM: &str = "fleet_controller_enqueue_to_placed_seconds";

/// The histogram's buckets in order of their bounds, +Inf last.
fn buckets(samples: &BTreeMap<String, f64>) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix(&format!("{HISTOGRAM}_bucket{{le=\""))?
                .strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, *v))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn nodes_by_state(samples: &BTreeMap<String, f64>) -> [f64; 4] {
    ["pending", "connected", "unreachable", "lost"].map(|s| {
        sample(
            samples,
            &format!("fleet_controller_nodes{{connection=\"{s}\"}}"),
        )
    })
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_queue_placements_their_latency_and_nodes_by_state() {
    let opts = ControllerOptions {
        heartbeat_timeout_s: 2,
        ..Default::default()
    };
    let mut f = fleet("metrics", 27, opts).await;
    // Metrics are off by default: turn them on (a top-level key, before the
    // first section) and start the controller again on the same store.
    let ip = f.ctl.addr.ip();
    let config = std::fs::read_to_string(&f.ctl.config).unwrap();
    std::fs::write(
        &f.ctl.config,
        format!("metrics_listen = \"{ip}:0\"\n{config}"),
    )
    .unwrap();
    f.ctl.restart().await.unwrap();
    f.admin = f.ctl.client(&f.pki, Role::Admin).await.unwrap();
    let log = f.ctl.log.clone();
    let metrics: std::net::SocketAddr = wait_for("the metrics listener", DEADLINE, || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(text
                .lines()
                .rev()
                .filter(|l| l.contains("serving Prometheus metrics"))
                .filter_map(|l| l.split("bound=").nth(1))
                .find_map(|a| a.trim().parse().ok())
                .into())
        }
    })
    .await
    .unwrap();
    f.wait_connected().await;

    // A fresh controller: nothing queued or placed, every board connected.
    let s = scrape(metrics).await.unwrap();
    assert_eq!(sample(&s, "fleet_controller_queue_depth"), 0.0);
    assert_eq!(sample(&s, "fleet_controller_placements_total"), 0.0);
    assert_eq!(sample(&s, &format!("{HISTOGRAM}_count")), 0.0);
    assert_eq!(nodes_by_state(&s), [0.0, 3.0, 0.0, 0.0]);
    assert_eq!(buckets(&s).len(), 13, "12 bounds and +Inf");

    // Three placed at once, two that no board can take.
    for i in 0..3 {
        f.submit(sh(&format!("placed-{i}"), FOREVER)).await.unwrap();
    }
    for i in 0..2 {
        let mut s = sh(&format!("waiting-{i}"), "true");
        s.placement = Some(v1::Placement {
            labels: HashMap::from([("rack".into(), "z".into())]),
            ..Default::default()
        });
        f.submit(s).await.unwrap();
    }
    for i in 0..3 {
        f.wait(&format!("placed-{i}"), "placed to run", running)
            .await;
    }
    let s = scrape(metrics).await.unwrap();
    assert_eq!(sample(&s, "fleet_controller_queue_depth"), 2.0, "{s:#?}");
    assert_eq!(sample(&s, "fleet_controller_placements_total"), 3.0);
    assert_eq!(sample(&s, &format!("{HISTOGRAM}_count")), 3.0);
    let sum = sample(&s, &format!("{HISTOGRAM}_sum"));
    // Each was placed after its submission and, on an idle fleet, within a
    // few scheduler passes.
    assert!(sum > 0.0 && sum < 3.0 * 30.0, "sum {sum}");
    let b = buckets(&s);
    assert!(
        b.windows(2).all(|w| w[0].1 <= w[1].1),
        "buckets are cumulative: {b:?}"
    );
    assert_eq!(b.last().unwrap(), &(f64::INFINITY, 3.0));
    let within_30s = b.iter().find(|(le, _)| *le == 30.0).unwrap().1;
    assert_eq!(within_30s, 3.0, "{b:?}");

    // The queue shrinks when one is cancelled; a board whose agent is gone
    // counts as unreachable.
    f.admin
        .clone()
        .cancel(v1::CancelRequest {
            id: "waiting-0".into(),
            reason: String::new(),
        })
        .await
        .unwrap();
    f.agents[0].kill9().await.unwrap();
    let s = wait_for(
        "the stopped agent's board to count as unreachable",
        DEADLINE,
        || async {
            let s = scrape(metrics).await?;
            Ok(if nodes_by_state(&s) == [0.0, 2.0, 1.0, 0.0] {
                Check::Ready(s)
            } else {
                Check::not_yet(format!("{:?}", nodes_by_state(&s)))
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(sample(&s, "fleet_controller_queue_depth"), 1.0);
    assert_eq!(sample(&s, "fleet_controller_placements_total"), 3.0);
    f.finish().await;
}

/// Experiments pinned to a board that its thermal guard stopped wait for it
/// to cool: none is placed straight back on the critical board (each such
/// placement would be refused, burn an epoch and leave a start-failed run).
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_experiments_wait_for_their_critical_board_to_cool() {
    let f = fleet("pinhot", 33, ControllerOptions::default()).await;
    let node = f.boards[1].name().to_owned();
    let ids = ["pin-a", "pin-b", "pin-c"];
    for id in ids {
        let mut spec = sh(id, FOREVER);
        spec.placement = Some(v1::Placement {
            node: node.clone(),
            ..Default::default()
        });
        f.submit(spec).await.unwrap();
    }
    for id in ids {
        f.wait(id, "it to run", running).await;
    }
    for z in f.sims[1].zones() {
        f.sims[1].set_zone(&z, 90.0).unwrap();
    }
    for id in ids {
        let e = f
            .wait(id, "it to be stopped and queued", |e| {
                e.phase() == ExperimentPhase::Queued && !e.runs.is_empty()
            })
            .await;
        assert_eq!(e.runs[0].disruption(), v1::Disruption::Thermal, "{e:?}");
    }
    // A scheduling pass saw the board critical: explain says so.
    wait_for(
        "the scheduler to keep them off the hot board",
        DEADLINE,
        || async {
            let d = f
                .admin
                .clone()
                .explain(v1::ExplainRequest { id: "pin-a".into() })
                .await?
                .into_inner();
            let text = format!("{d:?}");
            Ok(if text.contains("critical") || text.contains("Thermal") {
                Check::Ready(())
            } else {
                Check::not_yet(text)
            })
        },
    )
    .await
    .unwrap();
    for z in f.sims[1].zones() {
        f.sims[1].set_zone(&z, 40.0).unwrap();
    }
    for id in ids {
        let e = f
            .wait(id, "it to run again once the board cooled", |e| {
                running(e) && e.runs.len() >= 2
            })
            .await;
        let outcomes: Vec<v1::RunOutcome> = e.runs.iter().map(|r| r.outcome()).collect();
        assert_eq!(
            outcomes,
            [v1::RunOutcome::Disrupted, v1::RunOutcome::Unspecified],
            "{id}: {:?}",
            e.runs
        );
        assert_eq!(e.node, node);
    }
    f.finish().await;
}

/// An experiment placed again on the board it just left (a restart, a drain
/// with requeue then uncordon, when it is pinned there) runs again: the
/// end of its previous run on that board is not taken for the new run's.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_experiment_restarts_on_its_board() {
    let f = fleet("again", 28, ControllerOptions::default()).await;
    let node = f.boards[1].name().to_owned();
    let mut spec = sh("again", FOREVER);
    spec.placement = Some(v1::Placement {
        node: node.clone(),
        ..Default::default()
    });
    f.submit(spec).await.unwrap();
    let first = f.wait("again", "again to run", running).await;
    assert_eq!(first.node, node);
    for round in 1..=3 {
        let before = f.get("again").await;
        f.admin
            .clone()
            .restart(v1::RestartRequest {
                id: "again".into(),
                reason: format!("round {round}"),
            })
            .await
            .unwrap();
        let after = f
            .wait("again", "again to run again under a new epoch", |e| {
                running(e) && e.epoch > before.epoch
            })
            .await;
        assert_eq!(after.node, node);
        assert_eq!(after.crashes, 0, "{after:?}");
        // Nothing stops the new run as a stale copy: it is still running
        // on its board once the agent has reported it.
        let on = f.on_boards().await;
        assert_eq!(on.get("again"), Some(&vec![node.clone()]), "{on:?}");
    }
    // Drain with requeue, then uncordon: it comes back to its board.
    let r = f
        .admin
        .clone()
        .drain(v1::DrainRequest {
            node: node.clone(),
            mode: v1::DrainMode::Requeue as i32,
            reason: "maintenance".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.experiments, vec!["again".to_owned()]);
    let drained = f.get("again").await;
    f.admin
        .clone()
        .uncordon(v1::UncordonRequest { node: node.clone() })
        .await
        .unwrap();
    let back = f
        .wait("again", "again to run on its board after the drain", |e| {
            running(e) && e.epoch > drained.epoch
        })
        .await;
    assert_eq!((back.node.as_str(), back.crashes), (node.as_str(), 0));
    f.finish().await;
}

/// The board's thermal state as the controller's fleet view shows it.
async fn thermal_state(f: &Fleet, node: &str) -> Option<v1::ThermalState> {
    let nodes = f
        .admin
        .clone()
        .list_nodes(v1::ListNodesRequest::default())
        .await
        .ok()?
        .into_inner()
        .nodes;
    let n = nodes.into_iter().find(|n| n.name == node)?;
    n.telemetry.map(|t| t.thermal_state())
}

/// A run that went through warn keeps its peak and `throttled` in its
/// record, through a controller killed with -9 and after the board cooled
/// down; a run on a board that stayed cool is not throttled.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_records_its_peak_temperature_and_that_it_was_throttled() {
    let mut f = fleet("peak", 29, ControllerOptions::default()).await;
    let hot_node = f.boards[0].name().to_owned();
    let cool_node = f.boards[1].name().to_owned();
    for (id, node) in [("warm", &hot_node), ("calm", &cool_node)] {
        let mut spec = sh(id, FOREVER);
        spec.placement = Some(v1::Placement {
            node: node.clone(),
            ..Default::default()
        });
        f.submit(spec).await.unwrap();
    }
    for id in ["warm", "calm"] {
        f.wait(id, "to run", running).await;
    }

    // Into warn (75 °C), short of critical (85 °C): the run goes on.
    const HOT_C: f64 = 80.5;
    for z in f.sims[0].zones() {
        f.sims[0].set_zone(&z, HOT_C).unwrap();
    }
    let throttled = |e: &v1::Experiment| {
        e.runs
            .last()
            .is_some_and(|r| r.throttled && r.peak_temp_c.is_some_and(|p| p >= HOT_C))
    };
    let warm = f
        .wait("warm", "warm's run to record the heat", throttled)
        .await;
    assert!(running(&warm), "{warm:?}");

    // What was written survives a controller killed with -9.
    f.ctl.kill9().await.unwrap();
    f.ctl.restart().await.unwrap();
    f.admin = f.ctl.client(&f.pki, Role::Admin).await.unwrap();
    f.wait_connected().await;
    let warm = f.get("warm").await;
    assert!(throttled(&warm), "{:?}", warm.runs);

    // Cooled below warn, then stopped: the end keeps the peak.
    for z in f.sims[0].zones() {
        f.sims[0].set_zone(&z, 40.0).unwrap();
    }
    wait_for("the hot board back to normal", DEADLINE, || async {
        Ok(match thermal_state(&f, &hot_node).await {
            Some(v1::ThermalState::Normal) => Check::Ready(()),
            s => Check::not_yet(format!("{s:?}")),
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    for id in ["warm", "calm"] {
        f.admin
            .clone()
            .stop(v1::StopRequest {
                id: id.into(),
                reason: "done".into(),
            })
            .await
            .unwrap();
    }
    for id in ["warm", "calm"] {
        f.wait(id, "to stop", |e| e.phase() == ExperimentPhase::Stopped)
            .await;
    }
    let warm = f.get("warm").await;
    assert_eq!(warm.runs.len(), 1, "{:?}", warm.runs);
    let run = &warm.runs[0];
    assert_eq!(run.node, hot_node);
    assert_eq!(run.outcome(), v1::RunOutcome::Stopped, "{run:?}");
    assert!(run.ended_at_unix_us.is_some());
    assert!(run.throttled, "{run:?}");
    assert!(run.peak_temp_c.is_some_and(|p| p >= HOT_C), "{run:?}");

    let calm = f.get("calm").await;
    let run = &calm.runs[0];
    assert_eq!(run.node, cool_node);
    assert!(!run.throttled, "{run:?}");
    let peak = run.peak_temp_c.expect("a peak from the board's samples");
    assert!(peak < 75.0, "{run:?}");
    f.finish().await;
}

/// An experiment that asks for another power mode runs in it, and its run
/// record says so: the controller switches the board first, then starts it.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_records_the_power_mode_the_controller_switched_to() {
    let f = fleet_of("mode", 30, ControllerOptions::default(), Fixture::OrinNx).await;
    let (modes, default) = Fixture::OrinNx.power_modes();
    let default_name = modes.iter().find(|m| m.0 == default).unwrap().1;
    assert_eq!(default_name, "40W");
    for (i, id) in ["at-25w", "at-15w"].into_iter().enumerate() {
        let mut spec = sh(id, FOREVER);
        spec.placement = Some(v1::Placement {
            node: f.boards[i].name().to_owned(),
            power_mode: ["25W", "15W"][i].into(),
            ..Default::default()
        });
        f.submit(spec).await.unwrap();
    }
    for (id, want) in [("at-25w", (3, "25W")), ("at-15w", (2, "15W"))] {
        let e = f.wait(id, "to run", running).await;
        let mode = e.runs[0].power_mode.clone().expect("a power mode at start");
        assert_eq!((mode.id, mode.name.as_str()), want, "{:?}", e.runs[0]);
        // The fleet view shows the new mode too (from the board's news of
        // the switch, or its next sample).
        wait_for("the fleet view to show the new mode", DEADLINE, || {
            let mut c = f.admin.clone();
            let node = e.node.clone();
            async move {
                let nodes = c
                    .list_nodes(v1::ListNodesRequest::default())
                    .await?
                    .into_inner()
                    .nodes;
                let shown = nodes
                    .iter()
                    .find(|n| n.name == node)
                    .and_then(|n| n.telemetry.as_ref())
                    .and_then(|t| t.power_mode.as_ref())
                    .map(|m| m.name.clone());
                Ok(if shown.as_deref() == Some(want.1) {
                    Check::Ready(())
                } else {
                    Check::not_yet(format!("{shown:?}"))
                })
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
    f.finish().await;
}
