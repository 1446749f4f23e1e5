//! The agent's configuration file (`agent.toml`).
//!
//! Every key is documented here; `fleet-agent gen-config` prints the
//! effective defaults, and a test parses every file shipped under `deploy/`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::tls::TlsFiles;
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
/// The controller's port when `controller.address` names none.
pub const DEFAULT_CONTROLLER_PORT: u16 = 7444;
pub const DEFAULT_RETRY_MAX_S: u64 = 30;
/// Names the controller to join; overrides `controller.address`. The
/// installer writes it to `/etc/fleet/agent.env`, which the unit loads.
pub const ENV_CONTROLLER: &str = "FLEET_CONTROLLER";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the agent config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the agent config {path} is invalid; `fleet-agent gen-config` prints a valid one: {report}"
    )]
    Parse {
        path: PathBuf,
        /// toml's report, naming the key where toml does not.
        report: String,
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
    /// `[tls]`: the fleet CA, this process's certificate and key, and the
    /// revocation list, if any; reloaded on SIGHUP.
    #[serde(default = "default_tls", deserialize_with = "tls_or_defaults")]
    pub tls: TlsFiles,
    /// The file this config was read from; SIGHUP reads its `[tls]` again.
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// Where the board's sysfs, identity files, nvpmodel and jetson_clocks are.
    #[serde(default)]
    pub hardware: crate::hw::HwConfig,
    /// The local thermal guard.
    #[serde(default)]
    pub guard: crate::guard::GuardConfig,
    /// How often the hardware is sampled.
    #[serde(default)]
    pub sampling: crate::node::SamplingConfig,
    /// The controller this board joins when it starts.
    #[serde(default)]
    pub controller: ControllerConfig,
}

/// `[controller]`: the controller this board joins. Without an address
/// (here or in `FLEET_CONTROLLER`) the agent joins nothing and waits for a
/// controller that has it in its own config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// `host:port` (or `https://host:port`) of the controller; the port
    /// defaults to 7444.
    pub address: Option<String>,
    /// `host[:port]` the controller dials this board at. Default: the
    /// `listen` address when it names one; with `listen` on 0.0.0.0 (or
    /// `::`), this board's address on the route to the controller. The port
    /// defaults to the bound `listen` port.
    pub advertise: Option<String>,
    /// The longest wait between two join attempts (seconds).
    pub retry_max_s: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            address: None,
            advertise: None,
            retry_max_s: DEFAULT_RETRY_MAX_S,
        }
    }
}

/// A `host[:port]` as written in the config: a DNS name or an IP address
/// (IPv6 in brackets when a port follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: Option<u16>,
}

impl HostPort {
    /// Parses `host`, `host:port`, `[v6]:port`, a bare IPv6 address, and
    /// the same after `https://` (with at most a trailing `/`). The error
    /// says what is wrong, for a message that names the key.
    pub fn parse(text: &str) -> Result<HostPort, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("it is empty".into());
        }
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "fleet speaks only gRPC over mutual TLS, not {scheme}://; write host:port (https:// is accepted too)"
                ))
            }
            None => text,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err("give only a host and a port, no path, query or user".into());
        }
        let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or("an opening [ without its closing ]")?;
            host.parse::<Ipv6Addr>()
                .map_err(|_| format!("[{host}] is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("only :port may follow ]")?),
            };
            (host.to_owned(), port)
        } else if rest.matches(':').count() > 1 {
            rest.parse::<Ipv6Addr>()
                .map_err(|_| format!("{rest} is not an IPv6 address; write [address]:port"))?;
            (rest.to_owned(), None)
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            }
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b':'));
        if !host_ok {
            return Err(format!(
                "{host:?} is not a host name or IP address (letters, digits, '.', '-', '_')"
            ));
        }
        let port = port
            .map(|p| match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("port {p:?} is not a number from 1 to 65535")),
            })
            .transpose()?;
        Ok(HostPort { host, port })
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host:port` with `port` when the text named none.
    pub fn with_default_port(&self, port: u16) -> String {
        HostPort {
            host: self.host.clone(),
            port: Some(self.port.unwrap_or(port)),
        }
        .to_string()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Whom to join, and how: `controller.address` or `FLEET_CONTROLLER`, with
/// the `[controller]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSettings {
    /// `host:port` of the controller.
    pub controller: String,
    /// Where the address came from: `controller.address` or
    /// `FLEET_CONTROLLER`.
    pub source: &'static str,
    /// `controller.advertise`, when given.
    pub advertise: Option<HostPort>,
    /// The longest wait between two attempts.
    pub retry_max: Duration,
}

fn parse_controller(text: &str) -> Result<String, String> {
    Ok(HostPort::parse(text)?.with_default_port(DEFAULT_CONTROLLER_PORT))
}

fn parse_advertise(text: &str) -> Result<HostPort, String> {
    let a = HostPort::parse(text)?;
    if a.ip().is_some_and(|ip| ip.is_unspecified()) {
        return Err(format!(
            "{} is not an address the controller can dial; give this board's address or name",
            a.host
        ));
    }
    Ok(a)
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
fn default_tls() -> TlsFiles {
    TlsFiles::new(DEFAULT_CA, DEFAULT_CERT, DEFAULT_KEY)
}
fn tls_or_defaults<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TlsFiles, D::Error> {
    TlsFiles::deserialize_or(d, default_tls())
}

impl AgentConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg = Self::from_str(path, &text)?;
        cfg.file = Some(path.to_owned());
        Ok(cfg)
    }

    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            report: fleet_proto::toml_error::report(text, &e),
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
        let invalid = |problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            problem,
        };
        cfg.tls.validate().map_err(|e| invalid(e.to_string()))?;
        let c = &cfg.controller;
        if let Some(a) = &c.address {
            parse_controller(a).map_err(|e| {
                invalid(format!(
                    "controller.address = {a:?}: {e}; write it as \"host:port\", e.g. \"lab-server.example:{DEFAULT_CONTROLLER_PORT}\", or leave it out to join no controller"
                ))
            })?;
        }
        if let Some(a) = &c.advertise {
            parse_advertise(a).map_err(|e| {
                invalid(format!(
                    "controller.advertise = {a:?}: {e}; write it as \"host:port\" (this board's address as the controller reaches it), or leave it out to use listen's"
                ))
            })?;
        }
        if !(1..=3600).contains(&c.retry_max_s) {
            return Err(invalid(format!(
                "controller.retry_max_s = {}: give 1 to 3600 seconds",
                c.retry_max_s
            )));
        }
        Ok(cfg)
    }

    /// Whom the agent joins at start: `FLEET_CONTROLLER` (`env_controller`,
    /// when set and not empty) over `controller.address`; `None` joins
    /// nothing. The config's own keys were checked when it was read, so only
    /// the environment's value can be refused here.
    pub fn join_settings(
        &self,
        env_controller: Option<&str>,
    ) -> Result<Option<JoinSettings>, String> {
        let (controller, source) = match env_controller.filter(|v| !v.trim().is_empty()) {
            Some(v) => (
                parse_controller(v).map_err(|e| {
                    format!(
                        "{ENV_CONTROLLER}={v:?}: {e}; write it as host:port, e.g. {ENV_CONTROLLER}=lab-server.example:{DEFAULT_CONTROLLER_PORT} (under systemd it comes from /etc/fleet/agent.env)"
                    )
                })?,
                ENV_CONTROLLER,
            ),
            None => match &self.controller.address {
                Some(a) => (
                    parse_controller(a).map_err(|e| format!("controller.address: {e}"))?,
                    "controller.address",
                ),
                None => return Ok(None),
            },
        };
        let advertise = self
            .controller
            .advertise
            .as_deref()
            .map(parse_advertise)
            .transpose()
            .map_err(|e| format!("controller.advertise: {e}"))?;
        Ok(Some(JoinSettings {
            controller,
            source,
            advertise,
            retry_max: Duration::from_secs(self.controller.retry_max_s),
        }))
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

    fn parse(text: &str) -> Result<AgentConfig, String> {
        AgentConfig::from_str(Path::new("a.toml"), &format!("node = \"j\"\n{text}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_duplicate_key_is_named() {
        let e = parse("listen = \"0.0.0.0:7443\"\nlisten = \"0.0.0.0:7444\"\n").unwrap_err();
        assert!(
            e.contains("a.toml") && e.contains("duplicate key `listen`") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn no_controller_joins_nothing() {
        let c = parse("").unwrap();
        assert_eq!(c.controller.retry_max_s, DEFAULT_RETRY_MAX_S);
        assert_eq!(c.join_settings(None).unwrap(), None);
        assert_eq!(c.join_settings(Some("")).unwrap(), None);
    }

    #[test]
    fn controller_addresses() {
        for (text, want) in [
            ("ctl.lab:7000", "ctl.lab:7000"),
            ("ctl.lab", "ctl.lab:7444"),
            ("https://ctl.lab:7444/", "ctl.lab:7444"),
            ("HTTPS://10.0.0.5", "10.0.0.5:7444"),
            ("[fd00::1]:9000", "[fd00::1]:9000"),
            ("fd00::1", "[fd00::1]:7444"),
            ("[::1]", "[::1]:7444"),
        ] {
            let c = parse(&format!("[controller]\naddress = {text:?}\n")).unwrap();
            let s = c.join_settings(None).unwrap().unwrap();
            assert_eq!(s.controller, want, "{text}");
            assert_eq!(s.source, "controller.address");
            assert_eq!(s.retry_max, Duration::from_secs(30));
        }
        for (text, says) in [
            ("http://ctl.lab:7444", "not http://"),
            ("ctl.lab:0", "port \"0\""),
            ("ctl.lab:http", "port \"http\""),
            ("ctl.lab:7444/api", "no path"),
            ("", "empty"),
            ("ctl lab", "not a host name"),
            ("[fd00::1:7444", "closing ]"),
            ("fd00::1::2:7444", "IPv6"),
        ] {
            let e = parse(&format!("[controller]\naddress = {text:?}\n")).unwrap_err();
            assert!(
                e.contains("controller.address") && e.contains(says),
                "{text}: {e}"
            );
            assert!(e.contains("host:port"), "{e}");
        }
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let c = parse("[controller]\naddress = \"a.lab:1\"\nretry_max_s = 5\n").unwrap();
        let s = c.join_settings(Some("https://b.lab:2")).unwrap().unwrap();
        assert_eq!(s.controller, "b.lab:2");
        assert_eq!(s.source, ENV_CONTROLLER);
        assert_eq!(s.retry_max, Duration::from_secs(5));
        let e = c.join_settings(Some("b.lab:x")).unwrap_err();
        assert!(
            e.contains("FLEET_CONTROLLER=\"b.lab:x\"") && e.contains("agent.env"),
            "{e}"
        );
        // Without a file key, the environment alone joins.
        let c = parse("").unwrap();
        let s = c.join_settings(Some("c.lab")).unwrap().unwrap();
        assert_eq!(s.controller, "c.lab:7444");
    }

    #[test]
    fn advertise_and_retry_are_checked() {
        let c = parse("[controller]\naddress = \"c:1\"\nadvertise = \"jetson-03.lab\"\n").unwrap();
        let s = c.join_settings(None).unwrap().unwrap();
        assert_eq!(
            s.advertise,
            Some(HostPort {
                host: "jetson-03.lab".into(),
                port: None
            })
        );
        for bad in ["0.0.0.0:7443", "[::]:7443", "a b"] {
            let e = parse(&format!("[controller]\nadvertise = {bad:?}\n")).unwrap_err();
            assert!(e.contains("controller.advertise"), "{e}");
        }
        let e = parse("[controller]\nadvertise = \"0.0.0.0\"\n").unwrap_err();
        assert!(e.contains("not an address the controller can dial"), "{e}");
        let e = parse("[controller]\nretry_max_s = 0\n").unwrap_err();
        assert!(e.contains("controller.retry_max_s"), "{e}");
        let e = parse("[controller]\nadress = \"c:1\"\n").unwrap_err();
        assert!(e.contains("a.toml"), "{e}");
    }

    #[test]
    fn tls_keys_and_defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.tls,
            TlsFiles::new(DEFAULT_CA, DEFAULT_CERT, DEFAULT_KEY),
            "the agent's own files"
        );
        let c = parse("[tls]\nkey = \"/k\"\ncrl = \"/etc/fleet/crl.pem\"\n").unwrap();
        assert_eq!(
            c.tls,
            TlsFiles::new(DEFAULT_CA, DEFAULT_CERT, "/k").with_crl("/etc/fleet/crl.pem")
        );
        let e = parse("[tls]\ncert = \"\"\n").unwrap_err();
        assert!(
            e.contains("a.toml") && e.contains("tls.cert is empty") && e.contains("leave cert out"),
            "{e}"
        );
        let e = parse("[tls]\nkeyfile = \"/k\"\n").unwrap_err();
        assert!(e.contains("a.toml"), "{e}");
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
