//! End-to-end: the agent's standard gRPC health service, and StartAll /
//! StopAll through `brain-experiment.target`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use fleet_proto::identity::Role;
use fleet_proto::v1::{self, ExperimentState};
use fleet_testbed::agent::AgentHandle;
use fleet_testbed::pki::TestPki;
use fleet_testbed::poll::{wait_for, Check};
use fleet_testbed::testbed::Testbed;

const DEADLINE: Duration = Duration::from_secs(30);

fn forever(id: &str, autostart: bool) -> v1::ExperimentSpec {
    v1::ExperimentSpec {
        id: id.into(),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "while true; do sleep 1; done".into(),
        ],
        lifecycle: Some(v1::Lifecycle {
            autostart,
            stop_timeout: "5s".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_bulk_start_stop() {
    let mut bed = Testbed::new("bulk").await;
    let board = bed.add_board("bulk-b").await.expect("board");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let agent = AgentHandle::start(&board, &pki, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 12)))
        .await
        .expect("agent");

    // Off-the-shelf gRPC health checking works, as any authenticated member.
    let viewer = pki.user("health-viewer", Role::Viewer).unwrap();
    let channel = viewer.connect_agent(agent.addr, &agent.node).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "fleet.v1.Agent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let mut c = agent.client(&pki, Role::Operator).await.unwrap();
    for spec in [forever("enabled", true), forever("plain", false)] {
        c.start_experiment(v1::StartExperimentRequest {
            spec: Some(spec),
            epoch: 0,
        })
        .await
        .unwrap();
    }
    let watcher = c.clone();
    let states = |want: &'static [(&'static str, ExperimentState)]| {
        let c = watcher.clone();
        async move {
            wait_for(format!("states {want:?}"), DEADLINE, || {
                let mut c = c.clone();
                async move {
                    let list = c
                        .list_experiments(v1::ListExperimentsRequest {})
                        .await?
                        .into_inner()
                        .experiments;
                    let now: Vec<(String, ExperimentState)> =
                        list.iter().map(|s| (s.id.clone(), s.state())).collect();
                    let ok = want
                        .iter()
                        .all(|(id, st)| now.iter().any(|(i, s)| i == id && s == st));
                    Ok(if ok {
                        Check::Ready(())
                    } else {
                        Check::not_yet(format!("{now:?}"))
                    })
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        }
    };
    states(&[
        ("enabled", ExperimentState::Running),
        ("plain", ExperimentState::Running),
    ])
    .await;

    let stopped = c.stop_all(v1::BulkRequest {}).await.unwrap().into_inner();
    assert_eq!(stopped.experiments.len(), 2);
    states(&[
        ("enabled", ExperimentState::Stopped),
        ("plain", ExperimentState::Stopped),
    ])
    .await;

    // StartAll starts what is enabled at boot, through the target.
    c.set_autostart(v1::SetAutostartRequest {
        id: "enabled".into(),
        enabled: true,
    })
    .await
    .unwrap();
    c.start_all(v1::BulkRequest {}).await.unwrap();
    states(&[
        ("enabled", ExperimentState::Running),
        ("plain", ExperimentState::Stopped),
    ])
    .await;

    drop(agent);
    bed.shutdown().await.expect("teardown");
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_runtime_ends_the_experiment_without_a_restart() {
    let mut bed = Testbed::new("runtime").await;
    let board = bed.add_board("runtime-b").await.expect("board");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let agent = AgentHandle::start(&board, &pki, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 13)))
        .await
        .expect("agent");
    let mut c = agent.client(&pki, Role::Admin).await.unwrap();
    let mut spec = forever("bounded", false);
    let lifecycle = spec.lifecycle.as_mut().unwrap();
    lifecycle.max_runtime = "1s".into();
    lifecycle.restart_delay = "200ms".into();
    c.start_experiment(v1::StartExperimentRequest {
        spec: Some(spec),
        epoch: 0,
    })
    .await
    .unwrap();
    let st = wait_for("bounded to time out", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let st = c
                .get_experiment(v1::ExperimentRef {
                    id: "bounded".into(),
                })
                .await?
                .into_inner();
            Ok(if st.state() == ExperimentState::Failed {
                Check::Ready(st)
            } else {
                Check::not_yet(format!("{:?} {}", st.state(), st.sub_state))
            })
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(st.failure(), v1::FailureReason::Timeout, "{st:?}");
    assert_eq!(st.restarts, 0, "{st:?}");
    assert_eq!(st.crashes_total, 0, "a timeout is not a crash: {st:?}");
    drop(agent);
    bed.shutdown().await.expect("teardown");
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_show_zones_power_and_experiments() {
    use fleet_testbed::agent::AgentOptions;
    use fleet_testbed::hwsim::{Fixture, HwSim, ThermalParams};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut bed = Testbed::new("metrics").await;
    let board = bed.add_board("metrics-b").await.expect("board");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let sim = HwSim::install(
        &board,
        Fixture::AgxOrinR36,
        ThermalParams::bounded(40.0, 60.0),
    )
    .expect("hwsim");
    sim.set_zone("cpu", 55.5).unwrap();
    // A free port on the board's address for the metrics listener.
    let ip = Ipv4Addr::new(127, 0, 0, 14);
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = std::net::SocketAddr::from((ip, port));
    let options = AgentOptions {
        hardware: Some(sim.clone()),
        sampling_ms: Some(200),
        metrics_listen: Some(metrics_addr),
        ..Default::default()
    };
    let agent = AgentHandle::start_with(&board, &pki, IpAddr::V4(ip), options)
        .await
        .expect("agent");
    let mut c = agent.client(&pki, Role::Admin).await.unwrap();
    c.start_experiment(v1::StartExperimentRequest {
        spec: Some(forever("scraped", false)),
        epoch: 0,
    })
    .await
    .unwrap();
    let text = wait_for(
        "metrics with the experiment running",
        DEADLINE,
        || async move {
            let Ok(mut conn) = tokio::net::TcpStream::connect(metrics_addr).await else {
                return Ok(Check::not_yet("no listener yet"));
            };
            conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await?;
            let mut body = String::new();
            conn.read_to_string(&mut body).await?;
            Ok(if body.contains("state=\"running\"} 1") {
                Check::Ready(body)
            } else {
                Check::not_yet(body)
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("text/plain; version=0.0.4"));
    assert!(
        text.contains("fleet_zone_temperature_celsius{node=\"metrics-b\",zone=\"cpu\"} 55.5"),
        "{text}"
    );
    assert!(
        text.contains("fleet_power_total_watts{node=\"metrics-b\"}"),
        "{text}"
    );
    assert!(
        text.contains("fleet_power_mode{node=\"metrics-b\",id=\"2\",mode=\"MODE_30W\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("fleet_thermal_state{node=\"metrics-b\"} 0"),
        "{text}"
    );
    drop(agent);
    bed.shutdown().await.expect("teardown");
}
