//! The binary without any peer: `submit --dry-run`, completions, the
//! configuration it resolves, usage errors, and commands that need a
//! controller or an unreachable agent.

mod common;

use common::Home;

const GOOD: &str = r#"id = "amnesiac-001"
command = ["python3", "-m", "src.runner.experiment_runner", "--config", "${FLEET_CONFIG}"]
working_dir = "/opt/brain-in-jar"
env = { MODEL = "llama-3.2-1b" }
config_file = "configs/amnesiac_001.json"
priority = 50
[resources]
memory_max = "8G"
cpu_quota = "80%"
[lifecycle]
max_runtime = "12h"
autostart = true
"#;

/// Two value problems and their places.
const BAD: &str = r#"command = ["python3", "run.py"]
priority = 50
[resources]
memory_max = "8GB"
[lifecycle]
restart = "always"
"#;

fn good_spec(home: &Home) -> std::path::PathBuf {
    home.write("configs/amnesiac_001.json", "{\"memory\": false}");
    home.write("good.toml", GOOD)
}

#[test]
fn dry_run_of_a_good_file_shows_what_would_start() {
    let home = Home::new();
    good_spec(&home);
    let run = home
        .run(&["submit", "--dry-run", "good.toml"])
        .expect_code(0);
    assert!(
        run.stdout
            .starts_with("good.toml: valid; would start amnesiac-001\n"),
        "{}",
        run.stdout
    );
    for want in [
        "python3 -m src.runner.experiment_runner --config ${FLEET_CONFIG}",
        "amnesiac_001.json (17 B)",
        "memory at most 8G, cpu at most 80%",
        // Defaults are written out.
        "stop timeout 30s",
        "restarted on failure up to 3 times, 5s apart",
        "dry run: nothing was started",
    ] {
        assert!(
            run.stdout.contains(want),
            "missing {want:?} in\n{}",
            run.stdout
        );
    }
    assert_eq!(run.stderr, "");

    let json = home
        .run(&["submit", "--dry-run", "good.toml", "--output", "json"])
        .expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let entry = &v["submitted"][0];
    assert_eq!(entry["dry_run"], true);
    assert_eq!(entry["status"], serde_json::Value::Null);
    assert_eq!(entry["spec"]["id"], "amnesiac-001");
    assert_eq!(entry["spec"]["memory_max"], "8G");
    assert_eq!(entry["spec"]["config_bytes"], 17);
    assert_eq!(entry["spec"]["stop_timeout"], "30s");
}

#[test]
fn dry_run_needs_no_configuration_at_all() {
    let home = Home::new();
    good_spec(&home);
    // A broken config file does not stop a dry run.
    home.write(".config/fleet/fleetctl.toml", "this is not toml");
    home.run(&["submit", "--dry-run", "good.toml"])
        .expect_code(0);
}

#[test]
fn a_bad_file_reports_file_line_column_field_and_problem() {
    let home = Home::new();
    good_spec(&home);
    home.write("bad.toml", BAD);
    let run = home
        .run(&["submit", "--dry-run", "good.toml", "bad.toml"])
        .expect_code(1);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stderr);
    assert!(
        lines[0]
            .starts_with("bad.toml:4:14: resources.memory_max: memory size \"8GB\" is invalid: "),
        "{}",
        run.stderr
    );
    assert!(
        lines[1].starts_with("bad.toml:6:11: lifecycle.restart: restart policy \"always\" is invalid: use \"on-failure\" or \"never\""),
        "{}",
        run.stderr
    );
    assert_eq!(
        lines[2],
        "fleetctl: 2 problems in bad.toml; nothing was submitted"
    );
    assert_eq!(
        run.stdout, "",
        "nothing is shown as valid when one file is bad"
    );
    assert!(!run.stderr.contains("panicked") && !run.stderr.contains("Error {"));

    // Shape and syntax errors have places too.
    home.write(
        "typo.toml",
        "command = [\"/bin/true\"]\n[lifecycle]\nstop_timout = \"30s\"\n",
    );
    let run = home
        .run(&["submit", "--dry-run", "typo.toml"])
        .expect_code(1);
    assert!(
        run.stderr
            .starts_with("typo.toml:3:1: lifecycle.stop_timout: unknown field `stop_timout`"),
        "{}",
        run.stderr
    );
    home.write("syntax.toml", "command = [\"/bin/true\"\n[resources]\n");
    let run = home
        .run(&["submit", "--dry-run", "syntax.toml"])
        .expect_code(1);
    assert!(
        run.stderr.starts_with("syntax.toml:2:1: "),
        "{}",
        run.stderr
    );

    let run = home
        .run(&["submit", "--dry-run", "missing.toml"])
        .expect_code(1);
    assert!(
        run.stderr
            .starts_with("fleetctl: cannot read missing.toml: "),
        "{}",
        run.stderr
    );
}

#[test]
fn bash_completions_cover_the_commands() {
    let home = Home::new();
    let run = home.run(&["completions", "bash"]).expect_code(0);
    assert!(run.stdout.contains("_fleetctl()"), "{}", run.stdout);
    assert!(
        run.stdout.contains("complete -F _fleetctl"),
        "{}",
        run.stdout
    );
    for word in ["submit", "logs", "pki", "--agent", "--output"] {
        assert!(run.stdout.contains(word), "{word} not completed");
    }
    home.run(&["completions", "tcsh"]).expect_code(2);
}

#[test]
fn controller_commands_say_they_need_a_controller() {
    let home = Home::new();
    let run = home.run(&["ps"]).expect_code(1);
    assert_eq!(
        run.stderr.trim_end(),
        "fleetctl: \"ps\" needs a controller: name one with --controller HOST:PORT, \
         FLEET_CONTROLLER or `controller` in a context of the config file; or use \
         --agent HOST:PORT for a single board"
    );
    assert_eq!(run.stdout, "");
    // Commands without a single-board form say so, even with --agent.
    let run = home
        .run(&["--agent", "127.0.0.1:1", "events", "-f"])
        .expect_code(1);
    assert_eq!(
        run.stderr.trim_end(),
        "fleetctl: \"events\" needs a controller; it has no single-board form with --agent"
    );
    let run = home
        .run(&["node", "drain", "jetson-01", "--wait"])
        .expect_code(1);
    assert!(!run.stderr.contains("--agent"), "{}", run.stderr);
    home.run(&["policy", "get"]).expect_code(1);
}

#[test]
fn a_controller_without_certificates_says_where_they_were_looked_for() {
    let home = Home::new();
    let run = home
        .run(&["--controller", "lab:7400", "status", "amnesiac-001"])
        .expect_code(1);
    assert!(
        run.stderr.contains(".config/fleet/ca.pem"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("fleetctl pki init"), "{}", run.stderr);
    // Agent-only commands are refused before any connection, naming --agent.
    let run = home
        .run(&["--controller", "lab:7400", "rm", "amnesiac-001"])
        .expect_code(1);
    assert!(
        run.stderr
            .starts_with("fleetctl: \"rm\" works only with --agent HOST:PORT: "),
        "{}",
        run.stderr
    );
}

#[test]
fn usage_errors_exit_2_before_any_connection() {
    let home = Home::new();
    for args in [
        vec!["ps", "--state", "sleeping"],
        vec!["stop"],
        vec!["--agent", "127.0.0.1:1", "stop", "../x"],
        vec![
            "--agent",
            "127.0.0.1:1",
            "logs",
            "x",
            "--since",
            "yesterday",
        ],
        vec!["--agent", "127.0.0.1:1", "clocks", "maybe"],
        vec![
            "--agent",
            "127.0.0.1:1",
            "--node",
            "a",
            "power",
            "b",
            "MAXN",
        ],
        vec!["--controller", "a:1", "--agent", "b:2", "ps"],
        vec!["submit", "x.toml", "--dry-run", "--wait"],
        vec!["--controller", "127.0.0.1:1", "ps", "--state", "disrupted"],
        vec!["--controller", "127.0.0.1:1", "ps", "--label", "nolabel"],
        vec!["--controller", "127.0.0.1:1", "power", "MAXN"],
        vec!["--controller", "127.0.0.1:1", "node", "label", "x", "A=b"],
        vec![
            "--controller",
            "127.0.0.1:1",
            "policy",
            "set",
            "pack",
            "--weight",
            "heat=1",
        ],
        vec!["--controller", "127.0.0.1:1", "events", "../x"],
        vec!["--agent", "127.0.0.1:1", "stop", "x", "--reason", "why"],
        vec!["--agent", "127.0.0.1:1", "power", "MAXN", "--force"],
    ] {
        let run = home.run(&args).expect_code(2);
        assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn an_unreachable_agent_is_an_error_with_the_address() {
    let home = Home::new();
    home.run(&["pki", "init", "--dir", "pki", "--fleet", "lab"])
        .expect_code(0);
    home.run(&[
        "pki", "issue", "user", "ada", "--role", "admin", "--dir", "pki",
    ])
    .expect_code(0);
    let run = home
        .run(&[
            "--agent",
            "127.0.0.1:1",
            "--ca",
            "pki/ca.pem",
            "--cert",
            "pki/user-ada.pem",
            "--key",
            "pki/user-ada.key",
            "ps",
        ])
        .expect_code(1);
    assert!(
        run.stderr
            .starts_with("fleetctl: cannot open a gRPC channel to 127.0.0.1:1"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);

    // Missing certificates say where they were looked for and how to make them.
    let run = home.run(&["--agent", "127.0.0.1:1", "ps"]).expect_code(1);
    assert!(
        run.stderr.contains(".config/fleet/ca.pem"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("fleetctl pki init"), "{}", run.stderr);
}

#[test]
fn settings_come_from_flags_then_env_then_the_context() {
    let home = Home::new();
    home.write(
        ".config/fleet/fleetctl.toml",
        "current_context = \"lab\"\n[contexts.lab]\nagent = \"board:7443\"\nca = \"certs/ca.pem\"\ncert = \"certs/ada.pem\"\n",
    );
    let run = home
        .command()
        .args(["config", "-o", "json", "--cert", "/flag/cert.pem"])
        .env("FLEET_CA", "/env/ca.pem")
        .env("FLEET_CERT", "/env/cert.pem")
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["context"]["value"], "lab");
    assert_eq!(v["agent"]["value"], "board:7443");
    assert_eq!(v["agent"]["source"], "context \"lab\"");
    assert_eq!(v["ca"]["value"], "/env/ca.pem");
    assert_eq!(v["cert"]["value"], "/flag/cert.pem");
    assert_eq!(v["cert"]["source"], "--cert");
    assert!(v["key"]["value"]
        .as_str()
        .unwrap()
        .ends_with(".config/fleet/user.key"));

    // XDG_CONFIG_HOME moves the file; FLEET_CONFIG_FILE names another.
    let xdg = home.path("xdg");
    home.write(
        "xdg/fleet/fleetctl.toml",
        "[contexts.x]\ncontroller = \"c:7400\"\n",
    );
    let run = common::run(
        home.command()
            .args(["config", "-o", "json", "--context", "x"])
            .env("XDG_CONFIG_HOME", &xdg),
    )
    .expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["controller"]["value"], "c:7400");

    // A bad file is named, with the line.
    home.write("broken.toml", "[contexts.x]\nagnet = \"b:1\"\n");
    let run = home.run(&["--config", "broken.toml", "ps"]).expect_code(1);
    assert!(
        run.stderr.starts_with("fleetctl: the config file broken.toml is invalid at line 2, column 1: unknown field `agnet`"),
        "{}",
        run.stderr
    );
    let run = common::run(home.command().args(["ps"]).env("FLEET_OUTPUT", "yaml")).expect_code(1);
    assert!(run.stderr.contains("FLEET_OUTPUT"), "{}", run.stderr);
}
