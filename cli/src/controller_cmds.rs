//! Commands sent to the fleet's controller (`fleet.v1.Controller`).
//!
//! Each command is one or a few calls over mutual TLS, expecting the
//! controller's identity; the answers are printed through
//! [`crate::views`] and [`crate::render`], the same renderers the agent
//! commands use where the data is the same. `events -f`, `logs -f`,
//! `watch` and `submit --wait` outlive a controller restart: they
//! reconnect with backoff and resume where they were ([`crate::follow`]).
//!
//! Commands without a controller call (`rm`, `autostart`, `start-all`,
//! `stop-all`) end with a clear error naming `--agent`.

use std::collections::{BTreeMap, BTreeSet};

use fleet_proto::spec::{LabelKey, LabelValue, NodeName};
use fleet_proto::tls::{ClientTls, Expect, TlsError};
use fleet_proto::v1;
use fleet_proto::v1::controller_client::ControllerClient;
use tonic::transport::Channel;

use crate::agent_cmds::{check_id, merge_node, node_and_value, parse_on_off};
use crate::args::{
    ClocksArgs, Command, DrainArgs, EventsArgs, IdsArgs, LogsArgs, NodeCommand, NodesArgs,
    PolicyCommand, PolicySetArgs, PowerArgs, PsArgs, StateFilter,
};
use crate::config::Settings;
use crate::exit::{chain, CliError};
use crate::follow::{is_transient, Backoff, LogPosition};
use crate::output::Out;
use crate::render::board::{clocks_text, log_line, power_outcome};
use crate::render::fleet::{
    decision_heading, drain_text, event_line, events_table, experiments_table, labels_text,
    node_lines, node_zone_table, nodes_table, phase_color, policy_lines, runs_table, status_lines,
    verdict_table,
};
use crate::render::spec::spec_lines;
use crate::spec_file::{generate_id, LoadedSpec};
use crate::time::{human_duration, now_us, parse_since};
use crate::views::{
    phase_of, phase_word, ClocksView, DecisionView, DrainView, ExperimentView, ExplanationView,
    FleetEventView, FleetExperimentList, FleetExperimentView, FleetNodeList, FleetNodeView,
    LogLineView, PolicyView, PowerView, SpecView, SubmitList, SubmitView,
};

type Client = ControllerClient<Channel>;

/// Replies may carry many experiments with their specs (and config files).
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// The controller, and how to reach it.
pub struct ControllerTarget<'a> {
    pub addr: &'a str,
    pub settings: &'a Settings,
    /// `--node` as given on the command line: filters `ps` and `events`,
    /// names the board of `node info` and `power`.
    pub node: Option<&'a str>,
}

impl ControllerTarget<'_> {
    /// Connects with the configured certificate, expecting the fleet's
    /// controller.
    pub async fn connect(&self) -> Result<Client, CliError> {
        let s = self.settings;
        let tls = ClientTls::from_files(&s.ca.value, &s.cert.value, &s.key.value)?;
        CliError::check_validity("the controller", &s.cert.value, &tls)?;
        let channel = tls.connect(self.addr, Expect::Controller).await?;
        Ok(ControllerClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES))
    }

    /// Connects again after a stream broke, until the controller answers
    /// or fails for a reason waiting cannot fix.
    async fn reconnect(&self, backoff: &mut Backoff) -> Result<Client, CliError> {
        loop {
            match self.connect().await {
                Ok(client) => return Ok(client),
                Err(CliError::Tls(e @ TlsError::Connect { .. })) => {
                    let wait = backoff.next_wait();
                    notice(&format!(
                        "cannot reach the controller yet ({}); retrying in {}",
                        chain(&e),
                        human_duration(wait)
                    ));
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A resumed stream the controller refused for now (`status`, a
    /// transient one: it is still starting): says so, waits, and connects
    /// again. `what` completes "the controller … yet".
    async fn retry_stream(
        &self,
        what: &str,
        status: &tonic::Status,
        backoff: &mut Backoff,
    ) -> Result<Client, CliError> {
        let wait = backoff.next_wait();
        notice(&format!(
            "the controller {what} yet ({}); retrying in {}",
            status.message(),
            human_duration(wait)
        ));
        tokio::time::sleep(wait).await;
        self.reconnect(backoff).await
    }
}

/// A line on stderr that is not an error: the stream goes on.
fn notice(text: &str) {
    eprintln!("fleetctl: {text}");
}

/// Why `command` has no controller form, and what to do instead.
fn agent_only(command: &Command) -> Option<&'static str> {
    match command {
        Command::Rm(_) => Some(
            "it deletes an experiment's files from one board; with a controller, cancel takes \
             an experiment out of the queue for good",
        ),
        Command::Autostart { .. } => Some(
            "with a controller, autostart is part of the spec ([lifecycle] autostart) given at \
             submission",
        ),
        Command::StartAll | Command::StopAll => Some("it acts on one board's experiments"),
        _ => None,
    }
}

/// Runs `command` against the controller.
pub async fn run(
    command: &Command,
    target: &ControllerTarget<'_>,
    out: &mut Out,
) -> Result<(), CliError> {
    if let Some(why) = agent_only(command) {
        return Err(CliError::AgentOnly {
            command: command.name().to_owned(),
            why,
        });
    }
    match command {
        Command::Submit(args) => {
            let specs = crate::spec_file::load_all(&args.files)?;
            submit(target, &specs, args.dry_run, args.wait, out).await
        }
        Command::Ps(args) => ps(target, args, out).await,
        Command::Status { id } => status(target, id, out).await,
        Command::Logs(args) => logs(target, args, out).await,
        Command::Stop(a) => each_id(target, a, Action::Stop, out).await,
        Command::Cancel(a) => each_id(target, a, Action::Cancel, out).await,
        Command::Restart(a) => each_id(target, a, Action::Restart, out).await,
        Command::Watch { id } => watch(target, id.as_deref(), out).await,
        Command::Explain { id } => explain(target, id, out).await,
        Command::Events(args) => events(target, args, out).await,
        Command::Nodes(args) => nodes(target, args, out).await,
        Command::Node(NodeCommand::Info { node }) => node_info(target, node.as_deref(), out).await,
        Command::Node(NodeCommand::Cordon { node, reason }) => {
            cordon(target, node, reason.as_deref(), out).await
        }
        Command::Node(NodeCommand::Uncordon { node }) => uncordon(target, node, out).await,
        Command::Node(NodeCommand::Drain(args)) => drain(target, args, out).await,
        Command::Node(NodeCommand::Label { node, labels }) => {
            label(target, node, labels, out).await
        }
        Command::Power(args) => power(target, args, out).await,
        Command::Clocks(args) => clocks(target, args, out).await,
        Command::Policy(PolicyCommand::Get) => policy_get(target, out).await,
        Command::Policy(PolicyCommand::Set(args)) => policy_set(target, args, out).await,
        // Answered before any peer is chosen, or refused above.
        Command::Rm(_)
        | Command::Autostart { .. }
        | Command::StartAll
        | Command::StopAll
        | Command::Pki(_)
        | Command::Config
        | Command::Completions { .. } => Err(CliError::Usage(format!(
            "\"{}\" does not go to a controller",
            command.name()
        ))),
    }
}

fn check_node(node: &str) -> Result<(), CliError> {
    NodeName::new(node)
        .map(drop)
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// `submit`: every checked file to Submit (with `dry_run`, nothing is
/// stored and the scheduler's decision comes back); with `wait`, follow
/// the events of the submitted experiments until each runs or ends.
pub async fn submit(
    target: &ControllerTarget<'_>,
    specs: &[LoadedSpec],
    dry_run: bool,
    wait: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let mut client = target.connect().await?;
    let now = now_us();
    let mut views = Vec::new();
    let mut errors = Vec::new();
    let mut submitted: Vec<(String, u64)> = Vec::new();
    for (i, loaded) in specs.iter().enumerate() {
        let mut spec = loaded.spec.clone();
        let generated = spec.id.is_empty();
        if generated {
            spec.id = generate_id(&loaded.path, now);
        }
        let file = loaded.path.display().to_string();
        let request = v1::SubmitRequest {
            spec: Some(spec.clone()),
            dry_run,
        };
        let reply = match client.submit(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                errors.push(CliError::rpc(format!("submit {file}"), s));
                continue;
            }
        };
        let experiment = reply.experiment.as_ref().map(FleetExperimentView::from);
        let decision = reply.decision.as_ref().map(DecisionView::from);
        // The spec as the controller stored it, defaults written out by
        // the same rules; the local reading when it sent none back.
        let mut spec_view = experiment
            .as_ref()
            .and_then(|e| e.spec.clone())
            .unwrap_or_else(|| SpecView::from(&loaded.normalized()));
        spec_view.id = Some(spec.id.clone());
        if dry_run && generated {
            spec_view.id = None;
        }
        if !out.is_json() {
            if dry_run {
                if i > 0 {
                    out.line("")?;
                }
                print_dry_run(&file, &spec_view, decision.as_ref(), out)?;
            } else {
                let phase = experiment.as_ref().map_or("submitted", |e| e.phase);
                let verb = if reply.already_submitted {
                    "already submitted (the same spec)"
                } else {
                    "submitted"
                };
                let mut text = format!(
                    "{verb} {} from {file}: {}",
                    spec.id,
                    out.paint(phase, phase_color(phase))
                );
                if let Some(reason) = experiment.as_ref().and_then(|e| e.reason.as_ref()) {
                    text.push_str(&format!(" ({reason})"));
                }
                out.line(&text)?;
            }
        }
        if !dry_run {
            submitted.push((spec.id.clone(), reply.event_seq));
        }
        views.push(SubmitView {
            file,
            dry_run,
            spec: spec_view,
            status: reply
                .experiment
                .as_ref()
                .and_then(|e| e.status.as_ref())
                .map(ExperimentView::from),
            experiment,
            decision,
            event_seq: (!dry_run && !reply.already_submitted).then_some(reply.event_seq),
            already_submitted: reply.already_submitted,
        });
    }
    if dry_run && !out.is_json() {
        out.line("dry run: nothing was submitted")?;
    }
    if wait && !submitted.is_empty() {
        match wait_until_settled(target, client.clone(), &submitted, out).await {
            Ok(()) => {}
            Err(e) => errors.push(e),
        }
        if out.is_json() {
            for view in &mut views {
                let Some(id) = view.spec.id.clone() else {
                    continue;
                };
                if let Ok(e) = client.get(v1::GetRequest { id }).await {
                    let e = e.into_inner();
                    view.status = e.status.as_ref().map(ExperimentView::from);
                    view.experiment = Some(FleetExperimentView::from(&e));
                }
            }
        }
    }
    if out.is_json() {
        out.json(&SubmitList { submitted: views })?;
    }
    CliError::from_many(errors)
}

/// One file of `submit --dry-run` with a controller: the spec, then the
/// decision with every node's verdict.
fn print_dry_run(
    file: &str,
    spec: &SpecView,
    decision: Option<&DecisionView>,
    out: &mut Out,
) -> Result<(), CliError> {
    let id = spec
        .id
        .clone()
        .unwrap_or_else(|| "an experiment (id chosen on submission)".to_owned());
    out.line(&format!("{file}: valid; would submit {id}"))?;
    for line in spec_lines(spec) {
        out.line(&format!("  {line}"))?;
    }
    match decision {
        None => out.line("  decision: none (the controller sent none)"),
        Some(d) => {
            let heading = decision_heading("decision", d, out.color);
            out.line(&format!("  {heading}"))?;
            if d.nodes.is_empty() {
                return out.line("  no nodes");
            }
            let width = out.width.map(|w| w.saturating_sub(2));
            for line in verdict_table(d).render(width, out.color) {
                out.line(&format!("  {line}"))?;
            }
            Ok(())
        }
    }
}

/// Whether an experiment in `phase` has got where `--wait` waits for:
/// `Some(true)` running or succeeded, `Some(false)` ended otherwise.
fn settled(phase: v1::ExperimentPhase) -> Option<bool> {
    match phase {
        v1::ExperimentPhase::Running | v1::ExperimentPhase::Succeeded => Some(true),
        v1::ExperimentPhase::Failed
        | v1::ExperimentPhase::Stopped
        | v1::ExperimentPhase::Cancelled => Some(false),
        v1::ExperimentPhase::Unspecified
        | v1::ExperimentPhase::Queued
        | v1::ExperimentPhase::Placing
        | v1::ExperimentPhase::Starting
        | v1::ExperimentPhase::Stopping
        | v1::ExperimentPhase::Unknown => None,
    }
}

/// Follows the events of the submitted experiments from their `submitted`
/// events on, so no change is missed, until every one runs or ends.
async fn wait_until_settled(
    target: &ControllerTarget<'_>,
    mut client: Client,
    submitted: &[(String, u64)],
    out: &mut Out,
) -> Result<(), CliError> {
    let mut pending: BTreeSet<String> = submitted.iter().map(|(id, _)| id.clone()).collect();
    let mut failures = Vec::new();
    let from = submitted
        .iter()
        .map(|(_, seq)| *seq)
        .filter(|&s| s > 0)
        .min();
    {
        // No event to start from (it was already there, or the controller
        // sent none): look at where each such one is now, then follow new
        // events.
        for (id, _) in submitted
            .iter()
            .filter(|(_, seq)| *seq == 0 || from.is_none())
        {
            let e = client
                .get(v1::GetRequest { id: id.clone() })
                .await
                .map_err(|s| CliError::rpc(format!("status \"{id}\""), s))?
                .into_inner();
            if let Some(ok) = settled(e.phase()) {
                report_settled(id, e.phase(), &e.node, &e.reason, ok, out, &mut failures)?;
                pending.remove(id);
            }
        }
        if pending.is_empty() {
            return CliError::from_many(failures);
        }
    }
    let filter = v1::EventFilter {
        experiments: pending.iter().cloned().collect(),
        nodes: Vec::new(),
        kinds: vec![v1::EventKind::PhaseChanged as i32],
    };
    follow_events(target, client, filter, from, true, |e| {
        if e.kind() != v1::EventKind::PhaseChanged || !pending.contains(&e.experiment) {
            return Ok(Flow::More);
        }
        let phase = phase_of(e.to);
        match settled(phase) {
            Some(ok) => {
                report_settled(
                    &e.experiment,
                    phase,
                    &e.node,
                    &e.message,
                    ok,
                    out,
                    &mut failures,
                )?;
                pending.remove(&e.experiment);
            }
            None if !out.is_json() => {
                out.line(&phase_line(&e.experiment, phase, &e.node, &e.message, out))?;
            }
            None => {}
        }
        Ok(if pending.is_empty() {
            Flow::Done
        } else {
            Flow::More
        })
    })
    .await?;
    CliError::from_many(failures)
}

/// `amnesiac-001 is running on jetson-03: started`.
fn phase_line(id: &str, phase: v1::ExperimentPhase, node: &str, note: &str, out: &Out) -> String {
    let word = phase_word(phase);
    let mut text = format!("{id} is {}", out.paint(word, phase_color(word)));
    if !node.is_empty() {
        text.push_str(&format!(" on {node}"));
    }
    if !note.is_empty() {
        text.push_str(&format!(": {note}"));
    }
    text
}

fn report_settled(
    id: &str,
    phase: v1::ExperimentPhase,
    node: &str,
    note: &str,
    ok: bool,
    out: &mut Out,
    failures: &mut Vec<CliError>,
) -> Result<(), CliError> {
    if !out.is_json() {
        let text = phase_line(id, phase, node, note, out);
        out.line(&text)?;
    }
    if !ok {
        let mut text = format!("experiment {id} is {}", phase_word(phase));
        if !note.is_empty() {
            text.push_str(&format!(": {note}"));
        }
        failures.push(CliError::Failed(text));
    }
    Ok(())
}

/// What a follower does after an event.
enum Flow {
    More,
    Done,
}

/// WatchEvents from `from_seq` (none: new events only). Without `follow`
/// the replay is all; with it, the stream is followed until `on_event`
/// says done, and a controller that goes away is reconnected to with
/// backoff, resuming after the last event seen.
async fn follow_events(
    target: &ControllerTarget<'_>,
    mut client: Client,
    filter: v1::EventFilter,
    from_seq: Option<u64>,
    follow: bool,
    mut on_event: impl FnMut(&v1::Event) -> Result<Flow, CliError>,
) -> Result<(), CliError> {
    let mut next = from_seq;
    let mut backoff = Backoff::default();
    let mut resuming = false;
    loop {
        let request = v1::WatchEventsRequest {
            from_seq: next,
            filter: Some(filter.clone()),
            replay_only: !follow,
        };
        let mut stream = match client.watch_events(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if resuming && is_transient(&s) => {
                client = target
                    .retry_stream("does not follow events", &s, &mut backoff)
                    .await?;
                continue;
            }
            Err(s) => return Err(events_error(s, next)),
        };
        if resuming {
            notice(&match next {
                Some(seq) if seq > 1 => format!("reconnected; resuming after event {}", seq - 1),
                Some(_) => "reconnected; resuming from the first event".to_owned(),
                None => "reconnected; following new events (any during the outage are not shown)"
                    .to_owned(),
            });
            backoff.reset();
        }
        let broke = loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    // A replay may overlap what was printed before a break.
                    if next.is_some_and(|n| e.seq < n) {
                        continue;
                    }
                    next = Some(e.seq + 1);
                    if let Flow::Done = on_event(&e)? {
                        return Ok(());
                    }
                }
                Ok(None) if !follow => return Ok(()),
                // A followed stream never ends on purpose: the controller
                // is going away.
                Ok(None) => break "the controller ended the stream".to_owned(),
                Err(s) if follow && is_transient(&s) => break s.message().to_owned(),
                Err(s) => return Err(events_error(s, next)),
            }
        };
        let wait = backoff.next_wait();
        notice(&format!(
            "lost the event stream ({broke}); reconnecting to {} in {}",
            target.addr,
            human_duration(wait)
        ));
        tokio::time::sleep(wait).await;
        resuming = true;
        client = target.reconnect(&mut backoff).await?;
    }
}

/// An error of WatchEvents; a sequence number the log no longer keeps
/// says what to do.
fn events_error(status: tonic::Status, next: Option<u64>) -> CliError {
    if status.code() == tonic::Code::OutOfRange {
        let from = next.map_or_else(String::new, |n| format!(" from event {n}"));
        return CliError::Failed(format!(
            "events: the controller cannot replay{from}: {}; start later with --since SEQ",
            status.message()
        ));
    }
    CliError::rpc("events", status)
}

/// `events [ID...] [-f] [--since SEQ]`.
async fn events(
    target: &ControllerTarget<'_>,
    args: &EventsArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    for id in &args.ids {
        check_id(id)?;
    }
    let filter = v1::EventFilter {
        experiments: args.ids.clone(),
        nodes: node_filter(target)?.into_iter().collect(),
        kinds: Vec::new(),
    };
    let from_seq = match (args.since, args.follow) {
        (Some(seq), _) => Some(seq.saturating_add(1)),
        (None, true) => None,
        (None, false) => Some(1),
    };
    let client = target.connect().await?;
    if args.follow {
        return follow_events(target, client, filter, from_seq, true, |e| {
            print_event(&FleetEventView::from(e), out)?;
            Ok(Flow::More)
        })
        .await;
    }
    let mut seen = Vec::new();
    follow_events(target, client, filter, from_seq, false, |e| {
        seen.push(FleetEventView::from(e));
        Ok(Flow::More)
    })
    .await?;
    if out.is_json() {
        for e in &seen {
            out.json_line(e)?;
        }
        return Ok(());
    }
    if seen.is_empty() {
        return out.line("no events");
    }
    out.table(&events_table(&seen))
}

fn print_event(e: &FleetEventView, out: &mut Out) -> Result<(), CliError> {
    if out.is_json() {
        out.json_line(e)
    } else {
        let text = event_line(e, out.color);
        out.line(&text)
    }
}

/// `watch [ID]` with a controller: the experiments' events from now on.
async fn watch(
    target: &ControllerTarget<'_>,
    id: Option<&str>,
    out: &mut Out,
) -> Result<(), CliError> {
    if let Some(id) = id {
        check_id(id)?;
    }
    let filter = v1::EventFilter {
        experiments: id.map(str::to_owned).into_iter().collect(),
        nodes: node_filter(target)?.into_iter().collect(),
        kinds: [
            v1::EventKind::Submitted,
            v1::EventKind::PhaseChanged,
            v1::EventKind::Placed,
            v1::EventKind::Crashed,
            v1::EventKind::Disrupted,
        ]
        .into_iter()
        .map(|k| k as i32)
        .collect(),
    };
    let client = target.connect().await?;
    follow_events(target, client, filter, None, true, |e| {
        print_event(&FleetEventView::from(e), out)?;
        Ok(Flow::More)
    })
    .await
}

/// `--node` on the command line, checked.
fn node_filter(target: &ControllerTarget<'_>) -> Result<Option<String>, CliError> {
    match target.node {
        Some(n) => {
            check_node(n)?;
            Ok(Some(n.to_owned()))
        }
        None => Ok(None),
    }
}

/// The controller's phase for a `--state` word; a board's own states have
/// none.
fn phase_for(state: StateFilter) -> Result<v1::ExperimentPhase, CliError> {
    Ok(match state {
        StateFilter::Queued => v1::ExperimentPhase::Queued,
        StateFilter::Placing => v1::ExperimentPhase::Placing,
        StateFilter::Starting => v1::ExperimentPhase::Starting,
        StateFilter::Running => v1::ExperimentPhase::Running,
        StateFilter::Stopping => v1::ExperimentPhase::Stopping,
        StateFilter::Succeeded => v1::ExperimentPhase::Succeeded,
        StateFilter::Failed => v1::ExperimentPhase::Failed,
        StateFilter::Stopped => v1::ExperimentPhase::Stopped,
        StateFilter::Unknown => v1::ExperimentPhase::Unknown,
        StateFilter::Cancelled => v1::ExperimentPhase::Cancelled,
        StateFilter::Restarting | StateFilter::Disrupted => {
            return Err(CliError::Usage(format!(
                "--state {} is a board's state (with --agent); a controller's phases are \
                 queued, placing, starting, running, stopping, unknown, succeeded, failed, \
                 stopped and cancelled",
                state.as_str()
            )))
        }
    })
}

/// `KEY=VALUE` labels, checked by the fleet's rules.
pub fn parse_labels(items: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut labels = BTreeMap::new();
    for item in items {
        let Some((key, value)) = item.split_once('=') else {
            return Err(CliError::Usage(format!(
                "label \"{item}\" is not KEY=VALUE, e.g. model=agx-orin"
            )));
        };
        let key = LabelKey::new(key).map_err(|e| CliError::Usage(e.to_string()))?;
        let value = LabelValue::new(value).map_err(|e| CliError::Usage(e.to_string()))?;
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

/// `node label` arguments: `KEY=VALUE` sets, `KEY-` removes.
pub fn parse_label_edits(
    items: &[String],
) -> Result<(BTreeMap<String, String>, Vec<String>), CliError> {
    let mut set = Vec::new();
    let mut remove = Vec::new();
    for item in items {
        match item.strip_suffix('-') {
            Some(key) if !item.contains('=') => {
                let key = LabelKey::new(key).map_err(|e| CliError::Usage(e.to_string()))?;
                remove.push(key.to_string());
            }
            _ => set.push(item.clone()),
        }
    }
    let set = parse_labels(&set)?;
    if let Some(both) = remove.iter().find(|k| set.contains_key(*k)) {
        return Err(CliError::Usage(format!(
            "label \"{both}\" is both set and removed; name it once"
        )));
    }
    Ok((set, remove))
}

async fn ps(target: &ControllerTarget<'_>, args: &PsArgs, out: &mut Out) -> Result<(), CliError> {
    let phases = args
        .state
        .iter()
        .map(|s| phase_for(*s).map(|p| p as i32))
        .collect::<Result<Vec<_>, _>>()?;
    let labels = parse_labels(&args.label)?;
    let node = node_filter(target)?.unwrap_or_default();
    let filtered = !phases.is_empty() || !labels.is_empty() || !node.is_empty();
    let mut client = target.connect().await?;
    let mut experiments = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(v1::ListRequest {
                phases: phases.clone(),
                node: node.clone(),
                labels: labels.clone().into_iter().collect(),
                limit: 0,
                page_token: page_token.clone(),
            })
            .await
            .map_err(|s| CliError::rpc("list experiments", s))?
            .into_inner();
        experiments.extend(page.experiments.iter().map(FleetExperimentView::from));
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }
    if out.is_json() {
        return out.json(&FleetExperimentList { experiments });
    }
    if experiments.is_empty() {
        return out.line(if filtered {
            "no experiments match"
        } else {
            "no experiments"
        });
    }
    out.table(&experiments_table(&experiments, now_us()))
}

async fn status(target: &ControllerTarget<'_>, id: &str, out: &mut Out) -> Result<(), CliError> {
    check_id(id)?;
    let mut client = target.connect().await?;
    let e = client
        .get(v1::GetRequest { id: id.to_owned() })
        .await
        .map_err(|s| CliError::rpc(format!("status \"{id}\""), s))?
        .into_inner();
    let view = FleetExperimentView::from(&e);
    if out.is_json() {
        return out.json(&view);
    }
    let now = now_us();
    for line in status_lines(&view, e.status.as_ref(), now, out.color) {
        out.line(&line)?;
    }
    if !view.runs.is_empty() {
        out.line("")?;
        out.table(&runs_table(&view.runs, now))?;
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Action {
    Stop,
    Cancel,
    Restart,
}

async fn each_id(
    target: &ControllerTarget<'_>,
    args: &IdsArgs,
    action: Action,
    out: &mut Out,
) -> Result<(), CliError> {
    for id in &args.ids {
        check_id(id)?;
    }
    let reason = args.reason.clone().unwrap_or_default();
    let mut client = target.connect().await?;
    let (verb, done) = match action {
        Action::Stop => ("stop", "stopped"),
        Action::Cancel => ("cancel", "cancelled"),
        Action::Restart => ("restart", "restarted"),
    };
    let mut errors = Vec::new();
    let mut experiments = Vec::new();
    for wanted in &args.ids {
        let (id, reason) = (wanted.clone(), reason.clone());
        let result = match action {
            Action::Stop => client.stop(v1::StopRequest { id, reason }).await,
            Action::Cancel => client.cancel(v1::CancelRequest { id, reason }).await,
            Action::Restart => client.restart(v1::RestartRequest { id, reason }).await,
        };
        match result {
            Ok(e) => {
                let view = FleetExperimentView::from(&e.into_inner());
                if !out.is_json() {
                    let text = format!(
                        "{done} {}: {}",
                        view.id,
                        out.paint(view.phase, phase_color(view.phase))
                    );
                    out.line(&text)?;
                }
                experiments.push(view);
            }
            Err(s) => errors.push(CliError::rpc(format!("{verb} \"{wanted}\""), s)),
        }
    }
    if out.is_json() {
        out.json(&FleetExperimentList { experiments })?;
    }
    CliError::from_many(errors)
}

async fn explain(target: &ControllerTarget<'_>, id: &str, out: &mut Out) -> Result<(), CliError> {
    check_id(id)?;
    let mut client = target.connect().await?;
    let explanation = client
        .explain(v1::ExplainRequest { id: id.to_owned() })
        .await
        .map_err(|s| CliError::rpc(format!("explain \"{id}\""), s))?
        .into_inner();
    let view = ExplanationView::from(&explanation);
    if out.is_json() {
        return out.json(&view);
    }
    if let Some(e) = &view.experiment {
        // `heater-b: succeeded`, `big: queued; no node fits: …`.
        let mut text = format!("{}: {}", e.id, out.paint(e.phase, phase_color(e.phase)));
        if let Some(node) = &e.node {
            text.push_str(&format!(" on {node}"));
        }
        if let Some(reason) = &e.reason {
            text.push_str(&format!("; {reason}"));
        }
        out.line(&text)?;
    }
    match &view.last {
        None => out.line("the scheduler has decided nothing for it yet")?,
        Some(d) => print_decision("last decision", d, out)?,
    }
    if let Some(d) = &view.now {
        print_decision("now", d, out)?;
    }
    Ok(())
}

fn print_decision(title: &str, d: &DecisionView, out: &mut Out) -> Result<(), CliError> {
    out.line("")?;
    let heading = decision_heading(title, d, out.color);
    out.line(&heading)?;
    if d.nodes.is_empty() {
        return out.line("no nodes were considered");
    }
    out.table(&verdict_table(d))
}

/// `logs ID`, proxied from the board through the controller. With
/// `--follow`, a broken stream is resumed from the last line's time,
/// lines already printed skipped by their cursor.
async fn logs(
    target: &ControllerTarget<'_>,
    args: &LogsArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    check_id(&args.id)?;
    let since = match &args.since {
        Some(s) => parse_since(s, now_us()).map_err(CliError::Usage)?,
        None => 0,
    };
    let tail = args.lines.unwrap_or(if args.follow { 10 } else { 0 });
    let context = format!("logs \"{}\"", args.id);
    let mut client = target.connect().await?;
    let mut position = LogPosition::default();
    let mut backoff = Backoff::default();
    let mut resuming = false;
    loop {
        let request = if position.started() {
            v1::LogsRequest {
                id: args.id.clone(),
                tail: 0,
                since_unix_us: position.since_us(),
                follow: args.follow,
            }
        } else {
            v1::LogsRequest {
                id: args.id.clone(),
                tail,
                since_unix_us: since,
                follow: args.follow,
            }
        };
        let mut stream = match client.logs(request).await {
            Ok(r) => r.into_inner(),
            Err(s) if resuming && is_transient(&s) => {
                client = target
                    .retry_stream("does not pass the log on", &s, &mut backoff)
                    .await?;
                continue;
            }
            Err(s) => return Err(CliError::rpc(&context, s)),
        };
        if resuming {
            notice(&if position.started() {
                "reconnected; resuming the log after the last line shown".to_owned()
            } else {
                "reconnected; starting the log again".to_owned()
            });
            backoff.reset();
        }
        let broke = loop {
            match stream.message().await {
                Ok(Some(line)) => {
                    if !position.admit(&line) {
                        continue;
                    }
                    if out.is_json() {
                        out.json_line(&LogLineView::from(&line))?;
                    } else {
                        let text = log_line(&line, out.color);
                        out.line(&text)?;
                    }
                }
                // The board's agent ends a log on purpose (the lines asked
                // for are all there, or it stopped following).
                Ok(None) => return Ok(()),
                Err(s) if args.follow && is_transient(&s) => break s.message().to_owned(),
                Err(s) => return Err(CliError::rpc(&context, s)),
            }
        };
        let wait = backoff.next_wait();
        notice(&format!(
            "lost the log stream ({broke}); reconnecting to {} in {}",
            target.addr,
            human_duration(wait)
        ));
        tokio::time::sleep(wait).await;
        position.resume();
        resuming = true;
        client = target.reconnect(&mut backoff).await?;
    }
}

async fn list_nodes(
    target: &ControllerTarget<'_>,
    names: Vec<String>,
    labels: BTreeMap<String, String>,
) -> Result<Vec<v1::Node>, CliError> {
    let mut client = target.connect().await?;
    Ok(client
        .list_nodes(v1::ListNodesRequest {
            names,
            labels: labels.into_iter().collect(),
        })
        .await
        .map_err(|s| CliError::rpc("list nodes", s))?
        .into_inner()
        .nodes)
}

async fn nodes(
    target: &ControllerTarget<'_>,
    args: &NodesArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let labels = parse_labels(&args.label)?;
    let filtered = !labels.is_empty();
    let nodes: Vec<FleetNodeView> = list_nodes(target, Vec::new(), labels)
        .await?
        .iter()
        .map(FleetNodeView::from)
        .collect();
    if out.is_json() {
        return out.json(&FleetNodeList { nodes });
    }
    if nodes.is_empty() {
        return out.line(if filtered {
            "no nodes match"
        } else {
            "no nodes: agents join when they start, or are listed in the controller's config"
        });
    }
    out.table(&nodes_table(&nodes))
}

/// The node a node command names, or `--node`; one is needed.
fn named_node(target: &ControllerTarget<'_>, arg: Option<&str>) -> Result<String, CliError> {
    let node = merge_node(target.node, arg)?.ok_or_else(|| {
        CliError::Usage("name the board, e.g. fleetctl node info jetson-01".to_owned())
    })?;
    check_node(&node)?;
    Ok(node)
}

async fn node_info(
    target: &ControllerTarget<'_>,
    node: Option<&str>,
    out: &mut Out,
) -> Result<(), CliError> {
    let name = named_node(target, node)?;
    let found = list_nodes(target, vec![name.clone()], BTreeMap::new()).await?;
    let Some(node) = found.iter().find(|n| n.name == name) else {
        return Err(CliError::NotFound(format!(
            "node info: the controller knows no node \"{name}\"; `fleetctl nodes` lists them"
        )));
    };
    let view = FleetNodeView::from(node);
    if out.is_json() {
        return out.json(&view);
    }
    for line in node_lines(&view, now_us(), out.color) {
        out.line(&line)?;
    }
    if let Some(table) = node_zone_table(&view) {
        out.line("")?;
        out.table(&table)?;
    }
    Ok(())
}

async fn cordon(
    target: &ControllerTarget<'_>,
    node: &str,
    reason: Option<&str>,
    out: &mut Out,
) -> Result<(), CliError> {
    check_node(node)?;
    let mut client = target.connect().await?;
    let n = client
        .cordon(v1::CordonRequest {
            node: node.to_owned(),
            reason: reason.unwrap_or_default().to_owned(),
        })
        .await
        .map_err(|s| CliError::rpc(format!("cordon {node}"), s))?
        .into_inner();
    let view = FleetNodeView::from(&n);
    if out.is_json() {
        return out.json(&view);
    }
    out.line(&format!(
        "cordoned {}: nothing new is placed there; {} keep running",
        view.name,
        running_there(&view)
    ))
}

fn running_there(n: &FleetNodeView) -> String {
    match n.experiments.len() {
        0 => "experiments placed there (none now) would".to_owned(),
        1 => format!("its experiment {} will", n.experiments[0]),
        _ => format!("its experiments {} will", n.experiments.join(", ")),
    }
}

async fn uncordon(
    target: &ControllerTarget<'_>,
    node: &str,
    out: &mut Out,
) -> Result<(), CliError> {
    check_node(node)?;
    let mut client = target.connect().await?;
    let n = client
        .uncordon(v1::UncordonRequest {
            node: node.to_owned(),
        })
        .await
        .map_err(|s| CliError::rpc(format!("uncordon {node}"), s))?
        .into_inner();
    let view = FleetNodeView::from(&n);
    if out.is_json() {
        return out.json(&view);
    }
    out.line(&format!("{} takes new work again", view.name))
}

async fn drain(
    target: &ControllerTarget<'_>,
    args: &DrainArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    check_node(&args.node)?;
    let mode = if args.requeue {
        v1::DrainMode::Requeue
    } else {
        v1::DrainMode::Wait
    };
    let mut client = target.connect().await?;
    let r = client
        .drain(v1::DrainRequest {
            node: args.node.clone(),
            mode: mode as i32,
            reason: args.reason.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| CliError::rpc(format!("drain {}", args.node), s))?
        .into_inner();
    let view = DrainView {
        node: r.node.as_ref().map(FleetNodeView::from),
        mode: crate::views::drain_word(mode),
        experiments: r.experiments,
    };
    if out.is_json() {
        return out.json(&view);
    }
    out.line(&drain_text(&args.node, &view))
}

async fn label(
    target: &ControllerTarget<'_>,
    node: &str,
    items: &[String],
    out: &mut Out,
) -> Result<(), CliError> {
    check_node(node)?;
    let (set, remove) = parse_label_edits(items)?;
    let mut client = target.connect().await?;
    let n = client
        .set_labels(v1::SetLabelsRequest {
            node: node.to_owned(),
            labels: set.into_iter().collect(),
            remove,
        })
        .await
        .map_err(|s| CliError::rpc(format!("label {node}"), s))?
        .into_inner();
    let view = FleetNodeView::from(&n);
    if out.is_json() {
        return out.json(&view);
    }
    out.line(&format!(
        "labels of {}: {}",
        view.name,
        labels_text(&view.labels)
    ))
}

async fn power(
    target: &ControllerTarget<'_>,
    args: &PowerArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let (node, mode) = node_and_value(&args.args);
    if mode.is_empty() {
        return Err(CliError::Usage(
            "name the power mode, e.g. MAXN or 0".to_owned(),
        ));
    }
    let node = merge_node(target.node, node)?.ok_or_else(|| {
        CliError::Usage(format!(
            "name the board: fleetctl power NODE {mode} (the controller switches any of them)"
        ))
    })?;
    check_node(&node)?;
    let mut client = target.connect().await?;
    let r = client
        .set_power_mode(v1::SetNodePowerModeRequest {
            node: node.clone(),
            mode: mode.to_owned(),
            allow_reboot: args.allow_reboot,
            force: args.force,
        })
        .await
        .map_err(|s| CliError::rpc(format!("power {node} {mode}"), s))?
        .into_inner();
    let view = PowerView {
        node: Some(node.clone()),
        mode: r.mode.as_ref().map(Into::into),
        changed: r.changed,
        reboot_required: r.reboot_required,
    };
    power_outcome(&format!("power {node} {mode}"), &view, mode, out)
}

async fn clocks(
    target: &ControllerTarget<'_>,
    args: &ClocksArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    let (node, value) = node_and_value(&args.args);
    let enabled = parse_on_off(value)?;
    let node = merge_node(target.node, node)?.ok_or_else(|| {
        CliError::Usage(format!(
            "name the board: fleetctl clocks NODE {value} (the controller switches any of them)"
        ))
    })?;
    check_node(&node)?;
    let mut client = target.connect().await?;
    let r = client
        .set_clocks(v1::SetNodeClocksRequest {
            node: node.clone(),
            enabled,
        })
        .await
        .map_err(|s| CliError::rpc(format!("clocks {node} {value}"), s))?
        .into_inner();
    let view = ClocksView {
        node: Some(node),
        enabled: r.enabled,
    };
    if out.is_json() {
        return out.json(&view);
    }
    out.line(&clocks_text(&view))
}

async fn policy_get(target: &ControllerTarget<'_>, out: &mut Out) -> Result<(), CliError> {
    let mut client = target.connect().await?;
    let p = client
        .get_policy(v1::GetPolicyRequest {})
        .await
        .map_err(|s| CliError::rpc("policy get", s))?
        .into_inner();
    let view = PolicyView::from(&p);
    if out.is_json() {
        return out.json(&view);
    }
    for line in policy_lines(&view, now_us()) {
        out.line(&line)?;
    }
    Ok(())
}

/// `TERM=WEIGHT` items, each term once, each weight a number ≥ 0.
pub fn parse_weights(items: &[String]) -> Result<BTreeMap<String, f64>, CliError> {
    const TERMS: [&str; 5] = ["temperature", "load", "memory", "spread", "pack"];
    let mut weights = BTreeMap::new();
    for item in items {
        let bad = || {
            CliError::Usage(format!(
                "weight \"{item}\" is not TERM=WEIGHT with TERM one of {} and WEIGHT a number \
                 of at least 0, e.g. temperature=0.5",
                TERMS.join(", ")
            ))
        };
        let (term, value) = item.split_once('=').ok_or_else(bad)?;
        let term = term.trim();
        if !TERMS.contains(&term) {
            return Err(bad());
        }
        let value: f64 = value.trim().parse().map_err(|_| bad())?;
        if !value.is_finite() || value < 0.0 {
            return Err(bad());
        }
        if weights.insert(term.to_owned(), value).is_some() {
            return Err(CliError::Usage(format!(
                "weight \"{term}\" is given twice; give it once"
            )));
        }
    }
    Ok(weights)
}

/// The weights to send: those given, the others from `current` (the
/// weights in effect, when they are the named policy's).
pub fn merge_weights(
    given: &BTreeMap<String, f64>,
    current: Option<&v1::ScoreWeights>,
) -> Option<v1::ScoreWeights> {
    let base = match current {
        Some(c) => *c,
        None if given.len() == 5 => v1::ScoreWeights::default(),
        None => return None,
    };
    let pick = |name: &str, old: f64| given.get(name).copied().unwrap_or(old);
    Some(v1::ScoreWeights {
        temperature: pick("temperature", base.temperature),
        load: pick("load", base.load),
        memory: pick("memory", base.memory),
        spread: pick("spread", base.spread),
        pack: pick("pack", base.pack),
    })
}

async fn policy_set(
    target: &ControllerTarget<'_>,
    args: &PolicySetArgs,
    out: &mut Out,
) -> Result<(), CliError> {
    if args.name.trim().is_empty() {
        return Err(CliError::Usage(
            "name the policy: balanced, coolest, least-loaded, spread or pack".to_owned(),
        ));
    }
    if let Some(m) = args.temp_margin {
        if !m.is_finite() || m < 0.0 {
            return Err(CliError::Usage(format!(
                "--temp-margin {m} is not a temperature difference: give °C of at least 0"
            )));
        }
    }
    let given = parse_weights(&args.weight)?;
    let mut client = target.connect().await?;
    let weights = if given.is_empty() {
        None
    } else {
        // SetPolicy replaces all five weights; the ones not given keep
        // their value, which only GetPolicy of the policy in effect tells.
        let current = client
            .get_policy(v1::GetPolicyRequest {})
            .await
            .map_err(|s| CliError::rpc("policy get", s))?
            .into_inner();
        let same = current.name == args.name;
        let merged = merge_weights(&given, current.weights.as_ref().filter(|_| same));
        Some(merged.ok_or_else(|| {
            CliError::Usage(format!(
                "the weights of \"{}\" not given cannot be kept while \"{}\" is in effect: \
                 give all five (temperature, load, memory, spread, pack), or switch first",
                args.name, current.name
            ))
        })?)
    };
    let p = client
        .set_policy(v1::SetPolicyRequest {
            name: args.name.clone(),
            weights,
            strict_order: args.strict_order.map(|s| s.enabled()),
            temp_margin_c: args.temp_margin,
        })
        .await
        .map_err(|s| CliError::rpc(format!("policy set {}", args.name), s))?
        .into_inner();
    let view = PolicyView::from(&p);
    if out.is_json() {
        return out.json(&view);
    }
    for line in policy_lines(&view, now_us()) {
        out.line(&line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_and_edits_split() {
        let labels = parse_labels(&["model=agx-orin".into(), "room=".into()]).unwrap();
        assert_eq!(labels["model"], "agx-orin");
        assert_eq!(labels["room"], "");
        assert!(matches!(
            parse_labels(&["model".into()]),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(
            parse_labels(&["Model=x".into()]),
            Err(CliError::Usage(_))
        ));
        let (set, remove) =
            parse_label_edits(&["model=agx-orin".into(), "lab/room-".into()]).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(remove, vec!["lab/room"]);
        // A value may end with '-'.
        let (set, remove) = parse_label_edits(&["tier=a-".into()]).unwrap();
        assert_eq!(set["tier"], "a-");
        assert!(remove.is_empty());
        assert!(parse_label_edits(&["a=b".into(), "a-".into()]).is_err());
    }

    #[test]
    fn board_states_are_no_phases() {
        assert_eq!(
            phase_for(StateFilter::Queued).unwrap(),
            v1::ExperimentPhase::Queued
        );
        let err = phase_for(StateFilter::Disrupted).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)));
        assert!(err.to_string().contains("cancelled"), "{err}");
    }

    #[test]
    fn weights_are_checked_and_kept_when_not_given() {
        let given = parse_weights(&["temperature=0.5".into(), "pack=0".into()]).unwrap();
        let current = v1::ScoreWeights {
            temperature: 0.4,
            load: 0.3,
            memory: 0.2,
            spread: 0.1,
            pack: 0.0,
        };
        let merged = merge_weights(&given, Some(&current)).unwrap();
        assert_eq!((merged.temperature, merged.load), (0.5, 0.3));
        assert_eq!(merge_weights(&given, None), None);
        let all = parse_weights(
            &["temperature=1", "load=0", "memory=0", "spread=0", "pack=0"].map(String::from),
        )
        .unwrap();
        assert_eq!(merge_weights(&all, None).unwrap().temperature, 1.0);
        for bad in ["heat=1", "load", "load=-1", "load=x", "load=NaN"] {
            assert!(parse_weights(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_weights(&["load=1".into(), "load=2".into()]).is_err());
    }

    #[test]
    fn only_agent_commands_are_refused_without_a_call() {
        let clocks = Command::Clocks(crate::args::ClocksArgs {
            args: vec!["jetson-01".into(), "on".into()],
        });
        assert!(agent_only(&clocks).is_none());
        let why = agent_only(&Command::StartAll).unwrap();
        assert!(why.contains("board"), "{why}");
        assert!(agent_only(&Command::Policy(PolicyCommand::Get)).is_none());
    }

    #[test]
    fn wait_settles_on_running_or_an_end() {
        assert_eq!(settled(v1::ExperimentPhase::Running), Some(true));
        assert_eq!(settled(v1::ExperimentPhase::Succeeded), Some(true));
        assert_eq!(settled(v1::ExperimentPhase::Cancelled), Some(false));
        assert_eq!(settled(v1::ExperimentPhase::Queued), None);
    }
}
