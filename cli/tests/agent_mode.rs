//! `fleetctl --agent` against a stub of `fleet.v1.Agent` behind real mTLS:
//! what goes on the wire, what is printed, and the exit code of each kind
//! of answer. The stub answers from a map of canned experiments; tests
//! against the real agent on real systemd belong to the testbed.

mod common;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use common::Home;
use fleet_proto::tls::{incoming, ServerTls, TlsFiles};
use fleet_proto::v1;
use fleet_proto::v1::agent_server::{Agent, AgentServer};
use futures_util::Stream;
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Canned experiments, and the last requests seen, for the test to check.
#[derive(Default)]
struct Board {
    experiments: BTreeMap<String, v1::ExperimentStatus>,
    last_start: Option<v1::StartExperimentRequest>,
    last_logs: Option<v1::StreamLogsRequest>,
    last_power: Option<v1::SetPowerModeRequest>,
}

#[derive(Clone, Default)]
struct Stub(Arc<Mutex<Board>>);

fn running(id: &str) -> v1::ExperimentStatus {
    v1::ExperimentStatus {
        id: id.to_owned(),
        unit: format!("brain-experiment@{id}.service"),
        state: v1::ExperimentState::Running as i32,
        active_state: "active".into(),
        sub_state: "running".into(),
        main_pid: 4242,
        memory_current_bytes: Some(3 * 1024 * 1024 * 1024 / 2),
        epoch: 1,
        ..Default::default()
    }
}

fn unknown(id: &str) -> Status {
    Status::not_found(format!("experiment {id} is not on this board"))
}

impl Stub {
    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.0.lock().unwrap()
    }

    fn get(&self, id: &str) -> Result<v1::ExperimentStatus, Status> {
        if id == "secret" {
            return Err(Status::permission_denied("a viewer may not look at secret"));
        }
        self.board()
            .experiments
            .get(id)
            .cloned()
            .ok_or_else(|| unknown(id))
    }
}

fn stream<T: Send + 'static>(items: Vec<T>) -> BoxStream<T> {
    Box::pin(futures_util::stream::iter(items.into_iter().map(Ok)))
}

#[tonic::async_trait]
impl Agent for Stub {
    async fn start_experiment(
        &self,
        req: Request<v1::StartExperimentRequest>,
    ) -> Result<Response<v1::ExperimentStatus>, Status> {
        let req = req.into_inner();
        let spec = req.spec.clone().unwrap_or_default();
        if spec.id == "hot" {
            return Err(Status::unavailable(
                "the board is too hot (86.0 °C): not starting hot",
            ));
        }
        let mut board = self.board();
        board.last_start = Some(req);
        let mut status = running(&spec.id);
        board.experiments.insert(spec.id.clone(), status.clone());
        status.state = v1::ExperimentState::Starting as i32;
        Ok(Response::new(status))
    }

    async fn stop_experiment(
        &self,
        req: Request<v1::StopExperimentRequest>,
    ) -> Result<Response<v1::ExperimentStatus>, Status> {
        let id = req.into_inner().id;
        let mut board = self.board();
        let e = board.experiments.get_mut(&id).ok_or_else(|| unknown(&id))?;
        e.state = v1::ExperimentState::Stopped as i32;
        e.main_pid = 0;
        Ok(Response::new(e.clone()))
    }

    async fn restart_experiment(
        &self,
        req: Request<v1::ExperimentRef>,
    ) -> Result<Response<v1::ExperimentStatus>, Status> {
        let id = req.into_inner().id;
        Ok(Response::new(self.get(&id)?))
    }

    async fn remove_experiment(
        &self,
        req: Request<v1::ExperimentRef>,
    ) -> Result<Response<v1::RemoveExperimentResponse>, Status> {
        let id = req.into_inner().id;
        let existed = self.board().experiments.remove(&id).is_some();
        Ok(Response::new(v1::RemoveExperimentResponse { id, existed }))
    }

    async fn set_autostart(
        &self,
        req: Request<v1::SetAutostartRequest>,
    ) -> Result<Response<v1::ExperimentStatus>, Status> {
        let req = req.into_inner();
        let mut board = self.board();
        let e = board
            .experiments
            .get_mut(&req.id)
            .ok_or_else(|| unknown(&req.id))?;
        e.autostart = req.enabled;
        Ok(Response::new(e.clone()))
    }

    async fn get_experiment(
        &self,
        req: Request<v1::ExperimentRef>,
    ) -> Result<Response<v1::ExperimentStatus>, Status> {
        Ok(Response::new(self.get(&req.into_inner().id)?))
    }

    async fn list_experiments(
        &self,
        _: Request<v1::ListExperimentsRequest>,
    ) -> Result<Response<v1::ListExperimentsResponse>, Status> {
        Ok(Response::new(v1::ListExperimentsResponse {
            experiments: self.board().experiments.values().cloned().collect(),
        }))
    }

    type StreamLogsStream = BoxStream<v1::LogLine>;

    async fn stream_logs(
        &self,
        req: Request<v1::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let req = req.into_inner();
        self.get(&req.id)?;
        self.board().last_logs = Some(req);
        let line = |n: i64, message: &str, priority: u32| v1::LogLine {
            timestamp_unix_us: 1_748_779_402_000_000 + n * 1_000_000,
            message: message.to_owned(),
            priority,
            pid: 4242,
            cursor: format!("c{n}"),
        };
        Ok(Response::new(stream(vec![
            line(0, "loading model", 6),
            line(1, "step 1 loss 2.31", 6),
            line(2, "CUDA out of memory, retrying", 3),
        ])))
    }

    type WatchExperimentsStream = BoxStream<v1::ExperimentEvent>;

    async fn watch_experiments(
        &self,
        req: Request<v1::WatchExperimentsRequest>,
    ) -> Result<Response<Self::WatchExperimentsStream>, Status> {
        let id = req.into_inner().id;
        let events: Vec<v1::ExperimentEvent> = self
            .board()
            .experiments
            .values()
            .filter(|e| id.is_empty() || e.id == id)
            .map(|e| v1::ExperimentEvent {
                status: Some(e.clone()),
                change: "running".into(),
                timestamp_unix_us: 1_748_779_402_000_000,
            })
            .collect();
        Ok(Response::new(stream(events)))
    }

    async fn start_all(
        &self,
        _: Request<v1::BulkRequest>,
    ) -> Result<Response<v1::BulkResponse>, Status> {
        Ok(Response::new(v1::BulkResponse {
            experiments: Vec::new(),
        }))
    }

    async fn stop_all(
        &self,
        _: Request<v1::BulkRequest>,
    ) -> Result<Response<v1::BulkResponse>, Status> {
        Err(Status::permission_denied(
            "operators may not stop every experiment",
        ))
    }

    async fn get_node(
        &self,
        _: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::NodeInfo>, Status> {
        let maxn = v1::PowerMode {
            id: 0,
            name: "MAXN".into(),
        };
        Ok(Response::new(v1::NodeInfo {
            node: "jetson-01".into(),
            model: "NVIDIA Jetson AGX Orin Developer Kit".into(),
            l4t_release: "R36.4.3".into(),
            cpu_cores: 12,
            memory_total_bytes: 64 * 1024 * 1024 * 1024,
            power_modes: vec![maxn.clone()],
            current_power_mode: Some(maxn),
            default_power_mode: Some(0),
            gpu: true,
            nvpmodel: true,
            jetson_clocks: true,
            agent_version: "0.1.0".into(),
            zones: vec!["cpu-thermal".into()],
            warn_c: 75.0,
            critical_c: 85.0,
        }))
    }

    async fn set_power_mode(
        &self,
        req: Request<v1::SetPowerModeRequest>,
    ) -> Result<Response<v1::SetPowerModeResponse>, Status> {
        let req = req.into_inner();
        self.board().last_power = Some(req.clone());
        if !req.allow_reboot {
            return Err(Status::failed_precondition(
                "switching to MODE_30W needs a reboot: pass allow_reboot",
            ));
        }
        Ok(Response::new(v1::SetPowerModeResponse {
            mode: Some(v1::PowerMode {
                id: 2,
                name: req.mode,
            }),
            reboot_required: true,
            changed: true,
        }))
    }

    async fn set_clocks(
        &self,
        req: Request<v1::SetClocksRequest>,
    ) -> Result<Response<v1::SetClocksResponse>, Status> {
        Ok(Response::new(v1::SetClocksResponse {
            enabled: req.into_inner().enabled,
        }))
    }

    type WatchNodeStream = BoxStream<v1::NodeUpdate>;

    async fn watch_node(
        &self,
        _: Request<v1::WatchNodeRequest>,
    ) -> Result<Response<Self::WatchNodeStream>, Status> {
        let sample = v1::TelemetrySample {
            timestamp_unix_us: 1_748_779_402_000_000,
            thermal_state: v1::ThermalState::Warn as i32,
            hottest_c: Some(78.5),
            hottest_zone: "cpu-thermal".into(),
            zones: vec![v1::ZoneReading {
                name: "cpu-thermal".into(),
                celsius: Some(78.5),
                offline: false,
            }],
            accepting: false,
            ..Default::default()
        };
        Ok(Response::new(stream(vec![v1::NodeUpdate {
            update: Some(v1::node_update::Update::Sample(sample)),
        }])))
    }
}

/// A PKI, the stub agent serving on 127.0.0.1, and a home to run fleetctl in.
struct Lab {
    home: Home,
    stub: Stub,
    addr: String,
    _runtime: tokio::runtime::Runtime,
}

impl Lab {
    fn start() -> Self {
        let home = Home::new();
        home.init_pki(&["agent", "jetson-01"]);
        let tls = ServerTls::from_files(TlsFiles::new(
            home.path("pki/ca.pem"),
            home.path("pki/agent-jetson-01.pem"),
            home.path("pki/agent-jetson-01.key"),
        ))
        .unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let stub = Stub::default();
        let service = AgentServer::new(stub.clone());
        let addr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let conns = incoming(listener, tls);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(conns),
            );
            addr
        });
        // fleetctl finds everything through its config file.
        home.write_context("agent", &addr);
        Lab {
            home,
            stub,
            addr,
            _runtime: runtime,
        }
    }

    fn run(&self, args: &[&str]) -> common::Run {
        self.home.run(args)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let run = self.run(&all).expect_code(0);
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
    }

    fn seed(&self, id: &str) {
        self.stub
            .board()
            .experiments
            .insert(id.to_owned(), running(id));
    }
}

#[test]
fn submit_sends_the_spec_with_epoch_0_and_waits_for_it_to_run() {
    let lab = Lab::start();
    lab.home.write(
        "exp.toml",
        "id = \"amnesiac-001\"\ncommand = [\"/usr/bin/python3\", \"run.py\"]\n[resources]\nmemory_max = \"8G\"\n",
    );
    let run = lab.run(&["submit", "exp.toml", "--wait"]).expect_code(0);
    assert!(
        run.stdout
            .starts_with("started amnesiac-001 from exp.toml: starting (epoch 1)\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("amnesiac-001 is running"),
        "{}",
        run.stdout
    );
    let sent = lab.stub.board().last_start.clone().unwrap();
    assert_eq!(sent.epoch, 0);
    let spec = sent.spec.unwrap();
    assert_eq!(spec.command, vec!["/usr/bin/python3", "run.py"]);
    assert_eq!(spec.resources.unwrap().memory_max, "8G");

    // Without an id, fleetctl names the experiment after the file.
    lab.home
        .write("train-llama.toml", "command = [\"/bin/true\"]\n");
    let v = lab.json(&["submit", "train-llama.toml"]);
    let id = v["submitted"][0]["status"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("train-llama-"), "{id}");
    assert_eq!(v["submitted"][0]["spec"]["id"], id.as_str());

    // A board that refuses for heat: exit 4 with its message.
    lab.home
        .write("hot.toml", "id = \"hot\"\ncommand = [\"/bin/true\"]\n");
    let run = lab.run(&["submit", "hot.toml"]).expect_code(4);
    assert_eq!(
        run.stderr.trim_end(),
        "fleetctl: submit hot.toml: the board is too hot (86.0 °C): not starting hot"
    );
}

#[test]
fn ps_and_status_show_the_boards_experiments() {
    let lab = Lab::start();
    lab.seed("b-run");
    lab.seed("a-run");
    lab.stub.board().experiments.get_mut("b-run").unwrap().state =
        v1::ExperimentState::Failed as i32;
    let run = lab.run(&["ps"]).expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("ID     STATE"), "{}", run.stdout);
    assert!(
        lines[1].starts_with("a-run  running  4242"),
        "{}",
        run.stdout
    );
    assert!(lines[1].contains("1.5 GiB"), "{}", run.stdout);
    assert!(lines[2].starts_with("b-run  failed"), "{}", run.stdout);
    assert!(!run.stdout.contains('\x1b'), "no colours off a terminal");

    let v = lab.json(&["list", "--state", "failed"]);
    let ids: Vec<&str> = v["experiments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["b-run"]);

    let run = lab.run(&["status", "a-run"]).expect_code(0);
    assert!(
        run.stdout
            .contains("state:      running (systemd: active/running)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("memory:     1.5 GiB (peak unknown)"),
        "{}",
        run.stdout
    );
    let v = lab.json(&["status", "a-run"]);
    assert_eq!(v["state"], "running");
    assert_eq!(v["memory_current_bytes"], 3u64 * 1024 * 1024 * 1024 / 2);

    // Not found is 3, refused is 4, each with the agent's message.
    let run = lab.run(&["status", "nope"]).expect_code(3);
    assert_eq!(
        run.stderr.trim_end(),
        "fleetctl: status \"nope\": experiment nope is not on this board"
    );
    let run = lab.run(&["status", "secret"]).expect_code(4);
    assert!(
        run.stderr.contains("a viewer may not look at secret"),
        "{}",
        run.stderr
    );
}

#[test]
fn stop_rm_and_autostart_report_each_id() {
    let lab = Lab::start();
    lab.seed("a");
    lab.seed("b");
    // Every id is tried; the exit code is the first failure's.
    let run = lab.run(&["stop", "a", "missing", "b"]).expect_code(3);
    assert_eq!(run.stdout, "stopped a: stopped\nstopped b: stopped\n");
    assert_eq!(
        run.stderr.trim_end(),
        "fleetctl: stop \"missing\": experiment missing is not on this board"
    );
    lab.run(&["autostart", "a", "on"]).expect_code(0);
    assert!(lab.stub.board().experiments["a"].autostart);
    let v = lab.json(&["rm", "a", "never-there"]);
    assert_eq!(
        v["removed"],
        serde_json::json!([{"id": "a", "existed": true}, {"id": "never-there", "existed": false}])
    );
    let run = lab.run(&["stop-all"]).expect_code(4);
    assert!(
        run.stderr
            .contains("operators may not stop every experiment"),
        "{}",
        run.stderr
    );
    let run = lab.run(&["start-all"]).expect_code(0);
    assert!(run.stdout.contains("nothing to start"), "{}", run.stdout);
}

#[test]
fn logs_pass_tail_since_and_follow_to_the_agent() {
    let lab = Lab::start();
    lab.seed("a");
    let run = lab
        .run(&["logs", "a", "-n", "5", "--since", "10m"])
        .expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[1].ends_with("  step 1 loss 2.31"), "{}", run.stdout);
    let req = lab.stub.board().last_logs.clone().unwrap();
    assert_eq!((req.tail, req.follow), (5, false));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let ten_min = 600 * 1_000_000;
    assert!(
        (req.since_unix_us - (now - ten_min)).abs() < 60 * 1_000_000,
        "{req:?}"
    );

    let run = lab.run(&["logs", "a", "-f", "-o", "json"]).expect_code(0);
    let first: serde_json::Value =
        serde_json::from_str(run.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["message"], "loading model");
    assert_eq!(first["time"], "2025-06-01T12:03:22.000000Z");
    let req = lab.stub.board().last_logs.clone().unwrap();
    assert_eq!((req.tail, req.follow, req.since_unix_us), (10, true, 0));

    lab.run(&["logs", "nope"]).expect_code(3);
}

#[test]
fn watch_prints_one_line_per_event() {
    let lab = Lab::start();
    lab.seed("a");
    lab.seed("b");
    let run = lab.run(&["watch"]).expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines[0].ends_with("  a  running  running"),
        "{}",
        run.stdout
    );
    let run = lab.run(&["watch", "b", "-o", "json"]).expect_code(0);
    let event: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(event["experiment"]["id"], "b");
}

#[test]
fn the_board_its_power_mode_and_clocks() {
    let lab = Lab::start();
    let run = lab.run(&["node", "info"]).expect_code(0);
    for want in [
        "node:         jetson-01",
        "memory:       64.0 GiB",
        "power mode:   MAXN (id 0)",
        "thermal:      warn, hottest cpu-thermal at 78.5 °C",
        "accepting:    no (too hot or draining)",
        "cpu-thermal  78.5 °C",
    ] {
        assert!(
            run.stdout.contains(want),
            "missing {want:?} in\n{}",
            run.stdout
        );
    }
    let v = lab.json(&["node", "info", "jetson-01"]);
    assert_eq!(v["telemetry"]["thermal_state"], "warn");
    assert_eq!(v["critical_c"], 85.0);

    // The agent must be the board named; another name fails the handshake.
    let run = lab.run(&["node", "info", "jetson-02"]).expect_code(1);
    assert!(run.stderr.contains(&lab.addr), "{}", run.stderr);
    assert!(run.stderr.contains("jetson-02"), "{}", run.stderr);

    // A mode that needs a reboot is refused (4) until allowed.
    let run = lab.run(&["power", "MODE_30W"]).expect_code(4);
    assert!(run.stderr.contains("needs a reboot"), "{}", run.stderr);
    let run = lab
        .run(&["power", "jetson-01", "MODE_30W", "--allow-reboot"])
        .expect_code(0);
    assert_eq!(
        run.stdout.trim_end(),
        "power mode of jetson-01 set to MODE_30W (id 2); it takes effect after the board reboots"
    );
    assert!(lab.stub.board().last_power.clone().unwrap().allow_reboot);

    let v = lab.json(&["clocks", "on"]);
    assert_eq!(v, serde_json::json!({"node": null, "enabled": true}));
    let run = lab.run(&["clocks", "off"]).expect_code(0);
    assert_eq!(run.stdout, "jetson_clocks is now off\n");
}
