//! fleetctl's configuration: the file of named contexts, `FLEET_*`
//! environment variables and global flags, merged into [`Settings`].
//!
//! Precedence, highest first: flags, environment, the selected context of
//! the config file, defaults. The file (`$XDG_CONFIG_HOME/fleet/fleetctl.toml`,
//! else `~/.config/fleet/fleetctl.toml`) looks like:
//!
//! ```toml
//! current_context = "dev"
//!
//! [contexts.dev]
//! controller = "lab-server:7400"
//! ca = "~/.config/fleet/ca.pem"
//! cert = "~/.config/fleet/user-ada.pem"
//! key = "~/.config/fleet/user-ada.key"
//!
//! [contexts.bench]
//! agent = "jetson-01.lab:7443"
//! node = "jetson-01"
//! ca = "ca.pem"                  # relative paths are relative to this file
//! cert = "user-ada.pem"
//! key = "user-ada.key"
//! ```
//!
//! Where a command goes is decided by the highest layer that names a
//! controller or an agent; one layer naming both is an error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::output::OutputFormat;

/// The config file under the user's configuration directory.
pub const DEFAULT_CONFIG_FILE: &str = "fleet/fleetctl.toml";
/// The fleet CA certificate when nothing names one, under the configuration directory.
pub const DEFAULT_CA: &str = "fleet/ca.pem";
/// This user's certificate when nothing names one.
pub const DEFAULT_CERT: &str = "fleet/user.pem";
/// This user's key when nothing names one.
pub const DEFAULT_KEY: &str = "fleet/user.key";

/// Environment variables fleetctl reads.
pub const ENV_CONTROLLER: &str = "FLEET_CONTROLLER";
pub const ENV_AGENT: &str = "FLEET_AGENT";
pub const ENV_NODE: &str = "FLEET_NODE";
pub const ENV_CONTEXT: &str = "FLEET_CONTEXT";
pub const ENV_CA: &str = "FLEET_CA";
pub const ENV_CERT: &str = "FLEET_CERT";
pub const ENV_KEY: &str = "FLEET_KEY";
pub const ENV_CONFIG_FILE: &str = "FLEET_CONFIG_FILE";
pub const ENV_OUTPUT: &str = "FLEET_OUTPUT";

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {} is invalid{}: {message}", .path.display(), at(*.line_column))]
    Parse {
        path: PathBuf,
        /// 1-based line and column of the problem, when known.
        line_column: Option<(usize, usize)>,
        message: String,
    },
    #[error("context \"{name}\" (from {from}) is not in {}; {}", .path.display(), known_list(.known))]
    UnknownContext {
        name: String,
        from: Source,
        path: PathBuf,
        known: Vec<String>,
    },
    #[error(
        "both a controller ({}, from {}) and an agent ({}, from {}) are given; keep one",
        .controller.value, .controller.source, .agent.value, .agent.source
    )]
    BothTargets {
        controller: Sourced<String>,
        agent: Sourced<String>,
    },
    #[error(
        "context \"{name}\" (from {from}) cannot be used: there is no config file at {}",
        .path.display()
    )]
    NoConfigFile {
        name: String,
        from: Source,
        path: PathBuf,
    },
    #[error("{from} sets output to \"{value}\"; use \"table\" or \"json\"")]
    Output { from: Source, value: String },
    #[error("no home directory: set HOME or XDG_CONFIG_HOME, or pass --config")]
    NoHome,
}

fn at(line_column: Option<(usize, usize)>) -> String {
    line_column.map_or_else(String::new, |(l, c)| format!(" at line {l}, column {c}"))
}

/// 1-based line and character column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

fn known_list(names: &[String]) -> String {
    if names.is_empty() {
        "the file defines no contexts".to_owned()
    } else {
        format!("it defines {}", names.join(", "))
    }
}

/// The config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The context used when neither `--context` nor `FLEET_CONTEXT` names one.
    #[serde(default)]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One named way to reach a fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The controller, `host:port`.
    #[serde(default)]
    pub controller: Option<String>,
    /// One board's agent, `host:port`, for a single-board lab.
    #[serde(default)]
    pub agent: Option<String>,
    /// The node name the agent must prove; any agent of the fleet when absent.
    #[serde(default)]
    pub node: Option<String>,
    /// The fleet CA certificate.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This user's certificate (`fleetctl pki issue user`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl ConfigFile {
    /// Parses the file's text; errors name `path` and the line.
    pub fn from_str(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| ConfigError::Parse {
            path: path.to_owned(),
            line_column: e.span().map(|s| line_column(text, s.start)),
            message: fleet_proto::toml_error::message(text, &e),
        })
    }

    /// Reads the file; `None` when it does not exist and `must_exist` is false.
    pub fn from_file(path: &Path, must_exist: bool) -> Result<Option<Self>, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_str(path, &text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => Ok(None),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// The global flags as given on the command line (no defaults filled in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub context: Option<String>,
    pub controller: Option<String>,
    pub agent: Option<String>,
    pub node: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub output: Option<OutputFormat>,
    pub config: Option<PathBuf>,
}

/// Where a setting came from, for messages and `fleetctl config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    Context(String),
    /// `current_context` of the config file.
    CurrentContext,
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(name) => write!(f, "--{name}"),
            Source::Env(name) => write!(f, "${name}"),
            Source::Context(name) => write!(f, "context \"{name}\""),
            Source::CurrentContext => f.write_str("current_context"),
            Source::Default => f.write_str("the default"),
        }
    }
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

/// Whom commands talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Controller(Sourced<String>),
    Agent(Sourced<String>),
    /// Nothing configured.
    None,
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The config file consulted, if any was found.
    pub config_file: Option<PathBuf>,
    pub context: Option<Sourced<String>>,
    pub target: Target,
    pub node: Option<Sourced<String>>,
    pub ca: Sourced<PathBuf>,
    pub cert: Sourced<PathBuf>,
    pub key: Sourced<PathBuf>,
    pub output: Sourced<OutputFormat>,
}

/// The process environment seen through a lookup function, so tests need
/// not touch the real one.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real environment; empty variables count as unset.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl Env for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|v| (*v).to_owned())
            .filter(|v| !v.is_empty())
    }
}

/// The user's configuration directory: `$XDG_CONFIG_HOME`, else `~/.config`.
pub fn config_dir(env: &dyn Env) -> Option<PathBuf> {
    env.var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| env.var("HOME").map(|h| Path::new(&h).join(".config")))
}

/// Which config file to read, and whether it must exist: `--config`, else
/// `$FLEET_CONFIG_FILE` (both must exist), else the default (may be absent).
pub fn config_path(flags: &Flags, env: &dyn Env) -> Result<(PathBuf, bool), ConfigError> {
    if let Some(p) = &flags.config {
        return Ok((p.clone(), true));
    }
    if let Some(p) = env.var(ENV_CONFIG_FILE) {
        return Ok((PathBuf::from(p), true));
    }
    let dir = config_dir(env).ok_or(ConfigError::NoHome)?;
    Ok((dir.join(DEFAULT_CONFIG_FILE), false))
}

/// Reads the config file the flags and environment point to, then merges.
pub fn load(flags: &Flags, env: &dyn Env) -> Result<Settings, ConfigError> {
    let (path, must_exist) = config_path(flags, env)?;
    let file = ConfigFile::from_file(&path, must_exist)?;
    resolve(flags, env, &path, file.as_ref())
}

/// Merges flags, environment, the selected context of the config file at
/// `path` (`None`: there is none) and defaults. Pure: everything it reads
/// is passed in.
pub fn resolve(
    flags: &Flags,
    env: &dyn Env,
    path: &Path,
    file: Option<&ConfigFile>,
) -> Result<Settings, ConfigError> {
    let context_name = pick(
        flags.context.clone(),
        "context",
        env.var(ENV_CONTEXT),
        ENV_CONTEXT,
    )
    .or_else(|| {
        file.and_then(|f| f.current_context.clone())
            .map(|value| Sourced {
                value,
                source: Source::CurrentContext,
            })
    });
    let context: Option<(&str, &Context, &Path)> = match (&context_name, file) {
        (None, _) => None,
        (Some(name), Some(f)) => match f.contexts.get(&name.value) {
            Some(c) => Some((name.value.as_str(), c, path)),
            None => {
                return Err(ConfigError::UnknownContext {
                    name: name.value.clone(),
                    from: name.source.clone(),
                    path: path.to_owned(),
                    known: f.contexts.keys().cloned().collect(),
                })
            }
        },
        (Some(name), None) => {
            return Err(ConfigError::NoConfigFile {
                name: name.value.clone(),
                from: name.source.clone(),
                path: path.to_owned(),
            })
        }
    };
    let ctx_source = |name: &str| Source::Context(name.to_owned());
    let ctx_str = |get: fn(&Context) -> &Option<String>| {
        context.and_then(|(name, c, _)| {
            get(c).clone().map(|value| Sourced {
                value,
                source: ctx_source(name),
            })
        })
    };
    let ctx_path = |get: fn(&Context) -> &Option<PathBuf>| {
        context.and_then(|(name, c, file)| {
            get(c).as_ref().map(|p| Sourced {
                value: resolve_path(p, file, env),
                source: ctx_source(name),
            })
        })
    };

    // The target: the highest layer naming a controller or an agent wins.
    let layers = [
        (
            flags.controller.clone().map(|value| Sourced {
                value,
                source: Source::Flag("controller"),
            }),
            flags.agent.clone().map(|value| Sourced {
                value,
                source: Source::Flag("agent"),
            }),
        ),
        (
            env.var(ENV_CONTROLLER).map(|value| Sourced {
                value,
                source: Source::Env(ENV_CONTROLLER),
            }),
            env.var(ENV_AGENT).map(|value| Sourced {
                value,
                source: Source::Env(ENV_AGENT),
            }),
        ),
        (ctx_str(|c| &c.controller), ctx_str(|c| &c.agent)),
    ];
    let mut target = Target::None;
    for layer in layers {
        match layer {
            (None, None) => continue,
            (Some(controller), Some(agent)) => {
                return Err(ConfigError::BothTargets { controller, agent })
            }
            (Some(c), None) => target = Target::Controller(c),
            (None, Some(a)) => target = Target::Agent(a),
        }
        break;
    }

    let node = pick(flags.node.clone(), "node", env.var(ENV_NODE), ENV_NODE)
        .or_else(|| ctx_str(|c| &c.node));

    let default_path = |rel: &str| Sourced {
        value: config_dir(env)
            .map(|d| d.join(rel))
            .unwrap_or_else(|| PathBuf::from(rel)),
        source: Source::Default,
    };
    let path_setting = |flag: &Option<PathBuf>,
                        flag_name: &'static str,
                        env_name: &'static str,
                        get: fn(&Context) -> &Option<PathBuf>,
                        default: &str| {
        flag.clone()
            .map(|value| Sourced {
                value,
                source: Source::Flag(flag_name),
            })
            .or_else(|| {
                env.var(env_name).map(|v| Sourced {
                    value: PathBuf::from(v),
                    source: Source::Env(env_name),
                })
            })
            .or_else(|| ctx_path(get))
            .unwrap_or_else(|| default_path(default))
    };
    let ca = path_setting(&flags.ca, "ca", ENV_CA, |c| &c.ca, DEFAULT_CA);
    let cert = path_setting(&flags.cert, "cert", ENV_CERT, |c| &c.cert, DEFAULT_CERT);
    let key = path_setting(&flags.key, "key", ENV_KEY, |c| &c.key, DEFAULT_KEY);

    let output = Sourced {
        value: output_format(flags, env)?,
        source: if flags.output.is_some() {
            Source::Flag("output")
        } else if env.var(ENV_OUTPUT).is_some() {
            Source::Env(ENV_OUTPUT)
        } else {
            Source::Default
        },
    };

    Ok(Settings {
        config_file: file.map(|_| path.to_owned()),
        context: context_name,
        target,
        node,
        ca,
        cert,
        key,
        output,
    })
}

/// The output format from flags and environment alone (the config file
/// has no say in it), known before any file is read.
pub fn output_format(flags: &Flags, env: &dyn Env) -> Result<OutputFormat, ConfigError> {
    match (flags.output, env.var(ENV_OUTPUT)) {
        (Some(format), _) => Ok(format),
        (None, Some(v)) => OutputFormat::parse(&v).ok_or(ConfigError::Output {
            from: Source::Env(ENV_OUTPUT),
            value: v,
        }),
        (None, None) => Ok(OutputFormat::default()),
    }
}

fn pick(
    flag: Option<String>,
    flag_name: &'static str,
    env_value: Option<String>,
    env_name: &'static str,
) -> Option<Sourced<String>> {
    flag.map(|value| Sourced {
        value,
        source: Source::Flag(flag_name),
    })
    .or_else(|| {
        env_value.map(|value| Sourced {
            value,
            source: Source::Env(env_name),
        })
    })
}

/// A path from the config file: `~/` is the home directory, and a relative
/// path is relative to the file's folder.
fn resolve_path(p: &Path, file: &Path, env: &dyn Env) -> PathBuf {
    if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), env.var("HOME")) {
        return Path::new(&home).join(rest);
    }
    if p.is_relative() {
        if let Some(dir) = file.parent() {
            return dir.join(p);
        }
    }
    p.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
current_context = "dev"

[contexts.dev]
controller = "lab:7400"
ca = "certs/ca.pem"
cert = "~/fleet/ada.pem"
key = "/abs/ada.key"

[contexts.bench]
agent = "jetson-01.lab:7443"
node = "jetson-01"
"#;

    fn env(pairs: &[(&'static str, &'static str)]) -> BTreeMap<&'static str, &'static str> {
        let mut m: BTreeMap<&str, &str> = [("HOME", "/home/ada")].into_iter().collect();
        m.extend(pairs.iter().copied());
        m
    }

    fn file() -> ConfigFile {
        ConfigFile::from_str(Path::new("/cfg/fleetctl.toml"), FILE).unwrap()
    }

    fn resolve_with(flags: &Flags, e: &BTreeMap<&str, &str>) -> Result<Settings, ConfigError> {
        let f = file();
        resolve(flags, e, Path::new("/cfg/fleetctl.toml"), Some(&f))
    }

    #[test]
    fn context_values_apply_with_paths_resolved() {
        let s = resolve_with(&Flags::default(), &env(&[])).unwrap();
        assert_eq!(s.context.as_ref().unwrap().value, "dev");
        assert_eq!(
            s.target,
            Target::Controller(Sourced {
                value: "lab:7400".into(),
                source: Source::Context("dev".into())
            })
        );
        assert_eq!(s.ca.value, PathBuf::from("/cfg/certs/ca.pem"));
        assert_eq!(s.cert.value, PathBuf::from("/home/ada/fleet/ada.pem"));
        assert_eq!(s.key.value, PathBuf::from("/abs/ada.key"));
        assert_eq!(s.output.value, OutputFormat::Table);
    }

    #[test]
    fn env_beats_context_and_flags_beat_env() {
        let e = env(&[
            (ENV_CA, "/env/ca.pem"),
            (ENV_CERT, "/env/cert.pem"),
            (ENV_OUTPUT, "json"),
            (ENV_CONTEXT, "bench"),
        ]);
        let s = resolve_with(&Flags::default(), &e).unwrap();
        assert_eq!(s.context.as_ref().unwrap().source, Source::Env(ENV_CONTEXT));
        assert!(matches!(&s.target, Target::Agent(a) if a.value == "jetson-01.lab:7443"));
        assert_eq!(s.node.as_ref().unwrap().value, "jetson-01");
        assert_eq!(s.ca.value, PathBuf::from("/env/ca.pem"));
        assert_eq!(s.cert.source, Source::Env(ENV_CERT));
        assert_eq!(s.output.value, OutputFormat::Json);
        // The bench context names no key: the default under ~/.config.
        assert_eq!(
            s.key.value,
            PathBuf::from("/home/ada/.config/fleet/user.key")
        );
        assert_eq!(s.key.source, Source::Default);

        let flags = Flags {
            context: Some("dev".into()),
            ca: Some("/flag/ca.pem".into()),
            output: Some(OutputFormat::Table),
            node: Some("jetson-02".into()),
            ..Flags::default()
        };
        let s = resolve_with(&flags, &e).unwrap();
        assert_eq!(s.context.as_ref().unwrap().value, "dev");
        assert_eq!(s.ca.value, PathBuf::from("/flag/ca.pem"));
        assert_eq!(s.cert.value, PathBuf::from("/env/cert.pem"));
        assert_eq!(s.output.value, OutputFormat::Table);
        assert_eq!(s.node.as_ref().unwrap().source, Source::Flag("node"));
    }

    #[test]
    fn the_highest_layer_naming_a_target_wins() {
        // The context names a controller; an agent in the environment wins.
        let s = resolve_with(&Flags::default(), &env(&[(ENV_AGENT, "b:7443")])).unwrap();
        assert!(matches!(&s.target, Target::Agent(a) if a.source == Source::Env(ENV_AGENT)));
        // A controller flag beats an agent in the environment.
        let flags = Flags {
            controller: Some("c:7400".into()),
            ..Flags::default()
        };
        let s = resolve_with(&flags, &env(&[(ENV_AGENT, "b:7443")])).unwrap();
        assert!(matches!(&s.target, Target::Controller(c) if c.value == "c:7400"));
        // Both in one layer is an error naming the layer.
        let e = env(&[(ENV_AGENT, "b:7443"), (ENV_CONTROLLER, "c:7400")]);
        let err = resolve_with(&Flags::default(), &e).unwrap_err();
        assert!(matches!(err, ConfigError::BothTargets { .. }));
        assert!(err.to_string().contains("FLEET_CONTROLLER"), "{err}");
    }

    #[test]
    fn defaults_without_a_file() {
        let e = env(&[("XDG_CONFIG_HOME", "/xdg")]);
        let s = resolve(
            &Flags::default(),
            &e,
            Path::new("/xdg/fleet/fleetctl.toml"),
            None,
        )
        .unwrap();
        assert_eq!(s.target, Target::None);
        assert_eq!(s.context, None);
        assert_eq!(s.ca.value, PathBuf::from("/xdg/fleet/ca.pem"));
        assert_eq!(s.cert.value, PathBuf::from("/xdg/fleet/user.pem"));
        assert_eq!(s.config_file, None);
        // Naming a context without a file says where the file was looked for.
        let flags = Flags {
            context: Some("dev".into()),
            ..Flags::default()
        };
        let err = resolve(&flags, &e, Path::new("/xdg/fleet/fleetctl.toml"), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("no config file at /xdg/fleet/fleetctl.toml"),
            "{err}"
        );
    }

    #[test]
    fn config_path_respects_flag_env_and_xdg() {
        let e = env(&[("XDG_CONFIG_HOME", "/xdg")]);
        assert_eq!(
            config_path(&Flags::default(), &e).unwrap(),
            (PathBuf::from("/xdg/fleet/fleetctl.toml"), false)
        );
        let e2 = env(&[]);
        assert_eq!(
            config_path(&Flags::default(), &e2).unwrap().0,
            PathBuf::from("/home/ada/.config/fleet/fleetctl.toml")
        );
        // A relative XDG_CONFIG_HOME is ignored, as the spec says.
        let e3 = env(&[("XDG_CONFIG_HOME", "rel")]);
        assert_eq!(
            config_path(&Flags::default(), &e3).unwrap().0,
            PathBuf::from("/home/ada/.config/fleet/fleetctl.toml")
        );
        let e4 = env(&[(ENV_CONFIG_FILE, "/etc/f.toml")]);
        assert_eq!(
            config_path(&Flags::default(), &e4).unwrap(),
            (PathBuf::from("/etc/f.toml"), true)
        );
        let flags = Flags {
            config: Some("/flag.toml".into()),
            ..Flags::default()
        };
        assert_eq!(
            config_path(&flags, &e4).unwrap(),
            (PathBuf::from("/flag.toml"), true)
        );
    }

    #[test]
    fn errors_name_the_file_and_the_context() {
        let err = resolve_with(
            &Flags {
                context: Some("prod".into()),
                ..Flags::default()
            },
            &env(&[]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"prod\""), "{text}");
        assert!(text.contains("/cfg/fleetctl.toml"), "{text}");
        assert!(text.contains("bench, dev"), "{text}");

        let err = ConfigFile::from_str(
            Path::new("/cfg/fleetctl.toml"),
            "[contexts.dev]\ncontroler = \"x\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the config file /cfg/fleetctl.toml is invalid at line 2, column 1: "),
            "{err}"
        );
        assert!(err.to_string().contains("controler"), "{err}");
        let err = ConfigFile::from_str(
            Path::new("/cfg/fleetctl.toml"),
            "[contexts.dev]\ncontroller = \"a:1\"\ncontroller = \"b:1\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("line 3")
                && err.to_string().contains("duplicate key `controller`"),
            "{err}"
        );

        let err = resolve_with(&Flags::default(), &env(&[(ENV_OUTPUT, "yaml")])).unwrap_err();
        assert!(err.to_string().contains("FLEET_OUTPUT"), "{err}");
    }

    #[test]
    fn a_context_naming_both_targets_is_refused() {
        let f = ConfigFile::from_str(
            Path::new("/c.toml"),
            "current_context = \"x\"\n[contexts.x]\ncontroller = \"a:1\"\nagent = \"b:2\"\n",
        )
        .unwrap();
        let err =
            resolve(&Flags::default(), &env(&[]), Path::new("/c.toml"), Some(&f)).unwrap_err();
        assert!(err.to_string().contains("context \"x\""), "{err}");
    }
}
