//! Validated experiment specs: the domain form of `v1::ExperimentSpec`.
//!
//! Every value a researcher submits is checked here, once, by the same rules
//! on the workstation (fleetctl), at the controller and on the board. A
//! value of a type from this module is valid by construction, so bad input
//! never reaches systemd or the store.
//!
//! - [`ExperimentSpec::try_from`] checks a wire message and reports every
//!   problem at once, each with its field path and the fix.
//! - [`ExperimentSpec::to_proto`] gives the wire message back, with defaults
//!   written out.
//! - [`file`] is the TOML form fleetctl reads, with line and column for each
//!   problem.

mod command;
mod error;
pub mod file;
mod names;
mod quantity;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::v1;

pub use command::{
    substitutions, AbsolutePath, Command, ConfigFile, EnvValue, MAX_ARGS, MAX_ARG_BYTES,
    MAX_COMMAND_BYTES, MAX_CONFIG_BYTES, MAX_ENV_BYTES, MAX_ENV_VALUE_BYTES, MAX_PATH_BYTES,
};
pub use error::{FieldError, FieldPath, InvalidValue, PathSegment, SpecError};
pub use names::{
    ConfigName, EnvName, ExperimentId, LabelKey, LabelValue, NodeName, PowerMode, ENV_CONFIG,
    ENV_EPOCH, ENV_EXPERIMENT_ID, MAX_CONFIG_NAME_LEN, MAX_ENV_NAME_LEN, MAX_NAME_LEN,
    RESERVED_ENV_PREFIX, SUBSTITUTED_ENV, SYSTEMD_ENV,
};
pub use quantity::{
    format_duration, format_size, parse_cpu_quota, parse_duration, parse_memory_max,
    MAX_CPU_QUOTA_PERCENT, MAX_MEMORY_MAX, MIN_MEMORY_MAX,
};

/// Priority when none is given; higher runs first.
pub const DEFAULT_PRIORITY: u32 = 0;
pub const MAX_PRIORITY: u32 = 1000;
/// Most environment variables in a spec.
pub const MAX_ENV_VARS: usize = 256;
/// Most labels a spec may require.
pub const MAX_LABELS: usize = 64;
/// Bounds of `max_temp_c`, in °C; a Jetson shuts down well below the top.
pub const MIN_MAX_TEMP_C: f64 = 0.0;
pub const MAX_MAX_TEMP_C: f64 = 120.0;

pub const DEFAULT_RESTART: RestartPolicy = RestartPolicy::OnFailure;
/// Automatic restarts after crashes before the experiment counts as failed.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
pub const MAX_MAX_RESTARTS: u32 = 100;
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(5);
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(3600);
/// Time between SIGTERM and SIGKILL when stopping.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Zero would mean "wait for ever" to systemd, so a stop timeout is at least this.
pub const MIN_STOP_TIMEOUT: Duration = Duration::from_secs(1);
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(3600);
pub const MIN_MAX_RUNTIME: Duration = Duration::from_secs(1);
pub const MAX_MAX_RUNTIME: Duration = Duration::from_secs(365 * 86_400);
pub const DEFAULT_ON_DISRUPTION: DisruptionPolicy = DisruptionPolicy::Requeue;

/// What systemd does when the experiment crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// Restart after a non-zero exit, a signal or a timeout, up to
    /// `max_restarts` times.
    OnFailure,
    /// A crash fails the experiment.
    Never,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnFailure => "on-failure",
            Self::Never => "never",
        }
    }

    /// The wire form; empty is the default.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "" => Ok(DEFAULT_RESTART),
            "on-failure" => Ok(Self::OnFailure),
            "never" => Ok(Self::Never),
            _ => Err(InvalidValue::invalid(
                "restart policy",
                s,
                "use \"on-failure\" or \"never\"",
            )),
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to the experiment when the board stops it (too hot,
/// drained, lost): not the experiment's fault, so never a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisruptionPolicy {
    /// Back into the queue, to run again elsewhere.
    Requeue,
    /// The experiment ends as failed.
    Fail,
}

impl DisruptionPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requeue => "requeue",
            Self::Fail => "fail",
        }
    }

    /// The wire form; empty is the default.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "" => Ok(DEFAULT_ON_DISRUPTION),
            "requeue" => Ok(Self::Requeue),
            "fail" => Ok(Self::Fail),
            _ => Err(InvalidValue::invalid(
                "disruption policy",
                s,
                "use \"requeue\" or \"fail\"",
            )),
        }
    }
}

impl fmt::Display for DisruptionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated experiment spec.
///
/// Built only from a wire message ([`ExperimentSpec::try_from`]), so the
/// rules that tie fields together hold too (a command using
/// `${FLEET_CONFIG}` has a config file).
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentSpec {
    id: ExperimentId,
    command: Command,
    working_dir: Option<AbsolutePath>,
    env: BTreeMap<EnvName, EnvValue>,
    config: Option<ConfigFile>,
    priority: u32,
    resources: Resources,
    placement: Placement,
    lifecycle: Lifecycle,
}

/// Limits systemd enforces; `None` leaves the template's default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resources {
    memory_max: Option<u64>,
    cpu_quota_percent: Option<u32>,
    gpu: bool,
}

/// Where the experiment may run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Placement {
    node: Option<NodeName>,
    labels: BTreeMap<LabelKey, LabelValue>,
    power_mode: Option<PowerMode>,
    max_temp_c: Option<f64>,
}

/// How the experiment is restarted, stopped and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    max_runtime: Option<Duration>,
    restart: RestartPolicy,
    max_restarts: u32,
    restart_delay: Duration,
    stop_timeout: Duration,
    on_disruption: DisruptionPolicy,
    autostart: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            max_runtime: None,
            restart: DEFAULT_RESTART,
            max_restarts: DEFAULT_MAX_RESTARTS,
            restart_delay: DEFAULT_RESTART_DELAY,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            on_disruption: DEFAULT_ON_DISRUPTION,
            autostart: false,
        }
    }
}

impl ExperimentSpec {
    pub fn id(&self) -> &ExperimentId {
        &self.id
    }

    pub fn command(&self) -> &Command {
        &self.command
    }

    /// `None` leaves the template's working directory.
    pub fn working_dir(&self) -> Option<&AbsolutePath> {
        self.working_dir.as_ref()
    }

    /// Variables the experiment sets, in name order.
    pub fn env(&self) -> &BTreeMap<EnvName, EnvValue> {
        &self.env
    }

    pub fn config(&self) -> Option<&ConfigFile> {
        self.config.as_ref()
    }

    /// 0..=[`MAX_PRIORITY`]; higher runs first.
    pub fn priority(&self) -> u32 {
        self.priority
    }

    pub fn resources(&self) -> &Resources {
        &self.resources
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// The wire message, with every default written out, so a stored spec
    /// keeps the defaults it was accepted with. `try_from` of the result
    /// gives `self` back.
    pub fn to_proto(&self) -> v1::ExperimentSpec {
        let r = &self.resources;
        let p = &self.placement;
        let l = &self.lifecycle;
        v1::ExperimentSpec {
            id: self.id.to_string(),
            command: self.command.argv().to_vec(),
            working_dir: self
                .working_dir
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            env: self
                .env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            config_name: self
                .config
                .as_ref()
                .map(|c| c.name().to_string())
                .unwrap_or_default(),
            config_content: self
                .config
                .as_ref()
                .map(|c| c.content().to_vec())
                .unwrap_or_default(),
            // At most MAX_PRIORITY, so it fits.
            priority: i32::try_from(self.priority).unwrap_or(i32::MAX),
            resources: Some(v1::Resources {
                memory_max: r.memory_max.map(format_size).unwrap_or_default(),
                cpu_quota: r
                    .cpu_quota_percent
                    .map(|p| format!("{p}%"))
                    .unwrap_or_default(),
                gpu: r.gpu,
            }),
            placement: Some(v1::Placement {
                node: p.node.as_ref().map(ToString::to_string).unwrap_or_default(),
                labels: p
                    .labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                power_mode: p
                    .power_mode
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                max_temp_c: p.max_temp_c,
            }),
            lifecycle: Some(v1::Lifecycle {
                max_runtime: l.max_runtime.map(format_duration).unwrap_or_default(),
                restart: l.restart.as_str().to_owned(),
                max_restarts: Some(l.max_restarts),
                restart_delay: format_duration(l.restart_delay),
                stop_timeout: format_duration(l.stop_timeout),
                on_disruption: l.on_disruption.as_str().to_owned(),
                autostart: l.autostart,
            }),
        }
    }
}

impl Resources {
    /// `MemoryMax=` in bytes.
    pub fn memory_max(&self) -> Option<u64> {
        self.memory_max
    }

    /// `CPUQuota=` in percent of one core.
    pub fn cpu_quota_percent(&self) -> Option<u32> {
        self.cpu_quota_percent
    }

    /// Needs a board with a GPU (a scheduling constraint; device access
    /// comes from the unit template).
    pub fn gpu(&self) -> bool {
        self.gpu
    }
}

impl Placement {
    /// The board the experiment is pinned to.
    pub fn node(&self) -> Option<&NodeName> {
        self.node.as_ref()
    }

    /// Labels a board must carry, each with exactly this value.
    pub fn labels(&self) -> &BTreeMap<LabelKey, LabelValue> {
        &self.labels
    }

    pub fn power_mode(&self) -> Option<&PowerMode> {
        self.power_mode.as_ref()
    }

    /// The hottest a board's hottest zone may be for the experiment to be
    /// placed there, in °C.
    pub fn max_temp_c(&self) -> Option<f64> {
        self.max_temp_c
    }
}

impl Lifecycle {
    /// `None`: no limit.
    pub fn max_runtime(&self) -> Option<Duration> {
        self.max_runtime
    }

    pub fn restart(&self) -> RestartPolicy {
        self.restart
    }

    pub fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    pub fn restart_delay(&self) -> Duration {
        self.restart_delay
    }

    pub fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }

    pub fn on_disruption(&self) -> DisruptionPolicy {
        self.on_disruption
    }

    /// Starts again when the board reboots.
    pub fn autostart(&self) -> bool {
        self.autostart
    }

    /// Whether systemd restarts the experiment after a crash at all.
    pub fn restarts_on_failure(&self) -> bool {
        self.restart == RestartPolicy::OnFailure && self.max_restarts > 0
    }
}

/// Collects the problems of one spec while its fields are checked.
struct Checker {
    problems: Vec<FieldError>,
}

impl Checker {
    /// The value, or `None` after recording the problem at `path`.
    fn value<T>(&mut self, path: FieldPath, result: Result<T, InvalidValue>) -> Option<T> {
        result
            .map_err(|e| self.problems.push(FieldError::new(path, e)))
            .ok()
    }

    /// Like [`Checker::value`], for an optional field where empty means "not given".
    fn optional<T>(
        &mut self,
        path: FieldPath,
        s: &str,
        parse: impl FnOnce(&str) -> Result<T, InvalidValue>,
    ) -> Option<T> {
        if s.is_empty() {
            None
        } else {
            self.value(path, parse(s))
        }
    }

    fn duration(
        &mut self,
        path: FieldPath,
        what: &'static str,
        s: &str,
        bounds: (Duration, Duration),
    ) -> Option<Duration> {
        let (min, max) = bounds;
        let result = match parse_duration(s) {
            None => Err(InvalidValue::invalid(what, s, quantity::DURATION_FIX)),
            Some(d) if d < min => Err(InvalidValue::new(
                what,
                s,
                "is too short",
                format!("use at least {}", format_duration(min)),
            )),
            Some(d) if d > max => Err(InvalidValue::new(
                what,
                s,
                "is too long",
                format!("use at most {}", format_duration(max)),
            )),
            Some(d) => Ok(d),
        };
        self.value(path, result)
    }
}

impl TryFrom<&v1::ExperimentSpec> for ExperimentSpec {
    type Error = SpecError;

    /// Checks every field and returns every problem found, in field order.
    fn try_from(spec: &v1::ExperimentSpec) -> Result<Self, SpecError> {
        let mut c = Checker {
            problems: Vec::new(),
        };
        let field = |name: &str| FieldPath::of(&[name]);

        let id = c.value(field("id"), ExperimentId::new(spec.id.as_str()));

        let command = match Command::new(spec.command.clone()) {
            Ok(command) => Some(command),
            Err(e) => {
                c.problems.extend(e.problems().iter().cloned());
                None
            }
        };

        let working_dir = c.optional(field("working_dir"), &spec.working_dir, |s| {
            AbsolutePath::new(s).map_err(|e| InvalidValue::invalid("working directory", s, e.fix()))
        });

        let env = check_env(&mut c, &spec.env);

        let config = match (spec.config_name.as_str(), spec.config_content.is_empty()) {
            ("", true) => None,
            ("", false) => {
                c.problems.push(FieldError::new(
                    field("config_name"),
                    "config_content is set but config_name is empty: name the config file",
                ));
                None
            }
            (name, _) => c
                .value(field("config_name"), ConfigName::new(name))
                .and_then(|name| {
                    c.value(
                        field("config_content"),
                        ConfigFile::new(name, spec.config_content.clone()),
                    )
                }),
        };
        if config.is_none() && spec.config_name.is_empty() {
            for (i, arg) in spec.command.iter().enumerate() {
                if substitutions(arg).any(|(_, name)| name == ENV_CONFIG) {
                    c.problems.push(FieldError::new(
                        field("command").index(i),
                        format!(
                            "argument {} refers to ${{{ENV_CONFIG}}} but the experiment has no \
                             config file: set config_file, or remove the reference",
                            error::quote(arg)
                        ),
                    ));
                }
            }
        }

        let priority = c.value(
            field("priority"),
            u32::try_from(spec.priority)
                .ok()
                .filter(|p| *p <= MAX_PRIORITY)
                .ok_or_else(|| {
                    InvalidValue::invalid(
                        "priority",
                        &spec.priority.to_string(),
                        format!("use a whole number from 0 to {MAX_PRIORITY}; higher runs first"),
                    )
                }),
        );

        let resources = check_resources(&mut c, spec.resources.as_ref());
        let placement = check_placement(&mut c, spec.placement.as_ref());
        let lifecycle = check_lifecycle(&mut c, spec.lifecycle.as_ref());

        match (id, command, priority) {
            (Some(id), Some(command), Some(priority)) if c.problems.is_empty() => Ok(Self {
                id,
                command,
                working_dir,
                env,
                config,
                priority,
                resources,
                placement,
                lifecycle,
            }),
            _ => Err(SpecError::from_problems(c.problems).expect("a field failed its check")),
        }
    }
}

impl TryFrom<v1::ExperimentSpec> for ExperimentSpec {
    type Error = SpecError;

    fn try_from(spec: v1::ExperimentSpec) -> Result<Self, SpecError> {
        Self::try_from(&spec)
    }
}

fn check_env(
    c: &mut Checker,
    env: &std::collections::HashMap<String, String>,
) -> BTreeMap<EnvName, EnvValue> {
    let path = FieldPath::of(&["env"]);
    if env.len() > MAX_ENV_VARS {
        c.problems.push(FieldError::new(
            path,
            format!(
                "{} environment variables: set at most {MAX_ENV_VARS} (put the rest in the config file)",
                env.len()
            ),
        ));
        return BTreeMap::new();
    }
    // Sorted, so the problems come in the same order every time.
    let sorted: BTreeMap<&String, &String> = env.iter().collect();
    let mut out = BTreeMap::new();
    let mut total = 0;
    for (name, value) in sorted {
        total += value.len();
        let name_ok = match EnvName::new(name.as_str()) {
            Ok(n) => Some(n),
            Err(e) => {
                c.problems.push(FieldError::key(path.key(name), e));
                None
            }
        };
        let value_ok = c.value(path.key(name), EnvValue::new(value.as_str()));
        if let (Some(n), Some(v)) = (name_ok, value_ok) {
            out.insert(n, v);
        }
    }
    if total > MAX_ENV_BYTES {
        c.problems.push(FieldError::new(
            path,
            format!(
                "environment values have {total} bytes: use at most {MAX_ENV_BYTES} \
                 (put long values in the config file)"
            ),
        ));
    }
    out
}

fn check_resources(c: &mut Checker, r: Option<&v1::Resources>) -> Resources {
    let Some(r) = r else {
        return Resources::default();
    };
    let path = |name: &str| FieldPath::of(&["resources", name]);
    Resources {
        memory_max: c.optional(path("memory_max"), &r.memory_max, parse_memory_max),
        cpu_quota_percent: c.optional(path("cpu_quota"), &r.cpu_quota, parse_cpu_quota),
        gpu: r.gpu,
    }
}

fn check_placement(c: &mut Checker, p: Option<&v1::Placement>) -> Placement {
    let Some(p) = p else {
        return Placement::default();
    };
    let path = |name: &str| FieldPath::of(&["placement", name]);
    let node = c.optional(path("node"), &p.node, |s| NodeName::new(s));
    let mut labels = BTreeMap::new();
    if p.labels.len() > MAX_LABELS {
        c.problems.push(FieldError::new(
            path("labels"),
            format!("{} labels: require at most {MAX_LABELS}", p.labels.len()),
        ));
    } else {
        let sorted: BTreeMap<&String, &String> = p.labels.iter().collect();
        for (key, value) in sorted {
            let at = path("labels").key(key);
            let key_ok = match LabelKey::new(key.as_str()) {
                Ok(k) => Some(k),
                Err(e) => {
                    c.problems.push(FieldError::key(at.clone(), e));
                    None
                }
            };
            let value_ok = c.value(at, LabelValue::new(value.as_str()));
            if let (Some(k), Some(v)) = (key_ok, value_ok) {
                labels.insert(k, v);
            }
        }
    }
    let power_mode = c.optional(path("power_mode"), &p.power_mode, PowerMode::new);
    let max_temp_c = p.max_temp_c.and_then(|t| {
        let ok = t.is_finite() && (MIN_MAX_TEMP_C..=MAX_MAX_TEMP_C).contains(&t);
        c.value(
            path("max_temp_c"),
            ok.then_some(t).ok_or_else(|| {
                InvalidValue::invalid(
                    "temperature",
                    &t.to_string(),
                    format!("use degrees Celsius from {MIN_MAX_TEMP_C} to {MAX_MAX_TEMP_C}"),
                )
            }),
        )
    });
    Placement {
        node,
        labels,
        power_mode,
        max_temp_c,
    }
}

fn check_lifecycle(c: &mut Checker, l: Option<&v1::Lifecycle>) -> Lifecycle {
    let defaults = Lifecycle::default();
    let Some(l) = l else {
        return defaults;
    };
    let path = |name: &str| FieldPath::of(&["lifecycle", name]);
    let max_runtime = if l.max_runtime.is_empty() {
        None
    } else {
        c.duration(
            path("max_runtime"),
            "max runtime",
            &l.max_runtime,
            (MIN_MAX_RUNTIME, MAX_MAX_RUNTIME),
        )
    };
    let restart = c
        .value(path("restart"), RestartPolicy::parse(&l.restart))
        .unwrap_or(defaults.restart);
    let max_restarts = match l.max_restarts {
        None => DEFAULT_MAX_RESTARTS,
        Some(n) if n <= MAX_MAX_RESTARTS => n,
        Some(n) => {
            c.problems.push(FieldError::new(
                path("max_restarts"),
                InvalidValue::new(
                    "max restarts",
                    &n.to_string(),
                    "is too many",
                    format!("use at most {MAX_MAX_RESTARTS}"),
                ),
            ));
            DEFAULT_MAX_RESTARTS
        }
    };
    let restart_delay = if l.restart_delay.is_empty() {
        Some(DEFAULT_RESTART_DELAY)
    } else {
        c.duration(
            path("restart_delay"),
            "restart delay",
            &l.restart_delay,
            (Duration::ZERO, MAX_RESTART_DELAY),
        )
    };
    let stop_timeout = if l.stop_timeout.is_empty() {
        Some(DEFAULT_STOP_TIMEOUT)
    } else {
        c.duration(
            path("stop_timeout"),
            "stop timeout",
            &l.stop_timeout,
            (MIN_STOP_TIMEOUT, MAX_STOP_TIMEOUT),
        )
    };
    let on_disruption = c
        .value(
            path("on_disruption"),
            DisruptionPolicy::parse(&l.on_disruption),
        )
        .unwrap_or(defaults.on_disruption);
    Lifecycle {
        max_runtime,
        restart,
        max_restarts,
        restart_delay: restart_delay.unwrap_or(defaults.restart_delay),
        stop_timeout: stop_timeout.unwrap_or(defaults.stop_timeout),
        on_disruption,
        autostart: l.autostart,
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
