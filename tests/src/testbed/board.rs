//! One simulated Jetson: a private `systemd --user` manager with its own bus,
//! journald, mount and UTS namespaces and cgroup subtree.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::cgroup::Layout;
use super::namespace::{self, Entry, Namespaces};
use super::units;
use crate::poll::{wait_for, Check};

/// PATH of every board process: a board's, not this machine's user's.
pub const BOARD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables of the test's environment that board commands inherit.
const PASSED_THROUGH: &[&str] = &["RUST_LOG", "RUST_BACKTRACE", "FLEET_LOG"];

/// Log level of the boards' managers; `debug` helps when a unit misbehaves.
const LOG_LEVEL_VAR: &str = "FLEET_TESTBED_SYSTEMD_LOG_LEVEL";

/// How long a board may take to boot. A deadline, not a wait: a board is
/// ready in well under a second, but a machine busy building and running
/// other suites in parallel has been seen to take tens of seconds.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a reboot waits for units to stop. A unit's own stop timeout
/// (TimeoutStopSec=30s in the template) decides when systemd kills it; this
/// only bounds a stuck manager.
const REBOOT_GRACE: Duration = Duration::from_secs(120);
/// Teardown is not a test of graceful stops: it waits this long, then kills.
const TEARDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long killed processes may take to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

// Sub-cgroups of a board's cgroup. The manager's own cgroup root is the
// board's cgroup (systemd strips "/init.scope" from where it runs), so its
// units land in <board>/app.slice/…; the testbed's processes sit beside them.
const MANAGER_CGROUP: &str = "init.scope";
/// The namespace holder and journald: they outlive reboots.
const INFRA_CGROUP: &str = "testbed";
/// Processes started through [`Board::command`], such as the agent.
const COMMANDS_CGROUP: &str = "commands";

const JOURNALD_CONF: &str = "\
# Written by the fleet testbed: a board's journal lives in its own /run/log.
[Journal]
Storage=volatile
RuntimeMaxUse=64M
# The kernel log belongs to the machine, not to one board.
ReadKMsg=no
# Tests log in bursts; losing lines would make them flaky.
RateLimitBurst=0
ForwardToSyslog=no
ForwardToWall=no
ForwardToConsole=no
";

/// The binaries a board runs that are not on PATH.
#[derive(Debug)]
pub(crate) struct Tools {
    pub systemd: PathBuf,
    pub journald: PathBuf,
}

/// A simulated board. Cheap to clone; every clone is the same board.
#[derive(Clone)]
pub struct Board {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    dir: PathBuf,
    /// Relative to a hierarchy's root: `fleet-testbed/<run>/<board>`.
    cgroup: String,
    layout: Arc<Layout>,
    tools: Arc<Tools>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    namespaces: Option<Namespaces>,
    holder: Option<Child>,
    journald: Option<Child>,
    manager: Option<Child>,
    torn_down: bool,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board")
            .field("name", &self.inner.name)
            .field("dir", &self.inner.dir)
            .field("cgroup", &self.inner.cgroup)
            .finish()
    }
}

/// One journal entry, as `journalctl -o json` prints it.
#[derive(Debug, Clone)]
pub struct JournalEntry {
    /// `MESSAGE`, decoded lossily when journald stored it as bytes.
    pub message: String,
    /// Every field of the entry.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl JournalEntry {
    /// A field as text, if present.
    pub fn field(&self, name: &str) -> Option<String> {
        self.fields.get(name).map(json_text)
    }
}

impl Board {
    /// A board with its directories and unit files in place, not yet booted.
    pub(crate) fn prepare(
        name: &str,
        dir: PathBuf,
        cgroup: String,
        layout: Arc<Layout>,
        tools: Arc<Tools>,
    ) -> anyhow::Result<Board> {
        let board = Board {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                dir,
                cgroup,
                layout,
                tools,
                state: Mutex::new(State::default()),
            }),
        };
        for dir in [
            board.dir().to_owned(),
            board.home_dir(),
            board.logs_dir(),
            board.run_log_dir(),
            board.unit_dir(),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
        board.create_runtime_dir()?;
        fs::write(board.machine_id_file(), format!("{}\n", new_machine_id()?))?;
        units::install_shipped(&board.unit_dir())?;
        units::install_plumbing(&board.config_dir().join("systemd/user.control"))?;

        // Unix socket paths are limited to 107 bytes; the manager's private
        // socket is the longest one a board has.
        let private = board.runtime_dir().join("systemd/private");
        let len = private.as_os_str().len();
        if len > 107 {
            bail!(
                "board {name}: socket path {} is {len} bytes, more than a unix socket takes (107): \
                 use a shorter board or testbed name, or a shorter FLEET_TESTBED_DIR",
                private.display()
            );
        }
        Ok(board)
    }

    /// Boots the board: namespaces, journald, then systemd; returns when the
    /// manager has finished starting up.
    pub(crate) async fn boot(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.start_holder().await?;
        self.start_journald().await?;
        self.start_manager()?;
        self.wait_ready().await?;
        tracing::info!(board = %self.name(), elapsed = ?started.elapsed(), "board booted");
        Ok(())
    }

    /// The board's name, also its hostname.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The board's own directory; free for the board's state (the agent's
    /// store, a copy of sysfs, …). The testbed keeps its files in the
    /// subdirectories named by the other accessors.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Persistent user unit directory (`$XDG_CONFIG_HOME/systemd/user`), the
    /// board's `/etc/systemd/system`: the shipped template and target are
    /// installed here, and autostart drop-ins and enablement links go here.
    pub fn unit_dir(&self) -> PathBuf {
        self.config_dir().join("systemd/user")
    }

    /// Runtime user unit directory (`$XDG_RUNTIME_DIR/systemd/user`), the
    /// board's `/run/systemd/system`: wiped by [`Board::reboot`].
    pub fn runtime_unit_dir(&self) -> PathBuf {
        self.runtime_dir().join("systemd/user")
    }

    /// `$XDG_RUNTIME_DIR`, wiped by [`Board::reboot`].
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir().join("run")
    }

    /// `$XDG_CONFIG_HOME`.
    pub fn config_dir(&self) -> PathBuf {
        self.dir().join("config")
    }

    /// `$HOME`.
    pub fn home_dir(&self) -> PathBuf {
        self.dir().join("home")
    }

    /// Output of the board's processes that does not go to its journal: the
    /// manager's and journald's stdout and stderr.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir().join("logs")
    }

    /// What the board sees as `/run/log`: its journal is under `journal/`.
    /// Readable after a failed run with `journalctl -D <this>/journal/<id>`.
    pub fn run_log_dir(&self) -> PathBuf {
        self.dir().join("run-log")
    }

    /// The board's machine id (bind-mounted over `/etc/machine-id`).
    pub fn machine_id(&self) -> anyhow::Result<String> {
        Ok(fs::read_to_string(self.machine_id_file())?
            .trim()
            .to_owned())
    }

    fn machine_id_file(&self) -> PathBuf {
        self.dir().join("machine-id")
    }

    /// The address of the board's bus, on which its systemd is
    /// `org.freedesktop.systemd1` (what the agent's `--systemd user` uses).
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.runtime_dir().join("bus").display())
    }

    /// The board's cgroup as systemd prints it (`ControlGroup=` of its units
    /// starts with it): `/fleet-testbed/<run>/<board>`.
    pub fn cgroup_path(&self) -> String {
        format!("/{}", self.inner.cgroup)
    }

    /// The board's cgroup directory in every hierarchy it uses.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.inner.layout.dirs(&self.inner.cgroup)
    }

    /// Inode number of the board's mount namespace (`mnt:[<inode>]`), while
    /// the board runs.
    pub fn mount_namespace(&self) -> Option<u64> {
        self.state()
            .namespaces
            .as_ref()
            .and_then(|ns| ns.mount_inode().ok())
    }

    /// PID of the board's `systemd --user`, while it runs.
    pub fn manager_pid(&self) -> Option<u32> {
        self.state().manager.as_ref().and_then(Child::id)
    }

    /// The environment every process of the board gets.
    pub fn environment(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("PATH", BOARD_PATH.into()),
            ("LANG", "C.UTF-8".into()),
            ("USER", "root".into()),
            ("LOGNAME", "root".into()),
            ("SHELL", "/bin/sh".into()),
            ("HOME", self.home_dir().into()),
            ("XDG_RUNTIME_DIR", self.runtime_dir().into()),
            ("XDG_CONFIG_HOME", self.config_dir().into()),
            ("XDG_DATA_HOME", self.dir().join("share").into()),
            ("DBUS_SESSION_BUS_ADDRESS", self.bus_address().into()),
        ]
    }

    /// A command that runs `program` inside the board: in its mount and UTS
    /// namespaces, in its cgroup (so teardown and reboot end it), with the
    /// board's environment (a clean one plus `RUST_LOG`, `RUST_BACKTRACE` and
    /// `FLEET_LOG` from the test's) and the board's directory as working
    /// directory. Add arguments, variables and stdio as with any command.
    ///
    /// Spawning fails with ESRCH once the board has been torn down.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .envs(self.environment())
            .env("SYSTEMD_PAGER", "cat")
            .env("SYSTEMD_COLORS", "0")
            .current_dir(self.dir());
        for var in PASSED_THROUGH {
            if let Some(value) = std::env::var_os(var) {
                cmd.env(var, value);
            }
        }
        self.entry(COMMANDS_CGROUP).install(&mut cmd);
        cmd
    }

    /// Runs `systemctl --user <args>` in the board; its stdout, or an error
    /// with its stderr.
    pub async fn systemctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command("systemctl")
            .arg("--user")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .context("run systemctl")?;
        if !out.status.success() {
            bail!(
                "systemctl --user {} on board {} failed ({}): {}",
                args.join(" "),
                self.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Properties of a unit, as `systemctl --user show -p …` reports them.
    pub async fn unit_properties(
        &self,
        unit: &str,
        properties: &[&str],
    ) -> anyhow::Result<BTreeMap<String, String>> {
        let mut args = vec!["show", unit];
        for p in properties {
            args.extend(["-p", p]);
        }
        let out = self.systemctl(&args).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// One property of a unit.
    pub async fn unit_property(&self, unit: &str, property: &str) -> anyhow::Result<String> {
        self.unit_properties(unit, &[property])
            .await?
            .remove(property)
            .ok_or_else(|| anyhow!("systemctl show {unit} printed no {property}"))
    }

    /// The board's journal entries matching every `FIELD=value` in `matches`
    /// (journalctl's match syntax), oldest first.
    pub async fn journal(&self, matches: &[&str]) -> anyhow::Result<Vec<JournalEntry>> {
        let out = self
            .command("journalctl")
            .args(["--no-pager", "--quiet", "--output=json"])
            .args(matches)
            .stdin(Stdio::null())
            .output()
            .await
            .context("run journalctl")?;
        if !out.status.success() {
            bail!(
                "journalctl {} on board {} failed ({}): {}",
                matches.join(" "),
                self.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|line| {
                let fields: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(line).context("parse journalctl output")?;
                let message = fields.get("MESSAGE").map(json_text).unwrap_or_default();
                Ok(JournalEntry { message, fields })
            })
            .collect()
    }

    /// The messages logged under `SYSLOG_IDENTIFIER=<identifier>` (the
    /// template sets `brain-experiment-<id>` for an instance), oldest first.
    pub async fn journal_lines(&self, identifier: &str) -> anyhow::Result<Vec<String>> {
        let entries = self
            .journal(&[&format!("SYSLOG_IDENTIFIER={identifier}")])
            .await?;
        Ok(entries.into_iter().map(|e| e.message).collect())
    }

    /// Waits until the board's systemd has finished starting up and answers
    /// on the board's bus (`SystemState` is `running`, or `degraded` when a
    /// unit failed during boot).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let what = format!("the systemd of board {} to finish starting up", self.name());
        wait_for(what, BOOT_TIMEOUT, || async {
            if let Some(status) = self.manager_exit()? {
                bail!(
                    "systemd --user exited ({status}); see {} and the board's journal",
                    self.logs_dir().join("manager.log").display()
                );
            }
            let out = self
                .command("busctl")
                .args([
                    "--user",
                    "get-property",
                    "org.freedesktop.systemd1",
                    "/org/freedesktop/systemd1",
                    "org.freedesktop.systemd1.Manager",
                    "SystemState",
                ])
                .stdin(Stdio::null())
                .output()
                .await
                .context("run busctl")?;
            if !out.status.success() {
                return Ok(Check::not_yet(format!(
                    "busctl: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            // busctl prints a string property as: s "running"
            let stdout = String::from_utf8_lossy(&out.stdout);
            let state = stdout.trim().trim_start_matches("s ").trim_matches('"');
            Ok(match state {
                "running" | "degraded" => Check::Ready(()),
                other => Check::not_yet(format!("SystemState={other}")),
            })
        })
        .await?;
        Ok(())
    }

    /// Reboots the board as a shutdown would: every process of the board but
    /// its journald gets SIGTERM at once, so systemd stops each unit with its
    /// KillSignal and TimeoutStopSec and then exits, and an agent started
    /// through [`Board::command`] ends as well (start it again afterwards, as
    /// systemd would on a real board). What is still running when systemd has
    /// exited is killed, the runtime directory is wiped like a tmpfs, and a
    /// new manager starts on the same directories: enabled units wanted by
    /// brain-experiment.target start again. The journal and the namespaces
    /// survive, like a board's persistent journal.
    pub async fn reboot(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        self.ensure_running()?;
        self.stop_manager(REBOOT_GRACE).await?;
        fs::remove_dir_all(self.runtime_dir())
            .with_context(|| format!("wipe {}", self.runtime_dir().display()))?;
        self.create_runtime_dir()?;
        self.start_manager()?;
        self.wait_ready().await?;
        tracing::info!(board = %self.name(), elapsed = ?started.elapsed(), "board rebooted");
        Ok(())
    }

    /// Stops every process of the board, waits until they are gone and
    /// removes its cgroups. Idempotent.
    pub(crate) async fn teardown(&self) -> anyhow::Result<()> {
        if self.state().torn_down {
            return Ok(());
        }
        if let Err(e) = self.stop_manager(TEARDOWN_GRACE).await {
            tracing::warn!(board = %self.name(), "graceful stop failed, killing: {e:#}");
        }
        let layout = &self.inner.layout;
        let what = format!("every process of board {} to end", self.name());
        wait_for(what, KILL_TIMEOUT, || async {
            layout.kill(&self.inner.cgroup)?;
            let left = layout.pids(&self.inner.cgroup)?;
            Ok(if left.is_empty() {
                Check::Ready(())
            } else {
                Check::not_yet(format!("still running: {left:?}"))
            })
        })
        .await?;
        let children: Vec<Child> = {
            let mut state = self.state();
            state.torn_down = true;
            state.namespaces = None;
            [
                state.holder.take(),
                state.journald.take(),
                state.manager.take(),
            ]
            .into_iter()
            .flatten()
            .collect()
        };
        for mut child in children {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        layout.remove(&self.inner.cgroup)?;
        Ok(())
    }

    /// [`Board::teardown`] for `Drop`: no graceful stop, no async.
    pub(crate) fn teardown_blocking(&self) -> anyhow::Result<()> {
        if self.state().torn_down {
            return Ok(());
        }
        let layout = &self.inner.layout;
        let deadline = std::time::Instant::now() + KILL_TIMEOUT;
        loop {
            layout.kill(&self.inner.cgroup)?;
            if layout.is_empty(&self.inner.cgroup) {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "processes of board {} survived SIGKILL: {:?}",
                    self.name(),
                    layout.pids(&self.inner.cgroup)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        {
            let mut guard = self.state();
            let state = &mut *guard;
            state.torn_down = true;
            state.namespaces = None;
            // Dropped children are reaped by tokio in the background.
            for child in [&mut state.holder, &mut state.journald, &mut state.manager] {
                if let Some(mut c) = child.take() {
                    let _ = c.start_kill();
                }
            }
        }
        layout.remove(&self.inner.cgroup)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ensure_running(&self) -> anyhow::Result<()> {
        if self.state().torn_down {
            bail!("board {} has been torn down", self.name());
        }
        Ok(())
    }

    /// The pre-exec hook that puts a child into `sub` of the board's cgroup
    /// and into its namespaces. The cgroup is created again if needed: a
    /// manager that exits removes the empty cgroups under it.
    fn entry(&self, sub: &str) -> Entry {
        let rel = format!("{}/{sub}", self.inner.cgroup);
        let namespaces = {
            let state = self.state();
            if state.torn_down {
                None
            } else {
                state.namespaces.clone()
            }
        };
        if namespaces.is_some() {
            if let Err(e) = self.inner.layout.create(&rel) {
                tracing::warn!(board = %self.name(), "{e:#}");
            }
        } else {
            tracing::warn!(board = %self.name(), "command for a board that is not running");
        }
        Entry::new(self.inner.layout.join_paths(&rel), namespaces, self.dir())
    }

    fn create_runtime_dir(&self) -> anyhow::Result<()> {
        let dir = self.runtime_dir();
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        fs::create_dir_all(self.runtime_unit_dir())?;
        Ok(())
    }

    fn log_file(&self, name: &str) -> anyhow::Result<fs::File> {
        let path = self.logs_dir().join(name);
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))
    }

    /// Starts the process that owns the board's namespaces and prepares them.
    async fn start_holder(&self) -> anyhow::Result<()> {
        let infra = format!("{}/{INFRA_CGROUP}", self.inner.cgroup);
        self.inner.layout.create(&infra)?;
        let mut cmd = Command::new("sleep");
        cmd.arg("infinity")
            .env_clear()
            .env("PATH", BOARD_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file("holder.log")?)
            // Keeps a Ctrl-C in the terminal from reaching the board: the
            // testbed ends it, or the next run reaps it.
            .process_group(0);
        namespace::install_holder_hook(&mut cmd, self.inner.layout.join_paths(&infra), self.name());
        let holder = cmd.spawn().context("start the namespace holder")?;
        let pid = holder.id().context("holder has no pid")?;
        let ns = Namespaces::of(pid).context("open the holder's namespaces")?;
        {
            let mut state = self.state();
            state.holder = Some(holder);
            state.namespaces = Some(ns.clone());
        }
        let run_log = self.run_log_dir();
        let machine_id = self.machine_id_file();
        ns.run(move || prepare_namespace(&run_log, &machine_id))
            .await
            .context("prepare the board's mount namespace")?;
        Ok(())
    }

    async fn start_journald(&self) -> anyhow::Result<()> {
        let log = self.log_file("journald.log")?;
        let mut cmd = Command::new(&self.inner.tools.journald);
        cmd.env_clear()
            .env("PATH", BOARD_PATH)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        self.entry(INFRA_CGROUP).install(&mut cmd);
        let journald = cmd.spawn().context("start systemd-journald")?;
        let holder = self
            .state()
            .holder
            .as_ref()
            .and_then(Child::id)
            .context("no holder")?;
        self.state().journald = Some(journald);
        // The holder's root is the board's view of the file system.
        let socket = PathBuf::from(format!("/proc/{holder}/root/run/systemd/journal/stdout"));
        let what = format!("journald of board {} to listen", self.name());
        wait_for(what, BOOT_TIMEOUT, || async {
            if let Some(status) = self
                .state()
                .journald
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "systemd-journald exited ({status}); see {}",
                    self.logs_dir().join("journald.log").display()
                );
            }
            Ok(match fs::symlink_metadata(&socket) {
                Ok(m) if m.file_type().is_socket() => Check::Ready(()),
                Ok(_) | Err(_) => Check::not_yet(format!("{} is missing", socket.display())),
            })
        })
        .await?;
        Ok(())
    }

    fn start_manager(&self) -> anyhow::Result<()> {
        let log = self.log_file("manager.log")?;
        let level = std::env::var(LOG_LEVEL_VAR).unwrap_or_else(|_| "info".to_owned());
        let mut cmd = Command::new(&self.inner.tools.systemd);
        cmd.arg("--user")
            // A user manager's "console" is /dev/console, not its stderr:
            // logging to the board's journal is the only useful choice.
            .arg("--log-target=journal")
            .arg(format!("--log-level={level}"))
            .env_clear()
            .envs(self.environment())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        self.entry(MANAGER_CGROUP).install(&mut cmd);
        let manager = cmd.spawn().context("start systemd --user")?;
        self.state().manager = Some(manager);
        Ok(())
    }

    /// The manager's exit status, if it has exited.
    fn manager_exit(&self) -> anyhow::Result<Option<ExitStatus>> {
        match self.state().manager.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("board {} has no manager running", self.name()),
        }
    }

    /// Shuts the manager down the way a shutdown does, along with every other
    /// process of the board except the namespace holder and journald.
    async fn stop_manager(&self, grace: Duration) -> anyhow::Result<()> {
        let layout = &self.inner.layout;
        let commands = format!("{}/{COMMANDS_CGROUP}", self.inner.cgroup);
        let manager = self.state().manager.take();
        // A user manager answers SIGTERM by starting exit.target, which stops
        // every unit; a system manager's shutdown does the same for a board.
        if let Some(pid) = manager.as_ref().and_then(Child::id) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        layout.signal(&commands, libc::SIGTERM)?;
        let deadline = Instant::now() + grace;
        if let Some(mut manager) = manager {
            match tokio::time::timeout_at(deadline, manager.wait()).await {
                Ok(status) => {
                    tracing::debug!(board = %self.name(), "systemd --user exited: {:?}", status?);
                }
                Err(_) => {
                    tracing::warn!(
                        board = %self.name(),
                        "systemd --user did not exit within {grace:?} of SIGTERM; killing it"
                    );
                    manager.start_kill()?;
                    manager.wait().await?;
                }
            }
        }
        let groups = self.groups_except_infra();
        let what = format!(
            "the processes of board {} to end after SIGTERM",
            self.name()
        );
        let remaining = deadline.saturating_duration_since(Instant::now());
        let graceful = wait_for(what, remaining, || async {
            let left: Vec<i32> = groups
                .iter()
                .map(|g| layout.pids(g))
                .collect::<io::Result<Vec<_>>>()?
                .concat();
            Ok(if left.is_empty() {
                Check::Ready(())
            } else {
                Check::not_yet(format!("still running: {left:?}"))
            })
        })
        .await;
        if let Err(e) = graceful {
            tracing::warn!(board = %self.name(), "{e}; killing them");
        }
        let what = format!(
            "the processes of board {} to end after SIGKILL",
            self.name()
        );
        wait_for(what, KILL_TIMEOUT, || async {
            let mut left = Vec::new();
            for group in &groups {
                layout.kill(group)?;
                left.extend(layout.pids(group)?);
            }
            Ok(if left.is_empty() {
                Check::Ready(())
            } else {
                Check::not_yet(format!("still running: {left:?}"))
            })
        })
        .await?;
        Ok(())
    }

    /// The board's sub-cgroups other than the testbed's own (the manager's
    /// init.scope, its slices, the commands), as paths relative to the root.
    fn groups_except_infra(&self) -> Vec<String> {
        let mut groups = vec![
            format!("{}/{MANAGER_CGROUP}", self.inner.cgroup),
            format!("{}/{COMMANDS_CGROUP}", self.inner.cgroup),
        ];
        for dir in self.inner.layout.dirs(&self.inner.cgroup) {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let rel = format!("{}/{name}", self.inner.cgroup);
                if entry.file_type().is_ok_and(|t| t.is_dir())
                    && name != INFRA_CGROUP
                    && !groups.contains(&rel)
                {
                    groups.push(rel);
                }
            }
        }
        groups
    }
}

/// Makes the board's mount namespace look like a machine booted with systemd.
/// Runs on a thread inside that namespace.
fn prepare_namespace(run_log: &Path, machine_id: &Path) -> io::Result<()> {
    // /run/systemd/system is how sd_booted() and systemctl tell that systemd
    // runs the machine; the tmpfs also hides the host's /run/systemd.
    mount(
        Some("tmpfs"),
        "/run/systemd",
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755,size=64m"),
    )?;
    for dir in [
        "/run/systemd/system",
        "/run/systemd/journal",
        "/run/systemd/journald.conf.d",
    ] {
        fs::create_dir_all(dir)?;
    }
    fs::write(
        "/run/systemd/journald.conf.d/50-fleet-testbed.conf",
        JOURNALD_CONF,
    )?;
    make_inaccessible_nodes(Path::new("/run/systemd/inaccessible"))?;
    // The board's journal: private to the namespace, kept in the board's
    // directory so a failed run can still be read.
    if !Path::new("/run/log").exists() {
        fs::create_dir_all("/run/log")?;
    }
    bind(run_log, "/run/log")?;
    // Each board is its own machine, with its own id (and so its own journal
    // directory /run/log/journal/<machine-id>).
    bind(machine_id, "/etc/machine-id")?;
    Ok(())
}

/// The nodes PID 1 creates at boot in `/run/systemd/inaccessible`. A manager
/// over-mounts them on paths a unit must not reach (ProtectKernelLogs= hides
/// /dev/kmsg with `sock`, InaccessiblePaths= uses the others); without them
/// such a unit fails with status 226/NAMESPACE.
fn make_inaccessible_nodes(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::create_dir(dir.join("dir"))?;
    fs::File::create(dir.join("reg"))?;
    for (name, kind, dev) in [
        ("fifo", libc::S_IFIFO, 0),
        ("sock", libc::S_IFSOCK, 0),
        ("chr", libc::S_IFCHR, libc::makedev(0, 0)),
        ("blk", libc::S_IFBLK, libc::makedev(0, 0)),
    ] {
        let path = namespace::c_path(&dir.join(name));
        // SAFETY: mknod(2) on a NUL-terminated path.
        namespace::check(unsafe { libc::mknod(path.as_ptr(), kind, dev) })?;
    }
    for name in ["dir", "reg", "fifo", "sock", "chr", "blk"] {
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o000))?;
    }
    Ok(())
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let source = source.map(c);
    let target_c = c(target);
    let fstype = fstype.map(c);
    let data = data.map(c);
    let ptr = |s: &Option<std::ffi::CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: NUL-terminated strings or null pointers, as mount(2) takes.
    let ret = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    namespace::check(ret).map_err(|e| io::Error::new(e.kind(), format!("mount {target}: {e}")))
}

fn bind(source: &Path, target: &str) -> io::Result<()> {
    mount(
        Some(source.to_str().expect("board paths are UTF-8")),
        target,
        None,
        libc::MS_BIND,
        None,
    )
}

/// 128 random bits in the format of /etc/machine-id.
fn new_machine_id() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        // journald stores non-UTF-8 or binary fields as an array of bytes.
        serde_json::Value::Array(items) => {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        other => other.to_string(),
    }
}
