//! Enrolment end to end: a controller that knows no node, a board whose
//! agent is told the controller's address, and nothing else. The board
//! joins under the name its certificate gives, becomes ready and runs what
//! the controller places; it joins again on every start, also when the
//! controller comes up after it; a certificate naming another node keeps
//! the agent from starting at all.
//!
//! Real systemd managers, a real agent on simulated Jetson hardware, a real
//! controller process, mTLS everywhere.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use fleet_proto::identity::Role;
use fleet_proto::v1::{self, controller_client::ControllerClient, ExperimentPhase};
use fleet_testbed::agent::{agent_bin, AgentHandle, AgentOptions};
use fleet_testbed::controller::{ControllerHandle, ControllerOptions};
use fleet_testbed::hwsim::{Fixture, HwSim, ThermalParams};
use fleet_testbed::pki::TestPki;
use fleet_testbed::poll::{wait_for, Check};
use fleet_testbed::testbed::{Board, Testbed};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(60);

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, host))
}

/// A controller with no `[[nodes]]`: every board it learns of joins.
async fn empty_controller(bed: &Testbed, pki: &TestPki, net: u8) -> ControllerHandle {
    ControllerHandle::start(
        &bed.dir().join("controller"),
        pki,
        ip(net, 100),
        &[],
        &ControllerOptions::default(),
    )
    .await
    .expect("controller")
}

fn board_options(board: &Board, extra_env: Vec<(String, std::ffi::OsString)>) -> AgentOptions {
    let sim = HwSim::install(
        board,
        Fixture::AgxOrinR36,
        ThermalParams::bounded(40.0, 60.0),
    )
    .expect("hwsim");
    AgentOptions {
        hardware: Some(sim),
        sampling_ms: Some(200),
        extra_env,
        ..Default::default()
    }
}

async fn nodes(admin: &ControllerClient<Channel>) -> anyhow::Result<Vec<v1::Node>> {
    Ok(admin
        .clone()
        .list_nodes(v1::ListNodesRequest::default())
        .await?
        .into_inner()
        .nodes)
}

/// Waits until the controller lists exactly one node, `name` at `address`,
/// joined, connected and with telemetry (ready for work).
async fn wait_joined_and_ready(
    admin: &ControllerClient<Channel>,
    name: &str,
    address: &str,
) -> v1::Node {
    wait_for(
        format!("node {name} joined at {address} and ready"),
        DEADLINE,
        || async move {
            let nodes = match nodes(admin).await {
                Ok(n) => n,
                Err(e) => return Ok(Check::not_yet(format!("ListNodes: {e:#}"))),
            };
            let seen: Vec<_> = nodes
                .iter()
                .map(|n| {
                    (
                        n.name.clone(),
                        n.address.clone(),
                        n.source(),
                        n.connection(),
                        n.telemetry.is_some(),
                    )
                })
                .collect();
            Ok(match nodes.as_slice() {
                [n] if n.name == name
                    && n.address == address
                    && n.source() == v1::NodeSource::Joined
                    && n.connection() == v1::NodeConnection::Connected
                    && n.telemetry.is_some() =>
                {
                    Check::Ready(n.clone())
                }
                _ => Check::not_yet(format!("{seen:?}")),
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn wait_log(agent: &AgentHandle, what: &str, needle: &str) -> String {
    wait_for(what, DEADLINE, || async move {
        let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
        Ok(match log.lines().find(|l| l.contains(needle)) {
            Some(line) => Check::Ready(line.to_owned()),
            None => Check::not_yet(format!(
                "no line with {needle:?}; log ends: {:?}",
                log.lines().rev().take(3).collect::<Vec<_>>()
            )),
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#} (agent log {})", agent.log.display()))
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_joins_a_controller_that_knows_no_node_and_runs_its_experiment() {
    let mut bed = Testbed::new("enrol").await;
    let board = bed.add_board("enrol-a").await.expect("board");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let ctl = empty_controller(&bed, &pki, 40).await;
    let admin = ctl.client(&pki, Role::Admin).await.expect("admin");
    assert!(nodes(&admin).await.unwrap().is_empty());

    // What the installer's --controller writes to agent.env, which the unit
    // loads.
    let env = vec![("FLEET_CONTROLLER".into(), ctl.addr.to_string().into())];
    let mut agent = AgentHandle::start_with(&board, &pki, ip(40, 1), board_options(&board, env))
        .await
        .expect("agent");
    // The certificate names the board: spiffe://testlab/agent/enrol-a.
    let node = wait_joined_and_ready(&admin, "enrol-a", &agent.addr.to_string()).await;
    assert_eq!(node.info.as_ref().map(|i| i.node.as_str()), Some("enrol-a"));
    let joined = wait_log(&agent, "the agent to log its join", "joined the controller").await;
    assert!(joined.contains("enrol-a"), "{joined}");

    // The controller places an experiment there, and it runs.
    let spec = v1::ExperimentSpec {
        id: "enrolled".into(),
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
    };
    admin
        .clone()
        .submit(v1::SubmitRequest {
            spec: Some(spec),
            dry_run: false,
        })
        .await
        .expect("submit");
    wait_for("the experiment running on enrol-a", DEADLINE, || {
        let mut c = admin.clone();
        async move {
            let e = c
                .get(v1::GetRequest {
                    id: "enrolled".into(),
                })
                .await?
                .into_inner();
            Ok(
                if e.phase() == ExperimentPhase::Running && e.node == "enrol-a" {
                    Check::Ready(())
                } else {
                    Check::not_yet(format!("{:?} on {:?}: {}", e.phase(), e.node, e.reason))
                },
            )
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let unit = board
        .unit_property("brain-experiment@enrolled.service", "ActiveState")
        .await
        .expect("unit");
    assert_eq!(unit, "active");

    // The agent joins again on every start; here it comes back on another
    // port and the controller follows it there. The experiment never stopped.
    agent.restart(&board).await.expect("agent restart");
    wait_joined_and_ready(&admin, "enrol-a", &agent.addr.to_string()).await;
    let e = admin
        .clone()
        .get(v1::GetRequest {
            id: "enrolled".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (e.phase(), e.node.as_str()),
        (ExperimentPhase::Running, "enrol-a")
    );

    drop(ctl);
    drop(agent);
    bed.shutdown().await.expect("teardown");
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_while_the_controller_is_down_succeeds_once_it_starts() {
    let mut bed = Testbed::new("enrol-down").await;
    let board = bed.add_board("enrol-b").await.expect("board");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    // The controller's address, kept across its restarts; then it goes down.
    let mut ctl = empty_controller(&bed, &pki, 41).await;
    ctl.keep_address().expect("keep the address");
    ctl.kill9().await.expect("controller down");

    // An agent configured with no controller joins none (today's behaviour
    // for a board the controller's config names).
    let mut agent =
        AgentHandle::start_with(&board, &pki, ip(41, 1), board_options(&board, Vec::new()))
            .await
            .expect("agent");
    wait_log(&agent, "the agent to say it joins none", "joining none").await;

    // The config key this time, with a short retry cap.
    let mut config = std::fs::read_to_string(&agent.config).unwrap();
    config.push_str(&format!(
        "\n[controller]\naddress = \"{}\"\nretry_max_s = 2\n",
        ctl.addr
    ));
    std::fs::write(&agent.config, config).unwrap();
    agent.restart(&board).await.expect("agent restart");
    // It serves while the controller is down, and its join fails with the
    // cause in the log.
    let failed = wait_log(
        &agent,
        "a failed join in the agent's log",
        "cannot reach the controller at",
    )
    .await;
    assert!(failed.contains("retrying"), "{failed}");
    let mut viewer = agent
        .client(&pki, Role::Viewer)
        .await
        .expect("agent serves");
    viewer
        .get_node(v1::GetNodeRequest {})
        .await
        .expect("GetNode while the controller is down");

    // The controller comes up; the next attempt joins.
    ctl.restart().await.expect("controller up");
    let admin = ctl.client(&pki, Role::Admin).await.expect("admin");
    wait_joined_and_ready(&admin, "enrol-b", &agent.addr.to_string()).await;
    wait_log(&agent, "the agent to log its join", "joined the controller").await;

    drop(ctl);
    drop(agent);
    bed.shutdown().await.expect("teardown");
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_certificate_names_another_node_does_not_start() {
    let mut bed = Testbed::new("enrol-wrong").await;
    let board = bed.add_board("enrol-c").await.expect("board");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let ctl = empty_controller(&bed, &pki, 42).await;
    let admin = ctl.client(&pki, Role::Admin).await.expect("admin");

    // The certificate names enrol-x; the config says enrol-c.
    let certs = pki.agent("enrol-x").expect("cert");
    let state_dir = board.dir().join("agent");
    let config = board.dir().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node = \"enrol-c\"\nlisten = \"{listen}:0\"\nsystemd = \"user\"\nstate_dir = {state:?}\nunit_dir = {unit:?}\nruntime_unit_dir = {runtime:?}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n\n[controller]\naddress = \"{ctl}\"\n",
            listen = ip(42, 1),
            state = state_dir,
            unit = board.unit_dir(),
            runtime = board.runtime_unit_dir(),
            ca = certs.ca,
            cert = certs.cert,
            key = certs.key,
            ctl = ctl.addr,
        ),
    )
    .unwrap();
    let child = board
        .command(agent_bin())
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn fleet-agent");
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("the agent exits")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // EX_CONFIG, with the names and the fix.
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for needle in [
        "spiffe://testlab/agent/enrol-x",
        "\"enrol-c\"",
        "fleetctl pki issue agent enrol-c",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    // It never bound its listener, nor joined under either name.
    assert!(!state_dir.join("listen-addr").exists());
    assert!(nodes(&admin).await.unwrap().is_empty());

    drop(ctl);
    bed.shutdown().await.expect("teardown");
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_of_the_controllers_config_that_joins_keeps_its_configured_address() {
    let mut bed = Testbed::new("enrol-cfg").await;
    let board = bed.add_board("enrol-d").await.expect("board");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let mut agent =
        AgentHandle::start_with(&board, &pki, ip(43, 1), board_options(&board, Vec::new()))
            .await
            .expect("agent");
    // The controller's config lists the board where it listens.
    let ctl = ControllerHandle::start(
        &bed.dir().join("controller"),
        &pki,
        ip(43, 100),
        &[&agent],
        &ControllerOptions::default(),
    )
    .await
    .expect("controller");
    let admin = ctl.client(&pki, Role::Admin).await.expect("admin");
    let configured = agent.addr.to_string();

    // The agent is also told to join, announcing an address the controller
    // cannot reach it at (another interface, say). It keeps its port.
    let mut config = std::fs::read_to_string(&agent.config).unwrap();
    config = config.replace(
        &format!("listen = \"{}:0\"", ip(43, 1)),
        &format!("listen = \"{configured}\""),
    );
    config.push_str(&format!(
        "\n[controller]\naddress = \"{}\"\nadvertise = \"{}:7443\"\n",
        ctl.addr,
        ip(43, 9)
    ));
    std::fs::write(&agent.config, config).unwrap();
    agent.restart(&board).await.expect("agent restart");
    assert_eq!(agent.addr.to_string(), configured);
    wait_log(&agent, "the agent to log its join", "joined the controller").await;

    // The config is the administrator's word: the node stays where the
    // config says, and connected.
    let node = wait_for("the configured node connected", DEADLINE, || {
        let admin = &admin;
        async move {
            let nodes = nodes(admin).await?;
            Ok(match nodes.as_slice() {
                [n] if n.connection() == v1::NodeConnection::Connected && n.telemetry.is_some() => {
                    Check::Ready(n.clone())
                }
                _ => Check::not_yet(format!(
                    "{:?}",
                    nodes
                        .iter()
                        .map(|n| (n.address.clone(), n.connection()))
                        .collect::<Vec<_>>()
                )),
            })
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        (node.name.as_str(), node.address.as_str(), node.source()),
        ("enrol-d", configured.as_str(), v1::NodeSource::Config)
    );

    drop(ctl);
    drop(agent);
    bed.shutdown().await.expect("teardown");
}
