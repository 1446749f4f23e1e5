//! Settings of a daemon's config given as `KEY=VALUE` (`fleet-dev up
//! --controller-set heartbeat_timeout_s=5 --agent-set guard.cooldown_s=1`,
//! or a test's options): dotted keys name sections, the value is a TOML
//! value (a bare word that is not one is taken as a string). They are
//! applied to the config the testbed writes, and checked by the daemon's
//! own `check-config`, so an unknown key is refused the way the daemon
//! refuses it, before anything starts.

use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;

use anyhow::{bail, Context as _};

/// Exit code of the daemons for a bad config (EX_CONFIG in their words).
pub const EXIT_CONFIG: i32 = 64;

/// One `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// Dotted: `guard.cooldown_s`.
    pub key: String,
    pub value: toml::Value,
    /// As given, for messages.
    pub text: String,
}

impl FromStr for Setting {
    type Err = String;

    fn from_str(s: &str) -> Result<Setting, String> {
        let (key, raw) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
        let key = key.trim();
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !key.split('.').all(valid_part) {
            return Err(format!(
                "{key:?} is not a config key (letters, digits, '_' and '-', sections joined with '.', e.g. guard.cooldown_s)"
            ));
        }
        let raw = raw.trim();
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
        Ok(Setting {
            key: key.to_owned(),
            value,
            text: s.to_owned(),
        })
    }
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Sets `key` (dotted) in `table`, making the sections it needs.
pub fn set(table: &mut toml::Table, key: &str, value: toml::Value) -> anyhow::Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().context("empty key")?;
    let mut here = table;
    let mut path = String::new();
    for part in parts {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(part);
        let entry = here
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        here = match entry {
            toml::Value::Table(t) => t,
            other => bail!("{path} is a {}, not a section", other.type_str()),
        };
    }
    here.insert(last.to_owned(), value);
    Ok(())
}

/// The config `text` with `settings` applied (in order; a later one wins).
/// Without settings, `text` as it is.
pub fn apply(text: &str, settings: &[Setting]) -> anyhow::Result<String> {
    if settings.is_empty() {
        return Ok(text.to_owned());
    }
    let mut table: toml::Table = text.parse().context("parse the generated config")?;
    for s in settings {
        set(&mut table, &s.key, s.value.clone()).with_context(|| format!("set {s}"))?;
    }
    Ok(toml::to_string(&table)?)
}

/// Sets one key of the config file at `path`.
pub fn set_in_file(path: &Path, key: &str, value: toml::Value) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("parse {}", path.display()))?;
    set(&mut table, key, value)?;
    std::fs::write(path, toml::to_string(&table)?)
        .with_context(|| format!("write {}", path.display()))
}

/// Refuses a setting of a key the testbed sets itself (`owned` lists keys
/// and whole sections): changing it would break the fleet.
pub fn refuse_owned(daemon: &str, settings: &[Setting], owned: &[&str]) -> anyhow::Result<()> {
    for s in settings {
        let hit = owned
            .iter()
            .find(|o| s.key == **o || s.key.starts_with(&format!("{o}.")));
        if let Some(o) = hit {
            bail!(
                "{s}: the testbed sets {o} of the {daemon} itself (addresses, directories, \
                 certificates and simulated hardware are its own); it cannot be changed"
            );
        }
    }
    Ok(())
}

/// Runs `<bin> --config <file with text> check-config`. A config the
/// daemon refuses is an error carrying what the daemon said.
pub fn check_config(bin: &Path, file_name: &str, text: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("a directory for the config check")?;
    let path = dir.path().join(file_name);
    std::fs::write(&path, text)?;
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .env_remove("FLEET_CONTROLLER")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} check-config", bin.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let name = bin.file_name().map_or_else(
        || bin.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said.trim().replace(&path.display().to_string(), file_name);
    match out.status.code() {
        Some(EXIT_CONFIG) => bail!("{name} refuses it (exit {EXIT_CONFIG}): {said}"),
        _ => bail!("{name} check-config failed ({}): {said}", out.status),
    }
}

/// Checks settings one by one, then together, against a config the
/// testbed would write (`base`): the error names the setting the daemon
/// refused and quotes why.
pub fn check_settings(
    bin: &Path,
    file_name: &str,
    base: &str,
    settings: &[Setting],
) -> anyhow::Result<()> {
    for s in settings {
        let text = apply(base, std::slice::from_ref(s))?;
        check_config(bin, file_name, &text).with_context(|| format!("{s}"))?;
    }
    if settings.len() > 1 {
        let text = apply(base, settings)?;
        let all: Vec<String> = settings.iter().map(ToString::to_string).collect();
        check_config(bin, file_name, &text).with_context(|| all.join(" "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_toml_and_bare_words_are_strings() {
        let s: Setting = "guard.cooldown_s=1".parse().unwrap();
        assert_eq!(s.key, "guard.cooldown_s");
        assert_eq!(s.value, toml::Value::Integer(1));
        let s: Setting = "guard.warn_c = 70.5".parse().unwrap();
        assert_eq!(s.value, toml::Value::Float(70.5));
        let s: Setting = "guard.cool_mode=15W".parse().unwrap();
        assert_eq!(s.value, toml::Value::String("15W".into()));
        let s: Setting = "metrics_listen=\"127.0.0.1:9\"".parse().unwrap();
        assert_eq!(s.value, toml::Value::String("127.0.0.1:9".into()));
        let s: Setting = "guard.ignore_zones=[\"tboard\"]".parse().unwrap();
        assert!(s.value.is_array());
        assert!("novalue".parse::<Setting>().is_err());
        assert!("a..b=1".parse::<Setting>().is_err());
        assert!("=1".parse::<Setting>().is_err());
    }

    #[test]
    fn settings_go_into_their_sections_and_win() {
        let base = "node = \"x\"\n\n[guard]\ncooldown_s = 5\n";
        let settings: Vec<Setting> = ["guard.cooldown_s=1", "sampling.interval_ms=200", "node=y"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let text = apply(base, &settings).unwrap();
        let t: toml::Table = text.parse().unwrap();
        assert_eq!(t["guard"]["cooldown_s"].as_integer(), Some(1));
        assert_eq!(t["sampling"]["interval_ms"].as_integer(), Some(200));
        assert_eq!(t["node"].as_str(), Some("y"));
        assert_eq!(apply(base, &[]).unwrap(), base);
        let bad: Setting = "node.x=1".parse().unwrap();
        assert!(apply(base, &[bad]).is_err());
    }

    #[test]
    fn owned_keys_and_sections_are_refused() {
        let owned = ["listen", "tls"];
        let ok: Setting = "listener=1".parse().unwrap();
        refuse_owned("agent", &[ok], &owned).unwrap();
        for bad in ["listen=\"0.0.0.0:1\"", "tls.ca=\"/x\""] {
            let s: Setting = bad.parse().unwrap();
            let e = refuse_owned("agent", &[s], &owned).unwrap_err().to_string();
            assert!(e.contains("sets"), "{e}");
        }
    }
}
