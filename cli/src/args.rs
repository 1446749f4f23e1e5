//! The command line: every command, flag and argument, as clap parses them.
//!
//! Global flags work before or after the command. Parsing errors end with
//! exit code 2 (clap's), `--help` and `--version` with 0.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Flags;
use crate::output::OutputFormat;

const AFTER_HELP: &str = "\
Configuration (highest first): flags, then FLEET_CONTROLLER, FLEET_AGENT, FLEET_NODE,
FLEET_CONTEXT, FLEET_CA, FLEET_CERT, FLEET_KEY, FLEET_OUTPUT, then the selected context of
the config file ($XDG_CONFIG_HOME/fleet/fleetctl.toml, else ~/.config/fleet/fleetctl.toml;
FLEET_CONFIG_FILE or --config name another), then defaults. `fleetctl config` shows the result.

Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 refused (permission, policy, stale
epoch, or the board declines, e.g. too hot).";

/// The fleet's command line: submit and watch experiments on Jetson boards,
/// manage boards, and run the fleet's PKI.
#[derive(Debug, Parser)]
#[command(name = "fleetctl", version, after_help = AFTER_HELP, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Clone, Default, Args)]
pub struct GlobalArgs {
    /// Use this context of the config file
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Talk to the fleet's controller
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT",
        conflicts_with = "agent"
    )]
    pub controller: Option<String>,
    /// Talk to one board's agent directly (a single-board lab)
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub agent: Option<String>,
    /// The board meant: with --agent, the node name the agent must prove
    /// (default: any agent of the fleet); with a controller (from this flag
    /// or FLEET_NODE), ps, events and watch show only this board's, and
    /// node info and power act on it
    #[arg(long, global = true, value_name = "NAME")]
    pub node: Option<String>,
    /// The fleet CA certificate
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Your certificate (`pki revoke`: the certificate to revoke)
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// Your private key
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
    /// The config file
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

impl GlobalArgs {
    pub fn flags(&self) -> Flags {
        Flags {
            context: self.context.clone(),
            controller: self.controller.clone(),
            agent: self.agent.clone(),
            node: self.node.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            output: self.output,
            config: self.config.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit experiments from their TOML spec files
    Submit(SubmitArgs),
    /// List experiments
    #[command(visible_alias = "list")]
    Ps(PsArgs),
    /// Show one experiment in full, with its runs and counters
    Status {
        /// The experiment's id
        id: String,
    },
    /// Show an experiment's log lines
    Logs(LogsArgs),
    /// Stop experiments gracefully (SIGTERM, then SIGKILL after their stop timeout)
    Stop(IdsArgs),
    /// Cancel experiments for good: queued ones leave the queue, placed ones
    /// are stopped first (controller)
    Cancel(IdsArgs),
    /// Restart experiments
    Restart(IdsArgs),
    /// Stop experiments and delete them from the board (--agent)
    Rm(IdsArgs),
    /// Start an experiment again when the board reboots, or not (--agent)
    Autostart {
        /// The experiment's id
        id: String,
        /// on or off
        state: OnOff,
    },
    /// Start every experiment whose autostart is on (--agent)
    StartAll,
    /// Stop every running experiment (--agent)
    StopAll,
    /// Print experiment state changes as they happen, until Ctrl-C (with a
    /// controller: its events of experiments)
    Watch {
        /// Only this experiment
        id: Option<String>,
    },
    /// Why an experiment was placed where it is, or why it waits (controller)
    Explain {
        /// The experiment's id
        id: String,
    },
    /// The fleet's event log (controller)
    Events(EventsArgs),
    /// List the fleet's boards (controller)
    Nodes(NodesArgs),
    /// One board: information, cordon, drain, labels
    #[command(subcommand)]
    Node(NodeCommand),
    /// Switch a board's nvpmodel power mode
    #[command(override_usage = "fleetctl power [OPTIONS] [NODE] <MODE>")]
    Power(PowerArgs),
    /// Turn jetson_clocks on or off on a board
    #[command(override_usage = "fleetctl clocks [OPTIONS] [NODE] <on|off>")]
    Clocks(ClocksArgs),
    /// The controller's scheduling policy (controller)
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The fleet's certificate authority: create it, issue and revoke certificates
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Show the effective configuration and where each value comes from
    Config,
    /// Print a shell completion script
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// The command's name as typed, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Submit(_) => "submit",
            Command::Ps(_) => "ps",
            Command::Status { .. } => "status",
            Command::Logs(_) => "logs",
            Command::Stop(_) => "stop",
            Command::Cancel(_) => "cancel",
            Command::Restart(_) => "restart",
            Command::Rm(_) => "rm",
            Command::Autostart { .. } => "autostart",
            Command::StartAll => "start-all",
            Command::StopAll => "stop-all",
            Command::Watch { .. } => "watch",
            Command::Explain { .. } => "explain",
            Command::Events(_) => "events",
            Command::Nodes(_) => "nodes",
            Command::Node(NodeCommand::Info { .. }) => "node info",
            Command::Node(NodeCommand::Cordon { .. }) => "node cordon",
            Command::Node(NodeCommand::Uncordon { .. }) => "node uncordon",
            Command::Node(NodeCommand::Drain(_)) => "node drain",
            Command::Node(NodeCommand::Label { .. }) => "node label",
            Command::Power(_) => "power",
            Command::Clocks(_) => "clocks",
            Command::Policy(PolicyCommand::Get) => "policy get",
            Command::Policy(PolicyCommand::Set(_)) => "policy set",
            Command::Pki(PkiCommand::Init(_)) => "pki init",
            Command::Pki(PkiCommand::Issue(_)) => "pki issue",
            Command::Pki(PkiCommand::Revoke(_)) => "pki revoke",
            Command::Config => "config",
            Command::Completions { .. } => "completions",
        }
    }
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Spec files (TOML)
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Check the files and show what would be started; start nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Wait until each experiment runs, succeeds or fails
    #[arg(long, conflicts_with = "dry_run")]
    pub wait: bool,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Only experiments in these states
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STATE")]
    pub state: Vec<StateFilter>,
    /// Only experiments requiring this label (controller; repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Only boards carrying this label (repeatable)
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
}

/// Experiment states as `--state` takes them: a board's states and the
/// controller's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    Queued,
    Placing,
    Starting,
    Running,
    Restarting,
    Stopping,
    Succeeded,
    Failed,
    Stopped,
    Disrupted,
    Unknown,
    Cancelled,
}

impl StateFilter {
    pub fn as_str(self) -> &'static str {
        match self {
            StateFilter::Queued => "queued",
            StateFilter::Placing => "placing",
            StateFilter::Starting => "starting",
            StateFilter::Running => "running",
            StateFilter::Restarting => "restarting",
            StateFilter::Stopping => "stopping",
            StateFilter::Succeeded => "succeeded",
            StateFilter::Failed => "failed",
            StateFilter::Stopped => "stopped",
            StateFilter::Disrupted => "disrupted",
            StateFilter::Unknown => "unknown",
            StateFilter::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The experiment's id
    pub id: String,
    /// Keep printing new lines until Ctrl-C
    #[arg(short, long)]
    pub follow: bool,
    /// The last N lines (default: all, or 10 with --follow)
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub lines: Option<u32>,
    /// Only lines since a time: how long ago ("10m", "1h30m") or RFC 3339 ("2025-06-01T12:00:00Z")
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
}

#[derive(Debug, Args)]
pub struct IdsArgs {
    /// Experiment ids
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Why, recorded with the event (controller)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of these experiments
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Keep printing new events until Ctrl-C; reconnects when the
    /// controller goes away and resumes after the last event printed
    #[arg(short, long)]
    pub follow: bool,
    /// Start after this event sequence number (default: the whole log, or
    /// new events only with --follow)
    #[arg(long, value_name = "SEQ")]
    pub since: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    pub fn enabled(self) -> bool {
        self == OnOff::On
    }
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// A board's model, memory, power modes and current temperatures
    Info {
        /// The board (with --agent: the node name the agent must prove)
        node: Option<String>,
    },
    /// Place nothing new on a board (controller)
    Cordon {
        node: String,
        /// Why, for people
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Place work on a board again, ending a cordon or a drain (controller)
    Uncordon { node: String },
    /// Empty a board (controller)
    Drain(DrainArgs),
    /// Set or remove (KEY-) a board's labels (controller)
    Label {
        node: String,
        #[arg(required = true, value_name = "KEY=VALUE|KEY-")]
        labels: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    pub node: String,
    /// Let running experiments finish
    #[arg(long, conflicts_with = "requeue")]
    pub wait: bool,
    /// Stop running experiments now and queue them again
    #[arg(long)]
    pub requeue: bool,
    /// Why, for people
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct PowerArgs {
    #[arg(
        required = true,
        num_args = 1..=2,
        value_name = "[NODE] MODE",
        help = "The board (optional with --agent) and the nvpmodel mode, by name (\"MAXN\") or id (\"0\")"
    )]
    pub args: Vec<String>,
    /// Switch even if the board must reboot for it
    #[arg(long)]
    pub allow_reboot: bool,
    /// Switch even though experiments placed there ask for another mode
    /// (controller)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ClocksArgs {
    #[arg(
        required = true,
        num_args = 1..=2,
        value_name = "[NODE] on|off",
        help = "The board (optional with --agent) and the new state"
    )]
    pub args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the scheduling policy
    Get,
    /// Switch the scheduling policy, and optionally its weights
    Set(PolicySetArgs),
}

#[derive(Debug, Args)]
pub struct PolicySetArgs {
    /// balanced, coolest, least-loaded, spread or pack
    pub name: String,
    /// A score weight: temperature, load, memory, spread or pack, e.g.
    /// `--weight temperature=0.5,load=0.3`; weights not given keep their
    /// value
    #[arg(long, value_delimiter = ',', value_name = "TERM=WEIGHT")]
    pub weight: Vec<String>,
    /// Whether a queued experiment that cannot be placed holds every one
    /// behind it
    #[arg(long, value_name = "on|off")]
    pub strict_order: Option<OnOff>,
    /// A board is too hot from its warn temperature minus this many °C
    #[arg(long, value_name = "CELSIUS")]
    pub temp_margin: Option<f64>,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Create the fleet CA (ca.pem, ca.key) in a directory
    Init(PkiInitArgs),
    /// Issue a certificate and key signed by the fleet CA
    Issue(PkiIssueArgs),
    /// Revoke certificates: add them to the fleet's CRL (crl.pem)
    Revoke(PkiRevokeArgs),
}

#[derive(Debug, Args)]
pub struct PkiInitArgs {
    /// Where the CA goes
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    #[arg(
        long,
        value_name = "NAME",
        help = "The fleet's name, the trust domain of every identity (spiffe://<fleet>/...)"
    )]
    pub fleet: String,
    /// Replace an existing CA (every certificate it issued stops working)
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PkiIssueArgs {
    /// controller, agent NODE, or user NAME
    #[arg(value_enum)]
    pub kind: IssueKind,
    /// The node (agent) or user name
    pub name: Option<String>,
    /// A user's role: admin, operator or viewer
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,
    /// The CA's directory (from `pki init`); the new files go there too
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// A DNS name or IP address the controller or agent is reached by (repeatable)
    #[arg(long, value_name = "DNS_OR_IP")]
    pub san: Vec<String>,
    /// Validity in days
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    pub days: u32,
    /// Replace existing certificate and key files of the same name
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IssueKind {
    Controller,
    Agent,
    User,
}

#[derive(Debug, Args)]
pub struct PkiRevokeArgs {
    /// The CA's directory (from `pki init`); crl.pem is updated there
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Serial numbers to revoke (hex, as `pki issue` printed them); or give
    /// the certificate file with --cert FILE
    #[arg(value_name = "SERIAL")]
    pub serials: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fleetctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let a = parse(&["--agent", "b:7443", "ps", "--state", "running,failed"]).unwrap();
        let b = parse(&[
            "ps", "--agent", "b:7443", "--state", "running", "--state", "failed",
        ])
        .unwrap();
        assert_eq!(a.global.agent.as_deref(), Some("b:7443"));
        assert_eq!(b.global.agent.as_deref(), Some("b:7443"));
        let (Command::Ps(pa), Command::Ps(pb)) = (&a.command, &b.command) else {
            panic!("not ps")
        };
        assert_eq!(pa.state, vec![StateFilter::Running, StateFilter::Failed]);
        assert_eq!(pa.state, pb.state);
        assert!(matches!(parse(&["list"]).unwrap().command, Command::Ps(_)));
    }

    #[test]
    fn usage_errors_exit_2() {
        for bad in [
            vec!["submit"],
            vec!["--controller", "a:1", "--agent", "b:2", "ps"],
            vec!["ps", "--state", "sleeping"],
            vec!["autostart", "x", "maybe"],
            vec!["power", "a", "b", "c"],
            vec!["submit", "a.toml", "--dry-run", "--wait"],
            vec!["-o", "yaml", "ps"],
        ] {
            let err = parse(&bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn pki_revoke_takes_serials_or_the_global_cert() {
        let cli = parse(&["pki", "revoke", "--dir", "d", "--cert", "x.pem"]).unwrap();
        assert_eq!(cli.global.cert, Some(PathBuf::from("x.pem")));
        let cli = parse(&["pki", "revoke", "--dir", "d", "01:02", "0a"]).unwrap();
        let Command::Pki(PkiCommand::Revoke(r)) = cli.command else {
            panic!("not revoke")
        };
        assert_eq!(r.serials, vec!["01:02", "0a"]);
    }
}
