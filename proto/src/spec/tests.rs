//! Tests of whole-spec validation: defaults, every field's rule, every
//! problem reported at once, and the round trip through the wire message.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The design document's example, on the wire.
fn example() -> v1::ExperimentSpec {
    v1::ExperimentSpec {
        id: "amnesiac-001".into(),
        command: strings(&[
            "python3",
            "-m",
            "src.runner.experiment_runner",
            "--config",
            "${FLEET_CONFIG}",
        ]),
        working_dir: "/opt/brain-in-jar".into(),
        env: map(&[("MODEL", "llama-3.2-1b")]),
        config_name: "amnesiac_001.json".into(),
        config_content: b"{\"memory\": false}".to_vec(),
        priority: 50,
        resources: Some(v1::Resources {
            memory_max: "8G".into(),
            cpu_quota: "80%".into(),
            gpu: true,
        }),
        placement: Some(v1::Placement {
            node: "jetson-03".into(),
            labels: map(&[("model", "agx-orin")]),
            power_mode: "MAXN".into(),
            max_temp_c: Some(70.0),
        }),
        lifecycle: Some(v1::Lifecycle {
            max_runtime: "12h".into(),
            restart: "on-failure".into(),
            max_restarts: Some(3),
            restart_delay: "5s".into(),
            stop_timeout: "30s".into(),
            on_disruption: "requeue".into(),
            autostart: true,
        }),
    }
}

/// Only what must be given: an id and a command.
fn minimal() -> v1::ExperimentSpec {
    v1::ExperimentSpec {
        id: "a".into(),
        command: strings(&["/bin/true"]),
        ..Default::default()
    }
}

fn problems(spec: &v1::ExperimentSpec) -> Vec<String> {
    ExperimentSpec::try_from(spec)
        .expect_err("the spec was accepted")
        .problems()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The paths of the problems of `spec`.
fn bad_fields(spec: &v1::ExperimentSpec) -> Vec<String> {
    ExperimentSpec::try_from(spec)
        .expect_err("the spec was accepted")
        .problems()
        .iter()
        .map(|p| p.path().to_string())
        .collect()
}

#[test]
fn the_design_example_is_valid() {
    let spec = ExperimentSpec::try_from(&example()).unwrap();
    assert_eq!(spec.id().as_str(), "amnesiac-001");
    assert_eq!(spec.command().program(), "python3");
    assert_eq!(spec.working_dir().unwrap().as_str(), "/opt/brain-in-jar");
    assert_eq!(spec.env().get("MODEL").unwrap().as_str(), "llama-3.2-1b");
    assert_eq!(spec.config().unwrap().name().as_str(), "amnesiac_001.json");
    assert_eq!(spec.priority(), 50);
    assert_eq!(spec.resources().memory_max(), Some(8 << 30));
    assert_eq!(spec.resources().cpu_quota_percent(), Some(80));
    assert!(spec.resources().gpu());
    assert_eq!(spec.placement().node().unwrap().as_str(), "jetson-03");
    assert_eq!(
        spec.placement().labels().get("model").unwrap().as_str(),
        "agx-orin"
    );
    assert_eq!(spec.placement().power_mode().unwrap().name(), Some("MAXN"));
    assert_eq!(spec.placement().max_temp_c(), Some(70.0));
    let l = spec.lifecycle();
    assert_eq!(l.max_runtime(), Some(Duration::from_secs(12 * 3600)));
    assert_eq!(l.restart(), RestartPolicy::OnFailure);
    assert_eq!(l.max_restarts(), 3);
    assert_eq!(l.restart_delay(), Duration::from_secs(5));
    assert_eq!(l.stop_timeout(), Duration::from_secs(30));
    assert_eq!(l.on_disruption(), DisruptionPolicy::Requeue);
    assert!(l.autostart());
    assert!(l.restarts_on_failure());
}

#[test]
fn absent_fields_take_the_defaults() {
    let spec = ExperimentSpec::try_from(&minimal()).unwrap();
    assert_eq!(spec.working_dir(), None);
    assert!(spec.env().is_empty());
    assert_eq!(spec.config(), None);
    assert_eq!(spec.priority(), DEFAULT_PRIORITY);
    assert_eq!(spec.resources(), &Resources::default());
    assert_eq!(spec.resources().memory_max(), None);
    assert_eq!(spec.placement(), &Placement::default());
    let l = spec.lifecycle();
    assert_eq!(l.max_runtime(), None);
    assert_eq!(l.restart(), DEFAULT_RESTART);
    assert_eq!(l.max_restarts(), DEFAULT_MAX_RESTARTS);
    assert_eq!(l.restart_delay(), DEFAULT_RESTART_DELAY);
    assert_eq!(l.stop_timeout(), DEFAULT_STOP_TIMEOUT);
    assert_eq!(l.on_disruption(), DEFAULT_ON_DISRUPTION);
    assert!(!l.autostart());

    // Present but empty messages mean the same.
    let mut empty = minimal();
    empty.resources = Some(Default::default());
    empty.placement = Some(Default::default());
    empty.lifecycle = Some(Default::default());
    assert_eq!(ExperimentSpec::try_from(&empty).unwrap(), spec);
}

#[test]
fn the_defaults_are_the_documented_ones() {
    assert_eq!(DEFAULT_RESTART_DELAY, Duration::from_secs(5));
    assert_eq!(DEFAULT_STOP_TIMEOUT, Duration::from_secs(30));
    assert_eq!(DEFAULT_MAX_RESTARTS, 3);
    assert_eq!(DEFAULT_RESTART, RestartPolicy::OnFailure);
    assert_eq!(DEFAULT_ON_DISRUPTION, DisruptionPolicy::Requeue);
}

#[test]
fn to_proto_round_trips_and_writes_defaults_out() {
    for wire in [example(), minimal()] {
        let spec = ExperimentSpec::try_from(&wire).unwrap();
        let back = spec.to_proto();
        assert_eq!(ExperimentSpec::try_from(&back).unwrap(), spec);
        assert_eq!(back.to_owned().command, wire.command);
    }
    let back = ExperimentSpec::try_from(&minimal()).unwrap().to_proto();
    let l = back.lifecycle.unwrap();
    assert_eq!(l.restart, "on-failure");
    assert_eq!(l.max_restarts, Some(3));
    assert_eq!(l.restart_delay, "5s");
    assert_eq!(l.stop_timeout, "30s");
    assert_eq!(l.on_disruption, "requeue");
    assert_eq!(l.max_runtime, "");
    assert_eq!(back.resources.unwrap().memory_max, "");
}

#[test]
fn to_proto_writes_values_in_canonical_form() {
    let mut wire = example();
    let r = wire.resources.as_mut().unwrap();
    r.memory_max = "1024M".into();
    let l = wire.lifecycle.as_mut().unwrap();
    l.max_runtime = "90m".into();
    l.restart_delay = "1500ms".into();
    let back = ExperimentSpec::try_from(&wire).unwrap().to_proto();
    assert_eq!(back.resources.unwrap().memory_max, "1G");
    let l = back.lifecycle.unwrap();
    assert_eq!(l.max_runtime, "1h30m");
    assert_eq!(l.restart_delay, "1s500ms");
    assert_eq!(back.placement.unwrap().max_temp_c, Some(70.0));
}

#[test]
fn every_problem_is_reported_at_once_in_field_order() {
    let mut wire = example();
    wire.id = "../x".into();
    wire.command = strings(&["python3", "a\nb"]);
    wire.working_dir = "relative".into();
    wire.env = map(&[("FLEET_CONFIG", "x"), ("OK", "line\nbreak")]);
    wire.config_name = ".hidden".into();
    wire.priority = -1;
    let r = wire.resources.as_mut().unwrap();
    r.memory_max = "8GB".into();
    r.cpu_quota = "80".into();
    let p = wire.placement.as_mut().unwrap();
    p.node = "Jetson".into();
    p.labels = map(&[("Model", "agx orin")]);
    p.power_mode = "MAX N".into();
    p.max_temp_c = Some(150.0);
    let l = wire.lifecycle.as_mut().unwrap();
    l.max_runtime = "0s".into();
    l.restart = "always".into();
    l.max_restarts = Some(101);
    l.restart_delay = "2h".into();
    l.stop_timeout = "0s".into();
    l.on_disruption = "retry".into();
    assert_eq!(
        bad_fields(&wire),
        [
            "id",
            "command[1]",
            "working_dir",
            "env.FLEET_CONFIG",
            "env.OK",
            "config_name",
            "priority",
            "resources.memory_max",
            "resources.cpu_quota",
            "placement.node",
            "placement.labels.Model",
            "placement.labels.Model",
            "placement.power_mode",
            "placement.max_temp_c",
            "lifecycle.max_runtime",
            "lifecycle.restart",
            "lifecycle.max_restarts",
            "lifecycle.restart_delay",
            "lifecycle.stop_timeout",
            "lifecycle.on_disruption",
        ]
    );
}

#[test]
fn messages_name_the_field_and_the_fix() {
    let mut wire = minimal();
    wire.id = "../x".into();
    let mut l = v1::Lifecycle {
        stop_timeout: "0s".into(),
        ..Default::default()
    };
    l.restart = "always".into();
    wire.lifecycle = Some(l);
    wire.resources = Some(v1::Resources {
        memory_max: "8GB".into(),
        ..Default::default()
    });
    assert_eq!(
        problems(&wire),
        [
            "id: experiment id \"../x\" is invalid: use lowercase letters, digits, '-' and '_' \
             (at most 63), starting with a letter or digit",
            "resources.memory_max: memory size \"8GB\" is invalid: write whole bytes or a whole \
             number with K, M, G or T (powers of 1024), e.g. \"512M\" or \"8G\"",
            "lifecycle.restart: restart policy \"always\" is invalid: use \"on-failure\" or \"never\"",
            "lifecycle.stop_timeout: stop timeout \"0s\" is too short: use at least 1s",
        ]
    );
    let err = ExperimentSpec::try_from(&wire).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("invalid experiment spec, 4 problems: id: experiment id \"../x\""));
}

#[test]
fn the_id_is_required() {
    let mut wire = minimal();
    wire.id = String::new();
    assert_eq!(
        problems(&wire),
        [
            "id: experiment id \"\" is invalid: use lowercase letters, digits, '-' and '_' \
          (at most 63), starting with a letter or digit"
        ]
    );
}

#[test]
fn the_command_is_required_and_checked() {
    let mut wire = minimal();
    wire.command = vec![];
    assert_eq!(bad_fields(&wire), ["command"]);
    wire.command = strings(&["./run.sh"]);
    assert_eq!(bad_fields(&wire), ["command[0]"]);
}

#[test]
fn working_dir_is_absolute_and_normalized() {
    let mut wire = minimal();
    for ok in ["/", "/opt/brain-in-jar", "/srv/runs 2024"] {
        wire.working_dir = ok.into();
        assert!(ExperimentSpec::try_from(&wire).is_ok(), "{ok:?}");
    }
    for bad in ["opt", "/opt/../etc", "/opt/", "/a//b", "/a\nb", "~/x"] {
        wire.working_dir = bad.into();
        assert_eq!(bad_fields(&wire), ["working_dir"], "{bad:?}");
    }
    wire.working_dir = "/opt/../etc".into();
    assert_eq!(
        problems(&wire),
        ["working_dir: working directory \"/opt/../etc\" is invalid: write it normalized: no '.' \
          or '..' components, no '//' and no '/' at the end"]
    );
}

#[test]
fn env_names_and_values_are_checked_one_by_one() {
    let mut wire = minimal();
    wire.env = map(&[
        ("GOOD", "x"),
        ("1BAD", "y"),
        ("NOTIFY_SOCKET", "/run/x"),
        ("NL", "a\nb"),
        ("EMPTY", ""),
    ]);
    let err = ExperimentSpec::try_from(&wire).unwrap_err();
    let found: Vec<(String, bool)> = err
        .problems()
        .iter()
        .map(|p| (p.path().to_string(), p.is_about_key()))
        .collect();
    assert_eq!(
        found,
        [
            ("env.1BAD".to_owned(), true),
            ("env.NL".to_owned(), false),
            ("env.NOTIFY_SOCKET".to_owned(), true),
        ]
    );
    wire.env = map(&[
        ("GOOD", "x"),
        ("EMPTY", ""),
        ("PATH", "/opt/venv/bin:/usr/bin"),
    ]);
    let spec = ExperimentSpec::try_from(&wire).unwrap();
    let names: Vec<&str> = spec.env().keys().map(EnvName::as_str).collect();
    assert_eq!(names, ["EMPTY", "GOOD", "PATH"]);
}

#[test]
fn env_has_count_and_size_limits() {
    let mut wire = minimal();
    wire.env = (0..=MAX_ENV_VARS)
        .map(|i| (format!("V{i}"), String::new()))
        .collect();
    assert_eq!(bad_fields(&wire), ["env"]);
    wire.env = (0..9)
        .map(|i| (format!("V{i}"), "x".repeat(MAX_ENV_VALUE_BYTES)))
        .collect();
    let problems = problems(&wire);
    assert_eq!(problems.len(), 1);
    assert!(problems[0].starts_with("env: environment values have 294912 bytes"));
}

#[test]
fn a_config_needs_a_name_and_at_most_one_mebibyte() {
    let mut wire = minimal();
    wire.config_content = b"{}".to_vec();
    assert_eq!(
        problems(&wire),
        ["config_name: config_content is set but config_name is empty: name the config file"]
    );
    wire.config_name = "../etc/passwd".into();
    assert_eq!(bad_fields(&wire), ["config_name"]);
    wire.config_name = "c.json".into();
    wire.config_content = vec![b' '; MAX_CONFIG_BYTES + 1];
    assert_eq!(bad_fields(&wire), ["config_content"]);
    // An empty config file is a file.
    wire.config_content = vec![];
    let spec = ExperimentSpec::try_from(&wire).unwrap();
    assert_eq!(spec.config().unwrap().content(), b"");
}

#[test]
fn fleet_config_in_the_command_needs_a_config_file() {
    let mut wire = minimal();
    wire.command = strings(&["python3", "--config=${FLEET_CONFIG}"]);
    assert_eq!(
        problems(&wire),
        [
            "command[1]: argument \"--config=${FLEET_CONFIG}\" refers to ${FLEET_CONFIG} but the \
          experiment has no config file: set config_file, or remove the reference"
        ]
    );
    // The other fleet variables are always set.
    wire.command = strings(&["python3", "--run=${FLEET_EXPERIMENT_ID}-${FLEET_EPOCH}"]);
    assert!(ExperimentSpec::try_from(&wire).is_ok());
    // Other forms are literal text for the program, not a reference.
    wire.command = strings(&["sh", "-c", "cat $FLEET_CONFIG ${HOME}"]);
    assert!(ExperimentSpec::try_from(&wire).is_ok());
}

#[test]
fn priority_is_from_0_to_1000() {
    let mut wire = minimal();
    for ok in [0, 1, 500, 1000] {
        wire.priority = ok;
        assert_eq!(
            ExperimentSpec::try_from(&wire).unwrap().priority(),
            ok as u32
        );
    }
    for bad in [-1, 1001, i32::MIN, i32::MAX] {
        wire.priority = bad;
        assert_eq!(bad_fields(&wire), ["priority"], "{bad}");
    }
    wire.priority = -5;
    assert_eq!(
        problems(&wire),
        ["priority: priority \"-5\" is invalid: use a whole number from 0 to 1000; higher runs first"]
    );
}

#[test]
fn resources_are_parsed() {
    let mut wire = minimal();
    wire.resources = Some(v1::Resources {
        memory_max: "512M".into(),
        cpu_quota: "400%".into(),
        gpu: false,
    });
    let spec = ExperimentSpec::try_from(&wire).unwrap();
    assert_eq!(spec.resources().memory_max(), Some(512 << 20));
    assert_eq!(spec.resources().cpu_quota_percent(), Some(400));
    wire.resources = Some(v1::Resources {
        memory_max: "0".into(),
        cpu_quota: "0%".into(),
        gpu: false,
    });
    assert_eq!(
        bad_fields(&wire),
        ["resources.memory_max", "resources.cpu_quota"]
    );
}

#[test]
fn placement_is_parsed() {
    let mut wire = minimal();
    wire.placement = Some(v1::Placement {
        node: String::new(),
        labels: map(&[("model", "agx-orin"), ("lab/room", ""), ("gpu.count", "1")]),
        power_mode: "2".into(),
        max_temp_c: Some(0.0),
    });
    let spec = ExperimentSpec::try_from(&wire).unwrap();
    let p = spec.placement();
    assert_eq!(p.node(), None);
    assert_eq!(p.labels().len(), 3);
    assert_eq!(p.power_mode().unwrap().id(), Some(2));
    assert_eq!(p.max_temp_c(), Some(0.0));

    for (temp, ok) in [
        (120.0, true),
        (70.5, true),
        (-0.5, false),
        (120.1, false),
        (f64::NAN, false),
        (f64::INFINITY, false),
    ] {
        wire.placement.as_mut().unwrap().max_temp_c = Some(temp);
        assert_eq!(ExperimentSpec::try_from(&wire).is_ok(), ok, "{temp}");
    }
    wire.placement.as_mut().unwrap().max_temp_c = Some(150.0);
    assert_eq!(
        problems(&wire),
        ["placement.max_temp_c: temperature \"150\" is invalid: use degrees Celsius from 0 to 120"]
    );
}

#[test]
fn too_many_labels_are_refused() {
    let mut wire = minimal();
    wire.placement = Some(v1::Placement {
        labels: (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect(),
        ..Default::default()
    });
    assert_eq!(bad_fields(&wire), ["placement.labels"]);
}

#[test]
fn lifecycle_durations_have_field_bounds() {
    let with = |f: &dyn Fn(&mut v1::Lifecycle)| {
        let mut wire = minimal();
        let mut l = v1::Lifecycle::default();
        f(&mut l);
        wire.lifecycle = Some(l);
        wire
    };
    // max_runtime: 1s to 365d, or none.
    for (s, ok) in [
        ("1s", true),
        ("365d", true),
        ("0s", false),
        ("500ms", false),
        ("366d", false),
    ] {
        let wire = with(&|l| l.max_runtime = s.into());
        assert_eq!(
            ExperimentSpec::try_from(&wire).is_ok(),
            ok,
            "max_runtime {s}"
        );
    }
    // restart_delay: 0 (restart at once) to 1h.
    for (s, ok) in [
        ("0s", true),
        ("100ms", true),
        ("1h", true),
        ("1h1s", false),
        ("5", false),
    ] {
        let wire = with(&|l| l.restart_delay = s.into());
        assert_eq!(
            ExperimentSpec::try_from(&wire).is_ok(),
            ok,
            "restart_delay {s}"
        );
    }
    // stop_timeout: 1s to 1h; 0 would mean "never" to systemd.
    for (s, ok) in [
        ("1s", true),
        ("1h", true),
        ("0s", false),
        ("999ms", false),
        ("2h", false),
    ] {
        let wire = with(&|l| l.stop_timeout = s.into());
        assert_eq!(
            ExperimentSpec::try_from(&wire).is_ok(),
            ok,
            "stop_timeout {s}"
        );
    }
    let wire = with(&|l| l.max_runtime = "12 hours".into());
    assert_eq!(
        problems(&wire),
        [
            "lifecycle.max_runtime: max runtime \"12 hours\" is invalid: write whole numbers with \
          units d, h, m, s or ms, largest first, e.g. \"30s\", \"1h30m\" or \"500ms\""
        ]
    );
    let wire = with(&|l| l.max_runtime = "400d".into());
    assert_eq!(
        problems(&wire),
        ["lifecycle.max_runtime: max runtime \"400d\" is too long: use at most 365d"]
    );
}

#[test]
fn restart_policies() {
    let with = |restart: &str, max_restarts: Option<u32>| {
        let mut wire = minimal();
        wire.lifecycle = Some(v1::Lifecycle {
            restart: restart.into(),
            max_restarts,
            ..Default::default()
        });
        ExperimentSpec::try_from(&wire)
    };
    let never = with("never", None).unwrap();
    assert_eq!(never.lifecycle().restart(), RestartPolicy::Never);
    assert!(!never.lifecycle().restarts_on_failure());
    let zero = with("on-failure", Some(0)).unwrap();
    assert!(!zero.lifecycle().restarts_on_failure());
    assert_eq!(with("", Some(100)).unwrap().lifecycle().max_restarts(), 100);
    assert!(with("", Some(101)).is_err());
    assert!(with("On-Failure", None).is_err());
    assert!(with("no", None).is_err());
    assert_eq!(
        with("", Some(101)).unwrap_err().problems()[0].to_string(),
        "lifecycle.max_restarts: max restarts \"101\" is too many: use at most 100"
    );
}

#[test]
fn disruption_policies() {
    for (s, policy) in [
        ("", DisruptionPolicy::Requeue),
        ("requeue", DisruptionPolicy::Requeue),
        ("fail", DisruptionPolicy::Fail),
    ] {
        assert_eq!(DisruptionPolicy::parse(s).unwrap(), policy);
    }
    assert_eq!(
        DisruptionPolicy::parse("retry").unwrap_err().to_string(),
        "disruption policy \"retry\" is invalid: use \"requeue\" or \"fail\""
    );
    assert_eq!(RestartPolicy::Never.to_string(), "never");
    assert_eq!(DisruptionPolicy::Fail.to_string(), "fail");
}
