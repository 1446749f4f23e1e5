//! The newcomer's first commands: `fleet-dev up --demo` runs simulated
//! boards, their agents and a controller, and puts a sample queue through
//! them; `fleet-dev down` stops it, or cleans up after one that was killed,
//! and leaves no process, mount, cgroup or run directory behind.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_proto::tls::{ClientTls, Expect};
use fleet_proto::v1::{self, controller_client::ControllerClient, ExperimentPhase};
use fleet_testbed::testbed::{Layout, Testbed};
use futures_util::StreamExt;
use tonic::transport::Channel;

/// The demo's experiments and how long it may take them all to end.
const DEMO: [&str; 6] = [
    "heater-a",
    "hello-world",
    "flaky",
    "memory-hog",
    "power-25w",
    "heater-b",
];
const DEMO_DEADLINE: Duration = Duration::from_secs(150);

/// Fails, with the reason, when this machine cannot run the testbed (the
/// build marks these tests ignored where it saw that it cannot).
async fn require_systemd(name: &str) {
    Testbed::new(name).await.shutdown().await.unwrap();
}

fn fleet_dev() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleet-dev"));
    cmd.env("RUST_BACKTRACE", "0")
        .env_remove("FLEET_CONFIG_FILE")
        .kill_on_drop(true);
    cmd
}

/// Runs fleet-dev to the end; its stdout, after asserting it succeeded.
async fn run_ok(args: &[&str], dir: &Path) -> String {
    let out = fleet_dev()
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fleet-dev {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nlog:\n{}",
        out.status,
        std::fs::read_to_string(dir.join("fleet-dev.log")).unwrap_or_default()
    );
    stdout
}

/// Stops the fleet of a test that failed half-way: a detached fleet-dev
/// outlives the test otherwise. Declared after the directory, so it runs
/// before the directory goes.
struct DownOnDrop<'a>(&'a Path);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-dev"))
                .args(["down", "--dir"])
                .arg(self.0)
                .status();
        }
    }
}

fn fleet_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("fleet.json")).unwrap()).unwrap()
}

fn path(v: &serde_json::Value) -> PathBuf {
    PathBuf::from(v.as_str().unwrap_or_else(|| panic!("not a path: {v}")))
}

async fn controller(fleet: &serde_json::Value) -> ControllerClient<Channel> {
    let tls = ClientTls::from_files(
        path(&fleet["ca"]),
        path(&fleet["admin_cert"]),
        path(&fleet["admin_key"]),
    )
    .unwrap();
    let addr: std::net::SocketAddr = fleet["controller"].as_str().unwrap().parse().unwrap();
    ControllerClient::new(tls.connect(addr, Expect::Controller).await.unwrap())
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

/// Every live process: pid, arguments, mount namespace inode.
fn processes() -> Vec<(u32, Vec<String>, Option<u64>)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let args = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let mnt = std::fs::metadata(e.path().join("ns/mnt"))
                .ok()
                .map(|m| m.ino());
            Some((pid, args, mnt))
        })
        .filter(|(pid, _, _)| alive(*pid))
        .collect()
}

/// What a run of `up` started, read while it runs.
struct Footprint {
    dir: PathBuf,
    pid: u32,
    run_dir: PathBuf,
    cgroup: String,
    /// Every process of the run when it was read, with its start time:
    /// fleet-dev, its boards' processes (their cgroup and mount
    /// namespaces), the agents and the controller.
    processes: Vec<(u32, Option<u64>, String)>,
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

impl Footprint {
    fn of(dir: &Path) -> Footprint {
        let fleet = fleet_json(dir);
        assert_eq!(fleet["state"], "ready", "{fleet}");
        let run_dir = path(&fleet["testbed"]["run_dir"]);
        let cgroup = fleet["testbed"]["cgroup"].as_str().unwrap().to_owned();
        let namespaces: Vec<u64> = fleet["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["mount_namespace"].as_u64().unwrap())
            .collect();
        let pid = fleet["pid"].as_u64().unwrap() as u32;
        let in_cgroup = Layout::detect().unwrap().pids(&cgroup).unwrap_or_default();
        let processes = processes()
            .into_iter()
            .filter(|(p, args, mnt)| {
                *p == pid
                    || in_cgroup.contains(&(*p as i32))
                    || mnt.is_some_and(|m| namespaces.contains(&m))
                    || args.iter().any(|a| {
                        Path::new(a).starts_with(dir) || Path::new(a).starts_with(&run_dir)
                    })
            })
            .map(|(p, args, _)| (p, start_time(p), args.join(" ")))
            .collect();
        let f = Footprint {
            dir: dir.to_owned(),
            pid,
            run_dir,
            cgroup,
            processes,
        };
        assert!(f.run_dir.is_dir());
        assert!(!f.cgroups().is_empty());
        f
    }

    /// Processes of the run still there: those it had when it was read
    /// (the same process: same pid and start time), and any with an
    /// argument in its directories.
    fn stray_processes(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .processes
            .iter()
            .filter(|(pid, start, _)| alive(*pid) && start_time(*pid) == *start)
            .map(|(pid, _, args)| format!("{pid} {args}"))
            .collect();
        left.extend(
            processes()
                .into_iter()
                .filter(|(_, args, _)| {
                    args.iter().any(|a| {
                        Path::new(a).starts_with(&self.dir)
                            || Path::new(a).starts_with(&self.run_dir)
                    })
                })
                .map(|(pid, args, _)| format!("{pid} {}", args.join(" "))),
        );
        left.sort();
        left.dedup();
        left
    }

    fn cgroups(&self) -> Vec<PathBuf> {
        Layout::detect()
            .unwrap()
            .dirs(&self.cgroup)
            .into_iter()
            .filter(|d| d.exists())
            .collect()
    }

    fn assert_nothing_left(&self) {
        let procs = self.stray_processes();
        assert!(procs.is_empty(), "processes left: {procs:#?}");
        let cgroups = self.cgroups();
        assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");
        assert!(
            !self.run_dir.exists(),
            "run directory left: {}",
            self.run_dir.display()
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let run_dir = self.run_dir.to_string_lossy();
        let mounts: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.contains(run_dir.as_ref()))
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:#?}");
        assert!(!self.dir.join("fleet-dev.pid").exists(), "pidfile left");
        assert_eq!(fleet_json(&self.dir)["state"], "stopped");
    }
}

fn ended(e: &v1::Experiment) -> bool {
    matches!(
        e.phase(),
        ExperimentPhase::Succeeded
            | ExperimentPhase::Failed
            | ExperimentPhase::Stopped
            | ExperimentPhase::Cancelled
    )
}

async fn node_events(c: &mut ControllerClient<Channel>, node: &str) -> Vec<v1::Event> {
    let mut stream = c
        .watch_events(v1::WatchEventsRequest {
            from_seq: Some(1),
            filter: Some(v1::EventFilter {
                nodes: vec![node.into()],
                ..Default::default()
            }),
            replay_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(ev) = stream.next().await {
        events.push(ev.unwrap());
    }
    events
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_reaches_every_expected_end_and_down_leaves_nothing() {
    require_systemd("fleet-dev-demo-probe").await;
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _down = DownOnDrop(dir);
    let out = run_ok(&["up", "--detach", "--demo"], dir).await;
    assert!(out.contains("runs in the background"), "{out}");
    let fleet = fleet_json(dir);
    let mut c = controller(&fleet).await;

    // Every demo experiment ends, as the controller records it.
    let deadline = Instant::now() + DEMO_DEADLINE;
    let mut exps: BTreeMap<&str, v1::Experiment> = BTreeMap::new();
    loop {
        for id in DEMO {
            if let Ok(e) = c.get(v1::GetRequest { id: id.into() }).await {
                exps.insert(id, e.into_inner());
            }
        }
        if exps.len() == DEMO.len() && exps.values().all(ended) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not end within {DEMO_DEADLINE:?}: {:#?}\nlog:\n{}",
            exps.values()
                .map(|e| (
                    e.spec.as_ref().map(|s| s.id.clone()),
                    e.phase(),
                    e.reason.clone()
                ))
                .collect::<Vec<_>>(),
            std::fs::read_to_string(dir.join("fleet-dev.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // On a failure below, the story so far is in the test's output.
    eprintln!(
        "fleet-dev's log:\n{}",
        std::fs::read_to_string(dir.join("fleet-dev.log")).unwrap_or_default()
    );
    let hello = &exps["hello-world"];
    assert_eq!(hello.phase(), ExperimentPhase::Succeeded, "{hello:?}");

    // The heater on the weak-fan board: stopped there by the thermal guard,
    // requeued as a disruption (no crash), finished on another board.
    let a = &exps["heater-a"];
    assert_eq!(a.phase(), ExperimentPhase::Succeeded, "{a:?}");
    assert!(a.disruptions >= 1, "{a:?}");
    assert_eq!(a.crashes, 0, "{a:?}");
    let first = &a.runs[0];
    assert_eq!(first.node, "jetson-01", "{a:?}");
    assert_eq!(first.outcome(), v1::RunOutcome::Disrupted, "{a:?}");
    assert_eq!(first.disruption(), v1::Disruption::Thermal, "{a:?}");
    let last = a.runs.last().unwrap();
    assert_ne!(last.node, "jetson-01", "{a:?}");
    assert_eq!(last.outcome(), v1::RunOutcome::Succeeded, "{a:?}");

    // The second heater was placed away from the hot board, and the
    // decision says why.
    let b = &exps["heater-b"];
    assert_eq!(b.phase(), ExperimentPhase::Succeeded, "{b:?}");
    assert_ne!(b.runs[0].node, "jetson-01", "{b:?}");
    let why = c
        .explain(v1::ExplainRequest {
            id: "heater-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let verdict = why
        .last
        .as_ref()
        .and_then(|d| d.nodes.iter().find(|v| v.node == "jetson-01"))
        .unwrap_or_else(|| panic!("no verdict on jetson-01: {why:?}"));
    assert!(!verdict.fits, "{verdict:?}");
    assert!(
        verdict.reasons.iter().any(|r| r.contains("too hot")),
        "{verdict:?}"
    );

    let flaky = &exps["flaky"];
    assert_eq!(flaky.phase(), ExperimentPhase::Failed, "{flaky:?}");
    assert_eq!(flaky.crashes, 3, "{flaky:?}");
    assert_eq!(
        flaky.runs.last().unwrap().failure(),
        v1::FailureReason::StartLimit,
        "{flaky:?}"
    );

    let hog = &exps["memory-hog"];
    assert_eq!(hog.phase(), ExperimentPhase::Failed, "{hog:?}");
    assert_eq!(
        hog.runs.last().unwrap().failure(),
        v1::FailureReason::OomKill,
        "{hog:?}"
    );

    // The power-mode experiment ran on the Orin NX, switched to 25W before
    // its run started, and its run record says it ran in 25W.
    let pm = &exps["power-25w"];
    assert_eq!(pm.phase(), ExperimentPhase::Succeeded, "{pm:?}");
    let run = pm.runs.last().unwrap();
    assert_eq!(run.node, "jetson-02", "{pm:?}");
    assert_eq!(
        run.power_mode.as_ref().map(|m| m.name.as_str()),
        Some("25W"),
        "{pm:?}"
    );
    let switches: Vec<v1::Event> = node_events(&mut c, "jetson-02")
        .await
        .into_iter()
        .filter(|e| e.kind() == v1::EventKind::NodePowerModeChanged)
        .collect();
    assert!(
        switches
            .iter()
            .any(|e| e.message.contains("→ 25W") && e.timestamp_unix_us <= run.started_at_unix_us),
        "no switch to 25W before the run started at {}: {switches:#?}",
        run.started_at_unix_us
    );

    // The story a newcomer reads, and the table at its end.
    let log_path = dir.join("fleet-dev.log");
    let log = fleet_testbed::poll::wait_for(
        "the demo's summary in its log",
        Duration::from_secs(30),
        || async {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            Ok(log
                .contains("demo: all 6 experiments ended as expected")
                .then_some(log)
                .into())
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )
    });
    for line in [
        "placed on jetson-01",
        "jetson-01 was passed over:",
        "too hot:",
        "→ critical",
        "stopped by jetson-01's thermal guard",
        "crashed and restarted (1 in this run)",
        "restart limit",
        "out of memory",
        "power mode → 25W",
        "[log] hello-world  done",
    ] {
        assert!(
            log.contains(line),
            "{line:?} missing from the story:\n{log}"
        );
    }

    // Stop it; nothing is left.
    let footprint = Footprint::of(dir);
    assert!(footprint.processes.len() > 10, "{:#?}", footprint.processes);
    let out = run_ok(&["down"], dir).await;
    assert!(
        out.contains(&format!("stopped fleet-dev (pid {})", footprint.pid)),
        "{out}"
    );
    footprint.assert_nothing_left();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("stopped; nothing left running"), "{log}");
    let again = run_ok(&["down"], dir).await;
    assert!(again.contains("nothing is running"), "{again}");
    eprintln!("demo, checks and down took {:?}", started.elapsed());
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreground_up_serves_fleetctl_and_stops_on_down() {
    require_systemd("fleet-dev-fg-probe").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _down = DownOnDrop(dir);
    let up = fleet_dev()
        .args(["up", "--nodes", "1", "--dir"])
        .arg(dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    fleet_testbed::poll::wait_for(
        "fleet.json to say ready",
        Duration::from_secs(60),
        || async {
            let ready = std::fs::read_to_string(dir.join("fleet.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .is_some_and(|j| j["state"] == "ready");
            Ok(ready.then_some(()).into())
        },
    )
    .await
    .unwrap();
    let footprint = Footprint::of(dir);

    // A plain `fleetctl nodes` works: fleet-dev made the dev fleet
    // fleetctl's default (there was no config of the person's own), and
    // its own copy works too.
    let fleetctl = fleet_testbed::agent::workspace_bin("fleetctl");
    for config in [None, Some(dir.join("fleetctl.toml"))] {
        let mut cmd = tokio::process::Command::new(&fleetctl);
        cmd.arg("nodes")
            .env_remove("FLEET_CONFIG_FILE")
            .env("XDG_CONFIG_HOME", dir.join("xdg"));
        if let Some(c) = &config {
            cmd.env("FLEET_CONFIG_FILE", c);
        }
        let nodes = cmd.output().await.unwrap();
        let listed = String::from_utf8_lossy(&nodes.stdout);
        assert!(
            nodes.status.success() && listed.contains("jetson-01"),
            "{config:?}: {listed}\n{}",
            String::from_utf8_lossy(&nodes.stderr)
        );
    }

    // Its board has a jetson_clocks (the simulator on the board's state),
    // switched through the controller.
    for (state, shown) in [("on", "is now on"), ("off", "is now off")] {
        let out = tokio::process::Command::new(&fleetctl)
            .args(["clocks", "jetson-01", state])
            .env("FLEET_CONFIG_FILE", dir.join("fleetctl.toml"))
            .output()
            .await
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains(shown),
            "clocks {state}: {said}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A second `up` in the same directory is refused.
    let second = fleet_dev()
        .args(["up", "--once", "--dir"])
        .arg(dir)
        .output()
        .await
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already runs"), "{err}");

    let out = run_ok(&["down"], dir).await;
    assert!(out.contains("stopped fleet-dev"), "{out}");
    let up = tokio::time::timeout(Duration::from_secs(30), up.wait_with_output())
        .await
        .expect("up ends after down")
        .unwrap();
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(stdout.contains("asked to stop (SIGTERM)"), "{stdout}");
    assert!(stdout.contains("stopped; nothing left running"), "{stdout}");
    footprint.assert_nothing_left();
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_cleans_up_after_a_killed_fleet_dev() {
    require_systemd("fleet-dev-kill-probe").await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _down = DownOnDrop(dir);
    run_ok(&["up", "--detach", "--nodes", "2"], dir).await;
    let footprint = Footprint::of(dir);
    assert!(footprint.processes.len() > 5, "{:#?}", footprint.processes);
    // SAFETY: kill(2) on the fleet-dev this test started.
    unsafe { libc::kill(footprint.pid as i32, libc::SIGKILL) };
    fleet_testbed::poll::wait_for("fleet-dev to die", Duration::from_secs(10), || async {
        Ok((!alive(footprint.pid)).then_some(()).into())
    })
    .await
    .unwrap();
    // Its fleet outlives it: the controller, at least (another test's
    // testbed may reap the boards of a dead run first).
    assert!(!footprint.stray_processes().is_empty());

    let out = run_ok(&["down"], dir).await;
    assert!(out.contains("is gone but left a fleet behind"), "{out}");
    assert!(out.contains("controller (pid"), "{out}");
    footprint.assert_nothing_left();
    let again = run_ok(&["down"], dir).await;
    assert!(again.contains("nothing is running"), "{again}");
}

// ---------------------------------------------------------------------------
// Faults: restart, kill, start, reboot, and settings at `up`

/// How long a fault test waits for one condition.
const FAULT_DEADLINE: Duration = Duration::from_secs(60);

/// Runs fleet-dev to the end: success, stdout, stderr.
async fn run(args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = fleet_dev()
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A property of a unit, read from the board's systemd itself (through
/// its private socket in the board's runtime directory), not from the
/// agent.
async fn unit_property(board_dir: &Path, unit: &str, property: &str) -> String {
    let out = tokio::process::Command::new("systemctl")
        .args(["--user", "show", unit, "--value", "-p", property])
        .env("XDG_RUNTIME_DIR", board_dir.join("run"))
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            format!("unix:path={}", board_dir.join("run/bus").display()),
        )
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "systemctl show {unit}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn node_json<'a>(fleet: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    fleet["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {fleet}"))
}

/// Waits until the controller has `node` connected, with telemetry.
async fn wait_connected(c: &ControllerClient<Channel>, node: &str) {
    fleet_testbed::poll::wait_for(
        format!("the controller to have {node} connected"),
        FAULT_DEADLINE,
        || async {
            let nodes = match c.clone().list_nodes(v1::ListNodesRequest::default()).await {
                Ok(r) => r.into_inner().nodes,
                Err(e) => return Ok(fleet_testbed::poll::Check::not_yet(e.message().to_owned())),
            };
            let n = nodes.iter().find(|n| n.name == node);
            Ok(n.filter(|n| {
                n.connection() == v1::NodeConnection::Connected && n.telemetry.is_some()
            })
            .map(|_| ())
            .into())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

fn connects(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1)).is_ok()
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_kills_and_reboots_keep_ports_and_experiments() {
    require_systemd("fleet-dev-faults-probe").await;
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _down = DownOnDrop(dir);
    run_ok(
        &[
            "up",
            "--detach",
            "--nodes",
            "2",
            "--controller-set",
            "node_lost_after_s=600",
            // A frozen agent is seen as unreachable soon.
            "--controller-set",
            "heartbeat_timeout_s=3",
            "--agent-set",
            "guard.cooldown_s=7",
        ],
        dir,
    )
    .await;
    let fleet = fleet_json(dir);
    let ctl_addr = fleet["controller"].as_str().unwrap().to_owned();

    // The settings are in the configs the daemons run with.
    let ctl_toml: toml::Table = std::fs::read_to_string(path(&fleet["controller_config"]))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ctl_toml["node_lost_after_s"].as_integer(), Some(600));
    assert_eq!(ctl_toml["heartbeat_timeout_s"].as_integer(), Some(3));
    for n in fleet["nodes"].as_array().unwrap() {
        let agent_toml: toml::Table = std::fs::read_to_string(path(&n["dir"]).join("agent.toml"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(agent_toml["guard"]["cooldown_s"].as_integer(), Some(7));
        // Started on port 0, kept on the port it got.
        assert_eq!(agent_toml["listen"].as_str(), n["agent"].as_str());
    }

    // An experiment that runs until stopped.
    let mut c = controller(&fleet).await;
    for n in ["jetson-01", "jetson-02"] {
        wait_connected(&c, n).await;
    }
    c.submit(v1::SubmitRequest {
        spec: Some(v1::ExperimentSpec {
            id: "steady".into(),
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                "trap 'exit 0' TERM; while true; do sleep 0.2; done".into(),
            ],
            lifecycle: Some(v1::Lifecycle {
                stop_timeout: "5s".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        dry_run: false,
    })
    .await
    .unwrap();
    let running = |e: &v1::Experiment| e.phase() == ExperimentPhase::Running;
    let e = fleet_testbed::controller::wait_experiment(
        &c,
        "steady",
        "steady to run",
        FAULT_DEADLINE,
        running,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let node = e.node.clone();
    let other = if node == "jetson-01" {
        "jetson-02"
    } else {
        "jetson-01"
    };
    let board_dir = path(&node_json(&fleet, &node)["dir"]);
    let unit = "brain-experiment@steady.service";
    let invocation = unit_property(&board_dir, unit, "InvocationID").await;
    assert_eq!(invocation.len(), 32, "{invocation:?}");
    let epoch = e.epoch;
    // The experiment is the same run, on the same board, still running
    // in the same invocation of its unit.
    let same_run = |what: &'static str| {
        let (c, board_dir, node, invocation) = (&c, &board_dir, &node, &invocation);
        async move {
            let e = fleet_testbed::controller::wait_experiment(
                c,
                "steady",
                &format!("steady to run after {what}"),
                FAULT_DEADLINE,
                running,
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!((&e.node, e.epoch), (node, epoch), "after {what}: {e:?}");
            assert_eq!(
                &unit_property(board_dir, unit, "InvocationID").await,
                invocation,
                "after {what}"
            );
        }
    };

    // Restart the controller: same port; the client made before it, and
    // fleetctl, work again; the experiment is still there, still running.
    let t = Instant::now();
    let out = run_ok(&["restart", "controller"], dir).await;
    eprintln!("restart controller took {:?}: {out}", t.elapsed());
    assert!(out.contains(&format!("answers at {ctl_addr}")), "{out}");
    let after = fleet_json(dir);
    assert_eq!(after["controller"], fleet["controller"]);
    assert_ne!(after["controller_pid"], fleet["controller_pid"]);
    wait_connected(&c, &node).await;
    same_run("a controller restart").await;
    let fleetctl = tokio::process::Command::new(fleet_testbed::agent::workspace_bin("fleetctl"))
        .args(["status", "steady"])
        .env("FLEET_CONFIG_FILE", dir.join("fleetctl.toml"))
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&fleetctl.stdout);
    assert!(
        fleetctl.status.success() && said.contains(&node),
        "{said}\n{}",
        String::from_utf8_lossy(&fleetctl.stderr)
    );

    // kill -9 the experiment's agent: it stays down (the port is closed)
    // until started again, on the same port; systemd kept the experiment.
    let agent_addr = node_json(&fleet, &node)["agent"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run_ok(&["kill", "agent", &node], dir).await;
    assert!(out.contains("was killed (SIGKILL)"), "{out}");
    assert!(!connects(&agent_addr), "{agent_addr} still answers");
    assert!(node_json(&fleet_json(dir), &node)["agent_pid"].is_null());
    let (ok, _, err) = run(&["kill", "agent", &node], dir).await;
    assert!(!ok && err.contains("is not running"), "{err}");
    assert_eq!(
        unit_property(&board_dir, unit, "InvocationID").await,
        invocation
    );
    let out = run_ok(&["start", "agent", &node], dir).await;
    assert!(out.contains(&format!("serves at {agent_addr}")), "{out}");
    let (ok, _, err) = run(&["start", "agent", &node], dir).await;
    assert!(!ok && err.contains("already runs"), "{err}");
    assert_eq!(
        node_json(&fleet_json(dir), &node)["agent"].as_str(),
        Some(agent_addr.as_str())
    );
    wait_connected(&c, &node).await;
    same_run("a kill -9 of its agent").await;

    // Reboot the other board: its agent comes back, on the same port, and
    // the controller connects to it again.
    let other_addr = node_json(&fleet, other)["agent"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_pid = node_json(&fleet, other)["agent_pid"].clone();
    let t = Instant::now();
    let out = run_ok(&["reboot", other], dir).await;
    eprintln!("reboot took {:?}: {out}", t.elapsed());
    assert!(
        out.contains(&format!("{other} rebooted")) && out.contains(&other_addr),
        "{out}"
    );
    let after = fleet_json(dir);
    assert_eq!(
        node_json(&after, other)["agent"].as_str(),
        Some(&*other_addr)
    );
    assert_ne!(node_json(&after, other)["agent_pid"], other_pid);
    wait_connected(&c, other).await;
    same_run("a reboot of the other board").await;

    // Freeze the other board's agent (SIGSTOP): its connections stay open
    // and nothing answers, so the controller finds it silent; CONT thaws it.
    let out = run_ok(&["kill", "agent", other, "--signal", "STOP"], dir).await;
    assert!(out.contains("is frozen"), "{out}");
    fleet_testbed::poll::wait_for(
        format!("the controller to find {other} unreachable"),
        FAULT_DEADLINE,
        || async {
            let nodes = c
                .clone()
                .list_nodes(v1::ListNodesRequest::default())
                .await?
                .into_inner()
                .nodes;
            let state = nodes
                .iter()
                .find(|n| n.name == other)
                .map(|n| n.connection());
            Ok((state == Some(v1::NodeConnection::Unreachable))
                .then_some(())
                .into())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (ok, _, err) = run(&["start", "agent", other], dir).await;
    assert!(!ok && err.contains("is frozen"), "{err}");
    let out = run_ok(&["kill", "agent", other, "--signal", "CONT"], dir).await;
    assert!(out.contains("runs again"), "{out}");
    wait_connected(&c, other).await;
    same_run("a freeze of the other board's agent").await;

    // Mistakes are refused, saying why.
    for (args, says) in [
        (
            vec!["restart", "agent", "jetson-09"],
            "no board \"jetson-09\"",
        ),
        (vec!["reboot", "jetson-09"], "no board \"jetson-09\""),
        (vec!["start", "controller"], "already runs"),
    ] {
        let (ok, _, err) = run(&args, dir).await;
        assert!(!ok && err.contains(says), "{args:?}: {err}");
    }

    // Down leaves nothing, whatever was restarted.
    let footprint = Footprint::of(dir);
    run_ok(&["down"], dir).await;
    footprint.assert_nothing_left();
    assert!(!dir.join("fleet-dev.sock").exists());
    let (ok, _, err) = run(&["restart", "controller"], dir).await;
    assert!(!ok && err.contains("no fleet-dev up runs"), "{err}");
    eprintln!("faults test took {:?}", started.elapsed());
}

/// A setting the daemons would refuse stops `up` before anything starts:
/// no directory, no boards, no processes. (Needs neither root nor
/// systemd: the daemons' own `check-config` decides.)
#[tokio::test]
async fn settings_the_daemons_refuse_stop_up_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, says) in [
        (
            vec!["up", "--detach", "--controller-set", "bogus=1"],
            vec![
                "nothing was started",
                "bogus=1",
                "fleet-controller refuses it (exit 64)",
                "unknown field `bogus`",
                "heartbeat_timeout_s",
            ],
        ),
        (
            vec!["up", "--controller-set", "heartbeat_timeout_s=soon"],
            vec!["heartbeat_timeout_s=soon", "invalid type"],
        ),
        (
            vec![
                "up",
                "--agent-set",
                "guard.cooldown_s=1",
                "--agent-set",
                "guard.bogus=2",
            ],
            vec![
                "--agent-set",
                "guard.bogus=2",
                "fleet-agent refuses it (exit 64)",
                "unknown field `bogus`",
            ],
        ),
        (
            vec!["up", "--detach", "--agent-set", "listen=\"0.0.0.0:1\""],
            vec!["sets listen of the agent itself"],
        ),
    ] {
        let dir = tmp.path().join("fleet");
        let (ok, _, err) = run(&args, &dir).await;
        assert!(!ok, "{args:?} was accepted");
        for s in says {
            assert!(err.contains(s), "{args:?}: {s:?} not in:\n{err}");
        }
        assert!(!dir.exists(), "{args:?} made {}", dir.display());
    }
}
