//! Validation errors: a bad value, the field it sits in, and every problem of a spec at once.

use std::fmt;

/// Longest part of an offending value repeated in a message; a 1 MiB argument
/// must not turn into a 1 MiB error.
const MAX_QUOTED_CHARS: usize = 80;

/// One value that breaks a rule, with what to do instead.
///
/// Reads as `experiment id "../x" is invalid: use lowercase letters, ...`.
/// The value is shown escaped (a NUL or a newline is visible) and shortened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value} {problem}: {fix}")]
pub struct InvalidValue {
    what: &'static str,
    value: String,
    problem: &'static str,
    fix: String,
}

impl InvalidValue {
    /// A value that breaks the syntax of `what`.
    pub(crate) fn invalid(what: &'static str, value: &str, fix: impl Into<String>) -> Self {
        Self::new(what, value, "is invalid", fix)
    }

    /// `problem` completes "<what> <value> ...", e.g. "is too large".
    pub(crate) fn new(
        what: &'static str,
        value: &str,
        problem: &'static str,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            what,
            value: quote(value),
            problem,
            fix: fix.into(),
        }
    }

    /// What kind of value this is, e.g. "experiment id".
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// How to fix it.
    pub fn fix(&self) -> &str {
        &self.fix
    }
}

/// Quotes a value for a message: escaped like a Rust string literal, cut after
/// [`MAX_QUOTED_CHARS`] characters.
pub(crate) fn quote(value: &str) -> String {
    if value.chars().count() <= MAX_QUOTED_CHARS {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{head:?}… ({} bytes)", value.len())
    }
}

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSegment {
    /// A table key: a field name, an env var name, a label key.
    Key(String),
    /// A position in an array, from 0.
    Index(usize),
}

/// Where a value sits in a spec, shown in TOML's own key syntax:
/// `resources.memory_max`, `command[2]`, `env."BAD NAME"`.
///
/// The same path finds the value in a spec's TOML file, so fleetctl can
/// point at the line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FieldPath(Vec<PathSegment>);

impl FieldPath {
    /// A path of plain keys, e.g. `FieldPath::of(&["lifecycle", "stop_timeout"])`.
    pub fn of(keys: &[&str]) -> Self {
        Self(
            keys.iter()
                .map(|k| PathSegment::Key((*k).to_owned()))
                .collect(),
        )
    }

    /// This path followed by a key.
    pub fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.0.push(PathSegment::Key(key.to_owned()));
        path
    }

    /// This path followed by an array position.
    pub fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(PathSegment::Index(index));
        path
    }

    pub fn segments(&self) -> &[PathSegment] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !key.is_empty()
                        && key
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                    if bare {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// One problem with one field of a spec: `resources.memory_max: memory size "8GB" is invalid: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    path: FieldPath,
    message: String,
    about_key: bool,
}

impl FieldError {
    /// A problem with the value at `path`.
    pub(crate) fn new(path: FieldPath, message: impl fmt::Display) -> Self {
        Self {
            path,
            message: message.to_string(),
            about_key: false,
        }
    }

    /// A problem with the key that ends `path` (an env var name, a label
    /// key) rather than with its value.
    pub(crate) fn key(path: FieldPath, message: impl fmt::Display) -> Self {
        Self {
            about_key: true,
            ..Self::new(path, message)
        }
    }

    pub fn path(&self) -> &FieldPath {
        &self.path
    }

    /// The problem and its fix, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the problem is the key ending the path (a name) rather than
    /// the value stored under it.
    pub fn is_about_key(&self) -> bool {
        self.about_key
    }
}

/// Every problem found in a spec, in field order. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    problems: Vec<FieldError>,
}

impl SpecError {
    /// `None` when there is no problem.
    pub(crate) fn from_problems(problems: Vec<FieldError>) -> Option<Self> {
        (!problems.is_empty()).then_some(Self { problems })
    }

    pub fn problems(&self) -> &[FieldError] {
        &self.problems
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "invalid experiment spec: {one}"),
            all => {
                write!(f, "invalid experiment spec, {} problems: ", all.len())?;
                for (i, problem) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{problem}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SpecError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_toml_keys() {
        let path = FieldPath::of(&["placement", "labels"]).key("model");
        assert_eq!(path.to_string(), "placement.labels.model");
        assert_eq!(
            FieldPath::of(&["command"]).index(2).to_string(),
            "command[2]"
        );
        assert_eq!(
            FieldPath::of(&["env"]).key("BAD NAME").to_string(),
            r#"env."BAD NAME""#
        );
        assert_eq!(FieldPath::of(&["env"]).key("").to_string(), r#"env."""#);
    }

    #[test]
    fn values_are_escaped_and_shortened_in_messages() {
        let e = InvalidValue::invalid("argument", "a\nb\0", "remove it");
        assert_eq!(e.to_string(), r#"argument "a\nb\0" is invalid: remove it"#);
        let long = "x".repeat(1000);
        let e = InvalidValue::invalid("argument", &long, "shorten it");
        assert_eq!(
            e.to_string(),
            format!(
                "argument \"{}\"… (1000 bytes) is invalid: shorten it",
                "x".repeat(80)
            )
        );
    }

    #[test]
    fn a_spec_error_lists_every_problem() {
        let one = FieldError::new(FieldPath::of(&["id"]), "bad id");
        let two = FieldError::key(FieldPath::of(&["env"]).key("1X"), "bad name");
        assert!(two.is_about_key());
        assert_eq!(SpecError::from_problems(vec![]), None);
        let single = SpecError::from_problems(vec![one.clone()]).unwrap();
        assert_eq!(single.to_string(), "invalid experiment spec: id: bad id");
        let both = SpecError::from_problems(vec![one, two]).unwrap();
        assert_eq!(
            both.to_string(),
            "invalid experiment spec, 2 problems: id: bad id; env.1X: bad name"
        );
    }
}
