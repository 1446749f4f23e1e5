//! The TOML form of an experiment spec, as fleetctl reads it from a file.
//!
//! The layout is the one of the design document: `id`, `command`,
//! `working_dir`, `env`, `config_file`, `priority` at the top, then the
//! `[resources]`, `[placement]` and `[lifecycle]` tables. Unknown keys are
//! refused, so a typo never silently falls back to a default. Every
//! problem, from TOML syntax to a bad size, comes with the line and column
//! of the key or value at fault.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{quote, FieldError, FieldPath, InvalidValue, PathSegment, SpecError};
use super::{ExperimentSpec, MAX_MAX_RESTARTS, MAX_PRIORITY};
use crate::v1;

/// A spec file as written, before any value is checked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// Absent: the controller gives the experiment an id.
    #[serde(default)]
    pub id: Option<String>,
    pub command: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A path on the workstation, relative to the spec file's folder; the
    /// file is shipped to the board under its file name.
    #[serde(default)]
    pub config_file: Option<PathBuf>,
    #[serde(default)]
    pub priority: Option<i64>,
    #[serde(default)]
    pub resources: ResourcesFile,
    #[serde(default)]
    pub placement: PlacementFile,
    #[serde(default)]
    pub lifecycle: LifecycleFile,
}

/// `[resources]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesFile {
    /// `"8G"`, or plain bytes as a string or an integer.
    #[serde(default, deserialize_with = "string_or_integer")]
    pub memory_max: Option<String>,
    #[serde(default)]
    pub cpu_quota: Option<String>,
    #[serde(default)]
    pub gpu: bool,
}

/// `[placement]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementFile {
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// An nvpmodel mode by name (`"MAXN"`) or id (`2` or `"2"`).
    #[serde(default, deserialize_with = "string_or_integer")]
    pub power_mode: Option<String>,
    #[serde(default)]
    pub max_temp_c: Option<f64>,
}

/// `[lifecycle]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleFile {
    #[serde(default)]
    pub max_runtime: Option<String>,
    #[serde(default)]
    pub restart: Option<String>,
    #[serde(default)]
    pub max_restarts: Option<i64>,
    #[serde(default)]
    pub restart_delay: Option<String>,
    #[serde(default)]
    pub stop_timeout: Option<String>,
    #[serde(default)]
    pub on_disruption: Option<String>,
    #[serde(default)]
    pub autostart: bool,
}

/// Accepts `"8G"` as well as `1073741824`, `"MAXN"` as well as `2`.
fn string_or_integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or an integer")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(s.to_owned()))
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n.to_string()))
        }
    }
    d.deserialize_any(Visitor)
}

impl SpecFile {
    /// Parses the TOML text; only its syntax and shape are checked here.
    pub fn from_toml(text: &str) -> Result<Self, SpecFileError> {
        let table = DeTable::parse(text).map_err(|e| SpecFileError::from_toml(text, None, &e))?;
        toml::from_str(text).map_err(|e| SpecFileError::from_toml(text, Some(&table), &e))
    }

    /// The wire message, with `config_content` (the bytes of
    /// `config_file`, read by the caller) under the config file's name.
    /// Values are not checked beyond what the wire message cannot hold;
    /// [`ExperimentSpec::try_from`] checks the rest.
    pub fn to_proto(
        &self,
        config_content: Option<Vec<u8>>,
    ) -> Result<v1::ExperimentSpec, SpecError> {
        let (spec, problems) = self.to_proto_and_problems(config_content);
        match SpecError::from_problems(problems) {
            None => Ok(spec),
            Some(err) => Err(err),
        }
    }

    /// The wire message, with a field the message cannot hold left at its
    /// default and reported, so the other fields can still be checked.
    fn to_proto_and_problems(
        &self,
        config_content: Option<Vec<u8>>,
    ) -> (v1::ExperimentSpec, Vec<FieldError>) {
        let mut problems = Vec::new();
        let priority = match self.priority {
            None => 0,
            Some(p) => i32::try_from(p).unwrap_or_else(|_| {
                problems.push(FieldError::new(
                    FieldPath::of(&["priority"]),
                    InvalidValue::invalid(
                        "priority",
                        &p.to_string(),
                        format!("use a whole number from 0 to {MAX_PRIORITY}; higher runs first"),
                    ),
                ));
                0
            }),
        };
        let max_restarts = self.lifecycle.max_restarts.and_then(|n| {
            u32::try_from(n)
                .map_err(|_| {
                    problems.push(FieldError::new(
                        FieldPath::of(&["lifecycle", "max_restarts"]),
                        InvalidValue::invalid(
                            "max restarts",
                            &n.to_string(),
                            format!("use a whole number from 0 to {MAX_MAX_RESTARTS}"),
                        ),
                    ))
                })
                .ok()
        });
        let config_name = match &self.config_file {
            None => String::new(),
            Some(path) => match path.file_name().and_then(|n| n.to_str()) {
                Some(name) => name.to_owned(),
                None => {
                    problems.push(FieldError::new(
                        FieldPath::of(&["config_file"]),
                        format!(
                            "config file path {} does not name a file: give the path of the \
                             config file",
                            quote(&path.to_string_lossy())
                        ),
                    ));
                    String::new()
                }
            },
        };
        let spec = v1::ExperimentSpec {
            id: self.id.clone().unwrap_or_default(),
            command: self.command.clone(),
            working_dir: self.working_dir.clone().unwrap_or_default(),
            env: self.env.clone().into_iter().collect(),
            config_name,
            config_content: config_content.unwrap_or_default(),
            priority,
            resources: Some(v1::Resources {
                memory_max: self.resources.memory_max.clone().unwrap_or_default(),
                cpu_quota: self.resources.cpu_quota.clone().unwrap_or_default(),
                gpu: self.resources.gpu,
            }),
            placement: Some(v1::Placement {
                node: self.placement.node.clone().unwrap_or_default(),
                labels: self.placement.labels.clone().into_iter().collect(),
                power_mode: self.placement.power_mode.clone().unwrap_or_default(),
                max_temp_c: self.placement.max_temp_c,
            }),
            lifecycle: Some(v1::Lifecycle {
                max_runtime: self.lifecycle.max_runtime.clone().unwrap_or_default(),
                restart: self.lifecycle.restart.clone().unwrap_or_default(),
                max_restarts,
                restart_delay: self.lifecycle.restart_delay.clone().unwrap_or_default(),
                stop_timeout: self.lifecycle.stop_timeout.clone().unwrap_or_default(),
                on_disruption: self.lifecycle.on_disruption.clone().unwrap_or_default(),
                autostart: self.lifecycle.autostart,
            }),
        };
        (spec, problems)
    }
}

/// Reads a spec file's text into a checked wire message.
///
/// `read_config` reads the file `config_file` names (the caller resolves it
/// against the spec file's folder). Every problem is reported at once, each
/// with the place in `text` it comes from. An absent `id` stays empty in
/// the result, for the controller to fill in.
pub fn spec_from_toml(
    text: &str,
    read_config: impl FnOnce(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<v1::ExperimentSpec, SpecFileError> {
    let table = DeTable::parse(text).map_err(|e| SpecFileError::from_toml(text, None, &e))?;
    let file: SpecFile =
        toml::from_str(text).map_err(|e| SpecFileError::from_toml(text, Some(&table), &e))?;

    let mut problems = Vec::new();
    let content = match &file.config_file {
        None => None,
        Some(path) => match read_config(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                problems.push(FieldError::new(
                    FieldPath::of(&["config_file"]),
                    format!(
                        "config file {} cannot be read: {e}",
                        quote(&path.to_string_lossy())
                    ),
                ));
                // Go on with an empty file, to report the other problems too.
                Some(Vec::new())
            }
        },
    };
    let (spec, conversion_problems) = file.to_proto_and_problems(content);
    problems.extend(conversion_problems);
    let mut checked = spec.clone();
    if file.id.is_none() {
        // The id is the controller's to choose; any valid one lets the other
        // fields be checked, and no rule ties them to the id.
        checked.id = "placeholder".to_owned();
    }
    if let Err(e) = ExperimentSpec::try_from(&checked) {
        problems.extend(e.problems().iter().cloned());
    }
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(SpecFileError::from_fields(text, &table, problems))
    }
}

/// One problem in a spec file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    field: Option<String>,
    message: String,
    span: Option<Range<usize>>,
    line_column: Option<(usize, usize)>,
}

impl FileProblem {
    fn new(text: &str, field: Option<String>, message: String, span: Option<Range<usize>>) -> Self {
        let line_column = span.as_ref().map(|s| line_column(text, s.start));
        Self {
            field,
            message,
            span,
            line_column,
        }
    }

    /// The key path in TOML syntax (`resources.memory_max`), when known.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// What is wrong and how to fix it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Byte range in the text.
    pub fn span(&self) -> Option<Range<usize>> {
        self.span.clone()
    }

    /// 1-based line and column (in characters) where the problem starts.
    pub fn line_column(&self) -> Option<(usize, usize)> {
        self.line_column
    }
}

/// `7:14: resources.memory_max: memory size "8GB" is invalid: ...`; a
/// caller puts the file name in front.
impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.line_column {
            write!(f, "{line}:{column}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem of a spec file, in the order they appear in it. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecFileError {
    problems: Vec<FileProblem>,
}

impl SpecFileError {
    pub fn problems(&self) -> &[FileProblem] {
        &self.problems
    }

    fn from_toml(text: &str, table: Option<&Spanned<DeTable<'_>>>, e: &toml::de::Error) -> Self {
        let span = e.span();
        let field = match (table, &span) {
            (Some(table), Some(span)) if !span.is_empty() => {
                let mut path = Vec::new();
                key_path_at(table.get_ref(), span.start, &mut path).then(|| path.join("."))
            }
            _ => None,
        };
        Self {
            problems: vec![FileProblem::new(
                text,
                field,
                crate::toml_error::message(text, e),
                span,
            )],
        }
    }

    fn from_fields(text: &str, table: &Spanned<DeTable<'_>>, problems: Vec<FieldError>) -> Self {
        let mut problems: Vec<FileProblem> = problems
            .into_iter()
            .map(|p| {
                let (path, span) = locate(table, p.path(), p.is_about_key());
                FileProblem::new(text, Some(path.to_string()), p.message().to_owned(), span)
            })
            .collect();
        // Stable: problems at one place keep their field order.
        problems.sort_by_key(|p| p.span.as_ref().map_or(usize::MAX, |s| s.start));
        Self { problems }
    }
}

impl fmt::Display for SpecFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecFileError {}

/// 1-based line and character column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Fills `path` with the keys leading to the deepest key or value that
/// holds `offset`.
fn key_path_at(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(display_key(key.get_ref()));
        // A `[table]` header's span covers only the header, so look inside
        // every table, not just the one whose span holds the offset.
        if value_path_at(value, offset, path)
            || key.span().contains(&offset)
            || value.span().contains(&offset)
        {
            return true;
        }
        path.pop();
    }
    false
}

fn value_path_at(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<String>) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => key_path_at(table, offset, path),
        DeValue::Array(array) => {
            for (i, item) in array.iter().enumerate() {
                if item.span().contains(&offset) {
                    if let Some(last) = path.last_mut() {
                        last.push_str(&format!("[{i}]"));
                    }
                    value_path_at(item, offset, path);
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

fn display_key(key: &str) -> String {
    FieldPath::of(&[key]).to_string()
}

/// The span of a field's key or value in the file, falling back to its
/// nearest ancestor that is written there (a defaulted field has no place of
/// its own, its table may). The path is the field's name in the file: the
/// wire's `config_name` and `config_content` are the file's `config_file`.
fn locate(
    table: &Spanned<DeTable<'_>>,
    path: &FieldPath,
    about_key: bool,
) -> (FieldPath, Option<Range<usize>>) {
    let segments: Vec<PathSegment> = path
        .segments()
        .iter()
        .map(|s| match s {
            PathSegment::Key(k) if k == "config_name" || k == "config_content" => {
                PathSegment::Key("config_file".to_owned())
            }
            other => other.clone(),
        })
        .collect();
    let file_path = segments.iter().fold(FieldPath::default(), |p, s| match s {
        PathSegment::Key(k) => p.key(k),
        PathSegment::Index(i) => p.index(*i),
    });

    let mut span = None;
    let mut current: Option<&Spanned<DeValue<'_>>> = None;
    let mut current_table = Some(table.get_ref());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let found = match (segment, current_table, current) {
            (PathSegment::Key(k), Some(t), _) => t.get_key_value(k.as_str()).map(|(key, value)| {
                let s = if last && about_key {
                    key.span()
                } else {
                    value.span()
                };
                (s, value)
            }),
            (PathSegment::Index(i), _, Some(value)) => value
                .get_ref()
                .as_array()
                .and_then(|a| a.get(*i))
                .map(|item| (item.span(), item)),
            _ => None,
        };
        let Some((s, value)) = found else { break };
        span = Some(s);
        current = Some(value);
        current_table = value.get_ref().as_table();
    }
    (file_path, span)
}

#[cfg(test)]
mod tests;
