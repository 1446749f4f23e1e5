//! Names with a fixed alphabet: experiment ids, node names, labels, env var
//! names, config file names and power modes.

use std::fmt;
use std::str::FromStr;

use super::error::InvalidValue;

/// Environment variables fleet sets for every experiment. Names starting with
/// this prefix are refused in a spec's `env`.
pub const RESERVED_ENV_PREFIX: &str = "FLEET_";
/// Path of the experiment's config file on the board; absent when it has none.
pub const ENV_CONFIG: &str = "FLEET_CONFIG";
/// The experiment's id.
pub const ENV_EXPERIMENT_ID: &str = "FLEET_EXPERIMENT_ID";
/// The placement epoch the experiment was started with.
pub const ENV_EPOCH: &str = "FLEET_EPOCH";

/// Variables that systemd substitutes in the command when written `${NAME}`.
/// They are the ones fleet sets itself, so their values are known to be
/// safe; every other `$` reaches the program unchanged.
pub const SUBSTITUTED_ENV: &[&str] = &[ENV_CONFIG, ENV_EXPERIMENT_ID, ENV_EPOCH];

/// Variables systemd sets for a service (sd_notify, socket activation,
/// watchdog, directories, exit status, triggers). A spec may not set them:
/// the experiment would lie to itself or to systemd.
pub const SYSTEMD_ENV: &[&str] = &[
    "CACHE_DIRECTORY",
    "CONFIGURATION_DIRECTORY",
    "CREDENTIALS_DIRECTORY",
    "EXIT_CODE",
    "EXIT_STATUS",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "LISTEN_FDNAMES",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LOGS_DIRECTORY",
    "MAINPID",
    "MANAGERPID",
    "MONITOR_EXIT_CODE",
    "MONITOR_EXIT_STATUS",
    "MONITOR_INVOCATION_ID",
    "MONITOR_SERVICE_RESULT",
    "MONITOR_UNIT",
    "NOTIFY_SOCKET",
    "PIDFILE",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "RUNTIME_DIRECTORY",
    "SERVICE_RESULT",
    "STATE_DIRECTORY",
    "SYSTEMD_EXEC_PID",
    "TRIGGER_PATH",
    "TRIGGER_TIMER_MONOTONIC_USEC",
    "TRIGGER_TIMER_REALTIME_USEC",
    "TRIGGER_UNIT",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

/// Longest experiment id, node name, label key and label value.
pub const MAX_NAME_LEN: usize = 63;
/// Longest environment variable name.
pub const MAX_ENV_NAME_LEN: usize = 128;
/// Longest config file name.
pub const MAX_CONFIG_NAME_LEN: usize = 128;

/// Implements the string plumbing of a validated name: access, Display,
/// FromStr, TryFrom<String>, serde as a string (validated on the way in).
macro_rules! string_name {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidValue;
            fn try_from(s: &str) -> Result<Self, InvalidValue> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(name: $name) -> String {
                name.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: safe in a unit name, a path component, a
/// journal field and a URI, with no escaping anywhere.
fn is_slug(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=MAX_NAME_LEN).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

const SLUG_FIX: &str =
    "use lowercase letters, digits, '-' and '_' (at most 63), starting with a letter or digit";

/// An experiment's id, `[a-z0-9][a-z0-9_-]{0,62}`; its unit is
/// `brain-experiment@<id>.service`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExperimentId(String);

impl ExperimentId {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        if is_slug(&s) {
            Ok(Self(s))
        } else {
            Err(InvalidValue::invalid("experiment id", &s, SLUG_FIX))
        }
    }
}
string_name!(ExperimentId);

/// A board's name, the same alphabet as an [`ExperimentId`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

impl NodeName {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        if is_slug(&s) {
            Ok(Self(s))
        } else {
            Err(InvalidValue::invalid("node name", &s, SLUG_FIX))
        }
    }
}
string_name!(NodeName);

/// A node label's key, `[a-z0-9][a-z0-9._/-]{0,62}` (room for `gpu.count`
/// or `lab/room`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelKey(String);

impl LabelKey {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        let b = s.as_bytes();
        let ok = (1..=MAX_NAME_LEN).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|&c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'.' | b'_' | b'/' | b'-')
            });
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidValue::invalid(
                "label key",
                &s,
                "use lowercase letters, digits, '.', '_', '-' and '/' (at most 63), \
                 starting with a letter or digit",
            ))
        }
    }
}
string_name!(LabelKey);

/// A node label's value, `[A-Za-z0-9._-]{0,63}`; may be empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelValue(String);

impl LabelValue {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        let ok = s.len() <= MAX_NAME_LEN
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidValue::invalid(
                "label value",
                &s,
                "use letters, digits, '.', '_' and '-' (at most 63), or nothing",
            ))
        }
    }
}
string_name!(LabelValue);

/// An environment variable name an experiment may set:
/// `[A-Za-z_][A-Za-z0-9_]*`, at most 128 characters, not starting with
/// `FLEET_` and not one of [`SYSTEMD_ENV`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvName(String);

impl EnvName {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        let b = s.as_bytes();
        let ok = (1..=MAX_ENV_NAME_LEN).contains(&b.len())
            && (b[0].is_ascii_alphabetic() || b[0] == b'_')
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_');
        if !ok {
            return Err(InvalidValue::invalid(
                "environment variable name",
                &s,
                "use letters, digits and '_' (at most 128), not starting with a digit",
            ));
        }
        if s.starts_with(RESERVED_ENV_PREFIX) {
            return Err(InvalidValue::new(
                "environment variable name",
                &s,
                "is reserved",
                format!(
                    "fleet sets the {RESERVED_ENV_PREFIX}* variables itself ({}); choose another name",
                    SUBSTITUTED_ENV.join(", ")
                ),
            ));
        }
        if SYSTEMD_ENV.contains(&s.as_str()) {
            return Err(InvalidValue::new(
                "environment variable name",
                &s,
                "is reserved",
                "systemd sets it for the service; choose another name",
            ));
        }
        Ok(Self(s))
    }
}
string_name!(EnvName);

/// The file name an experiment's config is stored under on the board:
/// `[A-Za-z0-9._-]{1,128}`, not starting with '.' (so never `.`, `..` or a
/// hidden file).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigName(String);

impl ConfigName {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        let ok = (1..=MAX_CONFIG_NAME_LEN).contains(&s.len())
            && !s.starts_with('.')
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidValue::invalid(
                "config file name",
                &s,
                "use letters, digits, '.', '_' and '-' (at most 128), not starting with '.'",
            ))
        }
    }
}
string_name!(ConfigName);

/// An nvpmodel power mode, by id (`2`) or by name (`MAXN`, `15W`,
/// `MODE_30W`). Whether the board has it is the scheduler's question.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PowerMode(PowerModeRepr);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PowerModeRepr {
    Id(u32),
    Name(String),
}

impl PowerMode {
    /// Digits only is an id; otherwise a name of `[A-Za-z0-9_-]{1,63}`, as
    /// nvpmodel.conf writes them.
    pub fn new(s: &str) -> Result<Self, InvalidValue> {
        let fix = "give the nvpmodel mode id (e.g. 0) or its name \
                   (letters, digits, '_' and '-', at most 63, e.g. MAXN)";
        if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
            return s
                .parse()
                .map(|id| Self(PowerModeRepr::Id(id)))
                .map_err(|_| InvalidValue::invalid("power mode", s, fix));
        }
        let ok = (1..=MAX_NAME_LEN).contains(&s.len())
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
        if ok {
            Ok(Self(PowerModeRepr::Name(s.to_owned())))
        } else {
            Err(InvalidValue::invalid("power mode", s, fix))
        }
    }

    pub fn id(&self) -> Option<u32> {
        match &self.0 {
            PowerModeRepr::Id(id) => Some(*id),
            PowerModeRepr::Name(_) => None,
        }
    }

    pub fn name(&self) -> Option<&str> {
        match &self.0 {
            PowerModeRepr::Id(_) => None,
            PowerModeRepr::Name(name) => Some(name),
        }
    }
}

impl fmt::Display for PowerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            PowerModeRepr::Id(id) => write!(f, "{id}"),
            PowerModeRepr::Name(name) => f.write_str(name),
        }
    }
}

impl FromStr for PowerMode {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experiment_ids_follow_the_slug_rule() {
        for ok in ["a", "0", "amnesiac-001", "run_7", "a-", &"a".repeat(63)] {
            assert_eq!(ExperimentId::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "aB",
            "a.b",
            "a/b",
            "../x",
            "a b",
            "é",
            "a\n",
            &"a".repeat(64),
        ] {
            assert!(ExperimentId::new(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_bad_experiment_id_says_what_to_use() {
        assert_eq!(
            ExperimentId::new("../x").unwrap_err().to_string(),
            "experiment id \"../x\" is invalid: use lowercase letters, digits, '-' and '_' \
             (at most 63), starting with a letter or digit"
        );
    }

    #[test]
    fn node_names_follow_the_slug_rule() {
        assert!(NodeName::new("jetson-03").is_ok());
        let err = NodeName::new("Jetson-03").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("node name \"Jetson-03\" is invalid"));
    }

    #[test]
    fn label_keys_and_values() {
        for ok in ["model", "gpu.count", "lab/room", "a-b_c", "0"] {
            assert!(LabelKey::new(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "Model", ".a", "/a", "a b", "a=b", &"a".repeat(64)] {
            assert!(LabelKey::new(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "agx-orin", "AGX_Orin.64", &"v".repeat(63)] {
            assert!(LabelValue::new(ok).is_ok(), "{ok:?}");
        }
        for bad in ["a b", "a/b", "é", &"v".repeat(64)] {
            assert!(LabelValue::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_names_follow_posix_and_skip_reserved_ones() {
        for ok in [
            "MODEL",
            "_x",
            "a1",
            "PATH",
            "HOME",
            "CUDA_VISIBLE_DEVICES",
            "FLEET",
        ] {
            assert!(EnvName::new(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "É", &"A".repeat(129)] {
            assert!(EnvName::new(bad).is_err(), "{bad:?}");
        }
        for reserved in [
            "FLEET_CONFIG",
            "FLEET_EPOCH",
            "FLEET_ANYTHING",
            "NOTIFY_SOCKET",
        ] {
            let err = EnvName::new(reserved).unwrap_err();
            assert!(err.to_string().contains("is reserved"), "{err}");
        }
        assert_eq!(
            EnvName::new("FLEET_CONFIG").unwrap_err().to_string(),
            "environment variable name \"FLEET_CONFIG\" is reserved: fleet sets the FLEET_* \
             variables itself (FLEET_CONFIG, FLEET_EXPERIMENT_ID, FLEET_EPOCH); choose another name"
        );
        assert_eq!(
            EnvName::new("WATCHDOG_USEC").unwrap_err().to_string(),
            "environment variable name \"WATCHDOG_USEC\" is reserved: systemd sets it for the \
             service; choose another name"
        );
    }

    #[test]
    fn systemd_names_are_sorted_so_a_reader_can_find_one() {
        assert!(SYSTEMD_ENV.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn config_names_are_plain_file_names() {
        for ok in ["amnesiac_001.json", "c", "a-b.c.d", "0.yaml"] {
            assert!(ConfigName::new(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "a b",
            "a\\b",
            &"c".repeat(129),
        ] {
            assert!(ConfigName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn power_modes_by_id_or_name() {
        assert_eq!(PowerMode::new("0").unwrap().id(), Some(0));
        assert_eq!(PowerMode::new("2").unwrap().to_string(), "2");
        for name in ["MAXN", "MAXN_SUPER", "15W", "MODE_30W", "10w-low"] {
            let mode = PowerMode::new(name).unwrap();
            assert_eq!(mode.name(), Some(name));
            assert_eq!(mode.id(), None);
            assert_eq!(mode.to_string(), name);
        }
        for bad in ["", "MAX N", "99999999999", "a;b", &"M".repeat(64)] {
            assert!(PowerMode::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_round_trip_through_serde_and_refuse_bad_input() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Record {
            id: ExperimentId,
        }
        let record: Record = toml::from_str(r#"id = "amnesiac-001""#).unwrap();
        assert_eq!(record.id.as_str(), "amnesiac-001");
        assert_eq!(
            toml::to_string(&record).unwrap().trim(),
            r#"id = "amnesiac-001""#
        );
        let err = toml::from_str::<Record>(r#"id = "../x""#).err().unwrap();
        assert!(
            err.message().contains("experiment id \"../x\" is invalid"),
            "{err}"
        );
    }
}
