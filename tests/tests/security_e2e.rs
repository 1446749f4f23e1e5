//! End-to-end tests of who may do what, and of what an unauthenticated
//! peer can cost: real agents on systemd boards, a real controller, mTLS
//! with certificates and CRLs made for the run.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use fleet_proto::identity::Role;
use fleet_proto::tls::Expect;
use fleet_proto::v1::controller_client::ControllerClient;
use fleet_proto::v1::{self, agent_client::AgentClient};
use fleet_testbed::agent::{AgentHandle, AgentOptions};
use fleet_testbed::controller::{ControllerHandle, ControllerOptions};
use fleet_testbed::hwsim::{Fixture, HwSim, ThermalParams};
use fleet_testbed::pki::TestPki;
use fleet_testbed::poll::{wait_for, Check};
use fleet_testbed::testbed::{Board, Testbed};
use tonic::transport::Channel;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);

struct Rig {
    bed: Testbed,
    board: Board,
    pki: TestPki,
    agent: AgentHandle,
}

/// A simulated AGX Orin (nvpmodel, no jetson_clocks) with an agent on
/// 127.0.0.<n>.
async fn rig(name: &str, n: u8) -> Rig {
    let mut bed = Testbed::new(name).await;
    let board = bed.add_board(&format!("{name}-b")).await.expect("board");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let hw = HwSim::install(
        &board,
        Fixture::AgxOrinR36,
        ThermalParams::bounded(40.0, 60.0),
    )
    .expect("hwsim");
    let options = AgentOptions {
        hardware: Some(hw),
        ..AgentOptions::default()
    };
    let agent = AgentHandle::start_with(
        &board,
        &pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)),
        options,
    )
    .await
    .expect("agent");
    Rig {
        bed,
        board,
        pki,
        agent,
    }
}

impl Rig {
    async fn finish(self) {
        drop(self.agent);
        self.bed.shutdown().await.expect("teardown");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.agent.log).unwrap_or_default()
    }
}

async fn set_mode(
    c: &mut AgentClient<Channel>,
    mode: &str,
) -> Result<v1::SetPowerModeResponse, tonic::Status> {
    c.set_power_mode(v1::SetPowerModeRequest {
        mode: mode.into(),
        allow_reboot: true,
    })
    .await
    .map(|r| r.into_inner())
}

/// Power mode (which may reboot the board) and jetson_clocks are the
/// admin's, on the agent as on the controller; the controller, calling as
/// itself, keeps them; the agent logs who made every state-changing call.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_hardware_is_admin_only_and_callers_are_logged() {
    let f = rig("sec-hw", 71).await;
    let mut operator = f.agent.client(&f.pki, Role::Operator).await.unwrap();
    let err = set_mode(&mut operator, "MAXN").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("user/operator/"), "{err:?}");
    let err = operator
        .set_clocks(v1::SetClocksRequest { enabled: true })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // An operator still runs experiments.
    operator
        .set_autostart(v1::SetAutostartRequest {
            id: "nothing-here".into(),
            enabled: true,
        })
        .await
        .expect_err("no such experiment");

    // The controller and admins may; MODE_30W is the board's mode, so
    // nothing reboots.
    let controller = f.pki.controller().unwrap();
    let mut as_controller = f.agent.client_as(&controller).await.unwrap();
    set_mode(&mut as_controller, "MODE_30W").await.unwrap();
    let mut admin = f.agent.client(&f.pki, Role::Admin).await.unwrap();
    set_mode(&mut admin, "MODE_30W").await.unwrap();

    // Who did what, in the agent's log.
    let log = wait_for("the agent to log its callers", DEADLINE, || {
        let log = f.log();
        async move {
            let calls: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("state-changing call"))
                .collect();
            let seen = |who: &str, method: &str| {
                calls.iter().any(|l| l.contains(who) && l.contains(method))
            };
            Ok(
                if seen(
                    "caller=spiffe://testlab/controller",
                    "/fleet.v1.Agent/SetPowerMode",
                ) && seen(
                    "caller=spiffe://testlab/user/admin/",
                    "/fleet.v1.Agent/SetPowerMode",
                ) && seen(
                    "caller=spiffe://testlab/user/operator/",
                    "/fleet.v1.Agent/SetAutostart",
                ) {
                    Check::Ready(log)
                } else {
                    Check::not_yet(calls.join("\n"))
                },
            )
        }
    })
    .await
    .unwrap();
    // Refusals are logged with the caller too, and reads are not logged as changes.
    assert!(
        log.lines().any(|l| l.contains("refused")
            && l.contains("user/operator/")
            && l.contains("/fleet.v1.Agent/SetClocks")),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("state-changing call") && l.contains("GetNode")),
        "{log}"
    );
    f.finish().await;
}

/// Revocation reaches connections opened before it: after the CRL naming
/// an admin is loaded (SIGHUP), the admin's HTTP/2 connection already open
/// to the controller and to an agent is refused call by call, while
/// others keep working.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_loses_the_connections_it_already_has() {
    let mut f = rig("sec-crl", 72).await;
    // Both daemons start with an (empty) CRL configured.
    let crl = f.pki.revoke(&[]).unwrap();
    f.agent.set_tls_key("crl", &crl).unwrap();
    f.agent.restart(&f.board).await.unwrap();
    let ctl_dir = f.bed.dir().join("controller");
    let mut controller = ControllerHandle::start(
        &ctl_dir,
        &f.pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, 72)),
        &[&f.agent],
        &ControllerOptions::default(),
    )
    .await
    .unwrap();
    controller.set_tls_key("crl", &crl).unwrap();
    controller.restart().await.unwrap();

    let mallory = f.pki.user("mallory", Role::Admin).unwrap();
    let mut to_controller = controller.client_as(&mallory).await.unwrap();
    let mut to_agent = f.agent.client_as(&mallory).await.unwrap();
    let cordon = |c: &mut ControllerClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.cordon(v1::CordonRequest {
                node: "sec-crl-b".into(),
                reason: "test".into(),
            })
            .await
        }
    };
    cordon(&mut to_controller).await.unwrap();
    to_agent.stop_all(v1::BulkRequest {}).await.unwrap();

    f.pki.revoke(&[&mallory]).unwrap();
    controller.sighup().unwrap();
    f.agent.sighup().unwrap();

    // The same connections, refused once the daemons have the CRL.
    let err = wait_for(
        "the controller to refuse mallory's open connection",
        DEADLINE,
        || {
            let call = cordon(&mut to_controller);
            async move {
                Ok(match call.await {
                    Err(e) if e.code() == Code::Unauthenticated => Check::Ready(e),
                    other => Check::not_yet(format!("{other:?}")),
                })
            }
        },
    )
    .await
    .unwrap();
    assert!(
        err.message().contains("user/admin/mallory") && err.message().contains("revoked"),
        "{err:?}"
    );
    let err = to_controller
        .set_policy(v1::SetPolicyRequest {
            name: "coolest".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = wait_for(
        "the agent to refuse mallory's open connection",
        DEADLINE,
        || {
            let mut c = to_agent.clone();
            async move {
                Ok(match c.stop_all(v1::BulkRequest {}).await {
                    Err(e) if e.code() == Code::Unauthenticated => Check::Ready(e),
                    other => Check::not_yet(format!("{other:?}")),
                })
            }
        },
    )
    .await
    .unwrap();
    assert!(err.message().contains("revoked"), "{err:?}");
    // Reads too: the certificate no longer authenticates anything.
    let err = to_agent.get_node(v1::GetNodeRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A new connection is refused at its handshake; others keep working.
    let fresh = match controller.client_as(&mallory).await {
        Ok(mut c) => c.list_nodes(v1::ListNodesRequest::default()).await.err(),
        Err(e) => Some(tonic::Status::unavailable(e.to_string())),
    };
    assert!(fresh.is_some(), "a new connection of a revoked certificate");
    let mut admin = controller.client(&f.pki, Role::Admin).await.unwrap();
    admin
        .uncordon(v1::UncordonRequest {
            node: "sec-crl-b".into(),
        })
        .await
        .unwrap();
    let mut agent_admin = f.agent.client(&f.pki, Role::Admin).await.unwrap();
    agent_admin.stop_all(v1::BulkRequest {}).await.unwrap();
    drop(controller);
    f.finish().await;
}

/// `fleetctl pki revoke`'s steps on daemons started without a CRL: copy
/// the CRL, add `crl` under `[tls]`, SIGHUP. The daemons read `[tls]` of
/// their config again, so the revoked certificate is refused, and say so.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_a_crl_added_to_the_config() {
    let f = rig("sec-hup", 73).await;
    let controller = ControllerHandle::start(
        &f.bed.dir().join("controller"),
        &f.pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, 73)),
        &[&f.agent],
        &ControllerOptions::default(),
    )
    .await
    .unwrap();
    let trudy = f.pki.user("trudy", Role::Operator).unwrap();
    let list_nodes = |certs: fleet_testbed::pki::CertFiles, addr| async move {
        let channel = certs.client()?.connect(addr, Expect::Controller).await?;
        ControllerClient::new(channel)
            .list_nodes(v1::ListNodesRequest::default())
            .await?;
        anyhow::Ok(())
    };
    let get_node = |certs: fleet_testbed::pki::CertFiles, addr, node: String| async move {
        let channel = certs.client()?.connect(addr, Expect::Agent(node)).await?;
        AgentClient::new(channel)
            .get_node(v1::GetNodeRequest {})
            .await?;
        anyhow::Ok(())
    };
    list_nodes(trudy.clone(), controller.addr).await.unwrap();
    get_node(trudy.clone(), f.agent.addr, f.agent.node.clone())
        .await
        .unwrap();

    let crl = f.pki.revoke(&[&trudy]).unwrap();
    f.agent.set_tls_key("crl", &crl).unwrap();
    controller.set_tls_key("crl", &crl).unwrap();
    f.agent.sighup().unwrap();
    controller.sighup().unwrap();

    wait_for(
        "both daemons to refuse the revoked certificate",
        DEADLINE,
        || {
            let (trudy, c, a, node) = (
                trudy.clone(),
                controller.addr,
                f.agent.addr,
                f.agent.node.clone(),
            );
            async move {
                let to_controller = list_nodes(trudy.clone(), c).await;
                let to_agent = get_node(trudy, a, node).await;
                Ok(if to_controller.is_err() && to_agent.is_err() {
                    Check::Ready(())
                } else {
                    Check::not_yet(format!(
                        "controller: {to_controller:?}, agent: {to_agent:?}"
                    ))
                })
            }
        },
    )
    .await
    .unwrap();
    // Everyone else keeps working.
    list_nodes(f.pki.user("ursula", Role::Viewer).unwrap(), controller.addr)
        .await
        .unwrap();
    // The logs say what was read, CRL included.
    let wanted = format!("crl={}", crl.display());
    for log in [&f.agent.log, &controller.log] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.lines()
                .any(|l| l.contains("reloaded TLS from [tls] of") && l.contains(&wanted)),
            "{}: {text}",
            log.display()
        );
    }
    drop(controller);
    f.finish().await;
}

/// Opens `n` TCP connections to `addr` that never start a TLS handshake.
async fn idle_sockets(addr: std::net::SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    out
}

/// 256 idle TCP connections (no TLS handshake) do not hold up an
/// authenticated client, on the controller or on an agent: its call is
/// answered within a few seconds while they stay open (it waited out the
/// idle sockets' handshake timeout, about 10 s, before).
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_stall_authenticated_clients() {
    const IDLE: usize = 256;
    const BOUND: Duration = Duration::from_secs(3);
    let f = rig("sec-idle", 74).await;
    let controller = ControllerHandle::start(
        &f.bed.dir().join("controller"),
        &f.pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, 74)),
        &[&f.agent],
        &ControllerOptions::default(),
    )
    .await
    .unwrap();
    let viewer = f.pki.user("patient", Role::Viewer).unwrap();

    let idle = idle_sockets(controller.addr, IDLE).await;
    let started = tokio::time::Instant::now();
    let mut c = tokio::time::timeout(DEADLINE, controller.client_as(&viewer))
        .await
        .expect("connect in time")
        .unwrap();
    c.list_nodes(v1::ListNodesRequest::default()).await.unwrap();
    let took = started.elapsed();
    eprintln!("controller: a call beside {IDLE} idle sockets took {took:?}");
    assert!(took < BOUND, "the controller took {took:?}");
    drop(idle);

    let idle = idle_sockets(f.agent.addr, IDLE).await;
    let started = tokio::time::Instant::now();
    let mut a = tokio::time::timeout(DEADLINE, f.agent.client_as(&viewer))
        .await
        .expect("connect in time")
        .unwrap();
    a.get_node(v1::GetNodeRequest {}).await.unwrap();
    let took = started.elapsed();
    eprintln!("agent: a call beside {IDLE} idle sockets took {took:?}");
    assert!(took < BOUND, "the agent took {took:?}");
    drop(idle);
    drop(controller);
    f.finish().await;
}

/// SetClocks on a board without jetson_clocks is a precondition the admin
/// can fix, said without the board's paths.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clocks_without_jetson_clocks_is_a_failed_precondition() {
    let f = rig("sec-clk", 75).await;
    let mut admin = f.agent.client(&f.pki, Role::Admin).await.unwrap();
    let node = admin
        .get_node(v1::GetNodeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!node.jetson_clocks, "the simulated board has none");
    for enabled in [true, false] {
        let err = admin
            .set_clocks(v1::SetClocksRequest { enabled })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("jetson_clocks is not installed")
                && err.message().contains("[hardware] jetson_clocks"),
            "{err:?}"
        );
        assert!(
            !err.message().contains('/'),
            "no path of the board: {err:?}"
        );
    }
    f.finish().await;
}

/// What `fleetctl` printed and its exit code.
struct Run {
    code: i32,
    stderr: String,
}

/// `fleetctl nodes` (controller) or `fleetctl ps` (agent) with these
/// files, nothing of the caller's environment or config.
async fn fleetctl(
    home: &std::path::Path,
    target: (&str, std::net::SocketAddr),
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Run {
    std::fs::create_dir_all(home).unwrap();
    let mut cmd = tokio::process::Command::new(fleet_testbed::agent::workspace_bin("fleetctl"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEET_") {
            cmd.env_remove(&k);
        }
    }
    let (flag, command) = match target.0 {
        "controller" => ("--controller", "nodes"),
        _ => ("--agent", "ps"),
    };
    let out = cmd
        .arg(flag)
        .arg(target.1.to_string())
        .arg("--ca")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(command)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().expect("exited"),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// fleetctl with a revoked or an expired certificate says which
/// certificate was refused and why, and exits 4 (refused), against the
/// controller and against an agent.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_says_which_certificate_was_refused_and_exits_4() {
    let mut f = rig("sec-cli", 76).await;
    let crl = f.pki.revoke(&[]).unwrap();
    f.agent.set_tls_key("crl", &crl).unwrap();
    f.agent.restart(&f.board).await.unwrap();
    let mut controller = ControllerHandle::start(
        &f.bed.dir().join("controller"),
        &f.pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, 76)),
        &[&f.agent],
        &ControllerOptions::default(),
    )
    .await
    .unwrap();
    controller.set_tls_key("crl", &crl).unwrap();
    controller.restart().await.unwrap();
    let home = f.bed.dir().join("home");

    let revoked = f.pki.user("rita", Role::Operator).unwrap();
    let (expired_cert, expired_key) = fleet_testbed::tlsprobe::issue_expired(
        &f.pki.ca,
        "spiffe://testlab/user/operator/ed",
        &f.bed.dir().join("ed"),
    )
    .unwrap();
    let ok = fleetctl(
        &home,
        ("controller", controller.addr),
        &f.pki.ca_path,
        &revoked.cert,
        &revoked.key,
    )
    .await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    f.pki.revoke(&[&revoked]).unwrap();
    controller.sighup().unwrap();
    f.agent.sighup().unwrap();

    for target in [("controller", controller.addr), ("agent", f.agent.addr)] {
        let run = wait_for("fleetctl to be refused", DEADLINE, || {
            let (home, revoked, ca) = (home.clone(), revoked.clone(), f.pki.ca_path.clone());
            async move {
                let run = fleetctl(&home, target, &ca, &revoked.cert, &revoked.key).await;
                Ok(if run.code != 0 {
                    Check::Ready(run)
                } else {
                    Check::not_yet("still accepted")
                })
            }
        })
        .await
        .unwrap();
        eprintln!("{target:?}: exit {}: {}", run.code, run.stderr.trim());
        assert_eq!(run.code, 4, "{target:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(&revoked.cert.display().to_string())
                && run.stderr.contains("revoked"),
            "{target:?}: {}",
            run.stderr
        );

        let run = fleetctl(&home, target, &f.pki.ca_path, &expired_cert, &expired_key).await;
        eprintln!("{target:?}: exit {}: {}", run.code, run.stderr.trim());
        assert_eq!(run.code, 4, "{target:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(&expired_cert.display().to_string())
                && run.stderr.contains("expired"),
            "{target:?}: {}",
            run.stderr
        );
    }
    drop(controller);
    f.finish().await;
}

/// A gRPC codec for calls by method name: the request is the bytes given
/// (empty: every field at its default), the answer is not read.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;

    #[derive(Debug, Clone, Copy, Default)]
    pub struct RawCodec;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = ();
        type Encoder = RawCodec;
        type Decoder = RawCodec;
        fn encoder(&mut self) -> RawCodec {
            RawCodec
        }
        fn decoder(&mut self) -> RawCodec {
            RawCodec
        }
    }

    impl Encoder for RawCodec {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for RawCodec {
        type Item = ();
        type Error = Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
            buf.advance(buf.remaining());
            Ok(Some(()))
        }
    }
}

/// Calls `/fleet.v1.<service>/<rpc>` with an empty request and returns how
/// the server answered: `Ok` once a unary answer or a stream's headers say
/// OK. Every id and name is empty, so the handlers refuse them and nothing
/// changes: the bulk calls find no experiment on the board, and SetPolicy
/// sets the policy it has.
async fn call_by_name(channel: Channel, service: &str, rpc: &str) -> Result<(), tonic::Status> {
    let path = format!("/fleet.v1.{service}/{rpc}");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).expect("a path");
    // A unary answer is one message on the same HTTP/2 exchange as a
    // stream's, so one kind of call serves both.
    let call = grpc.server_streaming(tonic::Request::new(Vec::new()), path, raw::RawCodec);
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(answer) => answer.map(drop),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 10 s")),
    }
}

/// Every RPC of both services, as every kind of caller, against a real
/// agent and a real controller, compared cell by cell with the tables of
/// docs/security.md (an RPC without a row fails the test).
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authz_table_e2e() {
    use fleet_testbed::authz_table::{self, Caller, Verdict};
    use fleet_testbed::pki::CertFiles;
    use fleet_testbed::tlsprobe::Probe;

    let began = tokio::time::Instant::now();
    let tables = [
        ("Agent", authz_table::load("Agent").unwrap()),
        ("Controller", authz_table::load("Controller").unwrap()),
    ];
    let f = rig("sec-table", 77).await;
    let controller = ControllerHandle::start(
        &f.bed.dir().join("controller"),
        &f.pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, 77)),
        &[&f.agent],
        &ControllerOptions::default(),
    )
    .await
    .unwrap();

    // One certificate per caller that gets past the handshake; a revoked
    // admin and a stranger's admin that must not.
    let mut callers: Vec<(Caller, CertFiles)> = vec![
        (Caller::Viewer, f.pki.user("vera", Role::Viewer).unwrap()),
        (
            Caller::Operator,
            f.pki.user("otto", Role::Operator).unwrap(),
        ),
        (Caller::Admin, f.pki.user("ada", Role::Admin).unwrap()),
        (Caller::OtherAgent, f.pki.agent("elsewhere").unwrap()),
        (Caller::Controller, f.pki.controller().unwrap()),
    ];
    let revoked = f.pki.user("rita", Role::Admin).unwrap();
    let foreign = TestPki::new(&f.bed.dir().join("foreign")).unwrap();
    let stranger = foreign.user("mallory", Role::Admin).unwrap();
    let crl = f.pki.revoke(&[&revoked]).unwrap();
    f.agent.set_tls_key("crl", &crl).unwrap();
    controller.set_tls_key("crl", &crl).unwrap();
    f.agent.sighup().unwrap();
    controller.sighup().unwrap();

    let servers = [
        ("Agent", f.agent.addr, Expect::Agent(f.agent.node.clone())),
        ("Controller", controller.addr, Expect::Controller),
    ];
    let mut wrong = Vec::new();
    let mut cells = 0;
    for ((service, table), (_, addr, expect)) in tables.iter().zip(&servers) {
        // The callers refused at the handshake: every RPC of the service
        // at once. The revoked one is refused once the SIGHUP is read.
        let probe = Probe::new(*addr, &f.pki.ca_path);
        let revoked_refused = wait_for("the CRL to be loaded", DEADLINE, || {
            let probe = Probe::new(*addr, &f.pki.ca_path);
            let revoked = revoked.clone();
            async move {
                Ok(match probe.with(&revoked.cert, &revoked.key).await {
                    Err(e) => Check::Ready(e),
                    Ok(()) => Check::not_yet("the revoked certificate still shakes hands"),
                })
            }
        })
        .await
        .is_ok();
        // The probe shakes hands with a fleet certificate, so its
        // refusals below are the server's verdicts on the others.
        let (_, fellow) = &callers[0];
        probe
            .with(&fellow.cert, &fellow.key)
            .await
            .unwrap_or_else(|e| panic!("{service} refused a viewer's handshake: {e}"));
        let handshakes = [
            (
                Caller::NoCertificate,
                probe.without_certificate().await.is_err(),
            ),
            (
                Caller::OtherCa,
                probe.with(&stranger.cert, &stranger.key).await.is_err(),
            ),
            (Caller::RevokedUser, revoked_refused),
        ];
        for (caller, refused) in handshakes {
            for (rpc, row) in table {
                cells += 1;
                let want = row[&caller];
                let got = if refused {
                    Verdict::Handshake
                } else {
                    Verdict::Allowed
                };
                if got != want {
                    wrong.push(format!(
                        "{service}/{rpc} as {}: the table says {want:?}, the handshake {}",
                        caller.heading(),
                        if refused { "failed" } else { "succeeded" }
                    ));
                }
            }
        }

        // The others: one connection each, every RPC on it.
        for (caller, certs) in &mut callers {
            let channel = certs
                .client()
                .unwrap()
                .connect(*addr, expect.clone())
                .await
                .unwrap_or_else(|e| panic!("{service} as {}: {e:#}", caller.heading()));
            for (rpc, row) in table {
                cells += 1;
                let want = row[&*caller];
                let answer = call_by_name(channel.clone(), service, rpc).await;
                // A handler's answer, whatever it is, means the call was
                // authorized; a lost connection or no answer decides nothing.
                let got = match &answer {
                    Ok(()) => Some(Verdict::Allowed),
                    Err(s) => match s.code() {
                        Code::PermissionDenied => Some(Verdict::Denied),
                        Code::Unauthenticated
                        | Code::Unavailable
                        | Code::Unknown
                        | Code::DeadlineExceeded
                        | Code::Cancelled => None,
                        _ => Some(Verdict::Allowed),
                    },
                };
                if got != Some(want) {
                    wrong.push(format!(
                        "{service}/{rpc} as {}: the table says {want:?}, the server answered {}",
                        caller.heading(),
                        match &answer {
                            Ok(()) => "OK".to_owned(),
                            Err(s) => format!("{:?}: {}", s.code(), s.message()),
                        }
                    ));
                }
            }
        }
    }
    eprintln!(
        "checked {cells} cells of docs/security.md's tables in {:?}",
        began.elapsed()
    );
    assert!(
        wrong.is_empty(),
        "{} cells disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(cells, 8 * (tables[0].1.len() + tables[1].1.len()));
    drop(controller);
    f.finish().await;
}
