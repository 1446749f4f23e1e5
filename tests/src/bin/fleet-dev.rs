//! `fleet-dev`: a local fleet of simulated Jetsons for a person to try.
//!
//! `fleet-dev up [--nodes N] [--demo]` makes a fleet CA, starts N boards
//! (each a private systemd manager with its own bus, journal, mount
//! namespace and cgroup, and simulated Jetson hardware: a fixture board's
//! sysfs whose temperatures follow the CPU use of its experiments, and
//! `fleet-sim-nvpmodel`) with a real `fleet-agent` on each, writes
//! `fleet.json` and a fleetctl config, and with `--demo` runs sample
//! experiments, showing their status and logs. Ctrl-C stops everything and
//! leaves no process, mount or cgroup behind.
//!
//! `fleet-dev heat` pins a board's zone (a scripted heat event) while the
//! fleet runs; `fleet-dev watch` follows a board's telemetry (`WatchNode`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fleet_proto::identity::Role;
use fleet_proto::v1::{self, agent_client::AgentClient};
use fleet_testbed::agent::{AgentHandle, AgentOptions};
use fleet_testbed::controller::{ControllerHandle, ControllerOptions};
use fleet_testbed::hwsim::{self, Fixture, HwSim, ThermalParams};
use fleet_testbed::pki::TestPki;
use fleet_testbed::testbed::{Board, Testbed};
use futures_util::StreamExt;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "fleet-dev", about = "A local fleet of simulated Jetson boards")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the fleet and stay in the foreground until Ctrl-C.
    Up {
        /// How many boards.
        #[arg(long, default_value_t = 1)]
        nodes: u8,
        /// Where to write fleet.json, certificates and the fleetctl config.
        #[arg(long, default_value = "fleet-dev")]
        dir: PathBuf,
        /// Run sample experiments and show them.
        #[arg(long)]
        demo: bool,
        /// Exit after the demo instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
        /// The boards' hardware, one fixture per board in turn
        /// (agx-orin-r36, orin-nx, agx-orin-r35).
        #[arg(long, value_delimiter = ',', default_values_t = [Fixture::AgxOrinR36, Fixture::OrinNx, Fixture::AgxOrinR35])]
        boards: Vec<Fixture>,
        /// The agents' sampling interval (their default when absent).
        #[arg(long)]
        sampling_ms: Option<u64>,
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Up {
            nodes,
            dir,
            demo,
            once,
            boards,
            sampling_ms,
        } => up(nodes, &dir, demo, once, &boards, sampling_ms).await,
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
    }
}

async fn up(
    nodes: u8,
    dir: &Path,
    demo: bool,
    once: bool,
    fixtures: &[Fixture],
    sampling_ms: Option<u64>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=50).contains(&nodes),
        "--nodes must be between 1 and 50"
    );
    anyhow::ensure!(!fixtures.is_empty(), "--boards needs at least one fixture");
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let mut bed = Testbed::try_new("fleet-dev").await.context(
        "cannot start simulated boards here (fleet-dev needs root and systemd installed)",
    )?;
    let pki = TestPki::new(&dir.join("pki"))?;
    let names: Vec<String> = (1..=nodes).map(|i| format!("jetson-{i:02}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    println!("starting {} simulated board(s)…", names.len());
    let boards = bed.add_boards(&name_refs).await?;
    let mut agents = Vec::new();
    let mut hardware = Vec::new();
    for (i, board) in boards.iter().enumerate() {
        let fixture = fixtures[i % fixtures.len()];
        let hw = HwSim::install(board, fixture, ThermalParams::default())
            .with_context(|| format!("simulated hardware for {}", board.name()))?;
        hw.start_thermal_model(board)?;
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, i as u8 + 1));
        let options = AgentOptions {
            hardware: Some(hw.clone()),
            sampling_ms,
            ..AgentOptions::default()
        };
        let agent = AgentHandle::start_with(board, &pki, ip, options).await?;
        println!(
            "  {} ({}, {}) agent at {}",
            board.name(),
            fixture,
            fixture.model(),
            agent.addr
        );
        agents.push(agent);
        hardware.push(hw);
    }
    let admin = pki.user("dev-admin", Role::Admin)?;
    let agent_refs: Vec<&AgentHandle> = agents.iter().collect();
    let controller = ControllerHandle::start(
        &dir.join("controller"),
        &pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, 1, 100)),
        &agent_refs,
        &ControllerOptions {
            tick_ms: 500,
            telemetry_interval_ms: 1000,
            ..ControllerOptions::default()
        },
    )
    .await?;
    println!("  controller at {}", controller.addr);
    write_fleet_files(&dir, &pki, &admin, &boards, &agents, &hardware, &controller)?;

    let result = async {
        if demo {
            run_demo(&controller, &admin).await?;
            let mut c = agents[0].client_as(&admin).await?;
            show_node(&mut c).await?;
        }
        if !once {
            println!("\nfleet is up; Ctrl-C stops it");
            tokio::signal::ctrl_c().await?;
        }
        anyhow::Ok(())
    }
    .await;
    println!("stopping…");
    drop(controller);
    drop(agents);
    drop(hardware);
    bed.shutdown().await?;
    println!("stopped; nothing left running");
    result
}

fn write_fleet_files(
    dir: &Path,
    pki: &TestPki,
    admin: &fleet_testbed::pki::CertFiles,
    boards: &[Board],
    agents: &[AgentHandle],
    hardware: &[HwSim],
    controller: &ControllerHandle,
) -> anyhow::Result<()> {
    let nodes: Vec<serde_json::Value> = boards
        .iter()
        .zip(agents)
        .zip(hardware)
        .map(|((b, a), hw)| {
            serde_json::json!({
                "name": b.name(),
                "agent": a.addr.to_string(),
                "agent_pid": a.pid(),
                "dir": b.dir(),
                "agent_log": a.log,
                "hardware": hw.fixture().name(),
                "hw_dir": hw.root(),
                "heat_file": hw.heat_file(),
            })
        })
        .collect();
    let fleet = serde_json::json!({
        "fleet": fleet_testbed::pki::FLEET,
        "ca": pki.ca_path,
        "admin_cert": admin.cert,
        "admin_key": admin.key,
        "controller": controller.addr.to_string(),
        "nodes": nodes,
    });
    std::fs::write(dir.join("fleet.json"), serde_json::to_vec_pretty(&fleet)?)?;
    let mut ctl = format!(
        "current_context = \"dev\"\n\n[contexts.dev]\ncontroller = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        controller.addr.to_string(),
        pki.ca_path,
        admin.cert,
        admin.key
    );
    for (b, a) in boards.iter().zip(agents) {
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
    std::fs::write(&ctl_path, ctl)?;
    println!(
        "\nwrote {}/fleet.json and {}\ntry, in another shell:\n  export FLEET_CONFIG_FILE={}\n  cargo run -q -p fleetctl -- ps\n  cargo run -q -p fleetctl -- node info\n  cargo run -q -p fleet-testbed --bin fleet-dev -- heat --dir {} {} gpu 80   # a heat event; --release ends it\n  cargo run -q -p fleet-testbed --bin fleet-dev -- watch --dir {}",
        dir.display(),
        ctl_path.display(),
        ctl_path.display(),
        dir.display(),
        boards[0].name(),
        dir.display(),
    );
    Ok(())
}

fn demo_spec(id: &str, script: &str) -> v1::ExperimentSpec {
    v1::ExperimentSpec {
        id: id.into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        lifecycle: Some(v1::Lifecycle {
            restart_delay: "1s".into(),
            max_restarts: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_demo(
    controller: &ControllerHandle,
    admin: &fleet_testbed::pki::CertFiles,
) -> anyhow::Result<()> {
    use fleet_proto::v1::{controller_client::ControllerClient, ExperimentPhase};
    let mut c: ControllerClient<Channel> = controller.client_as(admin).await?;
    println!("\n== demo: two experiments through the controller ==");
    let specs = [
        demo_spec(
            "hello-world",
            "echo \"experiment $FLEET_EXPERIMENT_ID, epoch $FLEET_EPOCH\"; for i in 1 2 3 4 5; do echo step $i; sleep 1; done; echo done",
        ),
        demo_spec("flaky", "echo about to crash; sleep 1; exit 3"),
    ];
    let mut from = u64::MAX;
    for s in specs {
        let r = c
            .submit(v1::SubmitRequest {
                spec: Some(s),
                dry_run: false,
            })
            .await?
            .into_inner();
        from = from.min(r.event_seq);
        println!("submitted (event {})", r.event_seq);
    }
    let mut events = c
        .watch_events(v1::WatchEventsRequest {
            from_seq: Some(from),
            filter: Some(v1::EventFilter {
                experiments: vec!["hello-world".into(), "flaky".into()],
                ..Default::default()
            }),
            replay_only: false,
        })
        .await?
        .into_inner();
    let mut finished = std::collections::HashSet::new();
    let deadline = tokio::time::sleep(Duration::from_secs(90));
    tokio::pin!(deadline);
    while finished.len() < 2 {
        tokio::select! {
            Some(ev) = events.next() => {
                let ev = ev?;
                println!("  [event {:>3}] {:<12} {:<10} {}", ev.seq, ev.experiment, ev.node, ev.message);
                if matches!(ev.to(), ExperimentPhase::Succeeded | ExperimentPhase::Failed) {
                    finished.insert(ev.experiment.clone());
                }
            }
            _ = &mut deadline => break,
        }
    }
    let mut logs = c
        .logs(v1::LogsRequest {
            id: "hello-world".into(),
            tail: 20,
            since_unix_us: 0,
            follow: false,
        })
        .await?
        .into_inner();
    while let Some(line) = logs.next().await {
        println!("  [log] hello-world  {}", line?.message);
    }
    for id in ["hello-world", "flaky"] {
        let e = c.get(v1::GetRequest { id: id.into() }).await?.into_inner();
        let last = e.runs.last();
        println!(
            "{id}: {} on {} ({} run(s), {} crash(es)){}",
            format!("{:?}", e.phase()).to_lowercase(),
            last.map(|r| r.node.as_str()).unwrap_or("-"),
            e.runs.len(),
            e.crashes,
            last.filter(|r| !r.message.is_empty())
                .map(|r| format!(" — {}", r.message))
                .unwrap_or_default()
        );
    }
    Ok(())
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

/// What `up` wrote to `fleet.json`, read back by the other commands.
struct FleetFile {
    json: serde_json::Value,
}

impl FleetFile {
    fn read(dir: &Path) -> anyhow::Result<FleetFile> {
        let path = dir.join("fleet.json");
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
