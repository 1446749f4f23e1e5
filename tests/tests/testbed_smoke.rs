//! The testbed's promises, checked against real systemd: boards that are
//! isolated from each other, drop-ins that run and log, memory limits that
//! kill, reboots that restart enabled units only, the shipped template's
//! sandbox, and a teardown that leaves nothing behind.
//!
//! These need root and an installed systemd. Where the build sees neither,
//! cargo reports them as ignored (tests/build.rs), unless
//! FLEET_REQUIRE_SYSTEMD=1 (CI) makes them run and fail.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use fleet_testbed::poll::{wait_for, Check};
use fleet_testbed::testbed::{
    Board, Layout, Mode, Testbed, TARGET, TARGET_NAME, TEMPLATE, TEMPLATE_NAME,
};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(30);

/// Writes the agent's kind of drop-in for instance `id` into `dir` (a
/// board's runtime or persistent unit directory).
fn drop_in(dir: &Path, id: &str, service: &str) {
    let dir = dir.join(format!("brain-experiment@{id}.service.d"));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("50-fleet.conf"), format!("[Service]\n{service}")).unwrap();
}

fn unit(id: &str) -> String {
    format!("brain-experiment@{id}.service")
}

async fn systemctl(board: &Board, args: &[&str]) -> String {
    board
        .systemctl(args)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits until `unit`'s properties satisfy `done`; returns them.
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
        "ExecMainCode",
        "ExecMainStatus",
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

fn is_active(p: &BTreeMap<String, String>) -> bool {
    p["ActiveState"] == "active" && p["SubState"] == "running"
}

/// Waits until the board's journal holds `line` under `identifier`; returns
/// every line logged under it.
async fn wait_line(board: &Board, identifier: &str, line: &str) -> Vec<String> {
    wait_for(
        format!(
            "{line:?} under {identifier} in the journal of {}",
            board.name()
        ),
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

/// Runs `sh -c script` inside `board`; its stdout.
async fn inside(board: &Board, script: &str) -> String {
    let out = board
        .command("sh")
        .args(["-c", script])
        .output()
        .await
        .expect("run a command in the board");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn report(test: &str, started: Instant) {
    eprintln!("{test}: {:.2?}", started.elapsed());
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_boards_start_at_once_and_do_not_see_each_other() {
    let started = Instant::now();
    let mut bed = Testbed::new("two-boards").await;
    let boards = bed.add_boards(&["iso-a", "iso-b"]).await.expect("boards");
    eprintln!("two boards booted in {:.2?}", started.elapsed());
    let (a, b) = (&boards[0], &boards[1]);

    // Each board is its own machine: hostname, machine id, booted systemd,
    // and its processes sit in its own cgroup.
    assert_ne!(a.bus_address(), b.bus_address());
    let host_id = fs::read_to_string("/etc/machine-id").unwrap();
    for board in [a, b] {
        assert_eq!(inside(board, "hostname").await, board.name());
        let id = inside(board, "cat /etc/machine-id").await;
        assert_eq!(id, board.machine_id().unwrap());
        assert_ne!(id, host_id.trim());
        assert_eq!(
            inside(board, "test -d /run/systemd/system && echo booted").await,
            "booted"
        );
        let cgroup = inside(board, "cat /proc/self/cgroup").await;
        assert!(cgroup.contains(&board.cgroup_path()), "{cgroup}");
    }
    assert_ne!(a.machine_id().unwrap(), b.machine_id().unwrap());

    // A unit on one board exists on that board only.
    drop_in(
        &a.runtime_unit_dir(),
        "only-a",
        "ExecStart=\nExecStart=/bin/sh -c 'echo only-on-a; exec sleep 600'\n",
    );
    systemctl(a, &["daemon-reload"]).await;
    systemctl(a, &["start", &unit("only-a")]).await;
    wait_unit(a, &unit("only-a"), "to run", is_active).await;
    wait_line(a, "brain-experiment-only-a", "only-on-a").await;
    let control_group = a
        .unit_property(&unit("only-a"), "ControlGroup")
        .await
        .unwrap();
    assert!(
        control_group.starts_with(&format!("{}/app.slice/", a.cgroup_path())),
        "{control_group}"
    );

    let listed = systemctl(
        b,
        &[
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "brain-experiment@*",
        ],
    )
    .await;
    assert_eq!(listed.trim(), "", "board b lists a's unit");
    let on_b = b
        .unit_property(&unit("only-a"), "ActiveState")
        .await
        .unwrap();
    assert_eq!(on_b, "inactive");
    assert!(b
        .journal_lines("brain-experiment-only-a")
        .await
        .unwrap()
        .is_empty());
    let b_messages: Vec<String> = b
        .journal(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        !b_messages.iter().any(|m| m.contains("only-a")),
        "{b_messages:?}"
    );

    bed.shutdown().await.expect("teardown");
    report("two_boards", started);
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_in_replaces_the_command_and_its_output_reaches_the_journal() {
    let started = Instant::now();
    let mut bed = Testbed::new("drop-in").await;
    let board = bed.add_board("dropin").await.expect("board");
    drop_in(
        &board.runtime_unit_dir(),
        "smoke",
        "ExecStart=\nExecStart=/bin/sh -c 'echo hello-from-smoke'\n",
    );
    systemctl(&board, &["daemon-reload"]).await;
    // --wait returns once the instance has run, and fails if it failed. Its
    // exit status cannot be read afterwards: a finished instance is unloaded
    // at once (CollectMode=inactive), so `systemctl show` reports defaults.
    systemctl(&board, &["start", "--wait", &unit("smoke")]).await;
    let after = board
        .unit_properties(&unit("smoke"), &["ActiveState", "InvocationID"])
        .await
        .unwrap();
    assert_eq!(after["ActiveState"], "inactive", "{after:?}");
    assert_eq!(after["InvocationID"], "", "unloaded: {after:?}");

    wait_line(&board, "brain-experiment-smoke", "hello-from-smoke").await;
    let entries = board
        .journal(&["SYSLOG_IDENTIFIER=brain-experiment-smoke"])
        .await
        .unwrap();
    let entry = entries
        .iter()
        .find(|e| e.message == "hello-from-smoke")
        .unwrap();
    assert_eq!(entry.field("_TRANSPORT").as_deref(), Some("stdout"));
    assert_eq!(
        entry.field("_MACHINE_ID"),
        Some(board.machine_id().unwrap())
    );
    assert_eq!(entry.field("_HOSTNAME").as_deref(), Some("dropin"));
    // A private user manager outside a user slice: journald cannot tell the
    // unit, only the identifier the template sets. Filter on that.
    assert_eq!(entry.field("_SYSTEMD_USER_UNIT"), None);

    bed.shutdown().await.expect("teardown");
    report("drop_in", started);
}

/// The kernel log's records from now back to the start of its ring buffer,
/// unescaped (/dev/kmsg writes a backslash as `\x5c`).
fn kernel_log() -> Vec<String> {
    let mut kmsg = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .expect("open /dev/kmsg");
    let mut records = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                let message = record.split_once(';').map_or(&*record, |(_, m)| m);
                records.push(message.trim_end().replace("\\x5c", "\\"));
            }
            // A record overwritten while reading.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read /dev/kmsg: {e}"),
        }
    }
    records
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_max_kills_an_instance_that_allocates_past_it() {
    let started = Instant::now();
    let mut bed = Testbed::new("memory-max").await;
    let board = bed.add_board("oom").await.expect("board");
    // dd fills one 256 MiB buffer; under MemoryMax=64M the kernel's OOM
    // killer ends it. Without the limit it would exit 0 at once.
    drop_in(
        &board.runtime_unit_dir(),
        "oom-direct",
        "ExecStart=\nExecStart=/bin/dd if=/dev/zero of=/dev/null bs=256M count=1\nMemoryMax=64M\nRestart=no\n",
    );
    // The same behind a shell: tail buffers the whole 256 MiB "line".
    drop_in(
        &board.runtime_unit_dir(),
        "oom-shell",
        "ExecStart=\nExecStart=/bin/sh -c 'head -c 256M /dev/zero | tail'\nMemoryMax=64M\nRestart=no\n",
    );
    systemctl(&board, &["daemon-reload"]).await;
    for id in ["oom-direct", "oom-shell"] {
        let max = board.unit_property(&unit(id), "MemoryMax").await.unwrap();
        assert_eq!(max, (64u64 << 20).to_string());
        // The start job itself succeeds (Type=exec): the kill comes later.
        systemctl(&board, &["start", &unit(id)]).await;
    }
    let direct = wait_unit(&board, &unit("oom-direct"), "to be killed", |p| {
        p["ActiveState"] == "failed"
    })
    .await;
    let shell = wait_unit(&board, &unit("oom-shell"), "to be killed", |p| {
        p["ActiveState"] == "failed"
    })
    .await;

    // What systemd reports for an OOM kill depends on the cgroup version.
    // cgroup v1 (this testbed's machines, JetPack 5): no "oom-kill" result;
    // the killed main process shows as signal 9 (ExecMainCode=2 is CLD_KILLED),
    // and a shell that waited for the killed process exits 128+9 = 137.
    // cgroup v2 (JetPack 6): systemd's own OOM tracking reports Result=oom-kill.
    let mode = Layout::detect().unwrap().mode;
    if mode == Mode::Unified {
        assert_eq!(direct["Result"], "oom-kill", "{direct:?}");
        assert_eq!(shell["Result"], "oom-kill", "{shell:?}");
    } else {
        assert_eq!(direct["Result"], "signal", "{direct:?}");
        assert_eq!(direct["ExecMainCode"], "2", "{direct:?}");
        assert_eq!(direct["ExecMainStatus"], "9", "{direct:?}");
        assert_eq!(shell["Result"], "exit-code", "{shell:?}");
        assert_eq!(shell["ExecMainCode"], "1", "{shell:?}");
        assert_eq!(shell["ExecMainStatus"], "137", "{shell:?}");
    }

    // The kernel names the memory cgroup it killed in: the attribution an
    // agent on cgroup v1 needs (kubelet's OOM watcher reads the same line).
    for id in ["oom-direct", "oom-shell"] {
        let wanted = format!("/brain-experiment@{id}.service");
        let prefix = format!("oom_memcg={}/", board.cgroup_path());
        let line = wait_for(
            format!("the kernel's oom-kill line for {id}"),
            DEADLINE,
            || {
                let (wanted, prefix) = (&wanted, &prefix);
                async move {
                    let log = kernel_log();
                    let found = log.into_iter().find(|l| {
                        l.starts_with("oom-kill:")
                            && l.split(',').any(|f| {
                                f.starts_with(prefix.as_str()) && f.ends_with(wanted.as_str())
                            })
                    });
                    Ok(found.into())
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!("{line}");
        assert!(line.contains("constraint=CONSTRAINT_MEMCG"), "{line}");
        assert!(
            line.contains("/app.slice/app-brain\\x2dexperiment.slice/brain-experiment@"),
            "{line}"
        );
    }

    bed.shutdown().await.expect("teardown");
    report("memory_max", started);
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reboot_restarts_enabled_instances_only() {
    let started = Instant::now();
    let mut bed = Testbed::new("reboot").await;
    let board = bed.add_board("reboot").await.expect("board");
    let script = |id: &str| {
        format!(
            "ExecStart=\nExecStart=/bin/sh -c 'trap \"echo {id}-got-sigterm; exit 0\" TERM; \
             echo {id}-started; while :; do sleep 0.1; done'\n"
        )
    };
    // Autostart: the drop-in in the persistent directory, the instance enabled.
    drop_in(&board.unit_dir(), "keep", &script("keep"));
    // An ordinary run: runtime drop-in, not enabled.
    drop_in(&board.runtime_unit_dir(), "once", &script("once"));
    systemctl(&board, &["daemon-reload"]).await;
    systemctl(&board, &["enable", &unit("keep")]).await;
    systemctl(&board, &["start", &unit("keep"), &unit("once")]).await;
    let before = wait_unit(&board, &unit("keep"), "to run", is_active).await;
    wait_unit(&board, &unit("once"), "to run", is_active).await;
    wait_line(&board, "brain-experiment-keep", "keep-started").await;
    wait_line(&board, "brain-experiment-once", "once-started").await;

    let reboot = Instant::now();
    board.reboot().await.expect("reboot");
    eprintln!("reboot took {:.2?}", reboot.elapsed());

    // The shutdown stopped both gracefully.
    wait_line(&board, "brain-experiment-keep", "keep-got-sigterm").await;
    wait_line(&board, "brain-experiment-once", "once-got-sigterm").await;
    // The enabled one runs again, as a new invocation.
    let after = wait_unit(&board, &unit("keep"), "to run after the reboot", is_active).await;
    assert_ne!(after["InvocationID"], before["InvocationID"]);
    let keep_lines = board.journal_lines("brain-experiment-keep").await.unwrap();
    assert_eq!(
        keep_lines.iter().filter(|l| *l == "keep-started").count(),
        2,
        "{keep_lines:?}"
    );
    assert_eq!(
        systemctl(&board, &["is-enabled", &unit("keep")])
            .await
            .trim(),
        "enabled"
    );
    // The other one does not, and its runtime drop-in went with the runtime
    // directory.
    let once = board
        .unit_properties(&unit("once"), &["ActiveState", "DropInPaths"])
        .await
        .unwrap();
    assert_eq!(once["ActiveState"], "inactive", "{once:?}");
    assert_eq!(once["DropInPaths"], "", "{once:?}");
    assert!(!board
        .runtime_unit_dir()
        .join(format!("{}.d", unit("once")))
        .exists());

    bed.shutdown().await.expect("teardown");
    report("reboot", started);
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_template_sandboxes_and_limits_an_instance() {
    let started = Instant::now();
    let mut bed = Testbed::new("template").await;
    let board = bed.add_board("template").await.expect("board");
    // A device every machine has that the template's allow list leaves out;
    // root outside the unit can open it.
    let device = ["/dev/loop-control", "/dev/fuse", "/dev/tty0"]
        .into_iter()
        .find(|d| fs::File::open(d).is_ok())
        .expect("no probe device on this machine");
    let probe = [
        "grep NoNewPrivs: /proc/self/status".to_owned(),
        "touch /usr/fleet-probe 2>/dev/null && echo usr-writable || echo usr-read-only".into(),
        "touch /etc/fleet-probe 2>/dev/null && echo etc-writable || echo etc-read-only".into(),
        "[ -z \"$(ls -A /tmp)\" ] && echo tmp-private || echo tmp-shared".into(),
        "echo x > /dev/null && echo null-writable".into(),
        format!("head -c 0 {device} 2>/dev/null && echo device-open || echo device-denied"),
        "head -c 1 /dev/kmsg >/dev/null 2>&1 && echo kmsg-readable || echo kmsg-hidden".into(),
        "hostname sandbox-probe 2>/dev/null && echo hostname-changed || echo hostname-protected"
            .into(),
        "echo probe-done".into(),
    ]
    .join("; ");
    drop_in(
        &board.runtime_unit_dir(),
        "sandbox",
        &format!("ExecStart=\nExecStart=/bin/sh -c '{probe}'\n"),
    );
    systemctl(&board, &["daemon-reload"]).await;
    systemctl(&board, &["start", &unit("sandbox")]).await;
    let lines = wait_line(&board, "brain-experiment-sandbox", "probe-done").await;
    assert_eq!(
        lines,
        [
            "NoNewPrivs:\t1",
            "usr-read-only",
            "etc-read-only",
            "tmp-private",
            "null-writable",
            "device-denied",
            "kmsg-hidden",
            "hostname-protected",
            "probe-done",
        ]
    );
    let done = wait_unit(&board, &unit("sandbox"), "to finish", |p| {
        p["ActiveState"] == "inactive"
    })
    .await;
    assert_eq!(done["Result"], "success");

    let props = board
        .unit_properties(
            &unit("sandbox"),
            &[
                "Description",
                "Restart",
                "RestartUSec",
                "StartLimitBurst",
                "StartLimitIntervalUSec",
                "TimeoutStopUSec",
                "KillMode",
                "KillSignal",
                "SyslogIdentifier",
                "CPUQuotaPerSecUSec",
                "MemoryMax",
                "DevicePolicy",
            ],
        )
        .await
        .unwrap();
    let expected = [
        ("Description", "Brain experiment sandbox"),
        ("Restart", "on-failure"),
        ("RestartUSec", "5s"),
        ("StartLimitBurst", "3"),
        ("StartLimitIntervalUSec", "5min"),
        ("TimeoutStopUSec", "30s"),
        ("KillMode", "mixed"),
        ("KillSignal", "15"),
        ("SyslogIdentifier", "brain-experiment-sandbox"),
        ("CPUQuotaPerSecUSec", "4s"),
        ("DevicePolicy", "closed"),
    ];
    for (key, value) in expected {
        assert_eq!(props[key], value, "{key}");
    }
    // MemoryMax=90% is resolved against the machine's RAM.
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let max: u64 = props["MemoryMax"].parse().unwrap();
    let ratio = max as f64 / (total_kib * 1024) as f64;
    assert!(
        (0.89..=0.91).contains(&ratio),
        "MemoryMax={max}, ratio {ratio}"
    );

    bed.shutdown().await.expect("teardown");
    report("template", started);
}

/// Whether a process is gone (a zombie counts: it runs nothing and holds no
/// namespace or cgroup).
fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Every process whose mount namespace is `inode`.
fn in_mount_namespace(inode: u64) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == inode))
        .collect()
}

/// The processes in mount namespace `inode` that are not another run's. The
/// kernel hands a freed namespace's inode number to the next namespace, and
/// tests running in parallel create namespaces all the time: a process in a
/// board of another run, in that run's cgroup, is such a newcomer.
fn left_in_mount_namespace(inode: u64, run_cgroup: &str) -> Vec<u32> {
    in_mount_namespace(inode)
        .into_iter()
        .filter(|pid| {
            let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let other_run = cgroup.contains("/fleet-testbed/") && !cgroup.contains(run_cgroup);
            !other_run
        })
        .collect()
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_leaves_no_process_cgroup_or_mount() {
    let started = Instant::now();
    let mounts_before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut bed = Testbed::new("teardown").await;
    let run_dir = bed.dir().to_owned();
    let board = bed.add_board("teardown").await.expect("board");

    // A unit, and a process started through the board as an agent would be.
    drop_in(
        &board.runtime_unit_dir(),
        "lingering",
        "ExecStart=\nExecStart=/bin/sleep 600\n",
    );
    systemctl(&board, &["daemon-reload"]).await;
    systemctl(&board, &["start", &unit("lingering")]).await;
    let running = wait_unit(&board, &unit("lingering"), "to run", is_active).await;
    let unit_pid: u32 = running["MainPID"].parse().unwrap();
    let mut agent = board
        .command("sleep")
        .arg("600")
        .spawn()
        .expect("start a process in the board");
    let agent_pid = agent.id().unwrap();
    let manager_pid = board.manager_pid().unwrap();

    // The manager and the agent run in the board's mount namespace; the
    // sandboxed unit in one of its own, which systemd made from the board's.
    let namespace = board.mount_namespace().unwrap();
    let unit_namespace = fs::metadata(format!("/proc/{unit_pid}/ns/mnt"))
        .unwrap()
        .ino();
    let ours = fs::metadata("/proc/self/ns/mnt").unwrap().ino();
    assert_ne!(namespace, ours);
    assert_ne!(unit_namespace, ours);
    let members = in_mount_namespace(namespace);
    for pid in [agent_pid, manager_pid] {
        assert!(
            members.contains(&pid),
            "{pid} not in the board's namespace: {members:?}"
        );
    }
    let agent_cgroup = fs::read_to_string(format!("/proc/{agent_pid}/cgroup")).unwrap();
    assert!(
        agent_cgroup.contains(&board.cgroup_path()),
        "{agent_cgroup}"
    );
    let cgroups = board.cgroup_dirs();
    assert!(cgroups.iter().all(|d| d.is_dir()), "{cgroups:?}");
    // The board mounted /run/systemd, /run/log and /etc/machine-id, but only
    // in its own namespace.
    let board_mounts = inside(&board, "cat /proc/self/mountinfo").await;
    for target in [" /run/systemd ", " /run/log ", " /etc/machine-id "] {
        assert!(
            board_mounts.contains(target),
            "board lacks {target}: {board_mounts}"
        );
    }

    bed.shutdown().await.expect("teardown");

    let status = tokio::time::timeout(DEADLINE, agent.wait())
        .await
        .expect("the board's process ends")
        .unwrap();
    // Teardown stops a board as a shutdown would: SIGTERM first.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
    wait_for(
        "the board's processes to be gone",
        DEADLINE,
        || async move {
            let left: Vec<u32> = [unit_pid, manager_pid]
                .into_iter()
                .filter(|p| !gone(*p))
                .collect();
            Ok(if left.is_empty() {
                Check::Ready(())
            } else {
                Check::not_yet(format!("alive: {left:?}"))
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    for dir in &cgroups {
        assert!(!dir.exists(), "{} is left", dir.display());
        assert!(
            !dir.parent().unwrap().exists(),
            "run cgroup {} is left",
            dir.parent().unwrap().display()
        );
    }
    let run_cgroup = format!(
        "{}/",
        Path::new(&board.cgroup_path()).parent().unwrap().display()
    );
    assert_eq!(
        left_in_mount_namespace(namespace, &run_cgroup),
        Vec::<u32>::new()
    );
    assert_eq!(
        left_in_mount_namespace(unit_namespace, &run_cgroup),
        Vec::<u32>::new()
    );
    assert_eq!(board.mount_namespace(), None);
    let mounts_after = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(mounts_after, mounts_before, "the host's mounts changed");
    assert!(!mounts_after.contains(run_dir.to_str().unwrap()));
    assert!(!run_dir.exists(), "a clean run removes its directory");
    // The board is gone for good.
    assert!(board.command("true").status().await.is_err());

    report("teardown", started);
}

#[cfg_attr(
    fleet_no_systemd_tools,
    ignore = "needs systemd's programs; see the build warning"
)]
#[tokio::test]
async fn the_shipped_units_pass_systemd_analyze_verify() {
    assert!(
        Path::new("/usr/bin/systemd-analyze").exists()
            || Path::new("/bin/systemd-analyze").exists(),
        "systemd-analyze is not installed"
    );
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(TEMPLATE_NAME), TEMPLATE).unwrap();
    fs::write(dir.path().join(TARGET_NAME), TARGET).unwrap();
    // A template is verified through an instance of it.
    std::os::unix::fs::symlink(TEMPLATE_NAME, dir.path().join(unit("verify"))).unwrap();
    let runtime = dir.path().join("runtime");
    fs::create_dir(&runtime).unwrap();
    for manager in ["--system", "--user"] {
        let out = tokio::process::Command::new("systemd-analyze")
            .arg(manager)
            .arg("verify")
            .arg(dir.path().join(unit("verify")))
            .arg(dir.path().join(TARGET_NAME))
            // Only these files, plus the manager's own units.
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{manager}: {stderr}");
        // Warnings do not fail the command; they fail this test.
        assert_eq!(stderr.trim(), "", "{manager}");
    }
}
