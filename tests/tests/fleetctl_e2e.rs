//! Snapshot tests of the real `fleetctl` against a real testbed fleet: a
//! controller with two simulated boards and their agents, mTLS certificates
//! made for the run, and every command fleetctl has with a controller, in
//! its human form and as `--output json`, errors and exit codes included.
//!
//! Each run is compared with `tests/snapshots/fleetctl/<name>.txt` after
//! what varies from run to run is redacted (times, ages, durations, ports,
//! paths, temperatures, loads and memory figures, PIDs, event sequence
//! numbers, scores). `FLEET_BLESS=1` rewrites the files instead; review
//! every change before committing it.
//!
//! Experiments are pinned to a board, so every placement is decided by
//! the spec and not by the boards' temperatures; the test waits for each
//! state it snapshots with a deadline, never for a guessed time.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_proto::identity::Role;
use fleet_proto::v1::{self, controller_client::ControllerClient, ExperimentPhase};
use fleet_testbed::agent::{workspace_bin, AgentHandle, AgentOptions};
use fleet_testbed::controller::{
    wait_experiment, wait_nodes_connected, ControllerHandle, ControllerOptions,
};
use fleet_testbed::hwsim::{Fixture, HwSim, ThermalParams};
use fleet_testbed::pki::TestPki;
use fleet_testbed::testbed::{Board, Testbed};
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(60);
/// The width every table is laid out for.
const COLUMNS: &str = "160";

// ---------------------------------------------------------------------------
// The fleet

struct Fleet {
    bed: Testbed,
    _boards: Vec<Board>,
    _sims: Vec<HwSim>,
    agents: Vec<AgentHandle>,
    ctl: ControllerHandle,
    admin: ControllerClient<Channel>,
    /// fleetctl's home: its config file with an admin and a viewer context,
    /// and the spec files.
    home: PathBuf,
    /// Literal text to replace before the pattern rules, longest first.
    literals: Vec<(String, String)>,
    snapshots: Snapshots,
}

async fn fleet(name: &str, net: u8) -> Fleet {
    let mut bed = Testbed::new(name).await;
    let names: Vec<String> = (0..2).map(|i| format!("{name}-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let boards = bed.add_boards(&refs).await.expect("boards");
    let pki = TestPki::new(&bed.dir().join("pki")).expect("pki");
    let mut sims = Vec::new();
    let mut agents = Vec::new();
    for (i, b) in boards.iter().enumerate() {
        let sim = HwSim::install(b, Fixture::AgxOrinR36, ThermalParams::bounded(40.0, 60.0))
            .expect("hwsim");
        // The first board has jetson_clocks, the second none: its agent
        // refuses to switch them.
        if i == 0 {
            assert!(sim.install_jetson_clocks().expect("jetson_clocks"));
        }
        let options = AgentOptions {
            hardware: Some(sim.clone()),
            sampling_ms: Some(200),
            ..Default::default()
        };
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, net, i as u8 + 1));
        agents.push(
            AgentHandle::start_with(b, &pki, ip, options)
                .await
                .expect("agent"),
        );
        sims.push(sim);
    }
    let opts = ControllerOptions {
        labels: vec![
            (
                names[0].clone(),
                vec![
                    ("model".into(), "agx-orin".into()),
                    ("rack".into(), "a".into()),
                ],
            ),
            (
                names[1].clone(),
                vec![
                    ("model".into(), "agx-orin".into()),
                    ("rack".into(), "b".into()),
                ],
            ),
        ],
        ..Default::default()
    };
    let refs: Vec<&AgentHandle> = agents.iter().collect();
    let ctl = ControllerHandle::start(
        &bed.dir().join("controller"),
        &pki,
        IpAddr::V4(Ipv4Addr::new(127, 0, net, 100)),
        &refs,
        &opts,
    )
    .await
    .expect("controller");
    let admin = ctl.client(&pki, Role::Admin).await.expect("admin");

    let home = bed.dir().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let admin_certs = pki.user("ada", Role::Admin).unwrap();
    let viewer_certs = pki.user("vic", Role::Viewer).unwrap();
    let context = |name: &str, c: &fleet_testbed::pki::CertFiles| {
        format!(
            "[contexts.{name}]\ncontroller = \"{}\"\nca = {:?}\ncert = {:?}\nkey = {:?}\n\n",
            ctl.addr, c.ca, c.cert, c.key
        )
    };
    std::fs::write(
        home.join("fleetctl.toml"),
        format!(
            "current_context = \"admin\"\n\n{}{}",
            context("admin", &admin_certs),
            context("viewer", &viewer_certs)
        ),
    )
    .unwrap();

    let mut literals = vec![
        (ctl.addr.to_string(), "<controller>".to_owned()),
        (home.display().to_string(), "<home>".to_owned()),
        (bed.dir().display().to_string(), "<testbed>".to_owned()),
    ];
    for a in &agents {
        literals.push((a.addr.to_string(), format!("<agent of {}>", a.node)));
    }
    literals.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let f = Fleet {
        bed,
        _boards: boards,
        _sims: sims,
        agents,
        ctl,
        admin,
        home,
        literals,
        snapshots: Snapshots::new("fleetctl"),
    };
    f.wait_connected().await;
    f
}

impl Fleet {
    fn node(&self, i: usize) -> String {
        self.agents[i].node.clone()
    }

    async fn wait_connected(&self) {
        wait_nodes_connected(&self.admin, self.agents.len(), DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    async fn wait(
        &self,
        id: &str,
        what: &str,
        ok: impl Fn(&v1::Experiment) -> bool,
    ) -> v1::Experiment {
        wait_experiment(&self.admin, id, what, DEADLINE, ok)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    async fn wait_phase(&self, id: &str, phase: ExperimentPhase) -> v1::Experiment {
        self.wait(id, &format!("{id} to be {phase:?}"), |e| e.phase() == phase)
            .await
    }

    /// The last event's sequence number.
    async fn last_seq(&self) -> u64 {
        let mut stream = self
            .admin
            .clone()
            .watch_events(v1::WatchEventsRequest {
                from_seq: Some(1),
                filter: None,
                replay_only: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut last = 0;
        while let Some(e) = stream.message().await.unwrap() {
            last = e.seq;
        }
        last
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.home.join(name), text).unwrap();
    }

    /// Runs `fleetctl ARGS` in fleetctl's home with nothing of the caller's
    /// environment that could change its output.
    async fn run(&self, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new(workspace_bin("fleetctl"));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("FLEET_") {
                cmd.env_remove(&key);
            }
        }
        let out = cmd
            .args(args)
            .env("HOME", &self.home)
            .env("FLEET_CONFIG_FILE", self.home.join("fleetctl.toml"))
            .env_remove("XDG_CONFIG_HOME")
            .env("COLUMNS", COLUMNS)
            .env("NO_COLOR", "1")
            .env("TZ", "UTC")
            .current_dir(&self.home)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run fleetctl");
        Run {
            args: args.iter().map(|a| a.to_string()).collect(),
            code: out.status.code().expect("exited, not killed"),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
        }
    }

    /// Runs the command, checks its exit code and compares what it printed
    /// with the snapshot `name`.
    #[track_caller]
    fn check(&self, name: &str, run: &Run, code: i32) {
        assert_eq!(
            run.code,
            code,
            "fleetctl {}: exit code\nstdout:\n{}\nstderr:\n{}",
            run.args.join(" "),
            run.stdout,
            run.stderr
        );
        let json = run.args.windows(2).any(|w| w == ["-o", "json"]);
        let shown: Vec<String> = run
            .args
            .iter()
            .enumerate()
            .map(|(i, a)| {
                // A sequence number depends on how many events came before.
                if i > 0 && run.args[i - 1] == "--since" && a.parse::<u64>().is_ok() {
                    "<seq>".to_owned()
                } else if a.contains(' ') {
                    format!("'{a}'")
                } else {
                    a.clone()
                }
            })
            .collect();
        let text = format!(
            "$ fleetctl {}\nexit: {}\n--- stdout\n{}--- stderr\n{}",
            redact_text(&shown.join(" "), &self.literals).trim_end(),
            run.code,
            if json {
                redact_json(&run.stdout, &self.literals)
            } else {
                redact_text(&run.stdout, &self.literals)
            },
            redact_text(&run.stderr, &self.literals),
        );
        self.snapshots.check(name, &text);
    }

    /// `fleetctl ARGS`, expecting `code`, against the snapshot `name`.
    async fn snap(&self, name: &str, args: &[&str], code: i32) -> Run {
        let run = self.run(args).await;
        self.check(name, &run, code);
        run
    }

    async fn finish(self) {
        let Fleet {
            bed,
            agents,
            ctl,
            snapshots,
            ..
        } = self;
        drop(ctl);
        drop(agents);
        bed.shutdown().await.expect("teardown");
        snapshots.finish();
    }
}

struct Run {
    args: Vec<String>,
    code: i32,
    stdout: String,
    stderr: String,
}

// ---------------------------------------------------------------------------
// Snapshots

/// Expected outputs in `tests/snapshots/<dir>/`, compared or (with
/// `FLEET_BLESS=1`) rewritten; every mismatch is reported at the end, so
/// one run shows them all.
struct Snapshots {
    dir: PathBuf,
    bless: bool,
    seen: std::sync::Mutex<Vec<String>>,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Snapshots {
    fn new(dir: &str) -> Self {
        Snapshots {
            dir: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/snapshots")
                .join(dir),
            bless: std::env::var_os("FLEET_BLESS").is_some(),
            seen: Default::default(),
            failures: Default::default(),
        }
    }

    fn check(&self, name: &str, actual: &str) {
        let mut seen = self.seen.lock().unwrap();
        assert!(
            !seen.iter().any(|s| s == name),
            "snapshot {name} is taken twice"
        );
        seen.push(name.to_owned());
        let path = self.dir.join(format!("{name}.txt"));
        let expected = std::fs::read_to_string(&path).ok();
        if expected.as_deref() == Some(actual) {
            return;
        }
        if self.bless {
            std::fs::create_dir_all(&self.dir).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let diff = match &expected {
            None => format!("snapshot {name} is missing; it would be:\n{actual}"),
            Some(expected) => format!("snapshot {name} differs:\n{}", line_diff(expected, actual)),
        };
        self.failures.lock().unwrap().push(diff);
    }

    fn finish(self) {
        let failures = self.failures.into_inner().unwrap();
        assert!(
            failures.is_empty(),
            "{}\n\n{} snapshot(s) differ; if the new output is right, run again with \
             FLEET_BLESS=1 and review the changes to tests/snapshots/",
            failures.join("\n\n"),
            failures.len()
        );
    }
}

/// The lines of `expected` and `actual` that differ, marked `-` and `+`.
fn line_diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => out.push_str(&format!("  {x}\n")),
            (x, y) => {
                if let Some(x) = x {
                    out.push_str(&format!("- {x}\n"));
                }
                if let Some(y) = y {
                    out.push_str(&format!("+ {y}\n"));
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Redaction

/// Human output with what varies replaced by `<...>` placeholders, and
/// tables laid out again for the placeholders' widths.
fn redact_text(text: &str, literals: &[(String, String)]) -> String {
    let mut text = text.to_owned();
    for (from, to) in literals {
        text = text.replace(from.as_str(), to);
    }
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut out = String::new();
    for line in redact_lines(lines) {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `key:  value` lines whose value varies from run to run.
const VARYING_KEYS: &[&str] = &[
    "pid",
    "invocation",
    "cpu cores",
    "agent",
    "load",
    "cpu",
    "gpu load",
    "power",
    "fan",
];

fn redact_key_value(line: &str) -> Option<String> {
    let (key, value) = line.split_once(':')?;
    let k = key.trim();
    if !VARYING_KEYS.contains(&k) || !value.starts_with("  ") && !value.starts_with(" ") {
        return None;
    }
    let v = value.trim();
    if v == "unknown" || v == "-" {
        return None;
    }
    let pad = &value[..value.len() - value.trim_start().len()];
    Some(format!("{key}:{pad}<{}>", k.replace(' ', "_")))
}

/// Columns whose every cell varies from run to run.
const VARYING_COLUMNS: &[&str] = &[
    "SEQ",
    "TIME",
    "AGE",
    "SUBMITTED",
    "UPDATED",
    "STARTED",
    "ENDED",
    "LASTED",
    "LAST SEEN",
    "LOAD",
    "MEMORY",
    "SCORE",
    "PID",
    "PEAK",
    "UPTIME",
];

/// A table's header: two cells or more, in capitals, two spaces apart.
fn is_header(line: &str) -> bool {
    let cells: Vec<&str> = line
        .trim()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    cells.len() >= 2
        && cells.iter().all(|c| {
            c.chars().any(|ch| ch.is_ascii_uppercase()) && !c.chars().any(char::is_lowercase)
        })
}

/// The cells of a table's lines, found by its gutters: runs of two or
/// more columns of text where every line has a space.
fn table_cells(lines: &[String]) -> Vec<Vec<String>> {
    let rows: Vec<Vec<char>> = lines.iter().map(|l| l.chars().collect()).collect();
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let blank = |c: usize| rows.iter().all(|r| r.get(c).is_none_or(|ch| *ch == ' '));
    // Column spans [start, end) between gutters.
    let mut spans = Vec::new();
    let mut c = 0;
    while c < width {
        if blank(c) {
            c += 1;
            continue;
        }
        let start = c;
        loop {
            while c < width && !blank(c) {
                c += 1;
            }
            // A single blank column inside a cell ("normal 51.0 °C").
            if c + 1 < width && blank(c) && !blank(c + 1) {
                c += 1;
                continue;
            }
            break;
        }
        spans.push((start, c));
    }
    rows.iter()
        .map(|r| {
            spans
                .iter()
                .map(|&(a, b)| {
                    r.get(a..b.min(r.len()))
                        .unwrap_or_default()
                        .iter()
                        .collect::<String>()
                        .trim()
                        .to_owned()
                })
                .collect()
        })
        .collect()
}

/// Redacts each line; finds each table (a header row of capitals, then
/// rows up to a blank line) in the text as printed, redacts its cells
/// (a varying column's whole) and lays it out again with two spaces
/// between left-aligned columns, so a placeholder's width does not move
/// the columns after it.
fn redact_lines(lines: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if !is_header(&lines[i]) {
            out.push(redact_key_value(&lines[i]).unwrap_or_else(|| redact_line(&lines[i])));
            i += 1;
            continue;
        }
        let indent: String = lines[i].chars().take_while(|c| *c == ' ').collect();
        let mut j = i + 1;
        while j < lines.len() && !lines[j].trim().is_empty() && lines[j].starts_with(&indent) {
            j += 1;
        }
        let mut rows = table_cells(&lines[i..j]);
        let header = rows[0].clone();
        for row in rows.iter_mut().skip(1) {
            for (c, cell) in row.iter_mut().enumerate() {
                if VARYING_COLUMNS.contains(&header[c].as_str()) && !cell.is_empty() && cell != "-"
                {
                    *cell = format!("<{}>", header[c].to_lowercase().replace(' ', "_"));
                } else {
                    *cell = redact_line(cell);
                }
            }
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let mut line = indent.clone();
            for (c, cell) in row.iter().enumerate() {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
            out.push(line.trim_end().to_owned());
        }
        i = j;
    }
    out
}

/// Token rules for one line of text.
fn redact_line(line: &str) -> String {
    let mut s = redact_times(line);
    s = redact_ages(&s);
    s = redact_temperatures(&s);
    for unit in [" GiB", " MiB", " KiB"] {
        s = redact_units(&s, unit, "<mem>");
    }
    // Scores and their terms: "score 0.57", "temperature 0.40×0.40".
    s = redact_after(&s, "score ", "<score>");
    s = redact_units(&s, "×", "<v>×");
    s
}

/// `51.3 °C` → `<temp>`, except the thresholds of a board's guard and
/// the policy's margin, which are settings.
fn redact_temperatures(s: &str) -> String {
    const SETTINGS: [&str; 4] = ["warn ", "critical ", "margin ", "max "];
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find(" °C") {
        let before = &rest[..pos];
        let num_start = before
            .rfind(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .map_or(0, |p| p + before[p..].chars().next().unwrap().len_utf8());
        let lead = before[..num_start].trim_end();
        let setting = SETTINGS
            .iter()
            .any(|w| lead.ends_with(w.trim_end()) || lead.ends_with(&format!("{}:", w.trim_end())));
        if num_start < pos && !setting {
            out.push_str(&before[..num_start]);
            out.push_str("<temp>");
        } else {
            out.push_str(before);
            out.push_str(" °C");
        }
        rest = &rest[pos + " °C".len()..];
    }
    out.push_str(rest);
    out
}

/// The number after each `prefix` → `placeholder`.
fn redact_after(s: &str, prefix: &str, placeholder: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find(prefix) {
        out.push_str(&rest[..pos + prefix.len()]);
        rest = &rest[pos + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if end > 0 {
            out.push_str(placeholder);
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

fn digits_at(b: &[u8], i: usize, n: usize) -> bool {
    i + n <= b.len() && b[i..i + n].iter().all(u8::is_ascii_digit)
}

/// `2025-06-01T12:03:22.123456Z`, `2025-06-01 12:03:22` → `<time>`.
fn redact_times(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let date = digits_at(b, i, 4)
            && b.get(i + 4) == Some(&b'-')
            && digits_at(b, i + 5, 2)
            && b.get(i + 7) == Some(&b'-')
            && digits_at(b, i + 8, 2)
            && matches!(b.get(i + 10), Some(b'T' | b' '))
            && digits_at(b, i + 11, 2)
            && b.get(i + 13) == Some(&b':')
            && digits_at(b, i + 14, 2)
            && b.get(i + 16) == Some(&b':')
            && digits_at(b, i + 17, 2);
        if date {
            let mut j = i + 19;
            if b.get(j) == Some(&b'.') {
                j += 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
            }
            if b.get(j) == Some(&b'Z') {
                j += 1;
            } else if matches!(b.get(j), Some(b'+' | b'-')) && digits_at(b, j + 1, 2) {
                j += 6.min(b.len() - j);
            }
            out.push_str("<time>");
            i = j;
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// A duration word as fleetctl prints it: `45s`, `12m`, `300ms`, `2d`.
fn is_duration_word(w: &str) -> bool {
    let unit_start = w.find(|c: char| !c.is_ascii_digit()).unwrap_or(w.len());
    unit_start > 0 && matches!(&w[unit_start..], "ms" | "s" | "m" | "h" | "d")
}

/// `3h 12m ago`, `(5s ago)`, `in 5s` → `<age>`; `for 1m 5s`, `ran 45s`
/// → `<duration>`.
fn redact_ages(s: &str) -> String {
    const TRAIL: [char; 3] = [',', ')', ';'];
    let words: Vec<&str> = s.split(' ').collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let lead_len = words[i].len() - words[i].trim_start_matches('(').len();
        let (lead, word) = words[i].split_at(lead_len);
        let w = word.trim_end_matches(TRAIL);
        if is_duration_word(w) {
            // One or two duration words, then maybe "ago".
            let mut j = i + 1;
            let mut tail = word[w.len()..].to_owned();
            if tail.is_empty() && j < words.len() {
                let w2 = words[j].trim_end_matches(TRAIL);
                if is_duration_word(w2) {
                    tail = words[j][w2.len()..].to_owned();
                    j += 1;
                }
            }
            let ago =
                tail.is_empty() && words.get(j).map(|w| w.trim_end_matches(TRAIL)) == Some("ago");
            if ago {
                out.push(format!("{lead}<age>{}", &words[j]["ago".len()..]));
                i = j + 1;
                continue;
            }
            if lead.is_empty() && out.last().is_some_and(|p| p == "in") {
                out.pop();
                out.push(format!("<age>{tail}"));
                i = j;
                continue;
            }
            let before = out.last().map(String::as_str);
            if lead.is_empty()
                && matches!(
                    before,
                    Some("for" | "ran" | "up" | "after" | "within" | "uptime")
                )
            {
                out.push(format!("<duration>{tail}"));
                i = j;
                continue;
            }
        }
        out.push(words[i].to_owned());
        i += 1;
    }
    out.join(" ")
}

/// `51.3 °C` → `<temp>`: the number before `unit`.
fn redact_units(s: &str, unit: &str, placeholder: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find(unit) {
        let before = &rest[..pos];
        let num_start = before
            .rfind(|c: char| !(c.is_ascii_digit() || c == '.' || c == '/'))
            .map_or(0, |p| p + before[p..].chars().next().unwrap().len_utf8());
        if num_start < pos {
            out.push_str(&before[..num_start]);
            out.push_str(placeholder);
        } else {
            out.push_str(before);
            out.push_str(unit);
        }
        rest = &rest[pos + unit.len()..];
        if num_start < pos {
            continue;
        }
    }
    out.push_str(rest);
    out
}

/// Keys of JSON output whose values vary from run to run.
fn varying_key(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "seq",
        "event_seq",
        "pid",
        "main_pid",
        "invocation_id",
        "cursor",
        "score",
        "value",
        "load1",
        "load5",
        "load15",
        "cpu_percent",
        "gpu_percent",
        "hottest_c",
        "celsius",
        "peak_temp_c",
        "memory_used",
        "memory_available",
        "memory_total",
        "memory_current",
        "memory_peak",
        "cpu_usage_ns",
        "uptime_s",
        "watts",
        "rpm",
        "pwm",
        "revision",
        "address",
        "agent_version",
        "cpu_cores",
        "memory_total_bytes",
        "memory_available_bytes",
        "memory_used_bytes",
        "memory_current_bytes",
        "memory_peak_bytes",
        // The template's default limit is a share of the machine's memory.
        "memory_max_bytes",
        "cpu_usage_nsec",
        "fan_pwm",
        "fan_rpm",
        "gpu_load_percent",
        "power_total_watts",
        "rails",
        "timestamp",
        "time",
    ];
    EXACT.contains(&key) || key.ends_with("_at") || key.ends_with("_unix_us")
}

fn redact_value(key: Option<&str>, v: &mut serde_json::Value, literals: &[(String, String)]) {
    use serde_json::Value;
    match v {
        Value::Object(map) if key == Some("rails") => {
            for v in map.values_mut() {
                *v = Value::String("<watts>".into());
            }
        }
        Value::Array(_) if key == Some("load") => *v = Value::String("<load>".into()),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                redact_value(Some(k), v, literals);
            }
        }
        Value::Array(items) => {
            for item in items {
                redact_value(key, item, literals);
            }
        }
        Value::Null => {}
        // An absent time is 0 every run.
        Value::Number(n)
            if n.as_i64() == Some(0) && key.is_some_and(|k| k.ends_with("_unix_us")) => {}
        _ if key.is_some_and(varying_key) => *v = Value::String(format!("<{}>", key.unwrap())),
        Value::String(s) => {
            let mut t = s.clone();
            for (from, to) in literals {
                t = t.replace(from.as_str(), to);
            }
            *s = redact_line(&t);
        }
        _ => {}
    }
}

/// JSON output (one document, or one per line) with varying values
/// replaced, pretty-printed with sorted keys.
fn redact_json(text: &str, literals: &[(String, String)]) -> String {
    let mut out = String::new();
    let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(text)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
    for mut doc in docs {
        redact_value(None, &mut doc, literals);
        out.push_str(&serde_json::to_string_pretty(&doc).unwrap());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------
// The tour

const FOREVER: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

fn spec(id: &str, node: &str, script: &str, extra: &str) -> String {
    format!(
        "id = \"{id}\"\ncommand = [\"/bin/sh\", \"-c\", {script:?}]\n{extra}\n[placement]\nnode = \"{node}\"\n\n[lifecycle]\nstop_timeout = \"5s\"\nrestart_delay = \"200ms\"\n"
    )
}

#[cfg_attr(
    fleet_no_testbed,
    ignore = "needs root and systemd; see the build warning"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_real_fleet() {
    let f = fleet("snap", 30).await;
    let (n0, n1) = (f.node(0), f.node(1));
    let (n0, n1) = (n0.as_str(), n1.as_str());
    // hello prints its lines, then ends once the test opens its gate: it
    // is seen running every time, however fast the board.
    let gate = f.home.join("hello.gate");
    f.write(
        "hello.toml",
        &spec(
            "hello",
            n0,
            &format!(
                "for i in 1 2 3 4 5; do echo \"line $i\"; done; while [ ! -e {} ]; do sleep 0.05; done",
                gate.display()
            ),
            "priority = 10\n",
        ),
    );
    f.write(
        "forever.toml",
        &spec(
            "forever",
            n1,
            FOREVER,
            "env = { MODEL = \"llama-3.2-1b\" }\n\n[resources]\nmemory_max = \"512M\"\ncpu_quota = \"50%\"\n",
        )
        .replace("[placement]\n", "[placement]\nlabels = { rack = \"b\" }\n"),
    );
    f.write("steady.toml", &spec("steady", n0, FOREVER, ""));
    f.write(
        "blocked.toml",
        "id = \"blocked\"\ncommand = [\"/bin/true\"]\n\n[placement]\nlabels = { rack = \"z\" }\n",
    );
    f.write(
        "bad.toml",
        "id = \"bad\"\ncommand = [\"/bin/true\"]\n\n[resources]\nmemory_max = \"lots\"\n",
    );

    // Submit: dry run, then for real; status and logs of what ran.
    f.snap("submit-dry-run", &["submit", "--dry-run", "hello.toml"], 0)
        .await;
    f.snap(
        "submit-dry-run-json",
        &["submit", "--dry-run", "-o", "json", "hello.toml"],
        0,
    )
    .await;
    f.snap("submit", &["submit", "hello.toml"], 0).await;
    f.wait_phase("hello", ExperimentPhase::Running).await;
    std::fs::write(&gate, "").unwrap();
    f.wait_phase("hello", ExperimentPhase::Succeeded).await;
    f.snap("status", &["status", "hello"], 0).await;
    f.snap("status-json", &["status", "hello", "-o", "json"], 0)
        .await;
    f.snap("logs", &["logs", "hello"], 0).await;
    f.snap("logs-n", &["logs", "hello", "-n", "2"], 0).await;
    f.snap("logs-json", &["logs", "hello", "-n", "2", "-o", "json"], 0)
        .await;
    f.snap("submit-wait", &["submit", "--wait", "forever.toml"], 0)
        .await;
    f.snap(
        "submit-wait-json",
        &["submit", "--wait", "-o", "json", "steady.toml"],
        0,
    )
    .await;
    f.snap("submit-queued", &["submit", "blocked.toml"], 0)
        .await;
    f.wait("blocked", "a decision for blocked", |e| {
        !e.reason.contains("waiting for the scheduler")
    })
    .await;
    f.snap("status-running", &["status", "forever"], 0).await;

    // Listing, with every filter.
    f.snap("ps", &["ps"], 0).await;
    f.snap("ps-json", &["ps", "-o", "json"], 0).await;
    f.snap("ps-state", &["ps", "--state", "running"], 0).await;
    f.snap("ps-label", &["ps", "--label", "rack=b"], 0).await;
    f.snap("ps-node", &["--node", n0, "ps"], 0).await;
    f.snap(
        "list-state-json",
        &["list", "--state", "succeeded,queued", "-o", "json"],
        0,
    )
    .await;
    f.snap("ps-no-match", &["ps", "--label", "rack=q"], 0).await;

    // Why things are where they are.
    f.snap("explain-placed", &["explain", "hello"], 0).await;
    f.snap("explain-queued", &["explain", "blocked"], 0).await;
    f.snap("explain-json", &["explain", "blocked", "-o", "json"], 0)
        .await;
    f.snap("events-of-one", &["events", "hello"], 0).await;
    f.snap("events-of-one-json", &["events", "hello", "-o", "json"], 0)
        .await;

    // The boards.
    f.snap("nodes", &["nodes"], 0).await;
    f.snap("nodes-json", &["nodes", "-o", "json"], 0).await;
    f.snap("nodes-label", &["nodes", "--label", "rack=a"], 0)
        .await;
    f.snap("node-info", &["node", "info", n0], 0).await;

    // Cordon, labels, drain; the event log since a point.
    let seq = f.last_seq().await.to_string();
    f.snap(
        "node-cordon",
        &["node", "cordon", n1, "--reason", "fan noise"],
        0,
    )
    .await;
    f.snap("events-since", &["events", "--since", &seq], 0)
        .await;
    f.snap("node-cordon-json", &["node", "cordon", n1, "-o", "json"], 0)
        .await;
    f.snap("node-uncordon", &["node", "uncordon", n1], 0).await;
    f.snap("node-label", &["node", "label", n1, "gpu=yes", "model-"], 0)
        .await;
    f.snap("nodes-label-after", &["nodes", "--label", "gpu=yes"], 0)
        .await;
    f.snap(
        "node-label-back",
        &["node", "label", n1, "model=agx-orin", "gpu-"],
        0,
    )
    .await;
    f.snap("node-drain-wait", &["node", "drain", n1, "--wait"], 0)
        .await;
    f.snap("nodes-draining", &["nodes"], 0).await;
    f.snap(
        "node-drain-requeue",
        &["node", "drain", n1, "--requeue", "-o", "json"],
        0,
    )
    .await;
    f.wait("forever", "forever to be requeued", |e| {
        e.phase() == ExperimentPhase::Queued && e.reason.contains("fits")
    })
    .await;
    f.snap("explain-drained", &["explain", "forever"], 0).await;

    // Stop, cancel, restart. (Nothing is placed again on the board it just
    // left: the second board stays cordoned until the end.)
    f.snap("stop-queued", &["stop", "forever"], 4).await;
    f.snap("cancel-json", &["cancel", "forever", "-o", "json"], 0)
        .await;
    f.snap("cancel-finished", &["cancel", "hello"], 4).await;
    f.snap("restart", &["restart", "forever", "--reason", "again"], 0)
        .await;
    f.snap("cancel", &["cancel", "forever", "blocked"], 0).await;
    f.snap("stop-many", &["stop", "steady", "nope"], 3).await;
    f.wait_phase("steady", ExperimentPhase::Stopped).await;
    f.snap("ps-after", &["ps"], 0).await;
    f.snap("events-of-stopped", &["events", "steady"], 0).await;

    // Power modes and jetson_clocks through the controller.
    // Every AGX Orin mode but MAXN and MODE_50W gates the GPU differently,
    // so leaving MODE_30W needs a reboot (the simulated one is instant).
    f.snap("power-needs-reboot", &["power", n0, "MODE_50W"], 4)
        .await;
    f.snap(
        "power-needs-reboot-json",
        &["power", n0, "MODE_50W", "-o", "json"],
        4,
    )
    .await;
    f.snap(
        "power-allow-reboot",
        &["power", n0, "MODE_50W", "--allow-reboot"],
        0,
    )
    .await;
    f.snap("power", &["power", n0, "MAXN"], 0).await;
    f.snap("power-json", &["power", n0, "MAXN", "-o", "json"], 0)
        .await;
    f.snap("power-unknown-mode", &["power", n0, "WARP9"], 1)
        .await;
    f.snap("clocks-on", &["clocks", n0, "on"], 0).await;
    f.snap("clocks-off-json", &["clocks", n0, "off", "-o", "json"], 0)
        .await;
    f.snap("clocks-refused", &["clocks", n1, "on"], 4).await;
    f.snap("clocks-unknown-node", &["clocks", "nowhere", "on"], 3)
        .await;

    // The policy.
    f.snap("policy-get", &["policy", "get"], 0).await;
    f.snap("policy-get-json", &["policy", "get", "-o", "json"], 0)
        .await;
    f.snap("policy-set", &["policy", "set", "spread"], 0).await;
    f.snap(
        "policy-set-weights-of-another",
        &["policy", "set", "balanced", "--weight", "load=0.2"],
        2,
    )
    .await;
    f.snap("policy-set-back", &["policy", "set", "balanced"], 0)
        .await;
    f.snap(
        "policy-set-weights",
        &[
            "policy",
            "set",
            "balanced",
            "--weight",
            "temperature=0.5,load=0.2",
            "--strict-order",
            "on",
            "--temp-margin",
            "3",
            "-o",
            "json",
        ],
        0,
    )
    .await;

    // Errors and their exit codes.
    f.snap("status-unknown", &["status", "nope"], 3).await;
    f.snap("stop-unknown", &["stop", "nope"], 3).await;
    f.snap("node-cordon-unknown", &["node", "cordon", "nowhere"], 3)
        .await;
    f.snap(
        "viewer-cordon",
        &["--context", "viewer", "node", "cordon", n0],
        4,
    )
    .await;
    f.snap(
        "viewer-submit",
        &["--context", "viewer", "submit", "hello.toml"],
        4,
    )
    .await;
    f.snap(
        "viewer-ps",
        &["--context", "viewer", "ps", "--state", "stopped"],
        0,
    )
    .await;
    f.snap("submit-bad-file", &["submit", "bad.toml"], 1).await;
    f.snap(
        "submit-dry-run-bad-file",
        &["submit", "--dry-run", "bad.toml"],
        1,
    )
    .await;
    // The same spec again (a retry): OK, and said to be there already;
    // another spec under the id is a clash.
    f.snap("submit-again", &["submit", "hello.toml"], 0).await;
    f.write(
        "hello-other.toml",
        &spec("hello", n0, "echo another hello", ""),
    );
    f.snap("submit-exists", &["submit", "hello-other.toml"], 1)
        .await;
    f.snap("ps-board-state", &["ps", "--state", "disrupted"], 2)
        .await;

    // A node the controller knows but cannot reach.
    f.admin
        .clone()
        .add_node(v1::AddNodeRequest {
            name: "ghost".into(),
            address: "127.0.30.99:9".into(),
            labels: Default::default(),
            cordoned: false,
        })
        .await
        .unwrap();
    f.snap("clocks-unreachable", &["clocks", "ghost", "on"], 4)
        .await;
    f.finish().await;
}
