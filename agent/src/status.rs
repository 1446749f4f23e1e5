//! What an experiment's state is, derived from systemd's words and the
//! agent's record. Pure logic: no I/O.

use crate::store::{Desired, Outcome, Record};
use crate::systemd::UnitProps;

/// `ExecMainCode` values (waitid's `si_code`).
pub const CLD_EXITED: i32 = 1;
pub const CLD_KILLED: i32 = 2;
pub const CLD_DUMPED: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Running,
    Restarting,
    Stopping,
    Succeeded,
    Failed,
    Stopped,
    Disrupted,
    Unknown,
}

impl State {
    pub fn is_active(self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Restarting | State::Stopping
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Restarting => "restarting",
            State::Stopping => "stopping",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Stopped => "stopped",
            State::Disrupted => "disrupted",
            State::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    None,
    ExitCode,
    Signal,
    OomKill,
    Timeout,
    StartLimit,
    CoreDump,
    Resources,
    Other,
}

/// Everything `GetExperiment` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub id: String,
    pub unit: String,
    pub state: State,
    pub active_state: String,
    pub sub_state: String,
    pub result: String,
    pub main_pid: u32,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub failure: Failure,
    pub failure_message: String,
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub memory_max: Option<u64>,
    pub cpu_usage_nsec: Option<u64>,
    pub active_since_us: Option<u64>,
    pub restarts: u32,
    pub crashes_total: u64,
    pub disruptions_total: u64,
    pub board_restarts: u64,
    pub epoch: u64,
    pub autostart: bool,
    pub invocation_id: String,
}

/// Crashes in the current run as systemd counts them. Under
/// `Restart=on-failure` every crash schedules a restart and bumps
/// `NRestarts`, even the last one, whose restart the start limit refuses (the
/// unit then ends `failed` with the crash's own result, not
/// `start-limit-hit`). Without restarts, a failed unit crashed once.
pub fn crashes_in_run(p: &UnitProps, rec: &Record) -> u64 {
    if rec.restart_on_failure {
        return u64::from(p.n_restarts);
    }
    let crashed = p.active_state == "failed"
        && rec.desired == Desired::Running
        && !matches!(p.result.as_str(), "success" | "");
    u64::from(crashed)
}

/// True when a failed unit failed because its restarts ran out.
fn restarts_exhausted(p: &UnitProps, rec: &Record) -> bool {
    rec.restart_on_failure && p.active_state == "failed" && p.n_restarts > 0
}

/// The outcome to remember when a unit stops being active.
pub fn outcome_of(p: &UnitProps, oom: bool, now_us: u64) -> Outcome {
    Outcome {
        result: p.result.clone(),
        exec_main_code: p.exec_main_code,
        exec_main_status: p.exec_main_status,
        oom,
        ended_us: p.inactive_enter_us.unwrap_or(now_us),
        invocation_id: p.invocation_id.clone(),
        shutdown: false,
    }
}

/// A run that died of a signal systemd counts as a clean exit (SIGTERM,
/// SIGHUP, SIGINT, SIGPIPE: result `success`). When the agent did not stop
/// the unit, someone or something else sent it: a board's shutdown, a
/// `kill`, a `systemctl stop`. That is not a success.
pub fn unrequested_signal(o: &Outcome) -> bool {
    matches!(o.exec_main_code, CLD_KILLED | CLD_DUMPED)
        && matches!(o.result.as_str(), "success" | "")
}

fn signal_name(sig: i32) -> String {
    fleet_proto::unix::signal_text(sig)
}

/// Classifies how a run ended. `oom` is the kernel's word (cgroup v1, where
/// systemd cannot tell an OOM kill from any other SIGKILL).
pub fn classify(o: &Outcome) -> (Failure, Option<i32>, Option<i32>, String) {
    let (code, sig) = match o.exec_main_code {
        CLD_EXITED => (Some(o.exec_main_status), None),
        CLD_KILLED | CLD_DUMPED => (None, Some(o.exec_main_status)),
        _ => (None, None),
    };
    let failure = match o.result.as_str() {
        _ if o.oom => Failure::OomKill,
        "success" | "" => Failure::None,
        "exit-code" => Failure::ExitCode,
        "signal" => Failure::Signal,
        "core-dump" => Failure::CoreDump,
        "oom-kill" => Failure::OomKill,
        "timeout" => Failure::Timeout,
        "start-limit-hit" => Failure::StartLimit,
        "resources" => Failure::Resources,
        _ => Failure::Other,
    };
    let message = match failure {
        Failure::None => String::new(),
        Failure::ExitCode => format!("exited with code {}", code.unwrap_or(-1)),
        Failure::Signal => format!("killed by {}", signal_name(sig.unwrap_or(0))),
        Failure::CoreDump => format!("dumped core on {}", signal_name(sig.unwrap_or(0))),
        Failure::OomKill => "killed by the kernel: out of memory (over memory_max)".to_owned(),
        Failure::Timeout => "timed out (max_runtime or stop_timeout reached)".to_owned(),
        Failure::StartLimit => {
            "crashed too often: the restart limit (max_restarts) was reached".to_owned()
        }
        Failure::Resources => "systemd could not set up the unit's resources".to_owned(),
        Failure::Other => format!("ended with result {:?}", o.result),
    };
    (failure, code, sig, message)
}

/// Derives the status from what systemd says now (`None`: not loaded) and
/// the agent's record.
pub fn derive(unit: &str, rec: &Record, props: Option<&UnitProps>) -> Status {
    let mut st = Status {
        id: rec.id.clone(),
        unit: unit.to_owned(),
        state: State::Unknown,
        active_state: String::new(),
        sub_state: String::new(),
        result: String::new(),
        main_pid: 0,
        exit_code: None,
        exit_signal: None,
        failure: Failure::None,
        failure_message: String::new(),
        memory_current: None,
        memory_peak: None,
        memory_max: None,
        cpu_usage_nsec: None,
        active_since_us: None,
        restarts: 0,
        crashes_total: rec.crashes_total(),
        disruptions_total: rec.disruptions,
        board_restarts: rec.board_restarts,
        epoch: rec.epoch,
        autostart: rec.autostart,
        invocation_id: String::new(),
    };
    let live = props.filter(|p| !p.is_gone());
    // A new run is set up and systemd has not started it yet: what it says
    // (or its exit record said) is the end of the run this one replaced.
    let replaced = rec.superseded_invocation.is_some()
        && match live {
            Some(p) => {
                rec.is_superseded(&p.invocation_id)
                    && matches!(p.active_state.as_str(), "inactive" | "failed")
            }
            None => rec.last_outcome.is_none(),
        };
    if replaced && rec.desired == Desired::Running {
        st.state = State::Starting;
        if let Some(p) = live {
            st.active_state = p.active_state.clone();
            st.sub_state = p.sub_state.clone();
        }
        return st;
    }
    if let Some(p) = live {
        st.active_state = p.active_state.clone();
        st.sub_state = p.sub_state.clone();
        st.result = p.result.clone();
        st.main_pid = p.main_pid;
        st.memory_current = p.memory_current;
        st.memory_peak = p.memory_peak;
        st.memory_max = p.memory_max;
        st.cpu_usage_nsec = p.cpu_usage_nsec;
        st.restarts = p.n_restarts;
        st.invocation_id = p.invocation_id.clone();
        if p.active_state == "active" {
            st.active_since_us = p.active_enter_us;
        }
    }
    let ended = |st: &mut Status, o: &Outcome| {
        let (failure, code, sig, msg) = classify(o);
        st.exit_code = code;
        st.exit_signal = sig;
        st.failure = failure;
        st.failure_message = msg;
        st.result = o.result.clone();
        if o.shutdown {
            // Whatever the program made of it, the shutdown cut it short.
            let how = match (code, sig) {
                (_, Some(sig)) => signal_name(sig),
                (Some(code), None) => format!("exited with code {code}"),
                (None, None) => o.result.clone(),
            };
            // The controller tells a shutdown from the guard's stop (no
            // failure) by it.
            if st.failure == Failure::None {
                st.failure = Failure::Signal;
            }
            st.failure_message = format!("interrupted by the board's shutdown ({how})");
            return State::Disrupted;
        }
        if unrequested_signal(o) {
            let name = signal_name(sig.unwrap_or(0));
            st.failure = Failure::Signal;
            st.failure_message = format!("killed by {name}, which fleet did not send");
            return State::Failed;
        }
        if failure == Failure::None {
            State::Succeeded
        } else {
            State::Failed
        }
    };
    // How the last run ended, for every state that is not active.
    let outcome = match live {
        Some(p) if p.active_state == "failed" || p.active_state == "inactive" => rec
            .last_outcome
            .clone()
            .filter(|o| o.invocation_id == p.invocation_id)
            .or_else(|| (p.exec_main_code != 0).then(|| outcome_of(p, false, 0))),
        Some(_) => None,
        None => rec.last_outcome.clone(),
    };
    if let Some(o) = &outcome {
        let (_, code, sig, _) = classify(o);
        st.exit_code = code;
        st.exit_signal = sig;
        st.result = o.result.clone();
    }
    st.state = match (live.map(|p| p.active_state.as_str()), rec.desired) {
        (Some("active" | "reloading"), _) => State::Running,
        (Some("activating"), _) if live.is_some_and(|p| p.sub_state == "auto-restart") => {
            State::Restarting
        }
        (Some("activating"), _) => State::Starting,
        (Some("deactivating"), _) => State::Stopping,
        (_, Desired::Stopped) => State::Stopped,
        (_, Desired::Disrupted) => State::Disrupted,
        (_, Desired::Running) => match &outcome {
            Some(o) => {
                let state = ended(&mut st, o);
                if let Some(p) = live.filter(|p| restarts_exhausted(p, rec)) {
                    if st.failure != Failure::StartLimit {
                        st.failure_message = format!(
                            "crashed {} times, restart limit (max_restarts) reached; last crash: {}",
                            p.n_restarts, st.failure_message
                        );
                        st.failure = Failure::StartLimit;
                    }
                }
                state
            }
            // Started, but systemd has not picked up the job yet.
            None if live.is_some() => State::Starting,
            None => State::Unknown,
        },
    };
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RECORD_VERSION;

    fn rec(desired: Desired) -> Record {
        Record {
            version: RECORD_VERSION,
            id: "x".into(),
            spec: vec![],
            epoch: 3,
            autostart: false,
            restart_on_failure: true,
            desired,
            crashes_before: 1,
            crashes_in_run: 2,
            disruptions: 0,
            board_restarts: 0,
            run_started_us: 0,
            last_outcome: None,
            superseded_invocation: None,
        }
    }

    fn props(active: &str, sub: &str, result: &str) -> UnitProps {
        UnitProps {
            load_state: "loaded".into(),
            active_state: active.into(),
            sub_state: sub.into(),
            result: result.into(),
            ..Default::default()
        }
    }

    #[test]
    fn live_states_follow_systemd() {
        let r = rec(Desired::Running);
        let s = |a, b| derive("u", &r, Some(&props(a, b, "success"))).state;
        assert_eq!(s("active", "running"), State::Running);
        assert_eq!(s("activating", "auto-restart"), State::Restarting);
        assert_eq!(s("activating", "start"), State::Starting);
        assert_eq!(s("deactivating", "stop-sigterm"), State::Stopping);
    }

    #[test]
    fn a_new_run_is_starting_until_systemd_starts_another_invocation() {
        let mut r = rec(Desired::Running);
        r.superseded_invocation = Some("old".into());
        let ended = |active: &str, result: &str, code: i32, inv: &str| UnitProps {
            exec_main_code: code,
            invocation_id: inv.into(),
            ..props(active, "dead", result)
        };
        // The old run's end, success or failure, is not this run's.
        for p in [
            ended("inactive", "success", CLD_EXITED, "old"),
            ended("failed", "exit-code", CLD_EXITED, "old"),
        ] {
            let st = derive("u", &r, Some(&p));
            assert_eq!(st.state, State::Starting, "{p:?}");
            assert_eq!((st.exit_code, st.failure), (None, Failure::None));
        }
        // Collected: the same, until an outcome of this run is known.
        assert_eq!(derive("u", &r, None).state, State::Starting);
        // The old run still stopping reads as stopping.
        let stopping = UnitProps {
            invocation_id: "old".into(),
            ..props("deactivating", "stop-sigterm", "success")
        };
        assert_eq!(derive("u", &r, Some(&stopping)).state, State::Stopping);
        // The new invocation's end is this run's.
        let st = derive(
            "u",
            &r,
            Some(&ended("failed", "exit-code", CLD_EXITED, "new")),
        );
        assert_eq!(st.state, State::Failed);
        // A stop asked for meanwhile reads as stopped.
        r.desired = Desired::Stopped;
        let p = ended("inactive", "success", CLD_EXITED, "old");
        assert_eq!(derive("u", &r, Some(&p)).state, State::Stopped);
    }

    #[test]
    fn a_requested_stop_reads_as_stopped_even_when_killed() {
        let r = rec(Desired::Stopped);
        let p = props("failed", "failed", "timeout");
        assert_eq!(derive("u", &r, Some(&p)).state, State::Stopped);
        assert_eq!(derive("u", &r, None).state, State::Stopped);
    }

    /// As systemd 252 reports it: the restart refused by the start limit
    /// leaves `Result=exit-code` and `NRestarts` equal to the crashes.
    #[test]
    fn start_limit_failure_names_the_reason_and_counts_each_crash_once() {
        let mut r = rec(Desired::Running);
        let mut p = props("failed", "failed", "exit-code");
        p.n_restarts = 3;
        p.exec_main_code = CLD_EXITED;
        p.exec_main_status = 3;
        let st = derive("u", &r, Some(&p));
        assert_eq!(st.state, State::Failed);
        assert_eq!(st.failure, Failure::StartLimit);
        assert!(
            st.failure_message.contains("exited with code 3"),
            "{}",
            st.failure_message
        );
        assert_eq!(crashes_in_run(&p, &r), 3);
        // Without restarts, one crash ends the run.
        r.restart_on_failure = false;
        p.n_restarts = 0;
        assert_eq!(crashes_in_run(&p, &r), 1);
        assert_eq!(derive("u", &r, Some(&p)).failure, Failure::ExitCode);
    }

    #[test]
    fn collected_unit_uses_the_remembered_outcome() {
        let mut r = rec(Desired::Running);
        r.last_outcome = Some(Outcome {
            result: "success".into(),
            exec_main_code: CLD_EXITED,
            exec_main_status: 0,
            oom: false,
            ended_us: 1,
            invocation_id: "a".into(),
            shutdown: false,
        });
        assert_eq!(derive("u", &r, None).state, State::Succeeded);
        r.last_outcome.as_mut().unwrap().oom = true;
        r.last_outcome.as_mut().unwrap().result = "signal".into();
        r.last_outcome.as_mut().unwrap().exec_main_code = CLD_KILLED;
        r.last_outcome.as_mut().unwrap().exec_main_status = 9;
        let st = derive("u", &r, None);
        assert_eq!((st.state, st.failure), (State::Failed, Failure::OomKill));
        assert_eq!(st.exit_signal, Some(9));
    }

    /// systemd counts SIGTERM, SIGHUP, SIGINT and SIGPIPE as a clean exit.
    /// A run the agent did not stop that dies of one was killed by someone
    /// else: failed, or disrupted when the board was shutting down; one the
    /// agent stopped is stopped, whatever the program did on the way out.
    #[test]
    fn a_clean_exit_signal_fleet_did_not_send_is_not_a_success() {
        for (sig, name) in [
            (15, "SIGTERM"),
            (1, "SIGHUP"),
            (2, "SIGINT"),
            (13, "SIGPIPE"),
        ] {
            let mut r = rec(Desired::Running);
            let mut p = props("inactive", "dead", "success");
            p.exec_main_code = CLD_KILLED;
            p.exec_main_status = sig;
            p.invocation_id = "a".into();
            let st = derive("u", &r, Some(&p));
            assert_eq!(
                (st.state, st.failure),
                (State::Failed, Failure::Signal),
                "{name}"
            );
            assert_eq!(st.exit_signal, Some(sig));
            assert_eq!(
                st.failure_message,
                format!("killed by {name}, which fleet did not send")
            );

            r.last_outcome = Some(Outcome {
                shutdown: true,
                ..outcome_of(&p, false, 5)
            });
            let st = derive("u", &r, Some(&p));
            assert_eq!(
                (st.state, st.failure),
                (State::Disrupted, Failure::Signal),
                "{name}"
            );
            assert_eq!(
                st.failure_message,
                format!("interrupted by the board's shutdown ({name})")
            );
            // Collected by systemd: the remembered outcome says the same.
            assert_eq!(derive("u", &r, None).state, State::Disrupted);

            // The agent's own stop, trapped and answered with exit 0 or not.
            r.desired = Desired::Stopped;
            assert_eq!(derive("u", &r, Some(&p)).state, State::Stopped);
        }
        // A program that traps the shutdown's SIGTERM and exits: cut short
        // all the same.
        let mut r = rec(Desired::Running);
        let mut p = props("inactive", "dead", "success");
        p.exec_main_code = CLD_EXITED;
        p.invocation_id = "b".into();
        r.last_outcome = Some(Outcome {
            shutdown: true,
            ..outcome_of(&p, false, 5)
        });
        let st = derive("u", &r, Some(&p));
        assert_eq!((st.state, st.failure), (State::Disrupted, Failure::Signal));
        assert_eq!(
            st.failure_message,
            "interrupted by the board's shutdown (exited with code 0)"
        );
        // An exit with code 0 is a success, and a signal that is not clean a
        // crash, as before.
        let r = rec(Desired::Running);
        let mut p = props("inactive", "dead", "success");
        p.exec_main_code = CLD_EXITED;
        assert_eq!(derive("u", &r, Some(&p)).state, State::Succeeded);
        let mut p = props("failed", "failed", "signal");
        p.exec_main_code = CLD_KILLED;
        p.exec_main_status = 9;
        let st = derive("u", &r, Some(&p));
        assert_eq!(
            (st.state, st.failure_message.as_str()),
            (State::Failed, "killed by SIGKILL")
        );
    }

    #[test]
    fn failure_messages_name_the_cause() {
        let o = |result: &str, code, status| Outcome {
            result: result.into(),
            exec_main_code: code,
            exec_main_status: status,
            oom: false,
            ended_us: 0,
            invocation_id: String::new(),
            shutdown: false,
        };
        assert_eq!(
            classify(&o("exit-code", CLD_EXITED, 3)).3,
            "exited with code 3"
        );
        assert_eq!(
            classify(&o("signal", CLD_KILLED, 15)).3,
            "killed by SIGTERM"
        );
        assert_eq!(classify(&o("timeout", CLD_KILLED, 9)).0, Failure::Timeout);
        assert_eq!(classify(&o("success", CLD_EXITED, 0)).0, Failure::None);
    }
}
