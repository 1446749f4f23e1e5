//! The fault suite: nothing lost, nothing mislabelled.
//!
//! [`run`] starts three simulated boards and a controller (every daemon on
//! a kept address), keeps submitting small experiments (short ones that
//! succeed, some that exit with code 3 and crash through their restart, a
//! few that run until stopped) and records every submission the controller
//! acknowledged, while a chaos loop, in an order drawn from a seed:
//!
//! - kills the controller (`kill -9`) and starts it again, between and
//!   during submissions;
//! - kills an agent (`kill -9`) whose board runs experiments and starts it
//!   again, reading each running unit's `InvocationID` and `NRestarts` from
//!   the board's systemd before and after;
//! - partitions a board (SIGSTOP of its agent past `node_lost_after`, so
//!   the controller requeues its experiments elsewhere, then SIGCONT);
//! - reboots a board (its agent stopped, its systemd stopping every unit).
//!
//! Then it waits for the fleet to settle (every experiment ended or
//! running) and checks, returning a [`Report`]:
//!
//! - **lost**: every acknowledged submission is stored, with its spec;
//! - **on two boards**: no experiment is active on two boards once the
//!   grace window after a partition has passed, nor at the end;
//! - **invocation changes**: a unit that ran before an agent's `kill -9`
//!   and runs after it, with no crash restart in between, kept its
//!   `InvocationID`;
//! - **phase changes by agent restarts**: an agent restart that reconnects
//!   within half the heartbeat timeout leaves, for the heartbeat timeout
//!   from the kill, no `NodeUnreachable`/`NodeLost` for its board and no
//!   disruption, requeue or unknown phase for the experiments running
//!   there;
//! - **outcome mismatches**: every run whose end the board decided
//!   (succeeded, failed, stopped, disrupted by the board's shutdown or
//!   thermal guard) ended the same on the board for the same epoch, every
//!   ended experiment's last run is on record on its board, and every
//!   running experiment runs on its board in its epoch. Ends the
//!   controller decided without the board (a start that failed, a board
//!   lost) are not comparable and are counted apart.
//!
//! Waits are conditions with deadlines ([`crate::poll::wait_for`]); pauses
//! between faults only pace the storm. The seed is in the report: the
//! same seed gives the same order of faults, board choices and
//! experiments (the timing of a busy machine still varies).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_proto::identity::Role;
use fleet_proto::tls::Expect;
use fleet_proto::v1::{
    self, agent_client::AgentClient, controller_client::ControllerClient, EventKind,
    ExperimentPhase, ExperimentState, RunOutcome,
};
use futures_util::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::agent::{AgentHandle, AgentOptions};
use crate::controller::{wait_nodes_connected, ControllerHandle, ControllerOptions};
use crate::hwsim::{Fixture, HwSim, ThermalParams};
use crate::pki::TestPki;
use crate::poll::{wait_for, Check};
use crate::process::Signal;
use crate::testbed::{Board, Testbed};

/// Prefix of every experiment unit on a board.
const UNIT_PREFIX: &str = "brain-experiment@";
const UNIT_SUFFIX: &str = ".service";
/// One call to a daemon; a frozen or restarting one is retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call is retried while its daemon restarts.
const RETRY_FOR: Duration = Duration::from_secs(90);
/// Every node connected again, after a fault.
const RECONNECT: Duration = Duration::from_secs(60);

/// What to run: the number of each fault, the seed and the fleet's
/// timeouts.
#[derive(Debug, Clone)]
pub struct Plan {
    pub controller_kills: u32,
    pub agent_kills: u32,
    pub partitions: u32,
    pub reboots: u32,
    /// Draws the order of faults, their boards and the experiments.
    pub seed: u64,
    /// The controller's: a board silent this long is unreachable.
    pub heartbeat_timeout_s: u64,
    /// The controller's: a board silent this long is lost and its
    /// experiments requeued. A partition lasts until this has passed.
    pub node_lost_after_s: u64,
    /// The controller's reconcile tick.
    pub tick_ms: u64,
    /// Pause between two submissions: a random time in this range.
    pub submit_every_ms: (u64, u64),
    /// Pause between two faults: a random time in this range.
    pub pause_ms: (u64, u64),
    /// Long-running experiments at most (three are submitted first).
    pub max_long: usize,
    /// Name of the testbed (boards are `<name>-0` …).
    pub name: String,
    /// Daemons listen on 127.0.<net>.x.
    pub net: u8,
    /// How long the fleet may take to settle once the faults are done.
    pub settle_timeout: Duration,
    /// Prints what it does as it goes.
    pub verbose: bool,
    /// Keeps the run's directory and evidence even when all went well.
    pub keep: bool,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            controller_kills: 50,
            agent_kills: 20,
            partitions: 1,
            reboots: 2,
            seed: seed_from_clock(),
            heartbeat_timeout_s: 4,
            node_lost_after_s: 6,
            tick_ms: 50,
            submit_every_ms: (100, 300),
            pause_ms: (50, 250),
            max_long: 6,
            name: "faults".into(),
            net: 40,
            settle_timeout: Duration::from_secs(180),
            verbose: false,
            keep: false,
        }
    }
}

/// A seed from the clock, for a run that was not given one.
pub fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ u64::from(std::process::id()) << 32
}

/// SplitMix64: small, seedable, good enough to draw faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// In `lo..=hi`.
    pub fn range(&mut self, (lo, hi): (u64, u64)) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// What a run did and what it found. Every list is a violation, with what
/// was seen; [`Report::violations`] counts them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    pub seed: u64,
    pub heartbeat_timeout_s: u64,
    pub node_lost_after_s: u64,
    pub controller_kills: u32,
    pub agent_kills: u32,
    pub partitions: u32,
    pub reboots: u32,
    /// Submissions the controller acknowledged.
    pub submissions_acked: usize,
    /// Submit calls that failed on a restarting controller and were sent
    /// again with the same id and spec.
    pub submit_retries: usize,
    /// Of those, how many the controller answered `already_submitted`: it
    /// had stored the first one but its answer was lost to the kill.
    pub acked_already_stored: usize,
    /// Submissions never acknowledged (given up after retrying).
    pub submissions_unacked: usize,
    /// Submissions refused for a reason that is not a restart.
    pub submissions_refused: Vec<String>,
    /// Experiments by final phase.
    pub phases: BTreeMap<String, usize>,
    /// Runs stored over all experiments.
    pub runs: usize,
    /// Runs by how they ended (`disrupted/shutdown`, `start_failed`, …).
    pub run_outcomes: BTreeMap<String, usize>,
    /// Runs whose start failed. A board that goes away may refuse one
    /// start; a placement retried at once on a board whose connection
    /// just failed made hundreds.
    pub start_failures: usize,
    /// Acknowledged and missing (or stored with another spec).
    pub lost: Vec<String>,
    /// Active on two boards after the grace window of a partition, or at
    /// the end.
    pub on_two_boards: Vec<String>,
    /// Units compared across agent kills.
    pub invocations_compared: usize,
    pub invocation_changes: Vec<String>,
    /// Agent restarts that reconnected within half the heartbeat timeout,
    /// whose window was checked.
    pub agent_restarts_checked: usize,
    /// Agent restarts too slow to check (machine too busy).
    pub agent_restarts_slow: usize,
    /// Kill to reconnection of agent restarts, in ms: median and max.
    pub agent_restart_ms: (u64, u64),
    pub phase_changes_by_agent_restarts: Vec<String>,
    /// Experiments the partitions moved to another board.
    pub partition_moved: usize,
    /// From SIGCONT to no copy on two boards, in ms, per partition.
    pub partition_heal_ms: Vec<u64>,
    /// Runs whose end the board decided, compared with the board's.
    pub outcomes_compared: usize,
    /// Runs the controller ended without its board (start failed, board
    /// lost), or whose board has since run a later epoch.
    pub outcomes_not_comparable: usize,
    pub outcome_mismatches: Vec<String>,
    /// Experiments neither ended nor running when the settle deadline
    /// passed.
    pub unsettled: Vec<String>,
    /// Controller kill to serving again, in ms: median and max.
    pub controller_restart_ms: (u64, u64),
    /// From the first fault to the last.
    pub chaos_s: f64,
    /// The whole run, fleet set-up and teardown included.
    pub wall_s: f64,
    /// /proc/loadavg before and after, and the machine's CPUs.
    pub load_before: String,
    pub load_after: String,
    pub cpus: usize,
    /// The run's directory, kept for inspection when an invariant was
    /// violated (`faults-evidence.txt` there has every experiment and
    /// event as the controller and boards had them).
    pub kept: Option<String>,
}

impl Report {
    /// Violations of every invariant, summed.
    pub fn violations(&self) -> usize {
        self.lost.len()
            + self.on_two_boards.len()
            + self.invocation_changes.len()
            + self.phase_changes_by_agent_restarts.len()
            + self.outcome_mismatches.len()
            + self.unsettled.len()
            + self.submissions_refused.len()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, name: &str, items: &[String]| {
            writeln!(f, "  {name:<40} {}", items.len())?;
            for i in items.iter().take(20) {
                writeln!(f, "      {i}")?;
            }
            if items.len() > 20 {
                writeln!(f, "      … and {} more", items.len() - 20)?;
            }
            Ok(())
        };
        writeln!(
            f,
            "fault suite, seed {} (heartbeat_timeout_s {}, node_lost_after_s {})",
            self.seed, self.heartbeat_timeout_s, self.node_lost_after_s
        )?;
        writeln!(
            f,
            "  faults: {} controller kills, {} agent kills, {} partitions, {} reboots",
            self.controller_kills, self.agent_kills, self.partitions, self.reboots
        )?;
        writeln!(
            f,
            "  submissions: {} acknowledged ({} retried, {} of them already stored), {} never acknowledged",
            self.submissions_acked,
            self.submit_retries,
            self.acked_already_stored,
            self.submissions_unacked
        )?;
        writeln!(f, "  experiments by phase: {:?}", self.phases)?;
        writeln!(f, "  {} runs: {:?}", self.runs, self.run_outcomes)?;
        writeln!(
            f,
            "  controller restart (kill to serving): median {} ms, max {} ms",
            self.controller_restart_ms.0, self.controller_restart_ms.1
        )?;
        writeln!(
            f,
            "  agent restart (kill to reconnected): median {} ms, max {} ms; {} checked, {} too slow to check",
            self.agent_restart_ms.0,
            self.agent_restart_ms.1,
            self.agent_restarts_checked,
            self.agent_restarts_slow
        )?;
        writeln!(
            f,
            "  partitions moved {} experiments; healed in {:?} ms",
            self.partition_moved, self.partition_heal_ms
        )?;
        writeln!(
            f,
            "  invariants ({} units compared across agent kills, {} outcomes compared, {} not comparable):",
            self.invocations_compared, self.outcomes_compared, self.outcomes_not_comparable
        )?;
        list(f, "acknowledged submissions lost", &self.lost)?;
        list(
            f,
            "on two boards after the grace window",
            &self.on_two_boards,
        )?;
        list(
            f,
            "InvocationIDs changed by agent kills",
            &self.invocation_changes,
        )?;
        list(
            f,
            "phase changes by agent restarts",
            &self.phase_changes_by_agent_restarts,
        )?;
        list(
            f,
            "controller/board outcome mismatches",
            &self.outcome_mismatches,
        )?;
        list(f, "unsettled at the deadline", &self.unsettled)?;
        list(f, "submissions refused", &self.submissions_refused)?;
        writeln!(
            f,
            "  time: {:.1} s of faults, {:.1} s in all; {} CPUs, load {} before, {} after",
            self.chaos_s, self.wall_s, self.cpus, self.load_before, self.load_after
        )?;
        if let Some(dir) = &self.kept {
            writeln!(f, "  kept {dir} (faults-evidence.txt)")?;
        }
        write!(f, "  violations: {}", self.violations())
    }
}

/// Runs the scenario of `plan`. An error is a fault the suite could not
/// carry out (a daemon that would not start, a wait that timed out on
/// something other than an invariant); a violated invariant is in the
/// report.
pub async fn run(plan: Plan) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = Report {
        seed: plan.seed,
        heartbeat_timeout_s: plan.heartbeat_timeout_s,
        node_lost_after_s: plan.node_lost_after_s,
        load_before: loadavg(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        ..Default::default()
    };
    let mut bed = Testbed::try_new(&plan.name).await?;
    let result = async {
        let mut fleet = Fleet::start(&mut bed, &plan).await?;
        let outcome = Scenario::new(&mut fleet, &plan, &mut report)
            .run(bed.dir())
            .await;
        fleet.stop().await;
        outcome
    }
    .await;
    let teardown = if result.is_err() || report.violations() > 0 || plan.keep {
        // Dropped, not shut down: everything is killed and the directory
        // kept.
        report.kept = Some(bed.dir().display().to_string());
        drop(bed);
        Ok(())
    } else {
        bed.shutdown().await
    };
    report.load_after = loadavg();
    report.wall_s = started.elapsed().as_secs_f64();
    result?;
    teardown?;
    Ok(report)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Three boards and a controller, each on a kept address.
struct Fleet {
    boards: Vec<Board>,
    agents: Vec<AgentHandle>,
    ctl: ControllerHandle,
    /// An admin's lazy channel to the controller: it reconnects after a
    /// restart (the address is kept).
    admin: ControllerClient<Channel>,
    /// A viewer's lazy channel to each agent.
    viewers: Vec<AgentClient<Channel>>,
}

impl Fleet {
    async fn start(bed: &mut Testbed, plan: &Plan) -> anyhow::Result<Fleet> {
        let names: Vec<String> = (0..3).map(|i| format!("{}-{i}", plan.name)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let boards = bed.add_boards(&refs).await?;
        let pki = TestPki::new(&bed.dir().join("pki"))?;
        let mut agents = Vec::new();
        for (i, b) in boards.iter().enumerate() {
            let sim = HwSim::install(b, Fixture::AgxOrinR36, ThermalParams::bounded(40.0, 60.0))?;
            let options = AgentOptions {
                hardware: Some(sim),
                guard_toml: Some("[guard]\ncooldown_s = 1\n".into()),
                sampling_ms: Some(200),
                ..Default::default()
            };
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, plan.net, i as u8 + 1));
            let agent = AgentHandle::start_with(b, &pki, ip, options).await?;
            agent.keep_address()?;
            agents.push(agent);
        }
        let refs: Vec<&AgentHandle> = agents.iter().collect();
        let options = ControllerOptions {
            heartbeat_timeout_s: plan.heartbeat_timeout_s,
            node_lost_after_s: plan.node_lost_after_s,
            tick_ms: plan.tick_ms,
            slots_per_node: 6,
            ..Default::default()
        };
        let ctl = ControllerHandle::start(
            &bed.dir().join("controller"),
            &pki,
            IpAddr::V4(Ipv4Addr::new(127, 0, plan.net, 100)),
            &refs,
            &options,
        )
        .await?;
        ctl.keep_address()?;
        let admin_certs = pki.user("faults-admin", Role::Admin)?;
        let admin = ControllerClient::new(
            admin_certs
                .client()?
                .connect_lazy(ctl.addr, Expect::Controller)?,
        );
        let viewer = pki.user("faults-viewer", Role::Viewer)?;
        let viewers = agents
            .iter()
            .map(|a| {
                Ok(AgentClient::new(
                    viewer
                        .client()?
                        .connect_lazy(a.addr, Expect::Agent(a.node.clone()))?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        wait_nodes_connected(&admin, 3, RECONNECT).await?;
        Ok(Fleet {
            boards,
            agents,
            ctl,
            admin,
            viewers,
        })
    }

    fn node(&self, i: usize) -> &str {
        self.boards[i].name()
    }

    async fn stop(&mut self) {
        let _ = self.ctl.kill9().await;
        for a in &mut self.agents {
            if a.running_pid().is_some() {
                let _ = a.signal(Signal::Cont).await;
            }
            let _ = a.kill9().await;
        }
    }
}

/// Calls `call` until it answers, retrying while the daemon restarts
/// (unavailable, cut off, no answer in [`CALL_TIMEOUT`]); an answer such
/// as invalid-argument ends it at once.
pub async fn retry<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let value = wait_for(what, RETRY_FOR, || {
        let attempt = call();
        async move {
            match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
                Ok(Ok(v)) => Ok(Check::Ready(v)),
                Ok(Err(s)) if transient(&s) => {
                    Ok(Check::not_yet(format!("{:?}: {}", s.code(), s.message())))
                }
                Ok(Err(s)) => Err(anyhow::anyhow!("{:?}: {}", s.code(), s.message())),
                Err(_) => Ok(Check::not_yet(format!("no answer in {CALL_TIMEOUT:?}"))),
            }
        }
    })
    .await?;
    Ok(value)
}

/// An error a restarting daemon gives.
fn transient(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
    )
}

/// Every experiment the controller stores, page by page.
pub async fn list_all(admin: &ControllerClient<Channel>) -> anyhow::Result<Vec<v1::Experiment>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = retry("the controller's list", || {
            let mut c = admin.clone();
            let page_token = token.clone();
            async move {
                c.list(v1::ListRequest {
                    page_token,
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner())
            }
        })
        .await?;
        out.extend(page.experiments);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// One experiment unit as the board's systemd has it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitRun {
    pub invocation: String,
    pub restarts: u32,
    pub active_state: String,
    pub sub_state: String,
}

impl UnitRun {
    /// Active on the board: running, starting or waiting to restart.
    pub fn is_active(&self) -> bool {
        matches!(
            self.active_state.as_str(),
            "active" | "activating" | "reloading"
        )
    }
}

/// Every loaded experiment unit of `board`, by experiment id, from its
/// systemd (not from the agent).
pub async fn units(board: &Board) -> anyhow::Result<BTreeMap<String, UnitRun>> {
    let out = board
        .systemctl(&[
            "show",
            "--type=service",
            "-p",
            "Id",
            "-p",
            "InvocationID",
            "-p",
            "NRestarts",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            &format!("{UNIT_PREFIX}*{UNIT_SUFFIX}"),
        ])
        .await?;
    let mut units = BTreeMap::new();
    for block in out.split("\n\n") {
        let props: BTreeMap<&str, &str> = block.lines().filter_map(|l| l.split_once('=')).collect();
        let Some(id) = props
            .get("Id")
            .and_then(|u| u.strip_prefix(UNIT_PREFIX))
            .and_then(|u| u.strip_suffix(UNIT_SUFFIX))
        else {
            continue;
        };
        units.insert(
            id.to_owned(),
            UnitRun {
                invocation: props.get("InvocationID").unwrap_or(&"").to_string(),
                restarts: props
                    .get("NRestarts")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                active_state: props.get("ActiveState").unwrap_or(&"").to_string(),
                sub_state: props.get("SubState").unwrap_or(&"").to_string(),
            },
        );
    }
    Ok(units)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn median_max(mut v: Vec<u64>) -> (u64, u64) {
    v.sort_unstable();
    (
        v.get(v.len() / 2).copied().unwrap_or(0),
        v.last().copied().unwrap_or(0),
    )
}

/// The controller's event log as read so far.
#[derive(Default)]
struct Events {
    all: Vec<v1::Event>,
}

impl Events {
    /// Reads the events appended since the last read.
    async fn refresh(&mut self, admin: &ControllerClient<Channel>) -> anyhow::Result<()> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let from = self.all.last().map_or(1, |e| e.seq + 1);
            let read = async {
                let mut stream = admin
                    .clone()
                    .watch_events(v1::WatchEventsRequest {
                        from_seq: Some(from),
                        filter: None,
                        replay_only: true,
                    })
                    .await?
                    .into_inner();
                while let Some(ev) = stream.next().await {
                    self.all.push(ev?);
                }
                Ok::<(), tonic::Status>(())
            };
            match tokio::time::timeout(CALL_TIMEOUT, read).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(s)) if !transient(&s) => anyhow::bail!("read events: {s}"),
                _ if Instant::now() > deadline => {
                    anyhow::bail!("the controller's events could not be read for {RETRY_FOR:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Events at or after `from_us` (the controller's clock, this machine's).
    fn since(&self, from_us: i64) -> impl Iterator<Item = &v1::Event> {
        let start = self
            .all
            .partition_point(|e| e.timestamp_unix_us < from_us.saturating_sub(1_000_000));
        self.all[start..]
            .iter()
            .filter(move |e| e.timestamp_unix_us >= from_us)
    }
}

/// What the submitter did.
#[derive(Debug, Default)]
struct Submissions {
    /// Acknowledged: id → command.
    acked: BTreeMap<String, Vec<String>>,
    retries: usize,
    already_stored: usize,
    unacked: usize,
    refused: Vec<String>,
}

/// The experiments of the storm.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Sleeps a little, succeeds.
    Short,
    /// Exits with code 3, is restarted once, fails.
    Fails,
    /// Runs until stopped.
    Long,
}

fn spec(id: &str, kind: Kind, rng: &mut Rng) -> v1::ExperimentSpec {
    let (command, lifecycle) = match kind {
        Kind::Short => (
            vec!["/bin/sleep".to_owned(), format!("0.{}", rng.range((2, 9)))],
            v1::Lifecycle {
                stop_timeout: "5s".into(),
                ..Default::default()
            },
        ),
        Kind::Fails => (
            vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                "sleep 0.3; exit 3".to_owned(),
            ],
            v1::Lifecycle {
                stop_timeout: "5s".into(),
                restart_delay: "100ms".into(),
                max_restarts: Some(1),
                ..Default::default()
            },
        ),
        // A SIGTERM it did not trap: a shutdown disrupts it, a stop stops
        // it; never a success.
        Kind::Long => (
            vec!["/bin/sleep".to_owned(), "100000".to_owned()],
            v1::Lifecycle {
                stop_timeout: "5s".into(),
                ..Default::default()
            },
        ),
    };
    v1::ExperimentSpec {
        id: id.into(),
        command,
        lifecycle: Some(lifecycle),
        ..Default::default()
    }
}

/// Keeps submitting until `stop`, retrying each submission (same id, same
/// spec) until the controller acknowledges it.
async fn submitter(
    admin: ControllerClient<Channel>,
    mut rng: Rng,
    plan: Plan,
    stop: Arc<AtomicBool>,
) -> Submissions {
    let mut done = Submissions::default();
    let mut longs = 0;
    let mut i = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let kind = if i < 3 || (longs < plan.max_long && rng.chance(2)) {
            Kind::Long
        } else if rng.chance(20) {
            Kind::Fails
        } else {
            Kind::Short
        };
        let letter = match kind {
            Kind::Short => 's',
            Kind::Fails => 'e',
            Kind::Long => 'l',
        };
        let id = format!("{letter}{i:05}");
        let spec = spec(&id, kind, &mut rng);
        let deadline = Instant::now() + RETRY_FOR;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut client = admin.clone();
            let call = client.submit(v1::SubmitRequest {
                spec: Some(spec.clone()),
                dry_run: false,
            });
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(r)) => {
                    if attempts > 1 && r.into_inner().already_submitted {
                        done.already_stored += 1;
                    }
                    done.acked.insert(id.clone(), spec.command.clone());
                    if kind == Kind::Long {
                        longs += 1;
                    }
                    break;
                }
                Ok(Err(s)) if !transient(&s) => {
                    done.refused
                        .push(format!("{id}: {:?}: {}", s.code(), s.message()));
                    break;
                }
                _ if Instant::now() > deadline => {
                    done.unacked += 1;
                    break;
                }
                _ => {
                    done.retries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(rng.range(plan.submit_every_ms))).await;
    }
    done
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Controller,
    Agent,
    Partition,
    Reboot,
}

/// An agent kill whose window is still to be checked.
struct Window {
    node: String,
    killed_us: i64,
    /// Experiments active on the board when it was killed.
    running: BTreeSet<String>,
}

struct Scenario<'a> {
    fleet: &'a mut Fleet,
    plan: &'a Plan,
    report: &'a mut Report,
    rng: Rng,
    events: tokio::sync::Mutex<Events>,
    windows: Vec<Window>,
    controller_restarts: Vec<u64>,
    agent_restarts: Vec<u64>,
}

impl<'a> Scenario<'a> {
    fn new(fleet: &'a mut Fleet, plan: &'a Plan, report: &'a mut Report) -> Self {
        Scenario {
            fleet,
            plan,
            report,
            rng: Rng::new(plan.seed),
            events: tokio::sync::Mutex::default(),
            windows: Vec::new(),
            controller_restarts: Vec::new(),
            agent_restarts: Vec::new(),
        }
    }

    fn say(&self, what: impl fmt::Display) {
        if self.plan.verbose {
            eprintln!("[faults] {what}");
        }
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.plan.heartbeat_timeout_s)
    }

    async fn run(mut self, dir: &std::path::Path) -> anyhow::Result<()> {
        let mut faults = Vec::new();
        faults.extend((0..self.plan.controller_kills).map(|_| Fault::Controller));
        faults.extend((0..self.plan.agent_kills).map(|_| Fault::Agent));
        faults.extend((0..self.plan.partitions).map(|_| Fault::Partition));
        faults.extend((0..self.plan.reboots).map(|_| Fault::Reboot));
        self.rng.shuffle(&mut faults);

        let stop = Arc::new(AtomicBool::new(false));
        let submitter = tokio::spawn(submitter(
            self.fleet.admin.clone(),
            Rng::new(self.plan.seed ^ 0x5EED_5EED),
            self.plan.clone(),
            stop.clone(),
        ));
        // The three long-running experiments are submitted first: wait
        // until the storm has something running on the boards.
        wait_for("experiments running on the boards", RECONNECT, || async {
            let mut n = 0;
            for b in &self.fleet.boards {
                n += units(b).await?.values().filter(|u| u.is_active()).count();
            }
            Ok(if n >= 2 {
                Check::Ready(())
            } else {
                Check::not_yet(format!("{n} active units"))
            })
        })
        .await?;

        let chaos = Instant::now();
        let total = faults.len();
        let mut result = Ok(());
        for (n, fault) in faults.into_iter().enumerate() {
            self.say(format_args!("fault {}/{total}: {fault:?}", n + 1));
            let done = match fault {
                Fault::Controller => self.kill_controller().await,
                Fault::Agent => self.kill_agent().await,
                Fault::Partition => self.partition().await,
                Fault::Reboot => self.reboot().await,
            };
            if let Err(e) = done {
                result = Err(e.context(format!("fault {} of {total} ({fault:?})", n + 1)));
                break;
            }
            if let Err(e) = self.check_windows(false).await {
                result = Err(e);
                break;
            }
            let pause = self.rng.range(self.plan.pause_ms);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        self.report.chaos_s = chaos.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let submissions = submitter.await.context("the submitter panicked")?;
        result?;
        self.check_windows(true).await?;
        self.report.submissions_acked = submissions.acked.len();
        self.report.submit_retries = submissions.retries;
        self.report.acked_already_stored = submissions.already_stored;
        self.report.submissions_unacked = submissions.unacked;
        self.report.submissions_refused = submissions.refused.clone();
        self.report.controller_restart_ms = median_max(self.controller_restarts.clone());
        self.report.agent_restart_ms = median_max(self.agent_restarts.clone());

        self.settle().await?;
        self.check_end(&submissions, dir).await
    }

    async fn kill_controller(&mut self) -> anyhow::Result<()> {
        let t = Instant::now();
        self.fleet.ctl.kill9().await?;
        self.fleet.ctl.start_again().await?;
        self.controller_restarts.push(ms(t.elapsed()));
        self.report.controller_kills += 1;
        Ok(())
    }

    /// Waits until the controller has `node` connected.
    async fn wait_connected(&self, node: &str) -> anyhow::Result<()> {
        let admin = &self.fleet.admin;
        wait_for(
            format!("{node} connected at the controller"),
            RECONNECT,
            || async {
                let mut client = admin.clone();
                let call = client.list_nodes(v1::ListNodesRequest {
                    names: vec![node.to_owned()],
                    ..Default::default()
                });
                Ok(match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Ok(Ok(r)) => {
                        let nodes = r.into_inner().nodes;
                        match nodes.first() {
                            Some(n) if n.connection() == v1::NodeConnection::Connected => {
                                Check::Ready(())
                            }
                            Some(n) => Check::not_yet(format!("{:?}", n.connection())),
                            None => Check::not_yet("not listed"),
                        }
                    }
                    Ok(Err(s)) => Check::not_yet(format!("{:?}: {}", s.code(), s.message())),
                    Err(_) => Check::not_yet("no answer"),
                })
            },
        )
        .await?;
        Ok(())
    }

    /// Waits for an event of `kind` about `node` at or after `since_us`;
    /// returns its time.
    async fn wait_event(
        &self,
        kind: EventKind,
        node: &str,
        since_us: i64,
        timeout: Duration,
    ) -> anyhow::Result<i64> {
        let admin = &self.fleet.admin;
        let what = format!("a {kind:?} event for {node}");
        let t = wait_for(what, timeout, || async {
            let mut events = self.events.lock().await;
            events.refresh(admin).await?;
            let found = events
                .since(since_us)
                .find(|e| e.kind() == kind && e.node == node)
                .map(|e| e.timestamp_unix_us);
            Ok(found.into())
        })
        .await?;
        Ok(t)
    }

    /// Boards (indexes) with an active experiment, from their systemd.
    async fn busy_boards(&self) -> anyhow::Result<Vec<usize>> {
        let mut busy = Vec::new();
        for (i, b) in self.fleet.boards.iter().enumerate() {
            if units(b).await?.values().any(UnitRun::is_active) {
                busy.push(i);
            }
        }
        Ok(busy)
    }

    /// Waits until no agent-kill window is open on board `i`, so that a
    /// partition or reboot there is not taken for the kill's doing.
    async fn close_windows_of(&mut self, i: usize) -> anyhow::Result<()> {
        let node = self.fleet.node(i).to_owned();
        let end = self
            .windows
            .iter()
            .filter(|w| w.node == node)
            .map(|w| w.killed_us)
            .max()
            .map(|k| k + self.heartbeat().as_micros() as i64 + 500_000);
        if let Some(end) = end {
            wait_for(
                format!("the last agent kill's window on {node} to close"),
                self.heartbeat() * 2,
                || async { Ok((now_us() >= end).then_some(()).into()) },
            )
            .await?;
        }
        self.check_windows(false).await
    }

    async fn kill_agent(&mut self) -> anyhow::Result<()> {
        let busy = wait_for("a board running an experiment", RECONNECT, || async {
            let busy = self.busy_boards().await?;
            Ok(if busy.is_empty() {
                Check::not_yet("no active unit on any board")
            } else {
                Check::Ready(busy)
            })
        })
        .await?;
        let i = busy[self.rng.below(busy.len() as u64) as usize];
        let node = self.fleet.node(i).to_owned();
        self.wait_connected(&node).await?;
        let before = units(&self.fleet.boards[i]).await?;
        let killed_us = now_us();
        self.fleet.agents[i].kill9().await?;
        self.fleet.agents[i]
            .start_again(&self.fleet.boards[i])
            .await?;
        let connected_us = self
            .wait_event(EventKind::NodeConnected, &node, killed_us, RECONNECT)
            .await?;
        let took = Duration::from_micros((connected_us - killed_us).max(0) as u64);
        self.agent_restarts.push(ms(took));
        let after = units(&self.fleet.boards[i]).await?;
        self.report.agent_kills += 1;
        self.say(format_args!(
            "{node}: agent back in {took:?} ({} active units)",
            before.values().filter(|u| u.is_active()).count()
        ));

        for (id, b) in before.iter().filter(|(_, u)| u.is_active()) {
            let Some(a) = after.get(id) else { continue };
            // Compared: running before and after, with no crash restart
            // in between (a restart by systemd is a new invocation).
            if !(a.is_active() && a.restarts == b.restarts && b.sub_state == "running") {
                continue;
            }
            self.report.invocations_compared += 1;
            if a.invocation != b.invocation {
                self.report.invocation_changes.push(format!(
                    "{id} on {node}: InvocationID {} → {} across an agent kill (NRestarts {})",
                    b.invocation, a.invocation, a.restarts
                ));
            }
        }
        if took * 2 < self.heartbeat() {
            self.windows.push(Window {
                node,
                killed_us,
                running: before
                    .iter()
                    .filter(|(_, u)| u.is_active())
                    .map(|(id, _)| id.clone())
                    .collect(),
            });
        } else {
            self.report.agent_restarts_slow += 1;
        }
        Ok(())
    }

    /// Checks the windows that have closed (all of them with `all`, after
    /// waiting for them to close).
    async fn check_windows(&mut self, all: bool) -> anyhow::Result<()> {
        let hb = self.heartbeat().as_micros() as i64;
        if all {
            if let Some(end) = self.windows.iter().map(|w| w.killed_us + hb).max() {
                wait_for(
                    "the last agent kill's window to close",
                    self.heartbeat() * 2,
                    || async { Ok((now_us() >= end + 500_000).then_some(()).into()) },
                )
                .await?;
            }
        }
        let now = now_us();
        let (due, open): (Vec<Window>, Vec<Window>) = std::mem::take(&mut self.windows)
            .into_iter()
            .partition(|w| now >= w.killed_us + hb + 500_000);
        self.windows = open;
        if due.is_empty() {
            return Ok(());
        }
        let mut events = self.events.lock().await;
        events.refresh(&self.fleet.admin).await?;
        for w in due {
            self.report.agent_restarts_checked += 1;
            let end = w.killed_us + hb;
            for e in events
                .since(w.killed_us)
                .filter(|e| e.timestamp_unix_us <= end)
            {
                let about_node = e.node == w.node
                    && matches!(e.kind(), EventKind::NodeUnreachable | EventKind::NodeLost);
                let about_run = w.running.contains(&e.experiment)
                    && (e.kind() == EventKind::Disrupted
                        || (e.kind() == EventKind::PhaseChanged
                            && (matches!(
                                e.to(),
                                ExperimentPhase::Unknown
                                    | ExperimentPhase::Queued
                                    | ExperimentPhase::Placing
                            ) || e.from() == ExperimentPhase::Unknown)));
                if about_node || about_run {
                    self.report.phase_changes_by_agent_restarts.push(format!(
                        "{:.3} s after the kill of {}'s agent: seq {} {:?} {} {} {:?}→{:?} by {}: {}",
                        (e.timestamp_unix_us - w.killed_us) as f64 / 1e6,
                        w.node,
                        e.seq,
                        e.kind(),
                        e.experiment,
                        e.node,
                        e.from(),
                        e.to(),
                        e.actor,
                        e.message
                    ));
                }
            }
        }
        Ok(())
    }

    /// Experiments active on more than one board, from the boards' systemd.
    async fn on_two_boards(&self) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let mut at: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for b in &self.fleet.boards {
            for (id, u) in units(b).await? {
                if u.is_active() {
                    at.entry(id).or_default().push(b.name().to_owned());
                }
            }
        }
        at.retain(|_, nodes| nodes.len() > 1);
        Ok(at)
    }

    async fn partition(&mut self) -> anyhow::Result<()> {
        // The board with the most long-running experiments, so that their
        // copies elsewhere meet the old ones when it comes back.
        let mut best = (0, 0);
        for (i, b) in self.fleet.boards.iter().enumerate() {
            let longs = units(b)
                .await?
                .iter()
                .filter(|(id, u)| id.starts_with('l') && u.is_active())
                .count();
            if longs > best.1 || (longs == best.1 && self.rng.chance(50)) {
                best = (i, longs);
            }
        }
        let i = best.0;
        self.close_windows_of(i).await?;
        let node = self.fleet.node(i).to_owned();
        self.wait_connected(&node).await?;
        let active: Vec<String> = units(&self.fleet.boards[i])
            .await?
            .into_iter()
            .filter(|(_, u)| u.is_active())
            .map(|(id, _)| id)
            .collect();
        let stopped_us = now_us();
        self.fleet.agents[i].signal(Signal::Stop).await?;
        self.say(format_args!("{node}: agent frozen with {active:?}"));
        let lost_after = Duration::from_secs(self.plan.node_lost_after_s);
        self.wait_event(
            EventKind::NodeLost,
            &node,
            stopped_us,
            lost_after + RECONNECT,
        )
        .await?;
        // The long-running ones run elsewhere before the board comes back.
        let longs: Vec<&String> = active.iter().filter(|id| id.starts_with('l')).collect();
        let admin = &self.fleet.admin;
        wait_for(
            format!("the long-running experiments of {node} to run elsewhere"),
            RECONNECT,
            || async {
                let mut left = Vec::new();
                for id in &longs {
                    let e = retry("get", || {
                        let mut c = admin.clone();
                        let id = id.to_string();
                        async move { c.get(v1::GetRequest { id }).await.map(|r| r.into_inner()) }
                    })
                    .await?;
                    if !(e.phase() == ExperimentPhase::Running && e.node != node) {
                        left.push(format!("{id}: {:?} on {:?}", e.phase(), e.node));
                    }
                }
                Ok(if left.is_empty() {
                    Check::Ready(())
                } else {
                    Check::not_yet(left.join(", "))
                })
            },
        )
        .await?;
        self.report.partition_moved += active.len();
        self.fleet.agents[i].signal(Signal::Cont).await?;
        let thawed = Instant::now();
        // The grace window: the controller hears from the board within the
        // heartbeat timeout and stops the stale copies it finds.
        let grace = self.heartbeat() * 2 + Duration::from_secs(10);
        let healed = wait_for("no experiment on two boards", grace, || async {
            let two = self.on_two_boards().await?;
            Ok(if two.is_empty() {
                Check::Ready(())
            } else {
                Check::not_yet(format!("{two:?}"))
            })
        })
        .await;
        match healed {
            Ok(()) => self.report.partition_heal_ms.push(ms(thawed.elapsed())),
            Err(e) => self.report.on_two_boards.push(format!(
                "{grace:?} after the partition of {node} ended: {e}"
            )),
        }
        self.wait_connected(&node).await?;
        self.report.partitions += 1;
        Ok(())
    }

    async fn reboot(&mut self) -> anyhow::Result<()> {
        let i = self.rng.below(self.fleet.boards.len() as u64) as usize;
        self.close_windows_of(i).await?;
        let node = self.fleet.node(i).to_owned();
        let t = Instant::now();
        let board = self.fleet.boards[i].clone();
        // As a shutdown does: the agent's service stops with the rest.
        self.fleet.agents[i].stop().await?;
        board.reboot().await?;
        let since = now_us();
        self.fleet.agents[i].start_again(&board).await?;
        self.wait_event(EventKind::NodeConnected, &node, since, RECONNECT)
            .await?;
        self.say(format_args!("{node}: rebooted in {:?}", t.elapsed()));
        self.report.reboots += 1;
        Ok(())
    }

    /// Waits until every node is connected and every experiment has ended
    /// or runs; what has not by the deadline is reported unsettled.
    async fn settle(&mut self) -> anyhow::Result<()> {
        wait_nodes_connected(&self.fleet.admin, 3, RECONNECT).await?;
        let admin = &self.fleet.admin;
        let settled = wait_for(
            "every experiment ended (the long-running ones running)",
            self.plan.settle_timeout,
            || async {
                let left: Vec<String> = list_all(admin)
                    .await?
                    .into_iter()
                    .filter(|e| !settled(e))
                    .map(|e| {
                        format!(
                            "{} {:?} on {:?}",
                            e.spec.as_ref().map(|s| s.id.as_str()).unwrap_or_default(),
                            e.phase(),
                            e.node
                        )
                    })
                    .collect();
                Ok(if left.is_empty() {
                    Check::Ready(())
                } else {
                    Check::not_yet(format!("{} left: {}", left.len(), left.join(", ")))
                })
            },
        )
        .await;
        if let Err(e) = settled {
            self.report.unsettled.push(e.to_string());
        }
        Ok(())
    }

    async fn check_end(
        &mut self,
        submissions: &Submissions,
        dir: &std::path::Path,
    ) -> anyhow::Result<()> {
        let stored: BTreeMap<String, v1::Experiment> = list_all(&self.fleet.admin)
            .await?
            .into_iter()
            .map(|e| (e.spec.as_ref().map(|s| s.id.clone()).unwrap_or_default(), e))
            .collect();
        for e in stored.values() {
            *self.report.phases.entry(phase_name(e.phase())).or_default() += 1;
            self.report.runs += e.runs.len();
            for r in &e.runs {
                *self.report.run_outcomes.entry(run_name(r)).or_default() += 1;
                if r.outcome() == RunOutcome::StartFailed {
                    self.report.start_failures += 1;
                }
            }
        }
        // Listed, and stored with the spec that was acknowledged (a list
        // gives no command: each is read).
        for (id, command) in &submissions.acked {
            if !stored.contains_key(id) {
                self.report.lost.push(format!("{id}: not listed"));
                continue;
            }
            let got = retry("an experiment", || {
                let mut c = self.fleet.admin.clone();
                let id = id.clone();
                async move {
                    match c.get(v1::GetRequest { id }).await {
                        Ok(r) => Ok(r.into_inner().spec.map(|s| s.command)),
                        Err(s) if s.code() == Code::NotFound => Ok(None),
                        Err(s) => Err(s),
                    }
                }
            })
            .await?;
            match got {
                None => self.report.lost.push(format!("{id}: not found")),
                Some(c) if &c != command => self.report.lost.push(format!(
                    "{id}: stored with command {c:?}, submitted {command:?}"
                )),
                Some(_) => {}
            }
        }
        for (id, nodes) in self.on_two_boards().await? {
            self.report
                .on_two_boards
                .push(format!("{id} active on {nodes:?} at the end"));
        }
        // What each board says of each experiment it has a record of.
        let mut boards: BTreeMap<String, BTreeMap<String, v1::ExperimentStatus>> = BTreeMap::new();
        for (i, viewer) in self.fleet.viewers.iter().enumerate() {
            let list = retry("an agent's list", || {
                let mut c = viewer.clone();
                async move {
                    c.list_experiments(v1::ListExperimentsRequest {})
                        .await
                        .map(|r| r.into_inner().experiments)
                }
            })
            .await?;
            boards.insert(
                self.fleet.node(i).to_owned(),
                list.into_iter().map(|s| (s.id.clone(), s)).collect(),
            );
        }
        let (compared, not_comparable, mismatches) = compare_outcomes(&stored, &boards);
        self.report.outcomes_compared = compared;
        self.report.outcomes_not_comparable = not_comparable;
        self.report.outcome_mismatches = mismatches;
        if self.report.violations() > 0 || self.plan.keep {
            let events = self.events.lock().await;
            let mut text = String::new();
            for e in stored.values() {
                text.push_str(&format!("{e:?}\n"));
            }
            for (node, list) in &boards {
                for s in list.values() {
                    text.push_str(&format!("{node}: {s:?}\n"));
                }
            }
            for e in &events.all {
                text.push_str(&format!("{e:?}\n"));
            }
            std::fs::write(dir.join("faults-evidence.txt"), text)?;
        }
        Ok(())
    }
}

/// Ended, or running for a long-running one (the others end on their own:
/// one running now is not settled yet).
fn settled(e: &v1::Experiment) -> bool {
    let long = e.spec.as_ref().is_some_and(|s| s.id.starts_with('l'));
    match e.phase() {
        ExperimentPhase::Succeeded
        | ExperimentPhase::Failed
        | ExperimentPhase::Stopped
        | ExperimentPhase::Cancelled => true,
        ExperimentPhase::Running => {
            long && e.runs.last().is_some_and(|r| r.ended_at_unix_us.is_none())
        }
        _ => false,
    }
}

fn run_name(r: &v1::RunRecord) -> String {
    let outcome = r
        .outcome()
        .as_str_name()
        .trim_start_matches("RUN_OUTCOME_")
        .to_ascii_lowercase();
    match r.disruption() {
        v1::Disruption::Unspecified => outcome,
        d => format!(
            "{outcome}/{}",
            d.as_str_name()
                .trim_start_matches("DISRUPTION_")
                .to_ascii_lowercase()
        ),
    }
}

fn phase_name(p: ExperimentPhase) -> String {
    p.as_str_name()
        .trim_start_matches("EXPERIMENT_PHASE_")
        .to_ascii_lowercase()
}

/// The board's state for a run the controller ended with `run`'s outcome,
/// when the board decided that end; `None` when the controller decided it
/// without the board.
fn board_end(run: &v1::RunRecord) -> Option<ExperimentState> {
    match run.outcome() {
        RunOutcome::Succeeded => Some(ExperimentState::Succeeded),
        RunOutcome::Failed => Some(ExperimentState::Failed),
        RunOutcome::Stopped => Some(ExperimentState::Stopped),
        RunOutcome::Disrupted => match run.disruption() {
            v1::Disruption::Thermal | v1::Disruption::Shutdown => Some(ExperimentState::Disrupted),
            _ => None,
        },
        _ => None,
    }
}

/// Compares the controller's runs with the boards' records: (compared,
/// not comparable, mismatches).
pub fn compare_outcomes(
    stored: &BTreeMap<String, v1::Experiment>,
    boards: &BTreeMap<String, BTreeMap<String, v1::ExperimentStatus>>,
) -> (usize, usize, Vec<String>) {
    let mut compared = 0;
    let mut not_comparable = 0;
    let mut mismatches = Vec::new();
    for (id, e) in stored {
        for (n, run) in e.runs.iter().enumerate() {
            let last = n + 1 == e.runs.len();
            let on_board = boards.get(&run.node).and_then(|b| b.get(id));
            let same_epoch = on_board.filter(|s| s.epoch == run.epoch);
            if run.ended_at_unix_us.is_none() {
                // The open run: running on its board in its epoch.
                if !last || e.phase() != ExperimentPhase::Running {
                    continue;
                }
                compared += 1;
                match same_epoch {
                    Some(s) if s.state() == ExperimentState::Running => {}
                    _ => mismatches.push(format!(
                        "{id}: running at the controller on {} in epoch {}, the board has {}",
                        run.node,
                        run.epoch,
                        describe(on_board)
                    )),
                }
                continue;
            }
            let Some(want) = board_end(run) else {
                not_comparable += 1;
                continue;
            };
            match same_epoch {
                Some(s) => {
                    compared += 1;
                    if s.state() != want {
                        mismatches.push(format!(
                            "{id} epoch {} on {}: {:?} ({}) at the controller, {:?} ({}) on the board",
                            run.epoch,
                            run.node,
                            run.outcome(),
                            run.message,
                            s.state(),
                            s.failure_message
                        ));
                    }
                }
                // A later run on that board replaced the record.
                None if !last => not_comparable += 1,
                None => {
                    compared += 1;
                    mismatches.push(format!(
                        "{id}: ended {:?} at the controller in epoch {} on {}, the board has {}",
                        run.outcome(),
                        run.epoch,
                        run.node,
                        describe(on_board)
                    ));
                }
            }
        }
    }
    (compared, not_comparable, mismatches)
}

fn describe(s: Option<&v1::ExperimentStatus>) -> String {
    match s {
        None => "no record".to_owned(),
        Some(s) => format!("{:?} in epoch {}", s.state(), s.epoch),
    }
}
