//! Test support for the renderers: canned controller answers and the
//! redaction that makes their output independent of the machine's time
//! zone.

use fleet_proto::v1;

/// 2025-06-01T12:03:22.5Z, the moment every fixture is relative to.
pub const T: i64 = 1_748_779_402_500_000;
pub const SEC: i64 = 1_000_000;

/// `text` with every date-time (`2025-06-01 14:03:22`, RFC 3339 with
/// fraction and `Z`) replaced by `<time>`: wall-clock times follow the
/// local time zone.
pub fn redact(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if let Some(len) = date_time_at(&chars[i..]) {
            out.push_str("<time>");
            i += len;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The length of a date-time starting the slice, if one does.
fn date_time_at(c: &[char]) -> Option<usize> {
    const SHAPE: &str = "dddd-dd-dd?dd:dd:dd";
    if c.len() < SHAPE.len() {
        return None;
    }
    for (i, s) in SHAPE.chars().enumerate() {
        let ok = match s {
            'd' => c[i].is_ascii_digit(),
            '?' => c[i] == ' ' || c[i] == 'T',
            other => c[i] == other,
        };
        if !ok {
            return None;
        }
    }
    let mut len = SHAPE.len();
    if c.get(len) == Some(&'.') {
        len += 1;
        while c.get(len).is_some_and(char::is_ascii_digit) {
            len += 1;
        }
    }
    if c.get(len) == Some(&'Z') {
        len += 1;
    }
    Some(len)
}

pub fn maxn() -> v1::PowerMode {
    v1::PowerMode {
        id: 0,
        name: "MAXN".into(),
    }
}

/// A running experiment with one disrupted run before the current one.
pub fn experiment() -> v1::Experiment {
    v1::Experiment {
        spec: Some(v1::ExperimentSpec {
            id: "amnesiac-001".into(),
            command: vec!["python3".into(), "run.py".into()],
            priority: 50,
            resources: Some(v1::Resources {
                memory_max: "8G".into(),
                ..Default::default()
            }),
            lifecycle: Some(v1::Lifecycle {
                restart: "on-failure".into(),
                max_restarts: Some(3),
                restart_delay: "5s".into(),
                stop_timeout: "30s".into(),
                on_disruption: "requeue".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        phase: v1::ExperimentPhase::Running as i32,
        node: "jetson-03".into(),
        epoch: 2,
        runs: vec![
            v1::RunRecord {
                node: "jetson-01".into(),
                epoch: 1,
                started_at_unix_us: T - 3 * 3600 * SEC,
                ended_at_unix_us: Some(T - 2 * 3600 * SEC),
                outcome: v1::RunOutcome::Disrupted as i32,
                message: "stopped by the thermal guard at 86.0 °C".into(),
                disruption: v1::Disruption::Thermal as i32,
                power_mode: Some(maxn()),
                jetson_clocks: Some(true),
                l4t_release: "R36.4.3".into(),
                peak_temp_c: Some(86.0),
                throttled: true,
                ..Default::default()
            },
            v1::RunRecord {
                node: "jetson-03".into(),
                epoch: 2,
                started_at_unix_us: T - 3600 * SEC,
                outcome: v1::RunOutcome::Unspecified as i32,
                crashes: 1,
                power_mode: Some(v1::PowerMode {
                    id: 2,
                    name: "MODE_30W".into(),
                }),
                jetson_clocks: Some(false),
                l4t_release: "R36.4.3".into(),
                peak_temp_c: Some(61.5),
                ..Default::default()
            },
        ],
        crashes: 1,
        disruptions: 1,
        submitted_at_unix_us: T - 4 * 3600 * SEC,
        submitted_by: "user/ada".into(),
        submit_seq: 7,
        updated_at_unix_us: T - 3600 * SEC,
        revision: 9,
        status: Some(v1::ExperimentStatus {
            id: "amnesiac-001".into(),
            unit: "brain-experiment@amnesiac-001.service".into(),
            state: v1::ExperimentState::Running as i32,
            active_state: "active".into(),
            sub_state: "running".into(),
            main_pid: 4242,
            memory_current_bytes: Some(812 * 1024 * 1024),
            epoch: 2,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A queued experiment no node takes.
pub fn queued() -> v1::Experiment {
    v1::Experiment {
        spec: Some(v1::ExperimentSpec {
            id: "big-train".into(),
            command: vec!["/bin/true".into()],
            ..Default::default()
        }),
        phase: v1::ExperimentPhase::Queued as i32,
        reason: "no node fits: 1 too hot, 1 cordoned".into(),
        submitted_at_unix_us: T - 90 * SEC,
        ..Default::default()
    }
}

pub fn decision(dry_run: bool) -> v1::Decision {
    let term = |name: &str, value: f64, weight: f64| v1::ScoreTerm {
        name: name.into(),
        value,
        weight,
    };
    v1::Decision {
        experiment: "amnesiac-001".into(),
        timestamp_unix_us: T,
        policy: "balanced".into(),
        outcome: v1::DecisionOutcome::Placed as i32,
        node: "jetson-03".into(),
        epoch: if dry_run { 0 } else { 2 },
        summary: "placed on jetson-03 (score 0.82)".into(),
        nodes: vec![
            v1::NodeVerdict {
                node: "jetson-03".into(),
                fits: true,
                score: Some(0.82),
                terms: vec![term("temperature", 0.9, 0.5), term("load", 0.74, 0.5)],
                ..Default::default()
            },
            v1::NodeVerdict {
                node: "jetson-02".into(),
                fits: true,
                score: Some(0.61),
                terms: vec![term("temperature", 0.5, 0.5), term("load", 0.72, 0.5)],
                ..Default::default()
            },
            v1::NodeVerdict {
                node: "jetson-01".into(),
                fits: false,
                reasons: vec![
                    "too hot: 73.5 °C ≥ warn 75.0 − margin 5.0".into(),
                    "cordoned".into(),
                ],
                ..Default::default()
            },
        ],
        dry_run,
    }
}

pub fn events() -> Vec<v1::Event> {
    vec![
        v1::Event {
            seq: 41,
            timestamp_unix_us: T,
            kind: v1::EventKind::Submitted as i32,
            experiment: "amnesiac-001".into(),
            message: "priority 50".into(),
            actor: "user/ada".into(),
            ..Default::default()
        },
        v1::Event {
            seq: 42,
            timestamp_unix_us: T + SEC,
            kind: v1::EventKind::PhaseChanged as i32,
            experiment: "amnesiac-001".into(),
            node: "jetson-03".into(),
            epoch: 2,
            from: v1::ExperimentPhase::Queued as i32,
            to: v1::ExperimentPhase::Placing as i32,
            actor: "scheduler".into(),
            ..Default::default()
        },
        v1::Event {
            seq: 43,
            timestamp_unix_us: T + 2 * SEC,
            kind: v1::EventKind::NodeCordoned as i32,
            node: "jetson-01".into(),
            message: "fan replacement".into(),
            actor: "user/ada".into(),
            ..Default::default()
        },
    ]
}

pub fn node(name: &str, thermal: v1::ThermalState, hottest: f64) -> v1::Node {
    v1::Node {
        name: name.into(),
        address: format!("{name}.lab:7443"),
        source: v1::NodeSource::Joined as i32,
        connection: v1::NodeConnection::Connected as i32,
        labels: [("model".to_owned(), "agx-orin".to_owned())].into(),
        info: Some(v1::NodeInfo {
            node: name.into(),
            model: "NVIDIA Jetson AGX Orin Developer Kit".into(),
            l4t_release: "R36.4.3".into(),
            cpu_cores: 12,
            memory_total_bytes: 64 * 1024 * 1024 * 1024,
            power_modes: vec![maxn()],
            current_power_mode: Some(maxn()),
            default_power_mode: Some(0),
            gpu: true,
            nvpmodel: true,
            jetson_clocks: true,
            agent_version: "0.1.0".into(),
            zones: vec!["cpu-thermal".into()],
            warn_c: 75.0,
            critical_c: 85.0,
        }),
        telemetry: Some(v1::TelemetrySample {
            timestamp_unix_us: T,
            load1: 1.25,
            load5: 1.0,
            load15: 0.5,
            cpu_percent: 20.0,
            memory_total_bytes: 64 * 1024 * 1024 * 1024,
            memory_available_bytes: 40 * 1024 * 1024 * 1024,
            zones: vec![v1::ZoneReading {
                name: "cpu-thermal".into(),
                celsius: Some(hottest),
                offline: false,
            }],
            power_mode: Some(maxn()),
            thermal_state: thermal as i32,
            hottest_c: Some(hottest),
            hottest_zone: "cpu-thermal".into(),
            accepting: thermal == v1::ThermalState::Normal,
            ..Default::default()
        }),
        last_seen_unix_us: T - 2 * SEC,
        experiments: vec!["amnesiac-001".into()],
        memory_reserved_bytes: 8 * 1024 * 1024 * 1024,
        slots_used: 1,
        slots_max: 4,
        revision: 3,
        ..Default::default()
    }
}

pub fn policy() -> v1::Policy {
    v1::Policy {
        name: "balanced".into(),
        weights: Some(v1::ScoreWeights {
            temperature: 0.4,
            load: 0.3,
            memory: 0.2,
            spread: 0.1,
            pack: 0.0,
        }),
        strict_order: false,
        temp_margin_c: 5.0,
        updated_at_unix_us: T - 60 * SEC,
        updated_by: "user/ada".into(),
    }
}

#[test]
fn redaction_covers_both_time_forms() {
    assert_eq!(
        redact("at 2025-06-01 14:03:22 and 2025-06-01T12:03:22.500000Z."),
        "at <time> and <time>."
    );
    assert_eq!(redact("2025-06-01"), "2025-06-01");
}
