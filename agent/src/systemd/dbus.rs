//! zbus proxies for the parts of `org.freedesktop.systemd1` the agent uses.
//!
//! Only method calls and signals: the agent never runs `systemctl`.

use zbus::proxy;
use zbus::zvariant::OwnedObjectPath;

pub const DESTINATION: &str = "org.freedesktop.systemd1";
pub const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
pub const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";
pub const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
pub const SERVICE_INTERFACE: &str = "org.freedesktop.systemd1.Service";

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
pub trait Manager {
    fn subscribe(&self) -> zbus::Result<()>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    #[allow(clippy::type_complexity)]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<
        Vec<(
            String,
            String,
            String,
            String,
            String,
            String,
            OwnedObjectPath,
            u32,
            String,
            OwnedObjectPath,
        )>,
    >;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;

    /// `running`, `degraded`, `stopping` (shutting down), ...: read afresh
    /// each time, never from a cache.
    #[zbus(property(emits_changed_signal = "false"))]
    fn system_state(&self) -> zbus::Result<String>;

    /// When the manager started (µs since the epoch): the board's boot, for a
    /// board's own manager.
    #[zbus(property(emits_changed_signal = "const"))]
    fn userspace_timestamp(&self) -> zbus::Result<u64>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
pub trait Unit {
    /// Adds a reference held by this bus connection: systemd does not collect
    /// a referenced unit when it goes inactive, so its exit status stays
    /// readable. The reference ends with the connection.
    #[zbus(name = "Ref")]
    fn add_ref(&self) -> zbus::Result<()>;
    #[zbus(name = "Unref")]
    fn remove_ref(&self) -> zbus::Result<()>;
}

/// Escapes a unit name into its D-Bus object path label the way systemd does
/// (`bus_label_escape`): every byte outside `[A-Za-z0-9]`, and a leading digit,
/// becomes `_xx` in lowercase hex.
pub fn unit_path(unit: &str) -> String {
    let mut out = String::with_capacity(UNIT_PATH_PREFIX.len() + unit.len() * 2);
    out.push_str(UNIT_PATH_PREFIX);
    for (i, b) in unit.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (b.is_ascii_digit() && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The inverse of [`unit_path`]; `None` for a path outside the unit namespace
/// or with a malformed escape.
pub fn unit_from_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?;
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = label.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_round_trip_like_systemd() {
        // Path as printed by `busctl --user tree org.freedesktop.systemd1`.
        assert_eq!(
            unit_path("brain-experiment@amnesiac-001.service"),
            "/org/freedesktop/systemd1/unit/brain_2dexperiment_40amnesiac_2d001_2eservice"
        );
        assert_eq!(
            unit_path("1x.service"),
            "/org/freedesktop/systemd1/unit/_31x_2eservice"
        );
        for name in [
            "brain-experiment@a_b-9.service",
            "dbus.service",
            "1x.service",
        ] {
            assert_eq!(unit_from_path(&unit_path(name)).as_deref(), Some(name));
        }
        assert_eq!(unit_from_path("/org/freedesktop/systemd1/job/1"), None);
        assert_eq!(unit_from_path("/org/freedesktop/systemd1/unit/a_zz"), None);
    }
}
