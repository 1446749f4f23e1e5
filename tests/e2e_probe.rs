// What this machine lacks for the tests that need systemd, seen at build
// time, so that cargo reports those tests as ignored (with the reason)
// instead of counting a test that returned early as passed.
//
// Included by the build scripts of `fleet-testbed` (tests/build.rs) and
// `fleet-agent` (agent/build.rs). They set two cfgs:
// - `fleet_no_systemd_tools`: systemd's programs are not installed (the
//   unit-file checks and the installer's tests need them);
// - `fleet_no_testbed`: the end-to-end testbed cannot run here (it also
//   needs root, dbus-daemon, journald and a machine id);
// - `fleet_no_shellcheck`: shellcheck is not installed.
//
// `FLEET_REQUIRE_SYSTEMD=1` (CI) sets none of them: every test runs and fails
// loudly when the machine cannot run it. `FLEET_SKIP_E2E=1` sets the first
// two.

use std::path::Path;

const REQUIRE_VAR: &str = "FLEET_REQUIRE_SYSTEMD";
const SKIP_VAR: &str = "FLEET_SKIP_E2E";

fn on_path(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"])
        .any(|dir| Path::new(dir).join(tool).is_file());
    found
}

fn in_libexec(name: &str) -> bool {
    ["/usr/lib/systemd", "/lib/systemd"]
        .iter()
        .any(|dir| Path::new(dir).join(name).is_file())
}

fn is_root() -> bool {
    // The effective uid is the second field of /proc/self/status's Uid line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|id| id == "0"))
        })
        .unwrap_or(false)
}

/// What is missing for systemd's own programs, or nothing.
fn missing_systemd_tools() -> Vec<String> {
    let mut missing = Vec::new();
    for tool in ["systemctl", "systemd-analyze", "systemd-sysusers", "journalctl"] {
        if !on_path(tool) {
            missing.push(tool.to_owned());
        }
    }
    if !in_libexec("systemd") {
        missing.push("the systemd binary (/usr/lib/systemd/systemd)".to_owned());
    }
    // `systemd --test` refuses root: the checks leave it with setpriv.
    if is_root() && !on_path("setpriv") {
        missing.push("setpriv".to_owned());
    }
    missing
}

/// What is missing for the end-to-end testbed, or nothing.
fn missing_for_testbed() -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (the testbed makes cgroups and mount namespaces)".to_owned());
    }
    missing.extend(missing_systemd_tools());
    if !in_libexec("systemd-journald") {
        missing.push("systemd-journald".to_owned());
    }
    for tool in ["dbus-daemon", "busctl", "unshare", "nsenter"] {
        if !on_path(tool) {
            missing.push(tool.to_owned());
        }
    }
    if !Path::new("/etc/machine-id").is_file() {
        missing.push("/etc/machine-id (systemd-machine-id-setup makes it)".to_owned());
    }
    missing
}

/// Emits the cfgs and a warning that says which tests cargo will report as
/// ignored, and why.
fn probe_systemd_tests(package: &str, probe_file: &str, testbed: bool) {
    println!("cargo::rustc-check-cfg=cfg(fleet_no_systemd_tools)");
    println!("cargo::rustc-check-cfg=cfg(fleet_no_testbed)");
    println!("cargo::rustc-check-cfg=cfg(fleet_no_shellcheck)");
    println!("cargo::rerun-if-env-changed={REQUIRE_VAR}");
    println!("cargo::rerun-if-env-changed={SKIP_VAR}");
    // A build as another user (sudo, su) sees different rights.
    for var in ["USER", "SUDO_USER", "LOGNAME", "PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed={probe_file}");
    if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") {
        return;
    }
    if !on_path("shellcheck") {
        println!("cargo::rustc-cfg=fleet_no_shellcheck");
    }
    let skip = std::env::var(SKIP_VAR).as_deref() == Ok("1");
    let tools = if skip {
        vec![format!("{SKIP_VAR}=1 is set")]
    } else {
        missing_systemd_tools()
    };
    if !tools.is_empty() {
        println!("cargo::rustc-cfg=fleet_no_systemd_tools");
    }
    let bed = if skip {
        tools.clone()
    } else {
        missing_for_testbed()
    };
    if testbed && !bed.is_empty() {
        println!("cargo::rustc-cfg=fleet_no_testbed");
        println!(
            "cargo::warning={package}: the end-to-end tests will be reported as ignored: \
             this machine lacks {}. Install what is missing (see README.md, \
             \"What a machine needs\") and run cargo test as root, or set \
             {REQUIRE_VAR}=1 to make them fail instead.",
            bed.join(", ")
        );
    } else if !tools.is_empty() {
        println!(
            "cargo::warning={package}: the tests that check unit files with systemd \
             will be reported as ignored: this machine lacks {}.",
            tools.join(", ")
        );
    }
}
