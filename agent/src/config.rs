//! The agent's configuration file (`agent.toml`).
//!
//! Every key is documented here; `fleet-agent gen-config` prints the
//! effective defaults, and a test parses every file shipped under `deploy/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::systemd::Bus;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fleet-agent";
pub const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";
pub const DEFAULT_RUNTIME_UNIT_DIR: &str = "/run/systemd/system";
pub const DEFAULT_JOURNALCTL: &str = "/usr/bin/journalctl";
pub const DEFAULT_KMSG: &str = "/dev/kmsg";
pub const DEFAULT_TEMPLATE: &str = "brain-experiment";
pub const DEFAULT_CA: &str = "/etc/fleet/ca.pem";
pub const DEFAULT_CERT: &str = "/etc/fleet/agent.pem";
pub const DEFAULT_KEY: &str = "/etc/fleet/agent.key";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the agent config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent config {path} is invalid; `fleet-agent gen-config` prints a valid one")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("the agent config {path} is invalid: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This board's node name; must match the agent certificate's
    /// `spiffe://<fleet>/agent/<node>`.
    pub node: String,
    /// Address of the mTLS gRPC listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `system` on a board; `user` for a user manager (tests, dev fleet).
    #[serde(default = "default_systemd")]
    pub systemd: Bus,
    /// The agent's store and experiments' config files.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Unit directory for drop-ins that must survive a reboot (autostart).
    #[serde(default = "default_unit_dir")]
    pub unit_dir: PathBuf,
    /// Unit directory on a tmpfs, for every other drop-in.
    #[serde(default = "default_runtime_unit_dir")]
    pub runtime_unit_dir: PathBuf,
    #[serde(default = "default_journalctl")]
    pub journalctl: PathBuf,
    /// The kernel log, read to attribute OOM kills on cgroup v1.
    #[serde(default = "default_kmsg")]
    pub kmsg: PathBuf,
    /// Plain-HTTP Prometheus metrics listener; off when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Where the board's sysfs, identity files, nvpmodel and jetson_clocks are.
    #[serde(default)]
    pub hardware: crate::hw::HwConfig,
    /// The local thermal guard.
    #[serde(default)]
    pub guard: crate::guard::GuardConfig,
    /// How often the hardware is sampled.
    #[serde(default)]
    pub sampling: crate::node::SamplingConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The fleet CA that signs every certificate.
    #[serde(default = "default_ca")]
    pub ca: PathBuf,
    #[serde(default = "default_cert")]
    pub cert: PathBuf,
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// Revocation list from `fleetctl pki revoke`; reloaded on SIGHUP.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca: default_ca(),
            cert: default_cert(),
            key: default_key(),
            crl: None,
        }
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("valid default")
}
fn default_systemd() -> Bus {
    Bus::System
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_unit_dir() -> PathBuf {
    DEFAULT_UNIT_DIR.into()
}
fn default_runtime_unit_dir() -> PathBuf {
    DEFAULT_RUNTIME_UNIT_DIR.into()
}
fn default_journalctl() -> PathBuf {
    DEFAULT_JOURNALCTL.into()
}
fn default_kmsg() -> PathBuf {
    DEFAULT_KMSG.into()
}
fn default_ca() -> PathBuf {
    DEFAULT_CA.into()
}
fn default_cert() -> PathBuf {
    DEFAULT_CERT.into()
}
fn default_key() -> PathBuf {
    DEFAULT_KEY.into()
}

impl AgentConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str(path, &text)
    }

    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if let Err(e) = cfg.guard.validate() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problem: format!("guard: {e}"),
            });
        }
        if let Err(e) = fleet_proto::identity::validate_node_name(&cfg.node) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                problem: format!("node: {e}"),
            });
        }
        Ok(cfg)
    }

    /// An example with every default, for `gen-config`.
    pub fn example() -> Self {
        toml::from_str("node = \"jetson-01\"").expect("the example parses")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = AgentConfig::from_str(Path::new("a.toml"), "node = \"jetson-01\"").unwrap();
        assert_eq!(c.systemd, Bus::System);
        assert_eq!(c.listen.port(), 7443);
        let e = AgentConfig::from_str(Path::new("a.toml"), "node = \"j\"\nlisten_port = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.toml"), "{e}");
        let e = AgentConfig::from_str(Path::new("a.toml"), "node = \"../x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("node"), "{e}");
    }

    #[test]
    fn example_round_trips() {
        let text = toml::to_string(&AgentConfig::example()).unwrap();
        AgentConfig::from_str(Path::new("gen"), &text).unwrap();
    }

    #[test]
    fn shipped_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = entry.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("agent") && name.ends_with(".toml") {
                AgentConfig::from_file(&p).unwrap();
                n += 1;
            }
        }
        assert!(n > 0, "no agent*.toml shipped under deploy/");
    }
}
