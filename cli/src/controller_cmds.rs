//! Commands sent to the fleet's controller.
//!
//! No controller serves `fleet.v1.Controller` yet, so every command here
//! ends with a clear "needs a controller" error (exit code 1) rather than a
//! made-up answer. When one does, this module gets a `ControllerClient`
//! connected with `ClientTls::connect(addr, Expect::Controller)` and one
//! function per command, printing through the same [`crate::views`] and
//! [`crate::output`] as the agent commands, so scripts see one JSON shape
//! whichever way a command went.

use crate::args::Command;
use crate::exit::CliError;

/// Whether `command` also works against one board with `--agent`.
pub fn has_single_board_form(command: &Command) -> bool {
    match command {
        Command::Submit(_)
        | Command::Ps(_)
        | Command::Status { .. }
        | Command::Logs(_)
        | Command::Stop(_)
        | Command::Restart(_)
        | Command::Rm(_)
        | Command::Autostart { .. }
        | Command::StartAll
        | Command::StopAll
        | Command::Watch { .. }
        | Command::Power(_)
        | Command::Clocks(_)
        | Command::Node(crate::args::NodeCommand::Info { .. }) => true,
        Command::Cancel(_)
        | Command::Explain { .. }
        | Command::Events(_)
        | Command::Nodes
        | Command::Node(_)
        | Command::Policy(_) => false,
        // Local commands never come here.
        Command::Pki(_) | Command::Config | Command::Completions { .. } => true,
    }
}

/// Runs `command` against the controller at `addr` (`None`: no controller
/// configured).
pub async fn run(command: &Command, addr: Option<&str>) -> Result<(), CliError> {
    Err(CliError::NeedsController {
        command: command.name().to_owned(),
        controller: addr.map(str::to_owned),
        single_board: has_single_board_form(command),
    })
}
