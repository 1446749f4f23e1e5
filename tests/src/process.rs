//! Faults for the fleet's daemons: a signal to a running agent or
//! controller (`kill -9`, a graceful SIGTERM, SIGSTOP/SIGCONT for a freeze
//! that looks like a partition), and a graceful stop. Shared by
//! [`crate::agent::AgentHandle`], [`crate::controller::ControllerHandle`]
//! and `fleet-dev`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Child;

use crate::poll::{wait_for, Check};

/// How long a daemon may take to exit after SIGTERM before it is killed,
/// as systemd does after `TimeoutStopSec=` (20 s for the agent's unit,
/// shorter here: an agent with an open `WatchNode` stream, such as the
/// controller's, does not finish a graceful stop by itself).
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The signals a fault sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `kill -9`: gone at once, no clean-up.
    Kill,
    /// A graceful stop.
    Term,
    /// Frozen: its connections stay open and nothing answers.
    Stop,
    /// Thawed after [`Signal::Stop`].
    Cont,
}

impl Signal {
    pub fn number(self) -> i32 {
        match self {
            Signal::Kill => libc::SIGKILL,
            Signal::Term => libc::SIGTERM,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
        }
    }

    /// Whether the process ends from it.
    pub fn ends(self) -> bool {
        matches!(self, Signal::Kill | Signal::Term)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Kill => "KILL",
            Signal::Term => "TERM",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        })
    }
}

impl FromStr for Signal {
    type Err = String;

    fn from_str(s: &str) -> Result<Signal, String> {
        let upper = s.trim().to_ascii_uppercase();
        Ok(match upper.strip_prefix("SIG").unwrap_or(&upper) {
            "KILL" | "9" => Signal::Kill,
            "TERM" | "15" => Signal::Term,
            "STOP" | "19" => Signal::Stop,
            "CONT" | "18" => Signal::Cont,
            _ => return Err(format!("{s:?} is not one of KILL, TERM, STOP, CONT")),
        })
    }
}

/// What the kernel says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Running or sleeping.
    Alive,
    /// Stopped by SIGSTOP (state `T`).
    Frozen,
    /// Gone, or a zombie.
    Gone,
}

/// The state of `pid` from `/proc/<pid>/stat`.
pub fn state(pid: u32) -> State {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return State::Gone;
    };
    let code = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    match code {
        Some("Z" | "X" | "x") | None => State::Gone,
        Some("T") => State::Frozen,
        Some(_) => State::Alive,
    }
}

/// The pid of `child` while it has not exited; an exited child is reaped
/// and forgotten.
pub fn running_pid(child: &mut Option<Child>) -> Option<u32> {
    let c = child.as_mut()?;
    match c.try_wait() {
        Ok(None) => c.id(),
        Ok(Some(_)) | Err(_) => {
            *child = None;
            None
        }
    }
}

/// How a graceful stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It was not running.
    NotRunning,
    /// It exited after SIGTERM.
    Exited,
    /// It did not exit within the grace and was killed.
    Killed,
}

/// Sends `signal` to `child` (`what` names it in errors) and waits for
/// its effect: gone after KILL; after TERM, a graceful [`stop`] (a frozen
/// process is thawed so it can obey; killed after [`STOP_GRACE`]); frozen
/// after STOP; running after CONT. A child that is gone is forgotten.
pub async fn send(child: &mut Option<Child>, signal: Signal, what: &str) -> anyhow::Result<()> {
    let Some(pid) = running_pid(child) else {
        bail!("{what} is not running");
    };
    if signal == Signal::Term {
        stop(child, STOP_GRACE).await?;
        return Ok(());
    }
    // SAFETY: kill(2) on our own, not yet reaped, child.
    if unsafe { libc::kill(pid as i32, signal.number()) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("signal {what}"));
    }
    match signal {
        Signal::Kill | Signal::Term => {
            let c = child.as_mut().expect("running");
            let timeout = Duration::from_secs(10);
            match tokio::time::timeout(timeout, c.wait()).await {
                Ok(status) => {
                    status.with_context(|| format!("wait for {what}"))?;
                    *child = None;
                }
                Err(_) => bail!(
                    "{what} (pid {pid}) did not exit within {timeout:?} of SIG{signal}; it still runs"
                ),
            }
        }
        Signal::Stop | Signal::Cont => {
            let want = if signal == Signal::Stop {
                State::Frozen
            } else {
                State::Alive
            };
            wait_for(
                format!("{what} (pid {pid}) to be {want:?} after SIG{signal}"),
                Duration::from_secs(10),
                || async move {
                    Ok(match state(pid) {
                        s if s == want => Check::Ready(()),
                        State::Gone => bail!("it exited"),
                        s => Check::not_yet(format!("{s:?}")),
                    })
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// A graceful stop: SIGTERM (and SIGCONT, should it be frozen), then
/// SIGKILL after `grace`. Nothing to do when it is not running.
pub async fn stop(child: &mut Option<Child>, grace: Duration) -> anyhow::Result<Stopped> {
    if running_pid(child).is_none() {
        *child = None;
        return Ok(Stopped::NotRunning);
    }
    let mut c = child.take().expect("running");
    let pid = c.id().context("running child without a pid")? as i32;
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        libc::kill(pid, libc::SIGCONT);
    }
    match tokio::time::timeout(grace, c.wait()).await {
        Ok(status) => {
            status?;
            Ok(Stopped::Exited)
        }
        Err(_) => {
            tracing::warn!(pid, "did not exit within {grace:?} of SIGTERM; killing it");
            c.start_kill()?;
            c.wait().await?;
            Ok(Stopped::Killed)
        }
    }
}

/// The last `lines` lines of a log file, for an error message.
pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        for (s, want) in [
            ("KILL", Signal::Kill),
            ("sigkill", Signal::Kill),
            ("9", Signal::Kill),
            ("TERM", Signal::Term),
            ("STOP", Signal::Stop),
            ("SIGCONT", Signal::Cont),
        ] {
            assert_eq!(s.parse::<Signal>(), Ok(want), "{s}");
        }
        assert!("HUP".parse::<Signal>().is_err());
        assert_eq!(Signal::Stop.to_string(), "STOP");
    }

    #[tokio::test]
    async fn stop_cont_and_kill_a_child() {
        let mut child = Some(
            tokio::process::Command::new("sleep")
                .arg("60")
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
        let pid = running_pid(&mut child).unwrap();
        send(&mut child, Signal::Stop, "sleep").await.unwrap();
        assert_eq!(state(pid), State::Frozen);
        send(&mut child, Signal::Cont, "sleep").await.unwrap();
        assert_eq!(state(pid), State::Alive);
        send(&mut child, Signal::Stop, "sleep").await.unwrap();
        // A frozen process still ends on TERM: it is thawed to obey.
        send(&mut child, Signal::Term, "sleep").await.unwrap();
        assert!(child.is_none());
        assert_eq!(state(pid), State::Gone);
        let e = send(&mut child, Signal::Kill, "sleep").await.unwrap_err();
        assert!(e.to_string().contains("not running"), "{e}");
        assert_eq!(
            stop(&mut child, STOP_GRACE).await.unwrap(),
            Stopped::NotRunning
        );
    }
}
