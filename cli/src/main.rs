//! `fleetctl`: the researcher's command line for the fleet.
//!
//! Parses the command line, runs the command, and turns its error into
//! `fleetctl: <message>` and a documented exit code ([`exit`]).
//!
//! This crate is a gRPC edge: it converts wire messages into the
//! documented JSON of [`views`] and into tables, and checks input with
//! `fleet-proto`'s rules before sending it. Scheduling, board control and
//! state never live here; they are the controller's and the agents'.

mod agent_cmds;
mod args;
mod config;
mod controller_cmds;
mod dispatch;
mod exit;
mod follow;
mod output;
mod pki_cmds;
mod render;
mod spec_file;
#[cfg(test)]
mod testing;
mod time;
mod views;

use clap::Parser;

use crate::args::Cli;
use crate::config::ProcessEnv;
use crate::exit::{CliError, ExitCode};
use crate::output::Out;

fn main() -> std::process::ExitCode {
    // Usage errors exit with 2, --help and --version with 0 (clap's codes).
    let cli = Cli::parse();
    let result = config::output_format(&cli.global.flags(), &ProcessEnv)
        .map_err(CliError::from)
        .and_then(|format| {
            let mut out = Out::stdout(format);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Output)?
                .block_on(dispatch::run(&cli, &mut out))
        });
    match result {
        Ok(()) => ExitCode::Ok.into(),
        // The reader went away (`fleetctl logs x | head`): not a failure.
        Err(e) if e.is_broken_pipe() => ExitCode::Ok.into(),
        Err(e) => {
            eprintln!("{}", e.report());
            e.exit_code().into()
        }
    }
}
