//! `fleet-sim-nvpmodel` against the real `nvpmodel` contract: its raw output compared
//! with the captures in the repository's fixtures, and the agent's own nvpmodel runner driving
//! it (query, switch, the reboot prompt, NVPM ERROR failures).

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use fleet_agent::hw::nvpmodel::{parse_dump, parse_query, parse_set_output, parse_status_file};
use fleet_agent::hw::{
    ModeRef, Nvpmodel, NvpmodelConf, NvpmodelConfig, NvpmodelError, PowerModes, SetModeOutcome,
    SetModeRequest,
};

const SIM: &str = env!("CARGO_BIN_EXE_fleet-sim-nvpmodel");

/// Tests here write small programs and run processes. A process forked while another
/// thread still has a fresh program open for writing keeps that file busy (ETXTBSY), so
/// the tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixtures() -> PathBuf {
    fleet_testbed::hwsim::fixtures_dir()
}

fn fixture_text(relative: &str) -> String {
    std::fs::read_to_string(fixtures().join(relative)).unwrap()
}

const AGX_CONF: &str = "jetson-agx-orin/etc/nvpmodel/nvpmodel_p3701_0000.conf";
const NX_CONF: &str = "jetson-orin-nx-16gb/etc/nvpmodel/nvpmodel_p3767_0000_super.conf";

/// One simulated board: a saved-mode file and the environment the sim reads.
struct Board {
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl Board {
    fn new(conf: &str, saved: Option<u32>) -> Board {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("var/lib/nvpmodel/status");
        if let Some(id) = saved {
            std::fs::create_dir_all(state.parent().unwrap()).unwrap();
            std::fs::write(&state, format!("pmode:{id:04}\n")).unwrap();
        }
        let env = vec![
            (
                "FLEET_SIM_NVPMODEL_CONF",
                fixtures().join(conf).display().to_string(),
            ),
            ("FLEET_SIM_NVPMODEL_STATE", state.display().to_string()),
            (
                "FLEET_SIM_NVPMODEL_REBOOT_LOG",
                dir.path().join("reboots").display().to_string(),
            ),
        ];
        Board { dir, env }
    }

    fn with(mut self, var: &'static str, value: &str) -> Board {
        self.env.push((var, value.to_owned()));
        self
    }

    fn saved(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.dir.path().join("var/lib/nvpmodel/status")).ok()?;
        parse_status_file(&text)
    }

    fn reboots(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("reboots")).unwrap_or_default()
    }

    /// Runs the sim with `args`, feeding `stdin` (None: stdin closed).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(SIM);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
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

    /// The agent's runner, pointed at a wrapper that gives the sim this board's
    /// environment (the runner passes the agent's own environment on).
    fn runner(&self, conf: &str) -> Nvpmodel {
        let wrapper = self.dir.path().join("nvpmodel");
        let mut script = String::from("#!/bin/sh\n");
        for (k, v) in &self.env {
            script.push_str(&format!("export {k}='{v}'\n"));
        }
        script.push_str(&format!("exec '{SIM}' \"$@\"\n"));
        std::fs::write(&wrapper, script).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        Nvpmodel::new(NvpmodelConfig {
            program: wrapper,
            conf: fixtures().join(conf),
            timeout: Duration::from_secs(20),
        })
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn query_prints_what_the_real_tool_printed() {
    let _serial = serial();
    let agx = Board::new(AGX_CONF, Some(2));
    let out = agx.run(&["-q"], None);
    assert!(out.status.success());
    assert_eq!(stdout(&out), fixture_text("jetson-agx-orin/nvpmodel/q.txt"));
    let nx = Board::new(NX_CONF, Some(4));
    assert_eq!(
        stdout(&nx.run(&["--query"], None)),
        fixture_text("jetson-orin-nx-16gb/nvpmodel/q.txt")
    );
    // No saved mode: the conf's default.
    let fresh = Board::new(NX_CONF, None);
    let mode = parse_query(&stdout(&fresh.run(&["-q"], None))).unwrap();
    assert_eq!((mode.id, mode.name.as_str()), (Some(4), "40W"));
    // A saved id the conf does not define: the default too.
    let odd = Board::new(AGX_CONF, Some(9));
    assert_eq!(
        parse_query(&stdout(&odd.run(&["-q"], None))).unwrap().id,
        Some(2)
    );
}

#[test]
fn verbose_query_has_the_r36_line_format() {
    let _serial = serial();
    let agx = Board::new(AGX_CONF, Some(2));
    let text = stdout(&agx.run(&["-q", "--verbose"], None));
    let capture = fixture_text("jetson-agx-orin/nvpmodel/q-verbose.txt");
    // The first four lines match the capture apart from the conf path.
    let conf = fixtures().join(AGX_CONF).display().to_string();
    let ours: Vec<_> = text
        .lines()
        .take(4)
        .map(|l| l.replace(&conf, "/etc/nvpmodel.conf"))
        .collect();
    let theirs: Vec<_> = capture.lines().take(4).collect();
    assert_eq!(ours, theirs);
    // Every setting line has the capture's shape, "no cap" printed as i64::MAX.
    let params: Vec<_> = text.lines().skip(4).collect();
    assert!(!params.is_empty());
    for line in &params {
        assert!(line.starts_with("NVPM VERB: PARAM "), "{line}");
        assert!(
            line.contains(": ARG ") && line.contains(": PATH ") && line.contains(": REAL_VAL: "),
            "{line}"
        );
    }
    assert!(
        Board::new(AGX_CONF, Some(0))
            .run(&["-q", "--verbose"], None)
            .stdout
            .windows(19)
            .any(|w| w == b"9223372036854775807"),
        "EMC -1 prints as i64::MAX"
    );
    assert_eq!(parse_query(&text).unwrap().id, Some(2));
}

#[test]
fn parse_verbose_dumps_modes_like_the_real_tool() {
    let _serial = serial();
    for (conf, default) in [(AGX_CONF, (2, "MODE_30W")), (NX_CONF, (4, "40W"))] {
        let board = Board::new(conf, None);
        let text = stdout(&board.run(&["-p", "--verbose"], None));
        let dump = parse_dump(&text).unwrap();
        assert_eq!((dump.default_id, dump.default_name.as_str()), default);
        let parsed = NvpmodelConf::parse(&fixture_text(conf)).unwrap();
        let expected: Vec<_> = parsed
            .modes
            .iter()
            .map(|m| (m.id, m.name.clone()))
            .collect();
        assert_eq!(dump.modes, expected);
        assert!(text.contains("NVPM VERB: GPU MAX_FREQ 2147483647") || conf == NX_CONF);
    }
    // The real capture parses the same way.
    let real = parse_dump(&fixture_text(
        "jetson-agx-orin/l4t-r35/nvpmodel/p-verbose.txt",
    ))
    .unwrap();
    assert_eq!(real.modes.len(), 4);
}

#[test]
fn switching_saves_the_mode_and_prints_nothing() {
    let _serial = serial();
    let board = Board::new(AGX_CONF, Some(2));
    let out = board.run(&["-m", "3"], None);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "");
    assert_eq!(board.saved(), Some(3));
    assert_eq!(
        std::fs::read_to_string(board.dir.path().join("var/lib/nvpmodel/status")).unwrap(),
        "pmode:0003\n"
    );
    let mode = parse_query(&stdout(&board.run(&["-q"], None))).unwrap();
    assert_eq!(mode.name, "MODE_50W");
}

#[test]
fn a_reboot_prompt_reads_the_answer_from_stdin() {
    let _serial = serial();
    // AGX Orin masks from the fixtures README: MAXN 0, 15W 248, 30W 240, 50W 0.
    let masks = "0=0,1=248,2=240,3=0";
    let board = || Board::new(AGX_CONF, Some(2)).with("FLEET_SIM_NVPMODEL_PG_MASKS", masks);

    let declined = board();
    let out = declined.run(&["-m", "1"], Some("no\n"));
    assert_eq!(
        stdout(&out),
        fixture_text("jetson-agx-orin/nvpmodel/m-reboot-required-declined.txt")
    );
    assert!(!out.status.success());
    assert_eq!(declined.saved(), Some(2), "a declined switch saves nothing");

    let confirmed = board();
    let out = confirmed.run(&["-m", "0"], Some("yes\n"));
    // The capture shows the operator's "yes" echoed by the terminal; a pipe has no echo.
    let capture = fixture_text("jetson-agx-orin/nvpmodel/m-reboot-required-confirmed.txt")
        .replace("yes\n", "");
    assert_eq!(stdout(&out), capture);
    assert!(out.status.success());
    assert_eq!(confirmed.saved(), Some(0));
    assert_eq!(confirmed.reboots(), "reboot 0\n");

    let no_answer = board();
    let out = no_answer.run(&["-m", "1"], None);
    let parsed = parse_set_output(&stdout(&out));
    assert_eq!(
        parsed.errors,
        ["bad input!", "optMask is 1, no request for power mode"]
    );
    assert_eq!(no_answer.saved(), Some(2));
    assert_eq!(no_answer.reboots(), "");

    // MAXN <-> MODE_50W share their masks: no prompt.
    let same_masks = Board::new(AGX_CONF, Some(0)).with("FLEET_SIM_NVPMODEL_PG_MASKS", masks);
    let out = same_masks.run(&["-m", "3"], None);
    assert_eq!(stdout(&out), "");
    assert_eq!(same_masks.saved(), Some(3));

    // Without masks, a mode listed as needing a reboot asks too.
    let listed = Board::new(NX_CONF, Some(4)).with("FLEET_SIM_NVPMODEL_REBOOT_MODES", "0");
    let out = listed.run(&["-m", "0"], Some("nope\n"));
    assert!(parse_set_output(&stdout(&out)).prompted);
    assert_eq!(listed.saved(), Some(4));
}

#[test]
fn failures_print_nvpm_errors() {
    let _serial = serial();
    let board = Board::new(AGX_CONF, Some(2)).with("FLEET_SIM_NVPMODEL_FAIL_MODES", "1");
    let out = board.run(&["-m", "1"], None);
    assert!(!out.status.success());
    let parsed = parse_set_output(&stdout(&out));
    let capture = parse_set_output(&fixture_text(
        "jetson-agx-orin/nvpmodel/m-write-error.orin-nano-4gb.txt",
    ));
    assert_eq!(parsed.errors.len(), capture.errors.len());
    assert_eq!(parsed.errors[2..], capture.errors[2..]);
    assert_eq!(board.saved(), Some(2));

    let unknown = board.run(&["-m", "7"], None);
    assert!(!unknown.status.success());
    assert!(
        stdout(&unknown).starts_with("NVPM ERROR: "),
        "{}",
        stdout(&unknown)
    );

    let bad = board.run(&["--frobnicate"], None);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Usage: nvpmodel"));

    let fan = board.run(&["-d", "cool"], None);
    assert!(!fan.status.success());
    assert!(stdout(&fan).starts_with("NVPM ERROR: "));
}

#[test]
fn conf_and_udata_flags_override_the_environment() {
    let _serial = serial();
    let board = Board::new(AGX_CONF, Some(2));
    let other_state = board.dir.path().join("other-status");
    let nx_conf = fixtures().join(NX_CONF).display().to_string();
    let out = board.run(
        &[
            "-f",
            &nx_conf,
            "-u",
            &other_state.display().to_string(),
            "-q",
        ],
        None,
    );
    assert_eq!(parse_query(&stdout(&out)).unwrap().name, "40W");
    // -f alone applies the saved (else default) mode of that conf.
    let out = board.run(
        &["-f", &nx_conf, "-u", &other_state.display().to_string()],
        None,
    );
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(&other_state).unwrap(),
        "pmode:0004\n"
    );
    assert_eq!(
        board.saved(),
        Some(2),
        "the environment's state is untouched"
    );
}

#[test]
fn a_switch_writes_the_settings_into_the_simulated_sysfs() {
    let _serial = serial();
    let sysfs = tempfile::tempdir().unwrap();
    let max = sysfs
        .path()
        .join("devices/17000000.ga10b/devfreq/17000000.ga10b/max_freq");
    std::fs::create_dir_all(max.parent().unwrap()).unwrap();
    std::fs::write(&max, "612000000\n").unwrap();
    let board = Board::new(AGX_CONF, Some(2)).with(
        "FLEET_SIM_NVPMODEL_SYSFS",
        &sysfs.path().display().to_string(),
    );
    assert!(board.run(&["-m", "3"], None).status.success());
    assert_eq!(std::fs::read_to_string(&max).unwrap(), "816000000\n");
    let verbose = stdout(&board.run(&["-q", "--verbose"], None));
    assert!(
        verbose.contains("ARG MAX_FREQ: PATH /sys/devices/17000000.ga10b/devfreq/17000000.ga10b/max_freq: REAL_VAL: 816000000 CONF_VAL: 816000000"),
        "{verbose}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_agent_runner_queries_and_switches() {
    let _serial = serial();
    let board = Board::new(AGX_CONF, Some(2));
    let nvpmodel = board.runner(AGX_CONF);
    runtime().block_on(async {
        let mode = nvpmodel.query().await.unwrap();
        assert_eq!((mode.id, mode.name.as_str()), (Some(2), "MODE_30W"));
        let outcome = nvpmodel
            .set_mode(&SetModeRequest {
                mode: ModeRef::Name("MODE_50W".into()),
                allow_reboot: false,
            })
            .await
            .unwrap();
        match outcome {
            SetModeOutcome::Switched { mode } => assert_eq!(mode.id, Some(3)),
            other => panic!("{other:?}"),
        }
        assert!(!outcome_needs_reboot(&nvpmodel, 3).await);
    });
    assert_eq!(board.saved(), Some(3));
}

async fn outcome_needs_reboot(nvpmodel: &Nvpmodel, id: u32) -> bool {
    nvpmodel
        .set_mode(&SetModeRequest {
            mode: ModeRef::Id(id),
            allow_reboot: false,
        })
        .await
        .unwrap()
        .reboot_required()
}

#[test]
fn the_agent_runner_declines_a_reboot_unless_allowed() {
    let _serial = serial();
    let board =
        Board::new(AGX_CONF, Some(2)).with("FLEET_SIM_NVPMODEL_PG_MASKS", "0=0,1=248,2=240,3=0");
    let nvpmodel = board.runner(AGX_CONF);
    runtime().block_on(async {
        let declined = nvpmodel
            .set_mode(&SetModeRequest {
                mode: ModeRef::Name("MAXN".into()),
                allow_reboot: false,
            })
            .await
            .unwrap();
        assert_eq!(
            declined,
            SetModeOutcome::RebootRequired {
                id: 0,
                name: "MAXN".into()
            }
        );
        assert!(declined.reboot_required());
        assert_eq!(nvpmodel.query().await.unwrap().id, Some(2));

        let allowed = nvpmodel
            .set_mode(&SetModeRequest {
                mode: ModeRef::Id(0),
                allow_reboot: true,
            })
            .await
            .unwrap();
        assert_eq!(
            allowed,
            SetModeOutcome::Rebooting {
                id: 0,
                name: "MAXN".into()
            }
        );
    });
    assert_eq!(board.reboots(), "reboot 0\n");
    assert_eq!(board.saved(), Some(0));
}

#[test]
fn the_agent_runner_reports_nvpm_errors() {
    let _serial = serial();
    let board = Board::new(NX_CONF, Some(4)).with("FLEET_SIM_NVPMODEL_FAIL_MODES", "1");
    let nvpmodel = board.runner(NX_CONF);
    runtime().block_on(async {
        let err = nvpmodel
            .set_mode(&SetModeRequest {
                mode: ModeRef::Name("10W".into()),
                allow_reboot: false,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, NvpmodelError::Rejected { id: 1, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("failed to set power mode!"),
            "{err}"
        );
        let err = nvpmodel
            .set_mode(&SetModeRequest {
                mode: ModeRef::Name("TURBO".into()),
                allow_reboot: false,
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("0 MAXN_SUPER, 1 10W"), "{err}");
    });
    assert_eq!(board.saved(), Some(4));
}
