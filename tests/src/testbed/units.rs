//! The unit files a board starts with: the shipped experiment units, enabled
//! as on a board, and the testbed's own plumbing (the bus, masks for the host's
//! desktop units).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

use anyhow::Context as _;

/// The shipped template, as the agent's packaging installs it.
pub const TEMPLATE: &str = include_str!("../../../systemd/brain-experiment@.service");
pub const TEMPLATE_NAME: &str = "brain-experiment@.service";
/// The shipped target that enabled instances hang off.
pub const TARGET: &str = include_str!("../../../systemd/brain-experiment.target");
pub const TARGET_NAME: &str = "brain-experiment.target";

/// The board's message bus, started by its systemd like a login session's:
/// dbus.socket listens on `$XDG_RUNTIME_DIR/bus`, dbus.service is the broker.
/// A user manager only connects to its API bus when both of these units run
/// (`manager_dbus_is_running()` in systemd), so a dbus-daemon started beside
/// the manager would never see org.freedesktop.systemd1 appear.
const DBUS_SOCKET: &str = "\
[Unit]
Description=Board message bus socket

[Socket]
ListenStream=%t/bus
";

const DBUS_SERVICE: &str = "\
[Unit]
Description=Board message bus
Requires=dbus.socket

[Service]
Type=notify
NotifyAccess=main
ExecStart=dbus-daemon --session --address=systemd: --nofork --nopidfile --systemd-activation --syslog-only
";

/// Where the host keeps user units whose `.wants/` links would start them on
/// every board (gpg-agent sockets, pipewire, …).
const HOST_USER_UNIT_DIRS: &[&str] = &[
    "/etc/xdg/systemd/user",
    "/etc/systemd/user",
    "/usr/local/share/systemd/user",
    "/usr/share/systemd/user",
    "/usr/local/lib/systemd/user",
    "/usr/lib/systemd/user",
    "/lib/systemd/user",
];

/// Installs the shipped template and target into `unit_dir` and enables the
/// target, exactly as `systemctl --user enable brain-experiment.target` would
/// (its `WantedBy=default.target`), so a fresh manager starts it at boot.
pub fn install_shipped(unit_dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(unit_dir).with_context(|| format!("create {}", unit_dir.display()))?;
    fs::write(unit_dir.join(TEMPLATE_NAME), TEMPLATE)?;
    fs::write(unit_dir.join(TARGET_NAME), TARGET)?;
    let wants = unit_dir.join("default.target.wants");
    fs::create_dir_all(&wants)?;
    symlink(format!("../{TARGET_NAME}"), wants.join(TARGET_NAME))
        .with_context(|| format!("enable {TARGET_NAME} in {}", wants.display()))?;
    Ok(())
}

/// Installs the board's plumbing into `control_dir`, the highest-priority
/// directory of a user manager's search path
/// (`$XDG_CONFIG_HOME/systemd/user.control`), so nothing on the host can
/// override it and the experiment unit directories stay clean.
pub fn install_plumbing(control_dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(control_dir)?;
    fs::write(control_dir.join("dbus.socket"), DBUS_SOCKET)?;
    fs::write(control_dir.join("dbus.service"), DBUS_SERVICE)?;
    for (wants, unit) in [
        ("sockets.target.wants", "dbus.socket"),
        // Started at boot rather than on the first connection, so the manager
        // is on the bus by the time the board is ready.
        ("default.target.wants", "dbus.service"),
    ] {
        let dir = control_dir.join(wants);
        fs::create_dir_all(&dir)?;
        symlink(format!("../{unit}"), dir.join(unit))?;
    }
    for unit in host_wanted_units()? {
        if unit == "dbus.socket" || unit == "dbus.service" {
            continue;
        }
        symlink("/dev/null", control_dir.join(&unit))
            .with_context(|| format!("mask host unit {unit}"))?;
    }
    Ok(())
}

/// Every unit the host's user unit directories pull in through `.wants/`,
/// `.requires/` or `.upholds/` links.
fn host_wanted_units() -> io::Result<BTreeSet<String>> {
    let mut units = BTreeSet::new();
    for dir in HOST_USER_UNIT_DIRS {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.ends_with(".wants")
                || name.ends_with(".requires")
                || name.ends_with(".upholds"))
            {
                continue;
            }
            for link in fs::read_dir(entry.path())?.flatten() {
                units.insert(link.file_name().to_string_lossy().into_owned());
            }
        }
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_template_has_the_defaults_the_agent_relies_on() {
        for line in [
            "Description=Brain experiment %i",
            "StartLimitBurst=3",
            "StartLimitIntervalSec=300",
            "ExecStart=/bin/false",
            "Restart=on-failure",
            "RestartSec=5s",
            "TimeoutStopSec=30s",
            "KillMode=mixed",
            "KillSignal=SIGTERM",
            "StandardOutput=journal",
            "StandardError=journal",
            "SyslogIdentifier=brain-experiment-%i",
            "WantedBy=brain-experiment.target",
        ] {
            assert!(TEMPLATE.lines().any(|l| l == line), "template lacks {line}");
        }
        let unit_section = TEMPLATE.split("\n[Service]\n").next().unwrap();
        assert!(
            unit_section.contains("StartLimitBurst=3"),
            "StartLimit* belong in [Unit]"
        );
    }

    #[test]
    fn shipped_target_is_wanted_by_both_managers_default_targets() {
        assert!(TARGET
            .lines()
            .any(|l| l == "WantedBy=multi-user.target default.target"));
    }

    #[test]
    fn plumbing_masks_host_units_but_keeps_its_bus() {
        let dir = tempfile::tempdir().unwrap();
        install_plumbing(dir.path()).unwrap();
        let socket = dir.path().join("sockets.target.wants/dbus.socket");
        assert_eq!(fs::read_link(socket).unwrap(), Path::new("../dbus.socket"));
        assert!(fs::read_to_string(dir.path().join("dbus.socket"))
            .unwrap()
            .contains("ListenStream=%t/bus"));
        for unit in host_wanted_units().unwrap() {
            if unit.starts_with("dbus.") {
                continue;
            }
            let mask = fs::read_link(dir.path().join(&unit)).unwrap();
            assert_eq!(mask, Path::new("/dev/null"), "{unit}");
        }
    }
}
