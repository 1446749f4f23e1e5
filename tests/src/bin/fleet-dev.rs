//! `fleet-dev`: a local fleet of simulated Jetsons for a person to try.
//!
//! `fleet-dev up [--nodes N] [--demo]` makes a fleet CA, starts N boards
//! (each a private systemd manager with its own bus, journal, mount
//! namespace and cgroup) with a real `fleet-agent` on each, writes
//! `fleet.json` and a fleetctl config, and with `--demo` runs sample
//! experiments, showing their status and logs. Ctrl-C stops everything and
//! leaves no process, mount or cgroup behind.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fleet_proto::identity::Role;
use fleet_proto::v1::{self, agent_client::AgentClient, ExperimentState};
use fleet_testbed::agent::AgentHandle;
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
        } => up(nodes, &dir, demo, once).await,
    }
}

async fn up(nodes: u8, dir: &Path, demo: bool, once: bool) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=50).contains(&nodes),
        "--nodes must be between 1 and 50"
    );
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
    for (i, board) in boards.iter().enumerate() {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, i as u8 + 1));
        let agent = AgentHandle::start(board, &pki, ip).await?;
        println!("  {} agent at {}", board.name(), agent.addr);
        agents.push(agent);
    }
    let admin = pki.user("dev-admin", Role::Admin)?;
    write_fleet_files(&dir, &pki, &admin, &boards, &agents)?;

    let result = async {
        if demo {
            run_demo(&agents[0], &admin).await?;
        }
        if !once {
            println!("\nfleet is up; Ctrl-C stops it");
            tokio::signal::ctrl_c().await?;
        }
        anyhow::Ok(())
    }
    .await;
    println!("stopping…");
    drop(agents);
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
) -> anyhow::Result<()> {
    let nodes: Vec<serde_json::Value> = boards
        .iter()
        .zip(agents)
        .map(|(b, a)| {
            serde_json::json!({
                "name": b.name(),
                "agent": a.addr.to_string(),
                "dir": b.dir(),
                "agent_log": a.log,
            })
        })
        .collect();
    let fleet = serde_json::json!({
        "fleet": fleet_testbed::pki::FLEET,
        "ca": pki.ca_path,
        "admin_cert": admin.cert,
        "admin_key": admin.key,
        "nodes": nodes,
    });
    std::fs::write(dir.join("fleet.json"), serde_json::to_vec_pretty(&fleet)?)?;
    let mut ctl = format!("current_context = \"dev\"\n\n[contexts.dev]\nagent = {:?}\nnode = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        agents[0].addr.to_string(), boards[0].name(), pki.ca_path, admin.cert, admin.key);
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
        "\nwrote {}/fleet.json and {}\ntry, in another shell:\n  export FLEET_CONFIG_FILE={}\n  cargo run -q -p fleetctl -- ps\n  cargo run -q -p fleetctl -- node info",
        dir.display(),
        ctl_path.display(),
        ctl_path.display()
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
    agent: &AgentHandle,
    admin: &fleet_testbed::pki::CertFiles,
) -> anyhow::Result<()> {
    let mut c: AgentClient<Channel> = agent.client_as(admin).await?;
    println!("\n== demo on {} ==", agent.node);
    let specs = [
        demo_spec(
            "hello-world",
            "echo \"experiment $FLEET_EXPERIMENT_ID, epoch $FLEET_EPOCH\"; for i in 1 2 3 4 5; do echo step $i; sleep 1; done; echo done",
        ),
        demo_spec("flaky", "echo about to crash; sleep 1; exit 3"),
    ];
    for s in specs {
        let st = c
            .start_experiment(v1::StartExperimentRequest {
                spec: Some(s),
                epoch: 0,
            })
            .await?
            .into_inner();
        println!("started {} (epoch {})", st.id, st.epoch);
    }
    let mut watch = c
        .watch_experiments(v1::WatchExperimentsRequest::default())
        .await?
        .into_inner();
    let mut logs = c
        .stream_logs(v1::StreamLogsRequest {
            id: "hello-world".into(),
            tail: 100,
            since_unix_us: 0,
            follow: true,
        })
        .await?
        .into_inner();
    let mut finished = std::collections::HashSet::new();
    let deadline = tokio::time::sleep(Duration::from_secs(60));
    tokio::pin!(deadline);
    while finished.len() < 2 {
        tokio::select! {
            Some(ev) = watch.next() => {
                let ev = ev?;
                let st = ev.status.unwrap_or_default();
                println!("  [status] {:<12} {:<11} {} (crashes {})", st.id, format!("{:?}", st.state()).to_lowercase(), ev.change, st.crashes_total);
                if matches!(st.state(), ExperimentState::Succeeded | ExperimentState::Failed) {
                    finished.insert(st.id);
                }
            }
            Some(line) = logs.next() => {
                println!("  [log]    hello-world  {}", line?.message);
            }
            _ = &mut deadline => break,
        }
    }
    for id in ["hello-world", "flaky"] {
        let st = c
            .get_experiment(v1::ExperimentRef { id: id.into() })
            .await?
            .into_inner();
        println!(
            "{id}: {:?}{}",
            st.state(),
            if st.failure_message.is_empty() {
                String::new()
            } else {
                format!(" — {}", st.failure_message)
            }
        );
    }
    Ok(())
}
