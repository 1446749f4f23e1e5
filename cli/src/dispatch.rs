//! Where each command goes: done here (PKI, completions, configuration,
//! dry runs without a controller), sent to one board's agent (`--agent`),
//! or to the controller.

use clap::CommandFactory;
use serde::Serialize;

use crate::agent_cmds::{self, AgentTarget};
use crate::args::{Cli, Command, PkiCommand};
use crate::config::{self, ProcessEnv, Settings, Source, Sourced, Target};
use crate::controller_cmds::{self, ControllerTarget};
use crate::exit::{chain, CliError};
use crate::output::{Cell, Column, Out, Table};
use crate::render::spec::spec_lines;
use crate::spec_file::{self, LoadedSpec};
use crate::views::{SpecView, SubmitList, SubmitView};
use fleet_proto::tls::{ClientTls, Expect};

/// Runs the parsed command line.
pub async fn run(cli: &Cli, out: &mut Out) -> Result<(), CliError> {
    // Commands that need neither the config file nor a peer.
    match &cli.command {
        Command::Pki(PkiCommand::Init(args)) => return crate::pki_cmds::init(args, out),
        Command::Pki(PkiCommand::Issue(args)) => return crate::pki_cmds::issue(args, out),
        Command::Pki(PkiCommand::Revoke(args)) => {
            return crate::pki_cmds::revoke(args, cli.global.cert.as_deref(), out)
        }
        Command::Completions { shell } => return completions(*shell, out),
        Command::Submit(args) if args.dry_run => {
            // Every file is checked before any peer is asked; with a
            // controller, its decision is shown too.
            let specs = spec_file::load_all(&args.files)?;
            match config::load(&cli.global.flags(), &ProcessEnv) {
                Ok(settings) => {
                    if let Target::Controller(addr) = &settings.target {
                        let target = controller_target(&addr.value, &settings);
                        return controller_cmds::submit(&target, &specs, true, false, out).await;
                    }
                }
                Err(e) => eprintln!(
                    "fleetctl: note: no controller asked, the configuration cannot be used: {}",
                    chain(&e)
                ),
            }
            return dry_run(&specs, out);
        }
        _ => {}
    }

    let settings = config::load(&cli.global.flags(), &ProcessEnv)?;
    if let Command::Config = cli.command {
        return show_config(&settings, out);
    }
    match &settings.target {
        Target::Agent(addr) => {
            let target = AgentTarget {
                addr: &addr.value,
                node: settings.node.as_ref().map(|n| n.value.clone()),
                settings: &settings,
            };
            let result = match &cli.command {
                Command::Submit(args) => {
                    let specs = spec_file::load_all(&args.files)?;
                    agent_cmds::submit(&target, &specs, args.wait, out).await
                }
                command => agent_cmds::run(command, &target, out).await,
            };
            match result {
                Err(e) => Err(certificate_refusal(e, "the agent", &addr.value, &settings).await),
                ok => ok,
            }
        }
        Target::Controller(addr) => {
            let target = controller_target(&addr.value, &settings);
            match controller_cmds::run(&cli.command, &target, out).await {
                Err(e) => {
                    Err(certificate_refusal(e, "the controller", &addr.value, &settings).await)
                }
                ok => ok,
            }
        }
        Target::None => Err(CliError::NeedsController {
            command: cli.command.name().to_owned(),
            single_board: has_single_board_form(&cli.command),
            with_agent: false,
        }),
    }
}

/// `e`, told as a refusal of the configured certificate when it is one.
/// A call that failed at the connection asks the peer once more, on a
/// connection of its own, whether it refuses the certificate.
async fn certificate_refusal(
    e: CliError,
    peer: &'static str,
    addr: &str,
    settings: &Settings,
) -> CliError {
    let cert = &settings.cert.value;
    let Ok(tls) = ClientTls::from_files(&settings.ca.value, cert, &settings.key.value) else {
        return e;
    };
    let probed = if e.is_transport_failure() {
        let expect = match peer {
            "the controller" => Expect::Controller,
            _ => Expect::AnyAgent,
        };
        tls.refusal(addr, expect).await
    } else {
        None
    };
    e.into_certificate_refusal(peer, cert, &tls.identity().to_string(), probed)
}

/// The controller at `addr`. `--node` counts only when given on the
/// command line or in `FLEET_NODE`: a context's `node` names the board of
/// an agent context, not a filter.
fn controller_target<'a>(addr: &'a str, settings: &'a Settings) -> ControllerTarget<'a> {
    let node = settings
        .node
        .as_ref()
        .filter(|n| matches!(n.source, Source::Flag(_) | Source::Env(_)))
        .map(|n| n.value.as_str());
    ControllerTarget {
        addr,
        settings,
        node,
    }
}

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
        | Command::Nodes(_)
        | Command::Node(_)
        | Command::Policy(_) => false,
        // Local commands never come here.
        Command::Pki(_) | Command::Config | Command::Completions { .. } => true,
    }
}

fn completions(shell: clap_complete::Shell, out: &mut Out) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "fleetctl", &mut script);
    out.raw(&script)
}

/// `submit --dry-run`: every file checked, what would be started shown,
/// nothing sent.
fn dry_run(specs: &[LoadedSpec], out: &mut Out) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(&SubmitList {
            submitted: specs
                .iter()
                .map(|l| SubmitView {
                    file: l.path.display().to_string(),
                    dry_run: true,
                    spec: SpecView::from(&l.normalized()),
                    status: None,
                    experiment: None,
                    decision: None,
                    event_seq: None,
                    already_submitted: false,
                })
                .collect(),
        });
    }
    for (i, loaded) in specs.iter().enumerate() {
        if i > 0 {
            out.line("")?;
        }
        let spec = SpecView::from(&loaded.normalized());
        let id = spec
            .id
            .clone()
            .unwrap_or_else(|| "an experiment (id chosen on submission)".to_owned());
        out.line(&format!(
            "{}: valid; would start {id}",
            loaded.path.display()
        ))?;
        for line in spec_lines(&spec) {
            out.line(&format!("  {line}"))?;
        }
    }
    out.line("dry run: nothing was started")
}

/// `fleetctl config` in JSON.
#[derive(Debug, Serialize)]
struct ConfigView<'a> {
    config_file: Option<String>,
    context: Option<&'a Sourced<String>>,
    controller: Option<&'a Sourced<String>>,
    agent: Option<&'a Sourced<String>>,
    node: Option<&'a Sourced<String>>,
    ca: Sourced<String>,
    cert: Sourced<String>,
    key: Sourced<String>,
    output: Sourced<&'static str>,
}

fn show_config(s: &Settings, out: &mut Out) -> Result<(), CliError> {
    let path = |p: &Sourced<std::path::PathBuf>| Sourced {
        value: p.value.display().to_string(),
        source: p.source.clone(),
    };
    let (controller, agent) = match &s.target {
        Target::Controller(c) => (Some(c), None),
        Target::Agent(a) => (None, Some(a)),
        Target::None => (None, None),
    };
    let view = ConfigView {
        config_file: s.config_file.as_ref().map(|p| p.display().to_string()),
        context: s.context.as_ref(),
        controller,
        agent,
        node: s.node.as_ref(),
        ca: path(&s.ca),
        cert: path(&s.cert),
        key: path(&s.key),
        output: Sourced {
            value: s.output.value.as_str(),
            source: s.output.source.clone(),
        },
    };
    if out.is_json() {
        return out.json(&view);
    }
    let mut table = Table::new(vec![
        Column::left("SETTING").fixed(),
        Column::left("VALUE"),
        Column::left("FROM").fixed(),
    ]);
    let unset = || Cell::new("-");
    let row = |table: &mut Table, name: &str, v: Option<&Sourced<String>>| {
        table.row(match v {
            Some(v) => vec![
                name.into(),
                v.value.clone().into(),
                v.source.to_string().into(),
            ],
            None => vec![name.into(), unset(), unset()],
        });
    };
    table.row(vec![
        "config file".into(),
        view.config_file
            .clone()
            .unwrap_or_else(|| "(none found)".to_owned())
            .into(),
        unset(),
    ]);
    row(&mut table, "context", view.context);
    row(&mut table, "controller", view.controller);
    row(&mut table, "agent", view.agent);
    row(&mut table, "node", view.node);
    row(&mut table, "ca", Some(&view.ca));
    row(&mut table, "cert", Some(&view.cert));
    row(&mut table, "key", Some(&view.key));
    let output = Sourced {
        value: view.output.value.to_owned(),
        source: view.output.source.clone(),
    };
    row(&mut table, "output", Some(&output));
    out.table(&table)
}
