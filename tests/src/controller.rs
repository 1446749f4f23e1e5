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
use crate::process::{self, Signal};
use crate::settings::{self, Setting};

/// Keys of the controller's config the testbed sets itself: a setting of
/// one is refused ([`ControllerOptions::check`]).
pub const CONTROLLER_OWNED_KEYS: &[&str] = &["listen", "state_dir", "nodes", "tls"];

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
    /// Any other keys of its config, applied last (they win over the
    /// fields above); see [`ControllerOptions::check`].
    pub settings: Vec<Setting>,
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
            settings: Vec::new(),
        }
    }
}

impl ControllerOptions {
    /// Checks `settings` before anything starts: a key the testbed sets
    /// itself is refused, and the rest go through `fleet-controller
    /// check-config` on the config a fleet would get, so an unknown key or
    /// a bad value is refused as the controller refuses it (exit 64,
    /// naming the key and the keys it knows).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.settings.is_empty() {
            return Ok(());
        }
        settings::refuse_owned("controller", &self.settings, CONTROLLER_OWNED_KEYS)?;
        let placeholder = Path::new("/nonexistent/fleet-testbed");
        let tls = [
            placeholder.join("ca.pem"),
            placeholder.join("controller.pem"),
            placeholder.join("controller.key"),
        ];
        let base = ControllerOptions {
            settings: Vec::new(),
            ..self.clone()
        }
        .render(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            placeholder,
            [&tls[0], &tls[1], &tls[2]],
            &[(
                "jetson-01".to_owned(),
                SocketAddr::from(([127, 0, 0, 1], 1)),
            )],
        )?;
        settings::check_settings(
            &workspace_bin("fleet-controller"),
            "controller.toml",
            &base,
            &self.settings,
        )
    }

    /// The controller's config.
    fn render(
        &self,
        listen: SocketAddr,
        state_dir: &Path,
        [ca, cert, key]: [&Path; 3],
        nodes: &[(String, SocketAddr)],
    ) -> anyhow::Result<String> {
        let mut text = format!(
            "listen = \"{listen}\"\nstate_dir = {state_dir:?}\nheartbeat_timeout_s = {}\nnode_lost_after_s = {}\ntick_ms = {}\ntelemetry_interval_ms = {}\nslots_per_node = {}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
            self.heartbeat_timeout_s,
            self.node_lost_after_s,
            self.tick_ms,
            self.telemetry_interval_ms,
            self.slots_per_node,
        );
        for (node, addr) in nodes {
            text.push_str(&format!(
                "\n[[nodes]]\nname = {node:?}\naddress = \"{addr}\"\n"
            ));
            if let Some((_, labels)) = self.labels.iter().find(|(n, _)| n == node) {
                text.push_str("[nodes.labels]\n");
                for (k, v) in labels {
                    text.push_str(&format!("{k} = {v:?}\n"));
                }
            }
        }
        settings::apply(&text, &self.settings)
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
        let nodes: Vec<(String, SocketAddr)> =
            agents.iter().map(|a| (a.node.clone(), a.addr)).collect();
        let text = options.render(
            SocketAddr::new(ip, 0),
            &dir.join("state"),
            [&certs.ca, &certs.cert, &certs.key],
            &nodes,
        )?;
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
        let (child, log) = (&mut self.child, &self.log);
        let text = wait_for(
            "the controller to bind its listener",
            Duration::from_secs(30),
            || {
                let exited = child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                let f = addr_file.clone();
                async move {
                    if let Some(status) = exited {
                        anyhow::bail!(
                            "fleet-controller exited ({status}) before it listened; the end of its log:\n{}",
                            process::log_tail(log, 20)
                        );
                    }
                    Ok(std::fs::read_to_string(&f).ok().into())
                }
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

    /// The pid of the controller this handle started last, exited or not.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The controller's pid while it runs (frozen included); None once it
    /// has exited.
    pub fn running_pid(&mut self) -> Option<u32> {
        process::running_pid(&mut self.child)
    }

    /// Sends `signal` and waits for its effect: see [`process::send`].
    pub async fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        process::send(&mut self.child, signal, "the controller").await
    }

    /// A graceful stop (SIGTERM, SIGKILL after [`process::STOP_GRACE`]).
    /// Nothing when it is not running.
    pub async fn stop(&mut self) -> anyhow::Result<process::Stopped> {
        process::stop(&mut self.child, process::STOP_GRACE).await
    }

    /// Starts the controller again, on the same config and store, after
    /// it was stopped or killed; refused while it runs (frozen included).
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        match self.running_pid() {
            Some(pid) if process::state(pid) == process::State::Frozen => anyhow::bail!(
                "the controller is frozen (SIGSTOP, pid {pid}); send it SIGCONT instead"
            ),
            Some(pid) => anyhow::bail!("the controller already runs (pid {pid})"),
            None => self.spawn().await,
        }
    }

    /// Waits until the controller answers `ListNodes` as `certs`.
    pub async fn wait_serving(&self, certs: &CertFiles, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("the controller to answer at {}", self.addr);
        wait_for(what, timeout, || async {
            let attempt = async {
                let mut c = self.client_as(certs).await?;
                c.list_nodes(v1::ListNodesRequest::default()).await?;
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
