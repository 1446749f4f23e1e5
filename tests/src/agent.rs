//! A real `fleet-agent` process on a testbed board: config, certificates,
//! start, `kill -9`, restart, and clients with any identity.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use fleet_proto::identity::Role;
use fleet_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;

use crate::pki::{CertFiles, TestPki};
use crate::poll::wait_for;
use crate::testbed::Board;

/// The agent binary: `FLEET_AGENT_BIN`, else the one cargo built beside the
/// test executable, built on first use when missing.
pub fn agent_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("FLEET_AGENT_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> or target/<profile>/<bin>
        // → target/<profile>/fleet-agent
        let mut profile_dir = exe.parent().expect("target directory");
        if profile_dir.ends_with("deps") {
            profile_dir = profile_dir.parent().expect("target profile directory");
        }
        let bin = profile_dir.join("fleet-agent");
        if !bin.exists() {
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "-p", "fleet-agent", "--bin", "fleet-agent"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build for fleet-agent");
            assert!(status.success(), "building fleet-agent failed");
        }
        bin
    })
    .clone()
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
}

impl AgentHandle {
    /// Writes the agent's config and starts it inside the board, listening
    /// on `ip` with a port it picks.
    pub async fn start(board: &Board, pki: &TestPki, ip: IpAddr) -> anyhow::Result<Self> {
        let node = board.name().to_owned();
        let certs = pki.agent(&node)?;
        let state_dir = board.dir().join("agent");
        let config = board.dir().join("agent.toml");
        let text = format!(
            "node = {node:?}\nlisten = \"{ip}:0\"\nsystemd = \"user\"\nstate_dir = {state:?}\nunit_dir = {unit:?}\nruntime_unit_dir = {runtime:?}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
            state = state_dir,
            unit = board.unit_dir(),
            runtime = board.runtime_unit_dir(),
            ca = certs.ca,
            cert = certs.cert,
            key = certs.key,
        );
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
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().context("spawn fleet-agent")?;
        self.child = Some(child);
        let text = wait_for(
            "the agent to bind its listener",
            Duration::from_secs(30),
            || {
                let addr_file = addr_file.clone();
                async move { Ok(std::fs::read_to_string(&addr_file).ok().into()) }
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
