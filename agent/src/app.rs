//! The agent's start-up, in boot order, and its long-running tasks.
//!
//! 1. connect to systemd (D-Bus) and open the store;
//! 2. re-adopt what systemd runs and what the store remembers;
//! 3. follow systemd's signals;
//! 4. load the TLS identity and bind the gRPC listener;
//! 5. tell systemd READY=1 and serve until SIGTERM/SIGINT.
//!
//! Stopping the agent never stops an experiment.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use fleet_proto::tls::{self, ServerTls, TlsFiles};
use fleet_proto::v1;
use tonic::transport::Server;

use crate::config::AgentConfig;
use crate::experiments::{Experiments, Paths};
use crate::grpc::{AgentService, AuthzLayer};
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
}

impl App {
    pub async fn build(config: AgentConfig) -> anyhow::Result<App> {
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
        })
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

        let tls_cfg = &self.config.tls;
        let mut files = TlsFiles::new(&tls_cfg.ca, &tls_cfg.cert, &tls_cfg.key);
        if let Some(crl) = &tls_cfg.crl {
            files = files.with_crl(crl);
        }
        let server_tls = ServerTls::from_files(files)?;
        let listener = tokio::net::TcpListener::bind(self.config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.config.listen))?;
        let bound = listener.local_addr()?;
        write_listen_addr(&self.config.state_dir.join(LISTEN_ADDR_FILE), bound)?;
        tracing::info!(%bound, identity = %server_tls.identity(), "serving mTLS gRPC");

        {
            let server_tls = server_tls.clone();
            tokio::spawn(async move {
                let Ok(mut hup) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                else {
                    return;
                };
                while hup.recv().await.is_some() {
                    match server_tls.reload() {
                        Ok(identity) => tracing::info!(%identity, "reloaded certificates"),
                        Err(e) => {
                            tracing::error!(error = %crate::grpc::error_chain(&e), "certificate reload failed; keeping the old ones")
                        }
                    }
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
        let server = Server::builder()
            .layer(AuthzLayer)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(v1::agent_server::AgentServer::new(service))
            .serve_with_incoming_shutdown(tls::incoming(listener, server_tls), shutdown);
        tokio::select! {
            served = server => served?,
            watched = watcher => {
                // The bus went away (the manager restarted, or D-Bus did).
                // Exit so systemd restarts the agent on a fresh connection;
                // the experiments are systemd's and keep running.
                let why = match watched {
                    Ok(Ok(())) => "the D-Bus connection to systemd closed".to_owned(),
                    Ok(Err(e)) => crate::grpc::error_chain(&e),
                    Err(e) => e.to_string(),
                };
                anyhow::bail!("lost systemd: {why}");
            }
        }
        sampler.abort();
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
