//! The installer and the docs, checked as an administrator would meet them:
//! `deploy/install.sh --root` into a scratch directory lays down the tree
//! docs/operations.md describes, a second run changes nothing, `--uninstall`
//! leaves only the data and `--purge` removes that too; the enrolment files
//! come from the real `fleetctl pki`; every shipped config file parses; every
//! agent config key is documented with its default; the shell scripts pass
//! shellcheck.
//!
//! Staged installs need no running systemd, only `systemctl`
//! (for `--root` enabling) and `systemd-sysusers`. Where those are missing,
//! cargo reports the tests as ignored (tests/build.rs), unless
//! FLEET_REQUIRE_SYSTEMD=1 (CI) makes them run and fail.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleet_agent::config::AgentConfig;
use fleet_testbed::agent::workspace_bin;

/// The first line of a JetPack 6 board's /etc/nv_tegra_release.
const R36_RELEASE: &str =
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Fails the test, naming what is missing, when this machine lacks what a
/// staged install needs (the build marks these tests ignored where it saw
/// that, tests/build.rs).
fn require_staging_tools(test: &str) {
    let missing: Vec<&str> = ["systemctl", "systemd-sysusers", "bash"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    assert!(missing.is_empty(), "{test}: {missing:?} are not installed");
}

/// Runs `deploy/install.sh ARGS`; its output, whatever the exit status.
fn install_sh(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .args(args)
        .output()
        .expect("run deploy/install.sh")
}

/// Runs `deploy/install.sh ARGS` and expects success; its stdout.
fn install_ok(args: &[&str]) -> String {
    let out = install_sh(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "install.sh {} failed ({}):\n{stdout}\n{stderr}",
        args.join(" "),
        out.status
    );
    stdout
}

/// One entry of a directory tree, with everything a rewrite would change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    /// File content, or a link's target.
    content: Vec<u8>,
    mtime_ns: i128,
    inode: u64,
}

/// Every entry under `root`, by path relative to it (`etc/fleet/agent.toml`).
fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Entry>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let (kind, content) = if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                ("link", target.as_os_str().as_encoded_bytes().to_vec())
            } else if meta.is_dir() {
                ("dir", Vec::new())
            } else {
                ("file", fs::read(&path).unwrap())
            };
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: meta.mode() & 0o7777,
                    content,
                    mtime_ns: i128::from(meta.mtime()) * 1_000_000_000
                        + i128::from(meta.mtime_nsec()),
                    inode: meta.ino(),
                },
            );
            if kind == "dir" {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The files and links of a snapshot (directories left out).
fn files(tree: &BTreeMap<String, Entry>) -> BTreeSet<String> {
    tree.iter()
        .filter(|(_, e)| e.kind != "dir")
        .map(|(p, _)| p.clone())
        .collect()
}

/// What systemd-sysusers writes into a staged image's /etc: the users and
/// groups databases. Like Debian, the installer never removes system users.
const USER_DATABASE: &[&str] = &[
    "etc/passwd",
    "etc/group",
    "etc/shadow",
    "etc/gshadow",
    "etc/.pwd.lock",
];

fn without_user_database(set: BTreeSet<String>) -> BTreeSet<String> {
    set.into_iter()
        .filter(|p| !USER_DATABASE.contains(&p.as_str()))
        .collect()
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|p| p.to_string()).collect()
}

/// A fleet CA made by the real `fleetctl pki`, with `agent-<node>` and
/// `controller` certificates and a CRL (one revoked user).
struct Certs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn fleetctl(args: &[&str]) {
    let out = Command::new(workspace_bin("fleetctl"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run fleetctl");
    assert!(
        out.status.success(),
        "fleetctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(node: &str) -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_owned();
    fleetctl(&["pki", "init", "--dir", &d, "--fleet", "lab"]);
    fleetctl(&[
        "pki",
        "issue",
        "agent",
        node,
        "--dir",
        &d,
        "--san",
        "192.0.2.7",
    ]);
    fleetctl(&[
        "pki",
        "issue",
        "controller",
        "--dir",
        &d,
        "--san",
        "ctl.lab",
    ]);
    fleetctl(&[
        "pki", "issue", "user", "bob", "--role", "viewer", "--dir", &d,
    ]);
    fleetctl(&[
        "pki",
        "revoke",
        "--dir",
        &d,
        "--cert",
        &format!("{d}/user-bob.pem"),
    ]);
    // What an administrator copies to the board: no CA key, no other
    // board's files.
    let board = dir.path().join("for-board");
    fs::create_dir(&board).unwrap();
    for f in [
        "ca.pem".to_owned(),
        "crl.pem".into(),
        format!("agent-{node}.pem"),
        format!("agent-{node}.key"),
        "controller.pem".into(),
        "controller.key".into(),
    ] {
        fs::copy(dir.path().join(&f), board.join(&f)).unwrap();
    }
    Certs {
        path: board,
        _dir: dir,
    }
}

/// A folder holding the workspace's binaries, as `--bin-dir` takes it.
fn bin_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        fs::copy(workspace_bin(name), dir.path().join(name)).unwrap();
    }
    dir
}

fn mode(tree: &BTreeMap<String, Entry>, path: &str) -> u32 {
    tree.get(path)
        .unwrap_or_else(|| panic!("{path} is not installed"))
        .mode
}

/// Files of the agent's installation, as docs/operations.md lists them.
const AGENT_FILES: &[&str] = &[
    "usr/local/bin/fleet-agent",
    "usr/local/lib/systemd/system/fleet-agent.service",
    "usr/local/lib/systemd/system/brain-experiment@.service",
    "usr/local/lib/systemd/system/brain-experiment.target",
    "usr/local/lib/systemd/system/brain-experiment@.service.d/20-jetson-devices.conf",
    "etc/udev/rules.d/70-fleet-jetson-gpu.rules",
    "usr/local/lib/sysusers.d/fleet-agent.conf",
    "etc/systemd/journald.conf.d/60-fleet.conf",
    "etc/fleet/agent.toml",
    "etc/fleet/agent.env",
    "etc/fleet/ca.pem",
    "etc/fleet/agent.pem",
    "etc/fleet/agent.key",
    "etc/fleet/crl.pem",
    "etc/systemd/system/multi-user.target.wants/fleet-agent.service",
    "etc/systemd/system/multi-user.target.wants/brain-experiment.target",
    "etc/systemd/system/default.target.wants/brain-experiment.target",
];

/// What `--uninstall` keeps of the agent: configuration and keys.
const AGENT_DATA: &[&str] = &[
    "etc/fleet/agent.toml",
    "etc/fleet/agent.env",
    "etc/fleet/ca.pem",
    "etc/fleet/agent.pem",
    "etc/fleet/agent.key",
    "etc/fleet/crl.pem",
];

// Reading back what systemd-sysusers wrote (etc/shadow is mode 0000)
// takes root.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[test]
fn agent_install_lays_down_the_documented_tree_once_and_uninstall_keeps_only_data() {
    require_staging_tools("agent install");
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap().to_owned();
    fs::create_dir(root.path().join("etc")).unwrap();
    fs::write(root.path().join("etc/nv_tegra_release"), R36_RELEASE).unwrap();
    let certs = make_certs("jetson-07");
    let bins = bin_dir(&["fleet-agent"]);
    let args = [
        "agent",
        "--root",
        &r,
        "--bin-dir",
        bins.path().to_str().unwrap(),
        "--certs",
        certs.path.to_str().unwrap(),
        "--controller",
        "https://ctl.lab:7444",
    ];

    // A dry run shows the plan and writes nothing.
    let planned = install_ok(&[&args[..], &["--dry-run"]].concat());
    assert!(
        planned.contains("would install /usr/local/bin/fleet-agent"),
        "{planned}"
    );
    assert_eq!(
        files(&snapshot(root.path())),
        set(&["etc/nv_tegra_release"])
    );

    let first = install_ok(&args);
    eprintln!("{first}");
    let tree = snapshot(root.path());
    let mut expected = set(AGENT_FILES);
    expected.insert("etc/nv_tegra_release".into());
    assert_eq!(without_user_database(files(&tree)), expected);
    assert_eq!(tree["var/lib/fleet-agent"].kind, "dir");

    // Modes: keys and state private, everything else readable.
    assert_eq!(mode(&tree, "etc/fleet/agent.key"), 0o600);
    assert_eq!(mode(&tree, "var/lib/fleet-agent"), 0o700);
    assert_eq!(mode(&tree, "usr/local/bin/fleet-agent"), 0o755);
    assert_eq!(mode(&tree, "etc/fleet/agent.toml"), 0o644);
    assert_eq!(
        mode(&tree, "usr/local/lib/systemd/system/fleet-agent.service"),
        0o644
    );

    // The units as shipped; the agent's names the binary where it went.
    let units = root.path().join("usr/local/lib/systemd/system");
    for unit in ["brain-experiment@.service", "brain-experiment.target"] {
        assert_eq!(
            read(units.join(unit)),
            read(repo().join("systemd").join(unit)),
            "{unit}"
        );
    }
    let agent_unit = read(units.join("fleet-agent.service"));
    assert!(agent_unit
        .lines()
        .any(|l| l == "ExecStart=/usr/local/bin/fleet-agent --config /etc/fleet/agent.toml"));
    assert_eq!(
        agent_unit
            .lines()
            .skip(1)
            .map(|l| l.replace("/usr/local/bin/", "/usr/bin/"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
        read(repo().join("systemd/fleet-agent.service")),
        "the installed agent unit differs from the shipped one beyond the binary's path"
    );
    // The GPU device list of the board's release (R36 here).
    assert_eq!(
        read(units.join("brain-experiment@.service.d/20-jetson-devices.conf")),
        read(repo().join("deploy/jetson/r36.conf"))
    );
    // Enabled: the links systemctl makes.
    assert_eq!(
        fs::read_link(
            root.path()
                .join("etc/systemd/system/multi-user.target.wants/fleet-agent.service")
        )
        .unwrap(),
        Path::new("/usr/local/lib/systemd/system/fleet-agent.service")
    );
    // The group the udev rule gives the GPU nodes.
    assert!(
        read(root.path().join("etc/group")).contains("\nvideo:")
            || read(root.path().join("etc/group")).starts_with("video:")
    );

    // Enrolment: fleetctl's files, and a config that names the node and the
    // CRL, and parses.
    for (installed, issued) in [
        ("ca.pem", "ca.pem"),
        ("agent.pem", "agent-jetson-07.pem"),
        ("agent.key", "agent-jetson-07.key"),
        ("crl.pem", "crl.pem"),
    ] {
        assert_eq!(
            fs::read(root.path().join("etc/fleet").join(installed)).unwrap(),
            fs::read(certs.path.join(issued)).unwrap(),
            "{installed}"
        );
    }
    let config = AgentConfig::from_file(&root.path().join("etc/fleet/agent.toml")).unwrap();
    assert_eq!(config.node, "jetson-07");
    assert_eq!(
        config.tls.crl.as_deref(),
        Some(Path::new("/etc/fleet/crl.pem"))
    );
    assert_eq!(config.tls.key, Path::new("/etc/fleet/agent.key"));
    // --controller: the environment file the unit loads, which the agent
    // reads as the controller it joins at start.
    let env = read(root.path().join("etc/fleet/agent.env"));
    let controller = env
        .lines()
        .find_map(|l| l.strip_prefix("FLEET_CONTROLLER="))
        .unwrap_or_else(|| panic!("no FLEET_CONTROLLER in agent.env: {env}"));
    assert_eq!(controller, "https://ctl.lab:7444");
    assert!(read(repo().join("systemd/fleet-agent.service"))
        .lines()
        .any(|l| l == "EnvironmentFile=-/etc/fleet/agent.env"));
    let checked = Command::new(root.path().join("usr/local/bin/fleet-agent"))
        .arg("--config")
        .arg(root.path().join("etc/fleet/agent.toml"))
        .arg("check-config")
        .env("FLEET_CONTROLLER", controller)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}");
    assert!(
        stdout.contains("joins the controller at ctl.lab:7444 (from FLEET_CONTROLLER)"),
        "{stdout}"
    );

    // Every installed file is named in the operations guide.
    let operations = read(repo().join("docs/operations.md"));
    for path in AGENT_FILES {
        let name = Path::new(path).file_name().unwrap().to_str().unwrap();
        assert!(
            operations.contains(name),
            "docs/operations.md does not mention {path}"
        );
    }

    // The second run changes nothing: same files, same contents, same
    // inodes and modification times.
    let second = install_ok(&args);
    assert!(second.contains("nothing to change"), "{second}");
    assert_eq!(
        snapshot(root.path()),
        tree,
        "the second run changed the tree"
    );

    // A changed config survives a reinstall.
    let edited = read(root.path().join("etc/fleet/agent.toml")) + "# edited\n";
    fs::write(root.path().join("etc/fleet/agent.toml"), &edited).unwrap();
    install_ok(&args);
    assert_eq!(read(root.path().join("etc/fleet/agent.toml")), edited);

    // --uninstall leaves only the data.
    let removed = install_ok(&["agent", "--root", &r, "--uninstall"]);
    eprintln!("{removed}");
    let after = snapshot(root.path());
    let mut kept = set(AGENT_DATA);
    kept.insert("etc/nv_tegra_release".into());
    assert_eq!(without_user_database(files(&after)), kept);
    assert_eq!(after["var/lib/fleet-agent"].kind, "dir");
    assert_eq!(read(root.path().join("etc/fleet/agent.toml")), edited);

    // --purge removes the data too.
    install_ok(&["agent", "--root", &r, "--uninstall", "--purge"]);
    let purged = snapshot(root.path());
    assert_eq!(
        without_user_database(files(&purged)),
        set(&["etc/nv_tegra_release"])
    );
    assert!(!purged.contains_key("var/lib/fleet-agent"));
    assert!(!purged.contains_key("etc/fleet"));
}

#[cfg_attr(
    fleet_no_systemd_tools,
    ignore = "needs systemd's programs; see the build warning"
)]
#[test]
fn the_device_list_follows_the_l4t_release() {
    require_staging_tools("device list");
    let bins = bin_dir(&["fleet-agent"]);
    let dropin = "usr/local/lib/systemd/system/brain-experiment@.service.d/20-jetson-devices.conf";
    for (release, expected) in [
        (
            Some("# R35 (release), REVISION: 5.0, GCID: 1, BOARD: t186ref, EABI: aarch64\n"),
            Some("r35.conf"),
        ),
        (Some(R36_RELEASE), Some("r36.conf")),
        (
            Some("# R38 (release), REVISION: 1.0\n"),
            Some("generic.conf"),
        ),
        (None, None),
    ] {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        if let Some(release) = release {
            fs::write(root.path().join("etc/nv_tegra_release"), release).unwrap();
        }
        let out = install_ok(&[
            "agent",
            "--root",
            root.path().to_str().unwrap(),
            "--bin-dir",
            bins.path().to_str().unwrap(),
            "--node",
            "jetson-01",
        ]);
        let installed = root.path().join(dropin);
        match expected {
            Some(file) => assert_eq!(
                read(&installed),
                read(repo().join("deploy/jetson").join(file)),
                "{release:?}"
            ),
            None => {
                assert!(!installed.exists());
                assert!(out.contains("not a Jetson"), "{out}");
            }
        }
    }
}

// Reading back what systemd-sysusers wrote (etc/shadow is mode 0000)
// takes root.
#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[test]
fn controller_install_is_idempotent_and_uninstall_keeps_its_data() {
    require_staging_tools("controller install");
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap().to_owned();
    let certs = make_certs("jetson-07");
    let bins = bin_dir(&["fleet-controller", "fleetctl"]);
    let args = [
        "controller",
        "--root",
        &r,
        "--bin-dir",
        bins.path().to_str().unwrap(),
        "--certs",
        certs.path.to_str().unwrap(),
    ];
    install_ok(&args);
    let tree = snapshot(root.path());
    assert_eq!(
        without_user_database(files(&tree)),
        set(&[
            "usr/local/bin/fleet-controller",
            "usr/local/bin/fleetctl",
            "usr/local/lib/systemd/system/fleet-controller.service",
            "usr/local/lib/sysusers.d/fleet-controller.conf",
            "etc/fleet/controller.toml",
            "etc/fleet/ca.pem",
            "etc/fleet/crl.pem",
            "etc/fleet/controller.pem",
            "etc/fleet/controller.key",
            "etc/systemd/system/multi-user.target.wants/fleet-controller.service",
        ])
    );
    assert_eq!(mode(&tree, "etc/fleet/controller.key"), 0o640);
    assert_eq!(mode(&tree, "var/lib/fleet-controller"), 0o700);
    // The user the unit runs as.
    assert!(read(root.path().join("etc/passwd"))
        .lines()
        .any(|l| l.starts_with("fleet:")
            && l.ends_with(":/var/lib/fleet-controller:/usr/sbin/nologin")));
    assert_eq!(
        read(root.path().join("etc/fleet/controller.toml")),
        read(repo().join("deploy/controller.toml"))
    );

    let second = install_ok(&args);
    assert!(second.contains("nothing to change"), "{second}");
    assert_eq!(
        snapshot(root.path()),
        tree,
        "the second run changed the tree"
    );

    install_ok(&["controller", "--root", &r, "--uninstall"]);
    let after = snapshot(root.path());
    assert_eq!(
        without_user_database(files(&after)),
        set(&[
            "etc/fleet/controller.toml",
            "etc/fleet/ca.pem",
            "etc/fleet/crl.pem",
            "etc/fleet/controller.pem",
            "etc/fleet/controller.key",
        ])
    );
    assert_eq!(after["var/lib/fleet-controller"].kind, "dir");
    install_ok(&["controller", "--root", &r, "--uninstall", "--purge"]);
    assert_eq!(
        without_user_database(files(&snapshot(root.path()))),
        BTreeSet::new()
    );
}

#[cfg_attr(
    fleet_no_systemd_tools,
    ignore = "needs systemd's programs; see the build warning"
)]
#[test]
fn the_installer_refuses_to_run_without_what_it_needs() {
    require_staging_tools("refusals");
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let bins = bin_dir(&["fleet-agent"]);
    let b = bins.path().to_str().unwrap();
    for (args, message) in [
        (vec![], "say what to install: agent or controller"),
        (vec!["agent", "controller"], "give one role"),
        (
            vec!["agent", "--root", r, "--bin-dir", e],
            "has no executable fleet-agent",
        ),
        (
            vec!["agent", "--root", r, "--bin-dir", b, "--certs", e],
            "has no ca.pem",
        ),
        (
            vec!["agent", "--root", r, "--purge"],
            "--purge goes with --uninstall",
        ),
        (
            vec!["controller", "--root", r, "--node", "x"],
            "are for the agent",
        ),
        (
            vec!["agent", "--root", r, "--bin-dir", b, "--node", "Bad/Name"],
            "is invalid",
        ),
        (
            vec!["agent", "--root", r, "--jetpack", "r99"],
            "use r35, r36, generic or none",
        ),
        (vec!["agent", "--bogus"], "unknown argument: --bogus"),
        (
            vec!["agent", "--root", r, "--controller", "http://ctl.lab:7444"],
            "only gRPC over mutual TLS",
        ),
        (
            vec![
                "agent",
                "--root",
                r,
                "--controller",
                "ctl.lab\nFLEET_LOG=trace",
            ],
            "give host:port or https://host:port",
        ),
    ] {
        let out = install_sh(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    // Nothing was written by any of them.
    assert!(snapshot(root.path()).is_empty());
}

#[cfg_attr(
    fleet_no_systemd_tools,
    ignore = "needs systemd's programs; see the build warning"
)]
#[test]
fn a_controller_address_the_agent_cannot_use_fails_the_install() {
    require_staging_tools("bad controller address");
    let root = tempfile::tempdir().unwrap();
    let r = root.path().to_str().unwrap();
    let bins = bin_dir(&["fleet-agent"]);
    let out = install_sh(&[
        "agent",
        "--root",
        r,
        "--bin-dir",
        bins.path().to_str().unwrap(),
        "--node",
        "jetson-08",
        "--jetpack",
        "none",
        "--controller",
        "ctl.lab:99999",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // The agent's own message names the variable and the fix.
    assert!(
        stderr.contains("FLEET_CONTROLLER=\"ctl.lab:99999\"") && stderr.contains("host:port"),
        "{stderr}"
    );
    assert!(
        stderr.contains("does not pass fleet-agent check-config"),
        "{stderr}"
    );
}

/// The scripts an administrator runs or a package runs for them.
fn shell_scripts() -> Vec<PathBuf> {
    let deploy = repo().join("deploy");
    let mut scripts = vec![
        deploy.join("install.sh"),
        deploy.join("build-debs.sh"),
        deploy.join("ci/check-units.sh"),
    ];
    for package in ["fleet-agent", "fleet-controller"] {
        for script in ["postinst", "prerm", "postrm"] {
            scripts.push(deploy.join("debian").join(package).join(script));
        }
    }
    scripts
}

#[cfg_attr(
    fleet_no_shellcheck,
    ignore = "needs shellcheck (apt-get install shellcheck)"
)]
#[test]
fn the_shell_scripts_pass_shellcheck() {
    let found = Command::new("shellcheck").arg("--version").output();
    assert!(
        found.is_ok(),
        "shellcheck is not installed (apt-get install shellcheck)"
    );
    for script in shell_scripts() {
        assert!(script.is_file(), "{} is missing", script.display());
        let mode = fs::metadata(&script).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o111,
            0o111,
            "{} is not executable",
            script.display()
        );
    }
    let out = Command::new("shellcheck")
        .args(shell_scripts())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn every_shipped_config_file_parses() {
    let deploy = repo().join("deploy");
    // The agent's sample, as the agent reads it.
    AgentConfig::from_file(&deploy.join("agent.toml")).unwrap();
    // The controller's, as the controller reads it.
    fleet_controller::config::ControllerConfig::from_file(&deploy.join("controller.toml")).unwrap();
    // Experiment specs, as fleetctl reads them.
    for entry in fs::read_dir(deploy.join("examples")).unwrap().flatten() {
        // With no controller configured: whatever the machine's own
        // fleetctl settings say must not matter.
        let home = tempfile::tempdir().unwrap();
        let out = Command::new(workspace_bin("fleetctl"))
            .args(["submit", "--dry-run"])
            .arg(entry.path())
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path())
            .env_remove("FLEET_CONFIG_FILE")
            .env_remove("FLEET_CONTEXT")
            .env_remove("FLEET_CONTROLLER")
            .env_remove("FLEET_AGENT")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            entry.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The journald drop-in: one [Journal] section of keys journald knows.
    const JOURNALD_KEYS: &[&str] = &[
        "Storage",
        "SystemMaxUse",
        "SystemKeepFree",
        "MaxFileSec",
        "MaxRetentionSec",
        "RateLimitIntervalSec",
        "RateLimitBurst",
    ];
    let journald = read(deploy.join("journald/60-fleet.conf"));
    let settings: Vec<&str> = journald
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(settings[0], "[Journal]");
    for line in &settings[1..] {
        let (key, value) = line.split_once('=').expect("key=value");
        assert!(JOURNALD_KEYS.contains(&key), "unknown journald key {key}");
        assert!(!value.is_empty(), "{line}");
    }
    // The sysusers.d files: one entry a line, of the kinds systemd-sysusers takes.
    for file in ["fleet-agent.conf", "fleet-controller.conf"] {
        for line in read(deploy.join("sysusers").join(file)).lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            assert!(
                line.starts_with("u ") || line.starts_with("g "),
                "{file}: {line}"
            );
        }
    }
    // The device drop-ins: a [Service] section of DeviceAllow= lines with
    // read-write access.
    for release in ["r35.conf", "r36.conf", "generic.conf"] {
        let text = read(deploy.join("jetson").join(release));
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(lines[0], "[Service]", "{release}");
        for line in &lines[1..] {
            let value = line.strip_prefix("DeviceAllow=").expect("DeviceAllow=");
            assert!(value.ends_with(" rw"), "{release}: {line}");
        }
    }
}

/// Every key of the agent's config (dotted: `guard.warn_c`), with its
/// default as the docs print it: TOML literals, `unset` for an absent
/// optional key, `(required)` for `node`.
fn agent_keys_with_defaults() -> BTreeMap<String, String> {
    fn render(value: &serde_json::Value) -> String {
        match value {
            serde_json::Value::Null => "unset".into(),
            serde_json::Value::String(s) => format!("\"{s}\""),
            serde_json::Value::Object(map) if map.is_empty() => "{}".into(),
            other => other.to_string(),
        }
    }
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        let serde_json::Value::Object(map) = value else {
            unreachable!()
        };
        for (key, value) in map {
            let name = format!("{prefix}{key}");
            match value {
                serde_json::Value::Object(inner) if !inner.is_empty() => {
                    walk(&format!("{name}."), value, out)
                }
                _ => {
                    out.insert(name, render(value));
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    // The effective defaults, what `fleet-agent gen-config` prints, plus the
    // optional keys it leaves out.
    walk(
        "",
        &serde_json::to_value(AgentConfig::example()).unwrap(),
        &mut out,
    );
    out.insert("node".into(), "(required)".into());
    // The per-zone table: its keys, from a zone with none of them set.
    out.insert("guard.zones".into(), "{}".into());
    let zone = serde_json::to_value(fleet_agent::guard::ZoneLimits::default()).unwrap();
    walk("guard.zones.<zone>.", &zone, &mut out);
    out
}

#[test]
fn docs_list_every_agent_key_with_its_default() {
    let keys = agent_keys_with_defaults();
    assert!(keys.contains_key("tls.crl") && keys.contains_key("sampling.interval_ms"));
    let docs = read(repo().join("docs/configuration.md"));
    let section = docs
        .split("## fleet-agent")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/configuration.md has a fleet-agent section");
    // Rows of the key table: | `key` | default | meaning |
    let mut documented = BTreeMap::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') || cells[1].contains(' ') {
            continue;
        }
        let key = cells[1].trim_matches('`').to_owned();
        if key.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            continue; // the environment table
        }
        let default = cells[2].trim_matches('`').to_owned();
        assert!(
            documented.insert(key.clone(), default).is_none(),
            "{key} is documented twice"
        );
    }
    let missing: Vec<_> = keys
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let stale: Vec<_> = documented
        .keys()
        .filter(|k| !keys.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/configuration.md is out of date: undocumented keys {missing:?}, documented keys that do not exist {stale:?}"
    );
    for (key, default) in &keys {
        assert_eq!(
            &documented[key], default,
            "docs/configuration.md gives {key} another default than the code"
        );
    }
}
