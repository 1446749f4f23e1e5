//! `fleetctl` against a stub of `fleet.v1.Controller` behind real mTLS:
//! what goes on the wire, what is printed (times redacted), the exit code
//! of each kind of answer, and following streams across a controller that
//! breaks a stream or restarts. The stub answers from canned experiments,
//! nodes and events; tests against the real controller belong to the
//! testbed.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{redact, Home};
use fleet_proto::tls::{incoming, ServerTls, TlsFiles};
use fleet_proto::v1;
use fleet_proto::v1::controller_server::{Controller, ControllerServer};
use futures_util::Stream;
use tonic::{Request, Response, Status};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// 2025-06-01T12:03:22Z.
const T: i64 = 1_748_779_402_000_000;
const SEC: i64 = 1_000_000;

/// How a stream of the stub ends once its items are sent.
#[derive(Clone)]
enum End {
    /// Stays open, as a followed stream does.
    Hang,
    /// Ends with this error, as a controller going away does.
    Fail(Status),
    /// Ends cleanly.
    Close,
}

/// What one WatchEvents call does: replay the log from the request's
/// `from_seq`, at most up to `upto`, send `live` as new events, then end
/// as `end`.
#[derive(Clone)]
struct WatchScript {
    upto: Option<u64>,
    live: Vec<v1::Event>,
    end: End,
}

/// Canned fleet state, and every request seen, for the tests to check.
#[derive(Default)]
struct Fleet {
    experiments: BTreeMap<String, v1::Experiment>,
    nodes: BTreeMap<String, v1::Node>,
    events: Vec<v1::Event>,
    policy: v1::Policy,
    /// Experiments `List` returns on its first page only.
    page_size: Option<usize>,
    watch_scripts: VecDeque<WatchScript>,
    log_scripts: VecDeque<(Vec<v1::LogLine>, End)>,

    submits: Vec<v1::SubmitRequest>,
    lists: Vec<v1::ListRequest>,
    actions: Vec<(&'static str, String, String)>,
    watches: Vec<v1::WatchEventsRequest>,
    logs: Vec<v1::LogsRequest>,
    list_nodes: Vec<v1::ListNodesRequest>,
    node_calls: Vec<String>,
    drains: Vec<v1::DrainRequest>,
    set_labels: Vec<v1::SetLabelsRequest>,
    power: Vec<v1::SetNodePowerModeRequest>,
    clocks: Vec<v1::SetNodeClocksRequest>,
    set_policies: Vec<v1::SetPolicyRequest>,
}

#[derive(Clone, Default)]
struct Stub(Arc<Mutex<Fleet>>);

impl Stub {
    fn fleet(&self) -> std::sync::MutexGuard<'_, Fleet> {
        self.0.lock().unwrap()
    }

    /// An experiment by id: "secret" is refused, an unknown id not found.
    fn get(&self, id: &str) -> Result<v1::Experiment, Status> {
        if id == "secret" {
            return Err(Status::permission_denied(
                "user/ada (viewer) may not read experiment secret",
            ));
        }
        self.fleet()
            .experiments
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no experiment \"{id}\"")))
    }

    fn node(&self, name: &str) -> Result<v1::Node, Status> {
        self.fleet()
            .nodes
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no node \"{name}\"")))
    }

    fn append_event(&self, mut event: v1::Event) -> u64 {
        let mut fleet = self.fleet();
        event.seq = fleet.events.len() as u64 + 1;
        event.timestamp_unix_us = T + event.seq as i64 * SEC;
        let seq = event.seq;
        fleet.events.push(event);
        seq
    }

    fn phase_change(&self, id: &str, from: v1::ExperimentPhase, to: v1::ExperimentPhase) {
        self.append_event(v1::Event {
            kind: v1::EventKind::PhaseChanged as i32,
            experiment: id.to_owned(),
            node: "jetson-03".into(),
            from: from as i32,
            to: to as i32,
            message: if to == v1::ExperimentPhase::Failed {
                "exited with code 3".into()
            } else {
                String::new()
            },
            actor: "scheduler".into(),
            ..Default::default()
        });
    }
}

fn items<T: Send + 'static>(items: Vec<T>, end: End) -> BoxStream<T> {
    let head = futures_util::stream::iter(items.into_iter().map(Ok));
    match end {
        End::Hang => Box::pin(futures_util::StreamExt::chain(
            head,
            futures_util::stream::pending(),
        )),
        End::Fail(status) => Box::pin(futures_util::StreamExt::chain(
            head,
            futures_util::stream::iter([Err(status)]),
        )),
        End::Close => Box::pin(head),
    }
}

fn experiment(id: &str, phase: v1::ExperimentPhase) -> v1::Experiment {
    v1::Experiment {
        spec: Some(v1::ExperimentSpec {
            id: id.to_owned(),
            command: vec!["/bin/true".into()],
            priority: 10,
            ..Default::default()
        }),
        phase: phase as i32,
        node: if phase == v1::ExperimentPhase::Queued {
            String::new()
        } else {
            "jetson-03".into()
        },
        epoch: 1,
        submitted_at_unix_us: T,
        submitted_by: "user/ada".into(),
        ..Default::default()
    }
}

fn decision(id: &str) -> v1::Decision {
    v1::Decision {
        experiment: id.to_owned(),
        timestamp_unix_us: T,
        policy: "balanced".into(),
        outcome: v1::DecisionOutcome::Placed as i32,
        node: "jetson-03".into(),
        epoch: 0,
        summary: "placed on jetson-03 (score 0.82)".into(),
        nodes: vec![
            v1::NodeVerdict {
                node: "jetson-03".into(),
                fits: true,
                score: Some(0.82),
                terms: vec![v1::ScoreTerm {
                    name: "temperature".into(),
                    value: 0.9,
                    weight: 1.0,
                }],
                ..Default::default()
            },
            v1::NodeVerdict {
                node: "jetson-01".into(),
                fits: false,
                reasons: vec!["too hot: 78.5 °C ≥ warn 75.0 − margin 5.0".into()],
                ..Default::default()
            },
        ],
        dry_run: true,
    }
}

fn node(name: &str, thermal: v1::ThermalState, hottest: f64) -> v1::Node {
    let maxn = v1::PowerMode {
        id: 0,
        name: "MAXN".into(),
    };
    v1::Node {
        name: name.to_owned(),
        address: format!("{name}.lab:7443"),
        source: v1::NodeSource::Joined as i32,
        connection: v1::NodeConnection::Connected as i32,
        labels: [("model".to_owned(), "agx-orin".to_owned())].into(),
        info: Some(v1::NodeInfo {
            node: name.to_owned(),
            model: "NVIDIA Jetson AGX Orin Developer Kit".into(),
            l4t_release: "R36.4.3".into(),
            cpu_cores: 12,
            memory_total_bytes: 64 << 30,
            power_modes: vec![maxn.clone()],
            current_power_mode: Some(maxn.clone()),
            default_power_mode: Some(0),
            gpu: true,
            nvpmodel: true,
            jetson_clocks: true,
            agent_version: "0.1.0".into(),
            zones: vec!["cpu-thermal".into()],
            warn_c: 75.0,
            critical_c: 85.0,
        }),
        telemetry: Some(v1::TelemetrySample {
            timestamp_unix_us: T,
            load1: 2.5,
            memory_total_bytes: 64 << 30,
            memory_available_bytes: 48 << 30,
            zones: vec![v1::ZoneReading {
                name: "cpu-thermal".into(),
                celsius: Some(hottest),
                offline: false,
            }],
            power_mode: Some(maxn),
            thermal_state: thermal as i32,
            hottest_c: Some(hottest),
            hottest_zone: "cpu-thermal".into(),
            ..Default::default()
        }),
        last_seen_unix_us: T,
        experiments: vec!["a-run".into()],
        slots_used: 1,
        slots_max: 4,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Controller for Stub {
    async fn submit(
        &self,
        req: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let req = req.into_inner();
        self.fleet().submits.push(req.clone());
        // Stored as accepted, every default written out.
        let spec = fleet_proto::spec::ExperimentSpec::try_from(&req.spec.unwrap_or_default())
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .to_proto();
        let id = spec.id.clone();
        if self.fleet().experiments.contains_key(&id) {
            return Err(Status::already_exists(format!(
                "experiment \"{id}\" exists; give another id"
            )));
        }
        let mut e = experiment(&id, v1::ExperimentPhase::Queued);
        e.spec = Some(spec);
        e.reason = "waiting for the scheduler".into();
        if req.dry_run {
            return Ok(Response::new(v1::SubmitResponse {
                experiment: Some(e),
                decision: Some(decision(&id)),
                event_seq: 0,
                already_submitted: false,
            }));
        }
        self.fleet().experiments.insert(id.clone(), e.clone());
        let seq = self.append_event(v1::Event {
            kind: v1::EventKind::Submitted as i32,
            experiment: id.clone(),
            actor: "user/ada".into(),
            ..Default::default()
        });
        // What the scheduler and the board would make of it.
        use v1::ExperimentPhase as P;
        self.phase_change(&id, P::Queued, P::Placing);
        self.phase_change(&id, P::Placing, P::Starting);
        let last = if id.starts_with("doomed") {
            P::Failed
        } else {
            P::Running
        };
        self.phase_change(&id, P::Starting, last);
        Ok(Response::new(v1::SubmitResponse {
            experiment: Some(e),
            decision: None,
            event_seq: seq,
            already_submitted: false,
        }))
    }

    async fn cancel(
        &self,
        req: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        let req = req.into_inner();
        self.fleet()
            .actions
            .push(("cancel", req.id.clone(), req.reason));
        let mut e = self.get(&req.id)?;
        e.phase = v1::ExperimentPhase::Cancelled as i32;
        Ok(Response::new(e))
    }

    async fn stop(
        &self,
        req: Request<v1::StopRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        let req = req.into_inner();
        self.fleet()
            .actions
            .push(("stop", req.id.clone(), req.reason));
        let mut e = self.get(&req.id)?;
        e.phase = v1::ExperimentPhase::Stopping as i32;
        Ok(Response::new(e))
    }

    async fn restart(
        &self,
        req: Request<v1::RestartRequest>,
    ) -> Result<Response<v1::Experiment>, Status> {
        let req = req.into_inner();
        self.fleet()
            .actions
            .push(("restart", req.id.clone(), req.reason));
        let mut e = self.get(&req.id)?;
        e.phase = v1::ExperimentPhase::Queued as i32;
        Ok(Response::new(e))
    }

    async fn get(&self, req: Request<v1::GetRequest>) -> Result<Response<v1::Experiment>, Status> {
        Ok(Response::new(self.get(&req.into_inner().id)?))
    }

    async fn list(
        &self,
        req: Request<v1::ListRequest>,
    ) -> Result<Response<v1::ListResponse>, Status> {
        let req = req.into_inner();
        let mut fleet = self.fleet();
        fleet.lists.push(req.clone());
        let all: Vec<v1::Experiment> = fleet.experiments.values().cloned().collect();
        let (page, next) = match (fleet.page_size, req.page_token.as_str()) {
            (Some(n), "") if n < all.len() => (all[..n].to_vec(), "page-2".to_owned()),
            (Some(n), "page-2") => (all[n..].to_vec(), String::new()),
            _ => (all, String::new()),
        };
        Ok(Response::new(v1::ListResponse {
            experiments: page,
            next_page_token: next,
        }))
    }

    async fn explain(
        &self,
        req: Request<v1::ExplainRequest>,
    ) -> Result<Response<v1::Explanation>, Status> {
        let id = req.into_inner().id;
        let e = self.get(&id)?;
        let mut last = decision(&id);
        last.dry_run = false;
        last.epoch = 1;
        Ok(Response::new(v1::Explanation {
            experiment: Some(e),
            last: Some(last),
            now: None,
        }))
    }

    type LogsStream = BoxStream<v1::LogLine>;

    async fn logs(
        &self,
        req: Request<v1::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        self.get(&req.id)?;
        let mut fleet = self.fleet();
        fleet.logs.push(req);
        let (lines, end) = fleet
            .log_scripts
            .pop_front()
            .unwrap_or((Vec::new(), End::Close));
        Ok(Response::new(items(lines, end)))
    }

    type WatchEventsStream = BoxStream<v1::Event>;

    async fn watch_events(
        &self,
        req: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let req = req.into_inner();
        let mut fleet = self.fleet();
        fleet.watches.push(req.clone());
        let head = fleet.events.len() as u64;
        match req.from_seq {
            Some(0) => return Err(Status::out_of_range("sequence numbers start at 1")),
            Some(n) if n > head + 1 => {
                return Err(Status::out_of_range(format!("the log ends at seq {head}")))
            }
            _ => {}
        }
        let script = fleet.watch_scripts.pop_front().unwrap_or(WatchScript {
            upto: None,
            live: Vec::new(),
            end: End::Hang,
        });
        let filter = req.filter.unwrap_or_default();
        let replay: Vec<v1::Event> = match req.from_seq {
            // From now on: nothing to replay.
            None => Vec::new(),
            Some(from) => fleet
                .events
                .iter()
                .filter(|e| e.seq >= from && script.upto.is_none_or(|u| e.seq <= u))
                .filter(|e| {
                    filter.experiments.is_empty() || filter.experiments.contains(&e.experiment)
                })
                .filter(|e| filter.nodes.is_empty() || filter.nodes.contains(&e.node))
                .filter(|e| filter.kinds.is_empty() || filter.kinds.contains(&e.kind))
                .cloned()
                .collect(),
        };
        if req.replay_only {
            return Ok(Response::new(items(replay, End::Close)));
        }
        let mut all = replay;
        all.extend(script.live);
        Ok(Response::new(items(all, script.end)))
    }

    async fn list_nodes(
        &self,
        req: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let req = req.into_inner();
        let mut fleet = self.fleet();
        fleet.list_nodes.push(req.clone());
        let nodes = fleet
            .nodes
            .values()
            .filter(|n| req.names.is_empty() || req.names.contains(&n.name))
            .filter(|n| req.labels.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
            .cloned()
            .collect();
        Ok(Response::new(v1::ListNodesResponse { nodes }))
    }

    async fn cordon(&self, req: Request<v1::CordonRequest>) -> Result<Response<v1::Node>, Status> {
        let req = req.into_inner();
        let mut n = self.node(&req.node)?;
        n.cordoned = true;
        n.cordon_reason = req.reason.clone();
        self.fleet()
            .node_calls
            .push(format!("cordon {} {}", req.node, req.reason));
        Ok(Response::new(n))
    }

    async fn uncordon(
        &self,
        req: Request<v1::UncordonRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let req = req.into_inner();
        if req.node == "jetson-02" {
            return Err(Status::permission_denied(
                "user/olga (operator) may not uncordon nodes; it takes an admin",
            ));
        }
        let n = self.node(&req.node)?;
        self.fleet()
            .node_calls
            .push(format!("uncordon {}", req.node));
        Ok(Response::new(n))
    }

    async fn drain(
        &self,
        req: Request<v1::DrainRequest>,
    ) -> Result<Response<v1::DrainResponse>, Status> {
        let req = req.into_inner();
        let mut n = self.node(&req.node)?;
        n.cordoned = true;
        n.draining = true;
        n.drain_mode = req.mode;
        self.fleet().drains.push(req);
        Ok(Response::new(v1::DrainResponse {
            experiments: n.experiments.clone(),
            node: Some(n),
        }))
    }

    async fn set_labels(
        &self,
        req: Request<v1::SetLabelsRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        let req = req.into_inner();
        let mut n = self.node(&req.node)?;
        for key in &req.remove {
            n.labels.remove(key);
        }
        n.labels.extend(req.labels.clone());
        self.fleet().set_labels.push(req);
        Ok(Response::new(n))
    }

    async fn set_power_mode(
        &self,
        req: Request<v1::SetNodePowerModeRequest>,
    ) -> Result<Response<v1::SetNodePowerModeResponse>, Status> {
        let req = req.into_inner();
        self.fleet().power.push(req.clone());
        let n = self.node(&req.node)?;
        if !req.force {
            return Err(Status::failed_precondition(
                "a-run placed on jetson-03 asks for MAXN; pass force to switch anyway",
            ));
        }
        Ok(Response::new(v1::SetNodePowerModeResponse {
            node: Some(n),
            mode: Some(v1::PowerMode {
                id: 2,
                name: req.mode,
            }),
            reboot_required: false,
            changed: true,
        }))
    }

    async fn set_clocks(
        &self,
        req: Request<v1::SetNodeClocksRequest>,
    ) -> Result<Response<v1::SetNodeClocksResponse>, Status> {
        let req = req.into_inner();
        self.fleet().clocks.push(req.clone());
        let n = self.node(&req.node)?;
        if req.node == "jetson-02" {
            return Err(Status::failed_precondition(
                "the agent of jetson-02 refused to turn jetson_clocks on: no jetson_clocks on this board",
            ));
        }
        Ok(Response::new(v1::SetNodeClocksResponse {
            node: Some(n),
            enabled: req.enabled,
        }))
    }

    async fn add_node(&self, _: Request<v1::AddNodeRequest>) -> Result<Response<v1::Node>, Status> {
        Err(Status::unimplemented("not in the stub"))
    }

    async fn remove_node(
        &self,
        _: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        Err(Status::unimplemented("not in the stub"))
    }

    async fn get_policy(
        &self,
        _: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        Ok(Response::new(self.fleet().policy.clone()))
    }

    async fn set_policy(
        &self,
        req: Request<v1::SetPolicyRequest>,
    ) -> Result<Response<v1::Policy>, Status> {
        let req = req.into_inner();
        let mut fleet = self.fleet();
        fleet.set_policies.push(req.clone());
        if !["balanced", "coolest", "least-loaded", "spread", "pack"].contains(&req.name.as_str()) {
            return Err(Status::invalid_argument(format!(
                "policy \"{}\" is unknown: use balanced, coolest, least-loaded, spread or pack",
                req.name
            )));
        }
        let mut policy = fleet.policy.clone();
        policy.name = req.name;
        if let Some(w) = req.weights {
            policy.weights = Some(w);
        }
        if let Some(s) = req.strict_order {
            policy.strict_order = s;
        }
        policy.updated_by = "user/ada".into();
        fleet.policy = policy.clone();
        Ok(Response::new(policy))
    }

    async fn join(
        &self,
        _: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        Err(Status::permission_denied("only agents join"))
    }
}

/// A PKI, the stub controller on 127.0.0.1 (restartable on the same
/// port), and a home whose config file points at it.
struct Lab {
    home: Home,
    stub: Stub,
    addr: SocketAddr,
    tls: ServerTls,
    server: Option<tokio::runtime::Runtime>,
}

impl Lab {
    fn start() -> Self {
        let home = Home::new();
        home.init_pki(&["controller", "--san", "127.0.0.1"]);
        let tls = ServerTls::from_files(TlsFiles::new(
            home.path("pki/ca.pem"),
            home.path("pki/controller.pem"),
            home.path("pki/controller.key"),
        ))
        .unwrap();
        let stub = Stub::default();
        stub.fleet().policy = v1::Policy {
            name: "balanced".into(),
            weights: Some(v1::ScoreWeights {
                temperature: 0.4,
                load: 0.3,
                memory: 0.2,
                spread: 0.1,
                pack: 0.0,
            }),
            temp_margin_c: 5.0,
            updated_at_unix_us: T,
            updated_by: "config".into(),
            ..Default::default()
        };
        let mut lab = Lab {
            home,
            stub,
            addr: "127.0.0.1:0".parse().unwrap(),
            tls,
            server: None,
        };
        lab.serve();
        lab.home.write_context("controller", &lab.addr.to_string());
        lab
    }

    /// Serves on `addr` (a new port the first time), in a runtime of its
    /// own so a restart drops every connection.
    fn serve(&mut self) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (tls, stub, want) = (self.tls.clone(), self.stub.clone(), self.addr);
        self.addr = runtime.block_on(async move {
            // The old listener may take a moment to go away.
            let mut tries = 0;
            let listener = loop {
                match tokio::net::TcpListener::bind(want).await {
                    Ok(l) => break l,
                    Err(e) if tries < 100 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("cannot bind {want}: {e}"),
                }
            };
            let addr = listener.local_addr().unwrap();
            let conns = incoming(listener, tls);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(ControllerServer::new(stub))
                    .serve_with_incoming(conns),
            );
            addr
        });
        self.server = Some(runtime);
    }

    /// The controller dies: every connection dropped, the port closed.
    fn stop(&mut self) {
        if let Some(runtime) = self.server.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// The controller dies and starts again on the same port, its state
    /// kept.
    fn restart(&mut self) {
        self.stop();
        self.serve();
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

    fn seed(&self, e: v1::Experiment) {
        let id = e.spec.as_ref().unwrap().id.clone();
        self.stub.fleet().experiments.insert(id, e);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(runtime) = self.server.take() {
            runtime.shutdown_background();
        }
    }
}

#[test]
fn submit_sends_each_spec_and_waits_through_the_event_log() {
    let lab = Lab::start();
    lab.home.write(
        "exp.toml",
        "id = \"amnesiac-001\"\ncommand = [\"/usr/bin/python3\", \"run.py\"]\n[resources]\nmemory_max = \"8G\"\n",
    );
    let run = lab.run(&["submit", "exp.toml", "--wait"]).expect_code(0);
    assert_eq!(
        run.stdout,
        "\
submitted amnesiac-001 from exp.toml: queued (waiting for the scheduler)
amnesiac-001 is placing on jetson-03
amnesiac-001 is starting on jetson-03
amnesiac-001 is running on jetson-03
"
    );
    let fleet = lab.stub.fleet();
    let sent = &fleet.submits[0];
    assert!(!sent.dry_run);
    let spec = sent.spec.clone().unwrap();
    assert_eq!(spec.id, "amnesiac-001");
    assert_eq!(spec.command, vec!["/usr/bin/python3", "run.py"]);
    assert_eq!(spec.resources.unwrap().memory_max, "8G");
    // --wait follows the experiment's phase changes from its `submitted`
    // event on, so nothing between the reply and the watch is missed.
    let watch = &fleet.watches[0];
    assert_eq!(watch.from_seq, Some(1));
    let filter = watch.filter.clone().unwrap();
    assert_eq!(filter.experiments, vec!["amnesiac-001"]);
    assert_eq!(filter.kinds, vec![v1::EventKind::PhaseChanged as i32]);
    assert!(!watch.replay_only);
    drop(fleet);

    // An id in use: the controller's message and exit code 1.
    let run = lab.run(&["submit", "exp.toml"]).expect_code(1);
    assert_eq!(
        run.stderr,
        "fleetctl: submit exp.toml: experiment \"amnesiac-001\" exists; give another id\n"
    );

    // A file without an id gets one from its name; JSON has the stored
    // experiment and the event's seq.
    lab.home
        .write("train-llama.toml", "command = [\"/bin/true\"]\n");
    let v = lab.json(&["submit", "train-llama.toml"]);
    let entry = &v["submitted"][0];
    let id = entry["experiment"]["id"].as_str().unwrap();
    assert!(id.starts_with("train-llama-"), "{id}");
    assert_eq!(entry["spec"]["id"], id);
    assert_eq!(entry["experiment"]["phase"], "queued");
    assert_eq!(entry["event_seq"], 5);
    assert_eq!(entry["decision"], serde_json::Value::Null);

    // Waiting on one that fails: every line, then exit 1 with the reason.
    lab.home.write(
        "doomed.toml",
        "id = \"doomed-1\"\ncommand = [\"/bin/false\"]\n",
    );
    let run = lab.run(&["submit", "doomed.toml", "--wait"]).expect_code(1);
    assert!(
        run.stdout
            .ends_with("doomed-1 is failed on jetson-03: exited with code 3\n"),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stderr,
        "fleetctl: experiment doomed-1 is failed: exited with code 3\n"
    );
}

#[test]
fn a_dry_run_shows_the_spec_and_the_schedulers_decision() {
    let lab = Lab::start();
    lab.home.write(
        "exp.toml",
        "id = \"amnesiac-001\"\ncommand = [\"python3\", \"run.py\"]\npriority = 50\n",
    );
    let run = lab.run(&["submit", "--dry-run", "exp.toml"]).expect_code(0);
    assert_eq!(
        redact(&run.stdout),
        "\
exp.toml: valid; would submit amnesiac-001
  command:    python3 run.py
  priority:   50
  resources:  the unit template's defaults
  placement:  any board
  lifecycle:  restarted on failure up to 3 times, 5s apart; no time limit; stop timeout 30s; on disruption requeue; autostart off
  decision (<time>, policy balanced): placed on jetson-03 (score 0.82)
  NODE       VERDICT      SCORE  DETAIL
  jetson-03  would place   0.82  temperature 0.90×1.00
  jetson-01  excluded         -  too hot: 78.5 °C ≥ warn 75.0 − margin 5.0
dry run: nothing was submitted
"
    );
    assert!(lab.stub.fleet().submits[0].dry_run);
    assert!(lab.stub.fleet().experiments.is_empty(), "nothing stored");

    let v = lab.json(&["submit", "--dry-run", "exp.toml"]);
    let entry = &v["submitted"][0];
    assert_eq!(entry["dry_run"], true);
    assert_eq!(entry["event_seq"], serde_json::Value::Null);
    assert_eq!(entry["decision"]["outcome"], "placed");
    assert_eq!(entry["decision"]["nodes"][1]["fits"], false);
    assert_eq!(entry["decision"]["nodes"][0]["score"], 0.82);
}

#[test]
fn ps_sends_the_filters_and_reads_every_page() {
    let lab = Lab::start();
    lab.seed(experiment("a-run", v1::ExperimentPhase::Running));
    let mut queued = experiment("b-wait", v1::ExperimentPhase::Queued);
    queued.reason = "no node fits: 2 too hot".into();
    lab.seed(queued);
    lab.seed(experiment("c-done", v1::ExperimentPhase::Succeeded));
    lab.stub.fleet().page_size = Some(2);

    let run = lab.run(&["ps"]).expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    // AGE depends on the clock.
    assert!(
        lines[0].starts_with("ID      PHASE      NODE       PRI  ")
            && lines[0].ends_with("AGE  RUNS  CRASHES  DISRUPTIONS  REASON"),
        "{}",
        run.stdout
    );
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert!(lines[1].starts_with("a-run   running    jetson-03   10"));
    assert!(lines[2].starts_with("b-wait  queued     -           10"));
    assert!(lines[2].ends_with("no node fits: 2 too hot"));
    assert!(lines[3].starts_with("c-done  succeeded"));
    {
        let fleet = lab.stub.fleet();
        assert_eq!(fleet.lists.len(), 2);
        assert_eq!(fleet.lists[1].page_token, "page-2");
    }

    let v = lab.json(&[
        "list",
        "--state",
        "queued,running",
        "--node",
        "jetson-03",
        "--label",
        "model=agx-orin",
    ]);
    assert_eq!(v["experiments"].as_array().unwrap().len(), 3);
    assert_eq!(v["experiments"][1]["phase"], "queued");
    let fleet = lab.stub.fleet();
    let req = fleet.lists.last().unwrap();
    assert_eq!(
        req.phases,
        vec![
            v1::ExperimentPhase::Queued as i32,
            v1::ExperimentPhase::Running as i32
        ]
    );
    assert_eq!(req.node, "jetson-03");
    assert_eq!(
        req.labels.get("model").map(String::as_str),
        Some("agx-orin")
    );
    drop(fleet);

    // A node from FLEET_NODE filters too; a context's `node` (the board of
    // an agent context) does not.
    common::run(lab.home.command().arg("ps").env("FLEET_NODE", "jetson-01")).expect_code(0);
    assert_eq!(lab.stub.fleet().lists.last().unwrap().node, "jetson-01");
    let config = lab.home.path(".config/fleet/fleetctl.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("node = \"jetson-09\"\n");
    std::fs::write(&config, text).unwrap();
    lab.run(&["ps"]).expect_code(0);
    assert_eq!(lab.stub.fleet().lists.last().unwrap().node, "");
}

#[test]
fn status_shows_runs_and_exit_codes_follow_the_answer() {
    let lab = Lab::start();
    let mut e = experiment("a-run", v1::ExperimentPhase::Running);
    e.runs = vec![v1::RunRecord {
        node: "jetson-03".into(),
        epoch: 1,
        started_at_unix_us: T,
        ended_at_unix_us: Some(T + 90 * SEC),
        outcome: v1::RunOutcome::Disrupted as i32,
        message: "stopped by the thermal guard at 86.0 °C".into(),
        disruption: v1::Disruption::Thermal as i32,
        power_mode: Some(v1::PowerMode {
            id: 0,
            name: "MAXN".into(),
        }),
        jetson_clocks: Some(true),
        l4t_release: "R36.4.3".into(),
        peak_temp_c: Some(86.0),
        throttled: true,
        ..Default::default()
    }];
    e.disruptions = 1;
    lab.seed(e);
    let run = lab.run(&["status", "a-run"]).expect_code(0);
    let text = redact(&run.stdout);
    let (head, runs) = text.split_once("\n\n").unwrap();
    assert!(head.starts_with(
        "id:         a-run\nphase:      running on jetson-03 (epoch 1)\nsubmitted:  <time> ("
    ));
    assert!(
        head.contains("runs:       1 run; 0 crashes and 1 disruption in all"),
        "{head}"
    );
    assert_eq!(
        runs,
        "\
RUN  NODE       EPOCH  STARTED              LASTED  OUTCOME    POWER  CLOCKS  L4T         PEAK  THROTTLED  CRASHES  MESSAGE
  1  jetson-03      1  <time>  1m 30s  disrupted  MAXN   on      R36.4.3  86.0 °C  yes              0  stopped by the thermal guard at 86.0 °C
"
    );
    let v = lab.json(&["status", "a-run"]);
    assert_eq!(v["runs"][0]["peak_temp_c"], 86.0);
    assert_eq!(v["runs"][0]["throttled"], true);
    assert_eq!(v["runs"][0]["l4t_release"], "R36.4.3");
    assert_eq!(v["runs"][0]["power_mode"]["name"], "MAXN");
    assert_eq!(v["runs"][0]["jetson_clocks"], true);

    let run = lab.run(&["status", "nope"]).expect_code(3);
    assert_eq!(
        run.stderr,
        "fleetctl: status \"nope\": no experiment \"nope\"\n"
    );
    let run = lab.run(&["status", "secret"]).expect_code(4);
    assert_eq!(
        run.stderr,
        "fleetctl: status \"secret\": user/ada (viewer) may not read experiment secret\n"
    );
    let run = lab.run(&["explain", "nope"]).expect_code(3);
    assert!(run.stderr.starts_with("fleetctl: explain \"nope\": "));
}

#[test]
fn stop_cancel_restart_send_each_id_with_the_reason() {
    let lab = Lab::start();
    lab.seed(experiment("a", v1::ExperimentPhase::Running));
    lab.seed(experiment("b", v1::ExperimentPhase::Queued));
    let run = lab
        .run(&["stop", "a", "missing", "b", "--reason", "wrong config"])
        .expect_code(3);
    assert_eq!(run.stdout, "stopped a: stopping\nstopped b: stopping\n");
    assert_eq!(
        run.stderr,
        "fleetctl: stop \"missing\": no experiment \"missing\"\n"
    );
    let run = lab.run(&["cancel", "b"]).expect_code(0);
    assert_eq!(run.stdout, "cancelled b: cancelled\n");
    let v = lab.json(&["restart", "a"]);
    assert_eq!(v["experiments"][0]["phase"], "queued");
    let run = lab.run(&["cancel", "secret"]).expect_code(4);
    assert!(run.stderr.contains("may not read"), "{}", run.stderr);
    let actions = lab.stub.fleet().actions.clone();
    assert_eq!(
        actions,
        vec![
            ("stop", "a".to_owned(), "wrong config".to_owned()),
            ("stop", "missing".to_owned(), "wrong config".to_owned()),
            ("stop", "b".to_owned(), "wrong config".to_owned()),
            ("cancel", "b".to_owned(), String::new()),
            ("restart", "a".to_owned(), String::new()),
            ("cancel", "secret".to_owned(), String::new()),
        ]
    );
}

#[test]
fn explain_shows_the_last_decision_per_node() {
    let lab = Lab::start();
    let mut e = experiment("a-run", v1::ExperimentPhase::Running);
    e.reason = "placed".into();
    lab.seed(e);
    let run = lab.run(&["explain", "a-run"]).expect_code(0);
    assert_eq!(
        redact(&run.stdout),
        "\
a-run: running on jetson-03; placed

last decision (<time>, policy balanced): placed on jetson-03 (score 0.82)
NODE       VERDICT   SCORE  DETAIL
jetson-03  placed     0.82  temperature 0.90×1.00
jetson-01  excluded      -  too hot: 78.5 °C ≥ warn 75.0 − margin 5.0
"
    );
    let v = lab.json(&["explain", "a-run"]);
    assert_eq!(v["experiment"]["id"], "a-run");
    assert_eq!(
        v["last"]["nodes"][1]["reasons"][0],
        "too hot: 78.5 °C ≥ warn 75.0 − margin 5.0"
    );
    assert_eq!(v["now"], serde_json::Value::Null);
}

#[test]
fn events_replay_the_log_as_a_table_or_json_lines() {
    let lab = Lab::start();
    lab.stub.append_event(v1::Event {
        kind: v1::EventKind::NodeCordoned as i32,
        node: "jetson-01".into(),
        message: "fan replacement".into(),
        actor: "user/ada".into(),
        ..Default::default()
    });
    lab.stub.phase_change(
        "a",
        v1::ExperimentPhase::Queued,
        v1::ExperimentPhase::Placing,
    );
    let run = lab.run(&["events"]).expect_code(0);
    assert_eq!(
        redact(&run.stdout),
        "\
SEQ  TIME                 KIND           EXPERIMENT  NODE       BY         DETAIL
  1  <time>  node-cordoned  -           jetson-01  user/ada   fan replacement
  2  <time>  phase-changed  a           jetson-03  scheduler  queued → placing
"
    );
    let req = lab.stub.fleet().watches[0].clone();
    assert_eq!((req.from_seq, req.replay_only), (Some(1), true));

    let run = lab
        .run(&[
            "events",
            "a",
            "--since",
            "1",
            "--node",
            "jetson-03",
            "-o",
            "json",
        ])
        .expect_code(0);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    assert_eq!(lines[0]["seq"], 2);
    assert_eq!(lines[0]["from"], "queued");
    assert_eq!(lines[0]["to"], "placing");
    let req = lab.stub.fleet().watches[1].clone();
    assert_eq!(req.from_seq, Some(2));
    let filter = req.filter.unwrap();
    assert_eq!(filter.experiments, vec!["a"]);
    assert_eq!(filter.nodes, vec!["jetson-03"]);

    // A sequence number the log no longer keeps: what to do, exit 1.
    let run = lab
        .run(&["events", "--since", "18446744073709551615"])
        .expect_code(1);
    assert!(run.stderr.contains("--since SEQ"), "{}", run.stderr);
}

#[test]
fn events_follow_resumes_after_a_broken_stream_without_repeats() {
    let lab = Lab::start();
    for _ in 0..5 {
        lab.stub.append_event(v1::Event {
            kind: v1::EventKind::NodeConnected as i32,
            node: "jetson-01".into(),
            actor: "controller".into(),
            ..Default::default()
        });
    }
    // The first stream breaks after event 3, as a controller going away
    // mid-stream does; the second replays from where fleetctl asks.
    lab.stub.fleet().watch_scripts.extend([
        WatchScript {
            upto: Some(3),
            live: Vec::new(),
            end: End::Fail(Status::unavailable("the controller is shutting down")),
        },
        WatchScript {
            upto: None,
            live: Vec::new(),
            end: End::Hang,
        },
    ]);
    let mut child = lab.home.spawn(&["events", "-f", "--since", "0"]);
    let lines = child.wait_for_lines(5).to_vec();
    let seqs: Vec<&str> = lines
        .iter()
        .map(|l| l.split("  ").next().unwrap())
        .collect();
    assert_eq!(seqs, vec!["#1", "#2", "#3", "#4", "#5"]);
    let stderr = child.interrupt();
    assert!(
        stderr.contains(
            "fleetctl: lost the event stream (the controller is shutting down); reconnecting"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("fleetctl: reconnected; resuming after event 3"),
        "{stderr}"
    );
    let from: Vec<Option<u64>> = lab
        .stub
        .fleet()
        .watches
        .iter()
        .map(|w| w.from_seq)
        .collect();
    assert_eq!(from, vec![Some(1), Some(4)]);
}

/// The controller is down for a while: fleetctl retries with backoff
/// until it is back.
#[test]
fn events_follow_survives_a_controller_restart() {
    let mut lab = Lab::start();
    lab.stub.append_event(v1::Event {
        kind: v1::EventKind::NodeConnected as i32,
        node: "jetson-01".into(),
        ..Default::default()
    });
    let mut child = lab
        .home
        .spawn(&["events", "-f", "--since", "0", "-o", "json"]);
    child.wait_for_lines(1);
    lab.stop();
    // It notices, and keeps trying while the controller is down.
    child.wait_for_stderr("cannot reach the controller yet");
    lab.serve();
    lab.stub.append_event(v1::Event {
        kind: v1::EventKind::NodeUnreachable as i32,
        node: "jetson-02".into(),
        ..Default::default()
    });
    let lines = child.wait_for_lines(2).to_vec();
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["seq"], 2);
    assert_eq!(second["kind"], "node-unreachable");
    let stderr = child.interrupt();
    assert!(stderr.contains("lost the event stream"), "{stderr}");
    assert!(
        stderr.contains("cannot reach the controller yet"),
        "{stderr}"
    );
    assert!(stderr.contains("resuming after event 1"), "{stderr}");
    let from: Vec<Option<u64>> = lab
        .stub
        .fleet()
        .watches
        .iter()
        .map(|w| w.from_seq)
        .collect();
    assert_eq!(from, vec![Some(1), Some(2)]);
}

fn log_line(n: i64, at: i64, message: &str) -> v1::LogLine {
    v1::LogLine {
        timestamp_unix_us: at,
        message: message.to_owned(),
        priority: 6,
        pid: 4242,
        cursor: format!("c{n}"),
    }
}

#[test]
fn logs_are_proxied_and_follow_resumes_by_time_and_cursor() {
    let mut lab = Lab::start();
    lab.seed(experiment("a-run", v1::ExperimentPhase::Running));
    lab.stub.fleet().log_scripts.push_back((
        vec![
            log_line(1, T, "loading model"),
            log_line(2, T + SEC, "step 1 loss 2.31"),
        ],
        End::Close,
    ));
    let run = lab
        .run(&["logs", "a-run", "-n", "5", "--since", "10m"])
        .expect_code(0);
    assert_eq!(
        redact(&run.stdout),
        "<time>  loading model\n<time>  step 1 loss 2.31\n"
    );
    let req = lab.stub.fleet().logs[0].clone();
    assert_eq!((req.id.as_str(), req.tail, req.follow), ("a-run", 5, false));
    assert!(req.since_unix_us > 0);
    let run = lab.run(&["logs", "nope"]).expect_code(3);
    assert_eq!(
        run.stderr,
        "fleetctl: logs \"nope\": no experiment \"nope\"\n"
    );

    // Followed: two lines of the same microsecond, then the controller
    // restarts. The resumed stream starts at that microsecond again.
    lab.stub.fleet().log_scripts.extend([
        (
            vec![
                log_line(3, T, "a"),
                log_line(4, T + SEC, "b"),
                log_line(5, T + SEC, "c"),
            ],
            End::Hang,
        ),
        (
            vec![
                log_line(4, T + SEC, "b"),
                log_line(5, T + SEC, "c"),
                log_line(6, T + SEC, "d"),
                log_line(7, T + 2 * SEC, "e"),
            ],
            End::Hang,
        ),
    ]);
    let mut child = lab.home.spawn(&["logs", "a-run", "-f", "-o", "json"]);
    child.wait_for_lines(3);
    lab.restart();
    let lines = child.wait_for_lines(5).to_vec();
    let messages: Vec<String> = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["message"].to_string())
        .collect();
    assert_eq!(messages, ["\"a\"", "\"b\"", "\"c\"", "\"d\"", "\"e\""]);
    let stderr = child.interrupt();
    assert!(stderr.contains("lost the log stream"), "{stderr}");
    assert!(stderr.contains("reconnected; resuming the log"), "{stderr}");
    let fleet = lab.stub.fleet();
    let (first, resumed) = (&fleet.logs[1], &fleet.logs[2]);
    assert_eq!(
        (first.tail, first.follow, first.since_unix_us),
        (10, true, 0)
    );
    assert_eq!(
        (resumed.tail, resumed.follow, resumed.since_unix_us),
        (0, true, T + SEC)
    );
}

#[test]
fn nodes_table_node_info_and_json() {
    let lab = Lab::start();
    {
        let mut fleet = lab.stub.fleet();
        let mut hot = node("jetson-01", v1::ThermalState::Warn, 78.5);
        hot.cordoned = true;
        hot.cordon_reason = "too hot to trust".into();
        fleet.nodes.insert("jetson-01".into(), hot);
        fleet.nodes.insert(
            "jetson-03".into(),
            node("jetson-03", v1::ThermalState::Normal, 51.0),
        );
    }
    let run = lab.run(&["nodes"]).expect_code(0);
    assert_eq!(
        run.stdout,
        "\
NAME       STATE     THERMAL         LOAD         MEMORY  POWER  EXPERIMENTS  LABELS
jetson-01  cordoned  warn 78.5 °C    2.50  16.0/64.0 GiB  MAXN           1/4  model=agx-orin
jetson-03  ready     normal 51.0 °C  2.50  16.0/64.0 GiB  MAXN           1/4  model=agx-orin
"
    );
    // Narrow terminals cut the labels, never names or numbers.
    let run = common::run(lab.home.command().args(["nodes"]).env("COLUMNS", "90")).expect_code(0);
    assert!(
        run.stdout.lines().all(|l| l.chars().count() <= 90),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("  1/4  model=agx-o…\n"),
        "{}",
        run.stdout
    );
    let v = lab.json(&["nodes", "--label", "model=agx-orin"]);
    assert_eq!(v["nodes"][0]["state"], "cordoned");
    assert_eq!(v["nodes"][0]["telemetry"]["hottest_c"], 78.5);
    assert_eq!(v["nodes"][1]["info"]["l4t_release"], "R36.4.3");
    let req = lab.stub.fleet().list_nodes.last().unwrap().clone();
    assert_eq!(
        req.labels.get("model").map(String::as_str),
        Some("agx-orin")
    );

    let run = lab.run(&["node", "info", "jetson-01"]).expect_code(0);
    for want in [
        "node:         jetson-01\n",
        "state:        cordoned (too hot to trust)\n",
        "thermal:      warn, hottest cpu-thermal at 78.5 °C\n",
        "power mode:   MAXN (id 0)\n",
        "cpu-thermal  78.5 °C\n",
    ] {
        assert!(
            run.stdout.contains(want),
            "missing {want:?} in\n{}",
            run.stdout
        );
    }
    assert_eq!(
        lab.stub.fleet().list_nodes.last().unwrap().names,
        vec!["jetson-01"]
    );
    let v = lab.json(&["--node", "jetson-03", "node", "info"]);
    assert_eq!(v["name"], "jetson-03");
    assert_eq!(v["info"]["critical_c"], 85.0);
    assert_eq!(v["experiments"], serde_json::json!(["a-run"]));
    let run = lab.run(&["node", "info", "jetson-77"]).expect_code(3);
    assert!(
        run.stderr.contains("knows no node \"jetson-77\""),
        "{}",
        run.stderr
    );
}

#[test]
fn node_cordon_drain_label_and_power() {
    let lab = Lab::start();
    lab.stub.fleet().nodes.insert(
        "jetson-03".into(),
        node("jetson-03", v1::ThermalState::Normal, 51.0),
    );
    let run = lab
        .run(&["node", "cordon", "jetson-03", "--reason", "fan"])
        .expect_code(0);
    assert_eq!(
        run.stdout,
        "cordoned jetson-03: nothing new is placed there; its experiment a-run will keep running\n"
    );
    let v = lab.json(&["node", "cordon", "jetson-03"]);
    assert_eq!(
        (v["cordoned"].as_bool(), v["state"].as_str()),
        (Some(true), Some("cordoned"))
    );
    let run = lab.run(&["node", "uncordon", "jetson-03"]).expect_code(0);
    assert_eq!(run.stdout, "jetson-03 takes new work again\n");
    let run = lab.run(&["node", "uncordon", "jetson-02"]).expect_code(4);
    assert!(run.stderr.contains("it takes an admin"), "{}", run.stderr);
    assert_eq!(
        lab.stub.fleet().node_calls,
        vec![
            "cordon jetson-03 fan",
            "cordon jetson-03 ",
            "uncordon jetson-03"
        ]
    );

    let run = lab
        .run(&["node", "drain", "jetson-03", "--requeue"])
        .expect_code(0);
    assert_eq!(
        run.stdout,
        "draining jetson-03: stopping 1 experiment and queueing it again: a-run\n"
    );
    let v = lab.json(&[
        "node",
        "drain",
        "jetson-03",
        "--wait",
        "--reason",
        "kernel update",
    ]);
    assert_eq!(v["mode"], "wait");
    assert_eq!(v["experiments"], serde_json::json!(["a-run"]));
    assert_eq!(v["node"]["drain_mode"], "wait");
    let drains = lab.stub.fleet().drains.clone();
    assert_eq!(drains[0].mode, v1::DrainMode::Requeue as i32);
    assert_eq!(drains[1].mode, v1::DrainMode::Wait as i32);
    assert_eq!(drains[1].reason, "kernel update");
    lab.run(&["node", "drain", "nope"]).expect_code(3);

    let run = lab
        .run(&["node", "label", "jetson-03", "room=b12", "model-"])
        .expect_code(0);
    assert_eq!(run.stdout, "labels of jetson-03: room=b12\n");
    let req = lab.stub.fleet().set_labels[0].clone();
    assert_eq!(req.labels.get("room").map(String::as_str), Some("b12"));
    assert_eq!(req.remove, vec!["model"]);

    // Refused while an experiment there asks for another mode: exit 4
    // with the controller's reason; --force switches.
    let run = lab.run(&["power", "jetson-03", "MODE_30W"]).expect_code(4);
    assert_eq!(
        run.stderr,
        "fleetctl: power jetson-03 MODE_30W: a-run placed on jetson-03 asks for MAXN; pass force to switch anyway\n"
    );
    let run = lab
        .run(&[
            "power",
            "jetson-03",
            "MODE_30W",
            "--force",
            "--allow-reboot",
        ])
        .expect_code(0);
    assert_eq!(
        run.stdout,
        "power mode of jetson-03 is now MODE_30W (id 2)\n"
    );
    let req = lab.stub.fleet().power.last().unwrap().clone();
    assert_eq!(
        (
            req.node.as_str(),
            req.mode.as_str(),
            req.allow_reboot,
            req.force
        ),
        ("jetson-03", "MODE_30W", true, true)
    );
    let v = lab.json(&["--node", "jetson-03", "power", "MODE_30W", "--force"]);
    assert_eq!(
        v,
        serde_json::json!({"node": "jetson-03", "mode": {"id": 2, "name": "MODE_30W"}, "changed": true, "reboot_required": false})
    );

    assert_eq!(lab.stub.fleet().power.len(), 3);
}

#[test]
fn clocks_through_the_controller() {
    let lab = Lab::start();
    for name in ["jetson-02", "jetson-03"] {
        lab.stub
            .fleet()
            .nodes
            .insert(name.into(), node(name, v1::ThermalState::Normal, 51.0));
    }
    let run = lab.run(&["clocks", "jetson-03", "on"]).expect_code(0);
    assert_eq!(run.stdout, "jetson_clocks of jetson-03 is now on\n");
    let req = lab.stub.fleet().clocks.last().unwrap().clone();
    assert_eq!((req.node.as_str(), req.enabled), ("jetson-03", true));
    let v = lab.json(&["--node", "jetson-03", "clocks", "off"]);
    assert_eq!(
        v,
        serde_json::json!({"node": "jetson-03", "enabled": false})
    );
    // The node is needed; the state is checked before any call.
    let run = lab.run(&["clocks", "on"]).expect_code(2);
    assert!(run.stderr.contains("name the board"), "{}", run.stderr);
    lab.run(&["clocks", "jetson-03", "maybe"]).expect_code(2);
    assert_eq!(lab.stub.fleet().clocks.len(), 2);
    // Unknown node: 3; the board refuses: 4, with the controller's words.
    let run = lab.run(&["clocks", "jetson-09", "on"]).expect_code(3);
    assert!(run.stderr.contains("jetson-09"), "{}", run.stderr);
    let run = lab.run(&["clocks", "jetson-02", "on"]).expect_code(4);
    assert_eq!(
        run.stderr,
        "fleetctl: clocks jetson-02 on: the agent of jetson-02 refused to turn jetson_clocks on: \
         no jetson_clocks on this board\n"
    );
}

#[test]
fn policy_get_and_set() {
    let lab = Lab::start();
    let run = lab.run(&["policy", "get"]).expect_code(0);
    assert_eq!(
        redact(&run.stdout)
            .lines()
            .map(|l| l.split(" (").next().unwrap())
            .collect::<Vec<_>>(),
        [
            "policy:        balanced",
            "weights:       temperature 0.40, load 0.30, memory 0.20, spread 0.10, pack 0.00",
            "strict order:  off: experiments that fit pass one that cannot be placed",
            "temp margin:   5.0 °C: a board is too hot from its warn temperature minus this",
            "updated:       <time>",
        ]
    );
    let v = lab.json(&["policy", "get"]);
    assert_eq!(v["name"], "balanced");
    assert_eq!(v["weights"]["spread"], 0.1);
    assert_eq!(v["updated_by"], "config");
    // A partial change of the policy in effect keeps the other weights.
    let v = lab.json(&[
        "policy",
        "set",
        "balanced",
        "--weight",
        "temperature=0.7,pack=0.1",
        "--strict-order",
        "on",
    ]);
    assert_eq!(v["weights"]["temperature"], 0.7);
    assert_eq!(v["weights"]["load"], 0.3);
    assert_eq!(v["strict_order"], true);
    let req = lab.stub.fleet().set_policies[0].clone();
    let w = req.weights.unwrap();
    assert_eq!((w.temperature, w.load, w.pack), (0.7, 0.3, 0.1));
    assert_eq!((req.strict_order, req.temp_margin_c), (Some(true), None));

    let run = lab.run(&["policy", "set", "coolest"]).expect_code(0);
    assert!(
        run.stdout.starts_with("policy:        coolest\n"),
        "{}",
        run.stdout
    );
    assert_eq!(lab.stub.fleet().set_policies[1].weights, None);
    // Part of another policy's weights cannot be kept: usage, nothing sent.
    let run = lab
        .run(&["policy", "set", "pack", "--weight", "pack=1"])
        .expect_code(2);
    assert!(run.stderr.contains("give all five"), "{}", run.stderr);
    assert_eq!(lab.stub.fleet().set_policies.len(), 2);
    let run = lab.run(&["policy", "set", "hottest"]).expect_code(1);
    assert!(
        run.stderr.contains("policy \"hottest\" is unknown"),
        "{}",
        run.stderr
    );
}

#[test]
fn watch_follows_experiment_events_from_now() {
    let lab = Lab::start();
    // In the log already: `watch` starts from now, so it is not shown.
    lab.stub.phase_change(
        "a",
        v1::ExperimentPhase::Queued,
        v1::ExperimentPhase::Placing,
    );
    // One new event, then the stream fails for a reason a reconnect cannot
    // fix: exit 4 with the controller's message.
    lab.stub.fleet().watch_scripts.push_back(WatchScript {
        upto: None,
        live: vec![v1::Event {
            seq: 2,
            timestamp_unix_us: T,
            kind: v1::EventKind::PhaseChanged as i32,
            experiment: "a".into(),
            node: "jetson-03".into(),
            from: v1::ExperimentPhase::Placing as i32,
            to: v1::ExperimentPhase::Running as i32,
            actor: "agent/jetson-03".into(),
            ..Default::default()
        }],
        end: End::Fail(Status::permission_denied("viewer certificate revoked")),
    });
    let run = lab.run(&["watch", "a"]).expect_code(4);
    assert_eq!(
        redact(&run.stdout),
        "#2  <time>  phase-changed  a  jetson-03  placing → running  (by agent/jetson-03)\n"
    );
    assert_eq!(run.stderr, "fleetctl: events: viewer certificate revoked\n");
    let req = lab.stub.fleet().watches[0].clone();
    assert_eq!(req.from_seq, None);
    let filter = req.filter.unwrap();
    assert_eq!(filter.experiments, vec!["a"]);
    assert!(filter.kinds.contains(&(v1::EventKind::PhaseChanged as i32)));
}

#[test]
fn an_unreachable_controller_is_an_error_with_the_address() {
    let mut lab = Lab::start();
    let addr = lab.addr.to_string();
    lab.stop();
    let run = lab.run(&["ps"]).expect_code(1);
    assert!(
        run.stderr
            .starts_with(&format!("fleetctl: cannot open a gRPC channel to {addr}")),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}
