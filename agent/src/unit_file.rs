//! Unit names of experiment instances and the drop-in that configures one.
//!
//! Each experiment runs as `brain-experiment@<id>.service`, an instance of
//! the shipped template. Per instance the agent writes a drop-in
//! (`brain-experiment@<id>.service.d/50-fleet.conf`) holding the command,
//! environment, limits and restart policy; this module renders it from a
//! validated [`ExperimentSpec`]. Pure text, no I/O.
//!
//! **Quoting.** Values reach systemd through three different parsers, and
//! each gets exactly the escaping it needs (systemd.syntax(7),
//! systemd.service(5) "Command lines", systemd.exec(5) `Environment=`):
//!
//! - `ExecStart=`: every word double-quoted, `\` and `"` escaped with a
//!   backslash, `%` doubled (specifiers are expanded after unquoting), `$`
//!   doubled (systemd expands variables when it starts the process) except
//!   in `${FLEET_CONFIG}`, `${FLEET_EXPERIMENT_ID}` and `${FLEET_EPOCH}`,
//!   which systemd is meant to replace with the values this drop-in sets.
//!   Quoting the program too is harmless: the prefixes `-@:+!` are checked
//!   after unquoting, which is why the spec refuses a program starting with
//!   one.
//! - `Environment=`: the whole `NAME=value` double-quoted, with the same
//!   backslash and `%` escaping, but `$` left alone: systemd does not expand
//!   variables there, so `$$` would stay two dollars.
//! - `WorkingDirectory=`: taken verbatim (no unquoting at all), so only `%`
//!   is doubled; the spec guarantees a path without quotes, backslashes or
//!   control characters.
//!
//! Tabs and any other control character become `\t` / `\xNN` escapes, so no
//! value can end a line of the file.
//!
//! **Restarts.** systemd counts every start against `StartLimitBurst=`, the
//! first one included, so `max_restarts` crashes need a burst of
//! `max_restarts + 1`. The agent resets the counter (ResetFailedUnit) before
//! each start it makes itself, so the budget is spent by crashes only.
//! Crashes spaced wider than `StartLimitIntervalSec=` escape systemd's count;
//! the agent's own crash counter covers those.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use fleet_proto::spec::{
    substitutions, ExperimentId, ExperimentSpec, ENV_CONFIG, ENV_EPOCH, ENV_EXPERIMENT_ID,
};

/// The template's name before the `@`: instances are `<TEMPLATE>@<id>.service`,
/// the target that starts them at boot is `<TEMPLATE>.target`.
pub const TEMPLATE: &str = "brain-experiment";

/// The window over which systemd counts restarts, before the restart delays
/// are added: room for a process to start and crash a few times.
pub const START_LIMIT_BASE_INTERVAL: Duration = Duration::from_secs(300);

/// `brain-experiment@<id>.service`.
pub fn instance_unit_name(id: &ExperimentId) -> String {
    instance_unit_name_for(TEMPLATE, id)
}

/// `<template>@<id>.service`, for a template other than [`TEMPLATE`].
pub fn instance_unit_name_for(template: &str, id: &ExperimentId) -> String {
    format!("{template}@{id}.service")
}

/// The experiment id of `brain-experiment@<id>.service`, and `None` for any
/// other unit name: the agent never touches a unit this refuses.
pub fn parse_instance_unit(name: &str) -> Option<ExperimentId> {
    parse_instance_unit_for(TEMPLATE, name)
}

/// [`parse_instance_unit`] for a template other than [`TEMPLATE`].
pub fn parse_instance_unit_for(template: &str, name: &str) -> Option<ExperimentId> {
    let instance = name
        .strip_prefix(template)?
        .strip_prefix('@')?
        .strip_suffix(".service")?;
    ExperimentId::new(instance).ok()
}

/// The drop-in for one experiment instance.
///
/// `config_path` is where the agent stored `spec.config()` on the board
/// (`None` when the spec has no config file); it becomes `FLEET_CONFIG`.
/// The agent builds it from its state directory and the validated config
/// name, so it is an absolute UTF-8 path; anything else is escaped, never
/// able to break the file, but would not name the file. `epoch` becomes
/// `FLEET_EPOCH`, so the running unit shows which placement started it.
pub fn render_dropin(spec: &ExperimentSpec, config_path: Option<&Path>, epoch: u64) -> String {
    let id = spec.id();
    let l = spec.lifecycle();
    let r = spec.resources();
    // The id is a slug and the epoch a number: safe in a comment.
    let mut lines = vec![
        format!("# Written by fleet-agent for experiment {id}, epoch {epoch}."),
        "# The agent rewrites this file on every start: do not edit it.".to_owned(),
        String::new(),
        "[Unit]".to_owned(),
    ];
    if l.restarts_on_failure() {
        let window = START_LIMIT_BASE_INTERVAL + l.restart_delay() * (l.max_restarts() + 1);
        lines.push(format!("StartLimitIntervalSec={}", systemd_seconds(window)));
        lines.push(format!("StartLimitBurst={}", l.max_restarts() + 1));
    } else {
        // No automatic restarts: only the agent starts the unit, and its
        // starts must never be refused.
        lines.push("StartLimitIntervalSec=0".to_owned());
    }

    lines.push(String::new());
    lines.push("[Service]".to_owned());
    // An empty assignment drops the template's command; without it the
    // service would have two and refuse to load.
    lines.push("ExecStart=".to_owned());
    let words: Vec<String> = spec.command().argv().iter().map(|a| exec_word(a)).collect();
    lines.push(format!("ExecStart={}", words.join(" ")));
    if let Some(dir) = spec.working_dir() {
        lines.push(format!(
            "WorkingDirectory={}",
            dir.as_str().replace('%', "%%")
        ));
    }
    let mut env = vec![
        env_assignment(ENV_EXPERIMENT_ID, id.as_str()),
        env_assignment(ENV_EPOCH, &epoch.to_string()),
    ];
    if let Some(path) = config_path {
        env.push(env_assignment(ENV_CONFIG, &path.to_string_lossy()));
    }
    env.extend(
        spec.env()
            .iter()
            .map(|(name, value)| env_assignment(name.as_str(), value.as_str())),
    );
    lines.extend(env.into_iter().map(|e| format!("Environment={e}")));
    if let Some(bytes) = r.memory_max() {
        lines.push(format!("MemoryMax={bytes}"));
    }
    if let Some(percent) = r.cpu_quota_percent() {
        lines.push(format!("CPUQuota={percent}%"));
    }
    if l.restarts_on_failure() {
        lines.push("Restart=on-failure".to_owned());
        lines.push(format!("RestartSec={}", systemd_time(l.restart_delay())));
    } else {
        lines.push("Restart=no".to_owned());
    }
    let runtime = l.max_runtime().map_or("infinity".to_owned(), systemd_time);
    lines.push(format!("RuntimeMaxSec={runtime}"));
    lines.push(format!("TimeoutStopSec={}", systemd_time(l.stop_timeout())));
    lines.push(String::new());
    lines.join("\n")
}

/// A time span systemd reads exactly: whole seconds, or milliseconds when
/// there is a fraction (`5s`, `1500ms`).
fn systemd_time(d: Duration) -> String {
    let millis = d.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// Whole seconds, rounded up: for windows where only "at least" matters.
fn systemd_seconds(d: Duration) -> String {
    format!("{}s", d.as_millis().div_ceil(1000))
}

/// The drop-in that makes systemd record how each run ended, even when the
/// agent is not running and the unit is collected before the agent reads
/// it: `ExecStopPost=` runs `fleet-agent record-exit <file>` with
/// `$SERVICE_RESULT`, `$EXIT_CODE` and `$EXIT_STATUS` set by systemd. The
/// `+` prefix runs it outside the experiment's sandbox, so it can write the
/// agent's state directory.
pub fn render_exit_recorder(agent: &Path, record: &Path) -> String {
    format!(
        "# Written by fleet-agent: records how each run ends.\n\n[Service]\nExecStopPost=+{} {} {}\n",
        exec_word(&agent.to_string_lossy()),
        exec_word("record-exit"),
        exec_word(&record.to_string_lossy()),
    )
}

/// One word of a command line, quoted for `ExecStart=`.
fn exec_word(arg: &str) -> String {
    let allowed: Vec<(usize, &str)> = substitutions(arg).collect();
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    let mut i = 0;
    while let Some(c) = arg[i..].chars().next() {
        if let Some((_, name)) = allowed.iter().find(|(at, _)| *at == i) {
            let _ = write!(out, "${{{name}}}");
            i += name.len() + 3;
            continue;
        }
        if c == '$' {
            out.push_str("$$");
        } else {
            push_escaped(&mut out, c);
        }
        i += c.len_utf8();
    }
    out.push('"');
    out
}

/// `NAME=value`, quoted for `Environment=`.
fn env_assignment(name: &str, value: &str) -> String {
    let mut out = String::with_capacity(name.len() + value.len() + 3);
    out.push('"');
    for c in name.chars().chain(['=']).chain(value.chars()) {
        push_escaped(&mut out, c);
    }
    out.push('"');
    out
}

/// The escaping shared by every quoted value: C-style backslash escapes,
/// which systemd undoes when unquoting, and `%%` for the specifier
/// expansion that follows.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '"' => out.push_str("\\\""),
        '%' => out.push_str("%%"),
        '\t' => out.push_str("\\t"),
        c if c.is_ascii_control() => {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use fleet_proto::v1;

    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    fn spec_with(f: impl FnOnce(&mut v1::ExperimentSpec)) -> ExperimentSpec {
        let mut wire = v1::ExperimentSpec {
            id: "amnesiac-001".into(),
            command: strings(&["/usr/bin/python3", "run.py"]),
            ..Default::default()
        };
        f(&mut wire);
        ExperimentSpec::try_from(&wire).unwrap()
    }

    fn id(s: &str) -> ExperimentId {
        ExperimentId::new(s).unwrap()
    }

    #[test]
    fn instance_names_round_trip() {
        assert_eq!(
            instance_unit_name(&id("amnesiac-001")),
            "brain-experiment@amnesiac-001.service"
        );
        for s in ["a", "amnesiac-001", "run_7", "0-x_y"] {
            assert_eq!(
                parse_instance_unit(&instance_unit_name(&id(s))),
                Some(id(s))
            );
        }
        assert_eq!(instance_unit_name_for("exp", &id("a")), "exp@a.service");
        assert_eq!(
            parse_instance_unit_for("exp", "exp@a.service"),
            Some(id("a"))
        );
        assert_eq!(
            parse_instance_unit_for("exp", "brain-experiment@a.service"),
            None
        );
    }

    #[test]
    fn only_instances_with_a_valid_id_are_accepted() {
        for name in [
            "ssh.service",
            "dbus.service",
            "brain-experiment.target",
            "brain-experiment@.service",
            "brain-experiment@../x.service",
            "brain-experiment@a.service.d",
            "brain-experiment@a.socket",
            "brain-experiment@a.service ",
            " brain-experiment@a.service",
            "brain-experiment@A.service",
            "brain-experiment@a b.service",
            "brain-experiment@a@b.service",
            "brain-experiment@a.service.service",
            "brain-experiment@a\\x2db.service",
            "brain-experiment@a/b.service",
            "brain-experimentx@a.service",
            "xbrain-experiment@a.service",
            "brain-experiment-a.service",
            "",
        ] {
            assert_eq!(parse_instance_unit(name), None, "{name:?} was accepted");
        }
    }

    #[test]
    fn exec_words_are_quoted_for_systemd() {
        let cases = [
            ("plain", r#""plain""#),
            ("", r#""""#),
            ("a b", r#""a b""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r"back\slash", r#""back\\slash""#),
            (r"trailing\", r#""trailing\\""#),
            ("%i", r#""%%i""#),
            ("100%", r#""100%%""#),
            ("$HOME", r#""$$HOME""#),
            ("$", r#""$$""#),
            ("$$", r#""$$$$""#),
            ("${HOME}", r#""$${HOME}""#),
            (";", r#"";""#),
            (r"\;", r#""\\;""#),
            ("it's", r#""it's""#),
            ("ünïcødé ☃", r#""ünïcødé ☃""#),
            ("tab\there", r#""tab\there""#),
            ("${FLEET_CONFIG}", r#""${FLEET_CONFIG}""#),
            ("--config=${FLEET_CONFIG}", r#""--config=${FLEET_CONFIG}""#),
            (
                "${FLEET_EPOCH}/${FLEET_EXPERIMENT_ID}",
                r#""${FLEET_EPOCH}/${FLEET_EXPERIMENT_ID}""#,
            ),
            ("$${FLEET_CONFIG}", r#""$$${FLEET_CONFIG}""#),
            ("${FLEET_CONFIGX}", r#""$${FLEET_CONFIGX}""#),
            ("$FLEET_CONFIG", r#""$$FLEET_CONFIG""#),
            ("${FLEET_CONFIG", r#""$${FLEET_CONFIG""#),
        ];
        for (arg, quoted) in cases {
            assert_eq!(exec_word(arg), quoted, "{arg:?}");
        }
    }

    #[test]
    fn control_characters_never_end_the_line() {
        assert_eq!(
            exec_word("a\nb\rc\0d\u{1b}e\u{7f}"),
            r#""a\x0ab\x0dc\x00d\x1be\x7f""#
        );
        assert_eq!(env_assignment("A", "x\ny"), r#""A=x\x0ay""#);
    }

    #[test]
    fn env_assignments_keep_dollars() {
        assert_eq!(
            env_assignment("MODEL", "llama-3.2-1b"),
            r#""MODEL=llama-3.2-1b""#
        );
        assert_eq!(
            env_assignment("X", r#"$HOME "q" \ 100% a=b"#),
            r#""X=$HOME \"q\" \\ 100%% a=b""#
        );
        assert_eq!(env_assignment("EMPTY", ""), r#""EMPTY=""#);
    }

    #[test]
    fn times_are_whole_seconds_or_milliseconds() {
        assert_eq!(systemd_time(Duration::from_secs(5)), "5s");
        assert_eq!(systemd_time(Duration::from_millis(1500)), "1500ms");
        assert_eq!(systemd_time(Duration::ZERO), "0s");
        assert_eq!(systemd_time(Duration::from_secs(43_200)), "43200s");
        assert_eq!(systemd_seconds(Duration::from_millis(1500)), "2s");
    }

    #[test]
    fn the_design_example_renders_in_full() {
        let spec = spec_with(|w| {
            w.command = strings(&[
                "python3",
                "-m",
                "src.runner.experiment_runner",
                "--config",
                "${FLEET_CONFIG}",
            ]);
            w.working_dir = "/opt/brain-in-jar".into();
            w.env = HashMap::from([("MODEL".into(), "llama-3.2-1b".into())]);
            w.config_name = "amnesiac_001.json".into();
            w.config_content = b"{}".to_vec();
            w.resources = Some(v1::Resources {
                memory_max: "8G".into(),
                cpu_quota: "80%".into(),
                gpu: true,
            });
            w.lifecycle = Some(v1::Lifecycle {
                max_runtime: "12h".into(),
                restart: "on-failure".into(),
                max_restarts: Some(3),
                restart_delay: "5s".into(),
                stop_timeout: "30s".into(),
                on_disruption: "requeue".into(),
                autostart: true,
            });
        });
        let path = Path::new("/var/lib/fleet/experiments/amnesiac-001/amnesiac_001.json");
        assert_eq!(
            render_dropin(&spec, Some(path), 7),
            r#"# Written by fleet-agent for experiment amnesiac-001, epoch 7.
# The agent rewrites this file on every start: do not edit it.

[Unit]
StartLimitIntervalSec=320s
StartLimitBurst=4

[Service]
ExecStart=
ExecStart="python3" "-m" "src.runner.experiment_runner" "--config" "${FLEET_CONFIG}"
WorkingDirectory=/opt/brain-in-jar
Environment="FLEET_EXPERIMENT_ID=amnesiac-001"
Environment="FLEET_EPOCH=7"
Environment="FLEET_CONFIG=/var/lib/fleet/experiments/amnesiac-001/amnesiac_001.json"
Environment="MODEL=llama-3.2-1b"
MemoryMax=8589934592
CPUQuota=80%
Restart=on-failure
RestartSec=5s
RuntimeMaxSec=43200s
TimeoutStopSec=30s
"#
        );
    }

    #[test]
    fn defaults_leave_the_template_in_charge_of_limits() {
        let text = render_dropin(&spec_with(|_| {}), None, 1);
        assert!(!text.contains("MemoryMax"));
        assert!(!text.contains("CPUQuota"));
        assert!(!text.contains("WorkingDirectory"));
        assert!(!text.contains("FLEET_CONFIG"));
        assert!(text.contains("\nRuntimeMaxSec=infinity\n"));
        assert!(text.contains("\nRestart=on-failure\nRestartSec=5s\n"));
        assert!(text.contains("\nTimeoutStopSec=30s\n"));
        assert!(text.contains("\nStartLimitBurst=4\n"));
    }

    #[test]
    fn no_restarts_means_restart_no_and_no_start_limit() {
        for lifecycle in [
            v1::Lifecycle {
                restart: "never".into(),
                ..Default::default()
            },
            v1::Lifecycle {
                max_restarts: Some(0),
                ..Default::default()
            },
        ] {
            let text = render_dropin(&spec_with(|w| w.lifecycle = Some(lifecycle)), None, 1);
            assert!(text.contains("\nRestart=no\n"), "{text}");
            assert!(text.contains("\nStartLimitIntervalSec=0\n"), "{text}");
            assert!(!text.contains("StartLimitBurst"), "{text}");
            assert!(!text.contains("RestartSec"), "{text}");
        }
    }

    #[test]
    fn the_restart_window_grows_with_the_delay() {
        let spec = spec_with(|w| {
            w.lifecycle = Some(v1::Lifecycle {
                max_restarts: Some(10),
                restart_delay: "1m30s".into(),
                ..Default::default()
            })
        });
        let text = render_dropin(&spec, None, 1);
        // 300s + 11 starts × 90s.
        assert!(
            text.contains("\nStartLimitIntervalSec=1290s\nStartLimitBurst=11\n"),
            "{text}"
        );
        assert!(text.contains("\nRestartSec=90s\n"), "{text}");
    }

    #[test]
    fn every_value_line_is_one_line() {
        let spec = spec_with(|w| {
            w.command = strings(&["/bin/echo", "a\tb", "c"]);
            w.env = HashMap::from([("T".into(), "x\ty".into())]);
        });
        let text = render_dropin(&spec, Some(Path::new("/x\ny")), 1);
        assert!(
            text.contains("ExecStart=\"/bin/echo\" \"a\\tb\" \"c\"\n"),
            "{text}"
        );
        assert!(text.contains("Environment=\"T=x\\ty\"\n"), "{text}");
        assert!(
            text.contains("Environment=\"FLEET_CONFIG=/x\\x0ay\"\n"),
            "{text}"
        );
        assert!(!text.contains('\t'));
    }

    #[test]
    fn working_directories_double_percent_only() {
        let spec = spec_with(|w| w.working_dir = "/srv/runs 100%/a".into());
        assert!(render_dropin(&spec, None, 1).contains("\nWorkingDirectory=/srv/runs 100%%/a\n"));
    }

    /// Checks of the rendered file by systemd itself.
    mod systemd {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        use std::path::PathBuf;
        use std::process::{Command, Output};

        use super::*;

        /// A minimal template with the shipped one's defaults.
        const TEMPLATE_UNIT: &str = "[Unit]\n\
            Description=fleet experiment %i (test template)\n\
            StartLimitBurst=3\n\
            StartLimitIntervalSec=300s\n\
            \n\
            [Service]\n\
            ExecStart=/bin/false\n\
            Restart=on-failure\n\
            RestartSec=5s\n\
            TimeoutStopSec=30s\n\
            KillMode=mixed\n\
            SyslogIdentifier=brain-experiment-%i\n";

        /// The tools these tests need. Where the build saw them missing, the
        /// tests are ignored (agent/build.rs); missing here fails the test: a
        /// skipped check must not pass for a run one.
        struct Tools {
            analyze: PathBuf,
            manager: PathBuf,
            /// systemd refuses test mode as root: run it as nobody.
            as_nobody: Option<PathBuf>,
        }

        fn find(candidates: &[&str]) -> Option<PathBuf> {
            candidates.iter().map(PathBuf::from).find(|p| p.is_file())
        }

        fn tools() -> Tools {
            let root = std::fs::metadata("/proc/self")
                .map(|m| m.uid() == 0)
                .unwrap_or(false);
            let analyze = find(&["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]);
            let manager = find(&["/usr/lib/systemd/systemd", "/lib/systemd/systemd"]);
            let setpriv = find(&["/usr/bin/setpriv", "/bin/setpriv"]);
            let missing: Vec<&str> = [
                (analyze.is_none(), "systemd-analyze"),
                (
                    manager.is_none(),
                    "the systemd binary (lib/systemd/systemd)",
                ),
                (
                    root && setpriv.is_none(),
                    "setpriv (to leave root for `systemd --test`)",
                ),
            ]
            .into_iter()
            .filter_map(|(gone, what)| gone.then_some(what))
            .collect();
            if let (true, Some(analyze), Some(manager)) = (missing.is_empty(), analyze, manager) {
                return Tools {
                    analyze,
                    manager,
                    as_nobody: if root { setpriv } else { None },
                };
            }
            // The build saw these tools and did not mark the test ignored
            // (or it was run with --ignored): not having them is a failure.
            panic!(
                "cannot check unit files with systemd: {} not found",
                missing.join(", ")
            );
        }

        /// A unit directory with the template and one instance's drop-in,
        /// readable by nobody.
        struct UnitDir {
            dir: tempfile::TempDir,
            unit: String,
            dropin: PathBuf,
        }

        impl UnitDir {
            fn new(spec: &ExperimentSpec, dropin: &str) -> Self {
                let dir = tempfile::tempdir().unwrap();
                let units = dir.path().join("units");
                let unit = instance_unit_name(spec.id());
                let dropin_dir = units.join(format!("{unit}.d"));
                std::fs::create_dir_all(&dropin_dir).unwrap();
                std::fs::write(units.join(format!("{TEMPLATE}@.service")), TEMPLATE_UNIT).unwrap();
                let dropin_path = dropin_dir.join("50-fleet.conf");
                std::fs::write(&dropin_path, dropin).unwrap();
                let runtime = dir.path().join("runtime");
                std::fs::create_dir(&runtime).unwrap();
                for (path, mode) in [
                    (dir.path(), 0o755),
                    (units.as_path(), 0o755),
                    (dropin_dir.as_path(), 0o755),
                    (runtime.as_path(), 0o777),
                ] {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
                }
                Self {
                    dir,
                    unit,
                    dropin: dropin_path,
                }
            }

            fn units(&self) -> PathBuf {
                self.dir.path().join("units")
            }

            /// Lines of `output`'s stderr about this unit or its drop-in:
            /// any warning there means systemd ignored or changed a setting.
            fn complaints(&self, output: &Output) -> Vec<String> {
                let dropin = self.dropin.to_string_lossy();
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .filter(|l| l.contains(&*dropin) || l.contains(&self.unit))
                    .map(str::to_owned)
                    .collect()
            }

            /// `systemd --test --user`: loads the units like a manager would
            /// and dumps the instance, with its parsed command line and
            /// settings. Returns the instance's part of the dump.
            fn dump(&self, tools: &Tools) -> Vec<String> {
                let runtime = self.dir.path().join("runtime");
                let mut command = match &tools.as_nobody {
                    Some(setpriv) => {
                        let mut c = Command::new(setpriv);
                        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
                        c.arg(&tools.manager);
                        c
                    }
                    None => Command::new(&tools.manager),
                };
                command
                    .args(["--test", "--user", "--no-pager", "--log-target=console"])
                    .arg("--log-level=notice")
                    .arg(format!("--unit={}", self.unit))
                    .env_clear()
                    .env("PATH", "/usr/bin:/bin")
                    .env("HOME", &runtime)
                    .env("XDG_RUNTIME_DIR", &runtime)
                    // The trailing ':' keeps the default search path after
                    // ours, for the targets every service depends on.
                    .env("SYSTEMD_UNIT_PATH", format!("{}:", self.units().display()));
                let output = command.output().unwrap();
                let stdout = String::from_utf8_lossy(&output.stdout);
                assert!(
                    output.status.success(),
                    "systemd --test failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
                assert_eq!(
                    self.complaints(&output),
                    Vec::<String>::new(),
                    "systemd complained"
                );
                let header = format!("\t-> Unit {}:", self.unit);
                let section: Vec<String> = stdout
                    .lines()
                    .skip_while(|l| *l != header)
                    .skip(1)
                    .take_while(|l| !l.starts_with("\t-> Unit "))
                    .map(str::to_owned)
                    .collect();
                assert!(
                    !section.is_empty(),
                    "{} is not in the dump:\n{stdout}",
                    self.unit
                );
                section
            }

            /// `systemd-analyze verify`: the offline check CI runs on the
            /// shipped units. It also insists the program exists.
            fn verify(&self, tools: &Tools) {
                let output = Command::new(&tools.analyze)
                    .args(["verify", "--man=no", "--generators=no"])
                    .arg(self.units().join(&self.unit))
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "systemd-analyze verify failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
                assert_eq!(
                    self.complaints(&output),
                    Vec::<String>::new(),
                    "verify complained"
                );
            }
        }

        /// The value of `\t\t<key>: ` lines in a unit's dump.
        fn dumped<'a>(section: &'a [String], key: &str) -> Vec<&'a str> {
            let prefix = format!("\t\t{key}: ");
            section
                .iter()
                .filter_map(|l| l.strip_prefix(&prefix))
                .collect()
        }

        /// The words of the `Command Line:` systemd prints: bare words, or
        /// double-quoted ones with backslash escapes.
        fn split_dumped_command_line(line: &str) -> Vec<String> {
            let mut words = Vec::new();
            let mut chars = line.chars().peekable();
            loop {
                while chars.peek() == Some(&' ') {
                    chars.next();
                }
                let Some(first) = chars.next() else {
                    return words;
                };
                let mut word = String::new();
                if first == '"' {
                    loop {
                        match chars.next().expect("closing quote") {
                            '"' => break,
                            '\\' => match chars.next().expect("escaped character") {
                                't' => word.push('\t'),
                                'n' => word.push('\n'),
                                other => word.push(other),
                            },
                            other => word.push(other),
                        }
                    }
                } else {
                    word.push(first);
                    while let Some(c) = chars.next_if(|c| *c != ' ') {
                        word.push(c);
                    }
                }
                words.push(word);
            }
        }

        /// What systemd does to each word when it starts the process
        /// (systemd.service(5), "Command lines"): `$$` is a dollar,
        /// `${NAME}` the variable's value, empty when unset. (A word that is
        /// a bare `$NAME` is split into several; rendered words never are.)
        fn expand_at_exec(word: &str, env: &HashMap<String, String>) -> String {
            let mut out = String::new();
            let mut rest = word;
            while let Some(at) = rest.find('$') {
                out.push_str(&rest[..at]);
                rest = &rest[at..];
                if let Some(after) = rest.strip_prefix("$$") {
                    out.push('$');
                    rest = after;
                } else if let Some((name, after)) =
                    rest.strip_prefix("${").and_then(|r| r.split_once('}'))
                {
                    out.push_str(env.get(name).map_or("", String::as_str));
                    rest = after;
                } else {
                    out.push('$');
                    rest = &rest[1..];
                }
            }
            out.push_str(rest);
            out
        }

        const CONFIG_PATH: &str = "/var/lib/fleet state/experiments/tricky/c%i.json";

        /// Argument by argument: what the spec says, and what the process
        /// must receive once systemd has substituted the fleet variables.
        fn tricky_args() -> Vec<(&'static str, String)> {
            let literal = |s: &'static str| (s, s.to_owned());
            vec![
                literal("a b"),
                literal(r#""quoted""#),
                literal(r#"a"b\"c"#),
                literal(r"back\slash"),
                literal(r"trailing\"),
                literal("%i"),
                literal("%%"),
                literal("100%"),
                literal("$HOME"),
                literal("$$"),
                literal("$"),
                literal("${HOME}"),
                literal("${FLEET_CONFIGX}"),
                literal("$FLEET_CONFIG"),
                literal(";"),
                literal(r"\;"),
                literal(""),
                literal("ünïcødé ☃"),
                literal("tab\there"),
                literal("it's"),
                literal("-x"),
                literal("@x"),
                literal("`backtick`"),
                literal("*"),
                literal("!"),
                literal("&& | > #"),
                (
                    "--config=${FLEET_CONFIG}",
                    format!("--config={CONFIG_PATH}"),
                ),
                ("$${FLEET_CONFIG}", format!("${CONFIG_PATH}")),
                (
                    "${FLEET_EXPERIMENT_ID}@${FLEET_EPOCH}",
                    "tricky@42".to_owned(),
                ),
            ]
        }

        fn tricky_spec(program: &str) -> ExperimentSpec {
            let mut command = vec![program.to_owned()];
            command.extend(tricky_args().into_iter().map(|(arg, _)| arg.to_owned()));
            let wire = v1::ExperimentSpec {
                id: "tricky".into(),
                command,
                working_dir: "/srv/runs 100%/exp".into(),
                env: tricky_env()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                config_name: "c.json".into(),
                config_content: b"{}".to_vec(),
                resources: Some(v1::Resources {
                    memory_max: "512M".into(),
                    cpu_quota: "150%".into(),
                    gpu: false,
                }),
                lifecycle: Some(v1::Lifecycle {
                    max_runtime: "1h30m".into(),
                    restart_delay: "1500ms".into(),
                    stop_timeout: "45s".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            ExperimentSpec::try_from(&wire).unwrap()
        }

        fn tricky_env() -> Vec<(&'static str, &'static str)> {
            vec![
                ("QUOTES", r#"say "hi""#),
                ("BACKSLASH", r"C:\dir\"),
                ("PERCENT", "100%i"),
                ("DOLLAR", "$HOME ${FLEET_CONFIG} $$"),
                ("TAB", "a\tb"),
                ("UNICODE", "ünï ☃"),
                ("EMPTY", ""),
                ("EQUALS", "a=b=c"),
                ("SPACES", "  lead and trail  "),
            ]
        }

        #[cfg_attr(
            fleet_no_systemd_tools,
            ignore = "needs systemd's programs; see the build warning"
        )]
        #[test]
        fn systemd_reads_back_the_same_command_and_environment() {
            let tools = tools();
            let program = "/opt/my tools/run%i.py";
            let spec = tricky_spec(program);
            let dir = UnitDir::new(
                &spec,
                &render_dropin(&spec, Some(Path::new(CONFIG_PATH)), 42),
            );
            let section = dir.dump(&tools);

            // Exactly one command: the template's was reset.
            let lines: Vec<&str> = section
                .iter()
                .filter_map(|l| l.strip_prefix("\t\t\tCommand Line: "))
                .collect();
            assert_eq!(lines.len(), 1, "{section:#?}");
            let parsed = split_dumped_command_line(lines[0]);

            // The environment the process gets, as systemd parsed it.
            let env: HashMap<String, String> = dumped(&section, "Environment")
                .into_iter()
                .map(|assignment| {
                    let (k, v) = assignment.split_once('=').unwrap();
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            let mut expected_env: HashMap<String, String> = tricky_env()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            expected_env.insert("FLEET_EXPERIMENT_ID".into(), "tricky".into());
            expected_env.insert("FLEET_EPOCH".into(), "42".into());
            expected_env.insert("FLEET_CONFIG".into(), CONFIG_PATH.into());
            assert_eq!(env, expected_env);

            // Once started, the process gets the spec's argv back, with the
            // fleet variables substituted and nothing else.
            let received: Vec<String> = parsed.iter().map(|w| expand_at_exec(w, &env)).collect();
            let mut expected = vec![program.to_owned()];
            expected.extend(tricky_args().into_iter().map(|(_, received)| received));
            assert_eq!(received, expected);

            assert_eq!(dumped(&section, "WorkingDirectory"), ["/srv/runs 100%/exp"]);
            assert_eq!(dumped(&section, "MemoryMax"), ["536870912"]);
            assert_eq!(dumped(&section, "CPUQuotaPerSecSec"), ["1.500000s"]);
            assert_eq!(dumped(&section, "Restart"), ["on-failure"]);
            // The dump rounds to seconds; the template's 5s would show if
            // the 1500ms had been refused.
            assert_eq!(dumped(&section, "RestartSec"), ["1s"]);
            assert_eq!(dumped(&section, "RuntimeMaxSec"), ["1h 30min"]);
            assert_eq!(dumped(&section, "TimeoutStopSec"), ["45s"]);
        }

        #[cfg_attr(
            fleet_no_systemd_tools,
            ignore = "needs systemd's programs; see the build warning"
        )]
        #[test]
        fn systemd_takes_a_bare_program_name() {
            // systemd looks the name up in its own search path when it
            // starts the process (verify below checks that it finds it).
            let tools = tools();
            let spec = spec_with(|w| w.command = strings(&["sh", "-c", "exit 0"]));
            let dir = UnitDir::new(&spec, &render_dropin(&spec, None, 1));
            let section = dir.dump(&tools);
            let line = section
                .iter()
                .find_map(|l| l.strip_prefix("\t\t\tCommand Line: "))
                .unwrap();
            assert_eq!(split_dumped_command_line(line), ["sh", "-c", "exit 0"]);
            assert_eq!(dumped(&section, "Restart"), ["on-failure"]);
            assert_eq!(dumped(&section, "RuntimeMaxSec"), ["infinity"]);
        }

        #[cfg_attr(
            fleet_no_systemd_tools,
            ignore = "needs systemd's programs; see the build warning"
        )]
        #[test]
        fn systemd_analyze_verify_accepts_the_drop_in() {
            let tools = tools();
            for spec in [
                tricky_spec("/bin/sh"),
                spec_with(|w| {
                    w.command = strings(&["sh", "-c", "exit 0"]);
                    w.lifecycle = Some(v1::Lifecycle {
                        restart: "never".into(),
                        ..Default::default()
                    });
                }),
            ] {
                let dir = UnitDir::new(
                    &spec,
                    &render_dropin(&spec, Some(Path::new(CONFIG_PATH)), 3),
                );
                dir.verify(&tools);
            }
        }

        #[cfg_attr(
            fleet_no_systemd_tools,
            ignore = "needs systemd's programs; see the build warning"
        )]
        #[test]
        fn a_broken_drop_in_is_caught() {
            // The checks above can fail: systemd's complaints reach them.
            let tools = tools();
            let spec = spec_with(|_| {});
            let broken = format!(
                "{}Environment=\"BAD NAME=1\"\n",
                render_dropin(&spec, None, 1)
            );
            let dir = UnitDir::new(&spec, &broken);
            let output = Command::new(&tools.analyze)
                .args(["verify", "--man=no", "--generators=no"])
                .arg(dir.units().join(&dir.unit))
                .output()
                .unwrap();
            let complaints = dir.complaints(&output);
            assert_eq!(complaints.len(), 1, "{complaints:?}");
            assert!(
                complaints[0].contains("Invalid environment assignment"),
                "{complaints:?}"
            );
        }
    }
}
