//! Simulated Jetson hardware for a testbed board: a copy of a fixture board's
//! sysfs, identity files and nvpmodel state, the agent's `[hardware]` config
//! pointing at them, and a thermal model that drives the zone temperatures.
//!
//! [`HwSim::install`] copies one of the shared fixture boards (see
//! [`Fixture`]) into `<board dir>/hw/`:
//!
//! ```text
//! hw/sysfs/…                     the board's /sys (symlinks made real)
//! hw/proc/device-tree/model      identity root = hw/
//! hw/etc/nv_tegra_release
//! hw/etc/nvpmodel.conf           → nvpmodel/nvpmodel_<board>.conf
//! hw/var/lib/nvpmodel/status     the saved mode `fleet-sim-nvpmodel` keeps
//! hw/nvpmodel-reboots            one `reboot <id>` per reboot it was allowed
//! hw/heat                        zones pinned by another process (optional)
//! ```
//!
//! and writes every online zone at the model's resting temperature, so the
//! agent never sees the fixture's (loaded, 77 °C) capture. There is no
//! `jetson_clocks` simulator: the config names a path that does not exist, so
//! the agent reports clocks as unavailable.
//!
//! **Temperatures.** [`HwSim::start_thermal_model`] runs a background task that
//! moves the board's temperature towards `ambient + k × cores busy` with a
//! first-order lag (time constant τ), where "cores busy" is the CPU time the
//! board's experiments used (the slice their units run in, in the board's
//! cgroups) per
//! second of wall time, and writes each zone from it. Scripted heat events pin
//! a zone ([`HwSim::set_zone`]) until released ([`HwSim::release_zone`]).
//! Another process can pin zones through the board's heat file
//! ([`HwSim::heat_file`], what `fleet-dev heat` writes), which the model reads
//! at every tick. Every write goes to a temporary file renamed over `temp`, so a reader sees
//! the old or the new value, never half of one. Tests assert on pinned
//! temperatures only; the model's dynamics are for people (fleet-dev).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::testbed::Board;

/// Overrides where the Jetson fixtures are.
pub const FIXTURES_VAR: &str = "FLEET_FIXTURES_DIR";

/// What an offline zone reads on L4T R35 (the DLA/PVA/GPU zones when idle).
const OFFLINE_MILLI: i64 = -256_000;

/// The Jetson fixtures the project's tests and the dev fleet use:
/// `FLEET_FIXTURES_DIR`, else `tests/fixtures/jetson` in the repository.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os(FIXTURES_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/jetson"))
}

/// The fixture board a simulated board is copied from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fixture {
    /// AGX Orin devkit, L4T R36.4.3 (JetPack 6), saved mode MODE_30W.
    #[default]
    AgxOrinR36,
    /// The same module on L4T R35 (JetPack 5): older zone names, GPU and DLA
    /// zones offline (-256 °C), no `nv_tegra_release` and no saved mode in the
    /// fixture.
    AgxOrinR35,
    /// Orin NX 16GB, L4T R36.5.0, "super" conf, saved mode 40W. The fixture has
    /// no sysfs or device tree of its own: the simulated board borrows the AGX
    /// Orin R36 tree (same SoC, same zone names), with the NX devkit's model
    /// string, one INA3221 whose first channel is `VDD_IN`, and no second chip.
    OrinNx,
}

impl Fixture {
    pub const ALL: [Fixture; 3] = [Fixture::AgxOrinR36, Fixture::AgxOrinR35, Fixture::OrinNx];

    /// The short name fleet-dev and configs use.
    pub fn name(self) -> &'static str {
        match self {
            Fixture::AgxOrinR36 => "agx-orin-r36",
            Fixture::AgxOrinR35 => "agx-orin-r35",
            Fixture::OrinNx => "orin-nx",
        }
    }

    /// The model string the board reports (`/proc/device-tree/model`).
    pub fn model(self) -> &'static str {
        match self {
            Fixture::AgxOrinR36 => "NVIDIA Jetson AGX Orin Developer Kit",
            Fixture::AgxOrinR35 => "Jetson AGX Orin",
            Fixture::OrinNx => ORIN_NX_MODEL,
        }
    }

    /// The L4T release of the fixture's `nv_tegra_release`, if it has one.
    pub fn l4t_release(self) -> Option<&'static str> {
        match self {
            Fixture::AgxOrinR36 => Some("36.4.3"),
            Fixture::AgxOrinR35 => None,
            Fixture::OrinNx => Some("36.5.0"),
        }
    }

    /// `(id, name)` of the modes in the fixture's nvpmodel.conf, and the
    /// mode the board runs when installed.
    pub fn power_modes(self) -> (&'static [(u32, &'static str)], u32) {
        match self {
            Fixture::AgxOrinR36 | Fixture::AgxOrinR35 => (
                &[
                    (0, "MAXN"),
                    (1, "MODE_15W"),
                    (2, "MODE_30W"),
                    (3, "MODE_50W"),
                ],
                2,
            ),
            Fixture::OrinNx => (
                &[
                    (0, "MAXN_SUPER"),
                    (1, "10W"),
                    (2, "15W"),
                    (3, "25W"),
                    (4, "40W"),
                ],
                4,
            ),
        }
    }

    /// The GPU power-gating masks (`TPC_PG_MASK`) of the original conf,
    /// which the reduced fixture conf left out: a switch between modes whose
    /// masks differ needs a reboot. AGX Orin: MAXN 0, 15W 248, 30W 240, 50W 0
    /// (fixtures README, §3). The NX masks are not known, so every NX switch
    /// happens without one.
    pub fn pg_masks(self) -> Option<&'static str> {
        match self {
            Fixture::AgxOrinR36 | Fixture::AgxOrinR35 => Some("0=0,1=248,2=240,3=0"),
            Fixture::OrinNx => None,
        }
    }

    /// The real `jetson_clocks --show` capture `fleet-sim-jetson-clocks`
    /// starts from (relative to the fixtures), where the fixture has one.
    pub fn jetson_clocks_show(self) -> Option<&'static str> {
        match self {
            Fixture::AgxOrinR36 => Some("jetson-agx-orin/jetson_clocks-show.txt"),
            Fixture::AgxOrinR35 => Some("jetson-agx-orin/l4t-r35/jetson_clocks-show.txt"),
            Fixture::OrinNx => None,
        }
    }

    /// Directories (relative to the fixtures) copied into the board's `hw/`,
    /// later ones over earlier ones.
    fn sources(self) -> &'static [&'static str] {
        match self {
            Fixture::AgxOrinR36 => &[
                "jetson-agx-orin/sysfs:sysfs",
                "jetson-agx-orin/proc:proc",
                "jetson-agx-orin/etc:etc",
                "jetson-agx-orin/var:var",
            ],
            Fixture::AgxOrinR35 => &[
                "jetson-agx-orin/l4t-r35/sysfs:sysfs",
                "jetson-agx-orin/l4t-r35/proc:proc",
                "jetson-agx-orin/l4t-r35/etc:etc",
            ],
            Fixture::OrinNx => &[
                "jetson-agx-orin/sysfs:sysfs",
                "jetson-agx-orin/proc:proc",
                "jetson-orin-nx-16gb/etc:etc",
                "jetson-orin-nx-16gb/var:var",
            ],
        }
    }
}

/// The devkit's model string (p3768 carrier with a p3767-0000 module) as L4T
/// R35/R36 print it; not part of the fixtures, which have no NX device tree.
const ORIN_NX_MODEL: &str = "NVIDIA Jetson Orin NX Engineering Reference Developer Kit";

impl fmt::Display for Fixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Fixture {
    type Err = String;

    fn from_str(s: &str) -> Result<Fixture, String> {
        Fixture::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Fixture::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown board fixture {s:?}: use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// How a zone's name is matched: lowercase, without `-thermal`, `-therm` or
/// `_tegra` (`CPU-therm`, `cpu-thermal` → `cpu`), as the agent matches them.
pub fn normalize_zone_name(kind: &str) -> String {
    let lower = kind.trim().to_ascii_lowercase();
    for suffix in ["-thermal", "-therm", "_tegra"] {
        if let Some(stem) = lower.strip_suffix(suffix) {
            return stem.to_owned();
        }
    }
    lower
}

/// The thermal model's constants.
#[derive(Debug, Clone, PartialEq)]
pub struct ThermalParams {
    /// Where an idle board settles.
    pub ambient_c: f64,
    /// How much warmer one fully busy core makes the board, at equilibrium.
    pub per_core_c: f64,
    /// Time constant of the first-order lag.
    pub tau: Duration,
    /// How often the model reads CPU use and writes the zones.
    pub tick: Duration,
    /// The model never goes above this by itself (fan and throttling would
    /// hold a real board); pinned zones may.
    pub ceiling_c: f64,
}

impl Default for ThermalParams {
    /// A board at 35 °C that gains 12 °C per busy core with τ = 20 s: four
    /// busy cores reach the guard's default warn (75 °C) in about half a
    /// minute.
    fn default() -> Self {
        ThermalParams {
            ambient_c: 35.0,
            per_core_c: 12.0,
            tau: Duration::from_secs(20),
            tick: Duration::from_millis(500),
            ceiling_c: 100.0,
        }
    }
}

impl ThermalParams {
    /// Parameters for tests: a board that rests at `ambient_c` and that its
    /// experiments can never warm beyond `ceiling_c`, so only pinned zones
    /// decide the guard's state.
    pub fn bounded(ambient_c: f64, ceiling_c: f64) -> ThermalParams {
        ThermalParams {
            ambient_c,
            ceiling_c,
            tick: Duration::from_millis(200),
            ..ThermalParams::default()
        }
    }

    /// One step of the lag: where the board is `dt` later, given the cores
    /// its experiments kept busy.
    pub fn step(&self, current_c: f64, cores_busy: f64, dt: Duration) -> f64 {
        let target = self.ambient_c + self.per_core_c * cores_busy.max(0.0);
        let alpha = if self.tau.is_zero() {
            1.0
        } else {
            1.0 - (-dt.as_secs_f64() / self.tau.as_secs_f64()).exp()
        };
        (current_c + (target - current_c) * alpha).min(self.ceiling_c)
    }
}

/// How a zone sits relative to the board's modelled temperature: the CPU
/// cluster runs the experiments, the board sensors are far from the die.
fn zone_temperature(zone: &str, board_c: f64, ambient_c: f64) -> f64 {
    match zone {
        "cpu" => board_c + 2.0,
        "gpu" => board_c - 1.0,
        z if z.starts_with("cv") => board_c - 2.5,
        z if z.starts_with("soc") => board_c - 1.5,
        "tboard" => ambient_c + (board_c - ambient_c) * 0.3,
        "tdiode" => ambient_c + (board_c - ambient_c) * 0.3 + 0.5,
        _ => board_c,
    }
}

/// `tj` reports the hottest of the SoC's own sensors, as on a real Orin.
fn is_soc_sensor(zone: &str) -> bool {
    zone == "cpu" || zone == "gpu" || zone.starts_with("cv") || zone.starts_with("soc")
}

#[derive(Debug, Clone)]
struct Zone {
    index: u32,
    /// Normalised name (`cpu`).
    name: String,
    /// The kernel's name (`cpu-thermal`).
    kind: String,
    /// The real file (`devices/virtual/thermal/thermal_zoneN/temp`).
    temp: PathBuf,
    /// Whether the fixture has it offline (-256 °C); the model leaves such a
    /// zone alone unless pinned.
    offline: bool,
}

#[derive(Debug)]
struct ThermalState {
    params: ThermalParams,
    board_c: f64,
    /// Pins set through the API; they beat the heat file's.
    pins: HashMap<String, f64>,
    /// Pins read from the heat file at the model's last tick.
    file_pins: HashMap<String, f64>,
}

struct Inner {
    fixture: Fixture,
    root: PathBuf,
    zones: Vec<Zone>,
    state: Mutex<ThermalState>,
    model: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self.model.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// One board's simulated hardware. Cheap to clone; clones share the board.
#[derive(Clone)]
pub struct HwSim {
    inner: Arc<Inner>,
}

impl fmt::Debug for HwSim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HwSim")
            .field("fixture", &self.inner.fixture)
            .field("root", &self.inner.root)
            .finish()
    }
}

impl HwSim {
    /// Copies `fixture` into `<board dir>/hw/` and writes every online zone at
    /// `params.ambient_c` (plus each zone's offset), before any agent reads it.
    /// The thermal model is not running yet: see [`HwSim::start_thermal_model`].
    pub fn install(
        board: &Board,
        fixture: Fixture,
        params: ThermalParams,
    ) -> anyhow::Result<HwSim> {
        Self::install_at(&board.dir().join("hw"), fixture, params)
    }

    /// As [`HwSim::install`], into any directory (for tests of the simulator
    /// itself).
    pub fn install_at(
        root: &Path,
        fixture: Fixture,
        params: ThermalParams,
    ) -> anyhow::Result<HwSim> {
        let fixtures = fixtures_dir();
        if !fixtures.is_dir() {
            bail!(
                "the Jetson fixtures are not at {} (set {FIXTURES_VAR} to where they are)",
                fixtures.display()
            );
        }
        if root.exists() {
            fs::remove_dir_all(root).with_context(|| format!("remove {}", root.display()))?;
        }
        for source in fixture.sources() {
            let (from, to) = source.split_once(':').expect("source:dest");
            let src = fixtures.join(from);
            copy_tree(&src, &src, &root.join(to))
                .with_context(|| format!("copy fixture {} to {}", src.display(), root.display()))?;
        }
        if fixture == Fixture::OrinNx {
            make_orin_nx(root)?;
        }
        // Where fleet-sim-nvpmodel keeps the saved mode, as on a board.
        fs::create_dir_all(root.join("var/lib/nvpmodel"))?;
        fs::create_dir_all(root.join("var/lib/fleet-agent"))?;
        let zones = read_zones(&root.join("sysfs"))?;
        let sim = HwSim {
            inner: Arc::new(Inner {
                fixture,
                root: root.to_owned(),
                zones,
                state: Mutex::new(ThermalState {
                    board_c: params.ambient_c,
                    params,
                    pins: HashMap::new(),
                    file_pins: HashMap::new(),
                }),
                model: Mutex::new(None),
            }),
        };
        sim.write_zones(&sim.inner.state.lock().expect("not poisoned"))?;
        Ok(sim)
    }

    pub fn fixture(&self) -> Fixture {
        self.inner.fixture
    }

    /// The board's `hw/` directory; also the identity root (stands for `/`).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Stands for `/sys`.
    pub fn sysfs_root(&self) -> PathBuf {
        self.root().join("sysfs")
    }

    /// Stands for `/etc/nvpmodel.conf` (a symlink to the board's file).
    pub fn nvpmodel_conf(&self) -> PathBuf {
        self.root().join("etc/nvpmodel.conf")
    }

    /// Stands for `/var/lib/nvpmodel/status`: the saved mode, `pmode:NNNN`.
    pub fn nvpmodel_status(&self) -> PathBuf {
        self.root().join("var/lib/nvpmodel/status")
    }

    /// The `fleet-sim-nvpmodel` binary the agent runs as `nvpmodel`.
    pub fn nvpmodel_bin() -> PathBuf {
        crate::agent::workspace_bin("fleet-sim-nvpmodel")
    }

    /// Where the agent runs `jetson_clocks` from. Nothing is there (the
    /// agent reports the clocks as unavailable) until
    /// [`HwSim::install_jetson_clocks`].
    pub fn jetson_clocks(&self) -> PathBuf {
        self.root().join("usr/bin/jetson_clocks")
    }

    /// Puts a `jetson_clocks` on the board: a wrapper running
    /// `fleet-sim-jetson-clocks` on the board's own clock state, seeded from
    /// the fixture's capture. False when the fixture has no capture to
    /// start from (the board then has no `jetson_clocks`, as before).
    pub fn install_jetson_clocks(&self) -> anyhow::Result<bool> {
        use std::os::unix::fs::PermissionsExt;
        let Some(show) = self.fixture().jetson_clocks_show() else {
            return Ok(false);
        };
        let path = self.jetson_clocks();
        fs::create_dir_all(path.parent().expect("under the board's root"))?;
        let script = format!(
            "#!/bin/sh\nFLEET_SIM_JETSON_CLOCKS_STATE={state:?} FLEET_SIM_JETSON_CLOCKS_SHOW={show:?} exec {bin:?} \"$@\"\n",
            state = self.root().join("jetson_clocks.state"),
            show = fixtures_dir().join(show),
            bin = crate::agent::workspace_bin("fleet-sim-jetson-clocks"),
        );
        write_atomic(&path, script.as_bytes())?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(true)
    }

    /// The `[hardware]` section of the agent's config for this board.
    pub fn hardware_toml(&self) -> String {
        format!(
            "[hardware]\nsysfs_root = {sysfs:?}\nroot = {root:?}\nnvpmodel = {nvpmodel:?}\nnvpmodel_conf = {conf:?}\njetson_clocks = {clocks:?}\nclocks_store_file = {store:?}\n",
            sysfs = self.sysfs_root(),
            root = self.root(),
            nvpmodel = Self::nvpmodel_bin(),
            conf = self.nvpmodel_conf(),
            clocks = self.jetson_clocks(),
            store = self.root().join("var/lib/fleet-agent/l4t_dfs.conf"),
        )
    }

    /// What `fleet-sim-nvpmodel` needs in its environment (the agent passes
    /// its own environment to the tools it runs).
    pub fn env(&self) -> Vec<(String, OsString)> {
        let mut env = vec![
            (
                SIM_NVPMODEL_CONF_VAR.to_owned(),
                self.nvpmodel_conf().into_os_string(),
            ),
            (
                SIM_NVPMODEL_STATE_VAR.to_owned(),
                self.nvpmodel_status().into_os_string(),
            ),
            (
                SIM_NVPMODEL_SYSFS_VAR.to_owned(),
                self.sysfs_root().into_os_string(),
            ),
            (
                SIM_NVPMODEL_REBOOT_LOG_VAR.to_owned(),
                self.reboot_log().into_os_string(),
            ),
        ];
        if let Some(masks) = self.fixture().pg_masks() {
            env.push((SIM_NVPMODEL_PG_MASKS_VAR.to_owned(), masks.into()));
        }
        env
    }

    /// Where `fleet-sim-nvpmodel` notes each reboot an operator confirmed.
    pub fn reboot_log(&self) -> PathBuf {
        self.root().join("nvpmodel-reboots")
    }

    /// The modes `nvpmodel -m` rebooted the board into, oldest first.
    pub fn reboots(&self) -> Vec<u32> {
        fs::read_to_string(self.reboot_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("reboot ")?.trim().parse().ok())
            .collect()
    }

    /// Sets the saved mode, as if the board had booted in it; for before the
    /// agent starts.
    pub fn set_saved_mode(&self, id: u32) -> anyhow::Result<()> {
        write_atomic(
            &self.nvpmodel_status(),
            format!("pmode:{id:04}\n").as_bytes(),
        )
        .with_context(|| format!("write {}", self.nvpmodel_status().display()))
    }

    /// The saved power mode id, as the sim nvpmodel keeps it.
    pub fn saved_mode(&self) -> Option<u32> {
        let text = fs::read_to_string(self.nvpmodel_status()).ok()?;
        text.trim().strip_prefix("pmode:")?.trim().parse().ok()
    }

    /// The zones by normalised name, in `thermal_zoneN` order.
    pub fn zones(&self) -> Vec<String> {
        self.inner.zones.iter().map(|z| z.name.clone()).collect()
    }

    /// The kernel's name of a zone (`cpu` → `cpu-thermal`).
    pub fn zone_kind(&self, zone: &str) -> Option<String> {
        self.zone(zone).ok().map(|z| z.kind.clone())
    }

    fn zone(&self, zone: &str) -> anyhow::Result<&Zone> {
        let name = normalize_zone_name(zone);
        self.inner
            .zones
            .iter()
            .find(|z| z.name == name)
            .with_context(|| {
                format!(
                    "board has no thermal zone {zone:?}; it has {}",
                    self.zones().join(", ")
                )
            })
    }

    /// The temperature a zone's `temp` file holds now (None when offline).
    pub fn zone_celsius(&self, zone: &str) -> anyhow::Result<Option<f64>> {
        let z = self.zone(zone)?;
        let text = fs::read_to_string(&z.temp)?;
        let milli: i64 = text.trim().parse()?;
        Ok((milli != OFFLINE_MILLI).then(|| milli as f64 / 1000.0))
    }

    /// A scripted heat event: writes `celsius` to the zone now and holds it
    /// there, whatever the model says, until [`HwSim::release_zone`]. `zone`
    /// is any spelling of its name (`gpu`, `GPU-therm`, `gpu-thermal`).
    pub fn set_zone(&self, zone: &str, celsius: f64) -> anyhow::Result<()> {
        let name = self.zone(zone)?.name.clone();
        let mut state = self.inner.state.lock().expect("not poisoned");
        state.pins.insert(name, celsius);
        self.write_zones(&state)
    }

    /// Hands the zone back to the model (or to offline, if the fixture had it
    /// offline), with a write now.
    pub fn release_zone(&self, zone: &str) -> anyhow::Result<()> {
        let name = self.zone(zone)?.name.clone();
        let mut state = self.inner.state.lock().expect("not poisoned");
        state.pins.remove(&name);
        self.write_zones(&state)
    }

    /// The thermal model's constants in effect.
    pub fn params(&self) -> ThermalParams {
        self.inner
            .state
            .lock()
            .expect("not poisoned")
            .params
            .clone()
    }

    /// Replaces the thermal model's constants from its next tick on (a
    /// running model keeps the tick it was started with). fleet-dev's demo
    /// gives one board a weak fan this way.
    pub fn set_params(&self, params: ThermalParams) {
        self.inner.state.lock().expect("not poisoned").params = params;
    }

    /// The model's board temperature (before each zone's offset).
    pub fn board_celsius(&self) -> f64 {
        self.inner.state.lock().expect("not poisoned").board_c
    }

    /// Starts the thermal model for `board`: every tick it reads the CPU time
    /// of the board's experiments and writes the zones. Runs until the last
    /// clone of this `HwSim` is dropped; starting it again replaces it.
    pub fn start_thermal_model(&self, board: &Board) -> anyhow::Result<()> {
        self.start_model_with(BoardCpu::find(&board.cgroup_dirs()));
        Ok(())
    }

    fn start_model_with(&self, cpu: BoardCpu) {
        let sim = Arc::downgrade(&self.inner);
        let tick = self.inner.state.lock().expect("not poisoned").params.tick;
        let task = tokio::spawn(async move {
            let mut timer = tokio::time::interval(tick);
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last: Option<(u64, Instant)> = None;
            loop {
                timer.tick().await;
                let Some(inner) = sim.upgrade() else { return };
                let sim = HwSim { inner };
                let now = Instant::now();
                let usage = cpu.usage_usec();
                let (cores, dt) = match (last, usage) {
                    (Some((before, at)), Some(now_us)) => {
                        let wall = now.duration_since(at);
                        // A counter that went back is a new cgroup: no use yet.
                        let used = now_us.saturating_sub(before) as f64 / 1e6;
                        (used / wall.as_secs_f64().max(1e-3), wall)
                    }
                    _ => (0.0, tick),
                };
                if let Some(us) = usage {
                    last = Some((us, now));
                }
                let file_pins = sim.read_heat_file();
                let mut state = sim.inner.state.lock().expect("not poisoned");
                state.file_pins = file_pins;
                state.board_c = state.params.step(state.board_c, cores, dt);
                if let Err(e) = sim.write_zones(&state) {
                    tracing::warn!(root = %sim.root().display(), error = %format!("{e:#}"), "thermal model cannot write zones");
                }
            }
        });
        if let Some(old) = self.inner.model.lock().expect("not poisoned").replace(task) {
            old.abort();
        }
    }

    /// A file another process (`fleet-dev heat`) writes to pin zones while
    /// the model runs: one `<zone> <celsius>` per line. The model reads it at
    /// every tick; a zone that leaves the file goes back to the model.
    pub fn heat_file(&self) -> PathBuf {
        self.root().join("heat")
    }

    fn read_heat_file(&self) -> HashMap<String, f64> {
        let Ok(text) = fs::read_to_string(self.heat_file()) else {
            return HashMap::new();
        };
        parse_heat(&text)
            .into_iter()
            .filter(|(zone, _)| self.zone(zone).is_ok())
            .map(|(zone, c)| (normalize_zone_name(&zone), c))
            .collect()
    }

    /// Writes every zone from the state (pins first, then the model).
    fn write_zones(&self, state: &ThermalState) -> anyhow::Result<()> {
        let ambient = state.params.ambient_c;
        let mut values: BTreeMap<&str, Option<f64>> = BTreeMap::new();
        for z in &self.inner.zones {
            let value = match state.pins.get(&z.name).or(state.file_pins.get(&z.name)) {
                Some(pinned) => Some(*pinned),
                None if z.offline => None,
                None if z.name == "tj" => continue,
                None => Some(zone_temperature(&z.name, state.board_c, ambient)),
            };
            values.insert(&z.name, value);
        }
        let tj_model = self
            .inner
            .zones
            .iter()
            .filter(|z| is_soc_sensor(&z.name))
            .filter_map(|z| values.get(z.name.as_str()).copied().flatten())
            .fold(None, |max: Option<f64>, t| {
                Some(max.map_or(t, |m| m.max(t)))
            });
        for z in &self.inner.zones {
            let value = match values.get(z.name.as_str()) {
                Some(v) => *v,
                // tj, unpinned: the hottest SoC sensor.
                None => tj_model.or(Some(state.board_c)),
            };
            let milli = match value {
                Some(c) => (c * 1000.0).round() as i64,
                None => OFFLINE_MILLI,
            };
            write_atomic(&z.temp, format!("{milli}\n").as_bytes())?;
        }
        Ok(())
    }
}

/// `<zone> <celsius>` lines; anything else (blank lines, `#` comments,
/// garbage) is skipped.
pub fn parse_heat(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let zone = words.next().filter(|z| !z.starts_with('#'))?;
            let celsius: f64 = words.next()?.parse().ok()?;
            celsius.is_finite().then(|| (zone.to_owned(), celsius))
        })
        .collect()
}

/// Environment of `fleet-sim-nvpmodel` (see its documentation): its conf
/// (what `/etc/nvpmodel.conf` is on a board), its saved-mode file, the sysfs
/// root its writes go to, the GPU power-gating masks the reduced confs lack,
/// and the file it notes confirmed reboots in.
pub const SIM_NVPMODEL_CONF_VAR: &str = "FLEET_SIM_NVPMODEL_CONF";
pub const SIM_NVPMODEL_STATE_VAR: &str = "FLEET_SIM_NVPMODEL_STATE";
pub const SIM_NVPMODEL_SYSFS_VAR: &str = "FLEET_SIM_NVPMODEL_SYSFS";
pub const SIM_NVPMODEL_PG_MASKS_VAR: &str = "FLEET_SIM_NVPMODEL_PG_MASKS";
pub const SIM_NVPMODEL_REBOOT_LOG_VAR: &str = "FLEET_SIM_NVPMODEL_REBOOT_LOG";

/// Replaces `path` with `bytes` at once: written beside it, then renamed over
/// it, so a reader opens the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.new"));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Where a board's manager puts experiment instances, below its cgroup: a
/// user manager (the testbed's boards) in `app.slice/app-<template>.slice`, a
/// system manager in `system.slice/system-<template>.slice` (`-` escaped as
/// `\x2d`). The board's other units (its bus, for one) are left out.
const EXPERIMENT_SLICES: [&str; 2] = [
    "app.slice/app-brain\\x2dexperiment.slice",
    "system.slice/system-brain\\x2dexperiment.slice",
];

/// The CPU time the board's experiments used: their slice in the cgroup2
/// hierarchy (`cpu.stat`, `usage_usec`), else in the cpuacct hierarchy
/// (`cpuacct.usage`, ns). On a hybrid machine whose cpu and cpuacct are
/// separate hierarchies systemd never creates units' cpuacct cgroups, so
/// there only cgroup2 counts.
#[derive(Debug, Clone)]
struct BoardCpu {
    board_dirs: Vec<PathBuf>,
}

impl BoardCpu {
    fn find(board_dirs: &[PathBuf]) -> BoardCpu {
        BoardCpu {
            board_dirs: board_dirs.to_vec(),
        }
    }

    /// None while no experiment has run (the slice does not exist yet, or
    /// no longer).
    fn usage_usec(&self) -> Option<u64> {
        let slices = || {
            self.board_dirs
                .iter()
                .flat_map(|d| EXPERIMENT_SLICES.iter().map(move |s| d.join(s)))
        };
        for slice in slices() {
            if let Ok(text) = fs::read_to_string(slice.join("cpu.stat")) {
                if let Some(v) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok())
                {
                    return Some(v);
                }
            }
        }
        for slice in slices() {
            if let Ok(text) = fs::read_to_string(slice.join("cpuacct.usage")) {
                if let Ok(ns) = text.trim().parse::<u64>() {
                    return Some(ns / 1000);
                }
            }
        }
        None
    }
}

fn read_zones(sysfs: &Path) -> anyhow::Result<Vec<Zone>> {
    let dir = sysfs.join("devices/virtual/thermal");
    let mut zones = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = file
            .strip_prefix("thermal_zone")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let kind = fs::read_to_string(entry.path().join("type"))?
            .trim()
            .to_owned();
        let temp = entry.path().join("temp");
        let offline = fs::read_to_string(&temp)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .is_none_or(|m| m == OFFLINE_MILLI);
        zones.push(Zone {
            index,
            name: normalize_zone_name(&kind),
            kind,
            temp,
            offline,
        });
    }
    zones.sort_by_key(|z| z.index);
    Ok(zones)
}

/// The Orin NX variant of the borrowed AGX tree: its model string, and one
/// INA3221 whose first channel is the board's input (`VDD_IN`).
fn make_orin_nx(root: &Path) -> anyhow::Result<()> {
    write_atomic(
        &root.join("proc/device-tree/model"),
        format!("{ORIN_NX_MODEL}\0").as_bytes(),
    )?;
    let i2c = root.join("sysfs/devices/platform/bus@0/c240000.i2c/i2c-1");
    let chip = i2c.join("1-0040/hwmon/hwmon2");
    // VDD_IN is confirmed for the NX; the other two names are the usual
    // ones for its module but were not confirmed by the fixtures' research.
    for (channel, label) in [(1, "VDD_IN"), (2, "VDD_CPU_GPU_CV"), (3, "VDD_SOC")] {
        write_atomic(
            &chip.join(format!("in{channel}_label")),
            format!("{label}\n").as_bytes(),
        )?;
    }
    fs::remove_dir_all(i2c.join("1-0041"))?;
    remove_dangling_links(&root.join("sysfs"))?;
    Ok(())
}

fn remove_dangling_links(dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            if fs::metadata(entry.path()).is_err() {
                fs::remove_file(entry.path())?;
            }
        } else if kind.is_dir() {
            remove_dangling_links(&entry.path())?;
        }
    }
    Ok(())
}

/// Copies a fixture tree, turning flattened symlinks back into symlinks.
///
/// A checkout without symlink support stores each link as a regular file
/// holding its target; a real board has real links (`class/thermal/
/// thermal_zone0` → `../../devices/virtual/thermal/thermal_zone0`), and the
/// agent follows them, so the copy must have them too.
fn copy_tree(src_root: &Path, src: &Path, dst: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dst).with_context(|| format!("create {}", dst.display()))?;
    for entry in fs::read_dir(src).with_context(|| format!("read {}", src.display()))? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if kind.is_dir() {
            copy_tree(src_root, &from, &to)?;
        } else if let Some(target) = flattened_link_target(src_root, &from) {
            std::os::unix::fs::symlink(target, &to)?;
        } else {
            fs::copy(&from, &to).with_context(|| format!("copy {}", from.display()))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o644))?;
        }
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Whether a fixture file is a flattened symlink: one line of path text with
/// no trailing newline (sysfs attributes end in one, device-tree strings in
/// NUL) naming an existing entry inside the fixtures, relative to the file.
fn flattened_link_target(src_root: &Path, file: &Path) -> Option<String> {
    let bytes = fs::read(file).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    if text.is_empty() || text.contains(['\n', '\0', ' ', '\t']) {
        return None;
    }
    let target = normalize(&file.parent()?.join(text));
    // Links may point above the copied subtree (sysfs links stay inside
    // sysfs; etc/nvpmodel.conf inside etc), so check against the fixture's
    // parent directory too.
    let base = normalize(src_root.parent().unwrap_or(src_root));
    (target.starts_with(&base) && target.exists()).then(|| text.to_owned())
}

/// Resolves `.` and `..` lexically: a target may pass through other
/// flattened links, so the filesystem cannot resolve it.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(fixture: Fixture) -> (tempfile::TempDir, HwSim) {
        let dir = tempfile::tempdir().unwrap();
        let sim = HwSim::install_at(
            &dir.path().join("hw"),
            fixture,
            ThermalParams::bounded(40.0, 60.0),
        )
        .unwrap();
        (dir, sim)
    }

    #[test]
    fn every_fixture_installs_with_real_links_and_resting_zones() {
        for fixture in Fixture::ALL {
            let (_dir, sim) = install(fixture);
            let zones = sim.zones();
            assert_eq!(zones.len(), 11, "{fixture}: {zones:?}");
            assert_eq!(zones[0], "cpu");
            // Read through class/thermal, as the agent does: the link is real.
            let link = sim.sysfs_root().join("class/thermal/thermal_zone0");
            assert!(
                fs::symlink_metadata(&link).unwrap().is_symlink(),
                "{fixture}"
            );
            let text = fs::read_to_string(link.join("temp")).unwrap();
            assert_eq!(text, "42000\n", "{fixture}: cpu rests 2 °C above ambient");
            // The conf is reachable by its usual name.
            let conf = fs::read_to_string(sim.nvpmodel_conf()).unwrap();
            assert!(conf.contains("POWER_MODEL"), "{fixture}");
            let (modes, saved) = fixture.power_modes();
            for (id, name) in modes {
                assert!(
                    conf.contains(&format!("ID={id} NAME={name}")),
                    "{fixture}: {id} {name}"
                );
            }
            let model = fs::read(sim.root().join("proc/device-tree/model")).unwrap();
            assert_eq!(model, format!("{}\0", fixture.model()).as_bytes());
            match fixture {
                Fixture::AgxOrinR35 => assert_eq!(sim.saved_mode(), None),
                _ => assert_eq!(sim.saved_mode(), Some(saved)),
            }
            let release = fs::read_to_string(sim.root().join("etc/nv_tegra_release")).ok();
            assert_eq!(
                release.is_some(),
                fixture.l4t_release().is_some(),
                "{fixture}"
            );
            assert!(!sim.jetson_clocks().exists());
        }
    }

    #[test]
    fn offline_zones_stay_offline_until_pinned() {
        let (_dir, sim) = install(Fixture::AgxOrinR35);
        assert_eq!(sim.zone_celsius("gpu").unwrap(), None);
        assert_eq!(sim.zone_celsius("CV0-therm").unwrap(), None);
        sim.set_zone("gpu", 71.5).unwrap();
        assert_eq!(sim.zone_celsius("gpu").unwrap(), Some(71.5));
        sim.release_zone("gpu").unwrap();
        assert_eq!(sim.zone_celsius("gpu").unwrap(), None);
    }

    #[test]
    fn pins_hold_and_tj_follows_the_hottest_soc_sensor() {
        let (_dir, sim) = install(Fixture::AgxOrinR36);
        assert_eq!(sim.zone_celsius("tj").unwrap(), Some(42.0));
        sim.set_zone("gpu-thermal", 90.0).unwrap();
        assert_eq!(sim.zone_celsius("gpu").unwrap(), Some(90.0));
        assert_eq!(sim.zone_celsius("tj").unwrap(), Some(90.0));
        // The board sensors are not SoC sensors.
        sim.set_zone("gpu", 40.0).unwrap();
        sim.set_zone("tboard", 95.0).unwrap();
        assert_eq!(sim.zone_celsius("tj").unwrap(), Some(42.0));
        sim.release_zone("tboard").unwrap();
        assert_eq!(sim.zone_celsius("tboard").unwrap(), Some(40.0));
        let err = sim.set_zone("nope", 1.0).unwrap_err().to_string();
        assert!(err.contains("cpu, gpu"), "{err}");
    }

    #[test]
    fn orin_nx_has_its_own_input_rail_and_one_chip() {
        let (_dir, sim) = install(Fixture::OrinNx);
        let hwmon = sim.sysfs_root().join("class/hwmon");
        let mut labels = Vec::new();
        for entry in fs::read_dir(&hwmon).unwrap() {
            let dir = entry.unwrap().path();
            if let Ok(l) = fs::read_to_string(dir.join("in1_label")) {
                labels.push(l.trim().to_owned());
            }
        }
        assert_eq!(labels, ["VDD_IN"]);
        assert!(!sim.sysfs_root().join("bus/i2c/devices/1-0041").exists());
    }

    #[test]
    fn the_lag_approaches_its_target_and_respects_the_ceiling() {
        let p = ThermalParams {
            ambient_c: 35.0,
            per_core_c: 10.0,
            tau: Duration::from_secs(10),
            tick: Duration::from_secs(1),
            ceiling_c: 100.0,
        };
        // One time constant covers 63 % of the way.
        let t = p.step(35.0, 2.0, Duration::from_secs(10));
        assert!(
            (t - (35.0 + 20.0 * (1.0 - (-1.0f64).exp()))).abs() < 1e-9,
            "{t}"
        );
        // Idle cools back towards ambient.
        assert!(p.step(60.0, 0.0, Duration::from_secs(1)) < 60.0);
        let capped = ThermalParams {
            ceiling_c: 50.0,
            ..p
        };
        assert_eq!(capped.step(49.0, 8.0, Duration::from_secs(100)), 50.0);
    }

    #[test]
    fn cpu_use_is_read_from_the_experiments_slice_only() {
        let dir = tempfile::tempdir().unwrap();
        let unified = dir.path().join("unified/board");
        let cpuacct = dir.path().join("cpuacct/board");
        let cpu = BoardCpu::find(&[cpuacct.clone(), unified.clone()]);
        assert_eq!(cpu.usage_usec(), None, "nothing ran yet");
        // The board's bus runs in app.slice too; it is not an experiment.
        fs::create_dir_all(unified.join("app.slice")).unwrap();
        fs::write(unified.join("app.slice/cpu.stat"), "usage_usec 999\n").unwrap();
        assert_eq!(cpu.usage_usec(), None);
        let slice = cpuacct.join(EXPERIMENT_SLICES[0]);
        fs::create_dir_all(&slice).unwrap();
        fs::write(slice.join("cpuacct.usage"), "5000000\n").unwrap();
        assert_eq!(cpu.usage_usec(), Some(5000));
        // cgroup2 wins over cpuacct.
        let slice = unified.join(EXPERIMENT_SLICES[0]);
        fs::create_dir_all(&slice).unwrap();
        fs::write(
            slice.join("cpu.stat"),
            "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n",
        )
        .unwrap();
        assert_eq!(cpu.usage_usec(), Some(1234));
    }

    #[test]
    fn heat_lines_parse_and_skip_the_rest() {
        assert_eq!(
            parse_heat("gpu 90\n# note\n\ncpu-thermal 71.5\nbad\ntj nan\nsoc0 x\n"),
            [("gpu".to_owned(), 90.0), ("cpu-thermal".to_owned(), 71.5)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_model_applies_the_heat_file() {
        let (_dir, sim) = install(Fixture::AgxOrinR36);
        sim.start_model_with(BoardCpu::find(&[]));
        write_atomic(&sim.heat_file(), b"GPU-therm 88\nnope 1\n").unwrap();
        crate::poll::wait_for("the pinned gpu", Duration::from_secs(10), || async {
            Ok((sim.zone_celsius("gpu")? == Some(88.0))
                .then_some(())
                .into())
        })
        .await
        .unwrap();
        assert_eq!(sim.zone_celsius("tj").unwrap(), Some(88.0));
        fs::remove_file(sim.heat_file()).unwrap();
        crate::poll::wait_for("gpu back to the model", Duration::from_secs(10), || async {
            Ok((sim.zone_celsius("gpu")? == Some(39.0))
                .then_some(())
                .into())
        })
        .await
        .unwrap();
    }

    #[test]
    fn atomic_writes_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("temp");
        write_atomic(&f, b"1\n").unwrap();
        write_atomic(&f, b"2\n").unwrap();
        assert_eq!(fs::read_to_string(&f).unwrap(), "2\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["temp"]);
    }

    #[test]
    fn fixture_names_parse() {
        for f in Fixture::ALL {
            assert_eq!(f.name().parse::<Fixture>(), Ok(f));
        }
        let e = "tx2".parse::<Fixture>().unwrap_err();
        assert!(e.contains("agx-orin-r36"), "{e}");
    }
}
