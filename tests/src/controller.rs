//! A real `fleet-controller` process for a test fleet: its config (nodes,
//! timeouts), its sled directory, start, `kill -9`, restart, clients.
//!
//! The controller runs on the lab server, not on a board: it is a plain
//! child process of the test, on its own loopback address.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use fleet_proto::identity::Role;
use fleet_proto::tls::Expect;
use fleet_proto::v1::{self, controller_client::ControllerClient};
use tonic::transport::Channel;

use crate::agent::{workspace_bin, AgentHandle};
use crate::pki::{CertFiles, TestPki};
use crate::poll::{wait_for, Check};

/// Settings a test may change; the rest are the controller's defaults.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub heartbeat_timeout_s: u64,
    pub node_lost_after_s: u64,
    pub tick_ms: u64,
    pub telemetry_interval_ms: u64,
    pub slots_per_node: u32,
    /// `(node, labels)` to put in the config.
    pub labels: Vec<(String, Vec<(String, String)>)>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            heartbeat_timeout_s: 15,
            node_lost_after_s: 300,
            tick_ms: 200,
            telemetry_interval_ms: 200,
            slots_per_node: 4,
            labels: Vec::new(),
        }
    }
}

pub struct ControllerHandle {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub certs: CertFiles,
    child: Option<tokio::process::Child>,
}

impl ControllerHandle {
    /// Writes the config naming every agent and starts the controller.
    pub async fn start(
        dir: &Path,
        pki: &TestPki,
        ip: IpAddr,
        agents: &[&AgentHandle],
        options: &ControllerOptions,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let certs = pki.controller()?;
        let config = dir.join("controller.toml");
        let mut text = format!(
            "listen = \"{ip}:0\"\nstate_dir = {state:?}\nheartbeat_timeout_s = {}\nnode_lost_after_s = {}\ntick_ms = {}\ntelemetry_interval_ms = {}\nslots_per_node = {}\n\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            options.heartbeat_timeout_s,
            options.node_lost_after_s,
            options.tick_ms,
            options.telemetry_interval_ms,
            options.slots_per_node,
            certs.ca,
            certs.cert,
            certs.key,
            state = dir.join("state"),
        );
        for a in agents {
            text.push_str(&format!(
                "\n[[nodes]]\nname = {:?}\naddress = \"{}\"\n",
                a.node, a.addr
            ));
            if let Some((_, labels)) = options.labels.iter().find(|(n, _)| *n == a.node) {
                text.push_str("[nodes.labels]\n");
                for (k, v) in labels {
                    text.push_str(&format!("{k} = {v:?}\n"));
                }
            }
        }
        std::fs::write(&config, text)?;
        let mut c = ControllerHandle {
            addr: SocketAddr::new(ip, 0),
            dir: dir.to_owned(),
            config,
            log: dir.join("controller.log"),
            certs,
            child: None,
        };
        c.spawn().await?;
        Ok(c)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let addr_file = self.dir.join("state").join("listen-addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = tokio::process::Command::new(workspace_bin("fleet-controller"))
            .arg("--config")
            .arg(&self.config)
            .env(
                "FLEET_LOG",
                std::env::var("FLEET_LOG").unwrap_or_else(|_| "info,fleet_controller=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn fleet-controller")?;
        self.child = Some(child);
        let text = wait_for(
            "the controller to bind its listener",
            Duration::from_secs(30),
            || {
                let f = addr_file.clone();
                async move { Ok(std::fs::read_to_string(&f).ok().into()) }
            },
        )
        .await
        .with_context(|| format!("controller log: {}", self.log.display()))?;
        self.addr = text.trim().parse()?;
        Ok(())
    }

    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Makes every later start listen on the address the controller has
    /// now instead of a fresh port, so boards configured with it find the
    /// controller again after a restart.
    pub fn keep_address(&self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.config)?;
        let mut found = false;
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("listen = ") {
                    found = true;
                    format!("listen = \"{}\"\n", self.addr)
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        anyhow::ensure!(found, "no listen key in {}", self.config.display());
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    /// Sets `key` of the config's `[tls]` table (a restart or SIGHUP reads it).
    pub fn set_tls_key(&self, key: &str, value: &Path) -> anyhow::Result<()> {
        crate::agent::set_tls_key(&self.config, key, value)
    }

    /// SIGHUP, what `systemctl reload fleet-controller` sends.
    pub fn sighup(&self) -> anyhow::Result<()> {
        crate::agent::signal(self.child.as_ref().and_then(|c| c.id()), libc::SIGHUP)
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await?;
        self.spawn().await
    }

    pub async fn client_as(&self, certs: &CertFiles) -> anyhow::Result<ControllerClient<Channel>> {
        Ok(ControllerClient::new(
            certs
                .client()?
                .connect(self.addr, Expect::Controller)
                .await?,
        ))
    }

    pub async fn client(
        &self,
        pki: &TestPki,
        role: Role,
    ) -> anyhow::Result<ControllerClient<Channel>> {
        let certs = pki.user(&format!("ctl-{}", role.as_str()), role)?;
        self.client_as(&certs).await
    }
}

impl Drop for ControllerHandle {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// Waits until the controller lists `n` nodes, each connected, with its
/// telemetry and its node info.
pub async fn wait_nodes_connected(
    admin: &ControllerClient<Channel>,
    n: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    wait_for("every node connected", deadline, || {
        let mut c = admin.clone();
        async move {
            let nodes = c
                .list_nodes(v1::ListNodesRequest::default())
                .await?
                .into_inner()
                .nodes;
            let ok = nodes.len() == n
                && nodes.iter().all(|n| {
                    n.connection() == v1::NodeConnection::Connected
                        && n.telemetry.is_some()
                        && n.info.is_some()
                });
            Ok(if ok {
                Check::Ready(())
            } else {
                Check::not_yet(format!(
                    "{:?}",
                    nodes
                        .iter()
                        .map(|n| (n.name.clone(), n.connection(), n.telemetry.is_some()))
                        .collect::<Vec<_>>()
                ))
            })
        }
    })
    .await?;
    Ok(())
}

/// One experiment as the controller has it.
pub async fn experiment(
    admin: &ControllerClient<Channel>,
    id: &str,
) -> anyhow::Result<v1::Experiment> {
    Ok(admin
        .clone()
        .get(v1::GetRequest { id: id.into() })
        .await?
        .into_inner())
}

/// Waits until experiment `id` satisfies `ok`, returning it.
pub async fn wait_experiment(
    admin: &ControllerClient<Channel>,
    id: &str,
    what: &str,
    deadline: Duration,
    ok: impl Fn(&v1::Experiment) -> bool,
) -> anyhow::Result<v1::Experiment> {
    Ok(wait_for(what, deadline, || {
        let ok = &ok;
        async move {
            let e = experiment(admin, id).await?;
            Ok(if ok(&e) {
                Check::Ready(e)
            } else {
                Check::not_yet(format!(
                    "{:?} on {:?} epoch {} reason {:?} runs {}",
                    e.phase(),
                    e.node,
                    e.epoch,
                    e.reason,
                    e.runs.len()
                ))
            })
        }
    })
    .await?)
}
