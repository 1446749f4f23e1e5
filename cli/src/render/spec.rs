//! An experiment spec for people: what `submit --dry-run` shows and what
//! `status` repeats, every default written out.

use crate::output::key_values;
use crate::views::SpecView;

/// A spec for people, defaults written out.
pub fn spec_lines(s: &SpecView) -> Vec<String> {
    key_values(&spec_pairs(s))
}

/// A spec as key–value pairs, to print alone or within an experiment's
/// status.
pub fn spec_pairs(s: &SpecView) -> Vec<(&'static str, String)> {
    let mut pairs: Vec<(&'static str, String)> = vec![(
        "command",
        s.command
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    )];
    if let Some(dir) = &s.working_dir {
        pairs.push(("working dir", dir.clone()));
    }
    if !s.env.is_empty() {
        let env: Vec<String> = s
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", shell_quote(v)))
            .collect();
        pairs.push(("env", env.join(" ")));
    }
    if let Some(name) = &s.config_name {
        pairs.push((
            "config",
            format!("{name} ({})", crate::output::bytes(s.config_bytes as u64)),
        ));
    }
    pairs.push(("priority", s.priority.to_string()));
    let resources: Vec<String> = [
        s.memory_max.as_ref().map(|m| format!("memory at most {m}")),
        s.cpu_quota.as_ref().map(|c| format!("cpu at most {c}")),
        s.gpu.then(|| "needs a GPU".to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect();
    pairs.push((
        "resources",
        if resources.is_empty() {
            "the unit template's defaults".to_owned()
        } else {
            resources.join(", ")
        },
    ));
    let mut placement: Vec<String> = Vec::new();
    if let Some(node) = &s.node {
        placement.push(format!("on {node}"));
    }
    if !s.labels.is_empty() {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        placement.push(format!("labels {}", labels.join(",")));
    }
    if let Some(mode) = &s.power_mode {
        placement.push(format!("power mode {mode}"));
    }
    if let Some(t) = s.max_temp_c {
        placement.push(format!("below {t} °C"));
    }
    pairs.push((
        "placement",
        if placement.is_empty() {
            "any board".to_owned()
        } else {
            placement.join(", ")
        },
    ));
    let restarts = match (s.restart.as_str(), s.max_restarts) {
        ("never", _) | (_, Some(0)) => "never restarted".to_owned(),
        (_, Some(n)) => format!(
            "restarted on failure up to {n} times, {} apart",
            s.restart_delay
        ),
        (policy, None) => format!("restart {policy}"),
    };
    pairs.push((
        "lifecycle",
        format!(
            "{restarts}; {}; stop timeout {}; on disruption {}; autostart {}",
            s.max_runtime.as_deref().map_or_else(
                || "no time limit".to_owned(),
                |m| format!("runs at most {m}")
            ),
            s.stop_timeout,
            s.on_disruption,
            if s.autostart { "on" } else { "off" }
        ),
    ));
    pairs
}

/// An argument as a shell would need it: bare when safe, else in single quotes.
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%{}$".contains(c));
    if safe {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("python3"), "python3");
        assert_eq!(shell_quote("${FLEET_CONFIG}"), "${FLEET_CONFIG}");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
