//! Prometheus text metrics on an optional plain-HTTP port: queue depth,
//! placements, enqueue → placed latency, and nodes by connection state.
//!
//! The reconciler counts placements into a shared [`Metrics`]; the queue
//! and the nodes are read from the store and the links at each scrape.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fleet_proto::v1;

use crate::links::node_live;
use crate::links::Links;
use crate::live::Settings;
use crate::model::UnixMicros;
use crate::store::{Store, StoreError};

/// Upper bounds of the latency histogram, in seconds: from one pass on an
/// idle fleet to a long wait for a free board.
pub const LATENCY_BUCKETS_S: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0,
];

/// Connection states, as ListNodes shows them.
const CONNECTIONS: [&str; 4] = ["pending", "connected", "unreachable", "lost"];

/// Counters the reconciler updates; cheap to share.
#[derive(Debug, Default)]
pub struct Metrics {
    placements: AtomicU64,
    /// Observations at or below each bound of [`LATENCY_BUCKETS_S`] (not
    /// cumulative; summed when rendered).
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// One stored placement. `waited` is the time from submission to this
    /// placement, for a first placement only: a requeued experiment's wait
    /// since its submission includes its earlier runs.
    pub fn placed(&self, waited: Option<UnixMicros>) {
        self.placements.fetch_add(1, Ordering::Relaxed);
        let Some(us) = waited else { return };
        let us = u64::try_from(us).unwrap_or(0);
        // Microseconds to seconds; precision past 2^53 µs does not matter.
        #[allow(clippy::cast_precision_loss)]
        let secs = us as f64 / 1e6;
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// What one scrape shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub queue_depth: usize,
    pub placements_total: u64,
    /// Cumulative counts per bound of [`LATENCY_BUCKETS_S`].
    pub latency_buckets: Vec<u64>,
    pub latency_count: u64,
    pub latency_sum_s: f64,
    /// Nodes per connection state, in the order of `CONNECTIONS`.
    pub nodes: [usize; 4],
}

impl Snapshot {
    pub fn read(
        metrics: &Metrics,
        store: &Store,
        links: &Links,
        settings: &Settings,
    ) -> Result<Self, StoreError> {
        let now = tokio::time::Instant::now();
        let live = links.all_live();
        let mut nodes = [0; 4];
        for n in store.nodes()? {
            let l = live
                .get(n.name.as_str())
                .map(|l| node_live(l, now, settings));
            let i = match crate::wire::connection(l.as_ref()) {
                v1::NodeConnection::Unspecified | v1::NodeConnection::Pending => 0,
                v1::NodeConnection::Connected => 1,
                v1::NodeConnection::Unreachable => 2,
                v1::NodeConnection::Lost => 3,
            };
            nodes[i] += 1;
        }
        let mut cumulative = 0;
        let latency_buckets = metrics
            .buckets
            .iter()
            .map(|b| {
                cumulative += b.load(Ordering::Relaxed);
                cumulative
            })
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let latency_sum_s = metrics.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        Ok(Self {
            queue_depth: store.pending()?.len(),
            placements_total: metrics.placements.load(Ordering::Relaxed),
            latency_buckets,
            latency_count: metrics.latency_count.load(Ordering::Relaxed),
            latency_sum_s,
            nodes,
        })
    }
}

/// The text exposition (format 0.0.4) of one snapshot.
pub fn render(s: &Snapshot) -> String {
    fn head(out: &mut String, name: &str, kind: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    let mut out = String::new();
    head(
        &mut out,
        "fleet_controller_queue_depth",
        "gauge",
        "Experiments queued, waiting for a placement.",
    );
    let _ = writeln!(out, "fleet_controller_queue_depth {}", s.queue_depth);
    head(
        &mut out,
        "fleet_controller_placements_total",
        "counter",
        "Placements stored (flushed) since the controller started.",
    );
    let _ = writeln!(
        out,
        "fleet_controller_placements_total {}",
        s.placements_total
    );
    head(
        &mut out,
        "fleet_controller_enqueue_to_placed_seconds",
        "histogram",
        "Time from submission to first placement, by the store's clock.",
    );
    for (bound, count) in LATENCY_BUCKETS_S.iter().zip(&s.latency_buckets) {
        let _ = writeln!(
            out,
            "fleet_controller_enqueue_to_placed_seconds_bucket{{le=\"{bound}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "fleet_controller_enqueue_to_placed_seconds_bucket{{le=\"+Inf\"}} {}\n\
         fleet_controller_enqueue_to_placed_seconds_sum {}\n\
         fleet_controller_enqueue_to_placed_seconds_count {}",
        s.latency_count, s.latency_sum_s, s.latency_count
    );
    head(
        &mut out,
        "fleet_controller_nodes",
        "gauge",
        "Known nodes by connection state, as ListNodes shows it.",
    );
    for (state, n) in CONNECTIONS.iter().zip(s.nodes) {
        let _ = writeln!(out, "fleet_controller_nodes{{connection=\"{state}\"}} {n}");
    }
    out
}

/// Serves `GET /metrics` (other paths answer 404) until the task is
/// dropped.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    store: Store,
    links: Arc<Links>,
    settings: Arc<Settings>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    fleet_proto::daemon::serve_metrics(listener, move || {
        Snapshot::read(&metrics, &store, &links, &settings)
            .map(|s| render(&s))
            .map_err(|e| {
                format!(
                    "cannot read the store: {}",
                    fleet_proto::daemon::error_chain(&e)
                )
            })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_cumulative_buckets_and_node_states() {
        let m = Metrics::default();
        m.placed(Some(3_000)); // 3 ms
        m.placed(Some(2_000_000)); // 2 s
        m.placed(None); // a requeued experiment: counted, not timed
        let cumulative = {
            let mut c = 0;
            m.buckets
                .iter()
                .map(|b| {
                    c += b.load(Ordering::Relaxed);
                    c
                })
                .collect()
        };
        let s = Snapshot {
            queue_depth: 7,
            placements_total: m.placements.load(Ordering::Relaxed),
            latency_buckets: cumulative,
            latency_count: m.latency_count.load(Ordering::Relaxed),
            latency_sum_s: 2.003,
            nodes: [1, 2, 0, 1],
        };
        let text = render(&s);
        for line in [
            "fleet_controller_queue_depth 7",
            "fleet_controller_placements_total 3",
            "fleet_controller_enqueue_to_placed_seconds_bucket{le=\"0.005\"} 1",
            "fleet_controller_enqueue_to_placed_seconds_bucket{le=\"1\"} 1",
            "fleet_controller_enqueue_to_placed_seconds_bucket{le=\"5\"} 2",
            "fleet_controller_enqueue_to_placed_seconds_bucket{le=\"+Inf\"} 2",
            "fleet_controller_enqueue_to_placed_seconds_count 2",
            "fleet_controller_enqueue_to_placed_seconds_sum 2.003",
            "fleet_controller_nodes{connection=\"connected\"} 2",
            "fleet_controller_nodes{connection=\"lost\"} 1",
            "# TYPE fleet_controller_enqueue_to_placed_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
