//! How a run ended, as systemd told `fleet-agent record-exit` through
//! `ExecStopPost=`: written next to the experiment's files, read when systemd
//! has already collected the unit (the agent was down, or the unit ended and
//! was unloaded before the agent looked).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::status::{CLD_DUMPED, CLD_EXITED, CLD_KILLED};
use crate::store::Outcome;

pub const FILE_NAME: &str = "last-exit.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// `$SERVICE_RESULT`: success, exit-code, signal, timeout, ...
    pub result: String,
    /// `$EXIT_CODE`: exited, killed, dumped.
    pub code: String,
    /// `$EXIT_STATUS`: a number, or a signal name without SIG.
    pub status: String,
    pub invocation_id: String,
    pub at_us: u64,
}

/// Signal numbers of the names systemd puts in `$EXIT_STATUS`.
fn signal_number(name: &str) -> Option<i32> {
    Some(match name.trim_start_matches("SIG") {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "ABRT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "SEGV" => libc::SIGSEGV,
        "PIPE" => libc::SIGPIPE,
        "TERM" => libc::SIGTERM,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => return None,
    })
}

impl ExitRecord {
    /// From the environment systemd gives `ExecStopPost=`.
    pub fn from_env(now_us: u64) -> ExitRecord {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        ExitRecord {
            result: var("SERVICE_RESULT"),
            code: var("EXIT_CODE"),
            status: var("EXIT_STATUS"),
            invocation_id: var("INVOCATION_ID"),
            at_us: now_us,
        }
    }

    pub fn outcome(&self, oom: bool) -> Outcome {
        let exec_main_code = match self.code.as_str() {
            "exited" => CLD_EXITED,
            "killed" => CLD_KILLED,
            "dumped" => CLD_DUMPED,
            _ => 0,
        };
        let exec_main_status = self
            .status
            .parse()
            .ok()
            .or_else(|| signal_number(&self.status))
            .unwrap_or(0);
        Outcome {
            result: self.result.clone(),
            exec_main_code,
            exec_main_status,
            oom,
            ended_us: self.at_us,
            invocation_id: self.invocation_id.clone(),
            shutdown: false,
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).expect("serializes"))?;
        std::fs::rename(&tmp, path)
    }

    pub fn read(path: &Path) -> Option<ExitRecord> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_words_become_an_outcome() {
        let r = ExitRecord {
            result: "signal".into(),
            code: "killed".into(),
            status: "KILL".into(),
            invocation_id: "abc".into(),
            at_us: 5,
        };
        let o = r.outcome(false);
        assert_eq!((o.exec_main_code, o.exec_main_status), (CLD_KILLED, 9));
        let e = ExitRecord {
            code: "exited".into(),
            status: "3".into(),
            result: "exit-code".into(),
            ..r
        };
        assert_eq!(e.outcome(false).exec_main_status, 3);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        e.write(&p).unwrap();
        assert_eq!(ExitRecord::read(&p), Some(e));
    }
}
