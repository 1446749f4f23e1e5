//! Spec files for `submit`: read, checked by the rules every part of the
//! fleet applies, and turned into wire messages.
//!
//! All files are checked before anything is submitted, and every problem
//! of every file is reported (`FILE:LINE:COL: field: problem`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleet_proto::spec::file::spec_from_toml;
use fleet_proto::spec::{ExperimentId, ExperimentSpec, MAX_NAME_LEN};
use fleet_proto::v1;

use crate::exit::{BadSpecFile, CliError};

/// A checked spec file.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedSpec {
    /// The file as the user named it.
    pub path: PathBuf,
    /// The wire message; `id` is empty when the file names none.
    pub spec: v1::ExperimentSpec,
}

impl LoadedSpec {
    /// The spec with every default written out, as the board will hold it
    /// (`id` stays empty when the file names none).
    pub fn normalized(&self) -> v1::ExperimentSpec {
        let mut checked = self.spec.clone();
        let generated = checked.id.is_empty();
        if generated {
            checked.id = "placeholder".to_owned();
        }
        match ExperimentSpec::try_from(&checked) {
            Ok(spec) => {
                let mut wire = spec.to_proto();
                if generated {
                    wire.id.clear();
                }
                wire
            }
            // Checked when loaded; the message as it is, should it ever differ.
            Err(_) => self.spec.clone(),
        }
    }
}

/// Reads and checks every file; nothing is returned unless all are valid.
pub fn load_all(paths: &[PathBuf]) -> Result<Vec<LoadedSpec>, CliError> {
    let mut loaded = Vec::new();
    let mut bad = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
            path: path.clone(),
            source,
        })?;
        match parse(path, &text) {
            Ok(spec) => loaded.push(LoadedSpec {
                path: path.clone(),
                spec,
            }),
            Err(error) => bad.push(BadSpecFile {
                path: path.clone(),
                error,
            }),
        }
    }
    if !bad.is_empty() {
        return Err(CliError::Spec(bad));
    }
    let mut seen: BTreeMap<&str, &Path> = BTreeMap::new();
    for l in &loaded {
        if l.spec.id.is_empty() {
            continue;
        }
        if let Some(first) = seen.insert(&l.spec.id, &l.path) {
            return Err(CliError::Usage(format!(
                "{} and {} both name experiment \"{}\"; give each its own id",
                first.display(),
                l.path.display(),
                l.spec.id
            )));
        }
    }
    Ok(loaded)
}

/// Checks one file's text; `config_file` is read relative to the file's folder.
pub fn parse(
    path: &Path,
    text: &str,
) -> Result<v1::ExperimentSpec, fleet_proto::spec::file::SpecFileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    spec_from_toml(text, |config| std::fs::read(dir.join(config)))
}

/// An id for a spec file that names none, when no controller is there to
/// choose one: the file's name made valid, then a suffix from the clock so
/// two submissions of one file do not collide (`train-llama-5f3a2c`).
pub fn generate_id(path: &Path, now_us: i64) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut base: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    base = base
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned();
    let suffix = format!("{:06x}", (now_us / 1000).rem_euclid(0x100_0000));
    base.truncate(MAX_NAME_LEN - suffix.len() - 1);
    let base = base.trim_end_matches('-');
    let id = if base.is_empty() {
        format!("exp-{suffix}")
    } else {
        format!("{base}-{suffix}")
    };
    debug_assert!(ExperimentId::new(id.clone()).is_ok(), "{id}");
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
id = "amnesiac-001"
command = ["python3", "-m", "runner", "--config", "${FLEET_CONFIG}"]
config_file = "amnesiac.json"
[resources]
memory_max = "8G"
"#;

    #[test]
    fn loads_a_spec_with_its_config_file_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exp.toml");
        std::fs::write(&path, GOOD).unwrap();
        std::fs::write(dir.path().join("amnesiac.json"), b"{}").unwrap();
        let loaded = load_all(std::slice::from_ref(&path)).unwrap();
        assert_eq!(loaded[0].spec.id, "amnesiac-001");
        assert_eq!(loaded[0].spec.config_name, "amnesiac.json");
        assert_eq!(loaded[0].spec.config_content, b"{}");
        let normalized = loaded[0].normalized();
        // Defaults are written out.
        assert_eq!(normalized.lifecycle.unwrap().stop_timeout, "30s");
    }

    #[test]
    fn every_problem_of_every_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, GOOD).unwrap();
        std::fs::write(
            &b,
            "command = [\"run\"]\npriority = 5000\n[lifecycle]\nrestart = \"always\"\n",
        )
        .unwrap();
        let err = load_all(&[a.clone(), b.clone()]).unwrap_err();
        let report = err.report();
        let lines: Vec<&str> = report.lines().collect();
        // a.toml: config file missing; b.toml: relative program, priority, restart.
        assert!(
            lines[0].starts_with(&format!("{}:4:15: config_file: ", a.display())),
            "{report}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{}:2:12: priority: ", b.display()))),
            "{report}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with(&format!(
                "{}:4:11: lifecycle.restart: restart policy \"always\" is invalid",
                b.display()
            ))),
            "{report}"
        );
        assert!(lines.last().unwrap().starts_with("fleetctl: "), "{report}");
        assert!(
            lines.last().unwrap().ends_with("nothing was submitted"),
            "{report}"
        );
    }

    #[test]
    fn toml_syntax_errors_point_at_the_place() {
        let err = parse(Path::new("x.toml"), "command = [\"a\"\nid = 3\n").unwrap_err();
        let p = &err.problems()[0];
        assert!(p.line_column().is_some(), "{err}");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        let text = "id = \"same\"\ncommand = [\"/bin/true\"]\n";
        std::fs::write(&a, text).unwrap();
        std::fs::write(&b, text).unwrap();
        let err = load_all(&[a, b]).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)), "{err}");
    }

    #[test]
    fn generated_ids_are_valid() {
        let t = 1_748_779_402_500_000;
        let id = generate_id(Path::new("exps/Train Llama.toml"), t);
        assert!(id.starts_with("train-llama-"), "{id}");
        assert!(ExperimentId::new(id).is_ok());
        let id = generate_id(Path::new("__.toml"), t);
        assert!(id.starts_with("exp-"), "{id}");
        let long = format!("{}.toml", "a".repeat(100));
        let id = generate_id(Path::new(&long), t);
        assert!(id.len() <= MAX_NAME_LEN, "{id}");
        assert!(ExperimentId::new(id).is_ok());
    }
}
