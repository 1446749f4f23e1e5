//! Property-based tests of spec validation, sizes, durations and the TOML
//! form: arbitrary input never panics, what validates comes back the same
//! through every form it is written in, and what does not is refused with
//! a problem naming its field (and, in a file, its line and column).
//!
//! Each property runs [`CASES`] cases unless `PROPTEST_CASES` says
//! otherwise.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config;

use super::file::{spec_from_toml, SpecFile};
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

/// Pieces of text that systemd, TOML or a shell treat specially, and
/// plain ones, all allowed in an argument or an environment value.
const PRINTABLE_TOKENS: &[&str] = &[
    "a",
    "Z",
    "0",
    "9",
    " ",
    "\t",
    "\"",
    "'",
    "\\",
    "%",
    "%%",
    "%i",
    "%n",
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
    ";",
    "#",
    "=",
    "[",
    "]",
    "-",
    "@",
    "+",
    ":",
    "!",
    "/",
    ".",
    "..",
    "\\x25",
    "\\n",
    "é",
    "☃",
    "\u{85}",
    "\u{2028}",
    "\u{feff}",
    "\u{9f}",
];

/// Characters every value refuses.
const CONTROL_TOKENS: &[&str] = &["\n", "\r", "\0", "\u{1b}", "\u{7f}", "\u{1}"];

fn tokens(pool: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(pool), 0..max).prop_map(|t| t.concat())
}

/// Printable text with every special character systemd or TOML knows.
fn printable() -> impl Strategy<Value = String> {
    tokens(PRINTABLE_TOKENS, 8)
}

/// Anything: mostly printable, sometimes with control characters,
/// sometimes arbitrary Unicode.
fn hostile() -> impl Strategy<Value = String> {
    static ALL: std::sync::LazyLock<Vec<&str>> =
        std::sync::LazyLock::new(|| [PRINTABLE_TOKENS, CONTROL_TOKENS].concat());
    prop_oneof![
        6 => printable(),
        2 => tokens(&ALL, 8),
        1 => any::<String>(),
    ]
}

fn slug() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,62}"
}

/// A path that [`AbsolutePath`] accepts, with the characters systemd
/// treats specially that a path may hold.
fn path() -> impl Strategy<Value = String> {
    let component = prop_oneof![
        "[a-z0-9_.-]{1,8}".prop_filter("not . or ..", |c| c != "." && c != ".."),
        Just("my dir".to_owned()),
        Just("100%".to_owned()),
        Just("%i".to_owned()),
        Just("a;b".to_owned()),
        Just("#x".to_owned()),
        Just("é☃".to_owned()),
        Just("a=b".to_owned()),
        Just("-x".to_owned()),
        Just("@x".to_owned()),
    ];
    prop::collection::vec(component, 0..4).prop_map(|c| format!("/{}", c.join("/")))
}

fn program() -> impl Strategy<Value = String> {
    prop_oneof![path(), "[A-Za-z0-9_][A-Za-z0-9._+-]{0,12}"]
}

fn size_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (MIN_MEMORY_MAX..=MAX_MEMORY_MAX).prop_map(format_size),
        (1u64..=1024, prop::sample::select(&["M", "G"][..])).prop_map(|(n, u)| format!("{n}{u}")),
    ]
}

fn duration_text(min: Duration, max: Duration) -> impl Strategy<Value = String> {
    let (min, max) = (min.as_millis() as u64, max.as_millis() as u64);
    (min..=max).prop_map(|ms| format_duration(Duration::from_millis(ms)))
}

/// A wire spec every field of which is valid, full of characters systemd
/// and TOML treat specially where a field allows them.
fn valid_wire() -> impl Strategy<Value = v1::ExperimentSpec> {
    let env_name = "[A-Za-z_][A-Za-z0-9_]{0,10}".prop_filter("not reserved", |n| {
        !n.starts_with(RESERVED_ENV_PREFIX) && !SYSTEMD_ENV.contains(&n.as_str())
    });
    let top = (
        slug(),
        program(),
        prop::collection::vec(printable(), 0..6),
        prop_oneof![Just(String::new()), path()],
        prop::collection::hash_map(env_name, printable(), 0..5),
        prop::option::of(("[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}", any::<Vec<u8>>())),
        0..=MAX_PRIORITY as i32,
    );
    let resources = prop::option::of((
        prop_oneof![Just(String::new()), size_text()],
        prop_oneof![
            Just(String::new()),
            (1..=MAX_CPU_QUOTA_PERCENT).prop_map(|p| format!("{p}%"))
        ],
        any::<bool>(),
    ))
    .prop_map(|r| {
        r.map(|(memory_max, cpu_quota, gpu)| v1::Resources {
            memory_max,
            cpu_quota,
            gpu,
        })
    });
    let placement = prop::option::of((
        prop_oneof![Just(String::new()), slug()],
        prop::collection::hash_map("[a-z0-9][a-z0-9._/-]{0,10}", "[A-Za-z0-9._-]{0,10}", 0..4),
        prop_oneof![
            Just(String::new()),
            any::<u32>().prop_map(|n| n.to_string()),
            "[A-Za-z_-][A-Za-z0-9_-]{0,11}"
        ],
        prop::option::of(MIN_MAX_TEMP_C..=MAX_MAX_TEMP_C),
    ))
    .prop_map(|p| {
        p.map(|(node, labels, power_mode, max_temp_c)| v1::Placement {
            node,
            labels,
            power_mode,
            max_temp_c,
        })
    });
    let lifecycle = prop::option::of((
        prop_oneof![
            Just(String::new()),
            duration_text(MIN_MAX_RUNTIME, MAX_MAX_RUNTIME)
        ],
        prop::sample::select(&["", "on-failure", "never"][..]),
        prop::option::of(0..=MAX_MAX_RESTARTS),
        prop_oneof![
            Just(String::new()),
            duration_text(Duration::ZERO, MAX_RESTART_DELAY)
        ],
        prop_oneof![
            Just(String::new()),
            duration_text(MIN_STOP_TIMEOUT, MAX_STOP_TIMEOUT)
        ],
        prop::sample::select(&["", "requeue", "fail"][..]),
        any::<bool>(),
    ))
    .prop_map(|l| {
        l.map(
            |(max_runtime, restart, max_restarts, delay, stop, on_disruption, autostart)| {
                v1::Lifecycle {
                    max_runtime,
                    restart: restart.to_owned(),
                    max_restarts,
                    restart_delay: delay,
                    stop_timeout: stop,
                    on_disruption: on_disruption.to_owned(),
                    autostart,
                }
            },
        )
    });
    (top, resources, placement, lifecycle).prop_map(
        |(
            (id, program, args, working_dir, env, config, priority),
            resources,
            placement,
            lifecycle,
        )| {
            let mut command = vec![program];
            command.extend(args);
            let refers = command[1..]
                .iter()
                .any(|a| substitutions(a).any(|(_, n)| n == ENV_CONFIG));
            let (config_name, config_content) = match config {
                Some((name, content)) => (name, content),
                // A command using ${FLEET_CONFIG} needs a config file.
                None if refers => ("c.json".to_owned(), Vec::new()),
                None => (String::new(), Vec::new()),
            };
            v1::ExperimentSpec {
                id,
                command,
                working_dir,
                env,
                config_name,
                config_content,
                priority,
                resources,
                placement,
                lifecycle,
            }
        },
    )
}

/// A wire spec with any value in any field: mostly valid, often not.
fn any_wire() -> impl Strategy<Value = v1::ExperimentSpec> {
    let maybe = |valid: BoxedStrategy<String>| prop_oneof![3 => valid, 1 => hostile()].boxed();
    (
        valid_wire(),
        maybe(slug().boxed()),
        prop::collection::vec(maybe(printable().boxed()), 0..4),
        maybe(path().boxed()),
        prop::collection::hash_map(hostile(), hostile(), 0..3),
        (maybe(Just("c.json".to_owned()).boxed()), any::<bool>()),
        prop_oneof![0..=1000i32, any::<i32>()],
        (
            maybe(size_text().boxed()),
            maybe(Just("80%".to_owned()).boxed()),
        ),
        (
            maybe(slug().boxed()),
            prop::collection::hash_map(hostile(), hostile(), 0..3),
        ),
        (maybe(Just("MAXN".to_owned()).boxed()), any::<f64>()),
        (
            maybe(Just("5s".to_owned()).boxed()),
            maybe(Just("never".to_owned()).boxed()),
        ),
        any::<u32>(),
    )
        .prop_map(
            |(mut w, id, args, dir, env, config, priority, res, place, pm, life, n)| {
                // Each field is replaced with probability 1/2.
                let pick = |bit: u32| n & (1 << bit) != 0;
                if pick(0) {
                    w.id = id;
                }
                if pick(1) {
                    w.command.extend(args);
                }
                if pick(2) {
                    w.command.clear();
                }
                if pick(3) {
                    w.working_dir = dir;
                }
                if pick(4) {
                    w.env.extend(env);
                }
                if pick(5) {
                    w.config_name = config.0;
                    if config.1 {
                        w.config_content = b"x".to_vec();
                    }
                }
                if pick(6) {
                    w.priority = priority;
                }
                if pick(7) {
                    w.resources = Some(v1::Resources {
                        memory_max: res.0,
                        cpu_quota: res.1,
                        gpu: n & 1 != 0,
                    });
                }
                if pick(8) {
                    w.placement = Some(v1::Placement {
                        node: place.0,
                        labels: place.1,
                        power_mode: pm.0,
                        max_temp_c: Some(pm.1),
                    });
                }
                if pick(9) {
                    w.lifecycle = Some(v1::Lifecycle {
                        max_runtime: life.0.clone(),
                        restart: life.1,
                        max_restarts: Some(n),
                        restart_delay: life.0.clone(),
                        stop_timeout: life.0,
                        on_disruption: String::new(),
                        autostart: false,
                    });
                }
                w
            },
        )
}

/// The fields of a wire spec, as a problem's path starts.
const FIELDS: &[&str] = &[
    "id",
    "command",
    "working_dir",
    "env",
    "config_name",
    "config_content",
    "priority",
    "resources",
    "placement",
    "lifecycle",
];

/// One field set to a value its rule refuses, with the path a problem
/// must name.
#[derive(Debug, Clone)]
enum Corruption {
    Id(String),
    Program(String),
    Argument(String),
    WorkingDir(String),
    EnvName(String),
    EnvValue(String),
    ConfigName(String),
    Priority(i32),
    MemoryMax(String),
    CpuQuota(String),
    Node(String),
    LabelKey(String),
    LabelValue(String),
    PowerMode(String),
    MaxTemp(f64),
    MaxRuntime(String),
    Restart(String),
    MaxRestarts(u32),
    RestartDelay(String),
    StopTimeout(String),
    OnDisruption(String),
}

fn refused_by(check: impl Fn(&str) -> bool + 'static) -> impl Strategy<Value = String> {
    hostile().prop_filter("accepted", move |s| !check(s))
}

fn corruption() -> impl Strategy<Value = Corruption> {
    use Corruption as C;
    let bad_duration = prop_oneof![
        // Empty means "not given" on the wire.
        refused_by(|s| s.is_empty() || parse_duration(s).is_some()),
        Just("5".to_owned()),
        Just("1.5h".to_owned()),
        Just("1h1h".to_owned()),
    ];
    prop_oneof![
        refused_by(|s| ExperimentId::new(s).is_ok()).prop_map(C::Id),
        refused_by(|s| Command::new(vec![s.to_owned()]).is_ok()).prop_map(C::Program),
        (
            printable(),
            prop::sample::select(CONTROL_TOKENS),
            printable()
        )
            .prop_map(|(a, c, b)| C::Argument(format!("{a}{c}{b}"))),
        refused_by(|s| s.is_empty() || AbsolutePath::new(s).is_ok()).prop_map(C::WorkingDir),
        refused_by(|s| EnvName::new(s).is_ok()).prop_map(C::EnvName),
        (
            printable(),
            prop::sample::select(CONTROL_TOKENS),
            printable()
        )
            .prop_map(|(a, c, b)| C::EnvValue(format!("{a}{c}{b}"))),
        refused_by(|s| s.is_empty() || ConfigName::new(s).is_ok()).prop_map(C::ConfigName),
        prop_oneof![i32::MIN..0, MAX_PRIORITY as i32 + 1..=i32::MAX].prop_map(C::Priority),
        prop_oneof![
            refused_by(|s| s.is_empty() || parse_memory_max(s).is_ok()),
            (0..MIN_MEMORY_MAX).prop_map(|b| b.to_string()),
            (MAX_MEMORY_MAX + 1..=u64::MAX).prop_map(format_size),
            Just("1.5G".to_owned()),
        ]
        .prop_map(C::MemoryMax),
        prop_oneof![
            refused_by(|s| s.is_empty() || parse_cpu_quota(s).is_ok()),
            (MAX_CPU_QUOTA_PERCENT + 1..).prop_map(|p| format!("{p}%")),
        ]
        .prop_map(C::CpuQuota),
        refused_by(|s| s.is_empty() || NodeName::new(s).is_ok()).prop_map(C::Node),
        refused_by(|s| LabelKey::new(s).is_ok()).prop_map(C::LabelKey),
        refused_by(|s| LabelValue::new(s).is_ok()).prop_map(C::LabelValue),
        refused_by(|s| s.is_empty() || PowerMode::new(s).is_ok()).prop_map(C::PowerMode),
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            -1e300..-1e-9f64,
            MAX_MAX_TEMP_C + 1e-9..1e300,
        ]
        .prop_map(C::MaxTemp),
        prop_oneof![
            bad_duration.clone(),
            Just("0s".to_owned()),
            Just("999ms".to_owned()),
            Just("366d".to_owned()),
        ]
        .prop_map(C::MaxRuntime),
        refused_by(|s| RestartPolicy::parse(s).is_ok()).prop_map(C::Restart),
        (MAX_MAX_RESTARTS + 1..).prop_map(C::MaxRestarts),
        prop_oneof![bad_duration.clone(), Just("1h1ms".to_owned())].prop_map(C::RestartDelay),
        prop_oneof![
            bad_duration,
            Just("0s".to_owned()),
            Just("999ms".to_owned()),
            Just("1h1ms".to_owned())
        ]
        .prop_map(C::StopTimeout),
        refused_by(|s| DisruptionPolicy::parse(s).is_ok()).prop_map(C::OnDisruption),
    ]
}

impl Corruption {
    /// Applies the corruption; returns the path every problem must be at.
    fn apply(&self, w: &mut v1::ExperimentSpec) -> String {
        use Corruption as C;
        fn resources(w: &mut v1::ExperimentSpec) -> &mut v1::Resources {
            w.resources.get_or_insert_with(Default::default)
        }
        fn placement(w: &mut v1::ExperimentSpec) -> &mut v1::Placement {
            w.placement.get_or_insert_with(Default::default)
        }
        fn lifecycle(w: &mut v1::ExperimentSpec) -> &mut v1::Lifecycle {
            w.lifecycle.get_or_insert_with(Default::default)
        }
        match self {
            C::Id(s) => {
                w.id = s.clone();
                "id".into()
            }
            C::Program(s) => {
                w.command[0] = s.clone();
                "command[0]".into()
            }
            C::Argument(s) => {
                w.command.push(s.clone());
                format!("command[{}]", w.command.len() - 1)
            }
            C::WorkingDir(s) => {
                w.working_dir = s.clone();
                "working_dir".into()
            }
            C::EnvName(s) => {
                w.env.insert(s.clone(), "v".into());
                FieldPath::of(&["env"]).key(s).to_string()
            }
            C::EnvValue(s) => {
                w.env.insert("BAD_VALUE".into(), s.clone());
                "env.BAD_VALUE".into()
            }
            C::ConfigName(s) => {
                w.config_name = s.clone();
                "config_name".into()
            }
            C::Priority(p) => {
                w.priority = *p;
                "priority".into()
            }
            C::MemoryMax(s) => {
                resources(w).memory_max = s.clone();
                "resources.memory_max".into()
            }
            C::CpuQuota(s) => {
                resources(w).cpu_quota = s.clone();
                "resources.cpu_quota".into()
            }
            C::Node(s) => {
                placement(w).node = s.clone();
                "placement.node".into()
            }
            C::LabelKey(s) => {
                placement(w).labels.insert(s.clone(), "v".into());
                FieldPath::of(&["placement", "labels"]).key(s).to_string()
            }
            C::LabelValue(s) => {
                placement(w).labels.insert("bad".into(), s.clone());
                "placement.labels.bad".into()
            }
            C::PowerMode(s) => {
                placement(w).power_mode = s.clone();
                "placement.power_mode".into()
            }
            C::MaxTemp(t) => {
                placement(w).max_temp_c = Some(*t);
                "placement.max_temp_c".into()
            }
            C::MaxRuntime(s) => {
                lifecycle(w).max_runtime = s.clone();
                "lifecycle.max_runtime".into()
            }
            C::Restart(s) => {
                lifecycle(w).restart = s.clone();
                "lifecycle.restart".into()
            }
            C::MaxRestarts(n) => {
                lifecycle(w).max_restarts = Some(*n);
                "lifecycle.max_restarts".into()
            }
            C::RestartDelay(s) => {
                lifecycle(w).restart_delay = s.clone();
                "lifecycle.restart_delay".into()
            }
            C::StopTimeout(s) => {
                lifecycle(w).stop_timeout = s.clone();
                "lifecycle.stop_timeout".into()
            }
            C::OnDisruption(s) => {
                lifecycle(w).on_disruption = s.clone();
                "lifecycle.on_disruption".into()
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// Whatever arrives on the wire: no panic; accepted specs come back the
    /// same through the wire form; refused ones name a field for each
    /// problem.
    #[test]
    fn any_wire_spec_is_checked_without_panicking(wire in any_wire()) {
        match ExperimentSpec::try_from(&wire) {
            Ok(spec) => {
                let again = ExperimentSpec::try_from(&spec.to_proto());
                prop_assert_eq!(again.as_ref(), Ok(&spec));
            }
            Err(e) => {
                prop_assert!(!e.problems().is_empty());
                let text = e.to_string();
                for problem in e.problems() {
                    let Some(PathSegment::Key(first)) = problem.path().segments().first() else {
                        return Err(TestCaseError::fail(format!("{problem} names no field")));
                    };
                    prop_assert!(FIELDS.contains(&first.as_str()), "{}", problem);
                    prop_assert!(!problem.message().is_empty());
                    prop_assert!(text.contains(&problem.path().to_string()));
                }
            }
        }
    }

    /// A valid spec is accepted, and comes back the same (domain and wire
    /// forms) through `to_proto`.
    #[test]
    fn valid_specs_round_trip(wire in valid_wire()) {
        let spec = ExperimentSpec::try_from(&wire);
        prop_assert!(spec.is_ok(), "{:?}", spec);
        let spec = spec.unwrap();
        let proto = spec.to_proto();
        let back = ExperimentSpec::try_from(&proto);
        prop_assert_eq!(back.as_ref(), Ok(&spec));
        prop_assert_eq!(back.unwrap().to_proto(), proto);
    }

    /// One bad field in a valid spec is refused, with every problem at that
    /// field.
    #[test]
    fn one_bad_field_is_refused_by_name(wire in valid_wire(), bad in corruption()) {
        let mut wire = wire;
        let at = bad.apply(&mut wire);
        let problems = match ExperimentSpec::try_from(&wire) {
            Ok(spec) => return Err(TestCaseError::fail(format!("accepted: {spec:?}"))),
            Err(e) => e.problems().to_vec(),
        };
        for problem in &problems {
            prop_assert_eq!(problem.path().to_string(), at.clone(), "{}", problem);
        }
    }

    /// Every size in range prints and parses back to itself; the unit
    /// forms give what they say.
    #[test]
    fn sizes_round_trip(
        bytes in MIN_MEMORY_MAX..=MAX_MEMORY_MAX,
        n in 0u64..=20_000_000,
        unit in prop::sample::select(&[("", 1u64), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)][..]),
    ) {
        prop_assert_eq!(parse_memory_max(&format_size(bytes)), Ok(bytes));
        let text = format!("{n}{}", unit.0);
        let want = n.checked_mul(unit.1).filter(|b| (MIN_MEMORY_MAX..=MAX_MEMORY_MAX).contains(b));
        prop_assert_eq!(parse_memory_max(&text).ok(), want, "{}", text);
    }

    /// A size out of range is refused however it is written.
    #[test]
    fn sizes_out_of_range_are_refused(
        bytes in prop_oneof![0..MIN_MEMORY_MAX, MAX_MEMORY_MAX + 1..=u64::MAX],
    ) {
        prop_assert!(parse_memory_max(&format_size(bytes)).is_err());
        prop_assert!(parse_memory_max(&bytes.to_string()).is_err());
    }

    /// Any text: no panic, and what is accepted is whole digits with at
    /// most one unit, in range, printing back to the same size.
    #[test]
    fn size_text_is_parsed_strictly(
        s in prop_oneof![
            tokens(&["0", "1", "5", "9", "K", "M", "G", "T", "P", "k", ".", "-", "+", " ", "B", "i", "x", "%", "é"], 12),
            hostile(),
            "[0-9]{1,25}[KMGT]?",
        ],
    ) {
        if let Ok(bytes) = parse_memory_max(&s) {
            let digits = s.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(&s);
            prop_assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{:?}", s);
            prop_assert!((MIN_MEMORY_MAX..=MAX_MEMORY_MAX).contains(&bytes));
            prop_assert_eq!(parse_memory_max(&format_size(bytes)), Ok(bytes));
        }
    }

    /// CPU quotas in range round-trip; any other text is refused without
    /// a panic.
    #[test]
    fn cpu_quotas_round_trip(p in 1..=MAX_CPU_QUOTA_PERCENT, s in hostile()) {
        prop_assert_eq!(parse_cpu_quota(&format!("{p}%")), Ok(p));
        if let Ok(q) = parse_cpu_quota(&s) {
            prop_assert_eq!(s, format!("{q}%"));
        }
    }

    /// Every whole number of milliseconds prints and parses back to
    /// itself; below a millisecond is dropped.
    #[test]
    fn durations_round_trip(ms in any::<u64>(), nanos in 0u32..1_000_000) {
        let d = Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(d)), Some(d));
        prop_assert_eq!(parse_duration(&format_duration(d + Duration::from_nanos(nanos.into()))), Some(d));
    }

    /// A duration written in parts, largest first, is their sum.
    #[test]
    fn duration_parts_add_up(
        parts in prop::collection::vec(0u64..1_000_000, 5),
        present in prop::collection::vec(any::<bool>(), 5),
    ) {
        let units = [("d", 86_400_000u64), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)];
        let mut text = String::new();
        let mut total = 0u64;
        for ((n, on), (unit, ms)) in parts.iter().zip(&present).zip(units) {
            if *on {
                text.push_str(&format!("{n}{unit}"));
                total += n * ms;
            }
        }
        let want = (!text.is_empty()).then(|| Duration::from_millis(total));
        prop_assert_eq!(parse_duration(&text), want, "{}", text);
    }

    /// Any text: no panic, and what is accepted prints back to a text that
    /// parses to the same duration.
    #[test]
    fn duration_text_is_parsed_strictly(
        s in prop_oneof![
            tokens(&["0", "1", "5", "9", "99999999999", "d", "h", "m", "s", "ms", "min", "us", "w", ".", "-", " ", "S", "é"], 10),
            hostile(),
        ],
    ) {
        if let Some(d) = parse_duration(&s) {
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()), "{:?}", s);
            prop_assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
    }
}

/// The TOML text of a wire spec, as a person would write it: the config
/// file named by its file name.
fn to_toml(w: &v1::ExperimentSpec) -> String {
    use toml::{Table, Value};
    let s = |v: &str| Value::String(v.to_owned());
    let mut top = Table::new();
    top.insert("id".into(), s(&w.id));
    top.insert(
        "command".into(),
        Value::Array(w.command.iter().map(|a| s(a)).collect()),
    );
    if !w.working_dir.is_empty() {
        top.insert("working_dir".into(), s(&w.working_dir));
    }
    let strings = |m: &HashMap<String, String>| -> Value {
        Value::Table(m.iter().map(|(k, v)| (k.clone(), s(v))).collect())
    };
    if !w.env.is_empty() {
        top.insert("env".into(), strings(&w.env));
    }
    if !w.config_name.is_empty() {
        top.insert("config_file".into(), s(&w.config_name));
    }
    top.insert("priority".into(), Value::Integer(w.priority.into()));
    if let Some(r) = &w.resources {
        let mut t = Table::new();
        if !r.memory_max.is_empty() {
            t.insert("memory_max".into(), s(&r.memory_max));
        }
        if !r.cpu_quota.is_empty() {
            t.insert("cpu_quota".into(), s(&r.cpu_quota));
        }
        t.insert("gpu".into(), Value::Boolean(r.gpu));
        top.insert("resources".into(), Value::Table(t));
    }
    if let Some(p) = &w.placement {
        let mut t = Table::new();
        if !p.node.is_empty() {
            t.insert("node".into(), s(&p.node));
        }
        t.insert("labels".into(), strings(&p.labels));
        if !p.power_mode.is_empty() {
            t.insert("power_mode".into(), s(&p.power_mode));
        }
        if let Some(c) = p.max_temp_c {
            t.insert("max_temp_c".into(), Value::Float(c));
        }
        top.insert("placement".into(), Value::Table(t));
    }
    if let Some(l) = &w.lifecycle {
        let mut t = Table::new();
        for (key, value) in [
            ("max_runtime", &l.max_runtime),
            ("restart", &l.restart),
            ("restart_delay", &l.restart_delay),
            ("stop_timeout", &l.stop_timeout),
            ("on_disruption", &l.on_disruption),
        ] {
            if !value.is_empty() {
                t.insert(key.into(), s(value));
            }
        }
        if let Some(n) = l.max_restarts {
            t.insert("max_restarts".into(), Value::Integer(n.into()));
        }
        t.insert("autostart".into(), Value::Boolean(l.autostart));
        top.insert("lifecycle".into(), Value::Table(t));
    }
    toml::to_string(&top).expect("a table prints")
}

/// Reads `spec_from_toml`'s config file: the spec's content under its name.
fn reader(w: &v1::ExperimentSpec) -> impl FnOnce(&std::path::Path) -> std::io::Result<Vec<u8>> {
    let (name, content) = (w.config_name.clone(), w.config_content.clone());
    move |path| {
        if path == std::path::Path::new(&name) {
            Ok(content)
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file",
            ))
        }
    }
}

/// Checks that every problem of a file says where it is, within the text.
fn assert_placed(text: &str, err: &file::SpecFileError) -> Result<(), TestCaseError> {
    prop_assert!(!err.problems().is_empty());
    let lines = text.split('\n').count();
    for problem in err.problems() {
        let Some((line, column)) = problem.line_column() else {
            return Err(TestCaseError::fail(format!(
                "no line and column in {problem} for {text:?}"
            )));
        };
        prop_assert!((1..=lines).contains(&line), "{} in {:?}", problem, text);
        prop_assert!(column >= 1);
        let place = format!("{line}:{column}: ");
        prop_assert!(problem.to_string().starts_with(&place), "{}", problem);
    }
    Ok(())
}

/// Pieces of TOML, right and wrong, for documents nobody would write.
const TOML_TOKENS: &[&str] = &[
    "id",
    "command",
    "working_dir",
    "env",
    "config_file",
    "priority",
    "[resources]",
    "[placement]",
    "[lifecycle]",
    "[env]",
    "[[command]]",
    "memory_max",
    "cpu_quota",
    "gpu",
    "node",
    "labels",
    "power_mode",
    "max_temp_c",
    "max_runtime",
    "restart",
    "max_restarts",
    "restart_delay",
    "stop_timeout",
    "on_disruption",
    "autostart",
    "resources.gpu",
    " = ",
    "=",
    "\n",
    "\r\n",
    " ",
    "\t",
    "\"",
    "'",
    "\"\"\"",
    "'''",
    "[",
    "]",
    "{",
    "}",
    ",",
    ".",
    "#",
    "\\",
    "\\u{0}",
    "\\x",
    "0",
    "1",
    "-1",
    "3.5",
    "1e400",
    "nan",
    "inf",
    "true",
    "false",
    "\"8G\"",
    "\"5s\"",
    "[\"/bin/true\"]",
    "\"a\"",
    "1979-05-27",
    "é",
    "\u{0}",
    "\u{feff}",
    "\u{1b}",
];

/// A valid spec's TOML with a few random edits.
fn mutated_toml() -> impl Strategy<Value = String> {
    (
        valid_wire(),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                0usize..4,
                prop::sample::select(TOML_TOKENS),
            ),
            1..4,
        ),
    )
        .prop_map(|(w, edits)| {
            let mut text = to_toml(&w);
            for (at, removed, inserted) in edits {
                let mut i = at.index(text.len() + 1);
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                let mut end = (i + removed).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(i..end, inserted);
            }
            text
        })
}

/// One bad value in a valid spec's file, with its field's key in TOML and
/// the bad value as TOML writes it.
fn file_corruption() -> impl Strategy<Value = (&'static str, &'static str, String)> {
    prop_oneof![
        refused_by(|s| ExperimentId::new(s).is_ok()).prop_map(|s| ("", "id", s)),
        refused_by(|s| s.is_empty() || AbsolutePath::new(s).is_ok()).prop_map(|s| (
            "",
            "working_dir",
            s
        )),
        refused_by(|s| s.is_empty() || parse_memory_max(s).is_ok()).prop_map(|s| (
            "resources",
            "memory_max",
            s
        )),
        refused_by(|s| s.is_empty() || parse_cpu_quota(s).is_ok()).prop_map(|s| (
            "resources",
            "cpu_quota",
            s
        )),
        refused_by(|s| s.is_empty() || NodeName::new(s).is_ok()).prop_map(|s| (
            "placement",
            "node",
            s
        )),
        refused_by(|s| s.is_empty() || PowerMode::new(s).is_ok()).prop_map(|s| (
            "placement",
            "power_mode",
            s
        )),
        refused_by(|s| s.is_empty() || parse_duration(s).is_some()).prop_map(|s| (
            "lifecycle",
            "stop_timeout",
            s
        )),
        refused_by(|s| RestartPolicy::parse(s).is_ok()).prop_map(|s| ("lifecycle", "restart", s)),
    ]
}

/// The 1-based line of `key` in `table` ("" for the top level) in a file
/// `toml::to_string` wrote.
fn line_of(text: &str, table: &str, key: &str) -> usize {
    let mut current = "";
    for (i, line) in text.lines().enumerate() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name;
        } else if current == table && line.starts_with(&format!("{key} = ")) {
            return i + 1;
        }
    }
    panic!("{table}.{key} not in {text}")
}

proptest! {
    #![proptest_config(config())]

    /// Any text: no panic, and every problem has a line and column in the
    /// text.
    #[test]
    fn any_toml_text_is_read_without_panicking(
        text in prop_oneof![tokens(TOML_TOKENS, 24), any::<String>()],
    ) {
        let _ = SpecFile::from_toml(&text);
        if let Err(e) = spec_from_toml(&text, |_| Ok(Vec::new())) {
            assert_placed(&text, &e)?;
        }
    }

    /// A valid spec's file with random edits: no panic, and every problem
    /// has a line and column in the text.
    #[test]
    fn edited_toml_is_read_without_panicking(text in mutated_toml()) {
        if let Err(e) = spec_from_toml(&text, |_| Ok(Vec::new())) {
            assert_placed(&text, &e)?;
        }
    }

    /// A valid spec written as a file reads back as the same spec.
    #[test]
    fn valid_specs_round_trip_through_the_file(wire in valid_wire()) {
        let text = to_toml(&wire);
        let read = spec_from_toml(&text, reader(&wire));
        prop_assert!(read.is_ok(), "{:?} in\n{}", read, text);
        let read = read.unwrap();
        prop_assert_eq!(
            ExperimentSpec::try_from(&read),
            ExperimentSpec::try_from(&wire),
            "{}", text
        );
    }

    /// One bad value in a file is refused at its key's line, naming it.
    #[test]
    fn a_bad_value_in_a_file_is_placed(wire in valid_wire(), bad in file_corruption()) {
        let (table, key, value) = bad;
        let mut doc: toml::Table = toml::from_str(&to_toml(&wire)).unwrap();
        let target = if table.is_empty() {
            &mut doc
        } else {
            doc.entry(table)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap()
        };
        target.insert(key.to_owned(), toml::Value::String(value));
        let text = toml::to_string(&doc).unwrap();
        let err = match spec_from_toml(&text, reader(&wire)) {
            Ok(spec) => return Err(TestCaseError::fail(format!("accepted {spec:?}"))),
            Err(e) => e,
        };
        assert_placed(&text, &err)?;
        let field = if table.is_empty() { key.to_owned() } else { format!("{table}.{key}") };
        let line = line_of(&text, table, key);
        prop_assert_eq!(err.problems().len(), 1, "{}", err);
        let problem = &err.problems()[0];
        prop_assert_eq!(problem.field(), Some(field.as_str()), "{}", err);
        prop_assert_eq!(problem.line_column().map(|(l, _)| l), Some(line), "{}\n{}", err, text);
    }
}
