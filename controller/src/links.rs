//! One long-lived mTLS link per agent: its `WatchNode` stream feeds the
//! fleet view, its experiment events feed the reconciler, and its client
//! carries the controller's calls to the board.
//!
//! **Invariant.** A link never decides anything: it reports what the agent
//! says (through [`Report`]) and keeps the latest telemetry. The reconciler
//! decides.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_proto::daemon::{jitter_unit, Backoff};
use fleet_proto::tls::{ClientTls, Expect};
use fleet_proto::v1::{self, agent_client::AgentClient};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::live::{at_or_above_warn, NodeLive, RunHeats, Settings};
use crate::scheduler::Link;

/// What a link tells the reconciler.
#[derive(Debug)]
pub enum Report {
    /// The stream to the agent is (re)established; `experiments` is what
    /// the board runs now, for reconciliation.
    Connected {
        node: String,
        experiments: Vec<v1::ExperimentStatus>,
    },
    /// An experiment on the board changed.
    Status {
        node: String,
        status: v1::ExperimentStatus,
    },
    /// A node event worth recording (thermal state, power mode).
    NodeEvent { node: String, event: v1::NodeEvent },
    /// A run on the node got hot enough that its record should be written
    /// (see [`crate::live::RunHeats`]).
    Heat { node: String },
}

/// What the controller knows live about one node.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub last_seen: Option<Instant>,
    pub last_seen_unix_us: Option<i64>,
    pub info: Option<v1::NodeInfo>,
    pub sample: Option<v1::TelemetrySample>,
    /// The stream is up.
    pub connected: bool,
    /// Counts the connections made to the node: a call's failure on one
    /// connection says nothing of a later one.
    pub connection: u64,
    /// The last power-mode switch the node reported, with the board's time
    /// of it: a sample taken before that time (still on its way when the
    /// event came) does not bring the old mode back.
    pub switched: Option<(i64, v1::PowerMode)>,
    /// The last thermal news that came outside a sample (a thermal event,
    /// a thermal stop the board reported), with the board's time up to
    /// which a sample does not undo it: a sample taken before the news,
    /// still on its way, must not make a hot board look placeable.
    pub thermal_hold: Option<(i64, v1::ThermalState)>,
}

impl Live {
    /// Fresh, stale (unreachable) or down (lost), from the age of the last
    /// message only: a board is unreachable when it has been silent for the
    /// heartbeat timeout, not the moment its stream drops (an agent restart
    /// reconnects well within it, and nothing on the board changed).
    pub fn link(&self, now: Instant, heartbeat: Duration, lost_after: Duration) -> Link {
        match self.last_seen {
            Some(t) if now.duration_since(t) < heartbeat => Link::Fresh,
            Some(t) if now.duration_since(t) < lost_after => Link::Stale,
            // Never heard of since the controller started: unreachable, not
            // lost, until node_lost_after has passed since start.
            None => Link::Stale,
            Some(_) => Link::Down,
        }
    }
}

struct Entry {
    address: String,
    client: AgentClient<Channel>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Links {
    tls: ClientTls,
    interval: Duration,
    reports: mpsc::Sender<Report>,
    entries: Mutex<HashMap<String, Entry>>,
    live: Arc<Mutex<HashMap<String, Live>>>,
    heats: Arc<Mutex<RunHeats>>,
}

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A connection that lasted this long is retried at once when it drops;
/// one that drops sooner backs off, so a board that hangs up at once is not
/// called in a tight loop.
const HEALTHY: Duration = Duration::from_secs(1);

use fleet_proto::unix::now_us;

impl Links {
    pub fn new(tls: ClientTls, interval: Duration, reports: mpsc::Sender<Report>) -> Arc<Self> {
        Arc::new(Links {
            tls,
            interval,
            reports,
            entries: Mutex::new(HashMap::new()),
            live: Arc::new(Mutex::new(HashMap::new())),
            heats: Arc::default(),
        })
    }

    /// The heat of the open runs, as the node streams raise it; the
    /// reconciler says which runs to follow and writes what is due.
    pub fn heats(&self) -> std::sync::MutexGuard<'_, RunHeats> {
        self.heats.lock().expect("not poisoned")
    }

    /// Starts (or restarts, when the address changed) the link to `node`.
    pub fn ensure(&self, node: &str, address: &str) {
        let mut entries = self.entries.lock().expect("not poisoned");
        if entries.get(node).is_some_and(|e| e.address == address) {
            return;
        }
        if let Some(old) = entries.remove(node) {
            old.task.abort();
        }
        let channel = match self
            .tls
            .connect_lazy(address, Expect::Agent(node.to_owned()))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(node, address, error = %e, "bad agent address");
                return;
            }
        };
        let client = AgentClient::new(channel);
        let task = tokio::spawn(run_link(
            node.to_owned(),
            client.clone(),
            self.interval,
            self.reports.clone(),
            self.live.clone(),
            self.heats.clone(),
        ));
        self.live
            .lock()
            .expect("not poisoned")
            .entry(node.to_owned())
            .or_default();
        entries.insert(
            node.to_owned(),
            Entry {
                address: address.to_owned(),
                client,
                task,
            },
        );
    }

    pub fn remove(&self, node: &str) {
        if let Some(e) = self.entries.lock().expect("not poisoned").remove(node) {
            e.task.abort();
        }
        self.live.lock().expect("not poisoned").remove(node);
        self.heats().forget_node(node);
    }

    pub fn client(&self, node: &str) -> Option<AgentClient<Channel>> {
        self.entries
            .lock()
            .expect("not poisoned")
            .get(node)
            .map(|e| e.client.clone())
    }

    pub fn live(&self, node: &str) -> Option<Live> {
        self.live.lock().expect("not poisoned").get(node).cloned()
    }

    /// See [`hold_critical`].
    pub fn hold_critical(&self, node: &str) {
        if let Some(l) = self.live.lock().expect("not poisoned").get_mut(node) {
            hold_critical(l);
        }
    }

    /// The connection to `node` now, for [`Links::connection_lost`].
    pub fn connection(&self, node: &str) -> Option<u64> {
        self.live
            .lock()
            .expect("not poisoned")
            .get(node)
            .map(|l| l.connection)
    }

    /// A call on connection `connection` of `node` failed because the
    /// connection itself failed (a call cut off, a board that cannot be
    /// dialled): the node takes no new work until its link has reconnected
    /// or the stream shows it is still up. Its stream may take a while to
    /// notice (it has to read the end of the connection), and meanwhile
    /// every placement there would fail the same way at once.
    pub fn connection_lost(&self, node: &str, connection: u64) {
        if let Some(l) = self.live.lock().expect("not poisoned").get_mut(node) {
            if l.connection == connection && l.connected {
                tracing::debug!(%node, "a call found the connection down; no placement until it is back");
                l.connected = false;
            }
        }
    }

    pub fn all_live(&self) -> HashMap<String, Live> {
        self.live.lock().expect("not poisoned").clone()
    }
}

async fn run_link(
    node: String,
    mut client: AgentClient<Channel>,
    interval: Duration,
    reports: mpsc::Sender<Report>,
    live: Arc<Mutex<HashMap<String, Live>>>,
    heats: Arc<Mutex<RunHeats>>,
) {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
    loop {
        let mut connected_at = None;
        match follow(
            &node,
            &mut client,
            interval,
            &reports,
            &live,
            &heats,
            &mut connected_at,
        )
        .await
        {
            Ok(()) => tracing::info!(%node, "agent stream ended; reconnecting"),
            Err(e) => tracing::debug!(%node, error = %e, "agent link down; retrying"),
        }
        if let Some(l) = live.lock().expect("not poisoned").get_mut(&node) {
            l.connected = false;
        }
        // A dropped stream that had been up (an agent restart, a controller
        // behind a blip) is called again at once, then with backoff.
        if connected_at.is_some_and(|t: Instant| t.elapsed() >= HEALTHY) {
            backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX);
            continue;
        }
        tokio::time::sleep(backoff.next(jitter_unit())).await;
    }
}

/// One connection's life: node info, the board's experiments, then the
/// stream until it breaks.
async fn follow(
    node: &str,
    client: &mut AgentClient<Channel>,
    interval: Duration,
    reports: &mpsc::Sender<Report>,
    live: &Arc<Mutex<HashMap<String, Live>>>,
    heats: &Arc<Mutex<RunHeats>>,
    connected_at: &mut Option<Instant>,
) -> Result<(), tonic::Status> {
    let info = client.get_node(v1::GetNodeRequest {}).await?.into_inner();
    // Subscribe before listing so no change falls between the two.
    let mut stream = client
        .watch_node(v1::WatchNodeRequest {
            interval_ms: interval.as_millis() as u32,
        })
        .await?
        .into_inner();
    let experiments = client
        .list_experiments(v1::ListExperimentsRequest {})
        .await?
        .into_inner()
        .experiments;
    {
        let mut map = live.lock().expect("not poisoned");
        let l = map.entry(node.to_owned()).or_default();
        l.info = Some(info);
        // A sample of the previous connection may be long out of date
        // (the board got hot while the link was down): wait for a new one.
        l.sample = None;
        l.thermal_hold = None;
        l.switched = None;
        l.connected = true;
        l.connection += 1;
        l.last_seen = Some(Instant::now());
        l.last_seen_unix_us = Some(now_us());
    }
    if reports
        .send(Report::Connected {
            node: node.to_owned(),
            experiments,
        })
        .await
        .is_err()
    {
        return Ok(());
    }
    tracing::info!(%node, "agent connected");
    *connected_at = Some(Instant::now());
    while let Some(update) = stream.next().await {
        let update = update?;
        let heat_due = {
            let mut map = live.lock().expect("not poisoned");
            let l = map.entry(node.to_owned()).or_default();
            l.last_seen = Some(Instant::now());
            l.last_seen_unix_us = Some(now_us());
            // Still streaming: a call that took the connection for lost
            // (see `Links::connection_lost`) was wrong.
            l.connected = true;
            if apply_update(l, &update) {
                let warn_c = l.info.as_ref().map(|i| i.warn_c);
                l.sample.as_ref().is_some_and(|s| {
                    heats.lock().expect("not poisoned").observe(
                        node,
                        s.hottest_c,
                        at_or_above_warn(s.thermal_state, s.hottest_c, warn_c),
                    )
                })
            } else {
                false
            }
        };
        if heat_due
            && reports
                .send(Report::Heat {
                    node: node.to_owned(),
                })
                .await
                .is_err()
        {
            return Ok(());
        }
        let report = match update.update {
            Some(v1::node_update::Update::Event(ev)) => match ev.kind {
                Some(v1::node_event::Kind::Experiment(e)) => {
                    e.status.map(|status| Report::Status {
                        node: node.to_owned(),
                        status,
                    })
                }
                Some(_) => Some(Report::NodeEvent {
                    node: node.to_owned(),
                    event: ev,
                }),
                None => None,
            },
            _ => None,
        };
        if let Some(r) = report {
            if reports.send(r).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Applies one update of a node's stream to what the controller knows live
/// of it; true when the board's temperature or thermal state may have
/// changed (a sample, a thermal event).
fn set_thermal(s: &mut v1::TelemetrySample, state: v1::ThermalState) {
    s.thermal_state = state as i32;
    s.accepting = state == v1::ThermalState::Normal;
}

/// The board's guard stopped work for heat: until a sample newer than the
/// last one says otherwise, the board is critical and takes nothing. The
/// stop's report may come before the samples that show why.
/// (Without a sample yet, the board is not placeable anyway.)
fn hold_critical(l: &mut Live) {
    if let Some(s) = l.sample.as_mut() {
        l.thermal_hold = Some((s.timestamp_unix_us, v1::ThermalState::Critical));
        set_thermal(s, v1::ThermalState::Critical);
    }
}

fn apply_update(l: &mut Live, update: &v1::NodeUpdate) -> bool {
    match &update.update {
        Some(v1::node_update::Update::Sample(s)) => {
            let mut s = s.clone();
            match &l.switched {
                // Taken before the last switch: its mode is the old one.
                Some((at, mode)) if s.timestamp_unix_us < *at => {
                    s.power_mode = Some(mode.clone());
                }
                _ => l.switched = None,
            }
            match l.thermal_hold {
                // Taken before the news: the news stands.
                Some((until, state)) if s.timestamp_unix_us <= until => set_thermal(&mut s, state),
                _ => l.thermal_hold = None,
            }
            l.sample = Some(s);
            true
        }
        Some(v1::node_update::Update::Event(ev)) => match &ev.kind {
            // A thermal change is news before the next sample: the
            // scheduler must not place on a board that just got hot.
            Some(v1::node_event::Kind::Thermal(t)) => {
                let state = t.to();
                l.thermal_hold = Some((ev.timestamp_unix_us.saturating_sub(1), state));
                if let Some(s) = l.sample.as_mut() {
                    set_thermal(s, state);
                    if let Some(c) = t.celsius {
                        s.hottest_c = Some(s.hottest_c.map_or(c, |h| h.max(c)));
                    }
                }
                true
            }
            // So is a power-mode switch: the controller may have asked for
            // it just before starting an experiment, and the board runs the
            // new mode from now on.
            Some(v1::node_event::Kind::PowerMode(p)) => {
                if let Some(to) = &p.to {
                    if let Some(s) = l.sample.as_mut() {
                        s.power_mode = Some(to.clone());
                    }
                    if let Some(i) = l.info.as_mut() {
                        i.current_power_mode = Some(to.clone());
                    }
                    l.switched = Some((ev.timestamp_unix_us, to.clone()));
                }
                false
            }
            _ => false,
        },
        None => false,
    }
}

/// The live state of a node as the wire and the scheduler take it.
pub fn node_live(l: &Live, now: Instant, s: &Settings) -> NodeLive {
    NodeLive {
        link: l.link(now, s.heartbeat, s.lost_after),
        last_seen_unix_us: l.last_seen_unix_us,
        info: l.info.clone(),
        sample: l.sample.clone(),
    }
}

/// A node's live state as placement sees it: a board whose stream is down
/// takes no new work, even while it is not yet silent for long enough to
/// count as unreachable (the start would have no stream to report on).
pub fn placement_live(l: &Live, now: Instant, s: &Settings) -> NodeLive {
    let mut v = node_live(l, now, s);
    if v.link == Link::Fresh && !l.connected {
        v.link = Link::Down;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(id: u32, name: &str) -> v1::PowerMode {
        v1::PowerMode {
            id,
            name: name.into(),
        }
    }

    fn sample(at: i64, m: v1::PowerMode, hottest: f64) -> v1::NodeUpdate {
        v1::NodeUpdate {
            update: Some(v1::node_update::Update::Sample(v1::TelemetrySample {
                timestamp_unix_us: at,
                power_mode: Some(m),
                hottest_c: Some(hottest),
                thermal_state: v1::ThermalState::Normal as i32,
                accepting: true,
                ..Default::default()
            })),
        }
    }

    fn event(at: i64, kind: v1::node_event::Kind) -> v1::NodeUpdate {
        v1::NodeUpdate {
            update: Some(v1::node_update::Update::Event(v1::NodeEvent {
                timestamp_unix_us: at,
                kind: Some(kind),
            })),
        }
    }

    fn switch(at: i64, from: v1::PowerMode, to: v1::PowerMode) -> v1::NodeUpdate {
        event(
            at,
            v1::node_event::Kind::PowerMode(v1::PowerModeChanged {
                from: Some(from),
                to: Some(to),
                reason: "requested".into(),
            }),
        )
    }

    fn live_mode(l: &Live) -> (Option<String>, Option<String>) {
        (
            l.sample
                .as_ref()
                .and_then(|s| s.power_mode.as_ref())
                .map(|m| m.name.clone()),
            l.info
                .as_ref()
                .and_then(|i| i.current_power_mode.as_ref())
                .map(|m| m.name.clone()),
        )
    }

    #[test]
    fn a_power_mode_switch_shows_at_once_and_an_older_sample_does_not_undo_it() {
        let mut l = Live {
            info: Some(v1::NodeInfo {
                current_power_mode: Some(mode(4, "40W")),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(apply_update(&mut l, &sample(100, mode(4, "40W"), 37.0)));
        assert!(!apply_update(
            &mut l,
            &switch(200, mode(4, "40W"), mode(3, "25W"))
        ));
        assert_eq!(live_mode(&l), (Some("25W".into()), Some("25W".into())));
        // A sample taken before the switch, arriving after it.
        apply_update(&mut l, &sample(150, mode(4, "40W"), 37.0));
        assert_eq!(live_mode(&l).0.as_deref(), Some("25W"));
        // A sample taken after it is the news from then on.
        apply_update(&mut l, &sample(300, mode(3, "25W"), 37.0));
        assert_eq!(l.switched, None);
        apply_update(&mut l, &sample(400, mode(1, "10W"), 37.0));
        assert_eq!(live_mode(&l).0.as_deref(), Some("10W"));
    }

    #[test]
    fn a_thermal_event_raises_the_live_reading() {
        let mut l = Live::default();
        apply_update(&mut l, &sample(100, mode(4, "40W"), 50.0));
        assert!(apply_update(
            &mut l,
            &event(
                150,
                v1::node_event::Kind::Thermal(v1::ThermalChanged {
                    from: v1::ThermalState::Normal as i32,
                    to: v1::ThermalState::Warn as i32,
                    zone: "cpu".into(),
                    celsius: Some(80.0),
                    action: String::new(),
                }),
            )
        ));
        let s = l.sample.as_ref().unwrap();
        assert_eq!(s.hottest_c, Some(80.0));
        assert_eq!(s.thermal_state, v1::ThermalState::Warn as i32);
        assert!(!s.accepting);
        // A sample taken before the event, still on its way, does not make
        // the board placeable again; one taken after it says what it says.
        apply_update(&mut l, &sample(140, mode(4, "40W"), 50.0));
        let s = l.sample.as_ref().unwrap();
        assert_eq!(
            (s.thermal_state, s.accepting),
            (v1::ThermalState::Warn as i32, false)
        );
        apply_update(&mut l, &sample(160, mode(4, "40W"), 50.0));
        let s = l.sample.as_ref().unwrap();
        assert_eq!(
            (s.thermal_state, s.accepting),
            (v1::ThermalState::Normal as i32, true)
        );
    }

    #[test]
    fn a_thermal_stop_holds_the_board_critical_until_a_newer_sample() {
        let mut l = Live::default();
        apply_update(&mut l, &sample(100, mode(4, "40W"), 50.0));
        hold_critical(&mut l);
        let critical = |l: &Live| {
            let s = l.sample.as_ref().unwrap();
            (s.thermal_state, s.accepting) == (v1::ThermalState::Critical as i32, false)
        };
        assert!(critical(&l));
        // The same reading again (or an older one) does not undo the stop.
        apply_update(&mut l, &sample(100, mode(4, "40W"), 50.0));
        assert!(critical(&l));
        apply_update(&mut l, &sample(101, mode(4, "40W"), 50.0));
        assert!(!critical(&l));
        assert_eq!(l.thermal_hold, None);
        // Before any sample there is nothing to hold against: the first
        // sample says what it says.
        let mut l = Live::default();
        hold_critical(&mut l);
        assert_eq!(l.thermal_hold, None);
        apply_update(&mut l, &sample(5, mode(4, "40W"), 50.0));
        assert!(!critical(&l));
    }
}
