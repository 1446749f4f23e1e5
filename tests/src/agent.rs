//! A real `fleet-agent` process on a testbed board: config, certificates,
//! start, `kill -9`, restart, and clients with any identity.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use fleet_proto::identity::Role;
use fleet_proto::v1::{self, agent_client::AgentClient};
use tonic::transport::Channel;

use crate::hwsim::HwSim;
use crate::pki::{CertFiles, TestPki};
use crate::poll::{wait_for, Check};
use crate::process::{self, Signal};
use crate::settings::{self, Setting};
use crate::testbed::Board;

/// Keys of the agent's config the testbed sets itself: a setting of one
/// is refused ([`AgentOptions::check`]).
pub const AGENT_OWNED_KEYS: &[&str] = &[
    "node",
    "listen",
    "systemd",
    "state_dir",
    "unit_dir",
    "runtime_unit_dir",
    "tls",
    "hardware.sysfs_root",
    "hardware.root",
    "hardware.nvpmodel",
    "hardware.nvpmodel_conf",
    "hardware.jetson_clocks",
    "hardware.clocks_store_file",
];

/// The agent binary: `FLEET_AGENT_BIN`, else the one cargo built beside the
/// test executable, built on first use when missing.
pub fn agent_bin() -> PathBuf {
    workspace_bin("fleet-agent")
}

/// A binary of this workspace: `FLEET_<NAME>_BIN` (`fleet-sim-nvpmodel` →
/// `FLEET_SIM_NVPMODEL_BIN`), else the one cargo built beside the running
/// executable. `cargo test --workspace` builds every one of them (each
/// package with a binary has integration tests); one that is missing is
/// built on first use, with every other binary of the workspace, in one
/// `cargo build --workspace --bins`.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BINS: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut bins = BINS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(bin) = bins.get(name) {
        return bin.clone();
    }
    let var = format!(
        "FLEET_{}_BIN",
        name.trim_start_matches("fleet-")
            .to_ascii_uppercase()
            .replace('-', "_")
    );
    let bin = match std::env::var_os(&var) {
        Some(p) => PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().expect("executable path");
            // target/<profile>/deps/<test> or target/<profile>/<bin>
            // → target/<profile>/<name>
            let mut profile_dir = exe.parent().expect("target directory");
            if profile_dir.ends_with("deps") {
                profile_dir = profile_dir.parent().expect("target profile directory");
            }
            let bin = profile_dir.join(name);
            if !bin.exists() {
                let status = std::process::Command::new(env!("CARGO"))
                    .args(["build", "--workspace", "--bins"])
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .status()
                    .unwrap_or_else(|e| panic!("run cargo build for {name}: {e}"));
                assert!(status.success(), "building {name} failed");
            }
            bin
        }
    };
    bins.insert(name.to_owned(), bin.clone());
    bin
}

/// What an agent runs with besides its identity: simulated hardware, guard
/// and sampling settings, and extra environment.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// The board's simulated hardware: its `[hardware]` section and the
    /// environment its `nvpmodel` needs. Without it the agent reads this
    /// machine's (absent) Jetson files and reports what is missing.
    pub hardware: Option<HwSim>,
    /// The `[guard]` section, verbatim (with its header).
    pub guard_toml: Option<String>,
    /// `[sampling] interval_ms`.
    pub sampling_ms: Option<u64>,
    /// More variables for the agent, which its tools inherit.
    pub extra_env: Vec<(String, OsString)>,
    /// Where the agent serves Prometheus metrics.
    pub metrics_listen: Option<SocketAddr>,
    /// Any other keys of its config, applied last (they win over the
    /// fields above); see [`AgentOptions::check`].
    pub settings: Vec<Setting>,
}

impl AgentOptions {
    /// The agent config's sections for these options.
    fn toml(&self) -> String {
        let mut text = String::new();
        if let Some(hw) = &self.hardware {
            text.push('\n');
            text.push_str(&hw.hardware_toml());
        }
        if let Some(guard) = &self.guard_toml {
            text.push('\n');
            text.push_str(guard.trim_end());
            text.push('\n');
        }
        if let Some(ms) = self.sampling_ms {
            text.push_str(&format!("\n[sampling]\ninterval_ms = {ms}\n"));
        }
        text
    }

    /// Checks `settings` before anything starts: a key the testbed sets
    /// itself is refused, and the rest go through `fleet-agent
    /// check-config` on the config a board would get, so an unknown key or
    /// a bad value is refused as the agent refuses it (exit 64, naming the
    /// key and the keys it knows).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.settings.is_empty() {
            return Ok(());
        }
        settings::refuse_owned("agent", &self.settings, AGENT_OWNED_KEYS)?;
        let placeholder = Path::new("/nonexistent/fleet-testbed");
        let tls = [
            placeholder.join("ca.pem"),
            placeholder.join("agent.pem"),
            placeholder.join("agent.key"),
        ];
        let base = AgentOptions {
            settings: Vec::new(),
            ..self.clone()
        }
        .render(
            "jetson-01",
            SocketAddr::from(([127, 0, 0, 1], 0)),
            placeholder,
            &placeholder.join("units"),
            &placeholder.join("run-units"),
            [&tls[0], &tls[1], &tls[2]],
        )?;
        settings::check_settings(&agent_bin(), "agent.toml", &base, &self.settings)
    }

    /// The agent's config.
    fn render(
        &self,
        node: &str,
        listen: SocketAddr,
        state_dir: &Path,
        unit_dir: &Path,
        runtime_unit_dir: &Path,
        [ca, cert, key]: [&Path; 3],
    ) -> anyhow::Result<String> {
        let mut text = format!(
            "node = {node:?}\nlisten = \"{listen}\"\nsystemd = \"user\"\nstate_dir = {state:?}\nunit_dir = {unit:?}\nruntime_unit_dir = {runtime:?}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
            state = state_dir,
            unit = unit_dir,
            runtime = runtime_unit_dir,
        );
        text.push_str(&self.toml());
        if let Some(m) = self.metrics_listen {
            // A top-level key: it goes before the first section.
            text = text.replacen("\n[tls]", &format!("metrics_listen = \"{m}\"\n\n[tls]"), 1);
        }
        settings::apply(&text, &self.settings)
    }

    fn env(&self) -> Vec<(String, OsString)> {
        let mut env = self.hardware.as_ref().map(HwSim::env).unwrap_or_default();
        env.extend(self.extra_env.iter().cloned());
        env
    }
}

pub struct AgentHandle {
    pub node: String,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub certs: CertFiles,
    child: Option<tokio::process::Child>,
    ip: IpAddr,
    starts: u32,
    options: AgentOptions,
}

impl AgentHandle {
    /// Writes the agent's config and starts it inside the board, listening
    /// on `ip` with a port it picks.
    pub async fn start(board: &Board, pki: &TestPki, ip: IpAddr) -> anyhow::Result<Self> {
        Self::start_with(board, pki, ip, AgentOptions::default()).await
    }

    /// As [`AgentHandle::start`], with simulated hardware, guard and
    /// sampling settings and extra environment.
    pub async fn start_with(
        board: &Board,
        pki: &TestPki,
        ip: IpAddr,
        options: AgentOptions,
    ) -> anyhow::Result<Self> {
        let node = board.name().to_owned();
        let certs = pki.agent(&node)?;
        let state_dir = board.dir().join("agent");
        let config = board.dir().join("agent.toml");
        let text = options.render(
            &node,
            SocketAddr::new(ip, 0),
            &state_dir,
            &board.unit_dir(),
            &board.runtime_unit_dir(),
            [&certs.ca, &certs.cert, &certs.key],
        )?;
        std::fs::write(&config, text)?;
        let mut agent = AgentHandle {
            node,
            addr: SocketAddr::new(ip, 0),
            config,
            state_dir,
            log: board.dir().join("agent.log"),
            certs,
            child: None,
            ip,
            starts: 0,
            options,
        };
        agent.spawn(board).await?;
        Ok(agent)
    }

    async fn spawn(&mut self, board: &Board) -> anyhow::Result<()> {
        let addr_file = self.state_dir.join(fleet_agent_listen_addr_file());
        let _ = std::fs::remove_file(&addr_file);
        self.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = board.command(agent_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .env("FLEET_LOG", "info,fleet_agent=debug")
            .envs(self.options.env())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().context("spawn fleet-agent")?;
        self.child = Some(child);
        let (child, log) = (&mut self.child, &self.log);
        let text = wait_for(
            "the agent to bind its listener",
            Duration::from_secs(30),
            || {
                let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                let addr_file = addr_file.clone();
                async move {
                    if let Some(status) = exited {
                        anyhow::bail!(
                            "fleet-agent exited ({status}) before it listened; the end of its log:\n{}",
                            process::log_tail(log, 20)
                        );
                    }
                    Ok(std::fs::read_to_string(&addr_file).ok().into())
                }
            },
        )
        .await
        .with_context(|| format!("agent log: {}", self.log.display()))?;
        self.addr = text.trim().parse()?;
        assert_eq!(self.addr.ip(), self.ip);
        Ok(())
    }

    /// `kill -9`: no chance to clean up.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Starts the agent again on the same config and state.
    pub async fn restart(&mut self, board: &Board) -> anyhow::Result<()> {
        self.kill9().await?;
        self.spawn(board).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Makes every later start listen on the address the agent has now
    /// instead of a fresh port, so a controller configured with it finds
    /// the agent again after a restart, a `kill -9` or a reboot.
    pub fn keep_address(&self) -> anyhow::Result<()> {
        settings::set_in_file(&self.config, "listen", self.addr.to_string().into())
    }

    /// The agent's pid while it runs (frozen included); None once it has
    /// exited.
    pub fn running_pid(&mut self) -> Option<u32> {
        process::running_pid(&mut self.child)
    }

    /// Sends `signal` and waits for its effect: see [`process::send`].
    pub async fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        let what = format!("the agent of {}", self.node);
        process::send(&mut self.child, signal, &what).await
    }

    /// A graceful stop (SIGTERM, SIGKILL after [`process::STOP_GRACE`]),
    /// as systemd stops the agent's service. Nothing when it is not
    /// running.
    pub async fn stop(&mut self) -> anyhow::Result<process::Stopped> {
        process::stop(&mut self.child, process::STOP_GRACE).await
    }

    /// Starts the agent again after it was stopped, killed or its board
    /// rebooted; refused while it runs (frozen included).
    pub async fn start_again(&mut self, board: &Board) -> anyhow::Result<()> {
        match self.running_pid() {
            Some(pid) if process::state(pid) == process::State::Frozen => anyhow::bail!(
                "the agent of {} is frozen (SIGSTOP, pid {pid}); send it SIGCONT instead",
                self.node
            ),
            Some(pid) => anyhow::bail!("the agent of {} already runs (pid {pid})", self.node),
            None => self.spawn(board).await,
        }
    }

    /// Waits until the agent answers `GetNode` as `certs`.
    pub async fn wait_serving(&self, certs: &CertFiles, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("the agent of {} to answer at {}", self.node, self.addr);
        wait_for(what, timeout, || async {
            let attempt = async {
                let mut c = self.client_as(certs).await?;
                c.get_node(v1::GetNodeRequest {}).await?;
                anyhow::Ok(())
            };
            Ok(
                match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                    Ok(Ok(())) => Check::Ready(()),
                    Ok(Err(e)) => Check::not_yet(format!("{e:#}")),
                    Err(_) => Check::not_yet("no answer within 5s"),
                },
            )
        })
        .await?;
        Ok(())
    }

    /// Sets `key` of the config's `[tls]` table (a restart or SIGHUP reads it).
    pub fn set_tls_key(&self, key: &str, value: &std::path::Path) -> anyhow::Result<()> {
        set_tls_key(&self.config, key, value)
    }

    /// SIGHUP, what `systemctl reload fleet-agent` sends.
    pub fn sighup(&self) -> anyhow::Result<()> {
        signal(self.pid(), libc::SIGHUP)
    }

    /// A client as `certs`.
    pub async fn client_as(&self, certs: &CertFiles) -> anyhow::Result<AgentClient<Channel>> {
        Ok(AgentClient::new(
            certs.connect_agent(self.addr, &self.node).await?,
        ))
    }

    /// A client as a fresh user with `role`.
    pub async fn client(&self, pki: &TestPki, role: Role) -> anyhow::Result<AgentClient<Channel>> {
        let certs = pki.user(&format!("{}-{}", role.as_str(), self.starts), role)?;
        self.client_as(&certs).await
    }
}

/// Sets `key = value` in the `[tls]` table of the TOML file `config`,
/// replacing the key when the table has it.
pub fn set_tls_key(
    config: &std::path::Path,
    key: &str,
    value: &std::path::Path,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    let line = format!("{key} = {value:?}");
    let mut out = Vec::new();
    let mut in_tls = false;
    let mut done = false;
    for l in text.lines() {
        if l.trim_start().starts_with('[') {
            if in_tls && !done {
                out.push(line.clone());
                done = true;
            }
            in_tls = l.trim() == "[tls]";
        } else if in_tls && l.split('=').next().map(str::trim) == Some(key) {
            out.push(line.clone());
            done = true;
            continue;
        }
        out.push(l.to_owned());
    }
    if !done {
        anyhow::ensure!(in_tls, "no [tls] table in {}", config.display());
        out.push(line);
    }
    std::fs::write(config, out.join("\n") + "\n")?;
    Ok(())
}

/// Sends `sig` to a running child.
pub(crate) fn signal(pid: Option<u32>, sig: libc::c_int) -> anyhow::Result<()> {
    let pid = pid.context("the process is not running")?;
    // SAFETY: kill(2) with a pid of our own child and a valid signal.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    anyhow::ensure!(rc == 0, "kill {pid}: {}", std::io::Error::last_os_error());
    Ok(())
}

fn fleet_agent_listen_addr_file() -> &'static str {
    "listen-addr"
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
