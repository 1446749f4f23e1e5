//! `fleet-agent`: a thin main. Parses flags, reads the config and
//! `FLEET_CONTROLLER` (exit 64 on a bad one, or on a certificate naming
//! another node), builds the app and serves until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_agent::app::{App, IdentityMismatch};
use fleet_agent::config::{AgentConfig, ENV_CONTROLLER};

/// sysexits' EX_CONFIG.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "fleet-agent",
    version,
    about = "Runs one Jetson board's fleet experiments"
)]
struct Cli {
    /// Path of agent.toml.
    #[arg(
        long,
        default_value = "/etc/fleet/agent.toml",
        env = "FLEET_AGENT_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a config file with every default.
    GenConfig,
    /// Check the config file (and FLEET_CONTROLLER) and exit.
    CheckConfig,
    /// Record how a run ended (run by systemd from `ExecStopPost=`).
    #[command(hide = true)]
    RecordExit { path: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::RecordExit { path }) = &cli.command {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        return match fleet_agent::exit_record::ExitRecord::from_env(now).write(path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fleet-agent record-exit {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    fleet_proto::daemon::init_tracing();
    match cli.command {
        Some(Command::GenConfig) => {
            print!(
                "{}",
                toml::to_string(&AgentConfig::example()).expect("serializes")
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::CheckConfig) | Some(Command::RecordExit { .. }) | None => {}
    }
    let config = match AgentConfig::from_file(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-agent: {}", fleet_proto::daemon::error_chain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let env_controller = std::env::var(ENV_CONTROLLER).ok();
    let join = match config.join_settings(env_controller.as_deref()) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("fleet-agent: {}: {e}", cli.config.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if matches!(cli.command, Some(Command::CheckConfig)) {
        println!("{}: ok", cli.config.display());
        match &join {
            Some(j) => println!(
                "joins the controller at {} (from {})",
                j.controller, j.source
            ),
            None => println!(
                "joins no controller (controller.address and {ENV_CONTROLLER} are not set)"
            ),
        }
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        let app = App::build(config).await?.with_join(join);
        app.run(fleet_proto::daemon::shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<IdentityMismatch>().is_some() => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
