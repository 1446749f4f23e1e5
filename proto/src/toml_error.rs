//! TOML parse errors that name what they are about.
//!
//! The `toml` crate reports a key given twice as just "duplicate key",
//! pointing at the second one; a person fixing a long config file wants
//! to read which key, and what to do. Every TOML file fleet reads (the
//! agent's and the controller's configs, fleetctl's, experiment specs)
//! goes through here.

/// The message of `e`, a parse error of `text`, naming the key where
/// `toml` does not.
pub fn message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    if message != "duplicate key" {
        return message.to_owned();
    }
    match e.span().and_then(|s| text.get(s)).map(key_name) {
        Some(key) if !key.is_empty() => format!(
            "duplicate key `{key}`: it is already set earlier in the same table; keep one of them"
        ),
        _ => "duplicate key: a key is set twice in the same table; keep one of them".to_owned(),
    }
}

/// `toml`'s whole report of `e` (the line, a caret under the place, the
/// message) with [`message`] as its message.
pub fn report(text: &str, e: &toml::de::Error) -> String {
    let full = e.to_string();
    let original = e.message().trim();
    let better = message(text, e);
    if better == original {
        return full;
    }
    match full.rfind(original) {
        Some(at) => format!("{}{better}{}", &full[..at], &full[at + original.len()..]),
        None => format!("{full}: {better}"),
    }
}

/// The key as written at a span: a bare or quoted key, or a table header.
fn key_name(at: &str) -> String {
    let at = at.trim();
    let at = at.trim_start_matches('[').trim_end_matches(']').trim();
    at.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> toml::de::Error {
        toml::from_str::<toml::Table>(text).unwrap_err()
    }

    #[test]
    fn a_duplicate_key_is_named() {
        for (text, key) in [
            ("node = \"a\"\nnode = \"b\"\n", "node"),
            ("[tls]\nca = \"/a\"\nca = \"/b\"\n", "ca"),
            ("[tls]\nca = \"/a\"\n[tls]\ncert = \"/b\"\n", "tls"),
            ("\"odd key\" = 1\n\"odd key\" = 2\n", "\"odd key\""),
            ("a.b = 1\na.b = 2\n", "b"),
        ] {
            let e = error(text);
            let m = message(text, &e);
            assert!(
                m.starts_with(&format!("duplicate key `{key}`:")) && m.contains("keep one"),
                "{text:?}: {m}"
            );
            let r = report(text, &e);
            assert!(r.contains(&m) && r.contains("line"), "{r}");
        }
    }

    #[test]
    fn other_errors_are_toml_s_own() {
        let text = "node = \n";
        let e = error(text);
        assert_eq!(message(text, &e), e.message().trim());
        assert_eq!(report(text, &e), e.to_string());
    }
}
