//! The `fleet-agent` command line as an administrator meets it: the config
//! it prints is one it accepts, and a missing or bad config is refused with
//! EX_CONFIG (64) and a message naming the file and the problem.

use std::path::Path;
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .args(args)
        .env_remove("FLEET_CONTROLLER")
        .env_remove("FLEET_AGENT_CONFIG")
        .output()
        .expect("run fleet-agent")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn the_generated_config_checks_out() {
    let dir = tempfile::tempdir().unwrap();
    let generated = agent(&["gen-config"]);
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &generated.stdout).unwrap();
    let checked = agent(&["--config", path.to_str().unwrap(), "check-config"]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    let said = text(&checked.stdout);
    assert!(said.contains(": ok"), "{said}");
    assert!(said.contains("joins no controller"), "{said}");
}

#[test]
fn a_missing_or_bad_config_is_refused_naming_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = agent(&["--config", missing.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot read the agent config") && err.contains("nope.toml"),
        "{err}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "node = \"bad name!\"\n").unwrap();
    let out = agent(&["--config", bad.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    for needle in ["bad.toml", "node", "bad name!", "lowercase letters"] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
    assert!(!Path::new(&dir.path().join("state")).exists());
}
