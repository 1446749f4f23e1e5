//! `fleet-sim-jetson-clocks` against the real `jetson_clocks` contract: locking turns
//! the real "before" capture into the real "after" capture, the script's quirks are
//! kept, and the agent's own clocks runner drives it (lock, store, restore, a restore
//! that fails with exit status 0).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use fleet_agent::hw::clocks::{parse_show, parse_store_file};
use fleet_agent::hw::{Clocks, ClocksError, ClocksState, JetsonClocks, JetsonClocksConfig};

const SIM: &str = env!("CARGO_BIN_EXE_fleet-sim-jetson-clocks");

/// Tests here write small programs and run processes; a process forked while another
/// thread has a fresh program open for writing keeps it busy (ETXTBSY), so the tests
/// run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture(relative: &str) -> PathBuf {
    fleet_testbed::hwsim::fixtures_dir().join(relative)
}

fn fixture_text(relative: &str) -> String {
    std::fs::read_to_string(fixture(relative)).unwrap()
}

const R36_SHOW: &str = "jetson-agx-orin/jetson_clocks-show.txt";
const R36_LOCKED: &str = "jetson-agx-orin/jetson_clocks/show-after-run.txt";
const R35_SHOW: &str = "jetson-agx-orin/l4t-r35/jetson_clocks-show.txt";

struct Board {
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl Board {
    fn new(seed: &str) -> Board {
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            (
                "FLEET_SIM_JETSON_CLOCKS_STATE",
                dir.path().join("clocks").display().to_string(),
            ),
            (
                "FLEET_SIM_JETSON_CLOCKS_SHOW",
                fixture(seed).display().to_string(),
            ),
            ("HOME", dir.path().display().to_string()),
        ];
        Board { dir, env }
    }

    fn with(mut self, var: &'static str, value: &str) -> Board {
        self.env.push((var, value.to_owned()));
        self
    }

    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(SIM)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn show(&self) -> String {
        String::from_utf8(self.run(&["--show"], None).stdout).unwrap()
    }

    /// The agent's runner, through a wrapper that gives the sim this board's
    /// environment.
    fn runner(&self) -> JetsonClocks {
        let wrapper = self.dir.path().join("jetson_clocks");
        let mut script = String::from("#!/bin/sh\n");
        for (k, v) in &self.env {
            script.push_str(&format!("export {k}='{v}'\n"));
        }
        script.push_str(&format!("exec '{SIM}' \"$@\"\n"));
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        JetsonClocks::new(JetsonClocksConfig {
            program: wrapper,
            store_file: self.dir.path().join("var/lib/fleet-agent/l4t_dfs.conf"),
            timeout: Duration::from_secs(20),
        })
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn locking_turns_the_before_capture_into_the_after_capture() {
    let _serial = serial();
    let board = Board::new(R36_SHOW);
    assert_eq!(board.show(), fixture_text(R36_SHOW));
    let out = board.run(&[], None);
    assert!(out.status.success());
    assert_eq!(stdout(&out), "", "locking prints nothing");
    assert_eq!(board.show(), fixture_text(R36_LOCKED));
}

#[test]
fn r35_output_keeps_its_own_format_and_locks() {
    let _serial = serial();
    let board = Board::new(R35_SHOW);
    assert_eq!(board.show(), fixture_text(R35_SHOW));
    assert_eq!(
        parse_show(&board.show()).unwrap().state(),
        ClocksState::Unlocked
    );
    board.run(&[], None);
    let locked = board.show();
    assert_eq!(parse_show(&locked).unwrap().state(), ClocksState::Locked);
    // Lexical CPU order and the trailing blank of each CPU line survive.
    let cpu_lines: Vec<_> = locked.lines().filter(|l| l.starts_with("cpu")).collect();
    assert!(cpu_lines[2].starts_with("cpu10: "), "{cpu_lines:?}");
    assert!(cpu_lines.iter().all(|l| l.ends_with(' ')));
}

#[test]
fn store_and_restore_round_trip() {
    let _serial = serial();
    let board = Board::new(R36_SHOW);
    let file = board.dir.path().join("saved.conf");
    let file_arg = file.display().to_string();
    let out = board.run(&["--store", &file_arg], None);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out),
        format!("Storing system configuration in {file_arg}\n")
    );
    let stored = parse_store_file(&std::fs::read_to_string(&file).unwrap());
    let example = parse_store_file(&fixture_text(
        "jetson-agx-orin/jetson_clocks/store-example.conf",
    ));
    // The same files as the real script's store, with the same values for these clocks.
    for (path, value) in &stored {
        if let Some((_, expected)) = example.iter().find(|(p, _)| p == path) {
            assert_eq!(value, expected, "{path}");
        }
    }
    assert!(stored
        .iter()
        .any(|(p, _)| p.ends_with("cpu0/cpuidle/state1/disable")));

    board.run(&[], None);
    assert_eq!(
        parse_show(&board.show()).unwrap().state(),
        ClocksState::Locked
    );
    let out = board.run(&["--restore", &file_arg], None);
    assert_eq!(
        stdout(&out),
        format!("Restoring system configuration from {file_arg}\n")
    );
    assert_eq!(
        parse_show(&board.show()).unwrap().state(),
        ClocksState::Unlocked
    );

    // The default file is the script's variable, not what its usage text says.
    board.run(&["--store"], None);
    assert!(board.dir.path().join(".jetsonclocks_conf.txt").exists());
}

#[test]
fn the_scripts_quirks_are_kept() {
    let _serial = serial();
    let board = Board::new(R36_SHOW);
    // Unknown options exit 0 after the usage.
    let out = board.run(&["--off"], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("Unknown option: --off"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    // Overwriting asks first.
    let file = board.dir.path().join("saved.conf");
    std::fs::write(&file, "old\n").unwrap();
    let arg = file.display().to_string();
    let refused = board.run(&["--store", &arg], Some("n\n"));
    assert_eq!(refused.status.code(), Some(1));
    assert!(stdout(&refused).ends_with(&format!("Error: file {arg} already exists!\n")));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "old\n");
    let closed = board.run(&["--store", &arg], None);
    assert_eq!(closed.status.code(), Some(1), "no answer is no");
    let agreed = board.run(&["--store", &arg], Some("Y\n"));
    assert!(agreed.status.success());
    assert_ne!(std::fs::read_to_string(&file).unwrap(), "old\n");
    // A missing store file.
    let missing = board.run(&["--restore", "/nonexistent/saved.conf"], None);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        stdout(&missing),
        "Error: /nonexistent/saved.conf file not found !\n"
    );
    // Failed restore writes still exit 0.
    board.run(&[], None);
    let failing = Board {
        dir: tempfile::tempdir().unwrap(),
        env: board.env.clone(),
    }
    .with("FLEET_SIM_JETSON_CLOCKS_FAIL_RESTORE", "1");
    let out = failing.run(&["--restore", &arg], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("Error: Failed to restore /sys/"));
    assert_eq!(
        parse_show(&board.show()).unwrap().state(),
        ClocksState::Locked
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_agent_runner_locks_and_unlocks() {
    let _serial = serial();
    for seed in [R36_SHOW, R35_SHOW] {
        let board = Board::new(seed);
        let clocks = board.runner();
        runtime().block_on(async {
            assert_eq!(clocks.show().await.unwrap().state(), ClocksState::Unlocked);
            assert_eq!(clocks.lock().await.unwrap(), ClocksState::Locked);
            assert!(clocks.config().store_file.exists(), "{seed}: stored first");
            assert_eq!(clocks.lock().await.unwrap(), ClocksState::Locked);
            assert_eq!(clocks.unlock().await.unwrap(), ClocksState::Unlocked);
            // Locking again replaces the store without a prompt.
            assert_eq!(clocks.lock().await.unwrap(), ClocksState::Locked);
            assert_eq!(clocks.unlock().await.unwrap(), ClocksState::Unlocked);
        });
    }
}

#[test]
fn the_agent_runner_sees_through_a_restore_that_exits_zero() {
    let _serial = serial();
    let board = Board::new(R36_SHOW).with("FLEET_SIM_JETSON_CLOCKS_FAIL_RESTORE", "1");
    let clocks = board.runner();
    runtime().block_on(async {
        clocks.lock().await.unwrap();
        let err = clocks.unlock().await.unwrap_err();
        assert!(matches!(err, ClocksError::Reported { .. }), "{err}");
        assert!(err.to_string().contains("Failed to restore"), "{err}");
        assert_eq!(clocks.show().await.unwrap().state(), ClocksState::Locked);
    });
}
