//! Commands sent straight to one board's agent (`--agent HOST:PORT`), for
//! a lab with a single board or for looking at one board closely.
//!
//! Each command is one or a few calls of `fleet.v1.Agent` over mutual TLS;
//! the answers are shown through [`crate::views`]. With several ids, every
//! id is tried and each failure reported; the exit code is the first
//! failure's.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_proto::identity::validate_node_name;
use fleet_proto::spec::ExperimentId;
use fleet_proto::tls::{ClientTls, Expect};
use fleet_proto::v1;
use fleet_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::args::{ClocksArgs, Command, LogsArgs, NodeCommand, OnOff, PowerArgs, PsArgs};
use crate::config::Settings;
use crate::exit::CliError;
use crate::output::Out;
use crate::render::board::{
    clocks_text, event_line, experiment_note, experiment_table, log_line, node_lines,
    power_outcome, state_color, status_lines, zone_table,
};
use crate::spec_file::{generate_id, LoadedSpec};
use crate::time::{now_us, parse_since};
use crate::views::{
    state_word, ClocksView, EventView, ExperimentList, ExperimentView, LogLineView, NodeView,
    PowerView, RemoveView, SpecView, SubmitList, SubmitView,
};

/// How long `node info` waits for a telemetry sample before showing the
/// board without one.
const TELEMETRY_WAIT: Duration = Duration::from_secs(3);
/// The sampling interval asked of the agent for that one sample.
const TELEMETRY_INTERVAL_MS: u32 = 500;

/// One board's agent, and how to reach it.
pub struct AgentTarget<'a> {
    pub addr: &'a str,
    /// The node name the agent must prove (`--node`); any agent when `None`.
    pub node: Option<String>,
    pub settings: &'a Settings,
}

impl AgentTarget<'_> {
    /// Connects with the configured certificate, expecting the given node
    /// or any agent of the fleet.
    async fn connect(&self, node: Option<&str>) -> Result<AgentClient<Channel>, CliError> {
        let node = merge_node(self.node.as_deref(), node)?;
        if let Some(n) = &node {
            validate_node_name(n).map_err(|e| CliError::Usage(e.to_string()))?;
        }
        let s = self.settings;
        let tls = ClientTls::from_files(&s.ca.value, &s.cert.value, &s.key.value)?;
        CliError::check_validity("the agent", &s.cert.value, &tls)?;
        let expect = match node {
            Some(n) => Expect::Agent(n),
            None => Expect::AnyAgent,
        };
        let channel = tls.connect(self.addr, expect).await?;
        Ok(AgentClient::new(channel))
    }
}

/// The node from `--node` and the one a command names, which must agree.
pub fn merge_node(flag: Option<&str>, arg: Option<&str>) -> Result<Option<String>, CliError> {
    match (flag, arg) {
        (Some(f), Some(a)) if f != a => Err(CliError::Usage(format!(
            "--node {f} and the node \"{a}\" named in the command differ; name one board"
        ))),
        (f, a) => Ok(a.or(f).map(str::to_owned)),
    }
}

/// Checks an experiment id before any call, as the board would.
pub fn check_id(id: &str) -> Result<(), CliError> {
    ExperimentId::new(id)
        .map(drop)
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// Runs `command` against the agent.
pub async fn run(
    command: &Command,
    target: &AgentTarget<'_>,
    out: &mut Out,
) -> Result<(), CliError> {
    match command {
        Command::Ps(args) => ps(target, args, out).await,
        Command::Status { id } => status(target, id, out).await,
        Command::Logs(args) => logs(target, args, out).await,
        Command::Stop(a) | Command::Restart(a) | Command::Rm(a) if a.reason.is_some() => {
            Err(CliError::Usage(
                "--reason is recorded by a controller; a board's agent keeps none".to_owned(),
            ))
        }
        Command::Stop(a) => each_id(target, &a.ids, Action::Stop, out).await,
        Command::Restart(a) => each_id(target, &a.ids, Action::Restart, out).await,
        Command::Rm(a) => each_id(target, &a.ids, Action::Remove, out).await,
        Command::Autostart { id, state } => autostart(target, id, *state, out).await,
        Command::StartAll => bulk(target, true, out).await,
        Command::StopAll => bulk(target, false, out).await,
        Command::Watch { id } => watch(target, id.as_deref(), out).await,
        Command::Node(NodeCommand::Info { node }) => node_info(target, node.as_deref(), out).await,
        Command::Power(args) => power(target, args, out).await,
        Command::Clocks(args) => clocks(target, args, out).await,
        // Submit is started by the caller with its files loaded; the rest
        // have no single-board form.
        other => Err(CliError::NeedsController {
            command: other.name().to_owned(),
            single_board: false,
            with_agent: true,
        }),
    }
}

/// `submit` of checked spec files: StartExperiment with epoch 0 ("whatever
/// the board holds, plus one"), then optionally wait for each to run.
pub async fn submit(
    target: &AgentTarget<'_>,
    specs: &[LoadedSpec],
    wait: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let mut client = target.connect(None).await?;
    let now = now_us();
    let mut views = Vec::new();
    let mut errors = Vec::new();
    let mut started = Vec::new();
    for loaded in specs {
        let mut spec = loaded.spec.clone();
        if spec.id.is_empty() {
            spec.id = generate_id(&loaded.path, now);
        }
        let file = loaded.path.display().to_string();
        let request = v1::StartExperimentRequest {
            spec: Some(spec.clone()),
            epoch: 0,
        };
        match client.start_experiment(request).await {
            Ok(response) => {
                let status = response.into_inner();
                if !out.is_json() {
                    let state = state_word(status.state());
                    let line = format!(
                        "started {} from {file}: {} (epoch {})",
                        status.id,
                        out.paint(state, state_color(status.state())),
                        status.epoch
                    );
                    out.line(&line)?;
                }
                started.push(status.id.clone());
                views.push(SubmitView {
                    file,
                    dry_run: false,
                    spec: SpecView::from(&loaded.normalized_with_id(&spec.id)),
                    status: Some(ExperimentView::from(&status)),
                    experiment: None,
                    decision: None,
                    event_seq: None,
                    already_submitted: false,
                });
            }
            Err(status) => errors.push(CliError::rpc(format!("submit {file}"), status)),
        }
    }
    if wait && !started.is_empty() {
        match wait_until_settled(&mut client, &started, out).await {
            Ok(settled) => {
                for view in &mut views {
                    if let Some(s) = view.status.as_ref().and_then(|s| settled.get(&s.id)) {
                        view.status = Some(ExperimentView::from(s));
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if out.is_json() {
        out.json(&SubmitList { submitted: views })?;
    }
    CliError::from_many(errors)
}

impl LoadedSpec {
    /// [`LoadedSpec::normalized`] with the id it was submitted under.
    fn normalized_with_id(&self, id: &str) -> v1::ExperimentSpec {
        let mut spec = self.normalized();
        spec.id = id.to_owned();
        spec
    }
}

/// Follows WatchExperiments until every id has run, succeeded or failed.
/// Its first messages are a snapshot, so a state reached before the watch
/// began is seen too.
async fn wait_until_settled(
    client: &mut AgentClient<Channel>,
    ids: &[String],
    out: &mut Out,
) -> Result<std::collections::BTreeMap<String, v1::ExperimentStatus>, CliError> {
    let mut pending: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    let mut settled = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    let mut stream = client
        .watch_experiments(v1::WatchExperimentsRequest { id: String::new() })
        .await
        .map_err(|s| CliError::rpc("watch experiments", s))?
        .into_inner();
    while !pending.is_empty() {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Err(CliError::Failed(format!(
                    "the agent ended the watch before {} settled",
                    pending.iter().copied().collect::<Vec<_>>().join(", ")
                )))
            }
            Err(s) => return Err(CliError::rpc("watch experiments", s)),
        };
        let Some(status) = event.status else { continue };
        if !pending.contains(status.id.as_str()) {
            continue;
        }
        let state = status.state();
        let outcome = match state {
            v1::ExperimentState::Running | v1::ExperimentState::Succeeded => Some(true),
            v1::ExperimentState::Failed
            | v1::ExperimentState::Stopped
            | v1::ExperimentState::Disrupted => Some(false),
            v1::ExperimentState::Unspecified
            | v1::ExperimentState::Starting
            | v1::ExperimentState::Restarting
            | v1::ExperimentState::Stopping
            | v1::ExperimentState::Unknown => None,
        };
        let Some(ok) = outcome else { continue };
        pending.remove(status.id.as_str());
        if !out.is_json() {
            let word = out.paint(state_word(state), state_color(state));
            let detail = experiment_note(&status);
            let line = if detail.is_empty() {
                format!("{} is {word}", status.id)
            } else {
                format!("{} is {word}: {detail}", status.id)
            };
            out.line(&line)?;
        }
        if !ok {
            let why = experiment_note(&status);
            failures.push(CliError::Failed(if why.is_empty() {
                format!("experiment {} is {}", status.id, state_word(state))
            } else {
                format!("experiment {} is {}: {why}", status.id, state_word(state))
            }));
        }
        settled.insert(status.id.clone(), status);
    }
    CliError::from_many(failures)?;
    Ok(settled)
}

async fn ps(target: &AgentTarget<'_>, args: &PsArgs, out: &mut Out) -> Result<(), CliError> {
    if !args.label.is_empty() {
        return Err(CliError::NeedsController {
            command: "ps --label".to_owned(),
            single_board: false,
            with_agent: true,
        });
    }
    let mut client = target.connect(None).await?;
    let response = client
        .list_experiments(v1::ListExperimentsRequest {})
        .await
        .map_err(|s| CliError::rpc("list experiments", s))?
        .into_inner();
    let wanted: BTreeSet<&str> = args.state.iter().map(|s| s.as_str()).collect();
    let mut experiments: Vec<v1::ExperimentStatus> = response
        .experiments
        .into_iter()
        .filter(|e| wanted.is_empty() || wanted.contains(state_word(e.state())))
        .collect();
    experiments.sort_by(|a, b| a.id.cmp(&b.id));
    print_experiments(&experiments, out, "no experiments on this board")
}

/// A list of experiments as a table, or as `{"experiments": [...]}`.
fn print_experiments(
    experiments: &[v1::ExperimentStatus],
    out: &mut Out,
    empty: &str,
) -> Result<(), CliError> {
    if out.is_json() {
        return out.json(&ExperimentList {
            experiments: experiments.iter().map(ExperimentView::from).collect(),
        });
    }
    if experiments.is_empty() {
        return out.line(empty);
    }
    out.table(&experiment_table(experiments, now_us()))
}

async fn status(target: &AgentTarget<'_>, id: &str, out: &mut Out) -> Result<(), CliError> {
    check_id(id)?;
    let mut client = target.connect(None).await?;
    let status = client
        .get_experiment(v1::ExperimentRef { id: id.to_owned() })
        .await
        .map_err(|s| CliError::rpc(format!("status \"{id}\""), s))?
        .into_inner();
    if out.is_json() {
        return out.json(&ExperimentView::from(&status));
    }
    let color = out.color;
    for line in status_lines(&status, now_us(), color) {
        out.line(&line)?;
    }
    Ok(())
}

async fn logs(target: &AgentTarget<'_>, args: &LogsArgs, out: &mut Out) -> Result<(), CliError> {
    check_id(&args.id)?;
    let since = match &args.since {
        Some(s) => parse_since(s, now_us()).map_err(CliError::Usage)?,
        None => 0,
    };
    let tail = args.lines.unwrap_or(if args.follow { 10 } else { 0 });
    let mut client = target.connect(None).await?;
    let context = format!("logs \"{}\"", args.id);
    let mut stream = client
        .stream_logs(v1::StreamLogsRequest {
            id: args.id.clone(),
            tail,
            since_unix_us: since,
            follow: args.follow,
        })
        .await
        .map_err(|s| CliError::rpc(&context, s))?
        .into_inner();
    while let Some(line) = stream
        .message()
        .await
        .map_err(|s| CliError::rpc(&context, s))?
    {
        if out.is_json() {
            out.json_line(&LogLineView::from(&line))?;
        } else {
            let text = log_line(&line, out.color);
            out.line(&text)?;
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Action {
    Stop,
    Restart,
    Remove,
}

async fn each_id(
    target: &AgentTarget<'_>,
    ids: &[String],
    action: Action,
    out: &mut Out,
) -> Result<(), CliError> {
    for id in ids {
        check_id(id)?;
    }
    let mut client = target.connect(None).await?;
    let verb = match action {
        Action::Stop => "stop",
        Action::Restart => "restart",
        Action::Remove => "rm",
    };
    let mut errors = Vec::new();
    let mut statuses = Vec::new();
    let mut removed = Vec::new();
    for id in ids {
        let r = v1::ExperimentRef { id: id.clone() };
        let result = match action {
            Action::Stop => client
                .stop_experiment(v1::StopExperimentRequest {
                    id: r.id,
                    epoch: None,
                })
                .await
                .map(|s| {
                    let s = s.into_inner();
                    (
                        format!("stopped {}: {}", s.id, state_word(s.state())),
                        Some(s),
                        None,
                    )
                }),
            Action::Restart => client.restart_experiment(r).await.map(|s| {
                let s = s.into_inner();
                (
                    format!("restarted {}: {}", s.id, state_word(s.state())),
                    Some(s),
                    None,
                )
            }),
            Action::Remove => client.remove_experiment(r).await.map(|s| {
                let s = s.into_inner();
                let text = if s.existed {
                    format!("removed {}", s.id)
                } else {
                    format!("{} was not on this board; nothing to remove", s.id)
                };
                (
                    text,
                    None,
                    Some(RemoveView {
                        id: s.id,
                        existed: s.existed,
                    }),
                )
            }),
        };
        match result {
            Ok((text, status, remove)) => {
                if !out.is_json() {
                    out.line(&text)?;
                }
                statuses.extend(status);
                removed.extend(remove);
            }
            Err(s) => errors.push(CliError::rpc(format!("{verb} \"{id}\""), s)),
        }
    }
    if out.is_json() {
        match action {
            Action::Remove => out.json(&serde_json::json!({ "removed": removed }))?,
            Action::Stop | Action::Restart => out.json(&ExperimentList {
                experiments: statuses.iter().map(ExperimentView::from).collect(),
            })?,
        }
    }
    CliError::from_many(errors)
}

async fn autostart(
    target: &AgentTarget<'_>,
    id: &str,
    state: OnOff,
    out: &mut Out,
) -> Result<(), CliError> {
    check_id(id)?;
    let mut client = target.connect(None).await?;
    let status = client
        .set_autostart(v1::SetAutostartRequest {
            id: id.to_owned(),
            enabled: state.enabled(),
        })
        .await
        .map_err(|s| CliError::rpc(format!("autostart \"{id}\""), s))?
        .into_inner();
    if out.is_json() {
        return out.json(&ExperimentView::from(&status));
    }
    out.line(&format!(
        "autostart of {} is {}",
        status.id,
        if status.autostart {
            "on: it starts again when the board reboots"
        } else {
            "off"
        }
    ))
}

async fn bulk(target: &AgentTarget<'_>, start: bool, out: &mut Out) -> Result<(), CliError> {
    let mut client = target.connect(None).await?;
    let (response, what) = if start {
        (client.start_all(v1::BulkRequest {}).await, "start-all")
    } else {
        (client.stop_all(v1::BulkRequest {}).await, "stop-all")
    };
    let mut experiments = response
        .map_err(|s| CliError::rpc(what, s))?
        .into_inner()
        .experiments;
    experiments.sort_by(|a, b| a.id.cmp(&b.id));
    print_experiments(
        &experiments,
        out,
        if start {
            "no experiment has autostart on; nothing to start"
        } else {
            "nothing was running"
        },
    )
}

async fn watch(target: &AgentTarget<'_>, id: Option<&str>, out: &mut Out) -> Result<(), CliError> {
    if let Some(id) = id {
        check_id(id)?;
    }
    let mut client = target.connect(None).await?;
    let mut stream = client
        .watch_experiments(v1::WatchExperimentsRequest {
            id: id.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|s| CliError::rpc("watch", s))?
        .into_inner();
    while let Some(event) = stream
        .message()
        .await
        .map_err(|s| CliError::rpc("watch", s))?
    {
        if out.is_json() {
            out.json_line(&EventView::from(&event))?;
        } else {
            let text = event_line(&event, out.color);
            out.line(&text)?;
        }
    }
    Ok(())
}

async fn node_info(
    target: &AgentTarget<'_>,
    node: Option<&str>,
    out: &mut Out,
) -> Result<(), CliError> {
    let mut client = target.connect(node).await?;
    let info = client
        .get_node(v1::GetNodeRequest {})
        .await
        .map_err(|s| CliError::rpc("node info", s))?
        .into_inner();
    let sample = one_sample(&mut client).await;
    let view = NodeView::new(&info, sample.as_ref());
    if out.is_json() {
        return out.json(&view);
    }
    let color = out.color;
    for line in node_lines(&view, color) {
        out.line(&line)?;
    }
    if let Some(t) = &view.telemetry {
        if !t.zones.is_empty() {
            out.line("")?;
            out.table(&zone_table(t, view.info.warn_c, view.info.critical_c))?;
        }
    }
    Ok(())
}

/// The first telemetry sample of WatchNode, if one comes in time; `node
/// info` shows the board without one rather than failing.
async fn one_sample(client: &mut AgentClient<Channel>) -> Option<v1::TelemetrySample> {
    let fetch = async {
        let mut stream = client
            .watch_node(v1::WatchNodeRequest {
                interval_ms: TELEMETRY_INTERVAL_MS,
            })
            .await
            .ok()?
            .into_inner();
        while let Some(update) = stream.message().await.ok()? {
            if let Some(v1::node_update::Update::Sample(sample)) = update.update {
                return Some(sample);
            }
        }
        None
    };
    tokio::time::timeout(TELEMETRY_WAIT, fetch)
        .await
        .ok()
        .flatten()
}

/// `power [NODE] MODE` and `clocks [NODE] on|off`: the optional node and the value.
pub fn node_and_value(args: &[String]) -> (Option<&str>, &str) {
    match args {
        [node, value] => (Some(node.as_str()), value.as_str()),
        [value] => (None, value.as_str()),
        // clap allows one or two.
        _ => (None, ""),
    }
}

async fn power(target: &AgentTarget<'_>, args: &PowerArgs, out: &mut Out) -> Result<(), CliError> {
    if args.force {
        return Err(CliError::Usage(
            "--force overrides the controller's check of the experiments placed on a board; \
             a board's agent has no such check"
                .to_owned(),
        ));
    }
    let (node, mode) = node_and_value(&args.args);
    if mode.is_empty() {
        return Err(CliError::Usage(
            "name the power mode, e.g. MAXN or 0".to_owned(),
        ));
    }
    let mut client = target.connect(node).await?;
    let r = client
        .set_power_mode(v1::SetPowerModeRequest {
            mode: mode.to_owned(),
            allow_reboot: args.allow_reboot,
        })
        .await
        .map_err(|s| CliError::rpc(format!("power {mode}"), s))?
        .into_inner();
    let view = PowerView {
        node: merge_node(target.node.as_deref(), node)?,
        mode: r.mode.as_ref().map(Into::into),
        changed: r.changed,
        reboot_required: r.reboot_required,
    };
    power_outcome(&format!("power {mode}"), &view, mode, out)
}

/// The new state of `clocks`: `on` or `off`.
pub fn parse_on_off(value: &str) -> Result<bool, CliError> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(CliError::Usage(format!(
            "\"{other}\" is not a clocks state: use on or off"
        ))),
    }
}

async fn clocks(
    target: &AgentTarget<'_>,
    args: &ClocksArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let (node, value) = node_and_value(&args.args);
    let enabled = parse_on_off(value)?;
    let mut client = target.connect(node).await?;
    let r = client
        .set_clocks(v1::SetClocksRequest { enabled })
        .await
        .map_err(|s| CliError::rpc(format!("clocks {value}"), s))?
        .into_inner();
    let view = ClocksView {
        node: merge_node(target.node.as_deref(), node)?,
        enabled: r.enabled,
    };
    if out.is_json() {
        return out.json(&view);
    }
    out.line(&clocks_text(&view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_must_agree() {
        assert_eq!(merge_node(None, None).unwrap(), None);
        assert_eq!(merge_node(Some("a"), None).unwrap().as_deref(), Some("a"));
        assert_eq!(merge_node(None, Some("b")).unwrap().as_deref(), Some("b"));
        assert_eq!(
            merge_node(Some("a"), Some("a")).unwrap().as_deref(),
            Some("a")
        );
        assert!(matches!(
            merge_node(Some("a"), Some("b")),
            Err(CliError::Usage(_))
        ));
        assert_eq!(
            node_and_value(&["jetson-01".into(), "MAXN".into()]),
            (Some("jetson-01"), "MAXN")
        );
        assert_eq!(node_and_value(&["MAXN".into()]), (None, "MAXN"));
    }

    #[test]
    fn ids_are_checked_before_any_call() {
        assert!(check_id("amnesiac-001").is_ok());
        let err = check_id("../x").unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(err.to_string().contains("\"../x\""), "{err}");
    }
}
