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
use crate::output::{self, key_values, Cell, Color, Column, Out, Table, NONE};
use crate::spec_file::{generate_id, LoadedSpec};
use crate::time::{age, human_duration, local, now_us, parse_since};
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
            controller: None,
            single_board: false,
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
            controller: None,
            single_board: false,
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

/// The `ps` table.
pub fn experiment_table(experiments: &[v1::ExperimentStatus], now: i64) -> Table {
    let mut table = Table::new(vec![
        Column::left("ID").fixed(),
        Column::left("STATE").fixed(),
        Column::right("PID"),
        Column::right("CPU"),
        Column::right("MEMORY"),
        Column::right("UP"),
        Column::right("RESTARTS"),
        Column::right("CRASHES"),
        Column::left("AUTOSTART").fixed(),
        Column::left("NOTE").min(12),
    ]);
    for e in experiments {
        let state = e.state();
        let running = matches!(
            state,
            v1::ExperimentState::Running | v1::ExperimentState::Stopping
        );
        table.row(vec![
            Cell::new(e.id.clone()),
            Cell::colored(state_word(state), state_color(state)),
            Cell::new(opt(e.main_pid, |p| p != 0, |p| p.to_string())),
            Cell::new(e.cpu_percent.map_or(NONE.to_owned(), output::percent)),
            Cell::new(
                e.memory_current_bytes
                    .map_or(NONE.to_owned(), output::bytes),
            ),
            Cell::new(match e.active_since_unix_us {
                Some(t) if running && t != 0 => {
                    human_duration(Duration::from_micros(now.saturating_sub(t).unsigned_abs()))
                }
                _ => NONE.to_owned(),
            }),
            Cell::new(e.restarts.to_string()),
            Cell::new(e.crashes_total.to_string()),
            Cell::new(if e.autostart { "on" } else { "off" }),
            Cell::new(experiment_note(e)),
        ]);
    }
    table
}

fn opt<T: Copy>(v: T, present: impl Fn(T) -> bool, show: impl Fn(T) -> String) -> String {
    if present(v) {
        show(v)
    } else {
        NONE.to_owned()
    }
}

/// The colour of a state word.
pub fn state_color(state: v1::ExperimentState) -> Option<Color> {
    match state {
        v1::ExperimentState::Running => Some(Color::Green),
        v1::ExperimentState::Succeeded => Some(Color::Cyan),
        v1::ExperimentState::Failed => Some(Color::Red),
        v1::ExperimentState::Starting
        | v1::ExperimentState::Restarting
        | v1::ExperimentState::Stopping => Some(Color::Yellow),
        v1::ExperimentState::Disrupted => Some(Color::Magenta),
        v1::ExperimentState::Stopped
        | v1::ExperimentState::Unknown
        | v1::ExperimentState::Unspecified => Some(Color::Dim),
    }
}

/// Why an experiment ended, in a few words: the failure message, else the
/// exit code or signal.
pub fn experiment_note(e: &v1::ExperimentStatus) -> String {
    if !e.failure_message.is_empty() {
        return e.failure_message.clone();
    }
    let ended = matches!(
        e.state(),
        v1::ExperimentState::Failed
            | v1::ExperimentState::Succeeded
            | v1::ExperimentState::Stopped
            | v1::ExperimentState::Disrupted
            | v1::ExperimentState::Restarting
    );
    if !ended {
        return String::new();
    }
    match (e.exit_signal, e.exit_code) {
        (Some(sig), _) if sig != 0 => format!("killed by {}", signal_name(sig)),
        (_, Some(code)) => format!("exit code {code}"),
        _ => String::new(),
    }
}

/// `SIGKILL` for 9; the number for a signal without a common name.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({sig})")
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

/// `status` for people: every field, sizes in binary units, times local.
pub fn status_lines(s: &v1::ExperimentStatus, now: i64, color: bool) -> Vec<String> {
    let state = s.state();
    let mut state_text = output::paint(state_word(state), state_color(state), color);
    if !s.active_state.is_empty() {
        state_text.push_str(&format!(" (systemd: {}/{}", s.active_state, s.sub_state));
        if !s.result.is_empty() && s.result != "success" {
            state_text.push_str(&format!(", result {}", s.result));
        }
        state_text.push(')');
    }
    let mut pairs: Vec<(&str, String)> = vec![
        ("id", s.id.clone()),
        ("unit", s.unit.clone()),
        ("state", state_text),
    ];
    if s.main_pid != 0 {
        pairs.push(("pid", s.main_pid.to_string()));
    }
    if let Some(t) = s.active_since_unix_us.filter(|&t| t != 0) {
        pairs.push(("since", format!("{} ({})", local(t), age(t, now))));
    }
    let note = experiment_note(s);
    if let Some(reason) = crate::views::failure_word(s.failure()) {
        let text = if note.is_empty() {
            reason.to_owned()
        } else {
            format!("{reason}: {note}")
        };
        pairs.push(("failure", output::paint(&text, Some(Color::Red), color)));
    } else if !note.is_empty() {
        pairs.push(("ended", note));
    }
    if let Some(code) = s.exit_code {
        pairs.push(("exit code", code.to_string()));
    }
    if let Some(sig) = s.exit_signal.filter(|&sig| sig != 0) {
        pairs.push(("exit signal", signal_name(sig)));
    }
    let mut memory = s
        .memory_current_bytes
        .map_or_else(|| "unknown".to_owned(), output::bytes);
    let mut extra = Vec::new();
    extra.push(format!(
        "peak {}",
        s.memory_peak_bytes
            .map_or_else(|| "unknown".to_owned(), output::bytes)
    ));
    if let Some(max) = s.memory_max_bytes {
        extra.push(format!("limit {}", output::bytes(max)));
    }
    memory.push_str(&format!(" ({})", extra.join(", ")));
    pairs.push(("memory", memory));
    let cpu_now = s.cpu_percent.map(output::percent);
    let cpu_total = s
        .cpu_usage_nsec
        .map(|n| format!("{} CPU time", human_duration(Duration::from_nanos(n))));
    let cpu: Vec<String> = [cpu_now.map(|p| format!("{p} now")), cpu_total]
        .into_iter()
        .flatten()
        .collect();
    pairs.push((
        "cpu",
        if cpu.is_empty() {
            "unknown".to_owned()
        } else {
            cpu.join(", ")
        },
    ));
    pairs.push((
        "runs",
        format!(
            "{} automatic {} since the last start; {} and {} on this board in all",
            s.restarts,
            if s.restarts == 1 {
                "restart"
            } else {
                "restarts"
            },
            count(s.crashes_total, "crash", "crashes"),
            count(s.disruptions_total, "disruption", "disruptions"),
        ),
    ));
    pairs.push(("epoch", s.epoch.to_string()));
    pairs.push((
        "autostart",
        if s.autostart {
            "on (starts again when the board reboots)".to_owned()
        } else {
            "off".to_owned()
        },
    ));
    if !s.invocation_id.is_empty() {
        pairs.push(("invocation", s.invocation_id.clone()));
    }
    key_values(&pairs)
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

/// A journal line for people: local time, then the message coloured by
/// its priority (errors red, warnings yellow, debug dim).
pub fn log_line(line: &v1::LogLine, color: bool) -> String {
    let paint = match line.priority {
        0..=3 => Some(Color::Red),
        4 => Some(Color::Yellow),
        7 => Some(Color::Dim),
        _ => None,
    };
    let time = if line.timestamp_unix_us == 0 {
        String::new()
    } else {
        output::paint(&local(line.timestamp_unix_us), Some(Color::Dim), color) + "  "
    };
    format!("{time}{}", output::paint(&line.message, paint, color))
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
            Action::Stop => client.stop_experiment(r).await.map(|s| {
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

/// One state change for people: `2025-06-01 14:03:22  amnesiac-001  running  started`.
pub fn event_line(e: &v1::ExperimentEvent, color: bool) -> String {
    let time = if e.timestamp_unix_us == 0 {
        "-".to_owned()
    } else {
        local(e.timestamp_unix_us)
    };
    let (id, state) = match &e.status {
        Some(s) => (
            s.id.as_str(),
            output::paint(state_word(s.state()), state_color(s.state()), color),
        ),
        None => ("-", "-".to_owned()),
    };
    format!("{time}  {id}  {state}  {}", e.change)
        .trim_end()
        .to_owned()
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
            out.table(&zone_table(t, view.warn_c, view.critical_c))?;
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

/// Colour of a temperature by the board's own thresholds.
pub fn temperature_color(celsius: f64, warn_c: f64, critical_c: f64) -> Color {
    if critical_c > 0.0 && celsius >= critical_c {
        Color::Red
    } else if warn_c > 0.0 && celsius >= warn_c {
        Color::Yellow
    } else {
        Color::Green
    }
}

fn thermal_color(word: &str) -> Option<Color> {
    match word {
        "normal" => Some(Color::Green),
        "warn" => Some(Color::Yellow),
        "critical" => Some(Color::Red),
        _ => None,
    }
}

/// `node info` for people.
pub fn node_lines(v: &NodeView, color: bool) -> Vec<String> {
    let mode = |m: &crate::views::PowerModeView| format!("{} (id {})", m.name, m.id);
    let mut pairs: Vec<(&str, String)> = vec![
        ("node", v.node.clone()),
        ("model", v.model.clone()),
        ("l4t", v.l4t_release.clone()),
        ("agent", v.agent_version.clone()),
        ("cpu cores", v.cpu_cores.to_string()),
        ("memory", output::bytes(v.memory_total_bytes)),
        ("gpu", if v.gpu { "yes" } else { "no" }.to_owned()),
        (
            "power mode",
            match (&v.current_power_mode, v.nvpmodel) {
                (Some(m), _) => mode(m),
                (None, true) => "unknown".to_owned(),
                (None, false) => "no nvpmodel on this board".to_owned(),
            },
        ),
    ];
    if !v.power_modes.is_empty() {
        let modes: Vec<String> = v
            .power_modes
            .iter()
            .map(|m| {
                let mut s = format!("{}={}", m.id, m.name);
                if Some(m.id) == v.default_power_mode {
                    s.push_str(" (default)");
                }
                s
            })
            .collect();
        pairs.push(("power modes", modes.join(", ")));
    }
    pairs.push((
        "thresholds",
        format!("warn {:.0} °C, critical {:.0} °C", v.warn_c, v.critical_c),
    ));
    match &v.telemetry {
        None => pairs.push(("telemetry", "none received".to_owned())),
        Some(t) => {
            let thermal = output::paint(t.thermal_state, thermal_color(t.thermal_state), color);
            let hottest = match (t.hottest_c, &t.hottest_zone) {
                (Some(c), Some(z)) => format!(", hottest {} at {c:.1} °C", z),
                (Some(c), None) => format!(", hottest {c:.1} °C"),
                _ => String::new(),
            };
            pairs.push(("thermal", format!("{thermal}{hottest}")));
            pairs.push((
                "accepting",
                if t.accepting {
                    "yes".to_owned()
                } else {
                    output::paint("no (too hot or draining)", Some(Color::Yellow), color)
                },
            ));
            pairs.push((
                "load",
                format!(
                    "{:.2} {:.2} {:.2}, cpu {}",
                    t.load[0],
                    t.load[1],
                    t.load[2],
                    output::percent(t.cpu_percent)
                ),
            ));
            pairs.push((
                "memory free",
                format!(
                    "{} of {}",
                    output::bytes(t.memory_available_bytes),
                    output::bytes(t.memory_total_bytes)
                ),
            ));
            if let Some(g) = t.gpu_load_percent {
                pairs.push(("gpu load", output::percent(g)));
            }
            if let Some(w) = t.power_total_watts {
                pairs.push(("power", format!("{w:.1} W")));
            }
            if let Some(c) = t.jetson_clocks {
                pairs.push(("jetson_clocks", if c { "on" } else { "off" }.to_owned()));
            }
            match (t.fan_pwm, t.fan_rpm) {
                (None, None) => {}
                (pwm, rpm) => pairs.push((
                    "fan",
                    [
                        pwm.map(|p| format!("pwm {p}")),
                        rpm.map(|r| format!("{r} rpm")),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(", "),
                )),
            }
        }
    }
    key_values(&pairs)
}

/// Thermal zones, temperatures coloured by the board's thresholds.
pub fn zone_table(t: &crate::views::TelemetryView, warn_c: f64, critical_c: f64) -> Table {
    let mut table = Table::new(vec![Column::left("ZONE").fixed(), Column::right("TEMP")]);
    for z in &t.zones {
        let cell = match (z.offline, z.celsius) {
            (true, _) | (false, None) => Cell::colored("offline", Some(Color::Dim)),
            (false, Some(c)) => Cell::colored(
                format!("{c:.1} °C"),
                Some(temperature_color(c, warn_c, critical_c)),
            ),
        };
        table.row(vec![Cell::new(z.name.clone()), cell]);
    }
    table
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
        mode: r.mode.as_ref().map(Into::into),
        changed: r.changed,
        reboot_required: r.reboot_required,
    };
    if out.is_json() {
        return out.json(&view);
    }
    let name = view
        .mode
        .as_ref()
        .map_or_else(|| mode.to_owned(), |m| format!("{} (id {})", m.name, m.id));
    let text = match (view.changed, view.reboot_required) {
        (true, true) => {
            format!("power mode set to {name}; it takes effect after the board reboots")
        }
        (true, false) => format!("power mode is now {name}"),
        (false, true) => format!(
            "power mode {name} needs a reboot of the board; run again with --allow-reboot to switch"
        ),
        (false, false) => format!("power mode is already {name}"),
    };
    out.line(&text)
}

async fn clocks(
    target: &AgentTarget<'_>,
    args: &ClocksArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let (node, value) = node_and_value(&args.args);
    let enabled = match value {
        "on" => true,
        "off" => false,
        other => {
            return Err(CliError::Usage(format!(
                "\"{other}\" is not a clocks state: use on or off"
            )))
        }
    };
    let mut client = target.connect(node).await?;
    let r = client
        .set_clocks(v1::SetClocksRequest { enabled })
        .await
        .map_err(|s| CliError::rpc(format!("clocks {value}"), s))?
        .into_inner();
    if out.is_json() {
        return out.json(&ClocksView { enabled: r.enabled });
    }
    out.line(&format!(
        "jetson_clocks is {}",
        if r.enabled { "on" } else { "off" }
    ))
}

/// `1 crash`, `2 crashes`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_748_779_402_500_000;

    fn status() -> v1::ExperimentStatus {
        v1::ExperimentStatus {
            id: "amnesiac-001".into(),
            unit: "brain-experiment@amnesiac-001.service".into(),
            state: v1::ExperimentState::Running as i32,
            active_state: "active".into(),
            sub_state: "running".into(),
            result: "success".into(),
            main_pid: 4242,
            memory_current_bytes: Some(812 * 1024 * 1024),
            memory_max_bytes: Some(8 * 1024 * 1024 * 1024),
            cpu_usage_nsec: Some(3_725_000_000_000),
            cpu_percent: Some(37.5),
            active_since_unix_us: Some(T - 3 * 3600 * 1_000_000),
            restarts: 1,
            crashes_total: 2,
            disruptions_total: 1,
            epoch: 3,
            autostart: true,
            ..Default::default()
        }
    }

    #[test]
    fn ps_table_shows_sizes_durations_and_notes() {
        let mut failed = status();
        failed.id = "b".into();
        failed.state = v1::ExperimentState::Failed as i32;
        failed.main_pid = 0;
        failed.exit_signal = Some(9);
        failed.autostart = false;
        let lines = experiment_table(&[status(), failed], T).render(None, false);
        assert_eq!(
            lines[0],
            "ID            STATE     PID    CPU     MEMORY  UP  RESTARTS  CRASHES  AUTOSTART  NOTE"
        );
        assert_eq!(
            lines[1],
            "amnesiac-001  running  4242  37.5%  812.0 MiB  3h         1        2  on"
        );
        assert!(
            lines[2].ends_with("off        killed by SIGKILL (9)"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn status_is_all_human_readable() {
        let lines = status_lines(&status(), T, false).join("\n");
        for want in [
            "state:      running (systemd: active/running)",
            "pid:        4242",
            "ago)",
            "memory:     812.0 MiB (peak unknown, limit 8.0 GiB)",
            "cpu:        37.5% now, 1h 2m CPU time",
            "runs:       1 automatic restart since the last start; 2 crashes and 1 disruption",
            "autostart:  on",
        ] {
            assert!(lines.contains(want), "missing {want:?} in\n{lines}");
        }
        assert!(!lines.contains("Some("), "{lines}");
    }

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

    #[test]
    fn temperatures_colour_by_thresholds() {
        assert_eq!(temperature_color(50.0, 75.0, 85.0), Color::Green);
        assert_eq!(temperature_color(75.0, 75.0, 85.0), Color::Yellow);
        assert_eq!(temperature_color(90.0, 75.0, 85.0), Color::Red);
    }

    #[test]
    fn log_and_event_lines() {
        let line = v1::LogLine {
            timestamp_unix_us: 0,
            message: "loss 0.31".into(),
            priority: 3,
            ..Default::default()
        };
        assert_eq!(log_line(&line, false), "loss 0.31");
        assert_eq!(log_line(&line, true), "\x1b[31mloss 0.31\x1b[0m");
        let event = v1::ExperimentEvent {
            status: Some(status()),
            change: "started".into(),
            timestamp_unix_us: 0,
        };
        assert_eq!(
            event_line(&event, false),
            "-  amnesiac-001  running  started"
        );
    }
}
