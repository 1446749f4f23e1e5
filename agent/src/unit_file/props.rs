//! Property-based tests of the drop-in writer: for any valid spec, however
//! hostile its strings, the rendered drop-in reads back, by the rules
//! systemd reads a unit file with, as exactly the directives intended: no
//! extra line or directive, no specifier left unescaped, no `$` that
//! systemd would expand other than the fleet variables the spec asks for.
//!
//! The reader below is a strict model of systemd's (systemd.syntax(7),
//! systemd.service(5) "Command lines", systemd.exec(5) `Environment=`): it
//! accepts only what the writer means to write, so anything else the
//! writer produces fails the property. The tests in `unit_file.rs` check
//! the same rules against a real systemd for a fixed set of values.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use fleet_proto::spec::{
    format_duration, format_size, ExperimentSpec, ENV_CONFIG, ENV_EPOCH, ENV_EXPERIMENT_ID,
    MAX_CPU_QUOTA_PERCENT, MAX_MAX_RESTARTS, MAX_MAX_RUNTIME, MAX_MEMORY_MAX, MAX_RESTART_DELAY,
    MAX_STOP_TIMEOUT, MIN_MAX_RUNTIME, MIN_MEMORY_MAX, MIN_STOP_TIMEOUT, RESERVED_ENV_PREFIX,
    SUBSTITUTED_ENV, SYSTEMD_ENV,
};
use fleet_proto::v1;
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::*;

/// Cases per property in a plain `cargo test`.
const CASES: u32 = 4096;

fn config() -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    config
}

/// Pieces of text systemd, a shell or a C string treat specially, and
/// plain ones: everything an argument or an environment value may hold.
const TOKENS: &[&str] = &[
    "a",
    "Z",
    "0",
    " ",
    "  ",
    "\t",
    "\"",
    "'",
    "\\",
    "\\\\",
    "\\\"",
    "%",
    "%%",
    "%i",
    "%n",
    "%%i",
    "$",
    "$$",
    "{",
    "}",
    "${HOME}",
    "$HOME",
    "${FLEET_CONFIG}",
    "${FLEET_EPOCH}",
    "${FLEET_EXPERIMENT_ID}",
    "${FLEET_CONFIG",
    "$FLEET_CONFIG",
    "${FLEET_CONFIGX}",
    "${FLEET_CONFIG:-x}",
    "$${FLEET_CONFIG}",
    ";",
    "\\;",
    "#",
    "=",
    "[Service]",
    "ExecStart=",
    "-",
    "@",
    "+",
    ":",
    "!",
    "|",
    "/",
    ".",
    "..",
    "\\x25",
    "\\n",
    "\\x0a",
    "\\",
    "`",
    "*",
    "é",
    "☃",
    "\u{85}",
    "\u{2028}",
    "\u{feff}",
    "\u{9f}",
];

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..max).prop_map(|t| t.concat())
}

/// A valid absolute path with the characters systemd treats specially that
/// a path may hold.
fn path() -> impl Strategy<Value = String> {
    let component = prop_oneof![
        "[a-z0-9_.-]{1,8}".prop_filter("not . or ..", |c| c != "." && c != ".."),
        Just("my dir".to_owned()),
        Just("100%".to_owned()),
        Just("%i".to_owned()),
        Just("%%".to_owned()),
        Just("a;b".to_owned()),
        Just("#x".to_owned()),
        Just("é☃".to_owned()),
        Just("a=b".to_owned()),
        Just("-x".to_owned()),
        Just("@x".to_owned()),
        Just("`x`".to_owned()),
    ];
    prop::collection::vec(component, 0..4).prop_map(|c| format!("/{}", c.join("/")))
}

/// A valid spec full of hostile strings, with where its config file is
/// stored (any bytes but NUL, as a path on the board can be) and the
/// epoch.
fn case() -> impl Strategy<Value = (ExperimentSpec, Option<Vec<u8>>, u64)> {
    let env_name = "[A-Za-z_][A-Za-z0-9_]{0,10}".prop_filter("not reserved", |n| {
        !n.starts_with(RESERVED_ENV_PREFIX) && !SYSTEMD_ENV.contains(&n.as_str())
    });
    let durations = (
        prop::option::of(MIN_MAX_RUNTIME.as_millis() as u64..=MAX_MAX_RUNTIME.as_millis() as u64),
        prop::option::of(0..=MAX_RESTART_DELAY.as_millis() as u64),
        prop::option::of(MIN_STOP_TIMEOUT.as_millis() as u64..=MAX_STOP_TIMEOUT.as_millis() as u64),
    );
    (
        "[a-z0-9][a-z0-9_-]{0,62}",
        prop_oneof![path(), "[A-Za-z0-9_][A-Za-z0-9._+-]{0,12}"],
        prop::collection::vec(text(8), 0..6),
        prop::option::of(path()),
        prop::collection::hash_map(env_name, text(8), 0..5),
        prop::option::of(prop::collection::vec(1u8..=255, 0..24)),
        any::<u64>(),
        (
            prop::option::of(MIN_MEMORY_MAX..=MAX_MEMORY_MAX),
            prop::option::of(1..=MAX_CPU_QUOTA_PERCENT),
        ),
        (
            any::<bool>(),
            prop::option::of(0..=MAX_MAX_RESTARTS),
            durations,
        ),
        (
            prop::collection::hash_map("[a-z0-9][a-z0-9._/-]{0,8}", "[A-Za-z0-9._-]{0,8}", 0..3),
            prop::option::of("[a-z0-9][a-z0-9_-]{0,10}"),
        ),
    )
        .prop_map(
            |(id, program, args, dir, env, config, epoch, limits, lifecycle, placement)| {
                let mut command = vec![program];
                command.extend(args);
                let (never, max_restarts, (runtime, delay, stop)) = lifecycle;
                let ms = |ms: u64| format_duration(Duration::from_millis(ms));
                let wire = v1::ExperimentSpec {
                    id,
                    command,
                    working_dir: dir.unwrap_or_default(),
                    env,
                    // The spec's config file, whenever the board has one:
                    // an argument may then use ${FLEET_CONFIG}.
                    config_name: if config.is_some() { "c.json" } else { "" }.to_owned(),
                    config_content: Vec::new(),
                    priority: 0,
                    resources: Some(v1::Resources {
                        memory_max: limits.0.map(format_size).unwrap_or_default(),
                        cpu_quota: limits.1.map(|p| format!("{p}%")).unwrap_or_default(),
                        gpu: false,
                    }),
                    placement: Some(v1::Placement {
                        node: placement.1.unwrap_or_default(),
                        labels: placement.0,
                        ..Default::default()
                    }),
                    lifecycle: Some(v1::Lifecycle {
                        max_runtime: runtime.map(ms).unwrap_or_default(),
                        restart: if never { "never" } else { "on-failure" }.to_owned(),
                        max_restarts,
                        restart_delay: delay.map(ms).unwrap_or_default(),
                        stop_timeout: stop.map(ms).unwrap_or_default(),
                        ..Default::default()
                    }),
                };
                (wire, config, epoch)
            },
        )
        .prop_filter_map(
            "an argument uses ${FLEET_CONFIG} without a config file",
            |(wire, config, epoch)| {
                ExperimentSpec::try_from(&wire)
                    .ok()
                    .map(|spec| (spec, config, epoch))
            },
        )
}

/// One `Key=value` line as systemd's unit file parser splits it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Directive {
    section: String,
    key: String,
    value: String,
}

/// systemd's line rules (conf-parser.c): lines end at `\n`, `\r` or NUL;
/// leading and trailing whitespace goes; a line ending in `\` continues
/// on the next; `#` and `;` start comments; `[Section]`; `Key=value`.
/// Refuses what the writer must never produce.
fn read_unit(text: &str) -> Result<Vec<Directive>, String> {
    if let Some(c) = text.chars().find(|&c| c.is_ascii_control() && c != '\n') {
        return Err(format!("raw control character {c:?}"));
    }
    let mut section = None;
    let mut out = Vec::new();
    for raw in text.split('\n') {
        if raw.len() > 1024 * 1024 {
            return Err("a line longer than systemd reads".into());
        }
        let line = raw.trim_matches([' ', '\t']);
        if line.ends_with('\\') {
            return Err(format!("line {line:?} continues on the next"));
        }
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.to_owned());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {line:?} is not an assignment"))?;
        out.push(Directive {
            section: section.clone().ok_or("a directive before any section")?,
            key: key.trim_matches([' ', '\t']).to_owned(),
            value: value.trim_matches([' ', '\t']).to_owned(),
        });
    }
    Ok(out)
}

/// Words of a value, each one double-quoted string with C escapes
/// (`extract_first_word` with `EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE`), the
/// only form the writer uses. A bare word, an unknown escape or text
/// after a closing quote is refused.
fn unquote_words(value: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.next_if(|c| matches!(c, ' ' | '\t')).is_some() {}
        let Some(first) = chars.next() else {
            return Ok(words);
        };
        if first != '"' {
            return Err(format!("bare word starting {first:?} in {value:?}"));
        }
        let mut word = String::new();
        loop {
            match chars.next().ok_or("unterminated quote")? {
                '"' => break,
                '\\' => match chars.next().ok_or("escape at the end")? {
                    '\\' => word.push('\\'),
                    '"' => word.push('"'),
                    '\'' => word.push('\''),
                    't' => word.push('\t'),
                    'n' => word.push('\n'),
                    'r' => word.push('\r'),
                    'x' => {
                        let hex: String = (0..2).filter_map(|_| chars.next()).collect();
                        let byte = u8::from_str_radix(&hex, 16)
                            .map_err(|_| format!("bad \\x escape {hex:?}"))?;
                        if byte == 0 || byte >= 0x80 {
                            return Err(format!("\\x{hex} is refused or not a character"));
                        }
                        word.push(char::from(byte));
                    }
                    other => return Err(format!("unknown escape \\{other}")),
                },
                c => word.push(c),
            }
        }
        if chars.peek().is_some_and(|c| !matches!(c, ' ' | '\t')) {
            return Err(format!("text after a closing quote in {value:?}"));
        }
        words.push(word);
    }
}

/// Specifier expansion: `%%` is `%`; any other `%` would be a specifier.
fn unescape_specifiers(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('%') => out.push('%'),
                other => return Err(format!("specifier %{other:?} in {s:?}")),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// A quoted value's words, specifiers resolved. systemd resolves them
/// after unquoting (current versions) or before (older ones); the writer
/// must mean the same either way.
fn decode_words(value: &str) -> Result<Vec<String>, String> {
    let after = unquote_words(value)?
        .iter()
        .map(|w| unescape_specifiers(w))
        .collect::<Result<Vec<_>, _>>()?;
    let before = unquote_words(&unescape_specifiers(value)?)?;
    if after != before {
        return Err(format!(
            "{value:?} reads as {after:?} or {before:?} by the order of unquoting"
        ));
    }
    Ok(after)
}

/// What systemd does to a command word when it starts the process: `$$`
/// is `$`, `${NAME}` the variable. Only the fleet variables may be
/// expanded; a `$` that is neither, or a whole-word `$NAME`, is refused.
fn expand_at_exec(word: &str, env: &HashMap<String, String>) -> Result<String, String> {
    if word.starts_with('$') && !word[1..].starts_with(['{', '$']) {
        return Err(format!("{word:?} would be split as a variable"));
    }
    let mut out = String::new();
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = rest.strip_prefix("${").and_then(|r| r.split_once('}'))
        {
            if !SUBSTITUTED_ENV.contains(&name) {
                return Err(format!("${{{name}}} would be expanded in {word:?}"));
            }
            out.push_str(env.get(name).ok_or(format!("{name} is not set"))?);
            rest = after;
        } else {
            return Err(format!("a lone $ in {word:?}"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A time span as the writer gives it: `<n>s` or `<n>ms`.
fn read_time(s: &str) -> Result<Duration, String> {
    let parse = |n: &str| n.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    match s.strip_suffix("ms") {
        Some(n) => Ok(Duration::from_millis(parse(n)?)),
        None => Ok(Duration::from_secs(parse(
            s.strip_suffix('s').ok_or(format!("{s:?} has no unit"))?,
        )?)),
    }
}

/// The argument list the process must get: the spec's, with each
/// `${FLEET_*}` it uses replaced.
fn expected_argv(spec: &ExperimentSpec, env: &HashMap<String, String>) -> Vec<String> {
    spec.command()
        .argv()
        .iter()
        .map(|arg| {
            let mut out = String::new();
            let mut i = 0;
            let subs: Vec<(usize, &str)> = substitutions(arg).collect();
            while i < arg.len() {
                if let Some((_, name)) = subs.iter().find(|(at, _)| *at == i) {
                    out.push_str(&env[*name]);
                    i += name.len() + 3;
                } else {
                    let c = arg[i..].chars().next().unwrap();
                    out.push(c);
                    i += c.len_utf8();
                }
            }
            out
        })
        .collect()
}

/// Checks the rendered drop-in against the spec, directive by directive.
fn check(spec: &ExperimentSpec, config: Option<&Path>, epoch: u64) -> Result<(), String> {
    let text = render_dropin(spec, config, epoch);
    let directives = read_unit(&text)?;
    let l = spec.lifecycle();
    let r = spec.resources();
    let mut want: Vec<(&str, &str)> = vec![("Unit", "StartLimitIntervalSec")];
    if l.restarts_on_failure() {
        want.push(("Unit", "StartLimitBurst"));
    }
    want.extend([("Service", "ExecStart"), ("Service", "ExecStart")]);
    if spec.working_dir().is_some() {
        want.push(("Service", "WorkingDirectory"));
    }
    let env_count = 2 + usize::from(config.is_some()) + spec.env().len();
    want.extend(std::iter::repeat_n(("Service", "Environment"), env_count));
    if r.memory_max().is_some() {
        want.push(("Service", "MemoryMax"));
    }
    if r.cpu_quota_percent().is_some() {
        want.push(("Service", "CPUQuota"));
    }
    want.push(("Service", "Restart"));
    if l.restarts_on_failure() {
        want.push(("Service", "RestartSec"));
    }
    want.extend([("Service", "RuntimeMaxSec"), ("Service", "TimeoutStopSec")]);
    let got: Vec<(&str, &str)> = directives
        .iter()
        .map(|d| (d.section.as_str(), d.key.as_str()))
        .collect();
    if got != want {
        return Err(format!("directives {got:?}, want {want:?}\n{text}"));
    }

    // The environment, as systemd reads each assignment.
    let mut env_want: Vec<(String, String)> = vec![
        (ENV_EXPERIMENT_ID.into(), spec.id().to_string()),
        (ENV_EPOCH.into(), epoch.to_string()),
    ];
    if let Some(path) = config {
        env_want.push((ENV_CONFIG.into(), path.to_string_lossy().into_owned()));
    }
    env_want.extend(
        spec.env()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut env_got = Vec::new();
    for d in directives.iter().filter(|d| d.key == "Environment") {
        let words = decode_words(&d.value)?;
        let [word] = words.as_slice() else {
            return Err(format!("{:?} holds {} assignments", d.value, words.len()));
        };
        let (name, value) = word.split_once('=').ok_or(format!("{word:?} has no ="))?;
        env_got.push((name.to_owned(), value.to_owned()));
    }
    if env_got != env_want {
        return Err(format!("environment {env_got:?}, want {env_want:?}"));
    }
    let env: HashMap<String, String> = env_got.into_iter().collect();

    let value = |key: &str| -> Vec<&str> {
        directives
            .iter()
            .filter(|d| d.key == key)
            .map(|d| d.value.as_str())
            .collect()
    };

    // The command: the template's reset, then exactly the spec's argv.
    let exec = value("ExecStart");
    if !exec[0].is_empty() {
        return Err(format!("the first ExecStart= is {:?}", exec[0]));
    }
    let words = decode_words(exec[1])?;
    if words[0].starts_with(['-', '@', ':', '+', '!', '|']) {
        return Err(format!(
            "program {:?} carries an ExecStart prefix",
            words[0]
        ));
    }
    let argv = words
        .iter()
        .map(|w| expand_at_exec(w, &env))
        .collect::<Result<Vec<_>, _>>()?;
    let want_argv = expected_argv(spec, &env);
    if argv != want_argv {
        return Err(format!("argv {argv:?}, want {want_argv:?}\n{}", exec[1]));
    }

    if let Some(dir) = spec.working_dir() {
        // Taken verbatim but for specifiers.
        let got = unescape_specifiers(value("WorkingDirectory")[0])?;
        if got != dir.as_str() {
            return Err(format!("working directory {got:?}, want {dir}"));
        }
    }
    if let Some(bytes) = r.memory_max() {
        if value("MemoryMax") != [bytes.to_string()] {
            return Err(format!("MemoryMax {:?}", value("MemoryMax")));
        }
    }
    if let Some(p) = r.cpu_quota_percent() {
        if value("CPUQuota") != [format!("{p}%")] {
            return Err(format!("CPUQuota {:?}", value("CPUQuota")));
        }
    }
    let restart = value("Restart")[0];
    if l.restarts_on_failure() {
        let burst = value("StartLimitBurst")[0];
        let window = read_time(value("StartLimitIntervalSec")[0])?;
        let needed = START_LIMIT_BASE_INTERVAL + l.restart_delay() * (l.max_restarts() + 1);
        if restart != "on-failure"
            || burst != (l.max_restarts() + 1).to_string()
            || window < needed
            || read_time(value("RestartSec")[0])? != l.restart_delay()
        {
            return Err(format!("restart settings wrong\n{text}"));
        }
    } else if restart != "no" || value("StartLimitIntervalSec") != ["0"] {
        return Err(format!("no-restart settings wrong\n{text}"));
    }
    let runtime = value("RuntimeMaxSec")[0];
    match l.max_runtime() {
        None if runtime == "infinity" => {}
        Some(d) if read_time(runtime)? == d => {}
        _ => return Err(format!("RuntimeMaxSec {runtime:?}")),
    }
    if read_time(value("TimeoutStopSec")[0])? != l.stop_timeout() {
        return Err(format!("TimeoutStopSec {:?}", value("TimeoutStopSec")));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any valid spec renders to exactly the directives intended.
    #[test]
    fn the_drop_in_says_exactly_what_the_spec_says(case in case()) {
        let (spec, config, epoch) = case;
        let config = config.as_deref().map(|b| Path::new(OsStr::from_bytes(b)));
        if let Err(e) = check(&spec, config, epoch) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// The model refuses what systemd would read otherwise, so the property
/// above can fail.
#[test]
fn the_model_refuses_what_systemd_would_read_otherwise() {
    let env = HashMap::from([("FLEET_CONFIG".to_owned(), "/c".to_owned())]);
    assert!(read_unit("[Service]\nExecStart=\"a\\\n").is_err());
    assert!(unquote_words("\"a\\\"").is_err());
    assert!(read_unit("[Service]\nA=1\rB=2\n").is_err());
    assert!(read_unit("[Service]\nA=\"x\" \\\n").is_err());
    assert!(unquote_words("\"a\" b").is_err());
    assert!(unquote_words("\"a\"b\"").is_err());
    assert!(unquote_words("\"a\\q\"").is_err());
    assert!(unquote_words("\"a\\x00\"").is_err());
    assert!(unescape_specifiers("100%").is_err());
    assert!(unescape_specifiers("%i").is_err());
    assert_eq!(unescape_specifiers("100%%").unwrap(), "100%");
    assert!(expand_at_exec("$HOME", &env).is_err());
    assert!(expand_at_exec("a$HOME", &env).is_err());
    assert!(expand_at_exec("${HOME}", &env).is_err());
    assert_eq!(
        expand_at_exec("$${FLEET_CONFIG}", &env).unwrap(),
        "${FLEET_CONFIG}"
    );
    assert_eq!(expand_at_exec("$$${FLEET_CONFIG}", &env).unwrap(), "$/c");
    assert_eq!(
        unquote_words(r#""a b" "c\"d\\" "\t\x1b""#).unwrap(),
        ["a b", "c\"d\\", "\t\u{1b}"]
    );
}
