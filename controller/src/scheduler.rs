//! The scheduler's decisions: which queued experiment goes to which node.
//!
//! Pure logic, no I/O and no clock: [`plan`] takes the queued experiments
//! ([`Pending`]), a snapshot of the nodes ([`NodeView`]) and the [`Policy`]
//! in effect, and returns one [`Decision`] per experiment. The reconciler
//! builds the inputs from the store and live telemetry, stores the
//! placements, and keeps each decision for `Explain` and `Submit --dry-run`.
//!
//! A decision is made in three steps:
//!
//! 1. **Filters.** Every node is checked against every filter and each
//!    failure is kept as a [`Rejection`] that says what was wrong in numbers,
//!    so a person can read why (`too hot: 73.5 °C ≥ warn 75.0 − margin 5.0`).
//!    How much of that a decision keeps is its [`Detail`]: every node for a
//!    person asking (dry run, Explain's `now`), or, for what a pass stores,
//!    the nodes that matter (the best that fit, a few per failed filter)
//!    and counts for every node ([`Tally`]). The words are only written
//!    for the nodes kept; the others only say which filters they failed.
//! 2. **Score.** A node that passes every filter is scored by the policy's
//!    weighted mean of five terms in [0, 1] (temperature headroom, idle CPU,
//!    free memory, free slots, fullness); the best score wins and equal scores
//!    go to the node whose name sorts first, so the same inputs always give
//!    the same placement. Only the best few are kept in order (no sort of
//!    the whole fleet per experiment) unless every verdict is asked for.
//! 3. **Order.** Experiments are taken by priority, then age. One that cannot
//!    be placed does not hold the ones behind it (they backfill whatever fits)
//!    unless the policy asks for `strict_order`. Every placement in a pass
//!    uses up memory, a slot, CPU and, when it switches it, the power mode of
//!    its node before the next experiment is considered.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use fleet_proto::spec::{ExperimentId, ExperimentSpec, LabelKey, LabelValue, NodeName, PowerMode};
use serde::{Deserialize, Serialize};

/// The policy a fresh controller uses.
pub const DEFAULT_POLICY: PolicyName = PolicyName::Balanced;
/// A node is too hot for new work from `warn − margin` on, so that work
/// placed on a warm board does not push it straight into its guard.
pub const DEFAULT_TEMP_MARGIN_C: f64 = 5.0;
/// Widest margin accepted: a Jetson's warn temperature is around 75 °C.
pub const MAX_TEMP_MARGIN_C: f64 = 50.0;
pub const DEFAULT_STRICT_ORDER: bool = false;
/// CPU an experiment without a CPU quota is assumed to add to its node's
/// load within one pass (percent of one core), until telemetry shows the
/// real load.
pub const ASSUMED_CPU_PERCENT_OF_ONE_CORE: f64 = 100.0;

pub const DEFAULT_BALANCED_WEIGHTS: Weights = Weights {
    temperature: 0.4,
    load: 0.3,
    memory: 0.2,
    spread: 0.1,
    pack: 0.0,
};
pub const DEFAULT_COOLEST_WEIGHTS: Weights = Weights {
    temperature: 1.0,
    ..Weights::ZERO
};
pub const DEFAULT_LEAST_LOADED_WEIGHTS: Weights = Weights {
    load: 0.6,
    memory: 0.4,
    ..Weights::ZERO
};
pub const DEFAULT_SPREAD_WEIGHTS: Weights = Weights {
    spread: 1.0,
    ..Weights::ZERO
};
pub const DEFAULT_PACK_WEIGHTS: Weights = Weights {
    pack: 1.0,
    ..Weights::ZERO
};

/// A scoring policy by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// Temperature headroom first, then idle CPU, free memory and spread.
    Balanced,
    /// The coolest node.
    Coolest,
    /// The node with the most idle CPU and free memory.
    LeastLoaded,
    /// The node with the fewest experiments.
    Spread,
    /// The fullest node that still fits, to keep other nodes free (and cool).
    Pack,
}

impl PolicyName {
    pub const ALL: [PolicyName; 5] = [
        Self::Balanced,
        Self::Coolest,
        Self::LeastLoaded,
        Self::Spread,
        Self::Pack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Balanced => "balanced",
            Self::Coolest => "coolest",
            Self::LeastLoaded => "least-loaded",
            Self::Spread => "spread",
            Self::Pack => "pack",
        }
    }

    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| PolicyError::UnknownName(s.to_owned()))
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The weights of the five score terms. Terms a config leaves out weigh 0:
/// weights given for a policy replace its defaults as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// Headroom below the node's temperature limit.
    pub temperature: f64,
    /// Idle CPU.
    pub load: f64,
    /// Memory left unreserved after the placement.
    pub memory: f64,
    /// Free slots: fewer experiments per node.
    pub spread: f64,
    /// Reserved memory and used slots after the placement: fill one node
    /// before the next.
    pub pack: f64,
}

impl Weights {
    pub const ZERO: Weights = Weights {
        temperature: 0.0,
        load: 0.0,
        memory: 0.0,
        spread: 0.0,
        pack: 0.0,
    };

    fn as_array(&self) -> [f64; TERMS] {
        [
            self.temperature,
            self.load,
            self.memory,
            self.spread,
            self.pack,
        ]
    }

    fn check(&self, policy: PolicyName) -> Result<(), PolicyError> {
        let w = self.as_array();
        if let Some((i, v)) = w
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || **v < 0.0)
        {
            return Err(PolicyError::BadWeight {
                policy,
                term: Term::ALL[i].as_str(),
                value: *v,
            });
        }
        if w.iter().sum::<f64>() <= 0.0 {
            return Err(PolicyError::NoWeight { policy });
        }
        Ok(())
    }
}

impl Default for Weights {
    fn default() -> Self {
        Self::ZERO
    }
}

/// The weights of every named policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyWeights {
    pub balanced: Weights,
    pub coolest: Weights,
    #[serde(rename = "least-loaded")]
    pub least_loaded: Weights,
    pub spread: Weights,
    pub pack: Weights,
}

impl Default for PolicyWeights {
    fn default() -> Self {
        Self {
            balanced: DEFAULT_BALANCED_WEIGHTS,
            coolest: DEFAULT_COOLEST_WEIGHTS,
            least_loaded: DEFAULT_LEAST_LOADED_WEIGHTS,
            spread: DEFAULT_SPREAD_WEIGHTS,
            pack: DEFAULT_PACK_WEIGHTS,
        }
    }
}

impl PolicyWeights {
    pub fn of(&self, name: PolicyName) -> Weights {
        *self.get(name)
    }

    pub fn set(&mut self, name: PolicyName, weights: Weights) {
        *self.get_mut(name) = weights;
    }

    fn get(&self, name: PolicyName) -> &Weights {
        match name {
            PolicyName::Balanced => &self.balanced,
            PolicyName::Coolest => &self.coolest,
            PolicyName::LeastLoaded => &self.least_loaded,
            PolicyName::Spread => &self.spread,
            PolicyName::Pack => &self.pack,
        }
    }

    fn get_mut(&mut self, name: PolicyName) -> &mut Weights {
        match name {
            PolicyName::Balanced => &mut self.balanced,
            PolicyName::Coolest => &mut self.coolest,
            PolicyName::LeastLoaded => &mut self.least_loaded,
            PolicyName::Spread => &mut self.spread,
            PolicyName::Pack => &mut self.pack,
        }
    }
}

/// How the scheduler chooses: the `[scheduler]` table of the controller's
/// config, and what `SetPolicy` changes at run time (then stored, so it
/// outlives a restart).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "default_policy")]
    pub policy: PolicyName,
    /// A queued experiment that cannot be placed holds every one behind it.
    #[serde(default)]
    pub strict_order: bool,
    #[serde(default = "default_temp_margin_c")]
    pub temp_margin_c: f64,
    #[serde(default)]
    pub weights: PolicyWeights,
}

fn default_policy() -> PolicyName {
    DEFAULT_POLICY
}

fn default_temp_margin_c() -> f64 {
    DEFAULT_TEMP_MARGIN_C
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            policy: DEFAULT_POLICY,
            strict_order: DEFAULT_STRICT_ORDER,
            temp_margin_c: DEFAULT_TEMP_MARGIN_C,
            weights: PolicyWeights::default(),
        }
    }
}

impl Policy {
    /// The weights of the policy in effect.
    pub fn weights(&self) -> Weights {
        self.weights.of(self.policy)
    }

    /// Checks what serde cannot: numbers in range, every policy scoring
    /// something.
    pub fn check(&self) -> Result<(), PolicyError> {
        if !self.temp_margin_c.is_finite()
            || !(0.0..=MAX_TEMP_MARGIN_C).contains(&self.temp_margin_c)
        {
            return Err(PolicyError::BadMargin(self.temp_margin_c));
        }
        for name in PolicyName::ALL {
            self.weights.of(name).check(name)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "scheduling policy {0:?} is unknown: use balanced, coolest, least-loaded, spread or pack"
    )]
    UnknownName(String),
    #[error("weight {term} = {value} of policy {policy} is invalid: use a number ≥ 0")]
    BadWeight {
        policy: PolicyName,
        term: &'static str,
        value: f64,
    },
    #[error("policy {policy} weighs nothing: give at least one of its weights a value above 0")]
    NoWeight { policy: PolicyName },
    #[error("temperature margin {0} °C is invalid: use degrees from 0 to {MAX_TEMP_MARGIN_C}")]
    BadMargin(f64),
}

/// What an experiment asks of a node: the scheduling part of its spec,
/// stored with the experiment so a pass never decodes whole specs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Higher runs first.
    pub priority: u32,
    /// Bytes reserved on the node while the experiment is placed there.
    pub memory_max: Option<u64>,
    /// Percent of one core.
    pub cpu_quota_percent: Option<u32>,
    pub gpu: bool,
    /// Pinned to this node.
    pub node: Option<NodeName>,
    /// Labels the node must carry, each with exactly this value.
    pub labels: BTreeMap<LabelKey, LabelValue>,
    #[serde(with = "power_mode_text")]
    pub power_mode: Option<PowerMode>,
    /// The hottest the node's hottest zone may be, in °C.
    pub max_temp_c: Option<f64>,
}

impl Requirements {
    pub fn of(spec: &ExperimentSpec) -> Self {
        let r = spec.resources();
        let p = spec.placement();
        Self {
            priority: spec.priority(),
            memory_max: r.memory_max(),
            cpu_quota_percent: r.cpu_quota_percent(),
            gpu: r.gpu(),
            node: p.node().cloned(),
            labels: p.labels().clone(),
            power_mode: p.power_mode().cloned(),
            max_temp_c: p.max_temp_c(),
        }
    }
}

/// `PowerMode` as the text a researcher wrote ("MAXN", "2").
mod power_mode_text {
    use fleet_proto::spec::PowerMode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &Option<PowerMode>, s: S) -> Result<S::Ok, S::Error> {
        match mode {
            Some(m) => s.serialize_some(&m.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PowerMode>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| PowerMode::new(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A queued experiment as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub id: ExperimentId,
    /// Submission order: among equal priorities the lower goes first.
    pub seq: u64,
    pub req: Requirements,
}

/// Whether the controller hears from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// Connected, with telemetry younger than the heartbeat timeout.
    Fresh,
    /// Connected, but its telemetry is older than the heartbeat timeout.
    Stale,
    /// Not connected (never yet, unreachable or lost).
    Down,
}

/// The node's own thermal guard state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Thermal {
    Normal,
    Warn,
    Critical,
    Unknown,
}

impl fmt::Display for Thermal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Normal => "normal",
            Self::Warn => "warn",
            Self::Critical => "critical",
            Self::Unknown => "unknown",
        })
    }
}

/// An nvpmodel mode a node offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeInfo {
    pub id: u32,
    pub name: String,
    /// Switching to it from the node's current mode needs a reboot.
    pub needs_reboot: bool,
}

impl ModeInfo {
    fn matches(&self, wanted: &PowerMode) -> bool {
        match (wanted.id(), wanted.name()) {
            (Some(id), _) => self.id == id,
            (None, Some(name)) => self.name == name,
            (None, None) => false,
        }
    }
}

/// A node as the scheduler sees it: stored state (cordon, drain, labels)
/// joined with live telemetry and what is placed there now.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: NodeName,
    pub link: Link,
    pub cordoned: bool,
    pub draining: bool,
    pub thermal: Thermal,
    /// The node's guard accepts new work (false at or above warn).
    pub accepting: bool,
    /// The hottest online zone, in °C; `None` when no zone reads.
    pub hottest_c: Option<f64>,
    /// The node's warn temperature, in °C.
    pub warn_c: f64,
    pub memory_total: u64,
    /// The sum of the `memory_max` of the experiments placed there.
    pub memory_reserved: u64,
    pub slots_used: u32,
    pub slots_max: u32,
    pub cpu_cores: u32,
    /// Busy CPU of the whole board, 0..=100.
    pub cpu_percent: f64,
    pub labels: BTreeMap<LabelKey, LabelValue>,
    /// Empty when the node has no nvpmodel.
    pub power_modes: Vec<ModeInfo>,
    /// The current mode's id.
    pub power_mode: Option<u32>,
    /// Mode ids the experiments placed there asked for: switching the node
    /// to another mode would disturb them.
    pub modes_in_use: BTreeSet<u32>,
    pub gpu: bool,
}

const FILTERS: usize = 12;

/// One filter, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    Link,
    Cordoned,
    Draining,
    Thermal,
    Temperature,
    MaxTemp,
    Memory,
    Slots,
    Pin,
    Labels,
    PowerMode,
    Gpu,
}

impl Filter {
    pub const ALL: [Filter; FILTERS] = [
        Self::Link,
        Self::Cordoned,
        Self::Draining,
        Self::Thermal,
        Self::Temperature,
        Self::MaxTemp,
        Self::Memory,
        Self::Slots,
        Self::Pin,
        Self::Labels,
        Self::PowerMode,
        Self::Gpu,
    ];

    /// Short form for a summary: "2 too hot, 1 cordoned".
    pub fn short(self) -> &'static str {
        match self {
            Self::Link => "not reachable",
            Self::Cordoned => "cordoned",
            Self::Draining => "draining",
            Self::Thermal => "held by the thermal guard",
            Self::Temperature => "too hot",
            Self::MaxTemp => "above the experiment's max_temp_c",
            Self::Memory => "short of memory",
            Self::Slots => "full",
            Self::Pin => "not the pinned node",
            Self::Labels => "without the labels",
            Self::PowerMode => "power mode unavailable",
            Self::Gpu => "without a GPU",
        }
    }
}

/// Why a node cannot take an experiment, with the numbers that decided it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "filter")]
pub enum Rejection {
    NotConnected,
    Stale,
    Cordoned,
    Draining,
    ThermalGuard {
        state: Thermal,
        accepting: bool,
    },
    NoTemperature,
    TooHot {
        hottest_c: f64,
        warn_c: f64,
        margin_c: f64,
    },
    AboveMaxTemp {
        hottest_c: f64,
        max_temp_c: f64,
    },
    Memory {
        needed: u64,
        unreserved: u64,
        total: u64,
    },
    Slots {
        used: u32,
        max: u32,
    },
    Pinned {
        to: NodeName,
    },
    Labels {
        /// (key, wanted, what the node has)
        mismatched: Vec<(LabelKey, LabelValue, Option<LabelValue>)>,
    },
    NoNvpmodel {
        mode: String,
    },
    ModeUnknown {
        mode: String,
        available: Vec<String>,
    },
    ModeNeedsReboot {
        mode: String,
    },
    ModeInUse {
        mode: String,
        in_use: Vec<String>,
    },
    NoGpu,
}

impl Rejection {
    pub fn filter(&self) -> Filter {
        match self {
            Self::NotConnected | Self::Stale => Filter::Link,
            Self::Cordoned => Filter::Cordoned,
            Self::Draining => Filter::Draining,
            Self::ThermalGuard { .. } => Filter::Thermal,
            Self::NoTemperature | Self::TooHot { .. } => Filter::Temperature,
            Self::AboveMaxTemp { .. } => Filter::MaxTemp,
            Self::Memory { .. } => Filter::Memory,
            Self::Slots { .. } => Filter::Slots,
            Self::Pinned { .. } => Filter::Pin,
            Self::Labels { .. } => Filter::Labels,
            Self::NoNvpmodel { .. }
            | Self::ModeUnknown { .. }
            | Self::ModeNeedsReboot { .. }
            | Self::ModeInUse { .. } => Filter::PowerMode,
            Self::NoGpu => Filter::Gpu,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotConnected => f.write_str("not connected"),
            Self::Stale => f.write_str("telemetry is stale"),
            Self::Cordoned => f.write_str("cordoned"),
            Self::Draining => f.write_str("draining"),
            Self::ThermalGuard { state, accepting } => {
                if *accepting {
                    write!(f, "thermal state is {state}")
                } else {
                    write!(
                        f,
                        "its thermal guard refuses new work (thermal state {state})"
                    )
                }
            }
            Self::NoTemperature => f.write_str("no thermal zone reads a temperature"),
            Self::TooHot {
                hottest_c,
                warn_c,
                margin_c,
            } => write!(
                f,
                "too hot: {hottest_c:.1} °C ≥ warn {warn_c:.1} − margin {margin_c:.1}"
            ),
            Self::AboveMaxTemp {
                hottest_c,
                max_temp_c,
            } => write!(
                f,
                "too hot for this experiment: {hottest_c:.1} °C ≥ its max_temp_c {max_temp_c:.1}"
            ),
            Self::Memory {
                needed,
                unreserved,
                total,
            } => write!(
                f,
                "not enough memory: needs {}, {} of {} unreserved",
                bytes(*needed),
                bytes(*unreserved),
                bytes(*total)
            ),
            Self::Slots { used, max } => write!(f, "no free slot: {used} of {max} used"),
            Self::Pinned { to } => write!(f, "the experiment is pinned to {to}"),
            Self::Labels { mismatched } => {
                f.write_str("labels do not match: ")?;
                for (i, (key, wanted, has)) in mismatched.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match has {
                        Some(has) => write!(f, "{key}={wanted} (node has {key}={has})")?,
                        None => write!(f, "{key}={wanted} (node has no {key})")?,
                    }
                }
                Ok(())
            }
            Self::NoNvpmodel { mode } => {
                write!(
                    f,
                    "power mode {mode} asked for, but the node has no nvpmodel"
                )
            }
            Self::ModeUnknown { mode, available } => write!(
                f,
                "power mode {mode} does not exist here (modes: {})",
                available.join(", ")
            ),
            Self::ModeNeedsReboot { mode } => {
                write!(f, "switching to power mode {mode} needs a reboot")
            }
            Self::ModeInUse { mode, in_use } => write!(
                f,
                "switching to power mode {mode} would disturb experiments running in {}",
                in_use.join(", ")
            ),
            Self::NoGpu => f.write_str("no GPU"),
        }
    }
}

/// Bytes for people: "7.5 GiB", "512 MiB".
fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    const GIB: f64 = 1024.0 * MIB;
    // Precision is irrelevant at these magnitudes.
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    if n >= GIB {
        format!("{:.1} GiB", n / GIB)
    } else {
        format!("{:.0} MiB", n / MIB)
    }
}

const TERMS: usize = 5;

/// A score term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Term {
    Temperature,
    Load,
    Memory,
    Spread,
    Pack,
}

impl Term {
    pub const ALL: [Term; TERMS] = [
        Self::Temperature,
        Self::Load,
        Self::Memory,
        Self::Spread,
        Self::Pack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Temperature => "temperature",
            Self::Load => "load",
            Self::Memory => "memory",
            Self::Spread => "spread",
            Self::Pack => "pack",
        }
    }
}

/// A node's score for one experiment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// The weighted mean of the terms, in [0, 1].
    pub total: f64,
    /// Each term's value in [0, 1], in [`Term::ALL`] order.
    pub terms: [f64; TERMS],
    /// The weights they were combined with.
    pub weights: [f64; TERMS],
}

/// One node as the scheduler saw it for one experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeVerdict {
    pub node: NodeName,
    /// Every filter the node failed; empty when it fits.
    pub rejections: Vec<Rejection>,
    /// Present when it fits.
    pub score: Option<Score>,
}

impl NodeVerdict {
    pub fn fits(&self) -> bool {
        self.rejections.is_empty()
    }
}

/// What the scheduler decided for one experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    Placed {
        node: NodeName,
        /// The node must switch to this mode before the experiment starts.
        switch_to: Option<ModeInfo>,
    },
    /// No node passes every filter.
    Unschedulable,
    /// With `strict_order`: an earlier experiment that cannot be placed
    /// holds this one.
    Blocked { behind: ExperimentId },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub experiment: ExperimentId,
    pub policy: PolicyName,
    pub outcome: Outcome,
    /// The nodes shown, those that fit best first, then the others by name:
    /// every node with [`Detail::Full`]; with [`Detail::Compact`] the
    /// [`COMPACT_FITTING`] best that fit (the chosen one first) and, for
    /// each filter, the first [`COMPACT_PER_FILTER`] nodes by name that
    /// failed it. A node shown is shown whole, with all its reasons.
    pub verdicts: Vec<NodeVerdict>,
    /// How every node fared, shown or not. Absent from decisions stored
    /// before it existed (their `verdicts` hold every node).
    #[serde(default)]
    pub tally: Tally,
}

/// Counts over every node of a decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Nodes considered.
    pub nodes: u32,
    /// Nodes that passed every filter.
    pub fit: u32,
    /// Nodes that failed each filter; a node failing two filters counts
    /// under both, one failing two checks of one filter once.
    pub rejected: BTreeMap<Filter, u32>,
}

impl Tally {
    /// The counts of a decision that lists every node.
    pub fn of(verdicts: &[NodeVerdict]) -> Self {
        let mut t = Tally::default();
        for v in verdicts {
            let set: BTreeSet<Filter> = v.rejections.iter().map(Rejection::filter).collect();
            t.add(set.into_iter());
        }
        t
    }

    fn add(&mut self, failed: impl Iterator<Item = Filter>) {
        self.nodes += 1;
        let mut fits = true;
        for f in failed {
            fits = false;
            *self.rejected.entry(f).or_default() += 1;
        }
        if fits {
            self.fit += 1;
        }
    }
}

/// How much of every node's verdict a decision keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Every node, sorted: for a person asking (dry run, Explain's `now`).
    Full,
    /// The nodes that matter and counts for the rest: what a pass stores.
    Compact,
}

/// Fitting nodes a compact decision shows: the chosen one and the next
/// best.
pub const COMPACT_FITTING: usize = 5;
/// Nodes a compact decision shows for each filter, the first by name that
/// failed it.
pub const COMPACT_PER_FILTER: u32 = 3;

impl Decision {
    pub fn node(&self) -> Option<&NodeName> {
        match &self.outcome {
            Outcome::Placed { node, .. } => Some(node),
            Outcome::Unschedulable | Outcome::Blocked { .. } => None,
        }
    }

    /// How every node fared; counted from the verdicts for a decision
    /// stored before decisions carried their counts.
    pub fn tally(&self) -> Tally {
        if self.tally.nodes == 0 && !self.verdicts.is_empty() {
            Tally::of(&self.verdicts)
        } else {
            self.tally.clone()
        }
    }

    /// Whether every node considered is in `verdicts`.
    pub fn lists_every_node(&self) -> bool {
        self.verdicts.len() >= self.tally().nodes as usize
    }

    /// For people: "placed on jetson-03 (score 0.82, balanced)",
    /// "no node fits: 2 too hot, 1 cordoned".
    pub fn summary(&self) -> String {
        match &self.outcome {
            Outcome::Placed { node, switch_to } => {
                let score = self
                    .verdicts
                    .iter()
                    .find(|v| &v.node == node)
                    .and_then(|v| v.score)
                    .map_or(0.0, |s| s.total);
                let mut s = format!("placed on {node} (score {score:.2}, {})", self.policy);
                if let Some(mode) = switch_to {
                    s.push_str(&format!(", after switching it to power mode {}", mode.name));
                }
                s
            }
            Outcome::Unschedulable => {
                let tally = self.tally();
                if tally.nodes == 0 {
                    return "no node fits: the fleet has no nodes".to_owned();
                }
                let parts: Vec<String> = tally
                    .rejected
                    .iter()
                    .map(|(filter, n)| format!("{n} {}", filter.short()))
                    .collect();
                format!("no node fits: {}", parts.join(", "))
            }
            Outcome::Blocked { behind } => {
                format!("waiting behind {behind}, which cannot be placed yet (strict order)")
            }
        }
    }
}

/// What one pass has done to a node so far.
#[derive(Debug, Clone)]
struct Usage {
    memory_reserved: u64,
    slots_used: u32,
    cpu_percent: f64,
    power_mode: Option<u32>,
    modes_in_use: BTreeSet<u32>,
}

impl Usage {
    fn of(node: &NodeView) -> Self {
        Self {
            memory_reserved: node.memory_reserved,
            slots_used: node.slots_used,
            cpu_percent: node.cpu_percent,
            power_mode: node.power_mode,
            modes_in_use: node.modes_in_use.clone(),
        }
    }
}

/// Decides where each pending experiment goes, in priority then age order,
/// keeping every node's verdict in every decision ([`Detail::Full`]).
///
/// Returns one decision per experiment in that order. Placements are not
/// stored here: the caller stores them (with a new epoch each) and may stop
/// at the first one it cannot store; the next pass re-reads everything.
pub fn plan(pending: &[Pending], nodes: &[NodeView], policy: &Policy) -> Vec<Decision> {
    plan_with(pending, nodes, policy, Detail::Full)
}

/// [`plan`], keeping as much of each node's verdict as `detail` says. The
/// placements are the same whatever the detail.
pub fn plan_with(
    pending: &[Pending],
    nodes: &[NodeView],
    policy: &Policy,
    detail: Detail,
) -> Vec<Decision> {
    let mut out = Vec::with_capacity(pending.len());
    run(
        pending,
        nodes,
        policy,
        |_| detail,
        |d| {
            out.push(d);
            true
        },
    );
    out
}

/// The decision for one experiment of the queue, with every node's
/// verdict, as the pass that decides it would make it: the experiments
/// ahead of it are planned compactly, those behind it not at all.
pub fn plan_for(
    pending: &[Pending],
    nodes: &[NodeView],
    policy: &Policy,
    id: &ExperimentId,
) -> Option<Decision> {
    let mut found = None;
    run(
        pending,
        nodes,
        policy,
        |p| {
            if &p.id == id {
                Detail::Full
            } else {
                Detail::Compact
            }
        },
        |d| {
            if &d.experiment == id {
                found = Some(d);
                false
            } else {
                true
            }
        },
    );
    found
}

/// The pass itself: decides each experiment in queue order with the detail
/// `detail_of` asks for and hands the decision to `emit`, which returns
/// whether to go on.
fn run(
    pending: &[Pending],
    nodes: &[NodeView],
    policy: &Policy,
    detail_of: impl Fn(&Pending) -> Detail,
    mut emit: impl FnMut(Decision) -> bool,
) {
    let mut order: Vec<&Pending> = pending.iter().collect();
    order.sort_by(|a, b| queue_order(a, b));

    let mut nodes: Vec<&NodeView> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    debug_assert!(
        nodes.windows(2).all(|w| w[0].name != w[1].name),
        "node names are unique"
    );
    let mut usage: Vec<Usage> = nodes.iter().map(|n| Usage::of(n)).collect();
    let weights = policy.weights();
    let mut board: Option<Board> = None;

    let mut blocker: Option<&ExperimentId> = None;
    for p in order {
        // Experiments that ask the same find the same verdicts, but for
        // the node the last placement changed (refreshed below).
        let b = match &mut board {
            Some(b) if b.req == p.req => b,
            _ => board.insert(Board::new(&p.req, &nodes, &usage, policy, &weights)),
        };
        let shown = b.survey(p, &nodes, &usage, policy, detail_of(p));

        let outcome = match (blocker, shown.best) {
            (Some(behind), _) => Outcome::Blocked {
                behind: behind.clone(),
            },
            (None, Some(i)) => {
                let switch_to = mode_switch(&p.req, nodes[i], &usage[i]);
                consume(&mut usage[i], nodes[i], &p.req, switch_to.as_ref());
                b.refresh(i, &nodes, &usage, policy, &weights);
                Outcome::Placed {
                    node: nodes[i].name.clone(),
                    switch_to,
                }
            }
            (None, None) => {
                if policy.strict_order {
                    blocker = Some(&p.id);
                }
                Outcome::Unschedulable
            }
        };
        let go_on = emit(Decision {
            experiment: p.id.clone(),
            policy: policy.policy,
            outcome,
            verdicts: shown.verdicts,
            tally: shown.tally,
        });
        if !go_on {
            return;
        }
    }
}

/// What one experiment's look over the nodes found.
struct Survey {
    /// The index of the best node that fits.
    best: Option<usize>,
    /// In [`Decision::verdicts`] order.
    verdicts: Vec<NodeVerdict>,
    tally: Tally,
}

/// A fitting node in the order of choice: best score first, equal scores by
/// name (which is index order).
#[derive(Debug, Clone, Copy)]
struct Ranked {
    total: f64,
    index: usize,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .total
            .total_cmp(&self.total)
            .then(self.index.cmp(&other.index))
    }
}

/// Every node checked against one experiment's requirements, kept in the
/// order a decision needs: the nodes that fit by rank, the others under
/// each filter they failed, by name. Only the words of the nodes shown are
/// written ([`Board::survey`]).
struct Board {
    req: Requirements,
    failed: Vec<FilterSet>,
    scores: Vec<Option<Score>>,
    fitting: BTreeSet<Ranked>,
    by_filter: [BTreeSet<usize>; FILTERS],
}

impl Board {
    fn new(
        req: &Requirements,
        nodes: &[&NodeView],
        usage: &[Usage],
        policy: &Policy,
        weights: &Weights,
    ) -> Self {
        let mut b = Board {
            req: req.clone(),
            failed: vec![FilterSet::default(); nodes.len()],
            scores: vec![None; nodes.len()],
            fitting: BTreeSet::new(),
            by_filter: std::array::from_fn(|_| BTreeSet::new()),
        };
        for i in 0..nodes.len() {
            b.check(i, nodes, usage, policy, weights);
        }
        b
    }

    /// Checks node `i` and files it.
    fn check(
        &mut self,
        i: usize,
        nodes: &[&NodeView],
        usage: &[Usage],
        policy: &Policy,
        weights: &Weights,
    ) {
        let margin_c = policy.temp_margin_c;
        let mut failed = FilterSet::default();
        check(&self.req, nodes[i], &usage[i], margin_c, &mut failed);
        let score = failed
            .is_empty()
            .then(|| score(&self.req, nodes[i], &usage[i], margin_c, weights));
        match score {
            Some(s) => {
                self.fitting.insert(Ranked {
                    total: s.total,
                    index: i,
                });
            }
            None => {
                for f in failed.iter() {
                    self.by_filter[f as usize].insert(i);
                }
            }
        }
        self.failed[i] = failed;
        self.scores[i] = score;
    }

    /// Node `i`'s usage changed: checks it again.
    fn refresh(
        &mut self,
        i: usize,
        nodes: &[&NodeView],
        usage: &[Usage],
        policy: &Policy,
        weights: &Weights,
    ) {
        if let Some(s) = self.scores[i] {
            self.fitting.remove(&Ranked {
                total: s.total,
                index: i,
            });
        }
        for f in self.failed[i].iter() {
            self.by_filter[f as usize].remove(&i);
        }
        self.check(i, nodes, usage, policy, weights);
    }

    /// The decision's verdicts and counts: every node with
    /// [`Detail::Full`]; with [`Detail::Compact`] the [`COMPACT_FITTING`]
    /// best that fit and, for each filter, the first
    /// [`COMPACT_PER_FILTER`] by name that failed it.
    fn survey(
        &self,
        p: &Pending,
        nodes: &[&NodeView],
        usage: &[Usage],
        policy: &Policy,
        detail: Detail,
    ) -> Survey {
        let (keep_fitting, rejected): (usize, Vec<usize>) = match detail {
            Detail::Full => (
                usize::MAX,
                (0..nodes.len())
                    .filter(|i| !self.failed[*i].is_empty())
                    .collect(),
            ),
            Detail::Compact => {
                let per = COMPACT_PER_FILTER as usize;
                let shown: BTreeSet<usize> = self
                    .by_filter
                    .iter()
                    .flat_map(|set| set.iter().take(per).copied())
                    .collect();
                (COMPACT_FITTING, shown.into_iter().collect())
            }
        };
        let fitting = self.fitting.iter().take(keep_fitting);
        let mut verdicts =
            Vec::with_capacity(keep_fitting.min(self.fitting.len()) + rejected.len());
        verdicts.extend(fitting.map(|r| NodeVerdict {
            node: nodes[r.index].name.clone(),
            rejections: Vec::new(),
            score: self.scores[r.index],
        }));
        verdicts.extend(rejected.into_iter().map(|i| {
            let mut rejections = Vec::new();
            check(
                &p.req,
                nodes[i],
                &usage[i],
                policy.temp_margin_c,
                &mut rejections,
            );
            NodeVerdict {
                node: nodes[i].name.clone(),
                rejections,
                score: None,
            }
        }));
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Survey {
            best: self.fitting.first().map(|r| r.index),
            verdicts,
            tally: Tally {
                nodes: count(nodes.len()),
                fit: count(self.fitting.len()),
                rejected: Filter::ALL
                    .into_iter()
                    .zip(&self.by_filter)
                    .filter(|(_, set)| !set.is_empty())
                    .map(|(f, set)| (f, count(set.len())))
                    .collect(),
            },
        }
    }
}

/// Priority (higher first), then submission order, then id.
pub fn queue_order(a: &Pending, b: &Pending) -> Ordering {
    b.req
        .priority
        .cmp(&a.req.priority)
        .then(a.seq.cmp(&b.seq))
        .then_with(|| a.id.cmp(&b.id))
}

/// Where the filters put what they find: the rejections in full, or only
/// which filters failed.
trait Sink {
    fn reject(&mut self, filter: Filter, why: impl FnOnce() -> Rejection);
}

impl Sink for Vec<Rejection> {
    fn reject(&mut self, filter: Filter, why: impl FnOnce() -> Rejection) {
        let r = why();
        debug_assert_eq!(r.filter(), filter);
        self.push(r);
    }
}

/// The filters a node failed, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct FilterSet(u16);

impl FilterSet {
    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn iter(self) -> impl Iterator<Item = Filter> {
        Filter::ALL
            .into_iter()
            .filter(move |f| self.0 & (1 << *f as u16) != 0)
    }
}

impl Sink for FilterSet {
    fn reject(&mut self, filter: Filter, _why: impl FnOnce() -> Rejection) {
        self.0 |= 1 << filter as u16;
    }
}

/// Runs every filter: the one definition of what fits, whether the
/// reasons are wanted in full or only counted.
fn check(req: &Requirements, node: &NodeView, usage: &Usage, margin_c: f64, out: &mut impl Sink) {
    match node.link {
        Link::Fresh => {}
        Link::Stale => out.reject(Filter::Link, || Rejection::Stale),
        Link::Down => out.reject(Filter::Link, || Rejection::NotConnected),
    }
    if node.cordoned {
        out.reject(Filter::Cordoned, || Rejection::Cordoned);
    }
    if node.draining {
        out.reject(Filter::Draining, || Rejection::Draining);
    }
    if node.thermal != Thermal::Normal || !node.accepting {
        out.reject(Filter::Thermal, || Rejection::ThermalGuard {
            state: node.thermal,
            accepting: node.accepting,
        });
    }
    match node.hottest_c {
        None => out.reject(Filter::Temperature, || Rejection::NoTemperature),
        Some(hottest_c) => {
            if hottest_c >= node.warn_c - margin_c {
                out.reject(Filter::Temperature, || Rejection::TooHot {
                    hottest_c,
                    warn_c: node.warn_c,
                    margin_c,
                });
            }
            if let Some(max_temp_c) = req.max_temp_c {
                if hottest_c >= max_temp_c {
                    out.reject(Filter::MaxTemp, || Rejection::AboveMaxTemp {
                        hottest_c,
                        max_temp_c,
                    });
                }
            }
        }
    }
    let needed = req.memory_max.unwrap_or(0);
    let unreserved = node.memory_total.saturating_sub(usage.memory_reserved);
    if needed > unreserved {
        out.reject(Filter::Memory, || Rejection::Memory {
            needed,
            unreserved,
            total: node.memory_total,
        });
    }
    if usage.slots_used >= node.slots_max {
        out.reject(Filter::Slots, || Rejection::Slots {
            used: usage.slots_used,
            max: node.slots_max,
        });
    }
    if let Some(pin) = &req.node {
        if *pin != node.name {
            out.reject(Filter::Pin, || Rejection::Pinned { to: pin.clone() });
        }
    }
    if req
        .labels
        .iter()
        .any(|(k, v)| node.labels.get(k) != Some(v))
    {
        out.reject(Filter::Labels, || Rejection::Labels {
            mismatched: req
                .labels
                .iter()
                .filter(|(k, v)| node.labels.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone(), node.labels.get(k).cloned()))
                .collect(),
        });
    }
    if let Some(r) = power_mode_rejection(req, node, usage) {
        out.reject(Filter::PowerMode, || r);
    }
    if req.gpu && !node.gpu {
        out.reject(Filter::Gpu, || Rejection::NoGpu);
    }
}

fn power_mode_rejection(req: &Requirements, node: &NodeView, usage: &Usage) -> Option<Rejection> {
    let wanted = req.power_mode.as_ref()?;
    if node.power_modes.is_empty() {
        return Some(Rejection::NoNvpmodel {
            mode: wanted.to_string(),
        });
    }
    let Some(mode) = node.power_modes.iter().find(|m| m.matches(wanted)) else {
        return Some(Rejection::ModeUnknown {
            mode: wanted.to_string(),
            available: node
                .power_modes
                .iter()
                .map(|m| format!("{} {}", m.id, m.name))
                .collect(),
        });
    };
    if usage.power_mode == Some(mode.id) {
        return None;
    }
    if mode.needs_reboot {
        return Some(Rejection::ModeNeedsReboot {
            mode: mode.name.clone(),
        });
    }
    let others: Vec<String> = usage
        .modes_in_use
        .iter()
        .filter(|id| **id != mode.id)
        .map(|id| mode_name(node, *id))
        .collect();
    if !others.is_empty() {
        return Some(Rejection::ModeInUse {
            mode: mode.name.clone(),
            in_use: others,
        });
    }
    None
}

fn mode_name(node: &NodeView, id: u32) -> String {
    node.power_modes
        .iter()
        .find(|m| m.id == id)
        .map_or_else(|| id.to_string(), |m| m.name.clone())
}

/// The mode the node must switch to for this experiment, if any. Only
/// called for a node that passed the filters.
fn mode_switch(req: &Requirements, node: &NodeView, usage: &Usage) -> Option<ModeInfo> {
    let wanted = req.power_mode.as_ref()?;
    let mode = node.power_modes.iter().find(|m| m.matches(wanted))?;
    (usage.power_mode != Some(mode.id)).then(|| mode.clone())
}

/// Uses up what the experiment takes from the node for the rest of the pass.
fn consume(usage: &mut Usage, node: &NodeView, req: &Requirements, switch_to: Option<&ModeInfo>) {
    usage.memory_reserved = usage
        .memory_reserved
        .saturating_add(req.memory_max.unwrap_or(0));
    usage.slots_used = usage.slots_used.saturating_add(1);
    usage.cpu_percent = (usage.cpu_percent + added_cpu_percent(req, node)).min(100.0);
    if let Some(mode) = switch_to {
        usage.power_mode = Some(mode.id);
    }
    if let Some(wanted) = &req.power_mode {
        if let Some(mode) = node.power_modes.iter().find(|m| m.matches(wanted)) {
            usage.modes_in_use.insert(mode.id);
        }
    }
}

/// The share of the whole board (percent) the experiment is expected to use.
fn added_cpu_percent(req: &Requirements, node: &NodeView) -> f64 {
    let one_core = req
        .cpu_quota_percent
        .map_or(ASSUMED_CPU_PERCENT_OF_ONE_CORE, f64::from);
    one_core / f64::from(node.cpu_cores.max(1))
}

fn score(
    req: &Requirements,
    node: &NodeView,
    usage: &Usage,
    margin_c: f64,
    weights: &Weights,
) -> Score {
    let unit = |x: f64| {
        if x.is_finite() {
            x.clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    // u64 → f64 loses precision only past 2^53 bytes.
    #[allow(clippy::cast_precision_loss)]
    let fraction = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    };

    let mut limit_c = node.warn_c - margin_c;
    if let Some(max) = req.max_temp_c {
        limit_c = limit_c.min(max);
    }
    // Headroom as a share of the limit: a node at 40 °C under a 70 °C limit
    // has 0.43; passing the filters means the headroom is positive.
    let temperature = match node.hottest_c {
        Some(hottest_c) if limit_c > 0.0 => unit((limit_c - hottest_c) / limit_c),
        _ => 0.0,
    };
    let load = unit(1.0 - usage.cpu_percent / 100.0);
    let reserved_after = usage
        .memory_reserved
        .saturating_add(req.memory_max.unwrap_or(0));
    let memory = unit(1.0 - fraction(reserved_after, node.memory_total));
    let slots_max = u64::from(node.slots_max);
    let spread = unit(1.0 - fraction(u64::from(usage.slots_used), slots_max));
    let pack = unit(
        (fraction(reserved_after, node.memory_total)
            + fraction(u64::from(usage.slots_used) + 1, slots_max))
            / 2.0,
    );

    let terms = [temperature, load, memory, spread, pack];
    let w = weights.as_array();
    let sum_w: f64 = w.iter().sum();
    let total = if sum_w > 0.0 {
        terms.iter().zip(&w).map(|(t, w)| t * w).sum::<f64>() / sum_w
    } else {
        0.0
    };
    Score {
        total,
        terms,
        weights: w,
    }
}

#[cfg(test)]
mod tests;
