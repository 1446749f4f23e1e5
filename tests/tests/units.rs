//! The shipped units as installed, run under a real systemd (a testbed
//! board's private manager): the installed experiment template restarts a
//! crash, limits and sandboxes, stops with SIGTERM and gives up at its start
//! limit; the agent's sandbox grants what the agent needs and no more; and
//! the agent package's maintainer scripts, run as dpkg runs them on an
//! upgrade, restart the agent without touching a running experiment.
//!
//! These need root and an installed systemd. Where the build sees neither,
//! cargo reports them as ignored (tests/build.rs), unless
//! FLEET_REQUIRE_SYSTEMD=1 (CI) makes them run and fail.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleet_testbed::agent::workspace_bin;
use fleet_testbed::poll::{wait_for, Check};
use fleet_testbed::testbed::{Board, Testbed};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(30);

const R36_RELEASE: &str = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn unit(id: &str) -> String {
    format!("brain-experiment@{id}.service")
}

/// Writes an experiment's drop-in as the agent does, into `dir`.
fn drop_in(dir: &Path, id: &str, service: &str) {
    let dir = dir.join(format!("{}.d", unit(id)));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("50-fleet.conf"), format!("[Service]\n{service}")).unwrap();
}

/// Writes an executable shell script into the board's directory.
fn script(board: &Board, name: &str, body: &str) -> PathBuf {
    let path = board.dir().join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn systemctl(board: &Board, args: &[&str]) -> String {
    board
        .systemctl(args)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn wait_unit(
    board: &Board,
    unit: &str,
    what: &str,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<String, String> {
    const SHOWN: &[&str] = &[
        "ActiveState",
        "SubState",
        "Result",
        "MainPID",
        "InvocationID",
        "NRestarts",
    ];
    let done = &done;
    wait_for(format!("{unit} {what}"), DEADLINE, || async move {
        let props = board.unit_properties(unit, SHOWN).await?;
        Ok(if done(&props) {
            Check::Ready(props)
        } else {
            Check::not_yet(format!("{props:?}"))
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn is_running(p: &BTreeMap<String, String>) -> bool {
    p["ActiveState"] == "active" && p["SubState"] == "running"
}

/// Waits until the board's journal holds `line` under `identifier`.
async fn wait_line(board: &Board, identifier: &str, line: &str) -> Vec<String> {
    wait_for(
        format!("{line:?} under {identifier}"),
        DEADLINE,
        || async move {
            let lines = board.journal_lines(identifier).await?;
            Ok(if lines.iter().any(|l| l == line) {
                Check::Ready(lines)
            } else {
                Check::not_yet(format!("{lines:?}"))
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// `deploy/install.sh agent --root` into a scratch directory of a JetPack 6
/// board; the staged root.
fn staged_agent_install() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    fs::create_dir(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/nv_tegra_release"), R36_RELEASE).unwrap();
    let bins = tempfile::tempdir().unwrap();
    fs::copy(
        workspace_bin("fleet-agent"),
        bins.path().join("fleet-agent"),
    )
    .unwrap();
    let out = Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .args(["agent", "--node", "jetson-01", "--root"])
        .arg(root.path())
        .arg("--bin-dir")
        .arg(bins.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    root
}

/// Copies the experiment units the installer staged into the board's
/// persistent unit directory (its /etc/systemd/system), replacing the
/// testbed's copies.
fn install_into_board(staged: &Path, board: &Board) {
    let units = staged.join("usr/local/lib/systemd/system");
    for name in ["brain-experiment@.service", "brain-experiment.target"] {
        fs::copy(units.join(name), board.unit_dir().join(name)).unwrap();
    }
    let dropins = board.unit_dir().join("brain-experiment@.service.d");
    fs::create_dir_all(&dropins).unwrap();
    fs::copy(
        units.join("brain-experiment@.service.d/20-jetson-devices.conf"),
        dropins.join("20-jetson-devices.conf"),
    )
    .unwrap();
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_template_restarts_limits_and_stops_an_experiment_as_documented() {
    let started = Instant::now();
    let mut bed = Testbed::new("installed-template").await;
    let board = bed.add_board("installed").await.expect("board");
    let staged = staged_agent_install();
    install_into_board(staged.path(), &board);

    // Crashes twice (exit 3), then runs until SIGTERM, which it handles.
    let counter = board.dir().join("flaky-runs");
    let flaky = script(
        &board,
        "flaky.sh",
        &format!(
            "n=$(( $(cat {c} 2>/dev/null || echo 0) + 1 )); echo $n > {c}\n\
             echo run-$n\n\
             [ $n -lt 3 ] && exit 3\n\
             trap 'echo got-sigterm; exit 0' TERM\n\
             while :; do sleep 0.1; done",
            c = counter.display()
        ),
    );
    // The agent's drop-in sets the experiment's restart delay; 1 s keeps the
    // test short. Everything else is the template's.
    drop_in(
        &board.runtime_unit_dir(),
        "flaky",
        &format!("ExecStart=\nExecStart={}\nRestartSec=1s\n", flaky.display()),
    );
    // Fails every time: systemd gives up at the template's start limit.
    let doomed = script(&board, "doomed.sh", "echo doomed; exit 1");
    drop_in(
        &board.runtime_unit_dir(),
        "doomed",
        &format!(
            "ExecStart=\nExecStart={}\nRestartSec=1s\n",
            doomed.display()
        ),
    );
    systemctl(&board, &["daemon-reload"]).await;
    // --no-block: `doomed` can exit before systemd counts its exec as a
    // started job, and a blocking start would then report a failure the
    // test waits for below anyway.
    systemctl(
        &board,
        &["start", "--no-block", &unit("flaky"), &unit("doomed")],
    )
    .await;

    // Restart on failure: two crashes, restarted each time, then running.
    let running = wait_unit(&board, &unit("flaky"), "to run after two crashes", |p| {
        is_running(p) && p["NRestarts"] == "2"
    })
    .await;
    let lines = wait_line(&board, "brain-experiment-flaky", "run-3").await;
    assert_eq!(lines, ["run-1", "run-2", "run-3"]);

    // The start limit: 3 starts in 5 minutes, then failed for good.
    // systemd 252 refuses the fourth start ("Start request repeated too
    // quickly") and keeps the last run's result, exit-code; the agent names
    // it a restart-limit failure from NRestarts and the policy.
    let failed = wait_unit(&board, &unit("doomed"), "to hit its start limit", |p| {
        p["ActiveState"] == "failed"
    })
    .await;
    assert_eq!(failed["Result"], "exit-code", "{failed:?}");
    assert_eq!(failed["NRestarts"], "3", "{failed:?}");
    let manager: Vec<String> = board
        .journal(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        manager
            .iter()
            .any(|m| m == "brain-experiment@doomed.service: Start request repeated too quickly."),
        "{manager:?}"
    );
    let doomed_lines = board
        .journal_lines("brain-experiment-doomed")
        .await
        .unwrap();
    assert_eq!(doomed_lines, ["doomed", "doomed", "doomed"]);

    // Limits and sandbox, as the template and the R36 device list say.
    let props = board
        .unit_properties(
            &unit("flaky"),
            &[
                "MemoryMax",
                "CPUQuotaPerSecUSec",
                "TimeoutStopUSec",
                "KillMode",
                "DevicePolicy",
                "DeviceAllow",
                "CapabilityBoundingSet",
                "RestrictAddressFamilies",
                "NoNewPrivileges",
                "ProtectSystem",
                "DropInPaths",
            ],
        )
        .await
        .unwrap();
    eprintln!("{props:#?}");
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let max: f64 = props["MemoryMax"].parse().unwrap();
    let ratio = max / (total_kib * 1024) as f64;
    assert!((0.89..=0.91).contains(&ratio), "MemoryMax {max}");
    assert_eq!(props["CPUQuotaPerSecUSec"], "4s");
    assert_eq!(props["TimeoutStopUSec"], "30s");
    assert_eq!(props["KillMode"], "mixed");
    assert_eq!(props["DevicePolicy"], "closed");
    // One DeviceAllow= line per entry.
    let shown = systemctl(&board, &["show", &unit("flaky"), "-p", "DeviceAllow"]).await;
    let allowed: Vec<&str> = shown
        .lines()
        .filter_map(|l| l.strip_prefix("DeviceAllow="))
        .collect();
    for node in ["/dev/nvmap rw", "/dev/host1x-fence rw", "char-nvidia* rw"] {
        assert!(allowed.contains(&node), "{node}: {allowed:?}");
    }
    assert!(props["DropInPaths"].contains("20-jetson-devices.conf"));
    assert_eq!(
        props["CapabilityBoundingSet"],
        "cap_chown cap_dac_override cap_fowner cap_fsetid cap_setgid cap_setuid"
    );
    assert_eq!(props["NoNewPrivileges"], "yes");
    assert_eq!(props["ProtectSystem"], "full");

    // The process itself holds no more than that.
    let pid = running["MainPID"].clone();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let cap_bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    // chown 0, dac_override 1, fowner 3, fsetid 4, setgid 6, setuid 7.
    assert_eq!(cap_bnd, "00000000000000db");

    // A graceful stop: SIGTERM to the experiment, which ends cleanly.
    let stop = Instant::now();
    systemctl(&board, &["stop", &unit("flaky")]).await;
    assert!(stop.elapsed() < Duration::from_secs(30));
    wait_line(&board, "brain-experiment-flaky", "got-sigterm").await;

    bed.shutdown().await.expect("teardown");
    eprintln!("installed template: {:.2?}", started.elapsed());
}

/// The `[Service]` sandbox of the shipped fleet-agent.service: its lines from
/// the "Sandbox" marker to `[Install]`, comments left out, with the runtime
/// unit directory replaced by `runtime_unit_dir`. (A board's /run/systemd is
/// a tmpfs of its own, on which systemd also stages a unit's mount namespace;
/// a bind mount of a directory inside it fails there, and the agent of a
/// board uses the board's own runtime unit directory anyway.)
fn agent_sandbox(runtime_unit_dir: &Path) -> String {
    let unit = fs::read_to_string(repo().join("systemd/fleet-agent.service")).unwrap();
    let from = unit.find("# --- Sandbox").expect("sandbox marker");
    let to = unit.find("[Install]").expect("[Install]");
    let sandbox: String = unit[from..to]
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let shipped = "ReadWritePaths=/etc/systemd/system /run/systemd/system\n";
    assert!(sandbox.contains(shipped), "{sandbox}");
    sandbox.replace(
        shipped,
        &format!(
            "ReadWritePaths=/etc/systemd/system {}\n",
            runtime_unit_dir.display()
        ),
    )
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_sandbox_grants_what_the_agent_needs_and_no_more() {
    let mut bed = Testbed::new("agent-sandbox").await;
    let board = bed.add_board("sandbox").await.expect("board");
    // Whether a path is on a read-only or read-write mount, as this process
    // sees it: the mount with the longest mount point containing the path,
    // the last one listed when several share it (later mounts sit on earlier
    // ones).
    let probe = script(
        &board,
        "probe.sh",
        "opt() { awk -v m=\"$1\" '{ p = $5; if (p == m || p == \"/\" || index(m, p \"/\") == 1) { if (length(p) >= best) { best = length(p); split($6, a, \",\"); o = a[1] } } } END { print m \" \" o }' /proc/self/mountinfo; }\n\
         for m in / /usr /etc /etc/systemd/system \"$RUNTIME_UNIT_DIR\" /sys /sys/devices /proc/sys; do opt $m; done\n\
         dd if=/dev/kmsg bs=8192 count=1 status=none >/dev/null 2>&1 && echo kmsg-readable || echo kmsg-unreadable\n\
         [ -e /dev/loop-control ] || [ -e /dev/tty0 ] && echo devices-visible || echo devices-private\n\
         ls /root >/dev/null 2>&1 && echo home-visible || echo home-hidden\n\
         grep CapBnd /proc/self/status\n\
         grep NoNewPrivs /proc/self/status\n\
         busctl --user get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 org.freedesktop.systemd1.Manager Version >/dev/null && echo dbus-reachable || echo dbus-unreachable\n\
         echo probe-done",
    );
    fs::write(
        board.runtime_unit_dir().join("agent-sandbox-probe.service"),
        format!(
            "[Service]\nType=exec\nExecStart={}\nSyslogIdentifier=agent-sandbox-probe\nEnvironment=RUNTIME_UNIT_DIR={}\n{}",
            probe.display(),
            board.runtime_unit_dir().display(),
            agent_sandbox(&board.runtime_unit_dir())
        ),
    )
    .unwrap();
    systemctl(&board, &["daemon-reload"]).await;
    systemctl(&board, &["start", "agent-sandbox-probe.service"]).await;
    let lines = wait_line(&board, "agent-sandbox-probe", "probe-done").await;
    eprintln!("{lines:#?}");
    let expected: [&str; 15] = [
        // Read-only everywhere but the unit directories and the device
        // attributes nvpmodel and jetson_clocks write.
        "/ ro",
        "/usr ro",
        "/etc ro",
        "/etc/systemd/system rw",
        &format!("{} rw", board.runtime_unit_dir().display()),
        "/sys ro",
        "/sys/devices rw",
        "/proc/sys ro",
        // The kernel log, for OOM attribution on cgroup v1.
        "kmsg-readable",
        // A private /dev: no other device.
        "devices-private",
        "home-hidden",
        // CAP_SYSLOG (34) only.
        "CapBnd:\t0000000400000000",
        "NoNewPrivs:\t1",
        // systemd's D-Bus API.
        "dbus-reachable",
        "probe-done",
    ];
    assert_eq!(lines, expected);
    bed.shutdown().await.expect("teardown");
}

/// Runs a maintainer script of the fleet-agent package inside `board`, as
/// dpkg runs it for a package unpacked into `root` (`DPKG_ROOT`), with a
/// `systemctl` that drives the board's manager: `--system` becomes `--user`.
/// Returns its stderr.
async fn maintainer_script(
    board: &Board,
    shim: &Path,
    root: &Path,
    script: &str,
    args: &[&str],
) -> String {
    let out = board
        .command("sh")
        .arg(repo().join("deploy/debian/fleet-agent").join(script))
        .args(args)
        .env(
            "PATH",
            format!("{}:{}", shim.display(), fleet_testbed::testbed::BOARD_PATH),
        )
        .env("DPKG_ROOT", root)
        // What dpkg sets for a maintainer script; deb-systemd-helper checks it.
        .env("DPKG_MAINTSCRIPT_PACKAGE", "fleet-agent")
        .env("DPKG_MAINTSCRIPT_NAME", script)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{script} {}: {stderr}",
        args.join(" ")
    );
    stderr
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_the_agent_package_restarts_the_agent_and_no_experiment() {
    let mut bed = Testbed::new("deb-upgrade").await;
    let board = bed.add_board("upgrade").await.expect("board");

    // Two experiments: an ordinary run and an enabled (autostart) one.
    let forever =
        "ExecStart=\nExecStart=/bin/sh -c 'trap \"exit 0\" TERM; while :; do sleep 0.1; done'\n";
    drop_in(&board.runtime_unit_dir(), "ordinary", forever);
    drop_in(&board.unit_dir(), "autostart", forever);
    // The agent: a stand-in with the package's unit name (the agent itself
    // is the agent tests' business; what matters here is who gets restarted).
    fs::write(
        board.unit_dir().join("fleet-agent.service"),
        "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=default.target\n",
    )
    .unwrap();
    systemctl(&board, &["daemon-reload"]).await;
    systemctl(
        &board,
        &["enable", &unit("autostart"), "fleet-agent.service"],
    )
    .await;
    systemctl(&board, &["start", &unit("ordinary"), &unit("autostart")]).await;
    let mut before = BTreeMap::new();
    for id in ["ordinary", "autostart"] {
        before.insert(id, wait_unit(&board, &unit(id), "to run", is_running).await);
    }

    // The package as dpkg unpacked it into a root of its own.
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in [
        "etc",
        "run/systemd/system",
        "lib/systemd/system",
        "usr/share/fleet-agent/jetson",
    ] {
        fs::create_dir_all(r.join(dir)).unwrap();
    }
    fs::write(r.join("etc/nv_tegra_release"), R36_RELEASE).unwrap();
    for unit_file in [
        "fleet-agent.service",
        "brain-experiment@.service",
        "brain-experiment.target",
    ] {
        fs::copy(
            repo().join("systemd").join(unit_file),
            r.join("lib/systemd/system").join(unit_file),
        )
        .unwrap();
    }
    for release in ["r35.conf", "r36.conf", "generic.conf"] {
        fs::copy(
            repo().join("deploy/jetson").join(release),
            r.join("usr/share/fleet-agent/jetson").join(release),
        )
        .unwrap();
    }
    fs::copy(
        repo().join("deploy/agent.toml"),
        r.join("usr/share/fleet-agent/agent.toml"),
    )
    .unwrap();
    let shim = tempfile::tempdir().unwrap();
    let systemctl_path = ["/usr/bin/systemctl", "/bin/systemctl"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap();
    fs::write(
        shim.path().join("systemctl"),
        format!(
            "#!/bin/bash\nargs=(--user)\nfor a in \"$@\"; do [ \"$a\" = --system ] || args+=(\"$a\"); done\nexec {systemctl_path} \"${{args[@]}}\"\n"
        ),
    )
    .unwrap();
    fs::set_permissions(
        shim.path().join("systemctl"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let agent = |props: &BTreeMap<String, String>| props["ActiveState"].clone();

    // First install, before the board is enrolled: configured, enabled, not
    // started.
    let stderr = maintainer_script(&board, shim.path(), r, "postinst", &["configure", ""]).await;
    assert!(stderr.contains("enrol this board"), "{stderr}");
    let state = board
        .unit_properties("fleet-agent.service", &["ActiveState"])
        .await
        .unwrap();
    assert_eq!(agent(&state), "inactive");
    assert_eq!(
        fs::read_link(
            r.join("etc/systemd/system/brain-experiment@.service.d/20-jetson-devices.conf")
        )
        .unwrap(),
        Path::new("/usr/share/fleet-agent/jetson/r36.conf")
    );
    let config = fs::read_to_string(r.join("etc/fleet/agent.toml")).unwrap();
    assert!(config.contains("node = \"upgrade\""), "{config}");
    for link in [
        "etc/systemd/system/multi-user.target.wants/fleet-agent.service",
        "etc/systemd/system/multi-user.target.wants/brain-experiment.target",
    ] {
        assert!(r.join(link).is_symlink(), "{link} is not enabled");
    }

    // Enrolled: the same first configure starts the agent.
    fs::create_dir_all(r.join("etc/fleet")).unwrap();
    fs::write(r.join("etc/fleet/agent.key"), "key").unwrap();
    maintainer_script(&board, shim.path(), r, "postinst", &["configure", ""]).await;
    let first = wait_unit(&board, "fleet-agent.service", "to start", is_running).await;

    // The upgrade, in dpkg's order: the old prerm, then the new postinst.
    maintainer_script(&board, shim.path(), r, "prerm", &["upgrade", "0.1.1"]).await;
    maintainer_script(&board, shim.path(), r, "postinst", &["configure", "0.1.0"]).await;
    let second = wait_unit(&board, "fleet-agent.service", "to run again", is_running).await;
    assert_ne!(
        first["InvocationID"], second["InvocationID"],
        "the upgrade did not restart the agent"
    );
    for (id, was) in &before {
        let now = wait_unit(&board, &unit(id), "to keep running", is_running).await;
        assert_eq!(now["MainPID"], was["MainPID"], "{id} was restarted");
        assert_eq!(
            now["InvocationID"], was["InvocationID"],
            "{id} was restarted"
        );
        assert_eq!(now["NRestarts"], "0");
    }

    // Removal stops the agent, and still no experiment.
    maintainer_script(&board, shim.path(), r, "prerm", &["remove"]).await;
    maintainer_script(&board, shim.path(), r, "postrm", &["remove"]).await;
    let removed = board
        .unit_properties("fleet-agent.service", &["ActiveState"])
        .await
        .unwrap();
    assert_eq!(agent(&removed), "inactive");
    for (id, was) in &before {
        let now = wait_unit(&board, &unit(id), "to keep running", is_running).await;
        assert_eq!(
            now["InvocationID"], was["InvocationID"],
            "{id} was restarted"
        );
    }
    assert!(!r
        .join("etc/systemd/system/brain-experiment@.service.d/20-jetson-devices.conf")
        .exists());
    assert!(
        r.join("etc/fleet/agent.toml").exists(),
        "remove kept the config"
    );

    // Purge removes the agent's configuration, keys and state.
    maintainer_script(&board, shim.path(), r, "postrm", &["purge"]).await;
    assert!(!r.join("etc/fleet").exists());
    assert!(!r.join("var/lib/fleet-agent").exists());

    bed.shutdown().await.expect("teardown");
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_under_its_shipped_unit_and_restarts_without_touching_experiments() {
    let mut bed = Testbed::new("agent-unit").await;
    let board = bed.add_board("agent-unit").await.expect("board");
    let pki = fleet_testbed::pki::TestPki::new(&bed.dir().join("pki")).expect("pki");
    let certs = pki.agent(board.name()).expect("agent certificate");
    let state_dir = board.dir().join("agent-state");
    let config = board.dir().join("agent.toml");
    fs::write(
        &config,
        format!(
            "node = {node:?}\nlisten = \"127.0.0.1:0\"\nsystemd = \"user\"\nstate_dir = {state:?}\n\
             unit_dir = {unit:?}\nruntime_unit_dir = {runtime:?}\n\n[tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
            node = board.name(),
            state = state_dir,
            unit = board.unit_dir(),
            runtime = board.runtime_unit_dir(),
            ca = certs.ca,
            cert = certs.cert,
            key = certs.key,
        ),
    )
    .unwrap();

    // The unit as the installer installs it, with a drop-in for the board:
    // its binary and config, the board's unit directories instead of
    // /etc/systemd/system and /run/systemd/system, the board's bus, and a
    // 2 s watchdog so that a main loop that does not feed it shows at once.
    let staged = staged_agent_install();
    fs::copy(
        staged
            .path()
            .join("usr/local/lib/systemd/system/fleet-agent.service"),
        board.unit_dir().join("fleet-agent.service"),
    )
    .unwrap();
    let dropin = board.unit_dir().join("fleet-agent.service.d");
    fs::create_dir_all(&dropin).unwrap();
    // The unit has PrivateTmp=: a build under /tmp would be invisible to it,
    // so the agent runs from a copy in the board's directory, as it would
    // from /usr/bin on a board.
    let installed_bin = board.dir().join("fleet-agent");
    fs::copy(workspace_bin("fleet-agent"), &installed_bin).unwrap();
    fs::write(
        dropin.join("50-testbed.conf"),
        format!(
            "[Service]\nExecStart=\nExecStart={bin} --config {config}\n\
             ReadWritePaths=\nReadWritePaths={unit} {runtime} {state} /sys/devices\n\
             Environment=DBUS_SESSION_BUS_ADDRESS={bus}\nWatchdogSec=2s\n",
            bin = installed_bin.display(),
            config = config.display(),
            unit = board.unit_dir().display(),
            runtime = board.runtime_unit_dir().display(),
            state = {
                fs::create_dir_all(&state_dir).unwrap();
                state_dir.display()
            },
            bus = board.bus_address(),
        ),
    )
    .unwrap();

    // An experiment that is running before the agent starts.
    drop_in(
        &board.runtime_unit_dir(),
        "steady",
        "ExecStart=\nExecStart=/bin/sh -c 'trap \"exit 0\" TERM; while :; do sleep 0.1; done'\n",
    );
    systemctl(&board, &["daemon-reload"]).await;
    systemctl(&board, &["start", &unit("steady")]).await;
    let experiment = wait_unit(&board, &unit("steady"), "to run", is_running).await;

    // Type=notify: start returns once the agent said READY=1, after binding
    // its listener.
    systemctl(&board, &["start", "fleet-agent.service"]).await;
    let agent = wait_unit(&board, "fleet-agent.service", "to run", is_running).await;
    assert!(state_dir.join("listen-addr").exists());
    let props = board
        .unit_properties(
            "fleet-agent.service",
            &["Type", "WatchdogUSec", "Restart", "NotifyAccess"],
        )
        .await
        .unwrap();
    assert_eq!(props["Type"], "notify");
    assert_eq!(props["WatchdogUSec"], "2s");
    assert_eq!(props["Restart"], "always");
    wait_logged(&board, "fleet-agent", "serving mTLS gRPC").await;

    // The main loop feeds the watchdog: after several watchdog periods the
    // same process still runs. (Nothing is supposed to happen, so this waits
    // for a fixed time.)
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fed = wait_unit(&board, "fleet-agent.service", "to run", is_running).await;
    assert_eq!(
        fed["MainPID"], agent["MainPID"],
        "the watchdog killed the agent"
    );
    assert_eq!(fed["NRestarts"], "0");

    // ExecReload: SIGHUP reloads the certificates in the same process.
    systemctl(&board, &["reload", "fleet-agent.service"]).await;
    wait_logged(&board, "fleet-agent", "reloaded TLS from [tls] of").await;
    let reloaded = wait_unit(&board, "fleet-agent.service", "to run", is_running).await;
    assert_eq!(reloaded["MainPID"], agent["MainPID"]);

    // A restart, and a kill -9 that Restart=always answers: the agent comes
    // back, the experiment never noticed.
    systemctl(&board, &["restart", "fleet-agent.service"]).await;
    let restarted = wait_unit(&board, "fleet-agent.service", "to run", is_running).await;
    assert_ne!(restarted["MainPID"], agent["MainPID"]);
    systemctl(&board, &["kill", "--signal=SIGKILL", "fleet-agent.service"]).await;
    let revived = wait_unit(&board, "fleet-agent.service", "to come back", |p| {
        is_running(p) && p["NRestarts"] == "1"
    })
    .await;
    assert_ne!(revived["MainPID"], restarted["MainPID"]);
    let after = wait_unit(&board, &unit("steady"), "to keep running", is_running).await;
    assert_eq!(after["MainPID"], experiment["MainPID"]);
    assert_eq!(after["InvocationID"], experiment["InvocationID"]);

    systemctl(&board, &["stop", "fleet-agent.service"]).await;
    bed.shutdown().await.expect("teardown");
}

/// Waits until a line logged under `identifier` contains `text`.
async fn wait_logged(board: &Board, identifier: &str, text: &str) {
    wait_for(
        format!("{text:?} in a line under {identifier}"),
        DEADLINE,
        || async move {
            let lines = board.journal_lines(identifier).await?;
            Ok(if lines.iter().any(|l| l.contains(text)) {
                Check::Ready(())
            } else {
                Check::not_yet(format!("{lines:?}"))
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}
