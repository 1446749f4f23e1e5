//! End-to-end tests of the agent on a simulated board: a real systemd user
//! manager with its own D-Bus bus and journald, mTLS with certificates made
//! for the run, the real `fleet-agent` binary and its sled store.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use fleet_proto::identity::{Principal, Role};
use fleet_proto::v1::{self, agent_client::AgentClient, ExperimentState, FailureReason};
use fleet_testbed::agent::AgentHandle;
use fleet_testbed::pki::TestPki;
use fleet_testbed::poll::{wait_for, Check};
use fleet_testbed::testbed::{Board, Testbed};
use futures_util::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);

struct Fixture {
    bed: Testbed,
    board: Board,
    pki: TestPki,
    agent: AgentHandle,
    admin: AgentClient<Channel>,
}

/// A board with an agent on 127.0.0.<n>, or `None` when the machine cannot
/// run systemd and the run does not require it.
async fn fixture(name: &str, n: u8) -> Fixture {
    let mut bed = Testbed::new(name).await;
    let board = bed.add_board(&format!("{name}-b")).await.expect("board");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let agent = AgentHandle::start(&board, &pki, IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
        .await
        .expect("agent");
    let admin = agent.client(&pki, Role::Admin).await.expect("admin client");
    Fixture {
        bed,
        board,
        pki,
        agent,
        admin,
    }
}

impl Fixture {
    async fn finish(self) {
        drop(self.agent);
        self.bed.shutdown().await.expect("teardown");
    }
}

fn spec(id: &str, argv: &[&str]) -> v1::ExperimentSpec {
    v1::ExperimentSpec {
        id: id.into(),
        command: argv.iter().map(|s| s.to_string()).collect(),
        lifecycle: Some(v1::Lifecycle {
            restart_delay: "200ms".into(),
            stop_timeout: "5s".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn sh(id: &str, script: &str) -> v1::ExperimentSpec {
    spec(id, &["/bin/sh", "-c", script])
}

async fn start(
    c: &mut AgentClient<Channel>,
    spec: v1::ExperimentSpec,
    epoch: u64,
) -> Result<v1::ExperimentStatus, tonic::Status> {
    c.start_experiment(v1::StartExperimentRequest {
        spec: Some(spec),
        epoch,
    })
    .await
    .map(|r| r.into_inner())
}

async fn get(c: &mut AgentClient<Channel>, id: &str) -> v1::ExperimentStatus {
    c.get_experiment(v1::ExperimentRef { id: id.into() })
        .await
        .expect("get")
        .into_inner()
}

/// Waits until the experiment satisfies `ok`, returning its status.
async fn wait_state(
    c: &AgentClient<Channel>,
    id: &str,
    what: &str,
    ok: impl Fn(&v1::ExperimentStatus) -> bool,
) -> v1::ExperimentStatus {
    wait_for(what, DEADLINE, || {
        let mut c = c.clone();
        let id = id.to_owned();
        let ok = &ok;
        async move {
            let st = get(&mut c, &id).await;
            Ok(if ok(&st) {
                Check::Ready(st)
            } else {
                Check::not_yet(format!(
                    "{:?} ({}/{}) restarts={} crashes={} failure={:?}",
                    st.state(),
                    st.active_state,
                    st.sub_state,
                    st.restarts,
                    st.crashes_total,
                    st.failure_message
                ))
            })
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn logs(c: &mut AgentClient<Channel>, id: &str) -> Vec<String> {
    let mut s = c
        .stream_logs(v1::StreamLogsRequest {
            id: id.into(),
            tail: 100,
            since_unix_us: 0,
            follow: false,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut out = Vec::new();
    while let Some(l) = s.next().await {
        out.push(l.expect("line").message);
    }
    out
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_and_exit_zero_is_succeeded() {
    let mut f = fixture("logs", 2).await;
    let st = start(
        &mut f.admin,
        sh(
            "hello",
            "echo hello-$FLEET_EXPERIMENT_ID; sleep 0.3; echo done",
        ),
        0,
    )
    .await
    .unwrap();
    assert_eq!(st.epoch, 1);
    let st = wait_state(&f.admin, "hello", "hello to succeed", |s| {
        s.state() == ExperimentState::Succeeded
    })
    .await;
    assert_eq!(st.exit_code, Some(0));
    assert_eq!(st.failure(), FailureReason::None);
    let lines = wait_for("both lines in the journal", DEADLINE, || {
        let mut c = f.admin.clone();
        async move {
            let l = logs(&mut c, "hello").await;
            Ok((l.len() >= 2).then_some(l).into())
        }
    })
    .await
    .unwrap();
    assert_eq!(lines, ["hello-hello", "done"]);

    // Follow: lines written after the stream opened arrive on it.
    start(
        &mut f.admin,
        sh(
            "ticker",
            "i=0; while [ $i -lt 50 ]; do echo tick-$i; i=$((i+1)); sleep 0.1; done",
        ),
        0,
    )
    .await
    .unwrap();
    let mut follow = f
        .admin
        .stream_logs(v1::StreamLogsRequest {
            id: "ticker".into(),
            tail: 0,
            since_unix_us: 0,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(l) = follow.next().await {
            let m = l.unwrap().message;
            seen.push(m.clone());
            if seen.len() >= 3 {
                break;
            }
        }
    })
    .await
    .expect("followed lines arrive");
    let n: Vec<u32> = seen
        .iter()
        .map(|m| m.trim_start_matches("tick-").parse().unwrap())
        .collect();
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "in order: {seen:?}");
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_restart_until_the_limit_and_the_count_survives_the_agent() {
    let mut f = fixture("crash", 3).await;
    let mut s = sh("crasher", "echo boom; exit 3");
    s.lifecycle.as_mut().unwrap().max_restarts = Some(2);
    start(&mut f.admin, s, 0).await.unwrap();
    let st = wait_state(&f.admin, "crasher", "crasher to fail", |s| {
        s.state() == ExperimentState::Failed
    })
    .await;
    assert_eq!(st.failure(), FailureReason::StartLimit, "{st:?}");
    assert_eq!(st.exit_code, Some(3));
    assert!(st.failure_message.contains("exited with code 3"), "{st:?}");
    // The first run and two restarts crashed; the third restart was refused.
    assert_eq!(st.crashes_total, 3, "{st:?}");
    assert!(st.restarts >= 2, "{st:?}");

    f.agent.restart(&f.board).await.unwrap();
    let mut c = f.agent.client(&f.pki, Role::Admin).await.unwrap();
    let after = get(&mut c, "crasher").await;
    assert_eq!(after.crashes_total, 3, "{after:?}");
    assert_eq!(after.state(), ExperimentState::Failed);

    // A new run banks the old crashes and counts on.
    c.restart_experiment(v1::ExperimentRef {
        id: "crasher".into(),
    })
    .await
    .unwrap();
    let again = wait_state(&c, "crasher", "the second run to fail", |s| {
        s.state() == ExperimentState::Failed && s.crashes_total >= 6
    })
    .await;
    assert_eq!(again.crashes_total, 6, "{again:?}");
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_killed_and_reported_as_oom() {
    let mut f = fixture("oom", 4).await;
    // awk doubles a string until the kernel kills it: no shell in between,
    // so the main process itself dies.
    let mut s = spec(
        "hog",
        &["/usr/bin/awk", "BEGIN { s = \"x\"; while (1) { s = s s } }"],
    );
    s.resources = Some(v1::Resources {
        memory_max: "64M".into(),
        ..Default::default()
    });
    s.lifecycle.as_mut().unwrap().restart = "never".into();
    start(&mut f.admin, s, 0).await.unwrap();
    let st = wait_state(&f.admin, "hog", "the hog to be killed", |s| {
        s.state() == ExperimentState::Failed
    })
    .await;
    assert_eq!(st.failure(), FailureReason::OomKill, "{st:?}");
    assert!(st.failure_message.contains("out of memory"), "{st:?}");
    assert_eq!(st.memory_max_bytes, Some(64 << 20), "{st:?}");
    assert_eq!(st.crashes_total, 1);
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sends_sigterm_and_kills_after_the_stop_timeout() {
    let mut f = fixture("stop", 5).await;
    start(
        &mut f.admin,
        sh(
            "polite",
            "trap 'echo got-sigterm; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ),
        0,
    )
    .await
    .unwrap();
    let mut s = sh(
        "stubborn",
        "trap 'echo ignoring-sigterm' TERM; echo ready; while true; do sleep 0.1; done",
    );
    s.lifecycle.as_mut().unwrap().stop_timeout = "1s".into();
    start(&mut f.admin, s, 0).await.unwrap();
    for id in ["polite", "stubborn"] {
        wait_for("ready in the journal", DEADLINE, || {
            let mut c = f.admin.clone();
            async move {
                Ok(logs(&mut c, id)
                    .await
                    .contains(&"ready".to_owned())
                    .then_some(())
                    .into())
            }
        })
        .await
        .unwrap();
        f.admin
            .stop_experiment(v1::StopExperimentRequest {
                id: id.into(),
                epoch: None,
            })
            .await
            .unwrap();
    }
    let polite = wait_state(&f.admin, "polite", "polite to stop", |s| {
        s.state() == ExperimentState::Stopped
    })
    .await;
    assert_eq!(polite.result, "success", "{polite:?}");
    let stubborn = wait_state(&f.admin, "stubborn", "stubborn to be killed", |s| {
        s.state() == ExperimentState::Stopped
    })
    .await;
    // It ignored SIGTERM, so systemd waited the stop timeout and killed it.
    assert_eq!(stubborn.result, "timeout", "{stubborn:?}");
    assert_eq!(stubborn.exit_signal, Some(9), "{stubborn:?}");
    let polite_logs = logs(&mut f.admin, "polite").await;
    assert!(
        polite_logs.contains(&"got-sigterm".to_owned()),
        "{polite_logs:?}"
    );
    let stubborn_logs = logs(&mut f.admin, "stubborn").await;
    assert!(
        stubborn_logs.contains(&"ignoring-sigterm".to_owned()),
        "{stubborn_logs:?}"
    );
    // A requested stop is not a crash.
    assert_eq!(stubborn.crashes_total, 0);
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_agent_leaves_the_experiment_running() {
    let mut f = fixture("kill", 6).await;
    start(
        &mut f.admin,
        sh("steady", "while true; do sleep 1; done"),
        0,
    )
    .await
    .unwrap();
    let before = wait_state(&f.admin, "steady", "steady to run", |s| {
        s.state() == ExperimentState::Running && s.main_pid != 0
    })
    .await;
    f.agent.kill9().await.unwrap();
    // The process lives on without the agent.
    assert!(
        std::path::Path::new(&format!("/proc/{}", before.main_pid)).exists(),
        "experiment died with the agent"
    );
    f.agent.restart(&f.board).await.unwrap();
    let mut c = f.agent.client(&f.pki, Role::Viewer).await.unwrap();
    let after = get(&mut c, "steady").await;
    assert_eq!(after.state(), ExperimentState::Running);
    assert_eq!(after.main_pid, before.main_pid);
    assert_eq!(after.invocation_id, before.invocation_id);
    assert_eq!(after.epoch, before.epoch);
    f.finish().await;
}

/// systemd counts death by SIGTERM, SIGHUP, SIGINT or SIGPIPE as a clean
/// exit. A run that dies of one the agent did not send (a `kill`, a
/// `systemctl stop` behind fleet's back) failed; it did not succeed. One
/// that traps the agent's own stop and exits 0 is stopped.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_fleet_did_not_send_is_not_a_success() {
    let mut f = fixture("sigterm", 15).await;
    for (id, sig) in [("termed", libc::SIGTERM), ("hupped", libc::SIGHUP)] {
        start(&mut f.admin, spec(id, &["/bin/sleep", "900"]), 0)
            .await
            .unwrap();
        let running = wait_state(&f.admin, id, "it to run", |s| {
            s.state() == ExperimentState::Running && s.main_pid > 0
        })
        .await;
        // SAFETY: kill(2) of the experiment's main process, by pid.
        assert_eq!(unsafe { libc::kill(running.main_pid as i32, sig) }, 0);
        let ended = wait_state(&f.admin, id, "it to end", |s| {
            !matches!(
                s.state(),
                ExperimentState::Running | ExperimentState::Starting | ExperimentState::Stopping
            )
        })
        .await;
        assert_eq!(ended.state(), ExperimentState::Failed, "{ended:?}");
        assert_eq!(ended.exit_signal, Some(sig), "{ended:?}");
        assert!(
            ended.failure_message.contains("which fleet did not send"),
            "{}",
            ended.failure_message
        );
        assert_eq!(ended.disruptions_total, 0);
    }
    // The agent's own stop: the program traps SIGTERM and exits 0.
    start(
        &mut f.admin,
        sh(
            "trapper",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        ),
        0,
    )
    .await
    .unwrap();
    wait_state(&f.admin, "trapper", "it to run", |s| {
        s.state() == ExperimentState::Running
    })
    .await;
    f.admin
        .stop_experiment(v1::StopExperimentRequest {
            id: "trapper".into(),
            epoch: None,
        })
        .await
        .unwrap();
    let stopped = wait_state(&f.admin, "trapper", "it to stop", |s| {
        s.state() == ExperimentState::Stopped
    })
    .await;
    assert_eq!(stopped.failure_message, "", "{stopped:?}");
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autostart_survives_a_reboot_and_only_then() {
    let mut f = fixture("boot", 7).await;
    let mut keep = sh("keeper", "while true; do sleep 1; done");
    keep.lifecycle.as_mut().unwrap().autostart = true;
    start(&mut f.admin, keep, 0).await.unwrap();
    start(
        &mut f.admin,
        sh("oneshot", "while true; do sleep 1; done"),
        0,
    )
    .await
    .unwrap();
    let before = wait_state(&f.admin, "keeper", "keeper to run", |s| {
        s.state() == ExperimentState::Running
    })
    .await;
    assert!(before.autostart);
    wait_state(&f.admin, "oneshot", "oneshot to run", |s| {
        s.state() == ExperimentState::Running
    })
    .await;

    f.agent.kill9().await.unwrap();
    f.board.reboot().await.unwrap();
    f.agent.restart(&f.board).await.unwrap();
    let c = f.agent.client(&f.pki, Role::Admin).await.unwrap();
    let after = wait_state(&c, "keeper", "keeper to run after the reboot", |s| {
        s.state() == ExperimentState::Running
    })
    .await;
    assert_ne!(after.invocation_id, before.invocation_id, "a new boot");
    // The shutdown interrupted its run and the board started it over: the
    // record says so, once.
    let again = wait_state(&c, "keeper", "the start-over to be counted", |s| {
        s.board_restarts == 1
    })
    .await;
    assert_eq!(again.disruptions_total, 1, "{again:?}");
    assert_eq!(again.state(), ExperimentState::Running);
    let mut c2 = c.clone();
    // The board's shutdown stopped it with SIGTERM, which systemd counts as
    // a clean exit: a disruption, counted once, never a success.
    let oneshot = get(&mut c2, "oneshot").await;
    assert_eq!(oneshot.state(), ExperimentState::Disrupted, "{oneshot:?}");
    assert_eq!(oneshot.exit_signal, Some(libc::SIGTERM), "{oneshot:?}");
    assert!(
        oneshot.failure_message.contains("shutdown"),
        "{}",
        oneshot.failure_message
    );
    assert_eq!(oneshot.disruptions_total, 1, "{oneshot:?}");

    // Turning autostart off: the next reboot does not start it.
    c2.set_autostart(v1::SetAutostartRequest {
        id: "keeper".into(),
        enabled: false,
    })
    .await
    .unwrap();
    f.agent.kill9().await.unwrap();
    f.board.reboot().await.unwrap();
    f.agent.restart(&f.board).await.unwrap();
    let mut c = f.agent.client(&f.pki, Role::Admin).await.unwrap();
    let off = get(&mut c, "keeper").await;
    assert_eq!(off.state(), ExperimentState::Disrupted, "{off:?}");
    assert_eq!(off.disruptions_total, 2, "{off:?}");
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_fence_and_repeated_starts_are_idempotent() {
    let mut f = fixture("epoch", 8).await;
    let s = sh("fenced", "while true; do sleep 1; done");
    start(&mut f.admin, s.clone(), 5).await.unwrap();
    let first = wait_state(&f.admin, "fenced", "fenced to run", |s| {
        s.state() == ExperimentState::Running
    })
    .await;
    assert_eq!(first.epoch, 5);
    // The same (id, epoch) again: the same single instance.
    let again = start(&mut f.admin, s.clone(), 5).await.unwrap();
    assert_eq!(again.invocation_id, first.invocation_id);
    assert_eq!(again.main_pid, first.main_pid);
    // An older epoch is refused and changes nothing.
    let err = start(&mut f.admin, s.clone(), 4).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("epoch 5"), "{err:?}");
    assert_eq!(get(&mut f.admin, "fenced").await.main_pid, first.main_pid);
    // A newer one replaces the running copy.
    start(&mut f.admin, s, 6).await.unwrap();
    let newer = wait_state(&f.admin, "fenced", "the epoch-6 copy to run", |s| {
        s.state() == ExperimentState::Running && s.epoch == 6 && s.main_pid != 0
    })
    .await;
    assert_ne!(newer.invocation_id, first.invocation_id);
    assert!(
        !std::path::Path::new(&format!("/proc/{}", first.main_pid)).exists(),
        "the old copy still runs"
    );

    // A stop decided for epoch 5 never ends the run of epoch 6.
    let stop = |id: &str, epoch| v1::StopExperimentRequest {
        id: id.into(),
        epoch: Some(epoch),
    };
    let err = f
        .admin
        .stop_experiment(stop("fenced", 5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("epoch 6"), "{err:?}");
    let still = get(&mut f.admin, "fenced").await;
    assert_eq!(
        (still.state(), still.main_pid),
        (ExperimentState::Running, newer.main_pid)
    );
    // The stop of its own epoch stops it.
    f.admin.stop_experiment(stop("fenced", 6)).await.unwrap();
    wait_state(&f.admin, "fenced", "fenced to stop", |s| {
        s.state() == ExperimentState::Stopped
    })
    .await;

    // A run that already succeeded stays succeeded when a late stop of its
    // epoch arrives (the controller's stop of a copy it took for stale).
    start(&mut f.admin, sh("done", "exit 0"), 3).await.unwrap();
    wait_state(&f.admin, "done", "done to succeed", |s| {
        s.state() == ExperimentState::Succeeded
    })
    .await;
    let after = f
        .admin
        .stop_experiment(stop("done", 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.state(), ExperimentState::Succeeded, "{after:?}");
    assert_eq!(
        get(&mut f.admin, "done").await.state(),
        ExperimentState::Succeeded
    );
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_and_roles_are_enforced() {
    let mut f = fixture("authz", 9).await;
    start(
        &mut f.admin,
        sh("guarded", "while true; do sleep 1; done"),
        0,
    )
    .await
    .unwrap();

    // A viewer reads but cannot start or stop.
    let mut viewer = f.agent.client(&f.pki, Role::Viewer).await.unwrap();
    get(&mut viewer, "guarded").await;
    let err = start(&mut viewer, sh("nope", "true"), 0).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = viewer
        .stop_experiment(v1::StopExperimentRequest {
            id: "guarded".into(),
            epoch: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // An operator runs experiments but cannot remove them.
    let mut operator = f.agent.client(&f.pki, Role::Operator).await.unwrap();
    let err = operator
        .remove_experiment(v1::ExperimentRef {
            id: "guarded".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Another board's agent may call nothing.
    let other = f.pki.agent("someone-else").unwrap();
    let mut as_agent = f.agent.client_as(&other).await.unwrap();
    let err = as_agent
        .list_experiments(v1::ListExperimentsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // The controller may.
    let ctl = f.pki.controller().unwrap();
    let mut as_ctl = f.agent.client_as(&ctl).await.unwrap();
    as_ctl
        .list_experiments(v1::ListExperimentsRequest {})
        .await
        .unwrap();

    // No certificate, a foreign CA, an unknown role: refused at the handshake.
    let probe = fleet_testbed::tlsprobe::Probe::new(f.agent.addr, &f.pki.ca_path);
    let e = probe.without_certificate().await.unwrap_err();
    assert!(e.contains("CertificateRequired"), "{e}");
    let foreign = TestPki::new(&f.bed.dir().join("foreign")).unwrap();
    let stranger = foreign
        .issue(Principal::User {
            name: "mallory".into(),
            role: Role::Admin,
        })
        .unwrap();
    let e = probe.with(&stranger.cert, &stranger.key).await.unwrap_err();
    assert!(
        e.contains("UnknownCA") || e.contains("BadCertificate"),
        "{e}"
    );
    let (cert, key) = fleet_testbed::tlsprobe::issue_raw(
        &f.pki.ca,
        "spiffe://testlab/user/superuser/eve",
        &f.bed.dir().join("eve"),
    )
    .unwrap();
    let e = probe.with(&cert, &key).await.unwrap_err();
    assert!(!e.is_empty());
    // And the agent still serves its friends.
    get(&mut f.admin, "guarded").await;
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_writes_nothing() {
    let mut f = fixture("input", 10).await;
    let good = sh("fine", "true");
    let mut cases: Vec<(&str, v1::ExperimentSpec)> = Vec::new();
    let mut s = good.clone();
    s.id = "../etc".into();
    cases.push(("id", s));
    let mut s = good.clone();
    s.id = "Upper".into();
    cases.push(("id", s));
    let mut s = good.clone();
    s.id = "ssh.service".into();
    cases.push(("id", s));
    cases.push(("command", spec("nul", &["/bin/echo", "a\0b"])));
    cases.push((
        "command",
        spec("newline", &["/bin/echo", "a\nExecStartPre=/bin/rm"]),
    ));
    cases.push(("command", spec("empty", &[])));
    let mut s = good.clone();
    s.id = "envname".into();
    s.env = HashMap::from([("1BAD".to_owned(), "x".to_owned())]);
    cases.push(("env", s));
    let mut s = good.clone();
    s.id = "size".into();
    s.resources = Some(v1::Resources {
        memory_max: "8Q".into(),
        ..Default::default()
    });
    cases.push(("memory_max", s));
    let mut s = good.clone();
    s.id = "quota".into();
    s.resources = Some(v1::Resources {
        cpu_quota: "80".into(),
        ..Default::default()
    });
    cases.push(("cpu_quota", s));
    let mut s = good.clone();
    s.id = "duration".into();
    s.lifecycle.as_mut().unwrap().max_runtime = "12 parsecs".into();
    cases.push(("max_runtime", s));
    for (field, s) in cases {
        let err = start(&mut f.admin, s.clone(), 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().contains(field),
            "the message names {field}: {}",
            err.message()
        );
    }
    // Units outside brain-experiment@<valid id> are never touched.
    for id in ["ssh", "../../dbus", "dbus.service", ""] {
        let err = f
            .admin
            .stop_experiment(v1::StopExperimentRequest {
                id: id.into(),
                epoch: None,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::InvalidArgument | Code::NotFound),
            "{id}: {err:?}"
        );
    }
    // Nothing was written: no drop-in, no record, no loaded unit.
    for dir in [f.board.unit_dir(), f.board.runtime_unit_dir()] {
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            entries
                .iter()
                .all(|e| !e.to_string_lossy().contains(".service.d")),
            "{dir:?}: {entries:?}"
        );
    }
    let list = f
        .admin
        .list_experiments(v1::ListExperimentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.experiments.is_empty(), "{list:?}");
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_start_crash_and_stop_in_order() {
    let mut f = fixture("watch", 11).await;
    let mut events = f
        .admin
        .watch_experiments(v1::WatchExperimentsRequest { id: "flaky".into() })
        .await
        .unwrap()
        .into_inner();
    // Crashes once (the flag file is absent), then runs.
    let flag = f.board.dir().join("flaky-crashed");
    let script = format!(
        "if [ ! -e {0} ]; then touch {0}; echo crashing; exit 1; fi; echo steady; while true; do sleep 1; done",
        flag.display()
    );
    start(&mut f.admin, sh("flaky", &script), 0).await.unwrap();
    let mut states = Vec::new();
    let mut stopped = false;
    tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = events.next().await {
            let st = ev.unwrap().status.unwrap();
            states.push(st.state());
            // A crash that fast may end before systemd reports the first run
            // as active: what must be seen is the restart, then a run.
            let ran_again = states
                .iter()
                .skip_while(|s| **s != ExperimentState::Restarting)
                .any(|s| *s == ExperimentState::Running);
            if ran_again && !stopped {
                stopped = true;
                let mut c = f.admin.clone();
                c.stop_experiment(v1::StopExperimentRequest {
                    id: "flaky".into(),
                    epoch: None,
                })
                .await
                .unwrap();
            }
            if st.state() == ExperimentState::Stopped {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("events so far: {states:?}"));
    let want = [
        ExperimentState::Starting,
        ExperimentState::Restarting,
        ExperimentState::Running,
        ExperimentState::Stopped,
    ];
    let mut it = states.iter();
    for w in want {
        assert!(
            it.any(|s| *s == w),
            "{w:?} missing in order from {states:?}"
        );
    }
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_epoch_after_an_end_is_not_reported_as_that_end() {
    let mut f = fixture("rerun", 12).await;
    // The first run crashes once, then succeeds.
    let flag = f.board.dir().join("rerun-crashed");
    let once = format!(
        "if [ ! -e {0} ]; then touch {0}; exit 1; fi; exit 0",
        flag.display()
    );
    start(&mut f.admin, sh("rerun", &once), 1).await.unwrap();
    let first = wait_state(&f.admin, "rerun", "the first run to succeed", |s| {
        s.state() == ExperimentState::Succeeded
    })
    .await;
    assert_eq!((first.epoch, first.crashes_total), (1, 1));

    // Placed again on this board under a new epoch, after an end or right
    // after a stop (a controller's restart): what systemd still says of the
    // unit is the previous run's end, which must never be reported as the
    // new run's (a controller would take the new run as finished).
    let forever = sh(
        "rerun",
        "trap 'exit 0' TERM; while true; do sleep 0.2; done",
    );
    let mut last = first.invocation_id.clone();
    for epoch in 2..=6 {
        let mut events = f
            .admin
            .watch_experiments(v1::WatchExperimentsRequest { id: "rerun".into() })
            .await
            .unwrap()
            .into_inner();
        let reply = start(&mut f.admin, forever.clone(), epoch).await.unwrap();
        let ended = |s: ExperimentState| {
            matches!(
                s,
                ExperimentState::Succeeded | ExperimentState::Failed | ExperimentState::Stopped
            )
        };
        assert_eq!(reply.epoch, epoch);
        assert!(
            !ended(reply.state()),
            "epoch {epoch}: the start answered {reply:?}"
        );
        let mut seen = Vec::new();
        tokio::time::timeout(DEADLINE, async {
            while let Some(ev) = events.next().await {
                let st = ev.unwrap().status.unwrap();
                if st.epoch == epoch {
                    seen.push(st.state());
                    if st.state() == ExperimentState::Running {
                        break;
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("epoch-{epoch} events so far: {seen:?}"));
        assert!(
            !seen.iter().any(|s| ended(*s)),
            "epoch-{epoch} events: {seen:?}"
        );
        let now = get(&mut f.admin, "rerun").await;
        assert_ne!(now.invocation_id, last);
        last = now.invocation_id.clone();
        // The first run's crash is counted once, not again for a new run.
        assert_eq!(now.crashes_total, 1, "{now:?}");
        f.admin
            .stop_experiment(v1::StopExperimentRequest {
                id: "rerun".into(),
                epoch: None,
            })
            .await
            .unwrap();
    }
    f.finish().await;
}
