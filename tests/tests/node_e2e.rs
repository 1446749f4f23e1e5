//! End-to-end tests of the agent's hardware side on a simulated Jetson: a real
//! systemd board, the real `fleet-agent` over mTLS, a copied fixture sysfs
//! whose zones the test pins ([`HwSim::set_zone`]), and `fleet-sim-nvpmodel`
//! as the board's `nvpmodel`. The thermal guard, power modes and the
//! `WatchNode` fan-out are checked the way a controller would see them.
//!
//! The guard here warns at 70 °C, stops work at 80 °C and has a 5 °C
//! hysteresis with a 2 s cooldown; the thermal model rests at 40 °C and can
//! never pass 60 °C by itself, so only pinned zones change the guard's state.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fleet_proto::identity::Role;
use fleet_proto::v1::{
    self, agent_client::AgentClient, node_event, node_update, ExperimentState, ThermalState,
};
use fleet_testbed::agent::{AgentHandle, AgentOptions};
use fleet_testbed::hwsim::{Fixture, HwSim, ThermalParams};
use fleet_testbed::pki::TestPki;
use fleet_testbed::poll::{wait_for, Check};
use fleet_testbed::testbed::{Board, Testbed};
use futures_util::StreamExt;
use tonic::transport::Channel;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(30);
/// The agent's sampling interval in these tests.
const INTERVAL: Duration = Duration::from_millis(200);
const WARN_C: f64 = 70.0;
const CRITICAL_C: f64 = 80.0;
const HYSTERESIS_C: f64 = 5.0;
const COOLDOWN: Duration = Duration::from_secs(2);

struct Rig {
    bed: Testbed,
    board: Board,
    pki: TestPki,
    hw: HwSim,
    agent: AgentHandle,
    admin: AgentClient<Channel>,
}

/// A board copied from `fixture` with the thermal model running and an agent
/// on 127.0.0.<n> sampling every [`INTERVAL`], or `None` when the machine
/// cannot run systemd and the run does not require it.
async fn board(name: &str, n: u8, fixture: Fixture) -> Rig {
    let mut bed = Testbed::new(name).await;
    let board = bed.add_board(&format!("{name}-b")).await.expect("board");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let hw = HwSim::install(&board, fixture, ThermalParams::bounded(40.0, 60.0)).expect("hwsim");
    hw.start_thermal_model(&board).expect("thermal model");
    let options = AgentOptions {
        hardware: Some(hw.clone()),
        guard_toml: Some(format!(
            "[guard]\nwarn_c = {WARN_C:?}\ncritical_c = {CRITICAL_C:?}\nhysteresis_c = {HYSTERESIS_C:?}\ncooldown_s = {}\n",
            COOLDOWN.as_secs()
        )),
        sampling_ms: Some(INTERVAL.as_millis() as u64),
        extra_env: Vec::new(),
        metrics_listen: None,
        settings: Vec::new(),
    };
    let agent = AgentHandle::start_with(
        &board,
        &pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)),
        options,
    )
    .await
    .expect("agent");
    let admin = agent.client(&pki, Role::Admin).await.expect("admin client");
    Rig {
        bed,
        board,
        pki,
        hw,
        agent,
        admin,
    }
}

impl Rig {
    async fn finish(self) {
        drop(self.agent);
        drop(self.hw);
        self.bed.shutdown().await.expect("teardown");
    }
}

/// Everything a `WatchNode` stream delivered, collected in the background.
#[derive(Clone, Default)]
struct Watched {
    samples: Arc<Mutex<Vec<v1::TelemetrySample>>>,
    events: Arc<Mutex<Vec<v1::NodeEvent>>>,
}

impl Watched {
    async fn start(c: &AgentClient<Channel>, interval: Duration) -> Watched {
        let mut stream = c
            .clone()
            .watch_node(v1::WatchNodeRequest {
                interval_ms: interval.as_millis() as u32,
            })
            .await
            .expect("watch node")
            .into_inner();
        let watched = Watched::default();
        let w = watched.clone();
        tokio::spawn(async move {
            while let Some(Ok(update)) = stream.next().await {
                match update.update {
                    Some(node_update::Update::Sample(s)) => w.samples.lock().unwrap().push(s),
                    Some(node_update::Update::Event(e)) => w.events.lock().unwrap().push(e),
                    None => {}
                }
            }
        });
        watched
    }

    fn samples(&self) -> Vec<v1::TelemetrySample> {
        self.samples.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<v1::NodeEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Waits for a sample satisfying `ok` and returns it.
    async fn sample_where(
        &self,
        what: &str,
        ok: impl Fn(&v1::TelemetrySample) -> bool,
    ) -> v1::TelemetrySample {
        wait_for(what, DEADLINE, || {
            let samples = self.samples();
            let found = samples.iter().find(|s| ok(s)).cloned();
            let last = samples.last().map(summary).unwrap_or_default();
            async move {
                Ok(match found {
                    Some(s) => Check::Ready(s),
                    None => Check::not_yet(last),
                })
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits for an event satisfying `ok` and returns it.
    async fn event_where(
        &self,
        what: &str,
        ok: impl Fn(&node_event::Kind) -> bool,
    ) -> v1::NodeEvent {
        wait_for(what, DEADLINE, || {
            let events = self.events();
            let found = events
                .iter()
                .find(|e| e.kind.as_ref().is_some_and(&ok))
                .cloned();
            async move {
                Ok(match found {
                    Some(e) => Check::Ready(e),
                    None => Check::not_yet(format!("events: {events:?}")),
                })
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

fn summary(s: &v1::TelemetrySample) -> String {
    format!(
        "sample at {} thermal={:?} hottest={} {:?} accepting={} mode={:?}",
        s.timestamp_unix_us,
        s.thermal_state(),
        s.hottest_zone,
        s.hottest_c,
        s.accepting,
        s.power_mode.as_ref().map(|m| &m.name)
    )
}

fn zone(s: &v1::TelemetrySample, name: &str) -> Option<f64> {
    s.zones
        .iter()
        .find(|z| z.name == name)
        .and_then(|z| z.celsius)
}

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A shell experiment that reports SIGTERM at once (the trap runs while
/// `wait` waits, not after a `sleep` ends) and exits cleanly.
fn polite(id: &str) -> v1::ExperimentSpec {
    v1::ExperimentSpec {
        id: id.into(),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "trap 'echo got-sigterm; exit 0' TERM; echo ready; while true; do sleep 1 & wait $!; done"
                .into(),
        ],
        lifecycle: Some(v1::Lifecycle {
            restart_delay: "200ms".into(),
            stop_timeout: "5s".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn start(
    c: &mut AgentClient<Channel>,
    spec: v1::ExperimentSpec,
) -> Result<v1::ExperimentStatus, tonic::Status> {
    c.start_experiment(v1::StartExperimentRequest {
        spec: Some(spec),
        epoch: 0,
    })
    .await
    .map(|r| r.into_inner())
}

async fn get(c: &mut AgentClient<Channel>, id: &str) -> v1::ExperimentStatus {
    c.get_experiment(v1::ExperimentRef { id: id.into() })
        .await
        .expect("get")
        .into_inner()
}

async fn wait_state(
    c: &AgentClient<Channel>,
    id: &str,
    what: &str,
    ok: impl Fn(&v1::ExperimentStatus) -> bool,
) -> v1::ExperimentStatus {
    wait_for(what, DEADLINE, || {
        let mut c = c.clone();
        let ok = &ok;
        async move {
            let st = get(&mut c, id).await;
            Ok(if ok(&st) {
                Check::Ready(st)
            } else {
                Check::not_yet(format!(
                    "{:?} ({}/{}) crashes={} disruptions={}",
                    st.state(),
                    st.active_state,
                    st.sub_state,
                    st.crashes_total,
                    st.disruptions_total
                ))
            })
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn log_lines(c: &mut AgentClient<Channel>, id: &str) -> Vec<v1::LogLine> {
    let mut s = c
        .stream_logs(v1::StreamLogsRequest {
            id: id.into(),
            tail: 100,
            since_unix_us: 0,
            follow: false,
        })
        .await
        .expect("logs")
        .into_inner();
    let mut out = Vec::new();
    while let Some(l) = s.next().await {
        out.push(l.expect("line"));
    }
    out
}

/// Waits for a line `text` in the experiment's journal and returns it.
async fn log_line(c: &AgentClient<Channel>, id: &str, text: &str) -> v1::LogLine {
    wait_for(format!("{text:?} in the log of {id}"), DEADLINE, || {
        let mut c = c.clone();
        async move {
            let lines = log_lines(&mut c, id).await;
            let found = lines.iter().find(|l| l.message == text).cloned();
            Ok(match found {
                Some(l) => Check::Ready(l),
                None => Check::not_yet(format!(
                    "{:?}",
                    lines.iter().map(|l| &l.message).collect::<Vec<_>>()
                )),
            })
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_stops_every_experiment_as_a_disruption() {
    let mut f = board("hot", 30, Fixture::AgxOrinR36).await;
    let watch = Watched::start(&f.admin, INTERVAL).await;
    for id in ["alpha", "beta"] {
        start(&mut f.admin, polite(id)).await.unwrap();
    }
    let mut before = Vec::new();
    for id in ["alpha", "beta"] {
        wait_state(&f.admin, id, "the experiment to run", |s| {
            s.state() == ExperimentState::Running
        })
        .await;
        log_line(&f.admin, id, "ready").await;
        before.push(get(&mut f.admin, id).await);
    }
    watch
        .sample_where("a normal sample with both experiments", |s| {
            s.thermal_state() == ThermalState::Normal && s.experiments.len() == 2
        })
        .await;

    let heated_at = SystemTime::now();
    f.hw.set_zone("gpu", 90.0).unwrap();

    for (id, before) in ["alpha", "beta"].into_iter().zip(before) {
        let st = wait_state(&f.admin, id, "the experiment to be disrupted", |s| {
            s.state() == ExperimentState::Disrupted
        })
        .await;
        assert_eq!(st.disruptions_total, 1, "{st:?}");
        assert_eq!(st.crashes_total, before.crashes_total, "{st:?}");
        // The experiment's own SIGTERM handler ran, within two sampling
        // intervals of the zone crossing the limit: at most one interval
        // until the sampler reads it, then the stop.
        let line = log_line(&f.admin, id, "got-sigterm").await;
        let after = Duration::from_micros((line.timestamp_unix_us - unix_us(heated_at)) as u64);
        eprintln!("{id}: SIGTERM handled {after:?} after the zone was heated");
        assert!(
            after <= 2 * INTERVAL,
            "{id} got SIGTERM {after:?} after the zone reached {CRITICAL_C} °C"
        );
    }

    let event = watch
        .event_where(
            "a thermal event to critical",
            |k| matches!(k, node_event::Kind::Thermal(t) if t.to() == ThermalState::Critical),
        )
        .await;
    let Some(node_event::Kind::Thermal(t)) = event.kind else {
        unreachable!()
    };
    assert_eq!(t.from(), ThermalState::Normal, "{t:?}");
    // tj reports the hottest SoC sensor, so it is as hot as the GPU.
    assert!(t.zone == "gpu" || t.zone == "tj", "{t:?}");
    assert_eq!(t.celsius, Some(90.0), "{t:?}");
    assert!(t.action.contains("stopping 2 experiment"), "{t:?}");
    // While critical, nothing new starts.
    let err = start(&mut f.admin, polite("gamma")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_refuses_new_work_until_cool_for_the_cooldown() {
    let mut f = board("warm", 31, Fixture::AgxOrinR36).await;
    let watch = Watched::start(&f.admin, INTERVAL).await;
    watch
        .sample_where("a normal sample", |s| {
            s.thermal_state() == ThermalState::Normal && s.accepting
        })
        .await;
    start(&mut f.admin, polite("before")).await.unwrap();

    // tboard is not one of the SoC sensors tj follows: it alone is warm.
    f.hw.set_zone("tboard", 75.0).unwrap();
    watch
        .sample_where("a sample in warn", |s| {
            s.thermal_state() == ThermalState::Warn
        })
        .await;
    let err = start(&mut f.admin, polite("refused")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("tboard") && err.message().contains("75.0"),
        "the refusal names the zone and its temperature: {}",
        err.message()
    );
    // Warn does not stop what runs.
    let running = get(&mut f.admin, "before").await;
    assert_eq!(running.state(), ExperimentState::Running, "{running:?}");

    // Below warn but not below warn − hysteresis: still warn after more than
    // a cooldown's worth of samples.
    let lukewarm = WARN_C - HYSTERESIS_C / 2.0;
    f.hw.set_zone("tboard", lukewarm).unwrap();
    let first = watch
        .sample_where("a lukewarm sample", |s| zone(s, "tboard") == Some(lukewarm))
        .await;
    watch
        .sample_where("lukewarm samples spanning the cooldown", |s| {
            s.timestamp_unix_us
                > first.timestamp_unix_us + (COOLDOWN + 2 * INTERVAL).as_micros() as i64
        })
        .await;
    let lukewarm_samples: Vec<_> = watch
        .samples()
        .into_iter()
        .filter(|s| s.timestamp_unix_us >= first.timestamp_unix_us)
        .collect();
    assert!(
        lukewarm_samples
            .iter()
            .all(|s| s.thermal_state() == ThermalState::Warn && !s.accepting),
        "hysteresis keeps warn: {:?}",
        lukewarm_samples.iter().map(summary).collect::<Vec<_>>()
    );
    let err = start(&mut f.admin, polite("refused")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // Cool: normal again, but only a cooldown after the last warm reading.
    let cool = WARN_C - HYSTERESIS_C - 5.0;
    f.hw.set_zone("tboard", cool).unwrap();
    let normal = watch
        .sample_where("a normal sample after cooling", |s| {
            s.thermal_state() == ThermalState::Normal && zone(s, "tboard") == Some(cool)
        })
        .await;
    assert!(normal.accepting, "{}", summary(&normal));
    let samples = watch.samples();
    let last_warm = samples
        .iter()
        .filter(|s| zone(s, "tboard").is_some_and(|t| t >= WARN_C - HYSTERESIS_C))
        .map(|s| s.timestamp_unix_us)
        .max()
        .unwrap();
    let waited = Duration::from_micros((normal.timestamp_unix_us - last_warm) as u64);
    // The subscriber may miss the very last warm sample, which only makes
    // the gap it sees longer; the small slack covers the guard timing on its
    // monotonic clock and the samples carrying wall-clock time.
    assert!(
        waited + Duration::from_millis(50) >= COOLDOWN,
        "normal {waited:?} after the last warm reading; the cooldown is {COOLDOWN:?}"
    );
    let cooling_but_refusing = samples
        .iter()
        .filter(|s| zone(s, "tboard") == Some(cool) && !s.accepting)
        .count();
    assert!(
        cooling_but_refusing > 0,
        "no sample showed the cooldown: {:?}",
        samples.iter().map(summary).collect::<Vec<_>>()
    );
    let st = start(&mut f.admin, polite("after")).await.unwrap();
    assert_eq!(st.id, "after");
    wait_state(&f.admin, "after", "the new experiment to run", |s| {
        s.state() == ExperimentState::Running
    })
    .await;
    // The transitions were reported: normal → warn, warn → normal.
    let events = watch.events();
    let thermal: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(node_event::Kind::Thermal(t)) => Some((t.from(), t.to())),
            _ => None,
        })
        .collect();
    assert_eq!(
        thermal,
        [
            (ThermalState::Normal, ThermalState::Warn),
            (ThermalState::Warn, ThermalState::Normal)
        ]
    );
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_modes_switch_and_reboots_need_consent() {
    let mut f = board("power", 32, Fixture::AgxOrinR36).await;
    let node = f
        .admin
        .get_node(v1::GetNodeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.model, "NVIDIA Jetson AGX Orin Developer Kit");
    assert_eq!(node.l4t_release, "36.4.3");
    let modes: Vec<_> = node
        .power_modes
        .iter()
        .map(|m| (m.id, m.name.as_str()))
        .collect();
    assert_eq!(
        modes,
        [
            (0, "MAXN"),
            (1, "MODE_15W"),
            (2, "MODE_30W"),
            (3, "MODE_50W")
        ]
    );
    assert_eq!(node.default_power_mode, Some(2));
    assert_eq!(
        node.current_power_mode.as_ref().map(|m| m.name.as_str()),
        Some("MODE_30W"),
        "{node:?}"
    );
    assert!(node.nvpmodel, "{node:?}");
    assert!(
        !node.jetson_clocks,
        "no jetson_clocks on the simulated board"
    );
    assert_eq!((node.warn_c, node.critical_c), (WARN_C, CRITICAL_C));

    // What the agent learns from its samples.
    let watch = Watched::start(&f.admin, INTERVAL).await;
    watch.sample_where("a first sample", |_| true).await;
    let node = f
        .admin
        .get_node(v1::GetNodeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(node.gpu, "{node:?}");
    assert_eq!(
        node.zones,
        ["cpu", "gpu", "cv0", "cv1", "cv2", "soc0", "soc1", "soc2", "tj", "tboard", "tdiode"],
        "{node:?}"
    );

    // An unknown mode names the known ones.
    let err = f
        .admin
        .set_power_mode(v1::SetPowerModeRequest {
            mode: "TURBO".into(),
            allow_reboot: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("0 MAXN, 1 MODE_15W, 2 MODE_30W, 3 MODE_50W"),
        "{}",
        err.message()
    );

    // MODE_30W → MAXN changes the GPU power-gating mask: a reboot, which is
    // not allowed, so nothing changes.
    let r = f
        .admin
        .set_power_mode(v1::SetPowerModeRequest {
            mode: "MAXN".into(),
            allow_reboot: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.reboot_required && !r.changed, "{r:?}");
    assert_eq!(r.mode.as_ref().map(|m| m.id), Some(0), "{r:?}");
    assert_eq!(
        f.hw.saved_mode(),
        Some(2),
        "a declined switch saves nothing"
    );
    assert!(f.hw.reboots().is_empty(), "{:?}", f.hw.reboots());
    let node = f
        .admin
        .get_node(v1::GetNodeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.current_power_mode.map(|m| m.id), Some(2));

    // Allowed: the tool takes the board down into the new mode.
    let r = f
        .admin
        .set_power_mode(v1::SetPowerModeRequest {
            mode: "0".into(),
            allow_reboot: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.reboot_required, "{r:?}");
    assert_eq!(r.mode.as_ref().map(|m| m.name.as_str()), Some("MAXN"));
    assert_eq!(f.hw.saved_mode(), Some(0), "the mode the board boots into");
    assert_eq!(f.hw.reboots(), [0], "the tool rebooted the board once");
    assert_eq!(
        watch
            .events()
            .iter()
            .filter(|e| matches!(e.kind, Some(node_event::Kind::PowerMode(_))))
            .count(),
        0,
        "no switch happened yet"
    );

    // The board comes back up in MAXN.
    f.agent.kill9().await.unwrap();
    f.board.reboot().await.unwrap();
    f.agent.restart(&f.board).await.unwrap();
    f.admin = f.agent.client(&f.pki, Role::Admin).await.unwrap();
    let node = f
        .admin
        .get_node(v1::GetNodeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        node.current_power_mode.as_ref().map(|m| m.name.as_str()),
        Some("MAXN"),
        "{node:?}"
    );
    let watch = Watched::start(&f.admin, INTERVAL).await;

    // MAXN → MODE_50W keeps the masks: it switches at once.
    let r = f
        .admin
        .set_power_mode(v1::SetPowerModeRequest {
            mode: "MODE_50W".into(),
            allow_reboot: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed && !r.reboot_required, "{r:?}");
    assert_eq!(r.mode.as_ref().map(|m| m.id), Some(3), "{r:?}");
    assert_eq!(f.hw.saved_mode(), Some(3));
    let event = watch
        .event_where("a power mode event", |k| {
            matches!(k, node_event::Kind::PowerMode(p) if p.to.as_ref().is_some_and(|m| m.id == 3))
        })
        .await;
    let Some(node_event::Kind::PowerMode(p)) = event.kind else {
        unreachable!()
    };
    assert_eq!(p.from.map(|m| m.name), Some("MAXN".into()));
    assert_eq!(p.reason, "requested");
    wait_for("GetNode to show MODE_50W", DEADLINE, || {
        let mut c = f.admin.clone();
        async move {
            let node = c.get_node(v1::GetNodeRequest {}).await?.into_inner();
            let current = node.current_power_mode.map(|m| m.name);
            Ok(if current.as_deref() == Some("MODE_50W") {
                Check::Ready(())
            } else {
                Check::not_yet(format!("{current:?}"))
            })
        }
    })
    .await
    .unwrap();
    watch
        .sample_where("a sample in MODE_50W", |s| {
            s.power_mode.as_ref().is_some_and(|m| m.id == 3)
        })
        .await;
    f.finish().await;
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sampler_feeds_subscribers_at_their_own_intervals() {
    let f = board("fanout", 33, Fixture::AgxOrinR35).await;
    // The R35 board: older names, offline zones, no release file.
    let node = f
        .admin
        .clone()
        .get_node(v1::GetNodeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(node.model, "Jetson AGX Orin");
    assert_eq!(node.l4t_release, "");
    assert_eq!(node.power_modes.len(), 4, "{node:?}");

    let fast = Watched::start(&f.admin, INTERVAL).await;
    let slow = Watched::start(&f.admin, 2 * INTERVAL).await;
    slow.sample_where("a dozen slow samples", |_| slow.samples().len() >= 12)
        .await;
    let (fast, slow) = (fast.samples(), slow.samples());

    let first = fast[0].timestamp_unix_us.max(slow[0].timestamp_unix_us);
    let last = fast
        .last()
        .unwrap()
        .timestamp_unix_us
        .min(slow.last().unwrap().timestamp_unix_us);
    let within = |s: &&v1::TelemetrySample| (first..=last).contains(&s.timestamp_unix_us);
    let n_fast = fast.iter().filter(within).count() as f64;
    let n_slow = slow.iter().filter(within).count() as f64;
    let ratio = n_fast / n_slow;
    assert!(
        (1.4..=2.8).contains(&ratio),
        "{n_fast} samples at {INTERVAL:?}, {n_slow} at {:?} over the same {} ms",
        2 * INTERVAL,
        (last - first) / 1000
    );

    // Subscribers share the sampler's readings: the same instants, and no two
    // readings closer than the sampling allows.
    let mut fast_ts: Vec<i64> = fast.iter().map(|s| s.timestamp_unix_us).collect();
    fast_ts.dedup();
    let mut slow_ts: Vec<i64> = slow.iter().map(|s| s.timestamp_unix_us).collect();
    slow_ts.dedup();
    let shared = slow_ts
        .iter()
        .filter(|t| (first..=last).contains(*t) && fast_ts.contains(t))
        .count();
    let slow_within = slow_ts
        .iter()
        .filter(|t| (first..=last).contains(*t))
        .count();
    assert!(
        shared * 2 >= slow_within,
        "only {shared} of {slow_within} slow samples were also sent to the fast subscriber"
    );
    let mut all: Vec<i64> = fast_ts.iter().chain(&slow_ts).copied().collect();
    all.sort();
    all.dedup();
    let closest = all.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(
        closest >= (INTERVAL / 2).as_micros() as i64,
        "two hardware readings {closest} µs apart: the sampler ran per subscriber"
    );

    // What the samples carry, from the R35 fixture.
    let s = &fast[fast.len() - 1];
    let offline: Vec<_> = s
        .zones
        .iter()
        .filter(|z| z.offline)
        .map(|z| z.name.as_str())
        .collect();
    assert_eq!(offline, ["gpu", "cv0", "cv1", "cv2"], "{s:?}");
    assert_eq!(
        zone(s, "cpu"),
        Some(42.0),
        "the model's resting temperature"
    );
    assert_eq!(s.thermal_state(), ThermalState::Normal);
    assert!(s.power_total_watts.is_some_and(|w| w > 0.0), "{s:?}");
    assert_eq!(
        s.power_mode.as_ref().map(|m| m.name.as_str()),
        Some("MODE_30W")
    );
    f.finish().await;
}
