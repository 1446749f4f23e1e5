//! `fleet-sim-jetson-clocks`: a stand-in for NVIDIA's `jetson_clocks` script that
//! honours its command line, output and quirks on a state file, so the agent's clock
//! control runs against a real program in end-to-end tests and the dev fleet.
//!
//! The board's clocks are kept as the text `jetson_clocks --show` would print
//! (`FLEET_SIM_JETSON_CLOCKS_STATE`), seeded from a real capture
//! (`FLEET_SIM_JETSON_CLOCKS_SHOW`, e.g. the fixtures' `jetson_clocks-show.txt`) the
//! first time. The captures' formats differ between L4T R35 and R36; whichever seeds
//! the state is kept.
//!
//! Command line (the R35-era script's):
//!
//! ```text
//! (none)              lock: every online CPU min := max, every CPU's idle states
//!                     off, GPU min := max, EMC pinned (FreqOverride=1); prints nothing
//! --fan               the same, and the fan to 255
//! --show              the report
//! --store [file]      `path:value` lines of the current clocks; asks on stdin before
//!                     overwriting (`y`/`Y`), else `Error: file <f> already exists!`
//! --restore [file]    writes the stored values back; `Error: <f> file not found !`
//!                     when missing
//! -h, --help          usage on stderr
//! ```
//!
//! Its quirks are kept: an unknown option prints `Unknown option: <x>` and the usage
//! and exits 0; a value `--restore` cannot write prints `Error: Failed to restore
//! <path>` and still exits 0. `FLEET_SIM_JETSON_CLOCKS_FAIL_RESTORE=1` makes every
//! restore write fail that way. The default store file is
//! `$HOME/.jetsonclocks_conf.txt`, as in the script (not the `l4t_dfs.conf` its usage
//! text names).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const STATE_VAR: &str = "FLEET_SIM_JETSON_CLOCKS_STATE";
const SHOW_VAR: &str = "FLEET_SIM_JETSON_CLOCKS_SHOW";
const FAIL_RESTORE_VAR: &str = "FLEET_SIM_JETSON_CLOCKS_FAIL_RESTORE";

const USAGE: &str = "usage:

jetson_clocks [options]

  options,
  --help, -h         show this help message and exit
  --show             display current settings
  --fan              set PWM fan speed to maximal
  --store [file]     store current settings to a file (default: ${HOME}/l4t_dfs.conf)
  --restore [file]   restore saved settings from a file (default: ${HOME}/l4t_dfs.conf)
  run jetson_clocks.sh without any option to set static max frequency to CPU, GPU and EMC clocks.
";

const CPU: &str = "/sys/devices/system/cpu";
const GPU_MIN: &str = "/sys/class/devfreq/17000000.gpu/min_freq";
const GPU_RAILGATE: &str = "/sys/devices/platform/gpu.0/railgate_enable";
const EMC_LOCK: &str = "/sys/kernel/debug/bpmp/debug/clk/emc/mrq_rate_locked";

/// `key=value` in a line, replaced or read.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn set_field(line: &str, key: &str, value: &str) -> String {
    // Rebuild word by word, keeping the line's own spacing between words.
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while !rest.is_empty() {
        let start = rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        match word.split_once('=') {
            Some((k, _)) if k == key => {
                out.push_str(k);
                out.push('=');
                out.push_str(value);
            }
            _ => out.push_str(word),
        }
        rest = &rest[end..];
    }
    out
}

/// `cpu3:  Online=1 …` → 3.
fn cpu_id(line: &str) -> Option<u32> {
    line.split_once(':')?
        .0
        .trim()
        .strip_prefix("cpu")?
        .parse()
        .ok()
}

/// The idle-state names of a CPU line, in order (`WFI`, `c7`).
fn idle_states(line: &str) -> Vec<String> {
    line.split_once("IdleStates:")
        .map(|(_, s)| {
            s.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, _)| k.to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn set_idle(line: &str, enabled: &str) -> String {
    match line.split_once("IdleStates:") {
        Some((head, states)) => {
            let mut states = states.to_owned();
            for name in idle_states(line) {
                states = set_field(&states, &name, enabled);
            }
            format!("{head}IdleStates:{states}")
        }
        None => line.to_owned(),
    }
}

struct Clocks {
    lines: Vec<String>,
}

impl Clocks {
    fn lock(&mut self, fan: bool) {
        for line in &mut self.lines {
            if cpu_id(line).is_some() {
                // Idle states go off on every CPU, the clocks only on online ones.
                if field(line, "Online") != Some("0") {
                    if let Some(max) = field(line, "MaxFreq").map(str::to_owned) {
                        *line = set_field(line, "MinFreq", &max);
                        *line = set_field(line, "CurrentFreq", &max);
                    }
                }
                *line = set_idle(line, "0");
            } else if line.starts_with("GPU ") {
                if let Some(max) = field(line, "MaxFreq").map(str::to_owned) {
                    *line = set_field(line, "MinFreq", &max);
                    *line = set_field(line, "CurrentFreq", &max);
                }
            } else if line.starts_with("EMC ") {
                if let Some(max) = field(line, "MaxFreq").map(str::to_owned) {
                    *line = set_field(line, "CurrentFreq", &max);
                }
                *line = set_field(line, "FreqOverride", "1");
            } else if fan && line.starts_with("FAN ") {
                let keys: Vec<String> = line
                    .split_whitespace()
                    .filter_map(|w| w.split_once('='))
                    .map(|(k, _)| k.to_owned())
                    .filter(|k| k.contains("_pwm") && !k.ends_with("_enable"))
                    .collect();
                for k in keys {
                    *line = set_field(line, &k, "255");
                }
            }
        }
    }

    /// The `path:value` lines `--store` writes, as the script names the files.
    fn store(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            if let Some(id) = cpu_id(line) {
                if id != 0 {
                    if let Some(online) = field(line, "Online") {
                        out.push_str(&format!("{CPU}/cpu{id}/online:{online}\n"));
                    }
                }
                if let Some(min) = field(line, "MinFreq") {
                    out.push_str(&format!("{CPU}/cpu{id}/cpufreq/scaling_min_freq:{min}\n"));
                }
                for (k, name) in idle_states(line).iter().enumerate() {
                    let enabled = line
                        .split_once("IdleStates:")
                        .and_then(|(_, s)| field(s, name))
                        .unwrap_or("1");
                    let disable = if enabled == "1" { 0 } else { 1 };
                    out.push_str(&format!(
                        "{CPU}/cpu{id}/cpuidle/state{k}/disable:{disable}\n"
                    ));
                }
            } else if line.starts_with("GPU ") {
                if let Some(min) = field(line, "MinFreq") {
                    out.push_str(&format!("{GPU_MIN}:{min}\n"));
                }
                out.push_str(&format!("{GPU_RAILGATE}:1\n"));
            } else if line.starts_with("EMC ") {
                let locked = field(line, "FreqOverride").unwrap_or("0");
                out.push_str(&format!("{EMC_LOCK}:{locked}\n"));
            }
        }
        out
    }

    /// Writes one stored value back; false when the path is not one it knows.
    fn restore(&mut self, path: &str, value: &str) -> bool {
        if path == GPU_RAILGATE {
            return true;
        }
        if path == GPU_MIN {
            return self.edit(
                |l| l.starts_with("GPU "),
                |l| set_field(l, "MinFreq", value),
            );
        }
        if path == EMC_LOCK {
            return self.edit(
                |l| l.starts_with("EMC "),
                |l| set_field(l, "FreqOverride", value),
            );
        }
        let Some(rest) = path.strip_prefix(CPU).and_then(|r| r.strip_prefix("/cpu")) else {
            return false;
        };
        let Some((id, attr)) = rest.split_once('/') else {
            return false;
        };
        let Ok(id) = id.parse::<u32>() else {
            return false;
        };
        let is_cpu = |l: &str| cpu_id(l) == Some(id);
        match attr {
            "online" => self.edit(is_cpu, |l| set_field(l, "Online", value)),
            "cpufreq/scaling_min_freq" => self.edit(is_cpu, |l| {
                let l = set_field(l, "MinFreq", value);
                // Unlocked, the governor lets the clock drop back to the minimum.
                set_field(&l, "CurrentFreq", value)
            }),
            _ => {
                let Some(k) = attr
                    .strip_prefix("cpuidle/state")
                    .and_then(|s| s.strip_suffix("/disable"))
                    .and_then(|k| k.parse::<usize>().ok())
                else {
                    return false;
                };
                let enabled = if value == "1" { "0" } else { "1" };
                self.edit(is_cpu, |l| match idle_states(l).get(k) {
                    Some(name) => match l.split_once("IdleStates:") {
                        Some((head, states)) => {
                            format!("{head}IdleStates:{}", set_field(states, name, enabled))
                        }
                        None => l.to_owned(),
                    },
                    None => l.to_owned(),
                })
            }
        }
    }

    fn edit(&mut self, which: impl Fn(&str) -> bool, change: impl Fn(&str) -> String) -> bool {
        let mut found = false;
        for line in &mut self.lines {
            if which(line) {
                *line = change(line);
                found = true;
            }
        }
        found
    }

    fn text(&self) -> String {
        let mut text = self.lines.join("\n");
        text.push('\n');
        text
    }
}

fn state_path() -> Result<PathBuf, String> {
    std::env::var_os(STATE_VAR)
        .map(PathBuf::from)
        .ok_or_else(|| format!("{STATE_VAR} is not set"))
}

fn load(state: &Path) -> Result<Clocks, String> {
    let text = match std::fs::read_to_string(state) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed = std::env::var_os(SHOW_VAR).ok_or_else(|| {
                format!(
                    "{} does not exist and {SHOW_VAR} is not set",
                    state.display()
                )
            })?;
            std::fs::read_to_string(&seed)
                .map_err(|e| format!("{}: {e}", Path::new(&seed).display()))?
        }
        Err(e) => return Err(format!("{}: {e}", state.display())),
    };
    Ok(Clocks {
        lines: text.lines().map(str::to_owned).collect(),
    })
}

fn save(state: &Path, clocks: &Clocks) -> Result<(), String> {
    if let Some(dir) = state.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = state.with_extension("tmp");
    std::fs::write(&tmp, clocks.text()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, state).map_err(|e| format!("{}: {e}", state.display()))
}

fn default_file() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".jetsonclocks_conf.txt")
}

fn run(args: &[String]) -> Result<u8, String> {
    let state = state_path()?;
    let mut out = std::io::stdout().lock();
    let mut fan = false;
    let mut action = None;
    let mut file = None;
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                eprint!("{USAGE}");
                return Ok(0);
            }
            "--fan" => fan = true,
            "--show" | "--store" | "--restore" => {
                action = Some(arg.clone());
                if arg != "--show" {
                    if let Some(next) = it.peek() {
                        if !next.starts_with('-') {
                            file = it.next().map(PathBuf::from);
                        }
                    }
                }
            }
            other => {
                // The script means to exit 1 here, but its usage() ends with exit 0.
                let _ = writeln!(out, "\u{1b}[31mUnknown option: {other}\u{1b}[0m");
                eprint!("{USAGE}");
                return Ok(0);
            }
        }
    }
    let mut clocks = load(&state)?;
    match action.as_deref() {
        Some("--show") => {
            let _ = out.write_all(clocks.text().as_bytes());
            Ok(0)
        }
        Some("--store") => {
            let file = file.unwrap_or_else(default_file);
            if file.exists() {
                let _ = write!(
                    out,
                    "File {} already exists. Can I overwrite it? Y/N:",
                    file.display()
                );
                let _ = out.flush();
                let mut answer = String::new();
                let _ = std::io::stdin().lock().read_line(&mut answer);
                if !matches!(answer.trim(), "y" | "Y") {
                    let _ = writeln!(out, "Error: file {} already exists!", file.display());
                    return Ok(1);
                }
            }
            let _ = writeln!(out, "Storing system configuration in {}", file.display());
            std::fs::write(&file, clocks.store())
                .map_err(|e| format!("{}: {e}", file.display()))?;
            Ok(0)
        }
        Some("--restore") => {
            let file = file.unwrap_or_else(default_file);
            let Ok(stored) = std::fs::read_to_string(&file) else {
                let _ = writeln!(out, "Error: {} file not found !", file.display());
                return Ok(1);
            };
            let _ = writeln!(
                out,
                "Restoring system configuration from {}",
                file.display()
            );
            let fail_all = std::env::var(FAIL_RESTORE_VAR).is_ok_and(|v| v == "1");
            for line in stored.lines() {
                let Some((path, value)) = line.rsplit_once(':') else {
                    continue;
                };
                if fail_all || !clocks.restore(path.trim(), value.trim()) {
                    let _ = writeln!(out, "Error: Failed to restore {}", path.trim());
                }
            }
            save(&state, &clocks)?;
            // Failed writes or not, the script exits 0.
            Ok(0)
        }
        _ => {
            clocks.lock(fan);
            save(&state, &clocks)?;
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("fleet-sim-jetson-clocks: {e}");
            ExitCode::from(1)
        }
    }
}
