//! `fleet-dev`: a local fleet of simulated Jetsons for a person to try.
//!
//! `fleet-dev up [--nodes N] [--dir D] [--demo] [--detach]` makes a fleet
//! CA, starts N boards (each a private systemd manager with its own bus,
//! journal, mount namespace and cgroup, and simulated Jetson hardware: a
//! fixture board's sysfs whose temperatures follow the CPU use of its
//! experiments, and `fleet-sim-nvpmodel`) with a real `fleet-agent` on each
//! and a `fleet-controller` beside them, writes `D/fleet.json` and a
//! fleetctl config, and stays in the foreground with a live summary until
//! Ctrl-C (or SIGTERM). `--detach` runs the same in the background, its
//! output in `D/fleet-dev.log`, and returns once the fleet is ready.
//! `fleet-dev down --dir D` stops a running one, or cleans up after one that
//! was killed. Either way no process, mount or cgroup is left behind.
//!
//! `--demo` submits a sample queue through the controller and narrates what
//! happens: placement by temperature, a thermal stop with requeue, crash
//! restarts at the restart limit, an OOM kill and a power-mode switch; it
//! ends with a table of how each experiment ended against what was expected
//! (`--once` then exits, non-zero when one did not).
//!
//! `fleet-dev heat` pins a board's zone (a scripted heat event) while the
//! fleet runs; `fleet-dev watch` follows a board's telemetry (`WatchNode`).
//!
//! Faults: `fleet-dev restart controller|agent NODE`, `kill controller|agent
//! NODE [--signal KILL|TERM|STOP|CONT]`, `start controller|agent NODE` and
//! `reboot NODE` are requests to the running `up`, which owns the processes
//! and boards: one JSON line over the Unix socket `D/fleet-dev.sock`,
//! answered with one JSON line once the action is done (see [`Control`]).
//! The controller and the agents keep their address and port across
//! restarts (each is started once on port 0 and its config then names the
//! port it got). `up --controller-set KEY=VALUE` and `--agent-set KEY=VALUE`
//! change the daemons' configs; the daemons' own `check-config` refuses an
//! unknown key or a bad value before anything starts.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use fleet_proto::identity::Role;
use fleet_proto::v1::{
    self, agent_client::AgentClient, controller_client::ControllerClient, ExperimentPhase,
};
use fleet_testbed::agent::{AgentHandle, AgentOptions};
use fleet_testbed::controller::{ControllerHandle, ControllerOptions};
use fleet_testbed::hwsim::{self, Fixture, HwSim, ThermalParams};
use fleet_testbed::pki::{CertFiles, TestPki};
use fleet_testbed::process::Signal;
use fleet_testbed::settings::Setting;
use fleet_testbed::testbed::{Board, Layout, Testbed};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// The running `up`'s process id, one line.
const PIDFILE: &str = "fleet-dev.pid";
/// Where a detached `up` writes its output.
const LOGFILE: &str = "fleet-dev.log";
const FLEET_JSON: &str = "fleet.json";
/// The running `up`'s control socket: `restart`, `kill`, `start` and
/// `reboot` send it their request.
const SOCKET: &str = "fleet-dev.sock";
/// How long a restarted controller or agent may take to answer again.
const SERVING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `up --detach` waits for the fleet to be ready.
const DETACH_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `down` waits for a running `up` to stop after SIGTERM.
const DOWN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the demo lets a heater warm its board towards the next step of
/// the story before a scripted heat event takes over (a busy machine gives
/// the heater too little CPU).
const HEAT_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "fleet-dev",
    about = "A local fleet of simulated Jetson boards",
    after_help = "Faults, from another shell while `up` runs (foreground or --detach):\n  \
        fleet-dev restart controller | agent NODE      stop gracefully, start again on the same port\n  \
        fleet-dev kill controller | agent NODE [--signal KILL|TERM|STOP|CONT]\n                                                 \
        KILL (default) and TERM end it, not restarted; STOP freezes it\n                                                 \
        (a partition-like silence), CONT thaws it\n  \
        fleet-dev start controller | agent NODE        start it again after a kill\n  \
        fleet-dev reboot NODE                          reboot a board: its systemd stops every unit,\n                                                 \
        /run is wiped, enabled units start again, the agent comes back\n\
        Each waits until it is done (answering again, frozen, rebooted) and exits non-zero, saying why, when not.\n\
        Settings at up: --controller-set heartbeat_timeout_s=5, --agent-set guard.cooldown_s=1 (repeatable;\n\
        keys as `fleet-controller gen-config` / `fleet-agent gen-config` print them; an unknown key is refused)."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the fleet and stay in the foreground until Ctrl-C.
    Up(UpArgs),
    /// Stop the fleet `up` runs in a directory (in another terminal or
    /// detached), or clean up after one that was killed.
    Down {
        /// The directory given to `up`.
        #[arg(long, default_value = "fleet-dev")]
        dir: PathBuf,
    },
    /// Pin a zone of a running board at a temperature (a heat event), or
    /// hand it back to the thermal model with --release.
    Heat {
        /// The directory given to `up`.
        #[arg(long, default_value = "fleet-dev")]
        dir: PathBuf,
        /// The board, e.g. jetson-01.
        node: String,
        /// The zone: cpu, gpu, tj, tboard, … (or as the kernel names it).
        zone: String,
        /// Degrees Celsius.
        #[arg(required_unless_present = "release")]
        celsius: Option<f64>,
        #[arg(long, conflicts_with = "celsius")]
        release: bool,
    },
    /// Stop the controller or a board's agent gracefully and start it
    /// again on the same address; waits until it answers again.
    Restart {
        /// The directory given to `up`.
        #[arg(long, default_value = "fleet-dev")]
        dir: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Send a signal to the controller or a board's agent, without
    /// restarting it: KILL (kill -9, the default) and TERM end it (`start`
    /// brings it back), STOP freezes it (connections stay open, nothing
    /// answers: a partition-like silence), CONT thaws it.
    Kill {
        /// The directory given to `up`.
        #[arg(long, default_value = "fleet-dev")]
        dir: PathBuf,
        #[command(flatten)]
        target: Target,
        /// KILL, TERM, STOP or CONT.
        #[arg(long, default_value = "KILL")]
        signal: Signal,
    },
    /// Start the controller or a board's agent again after `kill`, on the
    /// same address; waits until it answers.
    Start {
        /// The directory given to `up`.
        #[arg(long, default_value = "fleet-dev")]
        dir: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Reboot a board: its systemd stops every unit and exits, its /run is
    /// wiped, a new systemd starts what is enabled, and its agent starts
    /// again (an enabled service on a real board); waits until the agent
    /// answers.
    Reboot {
        /// The directory given to `up`.
        #[arg(long, default_value = "fleet-dev")]
        dir: PathBuf,
        /// The board, e.g. jetson-01.
        node: String,
    },
    /// Follow a board's telemetry and events (`WatchNode`), one line each.
    Watch {
        /// The directory given to `up`.
        #[arg(long, default_value = "fleet-dev")]
        dir: PathBuf,
        /// The board; the first one when absent.
        node: Option<String>,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u32,
        /// Stop after this many seconds (and print how many samples came).
        #[arg(long)]
        duration_s: Option<u64>,
        /// Print only the final count.
        #[arg(long)]
        quiet: bool,
    },
}

/// `controller`, or `agent NODE`.
#[derive(Args, Clone)]
struct Target {
    /// controller or agent.
    which: Daemon,
    /// The agent's board, e.g. jetson-01.
    #[arg(required_if_eq("which", "agent"))]
    node: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Daemon {
    Controller,
    Agent,
}

#[derive(Args, Clone)]
struct UpArgs {
    /// How many boards (default 1; 3 with --demo).
    #[arg(long)]
    nodes: Option<u8>,
    /// Where to write fleet.json, certificates and the fleetctl config.
    #[arg(long, default_value = "fleet-dev")]
    dir: PathBuf,
    /// Run the sample queue and narrate it.
    #[arg(long)]
    demo: bool,
    /// Exit once started (or, with --demo, once the demo ended) instead of
    /// waiting for Ctrl-C.
    #[arg(long, conflicts_with = "detach")]
    once: bool,
    /// Run in the background (output in <dir>/fleet-dev.log) and return once
    /// the fleet is ready; `fleet-dev down` stops it.
    #[arg(long)]
    detach: bool,
    /// The boards' hardware, one fixture per board in turn
    /// (agx-orin-r36, orin-nx, agx-orin-r35).
    #[arg(long, value_delimiter = ',', default_values_t = [Fixture::AgxOrinR36, Fixture::OrinNx, Fixture::AgxOrinR35])]
    boards: Vec<Fixture>,
    /// The agents' sampling interval (their default when absent; 500 ms
    /// with --demo).
    #[arg(long)]
    sampling_ms: Option<u64>,
    /// How long the demo may take before it is reported as incomplete.
    #[arg(long, default_value_t = 180)]
    demo_deadline_s: u64,
    /// Set a key of the controller's config, e.g. heartbeat_timeout_s=5
    /// (repeatable; `fleet-controller gen-config` prints the keys). The
    /// value is TOML; an unknown key or a bad value is refused before
    /// anything starts.
    #[arg(long = "controller-set", value_name = "KEY=VALUE")]
    controller_set: Vec<Setting>,
    /// Set a key of every agent's config, e.g. guard.cooldown_s=1 (dotted
    /// for sections; repeatable; `fleet-agent gen-config` prints the keys).
    /// Checked like --controller-set.
    #[arg(long = "agent-set", value_name = "KEY=VALUE")]
    agent_set: Vec<Setting>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Up(args) if args.detach => detach(&args),
        Cmd::Up(args) => up(args).await,
        Cmd::Down { dir } => down(&dir),
        Cmd::Heat {
            dir,
            node,
            zone,
            celsius,
            release,
        } => heat(&dir, &node, &zone, celsius.filter(|_| !release)),
        Cmd::Watch {
            dir,
            node,
            interval_ms,
            duration_s,
            quiet,
        } => watch(&dir, node.as_deref(), interval_ms, duration_s, quiet).await,
        Cmd::Restart { dir, target } => send_control(&dir, target.request("restart", None)?).await,
        Cmd::Kill {
            dir,
            target,
            signal,
        } => send_control(&dir, target.request("kill", Some(signal))?).await,
        Cmd::Start { dir, target } => send_control(&dir, target.request("start", None)?).await,
        Cmd::Reboot { dir, node } => {
            send_control(
                &dir,
                serde_json::json!({ "action": "reboot", "node": node }),
            )
            .await
        }
    }
}

impl Target {
    /// The request for the control socket.
    fn request(&self, action: &str, signal: Option<Signal>) -> anyhow::Result<serde_json::Value> {
        let target = match (self.which, &self.node) {
            (Daemon::Controller, Some(node)) => anyhow::bail!(
                "the controller belongs to no board: give no node ({node:?}), or say `agent {node}`"
            ),
            (Daemon::Controller, None) => "controller",
            (Daemon::Agent, _) => "agent",
        };
        Ok(serde_json::json!({
            "action": action,
            "target": target,
            "node": self.node,
            "signal": signal.map(|s| s.to_string()),
        }))
    }
}

// ---------------------------------------------------------------------------
// up

/// What runs, filled in as it starts, so that a stop at any moment tears
/// down what there is.
#[derive(Default)]
struct Fleet {
    boards: Vec<Board>,
    fixtures: Vec<Fixture>,
    hardware: Vec<HwSim>,
    /// Shared with the control socket, which restarts and kills them.
    agents: Vec<Arc<Mutex<AgentHandle>>>,
    controller: Option<Arc<Mutex<ControllerHandle>>>,
    admin: Option<CertFiles>,
}

/// The agents' options for `args` (the board's simulated hardware when
/// there is one).
fn agent_options(args: &UpArgs, hardware: Option<HwSim>) -> AgentOptions {
    AgentOptions {
        hardware,
        sampling_ms: args.sampling_ms.or(args.demo.then_some(500)),
        // The demo's boards cool down quickly after a thermal stop.
        guard_toml: args.demo.then(|| "[guard]\ncooldown_s = 5\n".to_owned()),
        settings: args.agent_set.clone(),
        ..AgentOptions::default()
    }
}

fn controller_options(args: &UpArgs) -> ControllerOptions {
    let (tick_ms, telemetry_interval_ms) = if args.demo { (250, 500) } else { (500, 1000) };
    ControllerOptions {
        tick_ms,
        telemetry_interval_ms,
        settings: args.controller_set.clone(),
        ..ControllerOptions::default()
    }
}

/// Refuses, before anything starts, a --controller-set or --agent-set the
/// daemon would refuse (their own `check-config` decides).
fn check_settings(args: &UpArgs) -> anyhow::Result<()> {
    controller_options(args)
        .check()
        .context("--controller-set: the controller would refuse its config; nothing was started")?;
    agent_options(args, None)
        .check()
        .context("--agent-set: the agents would refuse their config; nothing was started")?;
    Ok(())
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    check_settings(&args)?;
    let nodes = args.nodes.unwrap_or(if args.demo { 3 } else { 1 });
    anyhow::ensure!(
        (1..=50).contains(&nodes),
        "--nodes must be between 1 and 50"
    );
    anyhow::ensure!(
        !args.demo || nodes >= 2,
        "the demo needs at least 2 boards (it shows placement by temperature)"
    );
    anyhow::ensure!(
        !args.boards.is_empty(),
        "--boards needs at least one fixture"
    );
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    if let Some(pid) = running_owner(&dir) {
        anyhow::bail!(
            "fleet-dev already runs in {} (pid {pid}); stop it with `fleet-dev down --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let cleaned = clean_leftovers(&dir)?;
    if !cleaned.is_empty() {
        println!(
            "cleaned up after an earlier fleet-dev in {} that did not stop: {}",
            dir.display(),
            cleaned.join("; ")
        );
    }
    // Every `up` starts a new fleet: a new CA, a new queue.
    let controller_dir = dir.join("controller");
    if controller_dir.exists() {
        std::fs::remove_dir_all(&controller_dir)
            .with_context(|| format!("remove {}", controller_dir.display()))?;
    }
    let me = std::process::id();
    std::fs::write(dir.join(PIDFILE), format!("{me}\n"))?;
    let mut stop = StopSignals::new()?;

    let bed = match Testbed::try_new("fleet-dev").await {
        Ok(bed) => bed,
        Err(e) => {
            let _ = std::fs::remove_file(dir.join(PIDFILE));
            return Err(e.context(
                "cannot start simulated boards here (fleet-dev needs root and systemd installed)",
            ));
        }
    };
    let mut state = serde_json::json!({
        "state": "starting",
        "pid": me,
        "pid_start_time": process_start_time(me),
        "testbed": { "run_dir": bed.dir(), "cgroup": bed.cgroup() },
        "controller_config": controller_dir.join("controller.toml"),
    });
    write_json(&dir.join(FLEET_JSON), &state)?;

    let mut bed = bed;
    let mut fleet = Fleet::default();
    let result = tokio::select! {
        r = run(&args, nodes, &dir, &mut bed, &mut fleet, &mut state) => r,
        signal = stop.recv() => {
            println!("\n{signal}");
            Ok(())
        }
    };
    println!("stopping…");
    let controller_config = dir.join("controller/controller.toml");
    drop(fleet);
    // The controller got SIGKILL when its handle went; wait until it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_with_arg(&controller_config).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shutdown = bed.shutdown().await;
    // What the control socket changed (pids) stays; the state does not.
    if let Ok(file) = FleetFile::read(&dir) {
        if file.json["pid"] == me {
            state = file.json;
        }
    }
    state["state"] = "stopped".into();
    let _ = write_json(&dir.join(FLEET_JSON), &state);
    let _ = std::fs::remove_file(dir.join(SOCKET));
    let _ = std::fs::remove_file(dir.join(PIDFILE));
    shutdown?;
    println!("stopped; nothing left running");
    result
}

/// SIGINT and SIGTERM, as one stream.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "interrupted (Ctrl-C)",
            _ = self.term.recv() => "asked to stop (SIGTERM)",
        }
    }
}

async fn run(
    args: &UpArgs,
    nodes: u8,
    dir: &Path,
    bed: &mut Testbed,
    fleet: &mut Fleet,
    state: &mut serde_json::Value,
) -> anyhow::Result<()> {
    let pki = TestPki::new(&dir.join("pki"))?;
    let names: Vec<String> = (1..=nodes).map(|i| format!("jetson-{i:02}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    println!("starting {} simulated board(s)…", names.len());
    fleet.boards = bed.add_boards(&name_refs).await?;
    for (i, board) in fleet.boards.clone().iter().enumerate() {
        let fixture = args.boards[i % args.boards.len()];
        let params = if args.demo {
            demo_thermal(i == 0)
        } else {
            ThermalParams::default()
        };
        let hw = HwSim::install(board, fixture, params)
            .with_context(|| format!("simulated hardware for {}", board.name()))?;
        hw.install_jetson_clocks()
            .with_context(|| format!("jetson_clocks for {}", board.name()))?;
        hw.start_thermal_model(board)?;
        fleet.hardware.push(hw.clone());
        fleet.fixtures.push(fixture);
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, i as u8 + 1));
        let agent = AgentHandle::start_with(board, &pki, ip, agent_options(args, Some(hw))).await?;
        // Restarts, kills and reboots bring it back on the same port.
        agent.keep_address()?;
        println!(
            "  {} ({}, {}) agent at {}",
            board.name(),
            fixture,
            fixture.model(),
            agent.addr
        );
        fleet.agents.push(Arc::new(Mutex::new(agent)));
    }
    let admin = pki.user("dev-admin", Role::Admin)?;
    fleet.admin = Some(admin.clone());
    let mut agent_handles = Vec::new();
    for a in &fleet.agents {
        agent_handles.push(a.lock().await);
    }
    let agent_refs: Vec<&AgentHandle> = agent_handles.iter().map(|a| &**a).collect();
    let controller = ControllerHandle::start(
        &dir.join("controller"),
        &pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, 100)),
        &agent_refs,
        &controller_options(args),
    )
    .await?;
    drop(agent_refs);
    drop(agent_handles);
    controller.keep_address()?;
    println!("  controller at {}", controller.addr);
    let controller_addr = controller.addr;
    fleet.controller = Some(Arc::new(Mutex::new(controller)));
    let control = Control::new(dir, fleet, &admin)?;
    let listener = control.bind()?;
    write_fleet_files(dir, &pki, &admin, fleet, state).await?;
    let controller = connect_controller(controller_addr, &admin).await?;
    if args.once && !args.demo {
        return Ok(());
    }
    tokio::select! {
        r = serve_fleet(args, dir, fleet, controller, &admin) => r,
        r = control.serve(listener) => r,
    }
}

/// The controller's gRPC client as `admin`. It reconnects by itself after
/// the controller restarts (on the same address).
async fn connect_controller(
    addr: std::net::SocketAddr,
    admin: &CertFiles,
) -> anyhow::Result<ControllerClient<Channel>> {
    Ok(ControllerClient::new(
        admin
            .client()?
            .connect(addr, fleet_proto::tls::Expect::Controller)
            .await?,
    ))
}

/// The demo (with --demo), then the live summary until stopped.
async fn serve_fleet(
    args: &UpArgs,
    dir: &Path,
    fleet: &Fleet,
    controller: ControllerClient<Channel>,
    admin: &CertFiles,
) -> anyhow::Result<()> {
    if args.demo {
        let outcome = run_demo(
            controller.clone(),
            fleet,
            Duration::from_secs(args.demo_deadline_s),
        )
        .await?;
        let mut c = fleet.agents[0].lock().await.client_as(admin).await?;
        show_node(&mut c).await?;
        if args.once {
            anyhow::ensure!(
                outcome.all_as_expected(),
                "the demo did not end as expected: {}",
                outcome.unexpected().join(", ")
            );
            return Ok(());
        }
    }
    if args.once {
        return Ok(());
    }
    println!(
        "\nfleet is up; Ctrl-C stops it (or, from another shell, fleet-dev down --dir {})",
        dir.display()
    );
    live_summary(controller).await
}

/// The demo's thermal model: quick (τ = 6 s), and one board with a weak
/// fan, which one busy core takes past the guard's critical 85 °C while it
/// warms the others by 25 °C.
fn demo_thermal(weak_fan: bool) -> ThermalParams {
    ThermalParams {
        ambient_c: 35.0,
        per_core_c: if weak_fan { 200.0 } else { 25.0 },
        tau: Duration::from_secs(6),
        tick: Duration::from_millis(250),
        ceiling_c: 100.0,
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    hwsim::write_atomic(path, &serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("write {}", path.display()))
}

/// What fleet.json says of a running agent or controller.
struct Endpoint {
    addr: std::net::SocketAddr,
    pid: Option<u32>,
    log: PathBuf,
}

async fn write_fleet_files(
    dir: &Path,
    pki: &TestPki,
    admin: &CertFiles,
    fleet: &Fleet,
    state: &mut serde_json::Value,
) -> anyhow::Result<()> {
    let controller = {
        let mut c = fleet
            .controller
            .as_ref()
            .context("no controller")?
            .lock()
            .await;
        Endpoint {
            addr: c.addr,
            pid: c.running_pid(),
            log: c.log.clone(),
        }
    };
    let mut agents = Vec::new();
    for a in &fleet.agents {
        let mut a = a.lock().await;
        agents.push(Endpoint {
            addr: a.addr,
            pid: a.running_pid(),
            log: a.log.clone(),
        });
    }
    let nodes: Vec<serde_json::Value> = fleet
        .boards
        .iter()
        .zip(&agents)
        .zip(&fleet.hardware)
        .map(|((b, a), hw)| {
            serde_json::json!({
                "name": b.name(),
                "agent": a.addr.to_string(),
                "agent_pid": a.pid,
                "dir": b.dir(),
                "agent_log": a.log,
                "hardware": hw.fixture().name(),
                "hw_dir": hw.root(),
                "sysfs": hw.sysfs_root(),
                "heat_file": hw.heat_file(),
                "mount_namespace": b.mount_namespace(),
            })
        })
        .collect();
    state["state"] = "ready".into();
    state["fleet"] = fleet_testbed::pki::FLEET.into();
    state["ca"] = serde_json::json!(pki.ca_path);
    state["admin_cert"] = serde_json::json!(admin.cert);
    state["admin_key"] = serde_json::json!(admin.key);
    state["controller"] = controller.addr.to_string().into();
    state["controller_pid"] = controller.pid.into();
    state["controller_log"] = serde_json::json!(controller.log);
    state["control_socket"] = serde_json::json!(dir.join(SOCKET));
    state["nodes"] = nodes.into();
    let mut ctl = format!(
        "current_context = \"dev\"\n\n[contexts.dev]\ncontroller = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        controller.addr.to_string(),
        pki.ca_path,
        admin.cert,
        admin.key
    );
    for (b, a) in fleet.boards.iter().zip(&agents) {
        ctl.push_str(&format!(
            "\n[contexts.{name}]\nagent = {:?}\nnode = {name:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            a.addr.to_string(),
            pki.ca_path,
            admin.cert,
            admin.key,
            name = b.name(),
        ));
    }
    let ctl_path = dir.join("fleetctl.toml");
    std::fs::write(&ctl_path, &ctl)?;
    let default = install_default_config(&ctl, dir)?;
    // fleet.json last: "ready" means everything else is there.
    write_json(&dir.join(FLEET_JSON), state)?;
    let export = match &default {
        Some(path) => format!(
            "(fleetctl's default config, {}, now points at this fleet)",
            path.display()
        ),
        None => format!("  export FLEET_CONFIG_FILE={}", ctl_path.display()),
    };
    println!(
        "\nwrote {}/fleet.json and {}\ntry, in another shell:\n{}\n  cargo run -q -p fleetctl -- nodes\n  cargo run -q -p fleetctl -- ps\n  cargo run -q -p fleet-testbed --bin fleet-dev -- heat --dir {} {} gpu 80   # a heat event; --release ends it\n  cargo run -q -p fleet-testbed --bin fleet-dev -- watch --dir {}\n  cargo run -q -p fleet-testbed --bin fleet-dev -- restart --dir {} controller   # also: kill, start, reboot (see --help)\n  cargo run -q -p fleet-testbed --bin fleet-dev -- down --dir {}",
        dir.display(),
        ctl_path.display(),
        export,
        dir.display(),
        fleet.boards[0].name(),
        dir.display(),
        dir.display(),
        dir.display(),
    );
    Ok(())
}

/// The first line of a fleetctl config fleet-dev wrote, and may write again.
const DEFAULT_CONFIG_MARK: &str = "# Written by fleet-dev";

/// Makes the dev fleet fleetctl's default, so that a plain `fleetctl nodes`
/// works: writes `$XDG_CONFIG_HOME/fleet/fleetctl.toml` (else
/// `~/.config/fleet/fleetctl.toml`) when there is none, or when fleet-dev
/// wrote the one there. A config of the person's own, or one named by
/// `FLEET_CONFIG_FILE`, is left alone. Where it wrote, if it did.
fn install_default_config(ctl: &str, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if std::env::var_os("FLEET_CONFIG_FILE").is_some() {
        return Ok(None);
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".config"),
            None => return Ok(None),
        },
    };
    let path = base.join("fleet/fleetctl.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.starts_with(DEFAULT_CONFIG_MARK) => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => return Ok(None),
    }
    std::fs::create_dir_all(base.join("fleet"))?;
    let text = format!(
        "{DEFAULT_CONFIG_MARK} for the dev fleet in {}; each `fleet-dev up` rewrites it.\n\
         # Delete this file (or this line) to keep fleet-dev from touching it.\n{ctl}",
        dir.display()
    );
    hwsim::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(Some(path))
}

/// One line whenever the fleet changes (a phase, a placement, a thermal
/// state) and at most every 30 s otherwise, until the process is stopped.
async fn live_summary(mut c: ControllerClient<Channel>) -> anyhow::Result<()> {
    let mut last_key = String::new();
    let mut last_print = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Ok(nodes) = c.list_nodes(v1::ListNodesRequest::default()).await else {
            continue;
        };
        let Ok(list) = c.list(v1::ListRequest::default()).await else {
            continue;
        };
        let mut key = String::new();
        let mut line = String::new();
        for n in &nodes.get_ref().nodes {
            let t = n.telemetry.as_ref();
            let thermal = t.map_or("?".to_owned(), |t| {
                format!("{:?}", t.thermal_state()).to_lowercase()
            });
            key.push_str(&format!(
                "{}:{:?}:{thermal}:{};",
                n.name,
                n.connection(),
                n.experiments.len()
            ));
            line.push_str(&format!(
                "{} {} {} {} exp · ",
                n.name,
                t.and_then(|t| t.hottest_c)
                    .map_or("?".to_owned(), |c| format!("{c:.0}°C")),
                thermal,
                n.experiments.len()
            ));
        }
        let mut phases: BTreeMap<String, usize> = BTreeMap::new();
        for e in &list.get_ref().experiments {
            *phases.entry(phase_name(e.phase())).or_default() += 1;
        }
        let counts: Vec<String> = phases.iter().map(|(p, n)| format!("{n} {p}")).collect();
        key.push_str(&counts.join(","));
        line.push_str(&if counts.is_empty() {
            "no experiments".to_owned()
        } else {
            counts.join(", ")
        });
        if key != last_key || last_print.elapsed() > Duration::from_secs(30) {
            println!("[live] {line}");
            last_key = key;
            last_print = Instant::now();
        }
    }
}

// ---------------------------------------------------------------------------
// The control socket: restart, kill, start, reboot

/// What the control socket acts on: the running `up`'s own processes and
/// boards. Requests come one JSON line per connection, `{"action":
/// "restart"|"kill"|"start"|"reboot", "target": "controller"|"agent",
/// "node": …, "signal": …}`; the answer is one JSON line, `{"ok": true,
/// "message": …}` or `{"ok": false, "error": …}`, sent once the action is
/// done. Actions on different processes run at the same time; actions on
/// one process wait for each other.
#[derive(Clone)]
struct Control {
    dir: PathBuf,
    admin: CertFiles,
    controller: Arc<Mutex<ControllerHandle>>,
    agents: Vec<(Board, Arc<Mutex<AgentHandle>>)>,
}

impl Control {
    fn new(dir: &Path, fleet: &Fleet, admin: &CertFiles) -> anyhow::Result<Control> {
        Ok(Control {
            dir: dir.to_owned(),
            admin: admin.clone(),
            controller: fleet.controller.clone().context("no controller")?,
            agents: fleet
                .boards
                .iter()
                .cloned()
                .zip(fleet.agents.iter().cloned())
                .collect(),
        })
    }

    fn bind(&self) -> anyhow::Result<tokio::net::UnixListener> {
        let path = self.dir.join(SOCKET);
        let _ = std::fs::remove_file(&path);
        with_socket_path(&path, |p| tokio::net::UnixListener::bind(p))
            .with_context(|| format!("listen on {}", path.display()))
    }

    async fn serve(self, listener: tokio::net::UnixListener) -> anyhow::Result<()> {
        let mut connections = futures_util::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => connections.push(self.clone().connection(stream)),
                    Err(e) => eprintln!("[control] accept: {e}"),
                },
                Some(()) = connections.next(), if !connections.is_empty() => {}
            }
        }
    }

    async fn connection(self, stream: tokio::net::UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        let line = match tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            _ => return,
        };
        let started = Instant::now();
        let reply = match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(request) => {
                let what = describe_request(&request);
                println!("[control] {what}…");
                match self.act(&request).await {
                    Ok(message) => {
                        println!("[control] {what}: {message} ({:.1} s)", secs(started));
                        serde_json::json!({ "ok": true, "message": message })
                    }
                    Err(e) => {
                        println!("[control] {what} failed: {e:#}");
                        serde_json::json!({ "ok": false, "error": format!("{e:#}") })
                    }
                }
            }
            Err(e) => serde_json::json!({ "ok": false, "error": format!("not a request: {e}") }),
        };
        if let Err(e) = self.record_pids() {
            println!("[control] cannot update fleet.json: {e:#}");
        }
        let mut text = reply.to_string();
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }

    fn agent(&self, node: Option<&str>) -> anyhow::Result<(&Board, &Arc<Mutex<AgentHandle>>)> {
        let node = node.context("which agent? give its board's name")?;
        self.agents
            .iter()
            .find(|(b, _)| b.name() == node)
            .map(|(b, a)| (b, a))
            .with_context(|| {
                let names: Vec<&str> = self.agents.iter().map(|(b, _)| b.name()).collect();
                format!(
                    "no board {node:?} in this fleet; it has {}",
                    names.join(", ")
                )
            })
    }

    async fn act(&self, request: &serde_json::Value) -> anyhow::Result<String> {
        let action = request["action"].as_str().unwrap_or_default();
        let target = request["target"].as_str();
        let node = request["node"].as_str();
        let signal: Option<Signal> = match request["signal"].as_str() {
            Some(s) => Some(s.parse().map_err(anyhow::Error::msg)?),
            None => None,
        };
        match (action, target) {
            ("reboot", _) => {
                let (board, agent) = self.agent(node)?;
                let mut agent = agent.lock().await;
                let started = Instant::now();
                // As a shutdown does: the agent's service stops with the rest.
                let stopped = agent.stop().await?;
                board
                    .reboot()
                    .await
                    .with_context(|| format!("reboot {}", board.name()))?;
                let rebooted = secs(started);
                agent.start_again(board).await?;
                agent.wait_serving(&self.admin, SERVING_TIMEOUT).await?;
                Ok(format!(
                    "{} rebooted in {rebooted:.1} s{}; its agent serves again at {} (pid {})",
                    board.name(),
                    stop_note("its agent", stopped),
                    agent.addr,
                    pid_text(agent.pid())
                ))
            }
            (_, Some("controller")) => {
                let mut c = self.controller.lock().await;
                let before = c.running_pid();
                let mut note = String::new();
                match action {
                    "restart" => {
                        note = stop_note("it", c.stop().await?);
                        c.start_again().await?;
                    }
                    "start" => c.start_again().await?,
                    "kill" => {
                        let signal = signal.unwrap_or(Signal::Kill);
                        if signal == Signal::Term {
                            anyhow::ensure!(before.is_some(), "the controller is not running");
                            note = stop_note("it", c.stop().await?);
                        } else {
                            c.signal(signal).await?;
                        }
                        return Ok(signalled("the controller", before, signal) + &note);
                    }
                    other => anyhow::bail!("unknown action {other:?}"),
                }
                c.wait_serving(&self.admin, SERVING_TIMEOUT).await?;
                Ok(format!(
                    "the controller answers at {} (pid {}{}){note}",
                    c.addr,
                    pid_text(c.pid()),
                    before.map_or(String::new(), |p| format!(", was {p}"))
                ))
            }
            (_, Some("agent")) => {
                let (board, agent) = self.agent(node)?;
                let what = format!("the agent of {}", board.name());
                let mut a = agent.lock().await;
                let before = a.running_pid();
                let mut note = String::new();
                match action {
                    "restart" => {
                        note = stop_note("it", a.stop().await?);
                        a.start_again(board).await?;
                    }
                    "start" => a.start_again(board).await?,
                    "kill" => {
                        let signal = signal.unwrap_or(Signal::Kill);
                        if signal == Signal::Term {
                            anyhow::ensure!(before.is_some(), "{what} is not running");
                            note = stop_note("it", a.stop().await?);
                        } else {
                            a.signal(signal).await?;
                        }
                        if signal == Signal::Cont {
                            a.wait_serving(&self.admin, SERVING_TIMEOUT).await?;
                        }
                        return Ok(signalled(&what, before, signal) + &note);
                    }
                    other => anyhow::bail!("unknown action {other:?}"),
                }
                a.wait_serving(&self.admin, SERVING_TIMEOUT).await?;
                Ok(format!(
                    "{what} serves at {} (pid {}{}){note}",
                    a.addr,
                    pid_text(a.pid()),
                    before.map_or(String::new(), |p| format!(", was {p}"))
                ))
            }
            (_, other) => anyhow::bail!("unknown target {other:?}: controller or agent"),
        }
    }

    /// Writes the pids as they are now into fleet.json. A process another
    /// action holds is left as it is: that action records it when done.
    fn record_pids(&self) -> anyhow::Result<()> {
        let mut file = FleetFile::read(&self.dir)?;
        if let Ok(mut c) = self.controller.try_lock() {
            file.json["controller_pid"] = c.running_pid().into();
        }
        for (board, agent) in &self.agents {
            let Ok(mut agent) = agent.try_lock() else {
                continue;
            };
            let pid = agent.running_pid();
            if let Some(nodes) = file.json["nodes"].as_array_mut() {
                for n in nodes.iter_mut().filter(|n| n["name"] == board.name()) {
                    n["agent_pid"] = pid.into();
                }
            }
        }
        write_json(&self.dir.join(FLEET_JSON), &file.json)
    }
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// What a reply adds when a graceful stop had to kill.
fn stop_note(who: &str, stopped: fleet_testbed::process::Stopped) -> String {
    match stopped {
        fleet_testbed::process::Stopped::Killed => format!(
            " ({who} did not exit within {:?} of SIGTERM and was killed, as systemd would after TimeoutStopSec)",
            fleet_testbed::process::STOP_GRACE
        ),
        _ => String::new(),
    }
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or("none".to_owned(), |p| p.to_string())
}

fn signalled(what: &str, pid: Option<u32>, signal: Signal) -> String {
    let pid = pid_text(pid);
    match signal {
        Signal::Kill => {
            format!("{what} (pid {pid}) was killed (SIGKILL); `fleet-dev start` brings it back")
        }
        Signal::Term => {
            format!("{what} (pid {pid}) stopped (SIGTERM); `fleet-dev start` brings it back")
        }
        Signal::Stop => format!("{what} (pid {pid}) is frozen (SIGSTOP); `--signal CONT` thaws it"),
        Signal::Cont => format!("{what} (pid {pid}) runs again (SIGCONT)"),
    }
}

/// "restart the agent of jetson-01", for the log.
fn describe_request(r: &serde_json::Value) -> String {
    let action = r["action"].as_str().unwrap_or("?");
    let node = r["node"].as_str().unwrap_or("?");
    match (action, r["target"].as_str()) {
        ("reboot", _) => format!("reboot {node}"),
        ("kill", Some("agent")) => format!(
            "SIG{} to the agent of {node}",
            r["signal"].as_str().unwrap_or("KILL")
        ),
        ("kill", _) => format!(
            "SIG{} to the controller",
            r["signal"].as_str().unwrap_or("KILL")
        ),
        (action, Some("agent")) => format!("{action} the agent of {node}"),
        (action, _) => format!("{action} the controller"),
    }
}

/// Runs `f` on `path`, or, when it is too long for a unix socket address
/// (107 bytes), on the same file named through a descriptor of its
/// directory (`/proc/self/fd/N/<name>`).
fn with_socket_path<T>(
    path: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::os::fd::AsRawFd as _;
    if path.as_os_str().len() <= 100 {
        return f(path);
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    let dir = std::fs::File::open(parent)?;
    let name = path.file_name().unwrap_or_default();
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    f(&short)
}

/// Sends a request to the `up` running in `dir` and prints its answer; an
/// error when it refused or failed.
async fn send_control(dir: &Path, request: serde_json::Value) -> anyhow::Result<()> {
    let dir = dir.canonicalize().with_context(|| {
        format!(
            "no fleet-dev up runs in {} (start one with `fleet-dev up --dir {}`)",
            dir.display(),
            dir.display()
        )
    })?;
    let path = dir.join(SOCKET);
    let stream = match with_socket_path(&path, |p| {
        let std = std::os::unix::net::UnixStream::connect(p)?;
        std.set_nonblocking(true)?;
        Ok(std)
    }) {
        Ok(s) => tokio::net::UnixStream::from_std(s)?,
        Err(e) => match running_owner(&dir) {
            None => anyhow::bail!(
                "no fleet-dev up runs in {} (start one with `fleet-dev up --dir {}`)",
                dir.display(),
                dir.display()
            ),
            Some(pid) => anyhow::bail!(
                "fleet-dev up (pid {pid}) in {} takes no commands yet ({}: {e}); is it still starting?",
                dir.display(),
                path.display()
            ),
        },
    };
    let (read, mut write) = stream.into_split();
    let mut line = request.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let answer = tokio::io::BufReader::new(read)
        .lines()
        .next_line()
        .await
        .context("read fleet-dev up's answer")?
        .context("fleet-dev up stopped before it answered")?;
    let answer: serde_json::Value =
        serde_json::from_str(&answer).context("fleet-dev up's answer")?;
    if answer["ok"] == true {
        println!("{}", answer["message"].as_str().unwrap_or("done"));
        Ok(())
    } else {
        anyhow::bail!(
            "{} failed: {}",
            describe_request(&request),
            answer["error"].as_str().unwrap_or("no reason given")
        )
    }
}

// ---------------------------------------------------------------------------
// --detach and down

/// Runs `up` again in the background, in its own session, with its output in
/// `<dir>/fleet-dev.log`, and waits until `fleet.json` says it is ready.
fn detach(args: &UpArgs) -> anyhow::Result<()> {
    check_settings(args)?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    if let Some(pid) = running_owner(&dir) {
        anyhow::bail!(
            "fleet-dev already runs in {} (pid {pid}); stop it with `fleet-dev down --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let log_path = dir.join(LOGFILE);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    // The same command line without --detach, in the same working directory.
    let child_args: Vec<OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(&child_args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid(2) is async-signal-safe; nothing else runs in the hook.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("start fleet-dev in the background")?;
    let pid = child.id();
    let deadline = Instant::now() + DETACH_READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "fleet-dev up stopped before the fleet was ready ({status}); its output:\n{}",
                tail(&log_path, 30)
            );
        }
        if let Ok(fleet) = FleetFile::read(&dir) {
            if fleet.json["state"] == "ready" && fleet.json["pid"] == pid {
                break;
            }
        }
        if Instant::now() > deadline {
            // It cleans up after itself on SIGTERM.
            signal(pid, libc::SIGTERM);
            anyhow::bail!(
                "fleet-dev up (pid {pid}) was not ready within {DETACH_READY_TIMEOUT:?}, and was stopped; its output is in {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // What it printed while starting; the demo's story goes on in the log.
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    print!("{}", log_text.split("\n== demo").next().unwrap_or_default());
    println!(
        "\nfleet-dev runs in the background (pid {pid}){}; its output goes to {}.\nStop it with: fleet-dev down --dir {}",
        if args.demo {
            ", running the demo"
        } else {
            ""
        },
        log_path.display(),
        dir.display()
    );
    Ok(())
}

/// Stops the `up` running in `dir` and waits until it has cleaned up; or,
/// when it is gone without cleaning up (kill -9), removes what it left.
fn down(dir: &Path) -> anyhow::Result<()> {
    let Ok(dir) = dir.canonicalize() else {
        println!("nothing is running in {}", dir.display());
        return Ok(());
    };
    let fleet = FleetFile::read(&dir).ok();
    let what = fleet.as_ref().map(describe_fleet).unwrap_or_default();
    if let Some(pid) = running_owner(&dir) {
        println!("stopping fleet-dev (pid {pid}){what}…");
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + DOWN_TIMEOUT;
        while is_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut killed = false;
        if is_alive(pid) {
            println!("fleet-dev (pid {pid}) did not stop within {DOWN_TIMEOUT:?}; killing it");
            signal(pid, libc::SIGKILL);
            while is_alive(pid) {
                std::thread::sleep(Duration::from_millis(20));
            }
            killed = true;
        }
        let cleaned = clean_leftovers(&dir)?;
        if !cleaned.is_empty() {
            println!("cleaned up what it left: {}", cleaned.join("; "));
        } else if killed {
            println!("it left nothing behind");
        }
        println!("stopped fleet-dev (pid {pid}); nothing left running");
        return Ok(());
    }
    let cleaned = clean_leftovers(&dir)?;
    if cleaned.is_empty() {
        println!("nothing is running in {}", dir.display());
    } else {
        let pid = fleet
            .as_ref()
            .and_then(|f| f.json["pid"].as_u64())
            .map_or(String::new(), |p| format!(" (pid {p})"));
        println!(
            "fleet-dev{pid} is gone but left a fleet behind{what}; cleaned up: {}",
            cleaned.join("; ")
        );
    }
    Ok(())
}

/// ": controller at …, 3 boards (jetson-01, …)" from fleet.json.
fn describe_fleet(fleet: &FleetFile) -> String {
    let names: Vec<&str> = fleet.json["nodes"]
        .as_array()
        .map(|n| n.iter().filter_map(|n| n["name"].as_str()).collect())
        .unwrap_or_default();
    match fleet.json["controller"].as_str() {
        Some(addr) => format!(
            ": controller at {addr}, {} board(s) ({})",
            names.len(),
            names.join(", ")
        ),
        None => String::new(),
    }
}

/// The pid of the `up` that owns `dir`, if it still runs.
fn running_owner(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PIDFILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if !is_alive(pid) {
        return None;
    }
    // The same process, not a later one with its pid.
    let recorded = FleetFile::read(dir)
        .ok()
        .filter(|f| f.json["pid"] == pid)
        .and_then(|f| f.json["pid_start_time"].as_u64());
    match recorded {
        Some(start) => (process_start_time(pid) == Some(start)).then_some(pid),
        None => {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            let name = exe.file_name()?.to_string_lossy().into_owned();
            name.starts_with("fleet-dev").then_some(pid)
        }
    }
}

/// Removes what an `up` that is no longer running left in `dir`'s fleet:
/// its controller, its boards' processes (systemd managers, journald,
/// agents, experiments) and cgroups, and its testbed run directory. Says
/// what it removed; nothing when there was nothing.
fn clean_leftovers(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    let _ = std::fs::remove_file(dir.join(PIDFILE));
    let _ = std::fs::remove_file(dir.join(SOCKET));
    let Ok(mut fleet) = FleetFile::read(dir) else {
        return Ok(done);
    };
    let controller_config = fleet.json["controller_config"]
        .as_str()
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("controller/controller.toml"));
    let pids = processes_with_arg(&controller_config);
    if !pids.is_empty() {
        terminate(&pids, Duration::from_secs(5));
        done.push(format!("controller (pid {})", join_pids(&pids)));
    }
    if let Some(cgroup) = fleet.json["testbed"]["cgroup"].as_str() {
        let layout = Layout::detect()?;
        let pids = layout.pids(cgroup).unwrap_or_default();
        let exists = layout.dirs(cgroup).iter().any(|d| d.exists());
        if !pids.is_empty() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !layout.is_empty(cgroup) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "processes of {cgroup} survive SIGKILL: {:?}",
                    layout.pids(cgroup)
                );
                let _ = layout.kill(cgroup);
                std::thread::sleep(Duration::from_millis(20));
            }
            done.push(format!(
                "{} board process(es) (systemd managers, journald, agents, experiments)",
                pids.len()
            ));
        }
        if exists {
            layout.remove(cgroup)?;
            layout.remove_root_if_unused();
            done.push(format!("cgroup {cgroup}"));
        }
    }
    if let Some(run_dir) = fleet.json["testbed"]["run_dir"].as_str() {
        let run_dir = Path::new(run_dir);
        // Anything still running from there (an agent that left its board's
        // cgroup, which the testbed never does, would be one).
        let pids = processes_with_arg_prefix(run_dir);
        if !pids.is_empty() {
            terminate(&pids, Duration::from_secs(5));
            done.push(format!("process(es) {}", join_pids(&pids)));
        }
        if run_dir.exists() {
            std::fs::remove_dir_all(run_dir)
                .with_context(|| format!("remove {}", run_dir.display()))?;
            done.push(format!("run directory {}", run_dir.display()));
        }
    }
    if fleet.json["state"] != "stopped" {
        fleet.json["state"] = "stopped".into();
        write_json(&dir.join(FLEET_JSON), &fleet.json)?;
    }
    Ok(done)
}

fn join_pids(pids: &[u32]) -> String {
    let s: Vec<String> = pids.iter().map(u32::to_string).collect();
    s.join(", ")
}

/// SIGTERM, then SIGKILL after `grace`, until every one is gone.
fn terminate(pids: &[u32], grace: Duration) {
    for &pid in pids {
        signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while pids.iter().any(|&p| is_alive(p)) {
        if Instant::now() > deadline {
            for &pid in pids {
                signal(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Alive and not a zombie waiting for its parent.
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Start time of a process in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`): with the pid, it names a process for good.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn all_processes() -> Vec<(u32, Vec<OsString>)> {
    use std::os::unix::ffi::OsStringExt as _;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let args = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| OsString::from_vec(a.to_vec()))
                .collect();
            Some((pid, args))
        })
        .filter(|(pid, _)| *pid != std::process::id() && is_alive(*pid))
        .collect()
}

/// Live processes with `arg` as one of their arguments.
fn processes_with_arg(arg: &Path) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|(_, args)| args.iter().any(|a| Path::new(a) == arg))
        .map(|(pid, _)| pid)
        .collect()
}

/// Live processes with an argument below `dir`.
fn processes_with_arg_prefix(dir: &Path) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|(_, args)| args.iter().any(|a| Path::new(a).starts_with(dir)))
        .map(|(pid, _)| pid)
        .collect()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// The demo

/// What a demo experiment should end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exits 0 the first time.
    Succeeds,
    /// Stopped by the hot board's guard at critical, requeued elsewhere as
    /// a disruption (not a crash), then succeeds.
    ThermalRequeue,
    /// Placed away from the hot board, then succeeds.
    AvoidsHotBoard,
    /// Crashes, is restarted, and fails at its restart limit.
    RestartLimit,
    /// Killed for memory.
    Oom,
    /// Runs in the power mode it asked for, after a switch.
    PowerMode(&'static str),
}

impl Expect {
    fn describe(self) -> String {
        match self {
            Expect::Succeeds => "succeeded".into(),
            Expect::ThermalRequeue => "thermal stop, requeued, succeeded".into(),
            Expect::AvoidsHotBoard => "placed off the hot board, succeeded".into(),
            Expect::RestartLimit => "failed at its restart limit".into(),
            Expect::Oom => "failed: killed for memory".into(),
            Expect::PowerMode(m) => format!("succeeded in power mode {m}"),
        }
    }

    /// Whether `e` ended as expected; None while it has not ended.
    fn check(self, e: &v1::Experiment, hot: &str) -> Option<bool> {
        let phase = e.phase();
        let ended = matches!(
            phase,
            ExperimentPhase::Succeeded
                | ExperimentPhase::Failed
                | ExperimentPhase::Stopped
                | ExperimentPhase::Cancelled
        );
        if !ended {
            return None;
        }
        let last = e.runs.last();
        Some(match self {
            Expect::Succeeds => phase == ExperimentPhase::Succeeded,
            Expect::ThermalRequeue => {
                phase == ExperimentPhase::Succeeded
                    && e.disruptions >= 1
                    && e.crashes == 0
                    && e.runs
                        .iter()
                        .any(|r| r.disruption() == v1::Disruption::Thermal)
            }
            Expect::AvoidsHotBoard => {
                phase == ExperimentPhase::Succeeded && e.runs.first().is_some_and(|r| r.node != hot)
            }
            Expect::RestartLimit => {
                phase == ExperimentPhase::Failed
                    && e.crashes >= 1
                    && last.is_some_and(|r| r.failure() == v1::FailureReason::StartLimit)
            }
            Expect::Oom => {
                phase == ExperimentPhase::Failed
                    && last.is_some_and(|r| r.failure() == v1::FailureReason::OomKill)
            }
            Expect::PowerMode(mode) => {
                phase == ExperimentPhase::Succeeded
                    && last
                        .and_then(|r| r.power_mode.as_ref())
                        .is_some_and(|m| m.name == mode)
            }
        })
    }
}

struct DemoOutcome {
    rows: Vec<(String, Expect, Option<bool>)>,
}

impl DemoOutcome {
    fn all_as_expected(&self) -> bool {
        self.rows.iter().all(|(_, _, ok)| *ok == Some(true))
    }

    fn unexpected(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|(_, _, ok)| *ok != Some(true))
            .map(|(id, _, ok)| match ok {
                None => format!("{id} (not ended)"),
                Some(_) => id.clone(),
            })
            .collect()
    }
}

fn sh_spec(id: &str, script: &str) -> v1::ExperimentSpec {
    v1::ExperimentSpec {
        id: id.into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        lifecycle: Some(v1::Lifecycle {
            restart_delay: "1s".into(),
            max_restarts: Some(2),
            stop_timeout: "5s".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Keeps one core busy (at most half of it, by its CPU quota) for `secs`
/// seconds of wall time: bash's `$SECONDS` and `:` are builtins, so the
/// shell itself spins and SIGTERM ends it at once.
fn heater_spec(id: &str, secs: u32) -> v1::ExperimentSpec {
    let mut s = sh_spec(id, "");
    s.command = vec![
        "/bin/bash".into(),
        "-c".into(),
        format!(
            "echo \"$FLEET_EXPERIMENT_ID heats $(hostname) for {secs} s\"; while [ $SECONDS -lt {secs} ]; do :; done; echo done"
        ),
    ];
    s.resources = Some(v1::Resources {
        cpu_quota: "50%".into(),
        ..Default::default()
    });
    s
}

/// Experiments with what each should end as.
type Queue = Vec<(v1::ExperimentSpec, Expect)>;

/// The sample queue: what goes first, and what follows once the hot board is
/// too hot. The power-mode experiment asks for a mode only an Orin NX has
/// (a switch there needs no reboot), so it is left out without one.
fn demo_queue(has_nx: bool) -> (Queue, Queue) {
    let heater_a = (heater_spec("heater-a", 25), Expect::ThermalRequeue);
    let mut hog = v1::ExperimentSpec {
        id: "memory-hog".into(),
        // awk doubles a string until the kernel kills it: no shell in
        // between, so the main process itself dies.
        command: vec![
            "/usr/bin/awk".into(),
            "BEGIN { s = \"x\"; while (1) { s = s s } }".into(),
        ],
        ..sh_spec("memory-hog", "")
    };
    hog.resources = Some(v1::Resources {
        memory_max: "64M".into(),
        ..Default::default()
    });
    hog.lifecycle.as_mut().expect("set").restart = "never".into();
    let mut short = vec![
        (
            sh_spec(
                "hello-world",
                "echo \"experiment $FLEET_EXPERIMENT_ID, epoch $FLEET_EPOCH\"; for i in 1 2 3 4 5; do echo step $i; sleep 1; done; echo done",
            ),
            Expect::Succeeds,
        ),
        (
            sh_spec("flaky", "echo about to crash; sleep 1; exit 3"),
            Expect::RestartLimit,
        ),
        (hog, Expect::Oom),
    ];
    if has_nx {
        let mut pm = sh_spec(
            "power-25w",
            "echo \"running on $(hostname) in the power mode it asked for\"; sleep 3; echo done",
        );
        pm.placement = Some(v1::Placement {
            power_mode: "25W".into(),
            ..Default::default()
        });
        short.push((pm, Expect::PowerMode("25W")));
    }
    let heater_b = (heater_spec("heater-b", 12), Expect::AvoidsHotBoard);
    let mut first = vec![heater_a];
    first.extend(short);
    (first, vec![heater_b])
}

fn phase_name(p: ExperimentPhase) -> String {
    format!("{p:?}").to_lowercase()
}

fn secs_since(start: Instant) -> String {
    format!("{:>5.1}s", start.elapsed().as_secs_f64())
}

async fn run_demo(
    mut c: ControllerClient<Channel>,
    fleet: &Fleet,
    deadline: Duration,
) -> anyhow::Result<DemoOutcome> {
    let started = Instant::now();
    let give_up = started + deadline;
    let names: Vec<String> = fleet.boards.iter().map(|b| b.name().to_owned()).collect();
    wait_nodes_ready(&mut c, &names).await?;

    let has_nx = fleet.fixtures.contains(&Fixture::OrinNx);
    let (first, later) = demo_queue(has_nx);
    let weak = names[0].clone();
    println!("\n== demo: a sample queue through the controller ==");
    println!(
        "The scheduling policy is set to `coolest` for the demo, so placement follows temperature alone\n\
         (the default is `balanced`; the demo puts it back at the end). {weak} has a weak fan in this\n\
         demo's thermal model: half a busy core takes it past the guard's critical 85 °C, where the\n\
         other boards only warm by about 12 °C."
    );
    c.set_policy(v1::SetPolicyRequest {
        name: "coolest".into(),
        ..Default::default()
    })
    .await?;
    let policy = c.get_policy(v1::GetPolicyRequest {}).await?.into_inner();

    // The story: every event from here on, narrated.
    let last_seq = last_event_seq(&mut c).await?;
    let narrator = AbortOnDrop(tokio::spawn(narrate(c.clone(), last_seq + 1, started)));

    let mut expected: Vec<(String, Expect)> = Vec::new();
    let mut first = first.into_iter();
    let (heater_a, expect) = first.next().expect("heater-a first");
    expected.push((heater_a.id.clone(), expect));
    story(
        started,
        "submitting heater-a: a CPU-busy experiment; every board is equally cool, so it goes to the first",
    );
    submit(&mut c, heater_a).await?;
    let hot = wait_node_of(&mut c, "heater-a", give_up).await?;
    let hot_idx = names.iter().position(|n| *n == hot).unwrap_or(0);
    if hot != weak {
        // Not expected (equal temperatures go to the first name), but the
        // story needs the heater on the weak board: move the weak fan.
        fleet.hardware[0].set_params(demo_thermal(false));
        fleet.hardware[hot_idx].set_params(demo_thermal(true));
        story(
            started,
            &format!("heater-a went to {hot}: the demo gives {hot} the weak fan instead"),
        );
    }
    let warm = wait_hottest(&mut c, &hot, 42.0, give_up).await?;
    story(
        started,
        &format!("{hot} warms up ({warm:.1} °C): the short experiments go to cooler boards"),
    );
    for (spec, expect) in first {
        expected.push((spec.id.clone(), expect));
        submit(&mut c, spec).await?;
    }
    if !has_nx {
        story(
            started,
            "no Orin NX board in this fleet (--boards): the power-mode experiment is left out",
        );
    }
    // The weak fan does it by CPU alone on an idle machine; on a busy one
    // the heater may get too little CPU, and a scripted heat event (what
    // `fleet-dev heat` does) stands in for the rest, said as such.
    let hot_hw = fleet.hardware[hot_idx].clone();
    let mut pinned = false;
    let (warn_c, critical_c) = node_limits(&mut c, &hot).await?;
    let limit = warn_c - policy.temp_margin_c;
    let t = match wait_hottest_until(&mut c, &hot, limit, Instant::now() + HEAT_PATIENCE).await? {
        Some(t) => t,
        None => {
            story(
                started,
                &format!(
                    "this machine is busy: heater-a gets too little CPU to heat {hot} quickly, so the demo holds its cpu zone at {:.0} °C (a scripted heat event)",
                    limit + 1.0
                ),
            );
            hot_hw.set_zone("cpu", limit + 1.0)?;
            pinned = true;
            wait_hottest(&mut c, &hot, limit, give_up).await?
        }
    };
    story(
        started,
        &format!(
            "{hot} is at {t:.1} °C, past warn {warn_c:.0} − margin {:.0}: too hot for new work; submitting heater-b",
            policy.temp_margin_c
        ),
    );
    for (spec, expect) in later {
        let id = spec.id.clone();
        expected.push((id.clone(), expect));
        submit(&mut c, spec).await?;
        let node = wait_node_of(&mut c, &id, give_up).await?;
        let why = c
            .explain(v1::ExplainRequest { id: id.clone() })
            .await?
            .into_inner()
            .last
            .and_then(|d| d.nodes.into_iter().find(|v| v.node == hot))
            .map(|v| v.reasons.join("; "))
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "it scored lower".into());
        story(
            started,
            &format!("{id} went to {node}; {hot} was passed over: {why}"),
        );
    }

    // heater-a takes its board to critical, where the guard stops it.
    let disrupted = |e: &v1::Experiment| e.disruptions >= 1;
    let until = Instant::now() + HEAT_PATIENCE;
    let by_cpu = loop {
        let a = c
            .get(v1::GetRequest {
                id: "heater-a".into(),
            })
            .await?
            .into_inner();
        if disrupted(&a) {
            break true;
        }
        let hottest = hottest_c(&mut c, &hot).await?;
        if hottest.is_some_and(|t| t >= critical_c) {
            break true;
        }
        if Instant::now() > until {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if !by_cpu {
        story(
            started,
            &format!(
                "this machine is busy: heater-a gets too little CPU to take {hot} to critical by itself, so the demo holds its cpu zone at {:.0} °C (a scripted heat event)",
                critical_c + 3.0
            ),
        );
        hot_hw.set_zone("cpu", critical_c + 3.0)?;
        pinned = true;
    }
    if pinned {
        loop {
            let a = c
                .get(v1::GetRequest {
                    id: "heater-a".into(),
                })
                .await?
                .into_inner();
            if disrupted(&a) || Instant::now() > give_up {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        hot_hw.release_zone("cpu")?;
        story(
            started,
            &format!("heat event over: {hot}'s cpu zone follows the thermal model again"),
        );
    }

    // Until every experiment ended, or the deadline.
    let ids: Vec<&str> = expected.iter().map(|(id, _)| id.as_str()).collect();
    let mut latest: BTreeMap<String, v1::Experiment> = BTreeMap::new();
    loop {
        for id in &ids {
            if let Ok(e) = c.get(v1::GetRequest { id: (*id).into() }).await {
                latest.insert((*id).to_owned(), e.into_inner());
            }
        }
        let all_ended = expected
            .iter()
            .all(|(id, x)| latest.get(id).is_some_and(|e| x.check(e, &hot).is_some()));
        if all_ended || Instant::now() > give_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Let the narrator print the last events.
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(narrator);

    let mut logs = c
        .logs(v1::LogsRequest {
            id: "hello-world".into(),
            tail: 20,
            since_unix_us: 0,
            follow: false,
        })
        .await?
        .into_inner();
    println!();
    while let Some(line) = logs.next().await {
        println!("  [log] hello-world  {}", line?.message);
    }

    let mut outcome = DemoOutcome { rows: Vec::new() };
    println!(
        "\n{:<12} {:<36} {:<4} how it ended",
        "experiment", "expected", "ok"
    );
    for (id, x) in &expected {
        let e = latest.get(id);
        let ok = e.and_then(|e| x.check(e, &hot));
        let got = e.map_or("unknown".to_owned(), how_it_ended);
        let mark = match ok {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "…",
        };
        println!("{id:<12} {:<36} {mark:<4} {got}", x.describe());
        outcome.rows.push((id.clone(), *x, ok));
    }
    let good = outcome.rows.iter().filter(|r| r.2 == Some(true)).count();
    if outcome.all_as_expected() {
        println!(
            "demo: all {good} experiments ended as expected ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "demo: {good} of {} experiments ended as expected; not: {}",
            outcome.rows.len(),
            outcome.unexpected().join(", ")
        );
    }
    c.set_policy(v1::SetPolicyRequest {
        name: "balanced".into(),
        ..Default::default()
    })
    .await?;
    println!("scheduling policy back to balanced");
    Ok(outcome)
}

/// Ends a task when the demo ends, however it ends (Ctrl-C included).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn story(started: Instant, text: &str) {
    println!("{}  ▶ {text}", secs_since(started));
}

/// "succeeded on jetson-02; runs: jetson-01 disrupted (thermal), …".
fn how_it_ended(e: &v1::Experiment) -> String {
    let runs: Vec<String> = e
        .runs
        .iter()
        .map(|r| {
            let outcome = format!("{:?}", r.outcome()).to_lowercase();
            let mut s = format!("{} {outcome}", r.node);
            if r.disruption() != v1::Disruption::Unspecified {
                s.push_str(&format!(" ({:?})", r.disruption()).to_lowercase());
            } else if r.failure() != v1::FailureReason::None {
                s.push_str(&format!(" ({:?})", r.failure()).to_lowercase());
            }
            if let Some(m) = &r.power_mode {
                s.push_str(&format!(" in {}", m.name));
            }
            s
        })
        .collect();
    format!(
        "{}; {} crash(es), {} disruption(s); runs: {}",
        phase_name(e.phase()),
        e.crashes,
        e.disruptions,
        runs.join(", ")
    )
}

async fn submit(c: &mut ControllerClient<Channel>, spec: v1::ExperimentSpec) -> anyhow::Result<()> {
    let id = spec.id.clone();
    c.submit(v1::SubmitRequest {
        spec: Some(spec),
        dry_run: false,
    })
    .await
    .with_context(|| format!("submit {id}"))?;
    Ok(())
}

async fn wait_nodes_ready(
    c: &mut ControllerClient<Channel>,
    names: &[String],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = c
            .list_nodes(v1::ListNodesRequest::default())
            .await?
            .into_inner()
            .nodes;
        let ready: HashSet<&str> = nodes
            .iter()
            .filter(|n| {
                n.connection() == v1::NodeConnection::Connected
                    && n.info.is_some()
                    && n.telemetry.as_ref().is_some_and(|t| t.hottest_c.is_some())
            })
            .map(|n| n.name.as_str())
            .collect();
        if names.iter().all(|n| ready.contains(n.as_str())) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the controller did not see every board within a minute (ready: {ready:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node an experiment was placed on, once it has one.
async fn wait_node_of(
    c: &mut ControllerClient<Channel>,
    id: &str,
    give_up: Instant,
) -> anyhow::Result<String> {
    loop {
        let e = c.get(v1::GetRequest { id: id.into() }).await?.into_inner();
        if !e.node.is_empty() {
            return Ok(e.node);
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "{id} was not placed in time: {} ({})",
            phase_name(e.phase()),
            e.reason
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The hottest zone of `node` as the controller last heard it.
async fn hottest_c(c: &mut ControllerClient<Channel>, node: &str) -> anyhow::Result<Option<f64>> {
    Ok(c.list_nodes(v1::ListNodesRequest {
        names: vec![node.into()],
        ..Default::default()
    })
    .await?
    .into_inner()
    .nodes
    .first()
    .and_then(|n| n.telemetry.as_ref())
    .and_then(|t| t.hottest_c))
}

/// Waits until the controller sees `node`'s hottest zone at `celsius` or
/// more; None when it did not by `until`.
async fn wait_hottest_until(
    c: &mut ControllerClient<Channel>,
    node: &str,
    celsius: f64,
    until: Instant,
) -> anyhow::Result<Option<f64>> {
    loop {
        if let Some(t) = hottest_c(c, node).await?.filter(|t| *t >= celsius) {
            return Ok(Some(t));
        }
        if Instant::now() > until {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// As [`wait_hottest_until`], an error at `give_up`.
async fn wait_hottest(
    c: &mut ControllerClient<Channel>,
    node: &str,
    celsius: f64,
    give_up: Instant,
) -> anyhow::Result<f64> {
    wait_hottest_until(c, node, celsius, give_up)
        .await?
        .with_context(|| format!("{node} did not reach {celsius:.1} °C in time"))
}

/// The guard's warn and critical temperatures on `node`.
async fn node_limits(c: &mut ControllerClient<Channel>, node: &str) -> anyhow::Result<(f64, f64)> {
    let nodes = c
        .list_nodes(v1::ListNodesRequest {
            names: vec![node.into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .nodes;
    let info = nodes.first().and_then(|n| n.info.as_ref());
    let warn = info.map(|i| i.warn_c).filter(|w| *w > 0.0).unwrap_or(75.0);
    let critical = info
        .map(|i| i.critical_c)
        .filter(|c| *c > warn)
        .unwrap_or(85.0);
    Ok((warn, critical))
}

async fn last_event_seq(c: &mut ControllerClient<Channel>) -> anyhow::Result<u64> {
    let mut events = c
        .watch_events(v1::WatchEventsRequest {
            from_seq: Some(1),
            filter: None,
            replay_only: true,
        })
        .await?
        .into_inner();
    let mut last = 0;
    while let Some(ev) = events.next().await {
        last = ev?.seq;
    }
    Ok(last)
}

/// Prints the controller's events from `from` on, with a word on what the
/// important ones mean.
async fn narrate(mut c: ControllerClient<Channel>, from: u64, started: Instant) {
    use v1::EventKind as K;
    let Ok(stream) = c
        .watch_events(v1::WatchEventsRequest {
            from_seq: Some(from),
            filter: None,
            replay_only: false,
        })
        .await
    else {
        println!("(the controller's event stream is not available)");
        return;
    };
    let mut events = stream.into_inner();
    while let Some(Ok(ev)) = events.next().await {
        let kind = ev.kind();
        let quiet = matches!(
            kind,
            K::NodeConnected | K::PolicyChanged | K::NodeAdded | K::NodeJoined
        ) || (kind == K::PhaseChanged
            && ev.from() == ExperimentPhase::Placing
            && ev.to() == ExperimentPhase::Starting);
        if quiet {
            continue;
        }
        let subject = if ev.experiment.is_empty() {
            String::new()
        } else {
            ev.experiment.clone()
        };
        println!(
            "{}  {:<12} {:<10} {}",
            secs_since(started),
            subject,
            ev.node,
            ev.message
        );
        let note = match kind {
            K::NodeThermalChanged if ev.message.contains("→ critical") => Some(
                "the board's guard stops everything on it, gracefully; the controller places nothing there",
            ),
            K::NodeThermalChanged if ev.message.contains("→ warn") => {
                Some("the board's guard refuses new experiments")
            }
            K::Disrupted => Some(
                "a disruption, not a crash: the crash budget is untouched, and on_disruption = requeue puts it back in the queue",
            ),
            K::Crashed => Some("systemd restarted it (Restart=on-failure)"),
            K::NodePowerModeChanged => Some(
                "the controller switched the board's nvpmodel mode before starting an experiment that asked for it",
            ),
            K::PhaseChanged
                if ev.to() == ExperimentPhase::Failed && ev.message.contains("memory") =>
            {
                Some("its MemoryMax= was enforced by the kernel; the agent attributes the kill")
            }
            _ => None,
        };
        if let Some(note) = note {
            println!("{}  {:<23}   ↳ {note}", secs_since(started), "");
        }
    }
}

/// The board as the agent sees it: identity, power modes, one sample.
async fn show_node(c: &mut AgentClient<Channel>) -> anyhow::Result<()> {
    let mut updates = c
        .watch_node(v1::WatchNodeRequest { interval_ms: 1000 })
        .await?
        .into_inner();
    let sample = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(u) = updates.next().await {
            if let Some(v1::node_update::Update::Sample(s)) = u?.update {
                return anyhow::Ok(Some(s));
            }
        }
        Ok(None)
    })
    .await
    .unwrap_or(Ok(None))?;
    let n = c.get_node(v1::GetNodeRequest {}).await?.into_inner();
    let modes: Vec<String> = n
        .power_modes
        .iter()
        .map(|m| format!("{} {}", m.id, m.name))
        .collect();
    println!(
        "\n{}: {}, L4T {}, power mode {} (modes: {})",
        n.node,
        n.model,
        if n.l4t_release.is_empty() {
            "unknown"
        } else {
            &n.l4t_release
        },
        n.current_power_mode
            .as_ref()
            .map_or("unknown".to_owned(), |m| m.name.clone()),
        modes.join(", ")
    );
    if let Some(s) = sample {
        println!("{}", sample_line(&s));
    }
    Ok(())
}

fn sample_line(s: &v1::TelemetrySample) -> String {
    let zones: Vec<String> = s
        .zones
        .iter()
        .map(|z| match z.celsius {
            Some(c) => format!("{}={c:.1}", z.name),
            None => format!("{}=off", z.name),
        })
        .collect();
    let ms = s.timestamp_unix_us / 1000;
    let (h, m, sec) = (ms / 3_600_000 % 24, ms / 60_000 % 60, ms / 1000 % 60);
    format!(
        "{h:02}:{m:02}:{sec:02}.{:03} thermal={} {} mode={} power={} accepting={}",
        ms % 1000,
        format!("{:?}", s.thermal_state()).to_lowercase(),
        zones.join(" "),
        s.power_mode.as_ref().map_or("?", |m| m.name.as_str()),
        s.power_total_watts
            .map_or("?".to_owned(), |w| format!("{w:.1}W")),
        s.accepting
    )
}

// ---------------------------------------------------------------------------
// heat and watch

/// What `up` wrote to `fleet.json`, read back by the other commands.
struct FleetFile {
    json: serde_json::Value,
}

impl FleetFile {
    fn read(dir: &Path) -> anyhow::Result<FleetFile> {
        let path = dir.join(FLEET_JSON);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "read {} (is `fleet-dev up --dir {}` running?)",
                path.display(),
                dir.display()
            )
        })?;
        Ok(FleetFile {
            json: serde_json::from_str(&text)
                .with_context(|| format!("parse {}", path.display()))?,
        })
    }

    fn node(&self, name: Option<&str>) -> anyhow::Result<&serde_json::Value> {
        let nodes = self.json["nodes"]
            .as_array()
            .context("fleet.json has no nodes")?;
        match name {
            None => nodes.first().context("fleet.json has no nodes"),
            Some(name) => nodes.iter().find(|n| n["name"] == name).with_context(|| {
                let names: Vec<_> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
                format!(
                    "no board {name:?} in this fleet; it has {}",
                    names.join(", ")
                )
            }),
        }
    }

    fn path(&self, value: &serde_json::Value, what: &str) -> anyhow::Result<PathBuf> {
        value
            .as_str()
            .map(PathBuf::from)
            .with_context(|| format!("fleet.json has no {what}"))
    }
}

/// Pins a zone through the board's heat file, which its thermal model reads
/// at every tick; `None` releases it.
fn heat(dir: &Path, node: &str, zone: &str, celsius: Option<f64>) -> anyhow::Result<()> {
    let fleet = FleetFile::read(dir)?;
    let n = fleet.node(Some(node))?;
    let file = fleet.path(&n["heat_file"], "heat_file")?;
    let hw_dir = fleet.path(&n["hw_dir"], "hw_dir")?;
    let known = zone_names(&hw_dir.join("sysfs/class/thermal"));
    let wanted = hwsim::normalize_zone_name(zone);
    anyhow::ensure!(
        known.contains(&wanted),
        "{node} has no thermal zone {zone:?}; it has {}",
        known.join(", ")
    );
    let old = std::fs::read_to_string(&file).unwrap_or_default();
    let mut pins: Vec<(String, f64)> = hwsim::parse_heat(&old)
        .into_iter()
        .filter(|(z, _)| hwsim::normalize_zone_name(z) != wanted)
        .collect();
    if let Some(c) = celsius {
        anyhow::ensure!(c.is_finite(), "the temperature must be a number");
        pins.push((wanted.clone(), c));
    }
    let text: String = pins.iter().map(|(z, c)| format!("{z} {c}\n")).collect();
    hwsim::write_atomic(&file, text.as_bytes())
        .with_context(|| format!("write {}", file.display()))?;
    match celsius {
        Some(c) => println!("{node}: {wanted} held at {c} °C (release with --release)"),
        None => println!("{node}: {wanted} follows the thermal model again"),
    }
    Ok(())
}

fn zone_names(class_thermal: &Path) -> Vec<String> {
    let mut zones: Vec<(u32, String)> = std::fs::read_dir(class_thermal)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e
                .file_name()
                .to_string_lossy()
                .strip_prefix("thermal_zone")?
                .parse()
                .ok()?;
            let kind = std::fs::read_to_string(e.path().join("type")).ok()?;
            Some((n, hwsim::normalize_zone_name(&kind)))
        })
        .collect();
    zones.sort();
    zones.into_iter().map(|(_, z)| z).collect()
}

/// A `WatchNode` subscriber: one line per sample and event, or (quiet) only
/// the count at the end. The benchmark uses it as the agent's 1 Hz client.
async fn watch(
    dir: &Path,
    node: Option<&str>,
    interval_ms: u32,
    duration_s: Option<u64>,
    quiet: bool,
) -> anyhow::Result<()> {
    let fleet = FleetFile::read(dir)?;
    let n = fleet.node(node)?;
    let name = n["name"]
        .as_str()
        .context("fleet.json: node without a name")?;
    let addr: std::net::SocketAddr = n["agent"]
        .as_str()
        .context("fleet.json: node without an agent address")?
        .parse()?;
    let tls = fleet_proto::tls::ClientTls::from_files(
        &fleet.path(&fleet.json["ca"], "ca")?,
        &fleet.path(&fleet.json["admin_cert"], "admin_cert")?,
        &fleet.path(&fleet.json["admin_key"], "admin_key")?,
    )?;
    let channel = tls
        .connect(addr, fleet_proto::tls::Expect::Agent(name.into()))
        .await?;
    let mut c = AgentClient::new(channel);
    let mut updates = c
        .watch_node(v1::WatchNodeRequest { interval_ms })
        .await?
        .into_inner();
    let (mut samples, mut events) = (0u64, 0u64);
    let until = duration_s.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    loop {
        let next = match until {
            Some(t) => match tokio::time::timeout_at(t, updates.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => tokio::select! {
                next = updates.next() => next,
                _ = tokio::signal::ctrl_c() => break,
            },
        };
        let Some(update) = next else {
            anyhow::bail!("the agent ended the stream after {samples} samples");
        };
        match update?.update {
            Some(v1::node_update::Update::Sample(s)) => {
                samples += 1;
                if !quiet {
                    println!("{}", sample_line(&s));
                }
            }
            Some(v1::node_update::Update::Event(e)) => {
                events += 1;
                if !quiet {
                    println!("event {:?}", e.kind);
                }
            }
            None => {}
        }
    }
    println!("{name}: {samples} samples and {events} events");
    Ok(())
}
