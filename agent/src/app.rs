//! The agent's start-up, in boot order, and its long-running tasks.
//!
//! 1. load the TLS identity and check that it names this board's node;
//! 2. connect to systemd (D-Bus) and open the store;
//! 3. re-adopt what systemd runs and what the store remembers;
//! 4. follow systemd's signals;
//! 5. bind the gRPC listener;
//! 6. tell systemd READY=1, join the controller in the background (when one
//!    is configured) and serve until SIGTERM/SIGINT.
//!
//! Stopping the agent never stops an experiment.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use fleet_proto::tls::{self, ClientTls, ServerTls, TlsFiles};
use fleet_proto::v1;
use tonic::transport::Server;

use crate::config::{AgentConfig, JoinSettings};
use crate::experiments::{Experiments, Paths};
use crate::grpc::{authz_layer, AgentService};
use crate::node::{Gate, Node};
use crate::store::Store;
use crate::systemd::Systemd;

/// File in the state directory holding the bound gRPC address, for tools and
/// tests that let the agent pick its port.
pub const LISTEN_ADDR_FILE: &str = "listen-addr";

pub struct App {
    pub experiments: Arc<Experiments>,
    pub node: Arc<Node>,
    config: AgentConfig,
    files: TlsFiles,
    server_tls: ServerTls,
    join: Option<JoinSettings>,
}

/// The certificate names another node (or no agent at all) than the
/// config's `node`: the agent refuses to start, since the controller would
/// know the board under the certificate's name and the board would call
/// itself by the config's.
#[derive(Debug, thiserror::Error)]
#[error("the certificate {cert} names {identity}, but this board's node is \"{node}\" (`node` in the agent config): issue a certificate for it (fleetctl pki issue agent {node}) or set node to the name the certificate gives")]
pub struct IdentityMismatch {
    pub cert: String,
    pub identity: String,
    pub node: String,
}

impl App {
    pub async fn build(config: AgentConfig) -> anyhow::Result<App> {
        let tls_cfg = &config.tls;
        let mut files = TlsFiles::new(&tls_cfg.ca, &tls_cfg.cert, &tls_cfg.key);
        if let Some(crl) = &tls_cfg.crl {
            files = files.with_crl(crl);
        }
        let server_tls = ServerTls::from_files(files.clone())?;
        let identity = server_tls.identity();
        if identity.agent_node() != Some(config.node.as_str()) {
            return Err(IdentityMismatch {
                cert: tls_cfg.cert.display().to_string(),
                identity: identity.to_string(),
                node: config.node.clone(),
            }
            .into());
        }
        std::fs::create_dir_all(&config.state_dir).with_context(|| {
            format!(
                "cannot create the state directory {}",
                config.state_dir.display()
            )
        })?;
        let systemd = Systemd::connect(config.systemd).await?;
        tracing::info!(bus = ?config.systemd, version = %systemd.version().await, "connected to systemd");
        let store = Store::open(&config.state_dir)?;
        let paths = Paths {
            unit_dir: config.unit_dir.clone(),
            runtime_unit_dir: config.runtime_unit_dir.clone(),
            state_dir: config.state_dir.clone(),
            kmsg: config.kmsg.clone(),
            agent_exe: std::env::current_exe().context("cannot find the agent's own executable")?,
        };
        let gate = Arc::new(Gate::default());
        let experiments = Experiments::new(systemd, store, paths, gate.clone());
        let node = Node::new(
            config.node.clone(),
            config.hardware.clone(),
            config.guard.clone(),
            &config.sampling,
            gate,
        )
        .await?;
        Ok(App {
            experiments,
            node,
            config,
            files,
            server_tls,
            join: None,
        })
    }

    /// Joins this controller once serving (see [`crate::join`]); without
    /// it the agent joins nothing.
    pub fn with_join(mut self, join: Option<JoinSettings>) -> Self {
        self.join = join;
        self
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let adopted = self
            .experiments
            .adopt(&format!("{}@*.service", crate::unit_file::TEMPLATE))
            .await?;
        tracing::info!(adopted, "re-adopted experiments");
        let watcher = tokio::spawn(self.experiments.clone().watch());
        // The sampler and the thermal guard run from the start, with or
        // without subscribers or a controller.
        let sampler = tokio::spawn(self.node.clone().run(self.experiments.clone()));
        let metrics = self.config.metrics_listen.map(|listen| {
            let node = self.node.clone();
            let name = self.config.node.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(listen, node, name).await {
                    tracing::error!(%listen, error = %e, "metrics listener failed");
                }
            })
        });

        let server_tls = self.server_tls.clone();
        // The join's client TLS: the same files, presented as a client.
        let client_tls = match &self.join {
            Some(_) => match ClientTls::new(self.files.clone()) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %fleet_proto::daemon::error_chain(&e), "cannot join the controller: the agent certificate does not work as a client certificate; serving without joining");
                    None
                }
            },
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(self.config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.config.listen))?;
        let bound = listener.local_addr()?;
        write_listen_addr(&self.config.state_dir.join(LISTEN_ADDR_FILE), bound)?;
        tracing::info!(%bound, identity = %server_tls.identity(), "serving mTLS gRPC");

        {
            let server_tls = server_tls.clone();
            let client_tls = client_tls.clone();
            let config_file = self.config.file.clone();
            tokio::spawn(async move {
                let Ok(mut hup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    return;
                };
                while hup.recv().await.is_some() {
                    fleet_proto::daemon::reload_tls(
                        config_file.as_deref(),
                        |path| AgentConfig::from_file(path).map(|c| c.tls),
                        &server_tls,
                        client_tls.as_ref(),
                    );
                }
            });
        }

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<v1::agent_server::AgentServer<AgentService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let service = AgentService {
            experiments: self.experiments.clone(),
            node: self.node.clone(),
            journalctl: self.config.journalctl.clone(),
            target: format!("{}.target", crate::unit_file::TEMPLATE),
        };
        sd_notify("READY=1");
        let watchdog = spawn_watchdog(self.node.clone());
        // The listener is bound: a controller dialling back at once finds it.
        // Serving never waits for the join.
        let joiner = match (self.join.clone(), client_tls) {
            (Some(settings), Some(tls)) => {
                let advertise = crate::join::Advertise::new(settings.advertise.as_ref(), bound);
                Some(tokio::spawn(
                    crate::join::Joiner {
                        settings,
                        advertise,
                        tls,
                        node: self.node.clone(),
                    }
                    .run(),
                ))
            }
            _ => {
                if self.join.is_none() {
                    tracing::info!("no controller configured (controller.address, FLEET_CONTROLLER): joining none; a controller with this node in its config still connects");
                }
                None
            }
        };
        let (shutdown, drain) = fleet_proto::daemon::drained(shutdown, fleet_proto::daemon::DRAIN);
        let server = Server::builder()
            .layer(authz_layer(server_tls.clone()))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(v1::agent_server::AgentServer::new(service))
            .serve_with_incoming_shutdown(tls::incoming(listener, server_tls), shutdown);
        tokio::select! {
            served = server => served?,
            () = drain => {
                tracing::info!(drain = ?fleet_proto::daemon::DRAIN, "closing the streams still open after the drain period");
            }
            watched = watcher => {
                // The bus went away (the manager restarted, or D-Bus did).
                // Exit so systemd restarts the agent on a fresh connection;
                // the experiments are systemd's and keep running.
                let why = match watched {
                    Ok(Ok(())) => "the D-Bus connection to systemd closed".to_owned(),
                    Ok(Err(e)) => fleet_proto::daemon::error_chain(&e),
                    Err(e) => e.to_string(),
                };
                anyhow::bail!("lost systemd: {why}");
            }
        }
        sampler.abort();
        if let Some(j) = joiner {
            j.abort();
        }
        if let Some(m) = metrics {
            m.abort();
        }
        if let Some(w) = watchdog {
            w.abort();
        }
        tracing::info!("stopped serving; experiments keep running");
        Ok(())
    }
}

/// Feeds systemd's watchdog (`WatchdogSec=`) while the sampler makes
/// progress: a hung sampler (a sysfs read that never returns past its
/// timeout, a deadlock) stops the pings, and systemd restarts the agent.
fn spawn_watchdog(node: Arc<Node>) -> Option<tokio::task::JoinHandle<()>> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let period = std::time::Duration::from_micros(usec);
    let allowed_lag = period.max(node.interval() * 3);
    Some(tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut latest = node.latest();
        let mut last_progress = started;
        let mut last_seen: Option<std::time::SystemTime> = None;
        let mut tick = tokio::time::interval(period / 2);
        loop {
            tick.tick().await;
            let taken = latest
                .borrow_and_update()
                .as_ref()
                .map(|s| s.sample.taken_at);
            if taken != last_seen {
                last_seen = taken;
                last_progress = tokio::time::Instant::now();
            }
            if last_progress.elapsed() <= allowed_lag {
                sd_notify("WATCHDOG=1");
            } else {
                tracing::error!(stalled_for = ?last_progress.elapsed(), "sampler stalled; withholding the watchdog ping");
            }
        }
    }))
}

fn write_listen_addr(path: &std::path::Path, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub use fleet_proto::daemon::sd_notify;
