//! Tests of the TOML form: the design document's file, shape errors from
//! TOML, value errors from validation, and where each is reported.

use std::io;

use crate::spec::MAX_CONFIG_BYTES;

use super::*;

/// The design document's example, verbatim.
const EXAMPLE: &str = r#"id = "amnesiac-001"          # optional: generated if absent; [a-z0-9][a-z0-9_-]{0,62}
command = ["python3", "-m", "src.runner.experiment_runner", "--config", "${FLEET_CONFIG}"]
working_dir = "/opt/brain-in-jar"
env = { MODEL = "llama-3.2-1b" }
config_file = "experiments/configs/amnesiac_001.json"   # shipped to the board, path given to the process
priority = 50
[resources]
memory_max = "8G"
cpu_quota = "80%"
gpu = true
[placement]
node = "jetson-03"           # optional pin
labels = { model = "agx-orin" }
power_mode = "MAXN"          # nvpmodel mode by name or id
max_temp_c = 70
[lifecycle]
max_runtime = "12h"
restart = "on-failure"       # or "never"
max_restarts = 3
restart_delay = "5s"
stop_timeout = "30s"
on_disruption = "requeue"    # or "fail"
autostart = true             # survives a reboot of the board
"#;

fn config(_: &Path) -> io::Result<Vec<u8>> {
    Ok(b"{\"memory\": false}".to_vec())
}

fn no_config(path: &Path) -> io::Result<Vec<u8>> {
    panic!("read {path:?} though the spec has no config file")
}

/// Each problem as `line:column: field: message`.
fn problems(text: &str) -> Vec<String> {
    spec_from_toml(text, config)
        .expect_err("the spec was accepted")
        .problems()
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Each problem as (line, column, field).
fn places(text: &str) -> Vec<(usize, usize, Option<String>)> {
    spec_from_toml(text, config)
        .expect_err("the spec was accepted")
        .problems()
        .iter()
        .map(|p| {
            let (line, column) = p.line_column().expect("a place");
            (line, column, p.field().map(str::to_owned))
        })
        .collect()
}

#[test]
fn a_duplicate_key_is_named() {
    let p = problems("id = \"a\"\ncommand = [\"true\"]\ncommand = [\"false\"]\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("3:") && p[0].contains("duplicate key `command`"),
        "{p:?}"
    );
}

#[test]
fn the_design_example_parses_to_the_wire_message() {
    let mut asked = None;
    let spec = spec_from_toml(EXAMPLE, |path| {
        asked = Some(path.to_owned());
        config(path)
    })
    .unwrap();
    assert_eq!(
        asked.unwrap(),
        Path::new("experiments/configs/amnesiac_001.json")
    );
    assert_eq!(spec.id, "amnesiac-001");
    assert_eq!(spec.command[4], "${FLEET_CONFIG}");
    assert_eq!(spec.env["MODEL"], "llama-3.2-1b");
    assert_eq!(spec.config_name, "amnesiac_001.json");
    assert_eq!(spec.config_content, b"{\"memory\": false}");
    assert_eq!(spec.priority, 50);
    let r = spec.resources.as_ref().unwrap();
    assert_eq!(
        (r.memory_max.as_str(), r.cpu_quota.as_str(), r.gpu),
        ("8G", "80%", true)
    );
    let p = spec.placement.as_ref().unwrap();
    assert_eq!(p.node, "jetson-03");
    assert_eq!(p.labels["model"], "agx-orin");
    assert_eq!(p.power_mode, "MAXN");
    assert_eq!(p.max_temp_c, Some(70.0));
    let l = spec.lifecycle.as_ref().unwrap();
    assert_eq!(l.max_runtime, "12h");
    assert_eq!(l.max_restarts, Some(3));
    assert!(l.autostart);
    let checked = ExperimentSpec::try_from(&spec).unwrap();
    assert_eq!(checked.to_proto().command, spec.command);
}

#[test]
fn a_minimal_file_leaves_the_id_to_the_controller() {
    let spec = spec_from_toml("command = [\"/bin/true\"]\n", no_config).unwrap();
    assert_eq!(spec.id, "");
    assert_eq!(spec.config_name, "");
    assert_eq!(spec.lifecycle.unwrap().max_restarts, None);
    // An explicitly empty id is not "absent".
    assert_eq!(
        places("id = \"\"\ncommand = [\"x\"]\n"),
        [(1, 6, Some("id".into()))]
    );
}

#[test]
fn integers_are_accepted_where_people_write_them() {
    let spec = spec_from_toml(
        "command = [\"x\"]\n[resources]\nmemory_max = 1073741824\n[placement]\npower_mode = 2\nmax_temp_c = 65.5\n",
        no_config,
    )
    .unwrap();
    assert_eq!(spec.resources.unwrap().memory_max, "1073741824");
    let p = spec.placement.unwrap();
    assert_eq!(p.power_mode, "2");
    assert_eq!(p.max_temp_c, Some(65.5));
}

#[test]
fn unknown_keys_are_refused_where_they_are() {
    let text = "command = [\"x\"]\n[resources]\nmemroy_max = \"8G\"\n";
    let err = spec_from_toml(text, no_config).unwrap_err();
    let [problem] = err.problems() else {
        panic!("{err}")
    };
    assert_eq!(problem.line_column(), Some((3, 1)));
    assert_eq!(problem.field(), Some("resources.memroy_max"));
    assert_eq!(
        problem.message(),
        "unknown field `memroy_max`, expected one of `memory_max`, `cpu_quota`, `gpu`"
    );
    assert_eq!(
        problem.to_string(),
        "3:1: resources.memroy_max: unknown field `memroy_max`, expected one of `memory_max`, \
         `cpu_quota`, `gpu`"
    );
    assert_eq!(
        places("command = [\"x\"]\nautorestart = true\n"),
        [(2, 1, Some("autorestart".into()))]
    );
}

#[test]
fn wrong_types_point_at_the_value() {
    assert_eq!(
        problems("command = [\"x\"]\n[resources]\ngpu = \"yes\"\n"),
        ["3:7: resources.gpu: invalid type: string \"yes\", expected a boolean"]
    );
    assert_eq!(
        places("command = [\"x\", 3]\n"),
        [(1, 17, Some("command[1]".into()))]
    );
    assert_eq!(
        places("command = [\"x\"]\nenv = { A = 1 }\n"),
        [(2, 13, Some("env.A".into()))]
    );
}

#[test]
fn syntax_errors_have_a_place() {
    let err = spec_from_toml("command = [\"x\"\n", no_config).unwrap_err();
    let [problem] = err.problems() else {
        panic!("{err}")
    };
    assert_eq!(problem.line_column().map(|(line, _)| line), Some(1));
    assert!(problem.message().contains("unclosed array"), "{problem}");
    assert_eq!(problem.field(), None);
}

#[test]
fn a_missing_command_is_named() {
    let err = spec_from_toml("id = \"a\"\n", no_config).unwrap_err();
    assert_eq!(err.problems()[0].message(), "missing field `command`");
}

#[test]
fn bad_values_are_reported_at_their_line_all_at_once() {
    let text = r#"id = "../x"
command = ["python3", "--config", "${FLEET_CONFIG}"]
env = { FLEET_EPOCH = "1", OK = "fine" }
priority = -3
[resources]
memory_max = "8GB"
[placement]
labels = { Model = "agx-orin" }
max_temp_c = 200
[lifecycle]
stop_timeout = "0s"
max_restarts = -1
"#;
    assert_eq!(
        places(text),
        [
            (1, 6, Some("id".into())),
            (2, 35, Some("command[2]".into())),
            (3, 9, Some("env.FLEET_EPOCH".into())),
            (4, 12, Some("priority".into())),
            (6, 14, Some("resources.memory_max".into())),
            (8, 12, Some("placement.labels.Model".into())),
            (9, 14, Some("placement.max_temp_c".into())),
            (11, 16, Some("lifecycle.stop_timeout".into())),
            (12, 16, Some("lifecycle.max_restarts".into())),
        ]
    );
    let all = problems(text);
    assert_eq!(
        all[4],
        "6:14: resources.memory_max: memory size \"8GB\" is invalid: write whole bytes or a whole \
         number with K, M, G or T (powers of 1024), e.g. \"512M\" or \"8G\""
    );
    assert_eq!(
        all[8],
        "12:16: lifecycle.max_restarts: max restarts \"-1\" is invalid: use a whole number from 0 \
         to 100"
    );
}

#[test]
fn config_file_problems_point_at_config_file() {
    let text = "command = [\"x\"]\nconfig_file = \"configs/.hidden\"\n";
    assert_eq!(
        problems(text),
        ["2:15: config_file: config file name \".hidden\" is invalid: use letters, digits, '.', \
          '_' and '-' (at most 128), not starting with '.'"]
    );
    let text = "command = [\"x\"]\nconfig_file = \"missing.json\"\n";
    let err = spec_from_toml(text, |_| Err(io::Error::from(io::ErrorKind::NotFound))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "2:15: config_file: config file \"missing.json\" cannot be read: entity not found"
    );
    let text = "command = [\"x\"]\nconfig_file = \"big.json\"\n";
    let err = spec_from_toml(text, |_| Ok(vec![0; MAX_CONFIG_BYTES + 1])).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("2:15: config_file: config file \"big.json\" is too large"));
    let text = "command = [\"x\"]\nconfig_file = \"configs/..\"\n";
    assert!(problems(text)[0]
        .starts_with("2:15: config_file: config file path \"configs/..\" does not name a file"));
}

#[test]
fn problems_point_at_the_value_or_at_the_key() {
    let text = "command = [\"x\"]\n[lifecycle]\nrestart = \"sometimes\"\n";
    assert_eq!(places(text), [(3, 11, Some("lifecycle.restart".into()))]);
    // An env name problem points at the name, not the value.
    let text = "command = [\"x\"]\n[env]\nNOTIFY_SOCKET = \"/x\"\n";
    assert_eq!(places(text), [(3, 1, Some("env.NOTIFY_SOCKET".into()))]);
}

#[test]
fn the_file_struct_converts_without_validation() {
    let file = SpecFile::from_toml(EXAMPLE).unwrap();
    assert_eq!(
        file.config_file.as_deref(),
        Some(Path::new("experiments/configs/amnesiac_001.json"))
    );
    assert_eq!(file.placement.power_mode.as_deref(), Some("MAXN"));
    let spec = file.to_proto(None).unwrap();
    assert_eq!(spec.config_content, b"");
    let big = SpecFile {
        priority: Some(1 << 40),
        ..file
    };
    assert_eq!(
        big.to_proto(None).unwrap_err().problems()[0]
            .path()
            .to_string(),
        "priority"
    );
}

#[test]
fn line_columns_count_characters() {
    assert_eq!(line_column("abc", 0), (1, 1));
    assert_eq!(line_column("a\nbc", 3), (2, 2));
    assert_eq!(line_column("é = 1\nx", 5), (1, 5));
    assert_eq!(line_column("a\n", 99), (2, 1));
}
