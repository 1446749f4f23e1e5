//! `fleet-controller`: a thin main. Reads the config (exit 64 on a bad
//! one), runs the controller until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_controller::config::ControllerConfig;

const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "fleet-controller",
    version,
    about = "The fleet's experiment queue and scheduler"
)]
struct Cli {
    #[arg(
        long,
        default_value = "/etc/fleet/controller.toml",
        env = "FLEET_CONTROLLER_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a config file with every default.
    GenConfig,
    /// Check the config file and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    fleet_proto::daemon::init_tracing();
    if matches!(cli.command, Some(Command::GenConfig)) {
        print!(
            "{}",
            toml::to_string(&ControllerConfig::example()).expect("serializes")
        );
        return ExitCode::SUCCESS;
    }
    let config = match ControllerConfig::from_file(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-controller: {}", fleet_proto::daemon::error_chain(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if matches!(cli.command, Some(Command::CheckConfig)) {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(fleet_controller::app::run(
        config,
        fleet_proto::daemon::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
