//! The controller's configuration file (`controller.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::tls::TlsFiles;
use serde::{Deserialize, Serialize};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7444";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fleet-controller";
pub const DEFAULT_CA: &str = "/etc/fleet/ca.pem";
pub const DEFAULT_CERT: &str = "/etc/fleet/controller.pem";
pub const DEFAULT_KEY: &str = "/etc/fleet/controller.key";
pub const DEFAULT_HEARTBEAT_TIMEOUT_S: u64 = 15;
pub const DEFAULT_NODE_LOST_AFTER_S: u64 = 300;
pub const DEFAULT_TICK_MS: u64 = 1000;
pub const DEFAULT_TELEMETRY_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_SLOTS_PER_NODE: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the controller config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the controller config {path} is invalid; `fleet-controller gen-config` prints a valid one: {report}"
    )]
    Parse {
        path: PathBuf,
        /// toml's report, naming the key where toml does not.
        report: String,
    },
    #[error("the controller config {path} is invalid: {problem}")]
    Invalid { path: PathBuf, problem: String },
}

/// One board the controller knows from its config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node name its agent certificate carries.
    pub name: String,
    /// `host:port` of its agent.
    pub address: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Address of the mTLS gRPC listener for fleetctl and agents.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The sled directory: the queue, nodes, placements and event log.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// `[tls]`: the fleet CA, this process's certificate and key, and the
    /// revocation list, if any; reloaded on SIGHUP.
    #[serde(default = "default_tls", deserialize_with = "tls_or_defaults")]
    pub tls: TlsFiles,
    /// The file this config was read from; SIGHUP reads its `[tls]` again.
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// Boards known from the start; agents may also join at run time.
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    /// A node silent this long is unreachable: nothing new goes there.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_timeout_s: u64,
    /// A node unreachable this long is lost: its experiments are requeued.
    #[serde(default = "default_lost")]
    pub node_lost_after_s: u64,
    /// The scheduler runs at least this often (and whenever poked).
    #[serde(default = "default_tick")]
    pub tick_ms: u64,
    /// Telemetry interval asked of every agent.
    #[serde(default = "default_telemetry")]
    pub telemetry_interval_ms: u64,
    /// Experiments at once on one node.
    #[serde(default = "default_slots")]
    pub slots_per_node: u32,
    /// Plain-HTTP Prometheus metrics listener; off when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN.parse().expect("valid default")
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_tls() -> TlsFiles {
    TlsFiles::new(DEFAULT_CA, DEFAULT_CERT, DEFAULT_KEY)
}
fn tls_or_defaults<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TlsFiles, D::Error> {
    TlsFiles::deserialize_or(d, default_tls())
}
fn default_heartbeat() -> u64 {
    DEFAULT_HEARTBEAT_TIMEOUT_S
}
fn default_lost() -> u64 {
    DEFAULT_NODE_LOST_AFTER_S
}
fn default_tick() -> u64 {
    DEFAULT_TICK_MS
}
fn default_telemetry() -> u64 {
    DEFAULT_TELEMETRY_INTERVAL_MS
}
fn default_slots() -> u32 {
    DEFAULT_SLOTS_PER_NODE
}

impl ControllerConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::parse(path, &text)?;
        cfg.file = Some(path.to_owned());
        Ok(cfg)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: ControllerConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            report: fleet_proto::toml_error::report(text, &e),
        })?;
        let invalid = |problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            problem,
        };
        cfg.tls.validate().map_err(|e| invalid(e.to_string()))?;
        for n in &cfg.nodes {
            fleet_proto::identity::validate_node_name(&n.name)
                .map_err(|e| invalid(format!("nodes: {e}")))?;
        }
        if cfg.heartbeat_timeout_s == 0 || cfg.node_lost_after_s < cfg.heartbeat_timeout_s {
            return Err(invalid(
                "heartbeat_timeout_s must be > 0 and node_lost_after_s at least as long".into(),
            ));
        }
        if cfg.slots_per_node == 0 {
            return Err(invalid("slots_per_node must be at least 1".into()));
        }
        Ok(cfg)
    }

    pub fn example() -> Self {
        toml::from_str("").expect("the defaults parse")
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_s)
    }
    pub fn node_lost_after(&self) -> Duration {
        Duration::from_secs(self.node_lost_after_s)
    }
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms.max(10))
    }
    pub fn telemetry_interval(&self) -> Duration {
        Duration::from_millis(self.telemetry_interval_ms.max(50))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_key_is_named() {
        let e = ControllerConfig::parse(Path::new("c.toml"), "[tls]\nca = \"/a\"\nca = \"/b\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.toml") && e.contains("duplicate key `ca`") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn defaults_strictness_and_shipped_file() {
        let c = ControllerConfig::example();
        assert_eq!(c.heartbeat_timeout_s, 15);
        let e = ControllerConfig::parse(Path::new("c.toml"), "listen_port = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml"), "{e}");
        let e = ControllerConfig::parse(
            Path::new("c.toml"),
            "[[nodes]]\nname = \"../x\"\naddress = \"a:1\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nodes"), "{e}");
        assert_eq!(
            c.tls,
            TlsFiles::new(DEFAULT_CA, DEFAULT_CERT, DEFAULT_KEY),
            "the controller's own files"
        );
        let c =
            ControllerConfig::parse(Path::new("c.toml"), "[tls]\ncrl = \"/etc/fleet/crl.pem\"\n")
                .unwrap();
        assert_eq!(
            c.tls,
            TlsFiles::new(DEFAULT_CA, DEFAULT_CERT, DEFAULT_KEY).with_crl("/etc/fleet/crl.pem")
        );
        let e = ControllerConfig::parse(Path::new("c.toml"), "[tls]\nca = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml") && e.contains("tls.ca is empty"), "{e}");
        let text = toml::to_string(&ControllerConfig::example()).unwrap();
        let back = ControllerConfig::parse(Path::new("gen"), &text).unwrap();
        assert_eq!(back.tls, ControllerConfig::example().tls);
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/controller.toml");
        ControllerConfig::from_file(&shipped).unwrap();
    }
}
