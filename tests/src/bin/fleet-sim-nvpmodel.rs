//! `fleet-sim-nvpmodel`: a stand-in for NVIDIA's `nvpmodel` that honours the real
//! tool's command line and output on a state file and a board's `nvpmodel.conf`, so the
//! agent runs against a real program in end-to-end tests and the dev fleet.
//!
//! Command line (the real tool's):
//!
//! ```text
//! -q, --query            print the current mode: `NV Power Mode: <NAME>`, then `<ID>`
//!     --verbose          with -q: the R36 `NVPM VERB:` lines; with -p: the mode dump
//! -m, --mode <id>        switch mode (may ask for a reboot on stdin, see below)
//! -p, --parse            parse the conf (with --verbose, dump it)
//! -f, --conf <file>      another conf; alone, apply the saved (or default) mode
//! -u, --udata <file>     another saved-mode file
//! -o, --os <os>          accepted and ignored
//! -w, --wait <sec>       wait before acting
//!     --boot             apply the saved (or default) mode
//! -d <fan mode>          refused: fan modes belong to L4T R32, not to Orin
//! -h, --help             usage
//! ```
//!
//! Environment:
//!
//! - `FLEET_SIM_NVPMODEL_CONF`: the conf (default `/etc/nvpmodel.conf`; `-f` wins).
//! - `FLEET_SIM_NVPMODEL_STATE`: the saved mode, `pmode:NNNN` as in
//!   `/var/lib/nvpmodel/status` (default that path; `-u` wins). Absent or unknown to
//!   the conf means the conf's default mode.
//! - `FLEET_SIM_NVPMODEL_SYSFS`: optional sysfs root. `-m` writes each setting of the
//!   new mode to the file it names (with `/sys` replaced by this root, the `_KNEXT` path
//!   preferred) when that file exists, and `-q --verbose` reads REAL_VAL from there.
//! - `FLEET_SIM_NVPMODEL_PG_MASKS`: GPU power-gating masks per mode,
//!   `<id>=<mask>[,…]` (e.g. `0=0,1=248,2=240,3=0` for an AGX Orin), for confs that do
//!   not carry `TPC_POWER_GATING`/`FBP_POWER_GATING` settings (the reduced test confs).
//! - `FLEET_SIM_NVPMODEL_REBOOT_MODES`: mode ids that always need a reboot to switch to.
//! - `FLEET_SIM_NVPMODEL_FAIL_MODES`: mode ids whose switch fails on a sysfs write, with
//!   the `NVPM ERROR` lines of a real failure.
//! - `FLEET_SIM_NVPMODEL_REBOOT_LOG`: a file that gets a line `reboot <id>` each time
//!   the operator confirms a reboot, so a testbed can reboot the simulated board.
//!
//! A switch needs a reboot when the GPU power-gating masks of the running and the target
//! mode differ (from the conf, else `FLEET_SIM_NVPMODEL_PG_MASKS`), or when the target is
//! in `FLEET_SIM_NVPMODEL_REBOOT_MODES`. Then, as the real tool does, it prints
//! `NVPM WARN: Reboot required for changing to this power mode: <id>` and
//! `NVPM WARN: DO YOU WANT TO REBOOT NOW? enter YES/yes to confirm:` and reads one line:
//! `YES`/`yes` prints `NVPM WARN: rebooting`, saves the new mode and logs the reboot
//! (the simulated reboot is instant: the board "comes back" in the new mode); end of
//! input or an empty line prints `NVPM ERROR: bad input!`; anything else declines. A
//! declined switch prints `NVPM ERROR: optMask is 1, no request for power mode` and
//! saves nothing.
//!
//! Exit status (undocumented for the real tool, so callers must not rely on it): 0 when
//! the request was carried out, 1 after any `NVPM ERROR`, 2 for a bad command line.
//! Every `NVPM` line goes to stdout, the usage to stderr.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const CONF_VAR: &str = "FLEET_SIM_NVPMODEL_CONF";
const STATE_VAR: &str = "FLEET_SIM_NVPMODEL_STATE";
const SYSFS_VAR: &str = "FLEET_SIM_NVPMODEL_SYSFS";
const PG_MASKS_VAR: &str = "FLEET_SIM_NVPMODEL_PG_MASKS";
const REBOOT_MODES_VAR: &str = "FLEET_SIM_NVPMODEL_REBOOT_MODES";
const FAIL_MODES_VAR: &str = "FLEET_SIM_NVPMODEL_FAIL_MODES";
const REBOOT_LOG_VAR: &str = "FLEET_SIM_NVPMODEL_REBOOT_LOG";

const DEFAULT_CONF: &str = "/etc/nvpmodel.conf";
const DEFAULT_STATE: &str = "/var/lib/nvpmodel/status";

const USAGE: &str = "Usage: nvpmodel [options]
  -q, --query             print the current power mode
      --verbose           print verbose messages (with -q or -p)
  -m, --mode <id>         set the power mode
  -p, --parse             parse the configuration file
  -f, --conf <file>       use another configuration file
  -u, --udata <file>      use another user data (saved mode) file
  -o, --os <android|l4t>  OS-specific handling
  -w, --wait <sec>        wait before acting
      --boot              boot-time invocation
  -h, --help              print this help
";

#[derive(Debug, Clone)]
struct Param {
    kind: String,
    name: String,
    args: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Mode {
    id: u32,
    name: String,
    settings: Vec<(String, String, String)>,
}

#[derive(Debug, Clone)]
struct Conf {
    params: Vec<Param>,
    modes: Vec<Mode>,
    default: u32,
}

impl Conf {
    /// The same grammar as the real files: `#` comments, blank lines, headers in
    /// angle brackets with optional blanks inside.
    fn parse(text: &str) -> Result<Conf, String> {
        let mut params: Vec<Param> = Vec::new();
        let mut modes: Vec<Mode> = Vec::new();
        let mut default = None;
        enum In {
            Nothing,
            Param,
            Mode,
            Config,
        }
        let mut section = In::Nothing;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(inner) = line.strip_prefix('<') {
                let inner = inner
                    .strip_suffix('>')
                    .ok_or_else(|| format!("line {}: unterminated section header", n + 1))?;
                let mut words = inner.split_whitespace();
                let kind = words.next().unwrap_or_default();
                let keys: BTreeMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
                let get = |k: &str| {
                    keys.get(k)
                        .copied()
                        .ok_or_else(|| format!("line {}: {kind} without {k}=", n + 1))
                };
                let number = |k: &str| {
                    get(k)?
                        .parse::<u32>()
                        .map_err(|_| format!("line {}: {k} is not a number", n + 1))
                };
                match kind {
                    "PARAM" => {
                        params.push(Param {
                            kind: get("TYPE")?.to_owned(),
                            name: get("NAME")?.to_owned(),
                            args: Vec::new(),
                        });
                        section = In::Param;
                    }
                    "POWER_MODEL" => {
                        modes.push(Mode {
                            id: number("ID")?,
                            name: get("NAME")?.to_owned(),
                            settings: Vec::new(),
                        });
                        section = In::Mode;
                    }
                    "PM_CONFIG" => {
                        default = Some(number("DEFAULT")?);
                        section = In::Config;
                    }
                    other => return Err(format!("line {}: unknown section {other}", n + 1)),
                }
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match (&section, words.as_slice()) {
                (In::Param, [arg, path]) => params
                    .last_mut()
                    .expect("in a param")
                    .args
                    .push((arg.to_string(), path.to_string())),
                (In::Mode, [param, arg, value]) => modes
                    .last_mut()
                    .expect("in a mode")
                    .settings
                    .push((param.to_string(), arg.to_string(), value.to_string())),
                (In::Config, _) => {}
                _ => return Err(format!("line {}: unexpected {line:?}", n + 1)),
            }
        }
        let default = default.ok_or("no PM_CONFIG DEFAULT")?;
        if !modes.iter().any(|m| m.id == default) {
            return Err(format!("default mode {default} is not defined"));
        }
        Ok(Conf {
            params,
            modes,
            default,
        })
    }

    fn mode(&self, id: u32) -> Option<&Mode> {
        self.modes.iter().find(|m| m.id == id)
    }

    fn param(&self, name: &str) -> Option<&Param> {
        self.params.iter().find(|p| p.name == name)
    }

    /// The path a setting writes: the `_KNEXT` variant when the conf has one (the
    /// R36 kernels), else the plain one.
    fn path(&self, param: &str, arg: &str) -> Option<&str> {
        let p = self.param(param)?;
        let find = |a: &str| p.args.iter().find(|(k, _)| k == a).map(|(_, v)| v.as_str());
        find(&format!("{arg}_KNEXT")).or_else(|| find(arg))
    }

    fn is_clock(&self, param: &str) -> bool {
        self.param(param).is_some_and(|p| p.kind == "CLOCK")
    }
}

impl Mode {
    fn masks(&self) -> Option<String> {
        let get = |p: &str, a: &str| {
            self.settings
                .iter()
                .find(|(sp, sa, _)| sp == p && sa == a)
                .map(|(_, _, v)| v.clone())
        };
        match (
            get("TPC_POWER_GATING", "TPC_PG_MASK"),
            get("FBP_POWER_GATING", "FBP_PG_MASK"),
        ) {
            (None, None) => None,
            (tpc, fbp) => Some(format!("{tpc:?}/{fbp:?}")),
        }
    }
}

/// The parsed command line.
#[derive(Debug, Default)]
struct Args {
    query: bool,
    verbose: bool,
    mode: Option<String>,
    parse: bool,
    conf: Option<PathBuf>,
    udata: Option<PathBuf>,
    wait: Option<f64>,
    boot: bool,
    fan: Option<String>,
    help: bool,
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("option {name} needs a value"))
        };
        match arg.as_str() {
            "-q" | "--query" => args.query = true,
            "--verbose" => args.verbose = true,
            "-m" | "--mode" => args.mode = Some(value(arg)?),
            "-p" | "--parse" => args.parse = true,
            "-f" | "--conf" => args.conf = Some(value(arg)?.into()),
            "-u" | "--udata" => args.udata = Some(value(arg)?.into()),
            "-o" | "--os" => {
                value(arg)?;
            }
            "-w" | "--wait" => {
                let v = value(arg)?;
                args.wait = Some(v.parse().map_err(|_| format!("bad wait time {v:?}"))?);
            }
            "--boot" => args.boot = true,
            "-d" => args.fan = Some(value(arg)?),
            "-h" | "--help" => args.help = true,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(args)
}

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into())
}

fn env_ids(var: &str) -> Vec<u32> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn env_masks() -> BTreeMap<u32, String> {
    std::env::var(PG_MASKS_VAR)
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| {
            let (id, mask) = pair.split_once('=')?;
            Some((id.trim().parse().ok()?, mask.trim().to_owned()))
        })
        .collect()
}

/// A conf path (`/sys/…`) under the simulated sysfs root.
fn sim_path(sysfs: Option<&Path>, conf_path: &str) -> Option<PathBuf> {
    let rest = conf_path.strip_prefix("/sys/")?;
    Some(sysfs?.join(rest))
}

struct Sim {
    conf_path: PathBuf,
    conf: Conf,
    state: PathBuf,
    sysfs: Option<PathBuf>,
    out: String,
}

impl Sim {
    fn saved(&self) -> Option<u32> {
        let text = std::fs::read_to_string(&self.state).ok()?;
        let id = text.trim().strip_prefix("pmode:")?.trim().parse().ok()?;
        self.conf.mode(id).map(|m| m.id)
    }

    /// The running mode: the saved one, else the conf's default.
    fn current(&self) -> &Mode {
        self.saved()
            .and_then(|id| self.conf.mode(id))
            .or_else(|| self.conf.mode(self.conf.default))
            .expect("the default mode exists")
    }

    fn save(&self, id: u32) -> Result<(), String> {
        if let Some(dir) = self.state.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&self.state, format!("pmode:{id:04}\n"))
            .map_err(|e| format!("{}: {e}", self.state.display()))
    }

    fn line(&mut self, text: &str) {
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn flush(&mut self) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(self.out.as_bytes());
        let _ = stdout.flush();
        self.out.clear();
    }

    /// A value as `-q --verbose` prints it: a CLOCK's -1 ("no cap") as i64::MAX.
    fn conf_val(&self, param: &str, value: &str) -> String {
        if self.conf.is_clock(param) && value == "-1" {
            i64::MAX.to_string()
        } else {
            value.to_owned()
        }
    }

    fn query(&mut self, verbose: bool) {
        let mode = self.current().clone();
        if verbose {
            let conf = self.conf_path.display().to_string();
            self.line(&format!("NVPM VERB: Config file: {conf}"));
            self.line(&format!("NVPM VERB: parsing done for {conf}"));
            self.line(&format!(
                "NVPM VERB: Current mode: NV Power Mode: {}",
                mode.name
            ));
            self.line(&mode.id.to_string());
            for (param, arg, value) in &mode.settings {
                let Some(path) = self.conf.path(param, arg).map(str::to_owned) else {
                    continue;
                };
                let conf_val = self.conf_val(param, value);
                let real = sim_path(self.sysfs.as_deref(), &path)
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .map(|t| t.trim().to_owned())
                    .unwrap_or_else(|| conf_val.clone());
                self.line(&format!(
                    "NVPM VERB: PARAM {param}: ARG {arg}: PATH {path}: REAL_VAL: {real} CONF_VAL: {conf_val}"
                ));
            }
        } else {
            self.line(&format!("NV Power Mode: {}", mode.name));
            self.line(&mode.id.to_string());
        }
    }

    fn dump(&mut self) {
        let conf = self.conf_path.display().to_string();
        self.line(&format!("NVPM VERB: Config file: {conf}"));
        self.line(&format!("NVPM VERB: parsing done for {conf}"));
        self.line(&format!("succeed to parse file {conf}."));
        let default = self.conf.mode(self.conf.default).expect("exists").clone();
        self.line(&format!(
            "NVPM VERB: PM_CONFIG: DEFAULT={}({})",
            default.name, default.id
        ));
        let mut text = String::new();
        for p in &self.conf.params {
            let _ = writeln!(text, "NVPM VERB: PARAM TYPE={} NAME={}", p.kind, p.name);
            for (arg, path) in &p.args {
                let _ = writeln!(text, "NVPM VERB: {arg} {path}");
            }
        }
        text.push_str("NVPM VERB:\n");
        for m in &self.conf.modes {
            let _ = writeln!(text, "NVPM VERB: POWER_MODEL: ID={} NAME={}", m.id, m.name);
            for (param, arg, value) in &m.settings {
                // The dump prints "no cap" as i32::MAX.
                let value = if self.conf.is_clock(param) && value == "-1" {
                    i32::MAX.to_string()
                } else {
                    value.clone()
                };
                let _ = writeln!(text, "NVPM VERB: {param} {arg} {value}");
            }
            text.push_str("NVPM VERB:\n");
        }
        self.out.push_str(&text);
    }

    /// Writes a mode's settings to the simulated sysfs files that exist.
    fn apply(&self, mode: &Mode) {
        for (param, arg, value) in &mode.settings {
            if value == "-1" {
                continue;
            }
            let Some(file) = self
                .conf
                .path(param, arg)
                .and_then(|p| sim_path(self.sysfs.as_deref(), p))
            else {
                continue;
            };
            if file.is_file() {
                let _ = std::fs::write(&file, format!("{value}\n"));
            }
        }
    }

    fn needs_reboot(&self, from: &Mode, to: &Mode) -> bool {
        if from.id == to.id {
            return false;
        }
        if env_ids(REBOOT_MODES_VAR).contains(&to.id) {
            return true;
        }
        let masks = env_masks();
        let mask = |m: &Mode| m.masks().or_else(|| masks.get(&m.id).cloned());
        match (mask(from), mask(to)) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        }
    }

    /// `-m <id>`; returns whether it succeeded.
    fn set(&mut self, requested: &str) -> bool {
        let Some(target) = requested
            .trim()
            .parse::<u32>()
            .ok()
            .and_then(|id| self.conf.mode(id))
            .cloned()
        else {
            self.line(&format!(
                "NVPM ERROR: Invalid power mode {requested:?}: no POWER_MODEL with this ID in {}",
                self.conf_path.display()
            ));
            self.line("NVPM ERROR: optMask is 1, no request for power mode");
            return false;
        };
        let current = self.current().clone();
        if self.needs_reboot(&current, &target) {
            self.line("NVPM WARN: Golden image context is already created");
            self.line(&format!(
                "NVPM WARN: Reboot required for changing to this power mode: {}",
                target.id
            ));
            self.line("NVPM WARN: DO YOU WANT TO REBOOT NOW? enter YES/yes to confirm:");
            self.flush();
            let mut answer = String::new();
            let read = std::io::stdin().lock().read_line(&mut answer);
            let answer = answer.trim();
            if matches!(read, Ok(0) | Err(_)) || answer.is_empty() {
                self.line("NVPM ERROR: bad input!");
                self.line("NVPM ERROR: optMask is 1, no request for power mode");
                return false;
            }
            if answer != "YES" && answer != "yes" {
                self.line("NVPM ERROR: optMask is 1, no request for power mode");
                return false;
            }
            self.line("NVPM WARN: rebooting");
            if let Err(e) = self.save(target.id) {
                self.line(&format!("NVPM ERROR: failed to save the power mode: {e}"));
                return false;
            }
            if let Some(log) = std::env::var_os(REBOOT_LOG_VAR) {
                let logged = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .and_then(|mut f| writeln!(f, "reboot {}", target.id));
                if let Err(e) = logged {
                    eprintln!("fleet-sim-nvpmodel: could not log the reboot: {e}");
                }
            }
            self.apply(&target);
            return true;
        }
        if env_ids(FAIL_MODES_VAR).contains(&target.id) {
            // The lines of a real failed write (Orin Nano capture), for the mode's first
            // setting that names a file.
            let (param, arg, value) = target
                .settings
                .iter()
                .find(|(p, a, _)| self.conf.path(p, a).is_some())
                .cloned()
                .unwrap_or_else(|| ("CPU_ONLINE".into(), "CORE_0".into(), "1".into()));
            let path = self
                .conf
                .path(&param, &arg)
                .unwrap_or("/sys/devices/system/cpu/cpu0/online")
                .to_owned();
            self.line(&format!("NVPM ERROR: Error writing {value} to {path}: 19"));
            self.line(&format!(
                "NVPM ERROR: failed to write PARAM {param}: ARG {arg}: PATH: {path} VAL: {value}"
            ));
            self.line("NVPM ERROR: failed to set power mode!");
            self.line("NVPM ERROR: optMask is 1, no request for power mode");
            return false;
        }
        self.apply(&target);
        if let Err(e) = self.save(target.id) {
            self.line(&format!("NVPM ERROR: failed to save the power mode: {e}"));
            return false;
        }
        true
    }

    /// `--boot`, or `-f` alone: apply the saved (or default) mode.
    fn boot(&mut self) -> bool {
        let mode = self.current().clone();
        self.apply(&mode);
        match self.save(mode.id) {
            Ok(()) => true,
            Err(e) => {
                self.line(&format!("NVPM ERROR: failed to save the power mode: {e}"));
                false
            }
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            println!("NVPM ERROR: {e}");
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        eprint!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let Some(fan) = &args.fan {
        println!("NVPM ERROR: fan mode {fan:?} is not supported on this platform (nvfancontrol owns the fan)");
        return ExitCode::from(1);
    }
    if let Some(secs) = args.wait {
        std::thread::sleep(std::time::Duration::from_secs_f64(secs.max(0.0)));
    }
    let conf_path = args
        .conf
        .clone()
        .unwrap_or_else(|| env_path(CONF_VAR, DEFAULT_CONF));
    let conf = match std::fs::read_to_string(&conf_path)
        .map_err(|e| e.to_string())
        .and_then(|t| Conf::parse(&t))
    {
        Ok(c) => c,
        Err(e) => {
            println!("NVPM ERROR: failed to parse {}: {e}", conf_path.display());
            return ExitCode::from(1);
        }
    };
    let mut sim = Sim {
        conf_path,
        conf,
        state: args
            .udata
            .clone()
            .unwrap_or_else(|| env_path(STATE_VAR, DEFAULT_STATE)),
        sysfs: std::env::var_os(SYSFS_VAR).map(PathBuf::from),
        out: String::new(),
    };
    let ok = if let Some(mode) = &args.mode {
        sim.set(mode)
    } else if args.query {
        sim.query(args.verbose);
        true
    } else if args.parse {
        if args.verbose {
            sim.dump();
        }
        true
    } else {
        // `--boot`, `-f <conf>` alone, or nothing at all.
        sim.boot()
    };
    // With -m and -q together, the mode is printed after the switch.
    if ok && args.mode.is_some() && args.query {
        sim.query(args.verbose);
    }
    sim.flush();
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
