//! Where each command goes: done here (PKI, completions, configuration,
//! dry runs), sent to one board's agent (`--agent`), or to the controller.

use clap::CommandFactory;
use serde::Serialize;

use crate::agent_cmds::{self, AgentTarget};
use crate::args::{Cli, Command, PkiCommand};
use crate::config::{self, ProcessEnv, Settings, Sourced, Target};
use crate::controller_cmds;
use crate::exit::CliError;
use crate::output::{key_values, Cell, Column, Out, Table};
use crate::spec_file::{self, LoadedSpec};
use crate::views::{SpecView, SubmitList, SubmitView};

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
            let specs = spec_file::load_all(&args.files)?;
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
            match &cli.command {
                Command::Submit(args) => {
                    let specs = spec_file::load_all(&args.files)?;
                    agent_cmds::submit(&target, &specs, args.wait, out).await
                }
                command => agent_cmds::run(command, &target, out).await,
            }
        }
        Target::Controller(addr) => controller_cmds::run(&cli.command, Some(&addr.value)).await,
        Target::None => controller_cmds::run(&cli.command, None).await,
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

/// A spec for people, defaults written out.
pub fn spec_lines(s: &SpecView) -> Vec<String> {
    let mut pairs: Vec<(&str, String)> = vec![(
        "command",
        s.command
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    )];
    if let Some(dir) = &s.working_dir {
        pairs.push(("working dir", dir.clone()));
    }
    if !s.env.is_empty() {
        let env: Vec<String> = s
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        pairs.push(("env", env.join(" ")));
    }
    if let Some(name) = &s.config_name {
        pairs.push((
            "config",
            format!("{name} ({})", crate::output::bytes(s.config_bytes as u64)),
        ));
    }
    pairs.push(("priority", s.priority.to_string()));
    let resources: Vec<String> = [
        s.memory_max.as_ref().map(|m| format!("memory at most {m}")),
        s.cpu_quota.as_ref().map(|c| format!("cpu at most {c}")),
        s.gpu.then(|| "needs a GPU".to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect();
    pairs.push((
        "resources",
        if resources.is_empty() {
            "the unit template's defaults".to_owned()
        } else {
            resources.join(", ")
        },
    ));
    let mut placement: Vec<String> = Vec::new();
    if let Some(node) = &s.node {
        placement.push(format!("on {node}"));
    }
    if !s.labels.is_empty() {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        placement.push(format!("labels {}", labels.join(",")));
    }
    if let Some(mode) = &s.power_mode {
        placement.push(format!("power mode {mode}"));
    }
    if let Some(t) = s.max_temp_c {
        placement.push(format!("below {t} °C"));
    }
    pairs.push((
        "placement",
        if placement.is_empty() {
            "any board".to_owned()
        } else {
            placement.join(", ")
        },
    ));
    let restarts = match (s.restart.as_str(), s.max_restarts) {
        ("never", _) | (_, Some(0)) => "never restarted".to_owned(),
        (_, Some(n)) => format!(
            "restarted on failure up to {n} times, {} apart",
            s.restart_delay
        ),
        (policy, None) => format!("restart {policy}"),
    };
    pairs.push((
        "lifecycle",
        format!(
            "{restarts}; runs at most {}; stop timeout {}; on disruption {}; autostart {}",
            s.max_runtime.as_deref().unwrap_or("without limit"),
            s.stop_timeout,
            s.on_disruption,
            if s.autostart { "on" } else { "off" }
        ),
    ));
    key_values(&pairs)
}

/// An argument as a shell would need it: bare when safe, else in single quotes.
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%{}$".contains(c));
    if safe {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("python3"), "python3");
        assert_eq!(shell_quote("${FLEET_CONFIG}"), "${FLEET_CONFIG}");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
