//! fleet-faults: the fault suite with its counts as arguments, for a soak.
//!
//! ```sh
//! cargo build --workspace --bins
//! sudo target/debug/fleet-faults --controller-kills 1000 --agent-kills 100
//! ```
//!
//! Three simulated boards and a controller on this machine (root, systemd;
//! see README.md), a storm of submissions, and the faults in an order drawn
//! from the seed; then the checks of `tests/tests/faults_e2e.rs`: nothing
//! acknowledged lost, nothing on two boards, no unit restarted and no phase
//! changed by an agent restart, no outcome that differs between controller
//! and board. Prints the report (`--json` for JSON) and exits 1 on any
//! violation, 2 when the suite could not run.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fleet_testbed::faults::{self, Plan};

#[derive(Parser, Debug)]
#[command(
    name = "fleet-faults",
    about = "Runs the fault suite: controller and agent kills, partitions and reboots under a storm of submissions, then checks that nothing was lost or mislabelled"
)]
struct Args {
    /// kill -9 and restart of the controller.
    #[arg(long, default_value_t = 50)]
    controller_kills: u32,
    /// kill -9 and restart of an agent whose board runs experiments.
    #[arg(long, default_value_t = 20)]
    agent_kills: u32,
    /// SIGSTOP of an agent past node_lost_after_s, then SIGCONT.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Reboots of a board.
    #[arg(long, default_value_t = 2)]
    reboots: u32,
    /// Seed of the run's random choices (default: from the clock; the
    /// report prints it).
    #[arg(long)]
    seed: Option<u64>,
    /// The controller's heartbeat_timeout_s.
    #[arg(long, default_value_t = 4)]
    heartbeat_timeout_s: u64,
    /// The controller's node_lost_after_s (a partition lasts past it).
    #[arg(long, default_value_t = 6)]
    node_lost_after_s: u64,
    /// The controller's tick_ms.
    #[arg(long, default_value_t = 50)]
    tick_ms: u64,
    /// Pause between two submissions, in ms: MIN-MAX.
    #[arg(long, default_value = "100-300", value_parser = range)]
    submit_every_ms: (u64, u64),
    /// Pause between two faults, in ms: MIN-MAX.
    #[arg(long, default_value = "50-250", value_parser = range)]
    pause_ms: (u64, u64),
    /// How long the fleet may take to settle after the faults, in seconds.
    #[arg(long, default_value_t = 300)]
    settle_timeout_s: u64,
    /// The daemons listen on 127.0.NET.x.
    #[arg(long, default_value_t = 41)]
    net: u8,
    /// Keep the run's directory and evidence even when all went well.
    #[arg(long)]
    keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Say each fault as it happens.
    #[arg(long, short)]
    verbose: bool,
}

fn range(s: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u64 = lo.trim().parse().map_err(|e| format!("{lo:?}: {e}"))?;
    let hi: u64 = hi.trim().parse().map_err(|e| format!("{hi:?}: {e}"))?;
    if lo > hi {
        return Err(format!("{lo} is more than {hi}"));
    }
    Ok((lo, hi))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let plan = Plan {
        controller_kills: args.controller_kills,
        agent_kills: args.agent_kills,
        partitions: args.partitions,
        reboots: args.reboots,
        seed: args.seed.unwrap_or_else(faults::seed_from_clock),
        heartbeat_timeout_s: args.heartbeat_timeout_s,
        node_lost_after_s: args.node_lost_after_s,
        tick_ms: args.tick_ms,
        submit_every_ms: args.submit_every_ms,
        pause_ms: args.pause_ms,
        name: "fleet-faults".into(),
        net: args.net,
        settle_timeout: Duration::from_secs(args.settle_timeout_s),
        verbose: args.verbose,
        keep: args.keep,
        ..Plan::default()
    };
    let seed = plan.seed;
    match faults::run(plan).await {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("fleet-faults: {e}"),
                }
            } else {
                println!("{report}");
            }
            if report.violations() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("fleet-faults: the suite (seed {seed}) could not run: {e:#}");
            ExitCode::from(2)
        }
    }
}
