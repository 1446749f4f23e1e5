//! The `fleet-controller` command line as an administrator meets it: the
//! config it prints is one it accepts, and an unknown key is refused with
//! EX_CONFIG (64), the line and column, the keys it knows and the command
//! that prints a valid config.

use std::process::{Command, Output};

fn controller(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleet-controller"))
        .args(args)
        .env_remove("FLEET_CONTROLLER_CONFIG")
        .output()
        .expect("run fleet-controller")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn the_generated_config_checks_out() {
    let dir = tempfile::tempdir().unwrap();
    let generated = controller(&["gen-config"]);
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, &generated.stdout).unwrap();
    let checked = controller(&["--config", path.to_str().unwrap(), "check-config"]);
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    assert!(text(&checked.stdout).contains(": ok"));
}

#[test]
fn an_unknown_key_is_refused_with_where_and_what_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("controller.toml");
    std::fs::write(&bad, "bogus = 1\n").unwrap();
    let out = controller(&["--config", bad.to_str().unwrap(), "check-config"]);
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    for needle in [
        "controller.toml",
        "line 1, column 1",
        "unknown field `bogus`",
        "heartbeat_timeout_s",
        "fleet-controller gen-config",
    ] {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}
