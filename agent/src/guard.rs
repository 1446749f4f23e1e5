//! The local thermal guard: a state machine over per-zone temperatures that decides,
//! with no controller in the loop, when the board stops taking work, steps its power
//! mode down, stops its experiments, and when it recovers.
//!
//! Pure logic: it is fed [`GuardInput`]s (made from [`Sample`]s) with the time they were
//! taken, and answers with the [`Transition`] to carry out, if any. Carrying the actions
//! out (refusing starts, running nvpmodel, stopping units) is the caller's job.
//!
//! - Normal → Warn when a zone reaches its `warn` limit: refuse new experiments and,
//!   if a cooler mode is configured, switch to it. Normal/Warn → Critical at `critical`:
//!   stop every experiment gracefully. Going up is immediate.
//! - Going down needs the readings to stay below `limit − hysteresis` for `cooldown`:
//!   hysteresis keeps a reading that wobbles around a limit from flapping the state, and
//!   the cooldown keeps a brief dip from restoring power to a board that is still warm.
//!   Back at Normal the power mode is restored and experiments are accepted again.
//! - Offline and ignored zones never trigger. A zone that stops reporting (offline,
//!   hung) keeps its last reading for `offline_hold`, so a hot zone going dark cannot
//!   by itself bring the state down; after that the other zones decide (on Orin `tj`
//!   is the maximum of the SoC zones and keeps reporting). With no reading at all, the
//!   state stays as it is.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::hw::{normalize_zone_name, CurrentMode, ModeRef, Sample};

pub const DEFAULT_WARN_C: f64 = 75.0;
pub const DEFAULT_CRITICAL_C: f64 = 85.0;
pub const DEFAULT_HYSTERESIS_C: f64 = 5.0;
/// How long readings must stay below a state's exit limit before the state steps down.
pub const DEFAULT_COOLDOWN_S: u64 = 30;
/// How long a zone that stops reporting keeps voting with its last reading.
pub const DEFAULT_OFFLINE_HOLD_S: u64 = 60;

/// The `[guard]` part of the agent's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    pub warn_c: f64,
    pub critical_c: f64,
    pub hysteresis_c: f64,
    pub cooldown_s: u64,
    pub offline_hold_s: u64,
    /// Zones that never count (by normalised name, `tboard`, or as the kernel spells
    /// them, `Tboard_tegra`).
    pub ignore_zones: Vec<String>,
    /// The nvpmodel mode to switch to at warn, by id or name. Pick one that switches
    /// without a reboot from the modes in use (on AGX Orin only MAXN ↔ MODE_50W share
    /// their GPU power-gating masks); a switch that needs a reboot is declined.
    pub cool_mode: Option<ModeRef>,
    /// Per-zone limits, by normalised zone name (`gpu`), overriding the ones above.
    pub zones: BTreeMap<String, ZoneLimits>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            warn_c: DEFAULT_WARN_C,
            critical_c: DEFAULT_CRITICAL_C,
            hysteresis_c: DEFAULT_HYSTERESIS_C,
            cooldown_s: DEFAULT_COOLDOWN_S,
            offline_hold_s: DEFAULT_OFFLINE_HOLD_S,
            ignore_zones: Vec::new(),
            cool_mode: None,
            zones: BTreeMap::new(),
        }
    }
}

/// Limits for one zone; unset fields fall back to the guard-wide ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneLimits {
    pub warn_c: Option<f64>,
    pub critical_c: Option<f64>,
    pub hysteresis_c: Option<f64>,
}

/// The limits in force for one zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub warn_c: f64,
    pub critical_c: f64,
    pub hysteresis_c: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GuardConfigError {
    #[error("guard: {field} is {value}, not a finite temperature")]
    NotFinite { field: String, value: f64 },
    #[error("guard: warn_c ({warn_c}) must be below critical_c ({critical_c}){}", for_zone(.zone))]
    WarnNotBelowCritical {
        zone: Option<String>,
        warn_c: f64,
        critical_c: f64,
    },
    #[error("guard: hysteresis_c ({hysteresis_c}) must be zero or more{}", for_zone(.zone))]
    NegativeHysteresis {
        zone: Option<String>,
        hysteresis_c: f64,
    },
}

fn for_zone(zone: &Option<String>) -> String {
    zone.as_ref()
        .map(|z| format!(" for zone {z:?}"))
        .unwrap_or_default()
}

impl GuardConfig {
    /// The limits for a zone (any spelling of its name).
    pub fn limits(&self, zone: &str) -> Limits {
        let name = normalize_zone_name(zone);
        let own = self
            .zones
            .iter()
            .find(|(k, _)| normalize_zone_name(k) == name)
            .map(|(_, v)| v);
        Limits {
            warn_c: own.and_then(|l| l.warn_c).unwrap_or(self.warn_c),
            critical_c: own.and_then(|l| l.critical_c).unwrap_or(self.critical_c),
            hysteresis_c: own
                .and_then(|l| l.hysteresis_c)
                .unwrap_or(self.hysteresis_c),
        }
    }

    pub fn is_ignored(&self, zone: &str) -> bool {
        crate::hw::thermal::is_ignored(zone, &self.ignore_zones)
    }

    pub fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cooldown_s)
    }

    pub fn offline_hold(&self) -> Duration {
        Duration::from_secs(self.offline_hold_s)
    }

    /// Checks the limits, guard-wide and per zone.
    pub fn validate(&self) -> Result<(), GuardConfigError> {
        let check = |zone: Option<&str>, limits: Limits| {
            for (field, value) in [
                ("warn_c", limits.warn_c),
                ("critical_c", limits.critical_c),
                ("hysteresis_c", limits.hysteresis_c),
            ] {
                if !value.is_finite() {
                    return Err(GuardConfigError::NotFinite {
                        field: match zone {
                            Some(z) => format!("zones.{z}.{field}"),
                            None => field.to_string(),
                        },
                        value,
                    });
                }
            }
            if limits.warn_c >= limits.critical_c {
                return Err(GuardConfigError::WarnNotBelowCritical {
                    zone: zone.map(str::to_string),
                    warn_c: limits.warn_c,
                    critical_c: limits.critical_c,
                });
            }
            if limits.hysteresis_c < 0.0 {
                return Err(GuardConfigError::NegativeHysteresis {
                    zone: zone.map(str::to_string),
                    hysteresis_c: limits.hysteresis_c,
                });
            }
            Ok(())
        };
        check(
            None,
            Limits {
                warn_c: self.warn_c,
                critical_c: self.critical_c,
                hysteresis_c: self.hysteresis_c,
            },
        )?;
        for zone in self.zones.keys() {
            check(Some(zone), self.limits(zone))?;
        }
        Ok(())
    }
}

/// The board's thermal state, ordered from cool to hot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThermalState {
    Normal,
    Warn,
    Critical,
}

impl fmt::Display for ThermalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThermalState::Normal => "normal",
            ThermalState::Warn => "warn",
            ThermalState::Critical => "critical",
        })
    }
}

/// One zone as the guard sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneTemp {
    pub name: String,
    /// None when the zone is offline (or its read hung).
    pub celsius: Option<f64>,
}

/// What the guard is fed.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardInput {
    pub at: Instant,
    pub zones: Vec<ZoneTemp>,
    /// The mode the board runs, when known: to know whether a step down is needed and
    /// what to restore.
    pub power_mode: Option<CurrentMode>,
}

impl GuardInput {
    /// The guard's view of a sample taken at `at`. Zones the hardware layer ignored
    /// are left out; offline zones are kept, without a temperature.
    pub fn from_sample(sample: &Sample, at: Instant) -> GuardInput {
        GuardInput {
            at,
            zones: sample
                .zones
                .iter()
                .filter(|z| z.state != crate::hw::ZoneState::Ignored)
                .map(|z| ZoneTemp {
                    name: z.name.clone(),
                    celsius: z.celsius(),
                })
                .collect(),
            power_mode: sample.power_mode.clone(),
        }
    }
}

/// Something the caller must do because of a transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAction {
    /// Stop accepting new experiments.
    RefuseNewStarts,
    /// Switch nvpmodel to the configured cooler mode (never allowing a reboot).
    SetPowerMode(ModeRef),
    /// Stop every experiment gracefully (SIGTERM, then the unit's stop timeout) and
    /// report each as disrupted, not failed.
    StopAllGracefully,
    /// Switch nvpmodel back to the mode the board ran before the step down.
    RestorePowerMode(ModeRef),
    /// Accept new experiments again.
    AcceptNewStarts,
}

/// A change of thermal state and what to do about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: ThermalState,
    pub to: ThermalState,
    /// The zone that decided it: the hottest one relative to its limits.
    pub zone: String,
    pub celsius: f64,
    pub at: Instant,
    pub actions: Vec<GuardAction>,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "thermal state {} -> {}: zone {} at {:.1} °C",
            self.from, self.to, self.zone, self.celsius
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct LastReading {
    celsius: f64,
    at: Instant,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct ThermalGuard {
    config: GuardConfig,
    state: ThermalState,
    /// The last online reading of each zone, by normalised name.
    last: HashMap<String, LastReading>,
    /// When the readings last asked for at least Warn, and at least Critical.
    last_warn_demand: Option<Instant>,
    last_critical_demand: Option<Instant>,
    /// The mode to go back to after a step down, and the mode stepped down to.
    stepped_down: Option<(ModeRef, ModeRef)>,
}

/// The level one reading asks for, given the current state: a zone already at or above
/// a level keeps asking for it until it falls below `limit − hysteresis`.
fn demand(t: f64, limits: Limits, current: ThermalState) -> ThermalState {
    let critical_exit = limits.critical_c - limits.hysteresis_c;
    let warn_exit = limits.warn_c - limits.hysteresis_c;
    if t >= limits.critical_c || (current == ThermalState::Critical && t >= critical_exit) {
        ThermalState::Critical
    } else if t >= limits.warn_c || (current >= ThermalState::Warn && t >= warn_exit) {
        ThermalState::Warn
    } else {
        ThermalState::Normal
    }
}

fn same_mode(mode: &ModeRef, current: &CurrentMode) -> bool {
    match mode {
        ModeRef::Id(id) => current.id == Some(*id),
        ModeRef::Name(name) => current.name.eq_ignore_ascii_case(name),
    }
}

impl ThermalGuard {
    pub fn new(config: GuardConfig) -> Result<ThermalGuard, GuardConfigError> {
        config.validate()?;
        Ok(ThermalGuard {
            config,
            state: ThermalState::Normal,
            last: HashMap::new(),
            last_warn_demand: None,
            last_critical_demand: None,
            stepped_down: None,
        })
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    pub fn state(&self) -> ThermalState {
        self.state
    }

    /// Whether new experiments may start.
    pub fn accepting(&self) -> bool {
        self.state == ThermalState::Normal
    }

    /// The readings the guard decides on at `at`: this input's online zones and, for
    /// zones that stopped reporting less than `offline_hold` ago, their last reading.
    fn effective(&self, at: Instant) -> Vec<(&str, f64)> {
        let mut zones: Vec<(&str, f64)> = self
            .last
            .iter()
            .filter(|(_, r)| at.saturating_duration_since(r.at) < self.config.offline_hold())
            .map(|(name, r)| (name.as_str(), r.celsius))
            .collect();
        zones.sort_by(|a, b| a.0.cmp(b.0));
        zones
    }

    /// Feeds one input; returns the transition it causes, if any.
    pub fn observe(&mut self, input: &GuardInput) -> Option<Transition> {
        let at = input.at;
        for zone in &input.zones {
            let name = normalize_zone_name(&zone.name);
            if self.config.is_ignored(&name) {
                continue;
            }
            if let Some(celsius) = zone.celsius.filter(|c| c.is_finite()) {
                self.last.insert(name, LastReading { celsius, at });
            }
        }
        let readings = self.effective(at);
        if readings.is_empty() {
            // Nothing to go by: keep the state, whatever it is.
            return None;
        }

        // The level asked for now, and the zone that asks for it (the hottest relative
        // to its own warn limit, among the zones asking for the top level).
        let mut target = ThermalState::Normal;
        let mut decider: Option<(&str, f64, f64)> = None;
        for (name, t) in &readings {
            let limits = self.config.limits(name);
            let level = demand(*t, limits, self.state);
            let margin = t - limits.warn_c;
            let better = match decider {
                None => true,
                Some((_, _, best_margin)) => {
                    level > target || (level == target && margin > best_margin)
                }
            };
            if better {
                decider = Some((name, *t, margin));
            }
            target = target.max(level);
        }
        let (zone, celsius, _) = decider.expect("readings is not empty");
        let zone = zone.to_string();
        if target >= ThermalState::Warn {
            self.last_warn_demand = Some(at);
        }
        if target >= ThermalState::Critical {
            self.last_critical_demand = Some(at);
        }

        let next = if target > self.state {
            target
        } else {
            // Down only to the highest level asked for within the cooldown.
            let recent = |t: Option<Instant>| {
                t.is_some_and(|t| at.saturating_duration_since(t) < self.config.cooldown())
            };
            let allowed = if recent(self.last_critical_demand) {
                ThermalState::Critical
            } else if recent(self.last_warn_demand) {
                ThermalState::Warn
            } else {
                ThermalState::Normal
            };
            self.state.min(allowed.max(target))
        };
        if next == self.state {
            return None;
        }
        let from = self.state;
        self.state = next;
        let actions = self.actions(from, next, input.power_mode.as_ref());
        Some(Transition {
            from,
            to: next,
            zone,
            celsius,
            at,
            actions,
        })
    }

    fn actions(
        &mut self,
        from: ThermalState,
        to: ThermalState,
        mode: Option<&CurrentMode>,
    ) -> Vec<GuardAction> {
        let mut actions = Vec::new();
        if to > from {
            if from == ThermalState::Normal {
                actions.push(GuardAction::RefuseNewStarts);
            }
            if let (None, Some(cool), Some(current)) =
                (&self.stepped_down, &self.config.cool_mode, mode)
            {
                // Without knowing the current mode there would be nothing to restore,
                // so no step down then.
                if !same_mode(cool, current) {
                    let back = match current.id {
                        Some(id) => ModeRef::Id(id),
                        None => ModeRef::Name(current.name.clone()),
                    };
                    actions.push(GuardAction::SetPowerMode(cool.clone()));
                    self.stepped_down = Some((back, cool.clone()));
                }
            }
            if to == ThermalState::Critical {
                actions.push(GuardAction::StopAllGracefully);
            }
        } else if to == ThermalState::Normal {
            if let Some((back, cool)) = self.stepped_down.take() {
                // If someone switched the mode meanwhile, theirs stands.
                if mode.is_none_or(|m| same_mode(&cool, m)) {
                    actions.push(GuardAction::RestorePowerMode(back));
                }
            }
            actions.push(GuardAction::AcceptNewStarts);
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::hw::testutil::{drive_past_hung_read, Board, HungZone};
    use crate::hw::{Sensors, SysfsConfig, SysfsSensors, SystemFigures, ZoneReading, ZoneState};

    const SECOND: Duration = Duration::from_secs(1);

    fn guard(config: GuardConfig) -> ThermalGuard {
        ThermalGuard::new(config).unwrap()
    }

    fn mode(id: u32, name: &str) -> Option<CurrentMode> {
        Some(CurrentMode {
            id: Some(id),
            name: name.into(),
            fan_mode: None,
        })
    }

    /// An input at the current (paused) time with the given zones.
    fn input(zones: &[(&str, Option<f64>)]) -> GuardInput {
        GuardInput {
            at: Instant::now(),
            zones: zones
                .iter()
                .map(|(n, c)| ZoneTemp {
                    name: n.to_string(),
                    celsius: *c,
                })
                .collect(),
            power_mode: mode(2, "MODE_30W"),
        }
    }

    /// Feeds one reading of `cpu` per second for `secs` seconds; returns the transitions.
    async fn feed(guard: &mut ThermalGuard, cpu: f64, secs: u64) -> Vec<Transition> {
        let mut transitions = Vec::new();
        for _ in 0..secs {
            transitions.extend(guard.observe(&input(&[("cpu", Some(cpu)), ("gpu", Some(40.0))])));
            tokio::time::advance(SECOND).await;
        }
        transitions
    }

    #[tokio::test(start_paused = true)]
    async fn warn_with_hysteresis_and_cooldown() {
        let mut g = guard(GuardConfig::default());
        assert!(feed(&mut g, 74.9, 5).await.is_empty());
        let up = g.observe(&input(&[("cpu", Some(75.0))])).unwrap();
        assert_eq!((up.from, up.to), (ThermalState::Normal, ThermalState::Warn));
        assert_eq!((up.zone.as_str(), up.celsius), ("cpu", 75.0));
        assert_eq!(up.actions, [GuardAction::RefuseNewStarts]);
        assert!(!g.accepting());
        // Below warn but not below warn − hysteresis (70): stays, however long.
        assert!(feed(&mut g, 70.0, 300).await.is_empty());
        assert_eq!(g.state(), ThermalState::Warn);
        // Below 70: leaves only after the cooldown.
        let down = feed(&mut g, 69.9, 40).await;
        assert_eq!(down.len(), 1, "{down:?}");
        assert_eq!(
            (down[0].from, down[0].to),
            (ThermalState::Warn, ThermalState::Normal)
        );
        assert_eq!(down[0].actions, [GuardAction::AcceptNewStarts]);
        assert!(g.accepting());
        // It left a full cooldown after the last reading that kept it in warn (the
        // 300 readings at 70 started at the instant of `up`).
        let last_warm = up.at + Duration::from_secs(299);
        assert_eq!(
            down[0].at - last_warm,
            Duration::from_secs(DEFAULT_COOLDOWN_S)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn flapping_around_a_limit_causes_no_storm() {
        let mut g = guard(GuardConfig::default());
        let mut transitions = Vec::new();
        // Sensor noise right at the warn limit, for ten minutes.
        for i in 0..600 {
            let t = if i % 2 == 0 { 74.6 } else { 75.4 };
            transitions.extend(g.observe(&input(&[("cpu", Some(t))])));
            tokio::time::advance(SECOND).await;
        }
        assert_eq!(transitions.len(), 1, "{transitions:?}");
        // Swings across the whole hysteresis band every few seconds: still one state
        // change, because a few cool seconds are not a cooldown.
        let mut g = guard(GuardConfig::default());
        let mut transitions = Vec::new();
        for i in 0..600 {
            let t = if (i / 5) % 2 == 0 { 66.0 } else { 76.0 };
            transitions.extend(g.observe(&input(&[("cpu", Some(t))])));
            tokio::time::advance(SECOND).await;
        }
        assert_eq!(transitions.len(), 1, "{transitions:?}");
        assert_eq!(g.state(), ThermalState::Warn);
        // Same around the critical limit.
        let mut g = guard(GuardConfig::default());
        let mut transitions = Vec::new();
        for i in 0..600 {
            let t = if i % 3 == 0 { 85.2 } else { 83.0 };
            transitions.extend(g.observe(&input(&[("cpu", Some(t))])));
            tokio::time::advance(SECOND).await;
        }
        let states: Vec<_> = transitions.iter().map(|t| t.to).collect();
        assert_eq!(states, [ThermalState::Critical]);
    }

    #[tokio::test(start_paused = true)]
    async fn critical_stops_everything_then_steps_down_through_warn() {
        let mut g = guard(GuardConfig::default());
        let up = g
            .observe(&input(&[("cpu", Some(60.0)), ("gpu", Some(90.5))]))
            .unwrap();
        assert_eq!(
            (up.from, up.to),
            (ThermalState::Normal, ThermalState::Critical)
        );
        assert_eq!(up.zone, "gpu");
        assert_eq!(
            up.actions,
            [GuardAction::RefuseNewStarts, GuardAction::StopAllGracefully]
        );
        // 80 is critical − hysteresis: still critical.
        tokio::time::advance(SECOND).await;
        assert!(g.observe(&input(&[("gpu", Some(80.0))])).is_none());
        // Into the warn band: critical is left after the cooldown, to warn, with nothing
        // to do (new starts stay refused).
        let mut seen = Vec::new();
        for _ in 0..31 {
            tokio::time::advance(SECOND).await;
            seen.extend(g.observe(&input(&[("gpu", Some(77.0))])));
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(
            (seen[0].from, seen[0].to),
            (ThermalState::Critical, ThermalState::Warn)
        );
        assert!(seen[0].actions.is_empty());
        // A cooldown after the last reading that kept it critical (at up + 1 s).
        assert_eq!(
            seen[0].at - up.at,
            Duration::from_secs(1 + DEFAULT_COOLDOWN_S)
        );
        // Then cool: normal after another cooldown.
        let mut seen = Vec::new();
        for _ in 0..31 {
            tokio::time::advance(SECOND).await;
            seen.extend(g.observe(&input(&[("gpu", Some(50.0))])));
        }
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].to, ThermalState::Normal);
        assert_eq!(seen[0].actions, [GuardAction::AcceptNewStarts]);
    }

    #[tokio::test(start_paused = true)]
    async fn warn_then_critical_stops_without_refusing_twice() {
        let mut g = guard(GuardConfig::default());
        g.observe(&input(&[("cpu", Some(78.0))])).unwrap();
        tokio::time::advance(SECOND).await;
        let up = g.observe(&input(&[("cpu", Some(86.0))])).unwrap();
        assert_eq!(
            (up.from, up.to),
            (ThermalState::Warn, ThermalState::Critical)
        );
        assert_eq!(up.actions, [GuardAction::StopAllGracefully]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_power_mode_steps_down_at_warn_and_is_restored_when_cool() {
        let mut g = guard(GuardConfig {
            cool_mode: Some(ModeRef::Name("MODE_15W".into())),
            ..GuardConfig::default()
        });
        let up = g.observe(&input(&[("cpu", Some(76.0))])).unwrap();
        assert_eq!(
            up.actions,
            [
                GuardAction::RefuseNewStarts,
                GuardAction::SetPowerMode(ModeRef::Name("MODE_15W".into()))
            ]
        );
        // Critical after the step down: no second step down.
        tokio::time::advance(SECOND).await;
        let mut hot = input(&[("cpu", Some(88.0))]);
        hot.power_mode = mode(1, "MODE_15W");
        assert_eq!(
            g.observe(&hot).unwrap().actions,
            [GuardAction::StopAllGracefully]
        );
        // Cool for long enough: restore the mode the board ran before.
        let mut down = Vec::new();
        for _ in 0..70 {
            tokio::time::advance(SECOND).await;
            let mut cool = input(&[("cpu", Some(50.0))]);
            cool.power_mode = mode(1, "MODE_15W");
            down.extend(g.observe(&cool));
        }
        let last = down.last().unwrap();
        assert_eq!(last.to, ThermalState::Normal);
        assert_eq!(
            last.actions,
            [
                GuardAction::RestorePowerMode(ModeRef::Id(2)),
                GuardAction::AcceptNewStarts
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_mode_changed_by_someone_else_is_not_restored_over() {
        let mut g = guard(GuardConfig {
            cool_mode: Some(ModeRef::Id(1)),
            ..GuardConfig::default()
        });
        g.observe(&input(&[("cpu", Some(76.0))])).unwrap();
        let mut down = Vec::new();
        for _ in 0..40 {
            tokio::time::advance(SECOND).await;
            let mut cool = input(&[("cpu", Some(50.0))]);
            cool.power_mode = mode(0, "MAXN");
            down.extend(g.observe(&cool));
        }
        assert_eq!(down.len(), 1);
        assert_eq!(down[0].actions, [GuardAction::AcceptNewStarts]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_step_down_when_already_cool_or_mode_unknown() {
        let config = GuardConfig {
            cool_mode: Some(ModeRef::Name("mode_30w".into())),
            ..GuardConfig::default()
        };
        let mut g = guard(config.clone());
        let up = g.observe(&input(&[("cpu", Some(76.0))])).unwrap();
        assert_eq!(up.actions, [GuardAction::RefuseNewStarts]);
        let mut g = guard(config);
        let mut unknown = input(&[("cpu", Some(76.0))]);
        unknown.power_mode = None;
        assert_eq!(
            g.observe(&unknown).unwrap().actions,
            [GuardAction::RefuseNewStarts]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn offline_and_ignored_zones_never_trigger() {
        let mut g = guard(GuardConfig {
            ignore_zones: vec!["Tboard_tegra".into()],
            ..GuardConfig::default()
        });
        for _ in 0..100 {
            let t = g.observe(&input(&[
                ("cpu", Some(50.0)),
                ("gpu", None),
                ("cv0", None),
                ("tboard", Some(99.0)),
            ]));
            assert!(t.is_none(), "{t:?}");
            tokio::time::advance(SECOND).await;
        }
        assert_eq!(g.state(), ThermalState::Normal);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zone_that_stops_reporting_does_not_bring_the_state_down() {
        let mut g = guard(GuardConfig::default());
        let up = g
            .observe(&input(&[("cpu", Some(60.0)), ("gpu", Some(80.0))]))
            .unwrap();
        assert_eq!(up.to, ThermalState::Warn);
        // The hot zone goes dark; the others are cool. Within the hold its last
        // reading still counts, cooldown or not.
        for _ in 0..DEFAULT_OFFLINE_HOLD_S - 1 {
            tokio::time::advance(SECOND).await;
            assert!(g
                .observe(&input(&[("cpu", Some(60.0)), ("gpu", None)]))
                .is_none());
        }
        // After the hold the other zones decide, and the cooldown still applies.
        let mut down = Vec::new();
        for _ in 0..DEFAULT_COOLDOWN_S + 2 {
            tokio::time::advance(SECOND).await;
            down.extend(g.observe(&input(&[("cpu", Some(60.0)), ("gpu", None)])));
        }
        assert_eq!(down.len(), 1, "{down:?}");
        assert_eq!(down[0].to, ThermalState::Normal);
        // The held reading last counted a second before the hold ran out.
        assert_eq!(
            down[0].at - up.at,
            Duration::from_secs(DEFAULT_OFFLINE_HOLD_S - 1 + DEFAULT_COOLDOWN_S)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_zone_dark_the_state_stays() {
        let mut g = guard(GuardConfig::default());
        g.observe(&input(&[("cpu", Some(90.0))])).unwrap();
        for _ in 0..3600 {
            tokio::time::advance(SECOND).await;
            assert!(g.observe(&input(&[("cpu", None), ("gpu", None)])).is_none());
        }
        assert_eq!(g.state(), ThermalState::Critical);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_zone_read_times_out_and_the_guard_keeps_its_state() {
        let board = Board::copy("jetson-agx-orin");
        // cv0 hot enough for warn under these limits; every other zone (77 °C at most)
        // below warn − hysteresis, so only cv0's held reading can keep the state.
        board.write(
            "sysfs/devices/virtual/thermal/thermal_zone2/temp",
            "92000\n",
        );
        let sensors = SysfsSensors::new(SysfsConfig {
            root: board.sysfs(),
            read_timeout: Duration::from_secs(2),
            ignore_zones: Vec::new(),
        });
        let mut g = guard(GuardConfig {
            warn_c: 90.0,
            critical_c: 100.0,
            cooldown_s: 10,
            // Long enough that the held reading outlasts the test: what is tested is
            // that the hang itself changes nothing, cooldown passed or not.
            offline_hold_s: 3600,
            ..GuardConfig::default()
        });
        let sample = |zones: Vec<ZoneReading>| Sample {
            taken_at: SystemTime::now(),
            zones,
            power: None,
            gpu: None,
            fan: None,
            power_mode: mode(2, "MODE_30W"),
            clocks: None,
            system: SystemFigures {
                load_1: 0.0,
                load_5: 0.0,
                load_15: 0.0,
                cpu_percent: None,
                cpu_count: 12,
                memory_total_bytes: 1,
                memory_available_bytes: 1,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
                uptime_secs: 0,
            },
            problems: Vec::new(),
        };
        let zones = sensors.thermal_zones().await.unwrap();
        let up = g
            .observe(&GuardInput::from_sample(&sample(zones), Instant::now()))
            .unwrap();
        assert_eq!((up.to, up.zone.as_str()), (ThermalState::Warn, "cv0"));
        assert_eq!(up.celsius, 92.0);

        // Now cv0's driver hangs.
        let hung = HungZone::new(&board, 2);
        let fifo = hung.path.clone();
        for _ in 0..20 {
            let read = tokio::spawn({
                let sensors = sensors.clone();
                async move { sensors.thermal_zones().await }
            });
            let zones = drive_past_hung_read(sensors.reader(), &fifo, read)
                .await
                .unwrap();
            assert_eq!(
                zones[2].state,
                ZoneState::Offline(crate::hw::OfflineReason::Hung)
            );
            let t = g.observe(&GuardInput::from_sample(&sample(zones), Instant::now()));
            assert!(t.is_none(), "{t:?}");
            tokio::time::advance(SECOND).await;
        }
        assert!(
            up.at.elapsed() > g.config().cooldown(),
            "{:?}",
            up.at.elapsed()
        );
        assert_eq!(g.state(), ThermalState::Warn);
    }

    #[tokio::test(start_paused = true)]
    async fn per_zone_limits_override_the_defaults() {
        let config: GuardConfig = toml::from_str(
            "[zones.gpu]\nwarn_c = 60.0\ncritical_c = 70.0\n[zones.Tboard_tegra]\nwarn_c = 50.0\n",
        )
        .unwrap();
        assert_eq!(config.limits("gpu-thermal").warn_c, 60.0);
        assert_eq!(
            config.limits("GPU-therm").hysteresis_c,
            DEFAULT_HYSTERESIS_C
        );
        assert_eq!(config.limits("tboard").warn_c, 50.0);
        assert_eq!(config.limits("cpu").warn_c, DEFAULT_WARN_C);
        let mut g = guard(config);
        assert!(g
            .observe(&input(&[("cpu", Some(65.0)), ("gpu", Some(55.0))]))
            .is_none());
        tokio::time::advance(SECOND).await;
        let up = g
            .observe(&input(&[("cpu", Some(65.0)), ("gpu", Some(71.0))]))
            .unwrap();
        assert_eq!((up.to, up.zone.as_str()), (ThermalState::Critical, "gpu"));
    }

    #[test]
    fn config_defaults_parsing_and_validation() {
        let parsed: GuardConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, GuardConfig::default());
        assert_eq!(
            (parsed.warn_c, parsed.critical_c, parsed.hysteresis_c),
            (75.0, 85.0, 5.0)
        );
        let full: GuardConfig = toml::from_str(
            "warn_c = 70\ncritical_c = 80.5\nhysteresis_c = 3\ncooldown_s = 10\noffline_hold_s = 20\n\
             ignore_zones = [\"tboard\"]\ncool_mode = \"MODE_15W\"\n",
        )
        .unwrap();
        assert_eq!(full.cool_mode, Some(ModeRef::Name("MODE_15W".into())));
        assert_eq!(full.critical_c, 80.5);
        full.validate().unwrap();
        let by_id: GuardConfig = toml::from_str("cool_mode = 1\n").unwrap();
        assert_eq!(by_id.cool_mode, Some(ModeRef::Id(1)));

        let err = toml::from_str::<GuardConfig>("warn = 70\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = toml::from_str::<GuardConfig>("[zones.gpu]\nwarn = 70\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");

        let bad = GuardConfig {
            warn_c: 90.0,
            ..GuardConfig::default()
        };
        let err = ThermalGuard::new(bad).unwrap_err().to_string();
        assert!(
            err.contains("warn_c (90) must be below critical_c (85)"),
            "{err}"
        );
        let mut bad_zone = GuardConfig::default();
        bad_zone.zones.insert(
            "gpu".into(),
            ZoneLimits {
                critical_c: Some(70.0),
                ..ZoneLimits::default()
            },
        );
        let err = bad_zone.validate().unwrap_err().to_string();
        assert!(err.contains("for zone \"gpu\""), "{err}");
        let negative = GuardConfig {
            hysteresis_c: -1.0,
            ..GuardConfig::default()
        };
        assert!(negative.validate().is_err());
        let nan = GuardConfig {
            warn_c: f64::NAN,
            ..GuardConfig::default()
        };
        assert!(nan.validate().unwrap_err().to_string().contains("warn_c"));
    }

    #[test]
    fn states_order_and_print() {
        assert!(ThermalState::Normal < ThermalState::Warn);
        assert!(ThermalState::Warn < ThermalState::Critical);
        assert_eq!(ThermalState::Critical.to_string(), "critical");
    }
}
