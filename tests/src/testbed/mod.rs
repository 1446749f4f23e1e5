//! Simulated Jetson boards on one machine, each a real, private systemd.
//!
//! A [`Testbed`] is one run: a directory (kept when something failed) and a
//! cgroup subtree holding its [`Board`]s. A board is a `systemd --user` manager
//! with its own bus, journald, mount and UTS namespaces and cgroups, with the
//! shipped `brain-experiment@.service` and `brain-experiment.target` installed
//! and enabled. Processes are put into a board with [`Board::command`]:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use fleet_testbed::testbed::Testbed;
//! let mut bed = Testbed::new("demo").await;
//! let board = bed.add_board("jetson-01").await?;
//! let agent = board
//!     .command("/path/to/fleet-agent")
//!     .args(["--systemd", "user"])
//!     .env("FLEET_LOG", "debug")
//!     .kill_on_drop(true)
//!     .spawn()?;
//! // … talk to it; the board's bus is board.bus_address() …
//! drop(agent);
//! bed.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! This needs root and an installed (not necessarily running) systemd. Where
//! the machine cannot run it, the build marks the end-to-end tests ignored
//! (tests/build.rs) unless `FLEET_REQUIRE_SYSTEMD=1` (CI sets it), and
//! [`Testbed::new`] fails a test that runs anyway.
//!
//! # What was learned building it (systemd 252, cgroup v1 hybrid, as root)
//!
//! - **Bus.** A user manager connects to its API bus only once its own
//!   `dbus.socket` and `dbus.service` units run (`manager_dbus_is_running()`),
//!   so a dbus-daemon started next to it never sees `org.freedesktop.systemd1`
//!   appear. Each board's bus is therefore started by its manager, as in a
//!   login session, from units the testbed writes to
//!   `$XDG_CONFIG_HOME/systemd/user.control` (highest priority); the broker's
//!   output is in the board's journal. The bus restarts with a reboot.
//! - **Host user units.** The host's `*.wants/` links (gpg-agent sockets,
//!   pipewire, dbus-user-session's bus) would start on every board; the testbed
//!   masks each of them in the same directory.
//! - **Logs of the manager.** With no log target given, a user manager
//!   started by hand logged nowhere to be found, and `console` means
//!   `/dev/console`, not stderr: the manager runs with `--log-target=journal`,
//!   so its messages are in the board's journal next to the units'.
//!   `FLEET_TESTBED_SYSTEMD_LOG_LEVEL=debug` raises its level.
//! - **/run/systemd/inaccessible.** PID 1 creates these nodes at boot and
//!   managers over-mount them to hide paths. Without them any unit with
//!   `ProtectKernelLogs=` (and similar) fails with 226/NAMESPACE: "Failed to
//!   mount /run/systemd/inaccessible/sock to …/dev/kmsg". The testbed creates
//!   them in the board's `/run/systemd` tmpfs.
//! - **cgroups.** A root user manager takes its cgroup root from where it runs
//!   in the systemd hierarchy (cgroup2 at `/sys/fs/cgroup/unified` in hybrid
//!   mode) minus `/init.scope`, and uses every v1 controller whose directory
//!   at that same path it can write. So the testbed creates
//!   `fleet-testbed/<run>/<board>` in name=systemd, cgroup2, memory, cpu,
//!   cpuacct, pids, devices and blkio, and starts the manager in `init.scope`
//!   below it: MemoryMax=, CPUQuota=, TasksMax= and DeviceAllow= are then
//!   enforced for its units, with no delegation needed (it logs "Controller
//!   'memory' supported: yes"). cpuset is left out: joining a fresh cpuset
//!   cgroup fails until its CPUs are set.
//! - **CPU accounting.** This machine mounts cpu and cpuacct as two
//!   hierarchies; systemd assumes they are joined ("cpu,cpuacct") and never
//!   creates a unit's cpuacct cgroup, so `CPUUsageNSec` reads `[not set]`
//!   here even with CPUAccounting=yes. A unit's CPU time is still in
//!   `/sys/fs/cgroup/unified/<ControlGroup>/cpu.stat` (`usage_usec`). Boards
//!   (joined cpu,cpuacct on JetPack 5, cgroup2 on JetPack 6) report it.
//! - **OOM on cgroup v1.** With MemoryMax=64M, a unit whose main process
//!   allocates 256 MB ends with `Result=signal`, `ExecMainCode=2` (killed),
//!   `ExecMainStatus=9`; behind `sh -c` with a pipe it is `Result=exit-code`,
//!   `ExecMainStatus=137`. Never `Result=oom-kill`. `/dev/kmsg` has
//!   `oom-kill:constraint=CONSTRAINT_MEMCG,…,oom_memcg=/fleet-testbed/<run>/
//!   <board>/app.slice/app-brain\x2dexperiment.slice/brain-experiment@<id>.service,…`.
//!   A user manager puts instances in `app.slice/app-<template>.slice`; a
//!   system manager in `system-<template>.slice`. /dev/kmsg itself writes the
//!   backslash of `\x2d` as `\x5c`, so match on the instance's name.
//! - **Finished instances are unloaded.** An instance that exits with
//!   success goes inactive and is garbage-collected at once
//!   (CollectMode=inactive): `systemctl show` then reports defaults
//!   (`InvocationID=`, `ExecMainStatus=0`). Read results from the unit's
//!   signals as it ends, or hold a reference (`Ref()` on the unit's bus
//!   object); a failed instance stays loaded until `reset-failed`.
//! - **journald.** `systemd-journald` runs fine by hand inside the namespace:
//!   it creates its sockets in `/run/systemd/journal/` and its files in
//!   `/run/log/journal/<machine-id>/`. A drop-in in
//!   `/run/systemd/journald.conf.d/` turns off reading `/dev/kmsg` (every board
//!   would copy the machine's kernel log) and rate limiting. Units' stdout
//!   carries `SYSLOG_IDENTIFIER` but no `_SYSTEMD_USER_UNIT`.
//! - **Run directory.** Not under `/tmp` or `/var/tmp`: the template's
//!   `PrivateTmp=yes` hides both from experiments, and files the agent or a
//!   test prepares for an experiment live in the board's directory. The default
//!   is `/var/lib/fleet-testbed` (`FLEET_TESTBED_DIR` overrides it).
//! - **Sandboxing.** Everything in the template works under the root user
//!   manager: NoNewPrivileges, ProtectSystem=full, PrivateTmp, ProtectKernel*,
//!   ProtectControlGroups, ProtectClock, ProtectHostname, RestrictNamespaces,
//!   RestrictSUIDSGID, RestrictRealtime, LockPersonality,
//!   SystemCallArchitectures and DevicePolicy=closed with DeviceAllow= (device
//!   nodes a board lacks are skipped with "Couldn't stat device").
//! - **Reboot.** SIGTERM makes a user manager start exit.target, which stops
//!   every unit (KillSignal, TimeoutStopSec) before it exits; a new manager
//!   on the same directories starts what `default.target` wants.
//! - **Teardown.** A manager that exits removes the empty cgroups below its
//!   root, so the testbed recreates its own sub-cgroups before each use. All
//!   board processes are in the board's subtree of the cgroup2 hierarchy, so
//!   `cgroup.kill` there ends a board at once; the namespaces vanish with the
//!   last process and the testbed's last handle on them. Board processes run
//!   in their own process groups, so a Ctrl-C reaches only the test; a run
//!   that dies without tearing down (SIGKILL, Ctrl-C) leaves its boards
//!   running, and the next [`Testbed::new`] on the machine reaps them (the
//!   run's cgroup name carries its process id and start time).

mod board;
mod cgroup;
mod namespace;
mod units;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};

pub use board::{Board, JournalEntry, BOARD_PATH};
pub use cgroup::{Layout, Mode};
pub use units::{TARGET, TARGET_NAME, TEMPLATE, TEMPLATE_NAME};

use board::Tools;

/// When set to 1, a machine that cannot run the testbed fails the tests.
pub const REQUIRE_VAR: &str = "FLEET_REQUIRE_SYSTEMD";
/// Where run directories go; default [`DEFAULT_BASE_DIR`].
pub const BASE_DIR_VAR: &str = "FLEET_TESTBED_DIR";
pub const DEFAULT_BASE_DIR: &str = "/var/lib/fleet-testbed";

/// Distinguishes the testbeds of one process (tests run in parallel threads).
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// Why this machine cannot run the testbed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(String);

/// One run: boards, their directory and their cgroups.
pub struct Testbed {
    name: String,
    /// The run's cgroup, relative to each hierarchy's root.
    cgroup: String,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    layout: Arc<Layout>,
    tools: Arc<Tools>,
    boards: Vec<Board>,
    finished: bool,
}

impl std::fmt::Debug for Testbed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testbed")
            .field("name", &self.name)
            .field("dir", &self.path)
            .field("boards", &self.boards)
            .finish()
    }
}

impl Testbed {
    /// A testbed for a test. Panics when this machine cannot run systemd
    /// boards, and on any other error: where the build saw that the machine
    /// cannot run them, the tests are marked ignored (tests/build.rs), so a
    /// test that gets here and cannot run must fail, never pass unrun.
    pub async fn new(name: &str) -> Testbed {
        if let Err(why) = Self::preflight().await {
            panic!(
                "this machine cannot run the testbed's systemd boards: {why}. \
                 Fix that and run again; or set FLEET_SKIP_E2E=1 to have cargo \
                 report the end-to-end tests as ignored."
            );
        }
        match Self::try_new(name).await {
            Ok(bed) => bed,
            Err(e) => panic!("cannot set up testbed {name}: {e:#}"),
        }
    }

    /// A testbed, or why not. For programs that are not tests (fleet-dev).
    pub async fn try_new(name: &str) -> anyhow::Result<Testbed> {
        Self::preflight().await?;
        let layout = Arc::new(Layout::detect()?);
        let tools = Arc::new(find_tools()?);
        reap_stale_runs(&layout);

        let short = short_name(name);
        let base = std::env::var_os(BASE_DIR_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE_DIR));
        fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{short}-"))
            .tempdir_in(&base)
            .with_context(|| format!("create a run directory in {}", base.display()))?;
        let path = dir.path().to_owned();

        let run = RunId {
            pid: std::process::id(),
            start_time: process_start_time(std::process::id())
                .context("read this process's start time")?,
            seq: SEQUENCE.fetch_add(1, Ordering::Relaxed),
            name: short,
        };
        let cgroup = format!("{}/{run}", cgroup::ROOT);
        layout.create(&cgroup)?;
        eprintln!("testbed {name}: run directory {}", path.display());
        Ok(Testbed {
            name: name.to_owned(),
            cgroup,
            dir: Some(dir),
            path,
            layout,
            tools,
            boards: Vec::new(),
            finished: false,
        })
    }

    /// Checks that this machine can run boards: root, systemd's binaries,
    /// writable cgroups, mount namespaces, a machine id to mount over.
    pub async fn preflight() -> Result<(), Unavailable> {
        let fail = |what: String| Err(Unavailable(what));
        // SAFETY: geteuid(2) cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return fail("it needs root (it creates cgroups and mount namespaces)".into());
        }
        if let Err(e) = find_tools() {
            return fail(format!("{e:#}"));
        }
        if !Path::new("/etc/machine-id").is_file() {
            return fail(
                "/etc/machine-id is missing; each board mounts its own id over it \
                 (create it with systemd-machine-id-setup)"
                    .into(),
            );
        }
        let layout = match Layout::detect() {
            Ok(layout) => layout,
            Err(e) => return fail(format!("{e:#}")),
        };
        if let Err(e) = layout.probe() {
            return fail(format!("cannot manage cgroups: {e:#}"));
        }
        if let Err(e) = namespace::probe().await {
            return fail(format!("{e:#}"));
        }
        Ok(())
    }

    /// The name given to [`Testbed::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The run directory: one subdirectory per board; free for the test's
    /// own files (certificates, configs).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The run's cgroup, relative to each hierarchy's root
    /// (`fleet-testbed/<pid>-<start time>-<seq>-<name>`): what a program that
    /// outlives a killed owner (fleet-dev's `down`) needs to clean up.
    pub fn cgroup(&self) -> &str {
        &self.cgroup
    }

    /// The boards, in the order they were added.
    pub fn boards(&self) -> &[Board] {
        &self.boards
    }

    /// The board called `name`.
    pub fn board(&self, name: &str) -> Option<&Board> {
        self.boards.iter().find(|b| b.name() == name)
    }

    /// Adds a board and boots it. `name` is also its hostname: lowercase
    /// letters, digits and '-', at most 32.
    pub async fn add_board(&mut self, name: &str) -> anyhow::Result<Board> {
        let board = self.prepare_board(name)?;
        board
            .boot()
            .await
            .with_context(|| format!("boot board {name} (logs in {})", board.dir().display()))?;
        Ok(board)
    }

    /// Adds several boards and boots them at the same time.
    pub async fn add_boards(&mut self, names: &[&str]) -> anyhow::Result<Vec<Board>> {
        let boards = names
            .iter()
            .map(|name| self.prepare_board(name))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut boots = tokio::task::JoinSet::new();
        for board in &boards {
            let board = board.clone();
            boots.spawn(async move {
                let result = board.boot().await;
                (board, result)
            });
        }
        while let Some(joined) = boots.join_next().await {
            let (board, result) = joined.context("boot task panicked")?;
            result.with_context(|| {
                format!(
                    "boot board {} (logs in {})",
                    board.name(),
                    board.dir().display()
                )
            })?;
        }
        Ok(boards)
    }

    fn prepare_board(&mut self, name: &str) -> anyhow::Result<Board> {
        if !valid_board_name(name) {
            bail!(
                "board name {name:?} is invalid: use lowercase letters, digits and '-' \
                 (at most 32, starting with a letter or digit)"
            );
        }
        if self.board(name).is_some() {
            bail!("testbed {} already has a board {name}", self.name);
        }
        let board = Board::prepare(
            name,
            self.path.join(name),
            format!("{}/{name}", self.cgroup),
            Arc::clone(&self.layout),
            Arc::clone(&self.tools),
        )?;
        // Registered before it boots, so a board that fails half-way is
        // still torn down.
        self.boards.push(board.clone());
        Ok(board)
    }

    /// Ends every board and checks that nothing is left: no process, no
    /// cgroup. The run directory is removed when all went well and kept (its
    /// path is printed) when not.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.finished = true;
        let mut errors = Vec::new();
        let mut teardowns = tokio::task::JoinSet::new();
        for board in self.boards.clone() {
            teardowns.spawn(async move {
                let result = board.teardown().await;
                (board, result)
            });
        }
        while let Some(joined) = teardowns.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((board, Err(e))) => errors.push(format!("board {}: {e:#}", board.name())),
                Err(e) => errors.push(format!("teardown task: {e}")),
            }
        }
        if let Err(e) = self.remove_run_cgroup() {
            errors.push(format!("{e:#}"));
        }
        if errors.is_empty() {
            if let Some(dir) = self.dir.take() {
                dir.close()
                    .with_context(|| format!("remove {}", self.path.display()))?;
            }
            Ok(())
        } else {
            let kept = self.keep_dir();
            bail!(
                "testbed {} did not shut down cleanly (kept {}): {}",
                self.name,
                kept.display(),
                errors.join("; ")
            )
        }
    }

    fn remove_run_cgroup(&self) -> anyhow::Result<()> {
        let left = self.layout.pids(&self.cgroup).unwrap_or_default();
        if !left.is_empty() {
            bail!("processes left in cgroup {}: {left:?}", self.cgroup);
        }
        self.layout.remove(&self.cgroup)?;
        self.layout.remove_root_if_unused();
        Ok(())
    }

    fn keep_dir(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        eprintln!(
            "testbed {}: kept {} for inspection: each board's logs/ (manager, journald) and \
             journal (journalctl -D <board>/run-log/journal/<machine-id>)",
            self.name,
            self.path.display()
        );
        self.path.clone()
    }
}

impl Drop for Testbed {
    /// A testbed that was not shut down (a failed test, usually) is ended
    /// hard: every process killed, cgroups removed, directory kept.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        for board in &self.boards {
            if let Err(e) = board.teardown_blocking() {
                eprintln!("testbed {}: board {}: {e:#}", self.name, board.name());
            }
        }
        if let Err(e) = self.remove_run_cgroup() {
            eprintln!("testbed {}: {e:#}", self.name);
        }
        self.keep_dir();
    }
}

/// Names a run's cgroup so a later run can tell whether its owner still
/// lives: `<pid>-<start time>-<sequence>-<name>`.
#[derive(Debug, PartialEq, Eq)]
struct RunId {
    pid: u32,
    start_time: u64,
    seq: u32,
    name: String,
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}-{}-{}",
            self.pid, self.start_time, self.seq, self.name
        )
    }
}

impl std::str::FromStr for RunId {
    type Err = ();

    fn from_str(s: &str) -> Result<RunId, ()> {
        let mut parts = s.splitn(4, '-');
        let mut next = || parts.next().ok_or(());
        Ok(RunId {
            pid: next()?.parse().map_err(drop)?,
            start_time: next()?.parse().map_err(drop)?,
            seq: next()?.parse().map_err(drop)?,
            name: next()?.to_owned(),
        })
    }
}

impl RunId {
    fn owner_alive(&self) -> bool {
        process_start_time(self.pid).is_ok_and(|t| t == self.start_time)
    }
}

/// Kills and removes what earlier runs left behind when their process died
/// without tearing down (SIGKILL, a Ctrl-C, a crash). Runs of live processes,
/// and cgroups the testbed did not name, are left alone.
fn reap_stale_runs(layout: &Layout) {
    for run in layout.runs() {
        let Ok(id) = run.parse::<RunId>() else {
            continue;
        };
        if id.owner_alive() {
            continue;
        }
        let rel = format!("{}/{run}", cgroup::ROOT);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !layout.is_empty(&rel) && std::time::Instant::now() < deadline {
            let _ = layout.kill(&rel);
            std::thread::sleep(Duration::from_millis(20));
        }
        match layout.remove(&rel) {
            Ok(()) => eprintln!(
                "testbed: removed the left-overs of run {run} (process {} is gone)",
                id.pid
            ),
            Err(e) => eprintln!("testbed: cannot remove the left-overs of run {run}: {e:#}"),
        }
    }
}

/// Start time of a process in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`): with the pid, it names a process for good.
fn process_start_time(pid: u32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces; fields after it do not.
    let after_comm = stat.rsplit_once(')').context("malformed stat")?.1;
    let field = after_comm
        .split_whitespace()
        .nth(19)
        .context("stat has no start time")?;
    Ok(field.parse()?)
}

fn find_tools() -> anyhow::Result<Tools> {
    let libexec = |name: &str| -> anyhow::Result<PathBuf> {
        ["/usr/lib/systemd", "/lib/systemd"]
            .iter()
            .map(|dir| Path::new(dir).join(name))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{name} is not installed (looked in /usr/lib/systemd, /lib/systemd); \
                     install it with: apt-get install systemd"
                )
            })
    };
    // Each tool, with the Debian package that has it.
    for (tool, package) in [
        ("dbus-daemon", "dbus"),
        ("systemctl", "systemd"),
        ("journalctl", "systemd"),
        ("busctl", "systemd"),
        ("sleep", "coreutils"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
    ] {
        let found = BOARD_PATH
            .split(':')
            .any(|dir| Path::new(dir).join(tool).is_file());
        if !found {
            bail!("{tool} is not installed (looked in {BOARD_PATH}); install it with: apt-get install {package}");
        }
    }
    Ok(Tools {
        systemd: libexec("systemd")?,
        journald: libexec("systemd-journald")?,
    })
}

fn valid_board_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 32
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// A test's name cut to what fits in directory and cgroup names.
fn short_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(20)
        .collect();
    if cleaned.is_empty() {
        "run".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_round_trip_and_keep_dashes_in_names() {
        let id = RunId {
            pid: 4242,
            start_time: 987654,
            seq: 3,
            name: "two-boards".into(),
        };
        assert_eq!(id.to_string(), "4242-987654-3-two-boards");
        assert_eq!("4242-987654-3-two-boards".parse::<RunId>(), Ok(id));
        assert!("me1".parse::<RunId>().is_err());
        assert!("12-x-1-name".parse::<RunId>().is_err());
    }

    #[test]
    fn this_process_is_alive_and_a_stale_start_time_is_not() {
        let pid = std::process::id();
        let start_time = process_start_time(pid).unwrap();
        let alive = RunId {
            pid,
            start_time,
            seq: 0,
            name: "x".into(),
        };
        assert!(alive.owner_alive());
        let reused = RunId {
            start_time: start_time + 1,
            ..alive
        };
        assert!(!reused.owner_alive());
    }

    #[test]
    fn board_names_are_hostnames() {
        for ok in ["jetson-01", "a", "watch-b", "0rin"] {
            assert!(valid_board_name(ok), "{ok}");
        }
        for bad in ["", "-x", "Jetson", "a_b", "a.b", &"x".repeat(33)] {
            assert!(!valid_board_name(bad), "{bad}");
        }
    }

    #[test]
    fn short_names_are_safe_in_paths() {
        assert_eq!(short_name("two boards/at once!"), "two-boards-at-once-");
        assert_eq!(short_name(""), "run");
        assert_eq!(short_name(&"y".repeat(40)).len(), 20);
    }
}
