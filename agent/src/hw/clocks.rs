//! `jetson_clocks`: lock the clocks at their maximum, undo it, and tell which state the
//! board is in.
//!
//! The contract the code follows (NVIDIA's script, L4T R35 era):
//! - `jetson_clocks` with no argument locks: CPU min := max with idle states off, GPU
//!   min := max, EMC pinned. It prints nothing.
//! - There is no "off". Undoing means `--store <file>` *before* the first lock and
//!   `--restore <file>` afterwards. Storing while locked saves the locked values, so the
//!   agent stores only when the clocks are unlocked.
//! - `--store` on an existing file asks on stdin whether to overwrite; the agent removes
//!   its own file first and closes stdin, so no prompt can wait.
//! - `--restore` prints `Error: Failed to restore <path>` for a failed write and still
//!   exits 0, and the unknown-option path exits 0 too. So every result is checked by
//!   reading the state back with `--show`.
//! - There is no "enabled" flag: the state is derived from `--show` (CPU MinFreq ==
//!   MaxFreq, GPU min == max, EMC FreqOverride=1), as jtop does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{run_tool, ToolError, ToolOutput};

pub const DEFAULT_JETSON_CLOCKS_PATH: &str = "/usr/bin/jetson_clocks";
/// Where the agent keeps the clocks stored before its first lock.
pub const DEFAULT_CLOCKS_STORE_FILE: &str = "/var/lib/fleet-agent/jetson_clocks.conf";
pub const DEFAULT_JETSON_CLOCKS_TIMEOUT: Duration = Duration::from_secs(30);

/// One CPU line of `--show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuClock {
    pub cpu: u32,
    /// None on L4T R39, which dropped the field.
    pub online: Option<bool>,
    pub governor: Option<String>,
    pub min_khz: u64,
    pub max_khz: u64,
    pub current_khz: Option<u64>,
    /// `(state, enabled)`, e.g. `("c7", true)`.
    pub idle_states: Vec<(String, bool)>,
}

/// A `GPU`, `EMC`, `DLA*`, `PVA*` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineClock {
    pub name: String,
    pub online: Option<bool>,
    pub min_hz: u64,
    pub max_hz: u64,
    pub current_hz: Option<u64>,
    /// EMC only; dropped on R39.
    pub freq_override: Option<bool>,
}

/// The fan line: who controls it and the PWM values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanControl {
    /// `nvfancontrol` (R36) or the service state `active` (R35).
    pub control: String,
    /// `("hwmon0_pwm1", 48)`.
    pub pwm: Vec<(String, u8)>,
}

/// Parsed `jetson_clocks --show`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClocksShow {
    pub soc_family: Option<String>,
    pub machine: Option<String>,
    pub cpus: Vec<CpuClock>,
    pub gpu: Option<EngineClock>,
    pub active_gpu_tpcs: Option<u32>,
    pub emc: Option<EngineClock>,
    /// DLA and PVA lines.
    pub engines: Vec<EngineClock>,
    pub fan: Option<FanControl>,
    pub power_mode: Option<String>,
}

/// Whether jetson_clocks is in effect, as far as the clocks show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClocksState {
    /// Every online CPU and the GPU run min == max, and EMC is overridden where the
    /// release reports it.
    Locked,
    /// None of those holds.
    Unlocked,
    /// Some but not all: someone changed clocks by hand, or a restore half failed.
    Partial,
}

impl std::fmt::Display for ClocksState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClocksState::Locked => "locked",
            ClocksState::Unlocked => "unlocked",
            ClocksState::Partial => "partly locked",
        })
    }
}

impl ClocksShow {
    /// Derives the state from the reported frequencies.
    pub fn state(&self) -> ClocksState {
        let mut checks = Vec::new();
        let online = self.cpus.iter().filter(|c| c.online != Some(false));
        for cpu in online {
            checks.push(cpu.min_khz == cpu.max_khz);
        }
        if let Some(gpu) = &self.gpu {
            checks.push(gpu.min_hz == gpu.max_hz);
        }
        if let Some(pinned) = self.emc.as_ref().and_then(|e| e.freq_override) {
            checks.push(pinned);
        }
        if !checks.is_empty() && checks.iter().all(|c| *c) {
            ClocksState::Locked
        } else if checks.iter().all(|c| !*c) {
            ClocksState::Unlocked
        } else {
            ClocksState::Partial
        }
    }
}

/// `key=value` fields of a line.
fn fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split_whitespace().filter_map(|w| w.split_once('='))
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    fields(text).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn num(text: &str, name: &str) -> Option<u64> {
    field(text, name)?.parse().ok()
}

fn flag(text: &str, name: &str) -> Option<bool> {
    match field(text, name)? {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of `jetson_clocks --show` is not understood: {text:?}")]
pub struct ShowParseError {
    pub line: usize,
    pub text: String,
}

fn engine(name: &str, rest: &str, line: usize, raw: &str) -> Result<EngineClock, ShowParseError> {
    let bad = || ShowParseError {
        line,
        text: raw.to_string(),
    };
    Ok(EngineClock {
        name: name.to_string(),
        online: flag(rest, "Online"),
        min_hz: num(rest, "MinFreq").ok_or_else(bad)?,
        max_hz: num(rest, "MaxFreq").ok_or_else(bad)?,
        current_hz: num(rest, "CurrentFreq"),
        freq_override: flag(rest, "FreqOverride"),
    })
}

/// Parses `jetson_clocks --show` of L4T R35, R36 and R39. Lines it does not know are
/// skipped; known lines with missing frequencies are errors.
pub fn parse_show(text: &str) -> Result<ClocksShow, ShowParseError> {
    let mut show = ClocksShow::default();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim_end();
        if let Some(rest) = line.strip_prefix("SOC family:") {
            // `SOC family:tegra234  Machine:<model with spaces>`
            let (family, machine) = match rest.split_once("Machine:") {
                Some((f, m)) => (f.trim(), Some(m.trim().to_string())),
                None => (rest.trim(), None),
            };
            show.soc_family = Some(family.to_string());
            show.machine = machine;
        } else if let Some(rest) = line.strip_prefix("NV Power Mode:") {
            show.power_mode = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("Active GPU TPCs:") {
            show.active_gpu_tpcs = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("FAN ") {
            // `FAN Dynamic Speed Control=nvfancontrol hwmon0_pwm1=48` (R36),
            // `FAN Dynamic Speed control=active hwmon2_pwm1=55` (R35).
            let mut fan = FanControl {
                control: String::new(),
                pwm: Vec::new(),
            };
            for (k, v) in fields(rest) {
                if k.eq_ignore_ascii_case("control") {
                    fan.control = v.to_string();
                } else if k.contains("_pwm") && !k.ends_with("_enable") {
                    if let Ok(p) = v.parse() {
                        fan.pwm.push((k.to_string(), p));
                    }
                }
            }
            show.fan = Some(fan);
        } else if let Some((name, rest)) = line.split_once(':') {
            let name = name.trim();
            if let Some(id) = name.strip_prefix("cpu").and_then(|n| n.parse().ok()) {
                let bad = || ShowParseError {
                    line: line_no,
                    text: raw.to_string(),
                };
                let (freqs, idle) = match rest.split_once("IdleStates:") {
                    Some((f, idle)) => (f, idle),
                    None => (rest, ""),
                };
                show.cpus.push(CpuClock {
                    cpu: id,
                    online: flag(freqs, "Online"),
                    governor: field(freqs, "Governor").map(str::to_string),
                    min_khz: num(freqs, "MinFreq").ok_or_else(bad)?,
                    max_khz: num(freqs, "MaxFreq").ok_or_else(bad)?,
                    current_khz: num(freqs, "CurrentFreq"),
                    idle_states: fields(idle)
                        .map(|(k, v)| (k.to_string(), v == "1"))
                        .collect(),
                });
            } else if name.starts_with("DLA") || name.starts_with("PVA") {
                show.engines.push(engine(name, rest, line_no, raw)?);
            }
        } else if let Some(rest) = line.strip_prefix("GPU ") {
            show.gpu = Some(engine("GPU", rest, line_no, raw)?);
        } else if let Some(rest) = line.strip_prefix("EMC ") {
            show.emc = Some(engine("EMC", rest, line_no, raw)?);
        }
    }
    // R35 lists CPUs in lexical order (cpu0, cpu1, cpu10, …).
    show.cpus.sort_by_key(|c| c.cpu);
    Ok(show)
}

/// Parses a `--store` file: `path:value` lines.
pub fn parse_store_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.rsplit_once(':'))
        .map(|(p, v)| (p.trim().to_string(), v.trim().to_string()))
        .filter(|(p, _)| !p.is_empty())
        .collect()
}

/// `Error: …` lines of the script's output.
pub fn error_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim())
        // The unknown-option message is coloured; strip ANSI escapes before matching.
        .map(strip_ansi)
        .filter(|l| l.starts_with("Error:") || l.starts_with("Unknown option"))
        .collect()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ClocksError {
    #[error("running `{program} {args}` failed")]
    Run {
        program: PathBuf,
        args: String,
        #[source]
        source: ToolError,
    },
    #[error("`{program} --show` printed something unexpected")]
    Show {
        program: PathBuf,
        #[source]
        source: ShowParseError,
    },
    #[error("`{program} --show` printed no clocks at all ({output:?}); is it run as root?")]
    EmptyShow { program: PathBuf, output: String },
    #[error("jetson_clocks reported errors ({errors}) while {action}")]
    Reported {
        action: &'static str,
        errors: String,
    },
    #[error(
        "could not keep the current clocks in {path} before locking them: {detail}; \
         check that its directory exists and is writable"
    )]
    Store { path: PathBuf, detail: String },
    #[error(
        "there are no stored clocks in {path} to restore; the agent stores them before its \
         first lock, so these clocks were locked by someone else (a reboot resets them)"
    )]
    NothingStored { path: PathBuf },
    #[error("after {action} the clocks are {state}, not {expected}; {hint}")]
    NotApplied {
        action: &'static str,
        state: ClocksState,
        expected: ClocksState,
        hint: &'static str,
    },
}

/// The clocks tool, behind a narrow trait so pure logic can be tested with a fake.
pub trait Clocks: Send + Sync {
    /// The clocks as `--show` reports them.
    fn show(&self) -> impl std::future::Future<Output = Result<ClocksShow, ClocksError>> + Send;
    /// Locks the clocks at their maximum (storing the current ones first when they are
    /// unlocked) and confirms it by reading back.
    fn lock(&self) -> impl std::future::Future<Output = Result<ClocksState, ClocksError>> + Send;
    /// Restores the stored clocks and confirms it by reading back.
    fn unlock(&self) -> impl std::future::Future<Output = Result<ClocksState, ClocksError>> + Send;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetsonClocksConfig {
    pub program: PathBuf,
    /// Passed to `--store`/`--restore`; always explicit, since the script's default file
    /// differs from what its usage text says.
    pub store_file: PathBuf,
    pub timeout: Duration,
}

impl Default for JetsonClocksConfig {
    fn default() -> Self {
        JetsonClocksConfig {
            program: DEFAULT_JETSON_CLOCKS_PATH.into(),
            store_file: DEFAULT_CLOCKS_STORE_FILE.into(),
            timeout: DEFAULT_JETSON_CLOCKS_TIMEOUT,
        }
    }
}

/// [`Clocks`] backed by the real `jetson_clocks`.
#[derive(Debug, Clone)]
pub struct JetsonClocks {
    config: JetsonClocksConfig,
}

impl JetsonClocks {
    pub fn new(config: JetsonClocksConfig) -> Self {
        JetsonClocks { config }
    }

    pub fn config(&self) -> &JetsonClocksConfig {
        &self.config
    }

    async fn run(&self, args: &[&str]) -> Result<ToolOutput, ClocksError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        run_tool(&self.config.program, &args, self.config.timeout, None)
            .await
            .map_err(|source| ClocksError::Run {
                program: self.config.program.clone(),
                args: args.join(" "),
                source,
            })
    }

    fn store_path(&self) -> String {
        self.config.store_file.display().to_string()
    }

    async fn store(&self) -> Result<(), ClocksError> {
        let path = &self.config.store_file;
        let store_error = |detail: String| ClocksError::Store {
            path: path.clone(),
            detail,
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| store_error(e.to_string()))?;
        }
        // Our own file: removing it avoids the overwrite prompt.
        match tokio::fs::remove_file(path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(store_error(e.to_string())),
        }
        let output = self.run(&["--store", &self.store_path()]).await?;
        let errors = error_lines(&output.text());
        if !errors.is_empty() {
            return Err(store_error(errors.join("; ")));
        }
        if !stored(path).await {
            return Err(store_error("the tool wrote no file".to_string()));
        }
        Ok(())
    }
}

async fn stored(path: &Path) -> bool {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => !parse_store_file(&text).is_empty(),
        Err(_) => false,
    }
}

impl Clocks for JetsonClocks {
    async fn show(&self) -> Result<ClocksShow, ClocksError> {
        let output = self.run(&["--show"]).await?;
        let show = parse_show(&output.stdout).map_err(|source| ClocksError::Show {
            program: self.config.program.clone(),
            source,
        })?;
        if show.cpus.is_empty() && show.gpu.is_none() {
            return Err(ClocksError::EmptyShow {
                program: self.config.program.clone(),
                output: output.text(),
            });
        }
        Ok(show)
    }

    async fn lock(&self) -> Result<ClocksState, ClocksError> {
        match self.show().await?.state() {
            ClocksState::Locked => return Ok(ClocksState::Locked),
            ClocksState::Unlocked => self.store().await?,
            // Storing now would save half-locked clocks as the ones to return to; keep
            // an earlier store if there is one.
            ClocksState::Partial => {
                tracing::warn!(store = %self.store_path(), "clocks are partly locked; not storing them before locking");
            }
        }
        let output = self.run(&[]).await?;
        let errors = error_lines(&output.text());
        if !errors.is_empty() {
            return Err(ClocksError::Reported {
                action: "locking the clocks",
                errors: errors.join("; "),
            });
        }
        match self.show().await?.state() {
            ClocksState::Locked => Ok(ClocksState::Locked),
            state => Err(ClocksError::NotApplied {
                action: "locking",
                state,
                expected: ClocksState::Locked,
                hint: "jetson_clocks needs root; check the agent's journal for its output",
            }),
        }
    }

    async fn unlock(&self) -> Result<ClocksState, ClocksError> {
        if self.show().await?.state() == ClocksState::Unlocked {
            return Ok(ClocksState::Unlocked);
        }
        if !stored(&self.config.store_file).await {
            return Err(ClocksError::NothingStored {
                path: self.config.store_file.clone(),
            });
        }
        let output = self.run(&["--restore", &self.store_path()]).await?;
        // Errors here come with exit status 0; they are reported together with the
        // state read back below, which is what decides.
        let errors = error_lines(&output.text());
        match self.show().await?.state() {
            ClocksState::Unlocked => {
                if !errors.is_empty() {
                    tracing::warn!(errors = ?errors, "jetson_clocks --restore reported errors, but the clocks are unlocked");
                }
                Ok(ClocksState::Unlocked)
            }
            _ if !errors.is_empty() => Err(ClocksError::Reported {
                action: "restoring the clocks",
                errors: errors.join("; "),
            }),
            state => Err(ClocksError::NotApplied {
                action: "restoring",
                state,
                expected: ClocksState::Unlocked,
                hint: "the stored file may hold locked clocks; a reboot resets them",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::testutil::{fixture_text, ScriptInstance};

    #[test]
    fn r36_show_before_locking() {
        let show = parse_show(&fixture_text("jetson-agx-orin/jetson_clocks-show.txt")).unwrap();
        assert_eq!(show.soc_family.as_deref(), Some("tegra234"));
        assert_eq!(
            show.machine.as_deref(),
            Some("NVIDIA Jetson AGX Orin Developer Kit")
        );
        assert_eq!(show.cpus.len(), 12);
        assert_eq!(
            show.cpus.iter().filter(|c| c.online == Some(true)).count(),
            8
        );
        let cpu0 = &show.cpus[0];
        assert_eq!(
            (cpu0.min_khz, cpu0.max_khz, cpu0.current_khz),
            (729_600, 1_728_000, Some(1_420_800))
        );
        assert_eq!(cpu0.governor.as_deref(), Some("schedutil"));
        assert_eq!(
            cpu0.idle_states,
            [("WFI".to_string(), true), ("c7".to_string(), true)]
        );
        assert_eq!(show.cpus[10].cpu, 10);
        assert_eq!(show.cpus[10].max_khz, 2_201_600);
        let gpu = show.gpu.as_ref().unwrap();
        assert_eq!((gpu.min_hz, gpu.max_hz), (306_000_000, 612_000_000));
        assert_eq!(show.active_gpu_tpcs, Some(4));
        assert_eq!(show.emc.as_ref().unwrap().freq_override, Some(false));
        let engines: Vec<_> = show.engines.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            engines,
            [
                "DLA0_CORE",
                "DLA0_FALCON",
                "DLA1_CORE",
                "DLA1_FALCON",
                "PVA0_VPS0",
                "PVA0_AXI"
            ]
        );
        let fan = show.fan.as_ref().unwrap();
        assert_eq!(fan.control, "nvfancontrol");
        assert_eq!(fan.pwm, [("hwmon0_pwm1".to_string(), 48)]);
        assert_eq!(show.power_mode.as_deref(), Some("MODE_30W"));
        assert_eq!(show.state(), ClocksState::Unlocked);
    }

    #[test]
    fn r36_show_after_locking_is_locked() {
        let show = parse_show(&fixture_text(
            "jetson-agx-orin/jetson_clocks/show-after-run.txt",
        ))
        .unwrap();
        // Offline CPUs (8-11) keep their range and do not count.
        assert_eq!(show.cpus[8].online, Some(false));
        assert_ne!(show.cpus[8].min_khz, show.cpus[8].max_khz);
        assert!(show.cpus[0].idle_states.iter().all(|(_, enabled)| !enabled));
        assert_eq!(show.emc.as_ref().unwrap().freq_override, Some(true));
        assert_eq!(show.state(), ClocksState::Locked);
    }

    #[test]
    fn r35_show_with_lexical_cpu_order() {
        let show = parse_show(&fixture_text(
            "jetson-agx-orin/l4t-r35/jetson_clocks-show.txt",
        ))
        .unwrap();
        assert_eq!(show.machine.as_deref(), Some("Jetson AGX Orin"));
        let ids: Vec<_> = show.cpus.iter().map(|c| c.cpu).collect();
        assert_eq!(ids, (0..12).collect::<Vec<_>>());
        assert!(show.cpus.iter().all(|c| c.online == Some(true)));
        assert_eq!(show.active_gpu_tpcs, None);
        assert_eq!(show.gpu.as_ref().unwrap().max_hz, 1_300_500_000);
        let fan = show.fan.as_ref().unwrap();
        assert_eq!(fan.control, "active");
        assert_eq!(fan.pwm, [("hwmon2_pwm1".to_string(), 55)]);
        assert_eq!(show.power_mode.as_deref(), Some("MAXN"));
        assert_eq!(show.state(), ClocksState::Unlocked);
    }

    #[test]
    fn r39_lines_without_online_or_override_and_partial_states() {
        let show = parse_show(
            "SOC family:tegra264  Machine:NVIDIA Jetson AGX Thor Developer Kit\n\
             Online CPUs: 0-11, Offline CPUs: 12-13\n\
             cpu0: Governor=schedutil MinFreq=2601000 MaxFreq=2601000 CurrentFreq=2601000 IdleStates: WFI=0 \n\
             GPU MinFreq=1575000000 MaxFreq=1575000000 CurrentFreq=1575000000\n\
             EMC MinFreq=204000000 MaxFreq=4266000000 CurrentFreq=4266000000\n\
             FAN Dynamic Speed Control=nvfancontrol hwmon1_pwm1=255\n\
             FAN Dynamic Speed Control=nvfancontrol hwmon1_pwm1_enable=1\n",
        )
        .unwrap();
        assert_eq!(show.cpus[0].online, None);
        assert_eq!(show.emc.as_ref().unwrap().freq_override, None);
        assert_eq!(show.state(), ClocksState::Locked);

        let mut partial =
            parse_show(&fixture_text("jetson-agx-orin/jetson_clocks-show.txt")).unwrap();
        partial.gpu.as_mut().unwrap().min_hz = 612_000_000;
        assert_eq!(partial.state(), ClocksState::Partial);
    }

    #[test]
    fn malformed_known_lines_are_errors() {
        let err = parse_show("cpu0: Online=1 Governor=schedutil\n").unwrap_err();
        assert_eq!(err.line, 1);
        assert!(parse_show("GPU MinFreq=x MaxFreq=1\n").is_err());
    }

    #[test]
    fn store_file_and_error_lines() {
        let stored = parse_store_file(&fixture_text(
            "jetson-agx-orin/jetson_clocks/store-example.conf",
        ));
        assert_eq!(
            stored[0],
            (
                "/sys/devices/system/cpu/cpu1/online".to_string(),
                "1".to_string()
            )
        );
        assert!(stored.contains(&(
            "/sys/class/devfreq/17000000.gpu/min_freq".to_string(),
            "306000000".to_string()
        )));
        assert_eq!(stored.last().unwrap().1, "active");
        assert_eq!(
            error_lines(
                "Restoring system configuration from /x\nError: Failed to restore /sys/a\n"
            ),
            ["Error: Failed to restore /sys/a"]
        );
        assert_eq!(
            error_lines("\u{1b}[31mUnknown option: --off\u{1b}[0m\n"),
            ["Unknown option: --off"]
        );
    }

    fn clocks(tool: &ScriptInstance) -> JetsonClocks {
        JetsonClocks::new(JetsonClocksConfig {
            program: tool.program.clone(),
            store_file: tool.dir.path().join("store/clocks.conf"),
            timeout: Duration::from_secs(10),
        })
    }

    #[tokio::test]
    async fn lock_stores_first_and_unlock_restores() {
        let tool = ScriptInstance::new("jetson-clocks-stateful");
        let clocks = clocks(&tool);
        assert_eq!(clocks.show().await.unwrap().state(), ClocksState::Unlocked);
        assert_eq!(clocks.lock().await.unwrap(), ClocksState::Locked);
        assert!(clocks.config().store_file.exists(), "stored before locking");
        // Locking again neither stores the locked clocks nor fails.
        std::fs::write(&clocks.config().store_file, "/sys/marker:1\n").unwrap();
        assert_eq!(clocks.lock().await.unwrap(), ClocksState::Locked);
        assert_eq!(
            std::fs::read_to_string(&clocks.config().store_file).unwrap(),
            "/sys/marker:1\n"
        );
        assert_eq!(clocks.unlock().await.unwrap(), ClocksState::Unlocked);
        assert_eq!(clocks.unlock().await.unwrap(), ClocksState::Unlocked);
        // A second lock overwrites the old store without a prompt.
        assert_eq!(clocks.lock().await.unwrap(), ClocksState::Locked);
        assert_ne!(
            std::fs::read_to_string(&clocks.config().store_file).unwrap(),
            "/sys/marker:1\n"
        );
    }

    #[tokio::test]
    async fn a_restore_that_fails_with_exit_zero_is_an_error() {
        let tool = ScriptInstance::new("jetson-clocks-restore-lies");
        let clocks = clocks(&tool);
        clocks.lock().await.unwrap();
        let err = clocks.unlock().await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ClocksError::Reported { .. }), "{text}");
        assert!(text.contains("Failed to restore"), "{text}");
    }

    #[tokio::test]
    async fn unlocking_clocks_locked_by_someone_else_says_why_it_cannot() {
        let tool = ScriptInstance::new("jetson-clocks-stateful");
        std::fs::write(tool.side_file("state"), "locked\n").unwrap();
        let err = clocks(&tool).unlock().await.unwrap_err();
        assert!(matches!(err, ClocksError::NothingStored { .. }), "{err}");
        assert!(err.to_string().contains("reboot"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_tool_is_a_clear_error() {
        let tool = ScriptInstance::new("jetson-clocks-stateful");
        let mut config = clocks(&tool).config().clone();
        config.program = "/nonexistent/jetson_clocks".into();
        let err = JetsonClocks::new(config).show().await.unwrap_err();
        let chain = crate::hw::thermal::error_chain(&err);
        assert!(
            chain.contains("could not start /nonexistent/jetson_clocks"),
            "{chain}"
        );
    }
}
