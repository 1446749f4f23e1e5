//! What fleetctl prints: human tables sized to the terminal, or JSON.
//!
//! `--output table` (the default) is for people: columns fit the terminal
//! width (`$COLUMNS`, else the terminal's own size, else unlimited when
//! stdout is not a terminal), colours only when stdout is a terminal and
//! `NO_COLOR` is unset. `--output json` is for scripts: one JSON document
//! per command, or one JSON object per line for commands that follow a
//! stream (`logs -f`, `watch`), built from the documented structs in
//! [`crate::views`], never from the wire types.

use std::io::{self, IsTerminal, Write};

use serde::Serialize;

use crate::exit::CliError;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human tables.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
}

impl OutputFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "table" => Some(OutputFormat::Table),
            "json" => Some(OutputFormat::Json),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Table => "table",
            OutputFormat::Json => "json",
        }
    }
}

/// A colour for a cell or a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Red,
    Green,
    Yellow,
    Magenta,
    Cyan,
    Dim,
    Bold,
}

impl Color {
    fn code(self) -> &'static str {
        match self {
            Color::Red => "31",
            Color::Green => "32",
            Color::Yellow => "33",
            Color::Magenta => "35",
            Color::Cyan => "36",
            Color::Dim => "2",
            Color::Bold => "1",
        }
    }
}

/// Whether colours are on: only on a terminal, and never with `NO_COLOR`
/// set to anything but the empty string (<https://no-color.org>) or
/// `TERM=dumb`.
pub fn colors_wanted(is_tty: bool, no_color: Option<&str>, term: Option<&str>) -> bool {
    is_tty && no_color.is_none_or(str::is_empty) && term != Some("dumb")
}

/// The width tables must fit: `$COLUMNS` when it is a number, else the
/// terminal's width, else none (output to a pipe or file is never cut).
pub fn terminal_width(columns_env: Option<&str>, is_tty: bool) -> Option<usize> {
    if let Some(n) = columns_env
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return Some(n);
    }
    if is_tty {
        ioctl_width()
    } else {
        None
    }
}

fn ioctl_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct we pass.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0 {
            Some(usize::from(ws.ws_col))
        } else {
            None
        }
    }
}

/// Where and how a command prints.
pub struct Out {
    pub format: OutputFormat,
    pub color: bool,
    pub width: Option<usize>,
    writer: Box<dyn Write>,
}

impl Out {
    /// Standard output, with colours and width from the environment.
    pub fn stdout(format: OutputFormat) -> Self {
        let is_tty = io::stdout().is_terminal();
        let env = |k: &str| std::env::var(k).ok();
        Out {
            format,
            color: colors_wanted(is_tty, env("NO_COLOR").as_deref(), env("TERM").as_deref()),
            width: terminal_width(env("COLUMNS").as_deref(), is_tty),
            writer: Box::new(io::stdout()),
        }
    }

    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// One line of text (a newline is added); flushed at once, so a
    /// following stream shows every line as it comes.
    pub fn line(&mut self, text: &str) -> Result<(), CliError> {
        writeln!(self.writer, "{text}")
            .and_then(|()| self.writer.flush())
            .map_err(CliError::Output)
    }

    /// Bytes as they are (a completion script).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        self.writer
            .write_all(bytes)
            .and_then(|()| self.writer.flush())
            .map_err(CliError::Output)
    }

    /// A JSON document, pretty-printed.
    pub fn json<T: Serialize>(&mut self, value: &T) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| CliError::Output(io::Error::other(e)))?;
        self.line(&text)
    }

    /// One JSON object on one line, for streams (JSON Lines).
    pub fn json_line<T: Serialize>(&mut self, value: &T) -> Result<(), CliError> {
        let text =
            serde_json::to_string(value).map_err(|e| CliError::Output(io::Error::other(e)))?;
        self.line(&text)
    }

    /// A table laid out for this output's width and colours.
    pub fn table(&mut self, table: &Table) -> Result<(), CliError> {
        for line in table.render(self.width, self.color) {
            self.line(&line)?;
        }
        Ok(())
    }

    /// `text` in `color` when colours are on.
    pub fn paint(&self, text: &str, color: Option<Color>) -> String {
        paint(text, color, self.color)
    }
}

/// `text` wrapped in the ANSI codes of `color` when `on`.
pub fn paint(text: &str, color: Option<Color>, on: bool) -> String {
    match color {
        Some(c) if on && !text.is_empty() => format!("\x1b[{}m{text}\x1b[0m", c.code()),
        _ => text.to_owned(),
    }
}

/// How a column's cells sit in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// One column: its header, alignment, and the narrowest it may be cut to.
#[derive(Debug, Clone)]
pub struct Column {
    header: String,
    align: Align,
    min: usize,
}

impl Column {
    /// A left-aligned column that may shrink to 8 characters.
    pub fn left(header: &str) -> Self {
        Column {
            header: header.to_owned(),
            align: Align::Left,
            min: 8,
        }
    }

    /// A right-aligned column (numbers), never cut.
    pub fn right(header: &str) -> Self {
        Column {
            header: header.to_owned(),
            align: Align::Right,
            min: usize::MAX,
        }
    }

    /// Never cut below `min` characters.
    pub fn min(mut self, min: usize) -> Self {
        self.min = min;
        self
    }

    /// Never cut (ids, states).
    pub fn fixed(self) -> Self {
        self.min(usize::MAX)
    }
}

/// A cell: its text and an optional colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    text: String,
    color: Option<Color>,
}

impl Cell {
    pub fn new(text: impl Into<String>) -> Self {
        Cell {
            text: text.into(),
            color: None,
        }
    }

    pub fn colored(text: impl Into<String>, color: Option<Color>) -> Self {
        Cell {
            text: text.into(),
            color,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell::new(text)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell::new(text)
    }
}

/// Columns separate by this many spaces.
const GAP: usize = 2;

/// A table with a header row. Cells are cut with `…` when the table would
/// be wider than the terminal, widest cuttable column first; a table that
/// still does not fit overflows rather than losing ids.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(columns: Vec<Column>) -> Self {
        Table {
            columns,
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra ones dropped.
    pub fn row(&mut self, cells: Vec<Cell>) {
        let mut cells = cells;
        cells.resize(self.columns.len(), Cell::new(""));
        self.rows.push(cells);
    }

    /// Column widths that fit `width`, when one is given.
    pub fn widths(&self, width: Option<usize>) -> Vec<usize> {
        let mut widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                self.rows
                    .iter()
                    .map(|r| text_width(&r[i].text))
                    .chain([text_width(&c.header)])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let Some(limit) = width else {
            return widths;
        };
        let gaps = GAP * self.columns.len().saturating_sub(1);
        loop {
            let total: usize = widths.iter().sum::<usize>() + gaps;
            if total <= limit {
                break;
            }
            // Shrink the widest column that is still above its minimum.
            let candidate = widths
                .iter()
                .enumerate()
                .filter(|(i, w)| {
                    **w > self.columns[*i]
                        .min
                        .max(text_width(&self.columns[*i].header))
                })
                .max_by_key(|(i, w)| (**w, usize::MAX - *i))
                .map(|(i, _)| i);
            let Some(i) = candidate else { break };
            let floor = self.columns[i].min.max(text_width(&self.columns[i].header));
            let excess = total - limit;
            widths[i] = widths[i].saturating_sub(excess).max(floor);
        }
        widths
    }

    /// The lines of the table, without trailing spaces.
    pub fn render(&self, width: Option<usize>, color: bool) -> Vec<String> {
        let widths = self.widths(width);
        let header: Vec<Cell> = self
            .columns
            .iter()
            .map(|c| Cell::colored(c.header.clone(), Some(Color::Bold)))
            .collect();
        std::iter::once(&header)
            .chain(self.rows.iter())
            .map(|row| self.render_row(row, &widths, color))
            .collect()
    }

    fn render_row(&self, row: &[Cell], widths: &[usize], color: bool) -> String {
        let mut line = String::new();
        let last = self.columns.len().saturating_sub(1);
        for (i, (cell, column)) in row.iter().zip(&self.columns).enumerate() {
            let text = truncate(&cell.text, widths[i]);
            let pad = widths[i].saturating_sub(text_width(&text));
            let painted = paint(&text, cell.color, color);
            match column.align {
                Align::Left if i == last => line.push_str(&painted),
                Align::Left => {
                    line.push_str(&painted);
                    line.push_str(&" ".repeat(pad));
                }
                Align::Right => {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(&painted);
                }
            }
            if i != last {
                line.push_str(&" ".repeat(GAP));
            }
        }
        line.trim_end().to_owned()
    }
}

/// Display width of a text: one per character (fleet's ids, states and
/// numbers are ASCII; log lines are the only free text).
pub fn text_width(text: &str) -> usize {
    text.chars().count()
}

/// `text` cut to `width` characters, the last one `…` when cut.
pub fn truncate(text: &str, width: usize) -> String {
    if text_width(text) <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// Key–value lines (`status`, `node info`): keys padded to one width.
pub fn key_values(pairs: &[(&str, String)]) -> Vec<String> {
    let w = pairs
        .iter()
        .map(|(k, _)| text_width(k) + 1)
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| {
            format!("{:<w$}  {v}", format!("{k}:"))
                .trim_end()
                .to_owned()
        })
        .collect()
}

/// Bytes in binary units for people: `512 B`, `1.5 KiB`, `812.3 MiB`, `7.6 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A percentage with one decimal: `37.5%`.
pub fn percent(p: f64) -> String {
    format!("{p:.1}%")
}

/// `-` for an absent value in a table.
pub const NONE: &str = "-";

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(vec![
            Column::left("ID").fixed(),
            Column::left("STATE").fixed(),
            Column::right("PID"),
            Column::left("MESSAGE").min(10),
        ]);
        t.row(vec![
            "amnesiac-001".into(),
            Cell::colored("running", Some(Color::Green)),
            "1234".into(),
            "a fairly long message that will not fit in a narrow terminal".into(),
        ]);
        t.row(vec!["b".into(), "failed".into(), "".into(), "short".into()]);
        t
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let lines = sample().render(None, false);
        assert_eq!(lines[0], "ID            STATE     PID  MESSAGE");
        assert_eq!(
            lines[1],
            "amnesiac-001  running  1234  a fairly long message that will not fit in a narrow terminal"
        );
        assert_eq!(lines[2], "b             failed         short");
    }

    #[test]
    fn tables_cut_the_cuttable_column_to_fit_the_width() {
        let lines = sample().render(Some(50), false);
        for line in &lines {
            assert!(text_width(line) <= 50, "{line:?}");
        }
        assert_eq!(
            lines[1],
            "amnesiac-001  running  1234  a fairly long messag…"
        );
        // Too narrow for even the fixed columns: the cuttable one stops at
        // its minimum and the line overflows, ids stay whole.
        let lines = sample().render(Some(20), false);
        assert!(
            lines[1].starts_with("amnesiac-001  running  1234  a fairly …"),
            "{lines:?}"
        );
    }

    #[test]
    fn colours_do_not_change_the_layout() {
        let plain = sample().render(Some(60), false);
        let colored = sample().render(Some(60), true);
        let strip = |s: &str| {
            let mut out = String::new();
            let mut in_escape = false;
            for c in s.chars() {
                match (in_escape, c) {
                    (false, '\x1b') => in_escape = true,
                    (true, 'm') => in_escape = false,
                    (true, _) => {}
                    (false, c) => out.push(c),
                }
            }
            out
        };
        assert_ne!(plain, colored);
        assert!(colored[1].contains("\x1b[32mrunning\x1b[0m"));
        let stripped: Vec<String> = colored.iter().map(|l| strip(l)).collect();
        assert_eq!(plain, stripped);
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colors_wanted(true, None, Some("xterm")));
        assert!(colors_wanted(true, Some(""), None));
        assert!(!colors_wanted(false, None, None));
        assert!(!colors_wanted(true, Some("1"), None));
        assert!(!colors_wanted(true, None, Some("dumb")));
    }

    #[test]
    fn width_comes_from_columns_first() {
        assert_eq!(terminal_width(Some("93"), false), Some(93));
        assert_eq!(terminal_width(Some("x"), false), None);
        assert_eq!(terminal_width(Some("0"), false), None);
        assert_eq!(terminal_width(None, false), None);
    }

    #[test]
    fn sizes_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(812 * 1024 * 1024 + 300 * 1024), "812.3 MiB");
        assert_eq!(bytes(8 * 1024 * 1024 * 1024), "8.0 GiB");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }

    #[test]
    fn key_values_line_up() {
        let lines = key_values(&[("id", "x".into()), ("memory", "1.0 GiB".into())]);
        assert_eq!(lines, vec!["id:      x", "memory:  1.0 GiB"]);
    }
}
