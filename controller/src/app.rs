//! The controller's start-up, in order:
//!
//! 1. open the sled store (everything acknowledged before a crash is there);
//! 2. register the nodes of the config file;
//! 3. start one link per known node (they reconcile as they connect);
//! 4. start the reconciler, and the metrics listener if configured;
//! 5. load the TLS identity, bind the listener, READY=1, serve.
//!
//! A restart never restarts an experiment: links adopt what runs.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use fleet_proto::spec::{LabelKey, LabelValue, NodeName};
use fleet_proto::tls::{self, ClientTls, ServerTls, TlsFiles};
use fleet_proto::v1;
use tokio::sync::{mpsc, Notify};
use tonic::transport::Server;

use crate::config::ControllerConfig;
use crate::grpc::{authz_layer, ControllerService};
use crate::links::Links;
use crate::metrics::Metrics;
use crate::model::NodeSource;
use crate::reconciler::{Reconciler, Settings};
use crate::store::{NewNode, Store};

/// File in the state directory holding the bound address.
pub const LISTEN_ADDR_FILE: &str = "listen-addr";

pub async fn run(
    config: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
    let store = Store::open(&config.state_dir.join("controller.sled"))?;
    tracing::info!(
        experiments = store.experiments()?.len(),
        last_event = store.last_event_seq(),
        "store opened"
    );
    for n in &config.nodes {
        let labels = n
            .labels
            .iter()
            .map(|(k, v)| Ok((LabelKey::new(k.clone())?, LabelValue::new(v.clone())?)))
            .collect::<Result<_, fleet_proto::spec::InvalidValue>>()
            .with_context(|| format!("labels of node {}", n.name))?;
        store
            .ensure_node(
                &NewNode {
                    name: NodeName::new(n.name.clone())?,
                    address: n.address.clone(),
                    source: NodeSource::Config,
                    labels,
                    cordoned: false,
                },
                "config",
            )
            .await?;
    }

    let mut files = TlsFiles::new(&config.tls.ca, &config.tls.cert, &config.tls.key);
    if let Some(crl) = &config.tls.crl {
        files = files.with_crl(crl);
    }
    let server_tls = ServerTls::from_files(files.clone())?;
    let client_tls = ClientTls::new(files)?;

    let (report_tx, report_rx) = mpsc::channel(4096);
    let links = Links::new(client_tls.clone(), config.telemetry_interval(), report_tx);
    for n in store.nodes()? {
        links.ensure(n.name.as_str(), &n.address);
    }
    let poke = Arc::new(Notify::new());
    let settings = Settings {
        heartbeat: config.heartbeat_timeout(),
        lost_after: config.node_lost_after(),
        tick: config.tick(),
        slots_per_node: config.slots_per_node,
    };
    let metrics = Arc::new(Metrics::default());
    let (reconciler, done_rx) =
        Reconciler::new(store.clone(), links.clone(), settings, poke.clone());
    let reconcile = tokio::spawn(
        reconciler
            .with_metrics(metrics.clone())
            .run(report_rx, done_rx),
    );
    let metrics_task = config.metrics_listen.map(|listen| {
        let settings = Arc::new(Settings {
            heartbeat: config.heartbeat_timeout(),
            lost_after: config.node_lost_after(),
            tick: config.tick(),
            slots_per_node: config.slots_per_node,
        });
        let serve = crate::metrics::serve(listen, metrics, store.clone(), links.clone(), settings);
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(%listen, error = %e, "metrics listener failed");
            }
        })
    });

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let addr_file = config.state_dir.join(LISTEN_ADDR_FILE);
    std::fs::write(addr_file.with_extension("tmp"), bound.to_string())?;
    std::fs::rename(addr_file.with_extension("tmp"), &addr_file)?;
    tracing::info!(%bound, identity = %server_tls.identity(), "serving mTLS gRPC");

    {
        let server_tls = server_tls.clone();
        let client_tls = client_tls.clone();
        let config_file = config.file.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                fleet_proto::daemon::reload_tls(
                    config_file.as_deref(),
                    |path| ControllerConfig::from_file(path).map(|c| c.tls),
                    &server_tls,
                    Some(&client_tls),
                );
            }
        });
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<v1::controller_server::ControllerServer<ControllerService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = ControllerService {
        store: store.clone(),
        links: links.clone(),
        poke,
        settings: Arc::new(Settings {
            heartbeat: config.heartbeat_timeout(),
            lost_after: config.node_lost_after(),
            tick: config.tick(),
            slots_per_node: config.slots_per_node,
        }),
    };
    sd_notify("READY=1");
    let watchdog = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.parse::<u64>().ok())
        .map(|usec| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_micros(usec) / 2);
                loop {
                    tick.tick().await;
                    sd_notify("WATCHDOG=1");
                }
            })
        });
    let (shutdown, drain) = fleet_proto::daemon::drained(shutdown, fleet_proto::daemon::DRAIN);
    let server = Server::builder()
        .layer(authz_layer(server_tls.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(v1::controller_server::ControllerServer::new(service))
        .serve_with_incoming_shutdown(tls::incoming(listener, server_tls), shutdown);
    let served = tokio::select! {
        served = server => served,
        () = drain => {
            tracing::info!(drain = ?fleet_proto::daemon::DRAIN, "closing the streams still open after the drain period");
            Ok(())
        }
    };
    reconcile.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(m) = metrics_task {
        m.abort();
    }
    served?;
    tracing::info!("stopped; experiments keep running on their boards");
    Ok(())
}

pub use fleet_proto::daemon::sd_notify;
