//! The board's hardware: thermal zones, power rails, GPU load, fan, board identity and
//! system figures, and the power tools `nvpmodel` and `jetson_clocks`.
//!
//! Each host facility sits behind a narrow trait with one real implementation
//! ([`Sensors`]/[`SysfsSensors`], [`PowerModes`]/[`Nvpmodel`], [`Clocks`]/[`JetsonClocks`],
//! [`SystemStats`]/[`SysinfoStats`]); [`Hardware`] puts them together into one
//! [`Sample`], the domain type telemetry and the thermal guard work on.
//! Everything reads under configurable roots (`/sys`, `/`) so a test or a simulated
//! board can point it at a copied tree. Must never live here: decisions (the guard
//! decides; this module measures and switches) and wire types.

pub mod clocks;
pub mod gpu;
pub mod hwmon;
pub mod identity;
pub mod nvpmodel;
pub mod process;
pub mod sensors;
pub mod sysfs;
pub mod system;
pub mod thermal;

#[cfg(test)]
pub(crate) mod testutil;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use clocks::{Clocks, ClocksError, ClocksShow, ClocksState, JetsonClocks, JetsonClocksConfig};
pub use gpu::{GpuError, GpuReading};
pub use hwmon::{FanReading, HwmonError, PowerReading, Rail, TotalSource};
pub use identity::{read_identity, BoardIdentity, IdentityError, L4tRelease};
pub use nvpmodel::{
    CurrentMode, ModeRef, Nvpmodel, NvpmodelConf, NvpmodelConfig, NvpmodelError, PowerMode,
    PowerModes, SetModeOutcome, SetModeRequest,
};
pub use sensors::{Sensors, SysfsConfig, SysfsSensors};
pub use sysfs::ReadError;
pub use system::{SysinfoStats, SystemFigures, SystemStats};
pub use thermal::{normalize_zone_name, OfflineReason, ZoneInfo, ZoneReading, ZoneState};

pub const DEFAULT_IDENTITY_ROOT: &str = "/";
pub const DEFAULT_READ_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_TOOL_TIMEOUT_S: u64 = 30;
/// How often a sample re-runs `nvpmodel -q` and `jetson_clocks --show`. Both spawn a
/// process (jetson_clocks a whole bash script), and their state changes only when
/// someone switches it, after which [`Hardware::refresh_power_state`] is called.
pub const DEFAULT_POWER_REFRESH_S: u64 = 60;

/// The `[hardware]` part of the agent's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HwConfig {
    /// Where sysfs is mounted.
    pub sysfs_root: PathBuf,
    /// Where `proc/device-tree/model` and `etc/nv_tegra_release` are found.
    pub root: PathBuf,
    /// Deadline for one sysfs read.
    pub read_timeout_ms: u64,
    /// Thermal zones never read nor guarded (e.g. `["cv0", "cv1", "cv2"]` on an Orin
    /// Nano, whose DLA/PVA zones exist but never report).
    pub ignore_zones: Vec<String>,
    pub nvpmodel: PathBuf,
    pub nvpmodel_conf: PathBuf,
    pub jetson_clocks: PathBuf,
    /// Where the clocks are stored before the agent first locks them.
    pub clocks_store_file: PathBuf,
    /// Deadline for one run of nvpmodel or jetson_clocks.
    pub tool_timeout_s: u64,
    pub power_refresh_s: u64,
}

impl Default for HwConfig {
    fn default() -> Self {
        HwConfig {
            sysfs_root: sensors::DEFAULT_SYSFS_ROOT.into(),
            root: DEFAULT_IDENTITY_ROOT.into(),
            read_timeout_ms: DEFAULT_READ_TIMEOUT_MS,
            ignore_zones: Vec::new(),
            nvpmodel: nvpmodel::DEFAULT_NVPMODEL_PATH.into(),
            nvpmodel_conf: nvpmodel::DEFAULT_NVPMODEL_CONF.into(),
            jetson_clocks: clocks::DEFAULT_JETSON_CLOCKS_PATH.into(),
            clocks_store_file: clocks::DEFAULT_CLOCKS_STORE_FILE.into(),
            tool_timeout_s: DEFAULT_TOOL_TIMEOUT_S,
            power_refresh_s: DEFAULT_POWER_REFRESH_S,
        }
    }
}

impl HwConfig {
    pub fn sysfs(&self) -> SysfsConfig {
        SysfsConfig {
            root: self.sysfs_root.clone(),
            read_timeout: Duration::from_millis(self.read_timeout_ms),
            ignore_zones: self.ignore_zones.clone(),
        }
    }

    pub fn nvpmodel(&self) -> NvpmodelConfig {
        NvpmodelConfig {
            program: self.nvpmodel.clone(),
            conf: self.nvpmodel_conf.clone(),
            timeout: Duration::from_secs(self.tool_timeout_s),
        }
    }

    pub fn jetson_clocks(&self) -> JetsonClocksConfig {
        JetsonClocksConfig {
            program: self.jetson_clocks.clone(),
            store_file: self.clocks_store_file.clone(),
            timeout: Duration::from_secs(self.tool_timeout_s),
        }
    }

    pub fn identity_root(&self) -> &Path {
        &self.root
    }
}

/// Everything measured about the board at one moment. Parts that could not be read
/// are None (or offline, for zones), with the reason in `problems`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub taken_at: SystemTime,
    /// Every zone, in `thermal_zoneN` order; offline and ignored zones included, never
    /// with a temperature.
    pub zones: Vec<ZoneReading>,
    /// Rails and the total in watts.
    pub power: Option<PowerReading>,
    pub gpu: Option<GpuReading>,
    pub fan: Option<FanReading>,
    pub power_mode: Option<CurrentMode>,
    pub clocks: Option<ClocksState>,
    pub system: SystemFigures,
    /// What could not be read, one line each, with the whole error chain.
    pub problems: Vec<String>,
}

impl Sample {
    /// The hottest online zone (ignored zones excluded); the first in zone order on a tie.
    pub fn hottest_zone(&self) -> Option<(&str, f64)> {
        self.zones
            .iter()
            .filter_map(|z| Some((z.name.as_str(), z.celsius()?)))
            .fold(None, |best: Option<(&str, f64)>, z| match best {
                Some(b) if b.1 >= z.1 => Some(b),
                _ => Some(z),
            })
    }

    pub fn total_watts(&self) -> Option<f64> {
        self.power.as_ref().map(|p| p.total_watts)
    }

    pub fn rails(&self) -> &[Rail] {
        self.power.as_ref().map_or(&[], |p| &p.rails)
    }
}

/// The slowly changing part of a sample, refreshed every `power_refresh`.
#[derive(Debug, Clone)]
struct PowerState {
    at: tokio::time::Instant,
    mode: Option<CurrentMode>,
    clocks: Option<ClocksState>,
    problems: Vec<String>,
}

/// The board's hardware, put together.
pub struct Hardware<S, P, C, Y> {
    sensors: S,
    power_modes: P,
    clocks: C,
    system: Y,
    power_refresh: Duration,
    power_state: Option<PowerState>,
}

/// The hardware of a real (or simulated) Jetson.
pub type JetsonHardware = Hardware<SysfsSensors, Nvpmodel, JetsonClocks, SysinfoStats>;

impl JetsonHardware {
    pub fn from_config(config: &HwConfig) -> JetsonHardware {
        Hardware::new(
            SysfsSensors::new(config.sysfs()),
            Nvpmodel::new(config.nvpmodel()),
            JetsonClocks::new(config.jetson_clocks()),
            SysinfoStats::new(),
            Duration::from_secs(config.power_refresh_s),
        )
    }
}

impl<S: Sensors, P: PowerModes, C: Clocks, Y: SystemStats> Hardware<S, P, C, Y> {
    pub fn new(sensors: S, power_modes: P, clocks: C, system: Y, power_refresh: Duration) -> Self {
        Hardware {
            sensors,
            power_modes,
            clocks,
            system,
            power_refresh,
            power_state: None,
        }
    }

    pub fn sensors(&self) -> &S {
        &self.sensors
    }

    pub fn power_modes(&self) -> &P {
        &self.power_modes
    }

    pub fn clocks(&self) -> &C {
        &self.clocks
    }

    /// Makes the next sample re-read the power mode and clock state (call it after
    /// switching either).
    pub fn refresh_power_state(&mut self) {
        self.power_state = None;
    }

    /// Takes one sample. Sensors are read concurrently, each under its own deadline;
    /// the power mode and clock state are re-read every `power_refresh`.
    pub async fn sample(&mut self) -> Sample {
        let mut problems = Vec::new();
        let (zones, power, gpu, fan) = tokio::join!(
            self.sensors.thermal_zones(),
            self.sensors.power(),
            self.sensors.gpu(),
            self.sensors.fan(),
        );
        let zones = keep(zones, "thermal zones", &mut problems).unwrap_or_default();
        let power = keep(power, "power rails", &mut problems);
        let gpu = keep(gpu, "GPU", &mut problems);
        let fan = keep(fan, "fan", &mut problems);

        let now = tokio::time::Instant::now();
        let stale = self
            .power_state
            .as_ref()
            .is_none_or(|s| now.duration_since(s.at) >= self.power_refresh);
        if stale {
            let mut state_problems = Vec::new();
            let (mode, show) = tokio::join!(self.power_modes.query(), self.clocks.show());
            let mode = keep(mode, "power mode", &mut state_problems);
            let clocks = keep(show, "clocks", &mut state_problems).map(|s| s.state());
            self.power_state = Some(PowerState {
                at: now,
                mode,
                clocks,
                problems: state_problems,
            });
        }
        let state = self.power_state.as_ref().expect("set above");
        problems.extend(state.problems.iter().cloned());

        Sample {
            taken_at: SystemTime::now(),
            zones,
            power,
            gpu,
            fan,
            power_mode: state.mode.clone(),
            clocks: state.clocks,
            system: self.system.sample(),
            problems,
        }
    }
}

fn keep<T, E: std::error::Error>(
    result: Result<T, E>,
    what: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(e) => {
            problems.push(format!("{what}: {}", thermal::error_chain(&e)));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::testutil::{fixture, Board, ScriptInstance};

    #[test]
    fn hw_config_defaults_and_strictness() {
        let parsed: HwConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, HwConfig::default());
        assert_eq!(parsed.sysfs_root, Path::new("/sys"));
        assert_eq!(parsed.nvpmodel, Path::new("/usr/sbin/nvpmodel"));
        let parsed: HwConfig =
            toml::from_str("sysfs_root = \"/tmp/board/sys\"\nignore_zones = [\"cv0\"]\n").unwrap();
        assert_eq!(parsed.sysfs().root, Path::new("/tmp/board/sys"));
        assert_eq!(parsed.sysfs().ignore_zones, ["cv0"]);
        let err = toml::from_str::<HwConfig>("sysfs = \"/sys\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[tokio::test]
    async fn a_sample_of_a_fixture_board() {
        let board = Board::copy("jetson-agx-orin");
        let nvpmodel = ScriptInstance::new("nvpmodel-stateful");
        let clocks = ScriptInstance::new("jetson-clocks-stateful");
        let config = HwConfig {
            sysfs_root: board.sysfs(),
            root: board.root().to_path_buf(),
            nvpmodel: nvpmodel.program.clone(),
            nvpmodel_conf: fixture("jetson-agx-orin/etc/nvpmodel/nvpmodel_p3701_0000.conf"),
            jetson_clocks: clocks.program.clone(),
            clocks_store_file: clocks.dir.path().join("store"),
            // Generous, so a loaded test machine never times a healthy read out.
            read_timeout_ms: 10_000,
            ..HwConfig::default()
        };
        let mut hw = JetsonHardware::from_config(&config);
        let refresh = Duration::from_millis(300);
        hw.power_refresh = refresh;
        let sample = hw.sample().await;
        assert!(sample.problems.is_empty(), "{:?}", sample.problems);
        assert_eq!(sample.zones.len(), 11);
        assert_eq!(sample.hottest_zone(), Some(("cpu", 77.281)));
        assert_eq!(sample.rails().len(), 4);
        assert!(sample.total_watts().unwrap() > 23.0);
        assert_eq!(sample.gpu.as_ref().unwrap().load_percent, 14.0);
        assert_eq!(sample.fan.as_ref().unwrap().pwm, Some(48));
        assert_eq!(sample.power_mode.as_ref().unwrap().id, Some(2));
        assert_eq!(sample.clocks, Some(ClocksState::Unlocked));
        assert!(sample.system.memory_total_bytes > 0);

        // The power state is cached until it is stale or refreshed on purpose.
        std::fs::write(nvpmodel.side_file("state"), "3\n").unwrap();
        let cached = hw.sample().await;
        assert_eq!(cached.power_mode.as_ref().unwrap().id, Some(2));
        hw.refresh_power_state();
        let fresh = hw.sample().await;
        assert_eq!(fresh.power_mode.as_ref().unwrap().name, "MODE_50W");
        std::fs::write(nvpmodel.side_file("state"), "1\n").unwrap();
        tokio::time::sleep(refresh).await;
        let later = hw.sample().await;
        assert_eq!(later.power_mode.as_ref().unwrap().id, Some(1));
    }

    #[tokio::test]
    async fn what_cannot_be_read_is_listed_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let config = HwConfig {
            sysfs_root: dir.path().join("sys"),
            root: dir.path().to_path_buf(),
            nvpmodel: "/nonexistent/nvpmodel".into(),
            jetson_clocks: "/nonexistent/jetson_clocks".into(),
            ..HwConfig::default()
        };
        let sample = JetsonHardware::from_config(&config).sample().await;
        assert!(sample.zones.is_empty());
        assert_eq!(sample.power_mode, None);
        assert_eq!(sample.clocks, None);
        let problems = sample.problems.join("\n");
        for part in [
            "thermal zones:",
            "power rails:",
            "GPU:",
            "fan:",
            "power mode:",
            "clocks:",
        ] {
            assert!(problems.contains(part), "{part} missing from {problems}");
        }
        assert!(
            problems.contains("could not start /nonexistent/nvpmodel"),
            "{problems}"
        );
    }
}
