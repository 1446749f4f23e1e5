//! Power modes: `nvpmodel.conf` parsed directly, and the `nvpmodel` tool run by path
//! to query the current mode and to switch modes.
//!
//! The contract the code follows (from captures of the real tool):
//! - `nvpmodel -q` prints `NV Power Mode: <NAME>` and then the id on the next line.
//!   L4T R32 printed `NV Fan Mode:<mode>` first, and warnings may precede it, so the
//!   parser looks for the `NV Power Mode:` line rather than at a line number.
//! - `nvpmodel -m <id>` switches. When the GPU power-gating masks of the target mode
//!   differ from the running one, it cannot switch without a reboot: it prints
//!   `NVPM WARN: Reboot required for changing to this power mode: <id>` and
//!   `… DO YOU WANT TO REBOOT NOW? enter YES/yes to confirm:` and reads stdin. YES/yes
//!   reboots the board at once. The runner types `YES` only when the request allows a
//!   reboot, and `no` otherwise (which the tool answers with
//!   `NVPM ERROR: optMask is 1, no request for power mode`, switching nothing).
//! - Failures print `NVPM ERROR: …` lines. Success prints nothing. The exit status is
//!   undocumented, so the text decides, and a switch is confirmed with `-q`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::process::{run_tool, ToolError, ToolOutput};

/// Where the tool lives on L4T (jetson_clocks checks this path).
pub const DEFAULT_NVPMODEL_PATH: &str = "/usr/sbin/nvpmodel";
/// The conf the tool reads by default: a symlink to the board's file on R35/R36.
pub const DEFAULT_NVPMODEL_CONF: &str = "/etc/nvpmodel.conf";
/// Deadline for one run of the tool. Applying a mode writes dozens of sysfs files.
pub const DEFAULT_NVPMODEL_TIMEOUT: Duration = Duration::from_secs(30);

/// The prompt `nvpmodel -m` prints when a switch needs a reboot.
pub const REBOOT_PROMPT: &str = "DO YOU WANT TO REBOOT NOW?";
/// The warning that precedes the prompt.
pub const REBOOT_REQUIRED: &str = "Reboot required for changing to this power mode:";

/// A power mode named by id or by name, as configs and requests give it
/// (`power_mode = "MAXN"` or `power_mode = 0`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModeRef {
    Id(u32),
    Name(String),
}

impl FromStr for ModeRef {
    type Err = std::convert::Infallible;

    /// All digits is an id, anything else a name (`"2"` → id 2, `"40W"` → name).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Ok(match s.parse::<u32>() {
            Ok(id) if !s.is_empty() => ModeRef::Id(id),
            _ => ModeRef::Name(s.to_string()),
        })
    }
}

impl fmt::Display for ModeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModeRef::Id(id) => write!(f, "{id}"),
            ModeRef::Name(name) => f.write_str(name),
        }
    }
}

/// A `< PARAM TYPE=… NAME=… >` section: which files a setting writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfParam {
    /// `FILE` or `CLOCK`.
    pub kind: String,
    pub name: String,
    /// `(ARG, path)` lines, `_KNEXT` variants included as written.
    pub args: Vec<(String, String)>,
}

/// One `<PARAM> <ARG> <value>` line of a power mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeSetting {
    pub param: String,
    pub arg: String,
    pub value: String,
}

/// A `< POWER_MODEL ID=… NAME=… >` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerMode {
    pub id: u32,
    pub name: String,
    pub settings: Vec<ModeSetting>,
}

impl PowerMode {
    /// The value of one setting (`("GPU", "MAX_FREQ")`).
    pub fn setting(&self, param: &str, arg: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|s| s.param == param && s.arg == arg)
            .map(|s| s.value.as_str())
    }

    /// The GPU power-gating masks (`TPC_PG_MASK`, and `FBP_PG_MASK` on NX/Nano). They
    /// only change at boot, so a switch between modes whose masks differ needs a reboot.
    pub fn pg_masks(&self) -> (Option<&str>, Option<&str>) {
        (
            self.setting("TPC_POWER_GATING", "TPC_PG_MASK"),
            self.setting("FBP_POWER_GATING", "FBP_PG_MASK"),
        )
    }

    /// Cores set online by this mode.
    pub fn online_cores(&self) -> usize {
        self.settings
            .iter()
            .filter(|s| s.param == "CPU_ONLINE" && s.value == "1")
            .count()
    }
}

/// A parsed `nvpmodel.conf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvpmodelConf {
    pub params: Vec<ConfParam>,
    pub modes: Vec<PowerMode>,
    /// `< PM_CONFIG DEFAULT=… >`: the mode applied at first boot (a saved mode in
    /// `/var/lib/nvpmodel/status` beats it afterwards).
    pub default_mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfError {
    #[error("line {line}: section header {text:?} is not `< PARAM … >`, `< POWER_MODEL … >` or `< PM_CONFIG … >`")]
    BadHeader { line: usize, text: String },
    #[error("line {line}: section header {text:?} lacks {key}=")]
    MissingKey {
        line: usize,
        text: String,
        key: &'static str,
    },
    #[error("line {line}: {key}={value:?} is not a number")]
    NotANumber {
        line: usize,
        key: &'static str,
        value: String,
    },
    #[error("line {line}: {text:?} stands outside any section")]
    OutsideSection { line: usize, text: String },
    #[error("line {line}: {text:?} is not `<PARAM> <ARG> <value>`")]
    BadSetting { line: usize, text: String },
    #[error("line {line}: power mode id {id} is defined twice")]
    DuplicateMode { line: usize, id: u32 },
    #[error("no `< PM_CONFIG DEFAULT=… >` line")]
    NoDefault,
    #[error("the default mode {default} is not one of the defined modes")]
    DefaultUndefined { default: u32 },
    #[error("no power modes defined")]
    NoModes,
}

enum Section {
    None,
    Param(usize),
    Mode(usize),
    Config,
}

fn header_keys(inner: &str) -> (String, Vec<(String, String)>) {
    let mut tokens = inner.split_whitespace();
    let kind = tokens.next().unwrap_or_default().to_string();
    let keys = tokens
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (kind, keys)
}

fn key<'a>(
    keys: &'a [(String, String)],
    name: &'static str,
    line: usize,
    text: &str,
) -> Result<&'a str, ConfError> {
    keys.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| ConfError::MissingKey {
            line,
            text: text.to_string(),
            key: name,
        })
}

fn number(value: &str, key: &'static str, line: usize) -> Result<u32, ConfError> {
    value.parse().map_err(|_| ConfError::NotANumber {
        line,
        key,
        value: value.to_string(),
    })
}

impl NvpmodelConf {
    /// Parses the text of a conf file. `#` lines and blank lines are skipped; headers
    /// allow blanks inside the brackets (`<PARAM TYPE=CLOCK NAME=EMC >`).
    pub fn parse(text: &str) -> Result<NvpmodelConf, ConfError> {
        let mut params: Vec<ConfParam> = Vec::new();
        let mut modes: Vec<PowerMode> = Vec::new();
        let mut default_mode = None;
        let mut section = Section::None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(inner) = line.strip_prefix('<') {
                let inner = inner
                    .strip_suffix('>')
                    .ok_or_else(|| ConfError::BadHeader {
                        line: line_no,
                        text: line.to_string(),
                    })?;
                let (kind, keys) = header_keys(inner);
                match kind.as_str() {
                    "PARAM" => {
                        params.push(ConfParam {
                            kind: key(&keys, "TYPE", line_no, line)?.to_string(),
                            name: key(&keys, "NAME", line_no, line)?.to_string(),
                            args: Vec::new(),
                        });
                        section = Section::Param(params.len() - 1);
                    }
                    "POWER_MODEL" => {
                        let id = number(key(&keys, "ID", line_no, line)?, "ID", line_no)?;
                        if modes.iter().any(|m| m.id == id) {
                            return Err(ConfError::DuplicateMode { line: line_no, id });
                        }
                        modes.push(PowerMode {
                            id,
                            name: key(&keys, "NAME", line_no, line)?.to_string(),
                            settings: Vec::new(),
                        });
                        section = Section::Mode(modes.len() - 1);
                    }
                    "PM_CONFIG" => {
                        default_mode = Some(number(
                            key(&keys, "DEFAULT", line_no, line)?,
                            "DEFAULT",
                            line_no,
                        )?);
                        section = Section::Config;
                    }
                    _ => {
                        return Err(ConfError::BadHeader {
                            line: line_no,
                            text: line.to_string(),
                        })
                    }
                }
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            match section {
                Section::None => {
                    return Err(ConfError::OutsideSection {
                        line: line_no,
                        text: line.to_string(),
                    })
                }
                Section::Param(p) => match words.as_slice() {
                    [arg, path] => params[p].args.push((arg.to_string(), path.to_string())),
                    _ => {
                        return Err(ConfError::BadSetting {
                            line: line_no,
                            text: line.to_string(),
                        })
                    }
                },
                Section::Mode(m) => match words.as_slice() {
                    [param, arg, value] => modes[m].settings.push(ModeSetting {
                        param: param.to_string(),
                        arg: arg.to_string(),
                        value: value.to_string(),
                    }),
                    _ => {
                        return Err(ConfError::BadSetting {
                            line: line_no,
                            text: line.to_string(),
                        })
                    }
                },
                // Nothing but the header is defined for PM_CONFIG; tolerate extras.
                Section::Config => {}
            }
        }
        if modes.is_empty() {
            return Err(ConfError::NoModes);
        }
        let default_mode = default_mode.ok_or(ConfError::NoDefault)?;
        if !modes.iter().any(|m| m.id == default_mode) {
            return Err(ConfError::DefaultUndefined {
                default: default_mode,
            });
        }
        Ok(NvpmodelConf {
            params,
            modes,
            default_mode,
        })
    }

    /// Reads and parses a conf file (following the `/etc/nvpmodel.conf` symlink).
    pub async fn from_file(path: &Path) -> Result<NvpmodelConf, NvpmodelError> {
        let text =
            tokio::fs::read_to_string(path)
                .await
                .map_err(|source| NvpmodelError::ConfRead {
                    path: path.to_path_buf(),
                    source,
                })?;
        NvpmodelConf::parse(&text).map_err(|source| NvpmodelError::Conf {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn mode(&self, id: u32) -> Option<&PowerMode> {
        self.modes.iter().find(|m| m.id == id)
    }

    /// The mode a reference names: by id, or by name (exact, then ignoring case).
    pub fn resolve(&self, mode: &ModeRef) -> Option<&PowerMode> {
        match mode {
            ModeRef::Id(id) => self.mode(*id),
            ModeRef::Name(name) => self.modes.iter().find(|m| &m.name == name).or_else(|| {
                self.modes
                    .iter()
                    .find(|m| m.name.eq_ignore_ascii_case(name))
            }),
        }
    }

    pub fn default(&self) -> &PowerMode {
        self.mode(self.default_mode)
            .expect("parse checks that the default mode exists")
    }

    /// Whether switching `from` → `to` needs a reboot: their GPU power-gating masks
    /// differ. None when the conf carries no masks (the reduced test confs) or a mode is
    /// unknown; then only the tool can tell.
    pub fn switch_needs_reboot(&self, from: u32, to: u32) -> Option<bool> {
        let (from, to) = (self.mode(from)?, self.mode(to)?);
        let (a, b) = (from.pg_masks(), to.pg_masks());
        if a == (None, None) && b == (None, None) {
            return None;
        }
        Some(a != b)
    }

    /// `"0 MAXN, 1 MODE_15W, …"`, for error messages.
    pub fn mode_list(&self) -> String {
        self.modes
            .iter()
            .map(|m| format!("{} {}", m.id, m.name))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The mode `nvpmodel -q` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentMode {
    /// None when the output carried no id line (the R32 capture) and the name is not
    /// in the conf.
    pub id: Option<u32>,
    pub name: String,
    /// `NV Fan Mode:` (L4T R32 only).
    pub fan_mode: Option<String>,
}

impl fmt::Display for CurrentMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(f, "{} (id {id})", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Parses `nvpmodel -q` (and `-q --verbose`) output: the line holding
/// `NV Power Mode:` gives the name, the next line the id.
pub fn parse_query(text: &str) -> Option<CurrentMode> {
    let lines: Vec<&str> = text.lines().collect();
    let mut fan_mode = None;
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.trim().strip_prefix("NV Fan Mode:") {
            fan_mode = Some(rest.trim().to_string());
        }
        if let Some(at) = line.find("NV Power Mode:") {
            let name = line[at + "NV Power Mode:".len()..].trim().to_string();
            if name.is_empty() {
                return None;
            }
            let id = lines.get(i + 1).and_then(|l| l.trim().parse().ok());
            return Some(CurrentMode { id, name, fan_mode });
        }
    }
    None
}

/// Parses `/var/lib/nvpmodel/status` (`pmode:0002`): the saved mode id.
pub fn parse_status_file(text: &str) -> Option<u32> {
    text.trim().strip_prefix("pmode:")?.trim().parse().ok()
}

/// The mode list from `nvpmodel -p --verbose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeDump {
    pub default_name: String,
    pub default_id: u32,
    /// `(id, name)` in the order printed.
    pub modes: Vec<(u32, String)>,
}

/// Parses `nvpmodel -p --verbose`, with the patterns jtop uses
/// (`PM_CONFIG: DEFAULT=<NAME>(<ID>)`, `POWER_MODEL: ID=<id> NAME=<name>`).
pub fn parse_dump(text: &str) -> Option<ModeDump> {
    let mut default = None;
    let mut modes = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("PM_CONFIG: DEFAULT=").nth(1) {
            let (name, id) = rest.trim().split_once('(')?;
            default = Some((name.to_string(), id.trim_end_matches(')').parse().ok()?));
        } else if let Some(rest) = line.split("POWER_MODEL: ID=").nth(1) {
            let (id, name) = rest.split_once(" NAME=")?;
            modes.push((id.trim().parse().ok()?, name.trim().to_string()));
        }
    }
    let (default_name, default_id) = default?;
    Some(ModeDump {
        default_name,
        default_id,
        modes,
    })
}

/// What `nvpmodel -m` printed, sorted by meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetModeOutput {
    /// The mode named in `Reboot required for changing to this power mode: <id>`.
    pub reboot_required_for: Option<u32>,
    /// The `DO YOU WANT TO REBOOT NOW?` prompt appeared.
    pub prompted: bool,
    /// `NVPM WARN: rebooting`: the board is going down.
    pub rebooting: bool,
    /// The text after each `NVPM ERROR:`.
    pub errors: Vec<String>,
    /// The text after each `NVPM WARN:`.
    pub warnings: Vec<String>,
}

/// Sorts `nvpmodel -m` output into what the runner acts on.
pub fn parse_set_output(text: &str) -> SetModeOutput {
    let mut out = SetModeOutput::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("NVPM ERROR:") {
            out.errors.push(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("NVPM WARN:") {
            let rest = rest.trim();
            if let Some(id) = rest.strip_prefix(REBOOT_REQUIRED) {
                out.reboot_required_for = id.trim().parse().ok();
            }
            if rest.contains(REBOOT_PROMPT) {
                out.prompted = true;
            }
            if rest == "rebooting" {
                out.rebooting = true;
            }
            out.warnings.push(rest.to_string());
        }
    }
    out
}

/// A request to switch power mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetModeRequest {
    pub mode: ModeRef,
    /// Whether the board may reboot now if the switch needs it. When false, a switch
    /// that needs a reboot is declined and reported as [`SetModeOutcome::RebootRequired`].
    pub allow_reboot: bool,
}

/// What a switch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetModeOutcome {
    /// The board runs the mode now (confirmed with `nvpmodel -q`).
    Switched { mode: CurrentMode },
    /// Nothing changed: the switch needs a reboot and the request did not allow one.
    RebootRequired { id: u32, name: String },
    /// The tool is rebooting the board into the mode.
    Rebooting { id: u32, name: String },
}

impl SetModeOutcome {
    /// True when the mode takes effect only after a reboot (declined or under way).
    pub fn reboot_required(&self) -> bool {
        !matches!(self, SetModeOutcome::Switched { .. })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NvpmodelError {
    #[error("could not read the power mode config {path}")]
    ConfRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the power mode config {path} is malformed")]
    Conf {
        path: PathBuf,
        #[source]
        source: ConfError,
    },
    #[error("power mode {mode:?} is not defined in {conf}; this board has: {known}")]
    UnknownMode {
        mode: ModeRef,
        conf: PathBuf,
        known: String,
    },
    #[error("running `{program} {args}` failed")]
    Run {
        program: PathBuf,
        args: String,
        #[source]
        source: ToolError,
    },
    #[error("`{program} -q` printed no `NV Power Mode:` line; it printed {output:?}")]
    QueryUnparsable { program: PathBuf, output: String },
    #[error("nvpmodel refused to switch to mode {id} ({name}): {errors}")]
    Rejected {
        id: u32,
        name: String,
        errors: String,
    },
    #[error(
        "nvpmodel was asked to switch to mode {id} ({name}) and reported no error, but the \
         board now runs {current}; check the tool's log and retry"
    )]
    NotApplied {
        id: u32,
        name: String,
        current: CurrentMode,
    },
}

/// The power-mode tool, behind a narrow trait so pure logic can be tested with a fake.
pub trait PowerModes: Send + Sync {
    /// The modes this board defines.
    fn modes(
        &self,
    ) -> impl std::future::Future<Output = Result<NvpmodelConf, NvpmodelError>> + Send;
    /// The mode the board runs now.
    fn query(&self)
        -> impl std::future::Future<Output = Result<CurrentMode, NvpmodelError>> + Send;
    /// Switches mode; see [`SetModeRequest`].
    fn set_mode(
        &self,
        request: &SetModeRequest,
    ) -> impl std::future::Future<Output = Result<SetModeOutcome, NvpmodelError>> + Send;
}

/// Where the tool and its conf are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvpmodelConfig {
    pub program: PathBuf,
    /// The conf the agent reads to list and resolve modes. The tool is not told about
    /// it and reads its own default.
    pub conf: PathBuf,
    pub timeout: Duration,
}

impl Default for NvpmodelConfig {
    fn default() -> Self {
        NvpmodelConfig {
            program: DEFAULT_NVPMODEL_PATH.into(),
            conf: DEFAULT_NVPMODEL_CONF.into(),
            timeout: DEFAULT_NVPMODEL_TIMEOUT,
        }
    }
}

/// [`PowerModes`] backed by the real `nvpmodel`.
#[derive(Debug, Clone)]
pub struct Nvpmodel {
    config: NvpmodelConfig,
}

impl Nvpmodel {
    pub fn new(config: NvpmodelConfig) -> Self {
        Nvpmodel { config }
    }

    pub fn config(&self) -> &NvpmodelConfig {
        &self.config
    }

    async fn run(
        &self,
        args: &[String],
        responder: Option<super::process::Responder<'_>>,
    ) -> Result<ToolOutput, NvpmodelError> {
        run_tool(&self.config.program, args, self.config.timeout, responder)
            .await
            .map_err(|source| NvpmodelError::Run {
                program: self.config.program.clone(),
                args: args.join(" "),
                source,
            })
    }
}

impl PowerModes for Nvpmodel {
    async fn modes(&self) -> Result<NvpmodelConf, NvpmodelError> {
        NvpmodelConf::from_file(&self.config.conf).await
    }

    async fn query(&self) -> Result<CurrentMode, NvpmodelError> {
        let output = self.run(&["-q".to_string()], None).await?;
        let text = output.text();
        let mut mode = parse_query(&text).ok_or_else(|| NvpmodelError::QueryUnparsable {
            program: self.config.program.clone(),
            output: text.clone(),
        })?;
        if mode.id.is_none() {
            // Old output without an id line: the conf knows the id for the name.
            if let Ok(conf) = self.modes().await {
                mode.id = conf
                    .resolve(&ModeRef::Name(mode.name.clone()))
                    .map(|m| m.id);
            }
        }
        Ok(mode)
    }

    async fn set_mode(&self, request: &SetModeRequest) -> Result<SetModeOutcome, NvpmodelError> {
        let conf = self.modes().await?;
        let target = conf
            .resolve(&request.mode)
            .ok_or_else(|| NvpmodelError::UnknownMode {
                mode: request.mode.clone(),
                conf: self.config.conf.clone(),
                known: conf.mode_list(),
            })?
            .clone();
        let allow_reboot = request.allow_reboot;
        let mut respond = move |seen: &str| {
            seen.contains(REBOOT_PROMPT).then(|| {
                if allow_reboot {
                    "YES\n".to_string()
                } else {
                    "no\n".to_string()
                }
            })
        };
        let args = vec!["-m".to_string(), target.id.to_string()];
        let output = self.run(&args, Some(&mut respond)).await?;
        let parsed = parse_set_output(&output.text());
        tracing::debug!(
            mode = target.id,
            status = ?output.status,
            warnings = ?parsed.warnings,
            errors = ?parsed.errors,
            "nvpmodel -m finished"
        );
        if parsed.rebooting {
            return Ok(SetModeOutcome::Rebooting {
                id: target.id,
                name: target.name,
            });
        }
        if (parsed.prompted || parsed.reboot_required_for.is_some()) && !allow_reboot {
            // The errors that follow a declined prompt ("optMask is 1, …", "bad input!")
            // are the tool saying it switched nothing, which is what was asked.
            return Ok(SetModeOutcome::RebootRequired {
                id: target.id,
                name: target.name,
            });
        }
        if !parsed.errors.is_empty() {
            return Err(NvpmodelError::Rejected {
                id: target.id,
                name: target.name,
                errors: parsed.errors.join("; "),
            });
        }
        let current = self.query().await?;
        if current.id == Some(target.id) || (current.id.is_none() && current.name == target.name) {
            Ok(SetModeOutcome::Switched { mode: current })
        } else {
            Err(NvpmodelError::NotApplied {
                id: target.id,
                name: target.name,
                current,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::testutil::{fixture, fixture_text, ScriptInstance};

    const CONFS: [&str; 3] = [
        "jetson-agx-orin/etc/nvpmodel.conf",
        "jetson-agx-orin/l4t-r35/etc/nvpmodel.conf",
        "jetson-orin-nx-16gb/etc/nvpmodel.conf",
    ];

    /// The fixture `etc/nvpmodel.conf` may be a flattened symlink: a file holding the
    /// link target. Follow it the way the kernel would.
    fn conf_text(relative: &str) -> String {
        let text = fixture_text(relative);
        if !text.contains('\n') {
            let target = fixture(relative).parent().unwrap().join(text.trim());
            return std::fs::read_to_string(target).unwrap();
        }
        text
    }

    fn names(conf: &NvpmodelConf) -> Vec<(u32, &str)> {
        conf.modes.iter().map(|m| (m.id, m.name.as_str())).collect()
    }

    #[test]
    fn agx_orin_confs_of_both_releases() {
        for path in &CONFS[..2] {
            let conf = NvpmodelConf::parse(&conf_text(path)).unwrap();
            assert_eq!(
                names(&conf),
                [
                    (0, "MAXN"),
                    (1, "MODE_15W"),
                    (2, "MODE_30W"),
                    (3, "MODE_50W")
                ],
                "{path}"
            );
            assert_eq!(conf.default_mode, 2);
            assert_eq!(conf.default().name, "MODE_30W");
            assert_eq!(conf.mode(1).unwrap().online_cores(), 4);
            assert_eq!(conf.mode(2).unwrap().online_cores(), 8);
            assert_eq!(conf.mode(0).unwrap().online_cores(), 12);
            assert_eq!(
                conf.mode(3).unwrap().setting("GPU", "MAX_FREQ"),
                Some("816000000")
            );
            // R36 writes "no cap" as -1, R35 as 0.
            let emc = conf.mode(0).unwrap().setting("EMC", "MAX_FREQ");
            assert!(matches!(emc, Some("-1") | Some("0")), "{emc:?}");
            assert_eq!(conf.params.len(), 6);
            assert_eq!(conf.params[0].name, "CPU_ONLINE");
            assert_eq!(conf.params[0].args.len(), 12);
            // The reduced confs carry no power-gating masks, so only the tool knows
            // which switches need a reboot.
            assert_eq!(conf.switch_needs_reboot(2, 0), None);
        }
    }

    #[test]
    fn orin_nx_super_conf() {
        let conf = NvpmodelConf::parse(&conf_text(CONFS[2])).unwrap();
        assert_eq!(
            names(&conf),
            [
                (0, "MAXN_SUPER"),
                (1, "10W"),
                (2, "15W"),
                (3, "25W"),
                (4, "40W")
            ]
        );
        assert_eq!(conf.default().name, "40W");
        assert_eq!(conf.mode(4).unwrap().online_cores(), 8);
        // Names that look like numbers are still names.
        assert_eq!(conf.resolve(&"40W".parse().unwrap()).unwrap().id, 4);
        assert_eq!(conf.resolve(&"4".parse().unwrap()).unwrap().name, "40W");
        assert_eq!(
            conf.resolve(&ModeRef::Name("maxn_super".into()))
                .unwrap()
                .id,
            0
        );
        assert!(conf.resolve(&ModeRef::Id(9)).is_none());
    }

    #[test]
    fn headers_may_have_blanks_inside_the_brackets_and_masks_decide_reboots() {
        let conf = NvpmodelConf::parse(
            "# comment\n\n<PARAM TYPE=FILE NAME=TPC_POWER_GATING >\nTPC_PG_MASK /sys/devices/gpu.0/tpc_pg_mask\n\
             <PARAM TYPE=CLOCK NAME=EMC >\nMAX_FREQ /sys/kernel/nvpmodel_emc_cap/emc_iso_cap\n\
             < POWER_MODEL ID=0 NAME=MAXN >\nTPC_POWER_GATING TPC_PG_MASK 0\n\
             < POWER_MODEL ID=1 NAME=MODE_15W >\nTPC_POWER_GATING TPC_PG_MASK 248\n\
             < POWER_MODEL ID=2 NAME=MODE_30W >\nTPC_POWER_GATING TPC_PG_MASK 240\n\
             < POWER_MODEL ID=3 NAME=MODE_50W >\nTPC_POWER_GATING TPC_PG_MASK 0\n\
             <PM_CONFIG DEFAULT=2>\n",
        )
        .unwrap();
        assert_eq!(conf.params[1].name, "EMC");
        // The README's masks: only MAXN <-> MODE_50W switches without a reboot.
        assert_eq!(conf.switch_needs_reboot(0, 3), Some(false));
        assert_eq!(conf.switch_needs_reboot(2, 0), Some(true));
        assert_eq!(conf.switch_needs_reboot(2, 1), Some(true));
        assert_eq!(conf.mode(1).unwrap().pg_masks(), (Some("248"), None));
    }

    #[test]
    fn malformed_confs_say_where() {
        let cases = [
            ("CORE_0 /x\n", "outside any section"),
            ("< POWER_MODEL NAME=X >\n", "lacks ID="),
            ("< POWER_MODEL ID=x NAME=X >\n", "not a number"),
            (
                "< POWER_MODEL ID=0 NAME=X >\nA B\n< PM_CONFIG DEFAULT=0 >\n",
                "line 2",
            ),
            ("< POWER_MODEL ID=0 NAME=X >\n", "PM_CONFIG"),
            (
                "< POWER_MODEL ID=0 NAME=X >\n< PM_CONFIG DEFAULT=3 >\n",
                "default mode 3",
            ),
            (
                "< POWER_MODEL ID=0 NAME=X >\n< POWER_MODEL ID=0 NAME=Y >\n",
                "twice",
            ),
            ("< BOGUS >\n", "section header"),
            ("", "no power modes"),
        ];
        for (text, expect) in cases {
            let err = NvpmodelConf::parse(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn query_outputs_of_every_capture() {
        let agx = parse_query(&fixture_text("jetson-agx-orin/nvpmodel/q.txt")).unwrap();
        assert_eq!((agx.id, agx.name.as_str()), (Some(2), "MODE_30W"));
        let nx = parse_query(&fixture_text("jetson-orin-nx-16gb/nvpmodel/q.txt")).unwrap();
        assert_eq!((nx.id, nx.name.as_str()), (Some(4), "40W"));
        for (path, id, name) in [
            ("jetson-agx-orin/nvpmodel/q-verbose.txt", 2, "MODE_30W"),
            ("jetson-orin-nx-16gb/nvpmodel/q-verbose.txt", 4, "40W"),
        ] {
            let verbose = parse_query(&fixture_text(path)).unwrap();
            assert_eq!(
                (verbose.id, verbose.name.as_str()),
                (Some(id), name),
                "{path}"
            );
        }
        // L4T R32: a fan-mode line first, and no id line in the capture.
        let xavier = parse_query(&fixture_text(
            "jetson-agx-orin/nvpmodel/q.agx-xavier-l4t-r32.txt",
        ))
        .unwrap();
        assert_eq!(xavier.name, "MAXN");
        assert_eq!(xavier.id, None);
        assert_eq!(xavier.fan_mode.as_deref(), Some("quiet"));
        // A warning before the mode, as the jetson_stats emulator prints.
        let warned =
            parse_query("NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0\n").unwrap();
        assert_eq!((warned.id, warned.name.as_str()), (Some(0), "MAXN"));
        assert_eq!(parse_query("nothing useful\n"), None);
        assert_eq!(parse_query("NV Power Mode:\n"), None);
    }

    #[test]
    fn status_files() {
        assert_eq!(
            parse_status_file(&fixture_text("jetson-agx-orin/var/lib/nvpmodel/status")),
            Some(2)
        );
        assert_eq!(
            parse_status_file(&fixture_text("jetson-orin-nx-16gb/var/lib/nvpmodel/status")),
            Some(4)
        );
        assert_eq!(parse_status_file("mode:2"), None);
    }

    #[test]
    fn parse_verbose_dump_lists_the_modes() {
        let dump = parse_dump(&fixture_text(
            "jetson-agx-orin/l4t-r35/nvpmodel/p-verbose.txt",
        ))
        .unwrap();
        assert_eq!(
            (dump.default_name.as_str(), dump.default_id),
            ("MODE_30W", 2)
        );
        let names: Vec<_> = dump.modes.iter().map(|(i, n)| (*i, n.as_str())).collect();
        assert_eq!(
            names,
            [
                (0, "MAXN"),
                (1, "MODE_15W"),
                (2, "MODE_30W"),
                (3, "MODE_50W")
            ]
        );
    }

    #[test]
    fn set_outputs_of_every_capture() {
        let confirmed = parse_set_output(&fixture_text(
            "jetson-agx-orin/nvpmodel/m-reboot-required-confirmed.txt",
        ));
        assert_eq!(confirmed.reboot_required_for, Some(0));
        assert!(confirmed.prompted && confirmed.rebooting);
        assert!(confirmed.errors.is_empty());

        let declined = parse_set_output(&fixture_text(
            "jetson-agx-orin/nvpmodel/m-reboot-required-declined.txt",
        ));
        assert_eq!(declined.reboot_required_for, Some(1));
        assert!(declined.prompted && !declined.rebooting);
        assert_eq!(declined.errors, ["optMask is 1, no request for power mode"]);

        let bad_input = parse_set_output(&fixture_text(
            "jetson-agx-orin/nvpmodel/m-reboot-required-bad-input.agx-thor.txt",
        ));
        assert_eq!(bad_input.reboot_required_for, Some(2));
        assert!(bad_input.prompted && !bad_input.rebooting);
        assert_eq!(bad_input.errors[0], "bad input!");
        // No "Golden image" warning on Thor: it is optional.
        assert_eq!(bad_input.warnings.len(), 2);

        let write_error = parse_set_output(&fixture_text(
            "jetson-agx-orin/nvpmodel/m-write-error.orin-nano-4gb.txt",
        ));
        assert!(!write_error.prompted && write_error.reboot_required_for.is_none());
        assert_eq!(write_error.errors.len(), 4);
        assert_eq!(write_error.errors[2], "failed to set power mode!");

        assert_eq!(parse_set_output(""), SetModeOutput::default());
    }

    #[test]
    fn mode_refs_from_text_and_toml() {
        assert_eq!("2".parse::<ModeRef>().unwrap(), ModeRef::Id(2));
        assert_eq!(
            "MAXN".parse::<ModeRef>().unwrap(),
            ModeRef::Name("MAXN".into())
        );
        assert_eq!(
            "40W".parse::<ModeRef>().unwrap(),
            ModeRef::Name("40W".into())
        );
        #[derive(Deserialize)]
        struct T {
            a: ModeRef,
            b: ModeRef,
        }
        let t: T = toml::from_str("a = 3\nb = \"MODE_15W\"\n").unwrap();
        assert_eq!(
            (t.a, t.b),
            (ModeRef::Id(3), ModeRef::Name("MODE_15W".into()))
        );
    }

    fn nvpmodel(script: &ScriptInstance) -> Nvpmodel {
        Nvpmodel::new(NvpmodelConfig {
            program: script.program.clone(),
            conf: fixture("jetson-agx-orin/etc/nvpmodel/nvpmodel_p3701_0000.conf"),
            timeout: Duration::from_secs(10),
        })
    }

    #[tokio::test]
    async fn query_runs_the_tool() {
        let agx = ScriptInstance::new("nvpmodel-q-agx");
        let mode = nvpmodel(&agx).query().await.unwrap();
        assert_eq!((mode.id, mode.name.as_str()), (Some(2), "MODE_30W"));
        let nx = ScriptInstance::new("nvpmodel-q-nx");
        assert_eq!(nvpmodel(&nx).query().await.unwrap().id, Some(4));
        // No id line: the conf supplies the id for the name.
        let xavier = ScriptInstance::new("nvpmodel-q-xavier");
        let mode = nvpmodel(&xavier).query().await.unwrap();
        assert_eq!((mode.id, mode.name.as_str()), (Some(0), "MAXN"));
    }

    #[tokio::test]
    async fn query_failures_are_clear() {
        let garbage = ScriptInstance::new("nvpmodel-q-garbage");
        let err = nvpmodel(&garbage).query().await.unwrap_err();
        assert!(
            matches!(err, NvpmodelError::QueryUnparsable { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("something else"), "{err}");

        let mut missing = nvpmodel(&garbage);
        missing.config.program = "/nonexistent/nvpmodel".into();
        let err = missing.query().await.unwrap_err();
        let chain = crate::hw::thermal::error_chain(&err);
        assert!(
            chain.contains("could not start /nonexistent/nvpmodel"),
            "{chain}"
        );

        let hangs = ScriptInstance::new("nvpmodel-hangs");
        let mut slow = nvpmodel(&hangs);
        slow.config.timeout = Duration::from_millis(300);
        let err = slow.query().await.unwrap_err();
        let chain = crate::hw::thermal::error_chain(&err);
        assert!(chain.contains("did not finish within"), "{chain}");
    }

    #[tokio::test]
    async fn a_reboot_prompt_is_declined_unless_allowed() {
        let tool = ScriptInstance::new("nvpmodel-reboot-prompt");
        let outcome = nvpmodel(&tool)
            .set_mode(&SetModeRequest {
                mode: ModeRef::Name("MAXN".into()),
                allow_reboot: false,
            })
            .await
            .unwrap();
        assert_eq!(
            outcome,
            SetModeOutcome::RebootRequired {
                id: 0,
                name: "MAXN".into()
            }
        );
        assert!(outcome.reboot_required());
        let answer = std::fs::read_to_string(tool.side_file("answer")).unwrap();
        assert_eq!(answer.trim(), "no", "the runner must answer no");

        let outcome = nvpmodel(&tool)
            .set_mode(&SetModeRequest {
                mode: ModeRef::Id(0),
                allow_reboot: true,
            })
            .await
            .unwrap();
        assert_eq!(
            outcome,
            SetModeOutcome::Rebooting {
                id: 0,
                name: "MAXN".into()
            }
        );
        let answer = std::fs::read_to_string(tool.side_file("answer")).unwrap();
        assert_eq!(answer.trim(), "YES");
    }

    #[tokio::test]
    async fn nvpm_errors_fail_the_switch_even_with_exit_status_zero() {
        let tool = ScriptInstance::new("nvpmodel-write-error");
        let err = nvpmodel(&tool)
            .set_mode(&SetModeRequest {
                mode: ModeRef::Id(1),
                allow_reboot: false,
            })
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, NvpmodelError::Rejected { id: 1, .. }),
            "{text}"
        );
        assert!(text.contains("failed to set power mode!"), "{text}");
        assert!(text.contains("MODE_15W"), "{text}");
    }

    #[tokio::test]
    async fn a_silent_switch_is_confirmed_by_reading_back() {
        let tool = ScriptInstance::new("nvpmodel-stateful");
        let runner = nvpmodel(&tool);
        assert_eq!(runner.query().await.unwrap().id, Some(2));
        let outcome = runner
            .set_mode(&SetModeRequest {
                mode: ModeRef::Name("MODE_50W".into()),
                allow_reboot: false,
            })
            .await
            .unwrap();
        match outcome {
            SetModeOutcome::Switched { mode } => assert_eq!(mode.id, Some(3)),
            other => panic!("{other:?}"),
        }
        assert_eq!(runner.query().await.unwrap().name, "MODE_50W");

        // A tool that prints nothing but does not switch is caught.
        let noop = ScriptInstance::new("nvpmodel-silent-noop");
        let err = nvpmodel(&noop)
            .set_mode(&SetModeRequest {
                mode: ModeRef::Id(3),
                allow_reboot: false,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, NvpmodelError::NotApplied { id: 3, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("MODE_30W (id 2)"), "{err}");
    }

    #[tokio::test]
    async fn unknown_modes_are_refused_before_running_anything() {
        let tool = ScriptInstance::new("nvpmodel-stateful");
        let err = nvpmodel(&tool)
            .set_mode(&SetModeRequest {
                mode: ModeRef::Name("TURBO".into()),
                allow_reboot: false,
            })
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("TURBO") && text.contains("0 MAXN, 1 MODE_15W"),
            "{text}"
        );
        assert!(
            !tool.side_file("state").exists(),
            "the tool must not have run"
        );
    }
}
