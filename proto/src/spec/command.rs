//! What an experiment runs: its command line, paths, environment values and
//! config file.

use std::fmt;

use super::error::{FieldError, FieldPath, InvalidValue, SpecError};
use super::names::{ConfigName, SUBSTITUTED_ENV};

/// Most arguments in a command.
pub const MAX_ARGS: usize = 1024;
/// Longest single argument, in bytes.
pub const MAX_ARG_BYTES: usize = 64 * 1024;
/// Most bytes in all arguments together. systemd reads a unit file line of
/// at most 1 MiB; quoting at most doubles an argument, so this leaves room.
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;
/// Longest path (Linux's PATH_MAX less the terminating NUL).
pub const MAX_PATH_BYTES: usize = 4095;
/// Longest environment variable value, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Most bytes in all environment values together.
pub const MAX_ENV_BYTES: usize = 256 * 1024;
/// Largest config file shipped to a board.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// ASCII control characters other than tab: a newline or a carriage return
/// would end a unit file line, a NUL ends a C string, and systemd refuses
/// the others in environment values. Tab is printable enough to keep.
fn is_forbidden_control(c: char) -> bool {
    c.is_ascii_control() && c != '\t'
}

fn control_char_problem(s: &str) -> Option<&'static str> {
    match s.chars().find(|&c| is_forbidden_control(c))? {
        '\0' => Some("contains a NUL byte"),
        '\n' => Some("contains a newline"),
        '\r' => Some("contains a carriage return"),
        _ => Some("contains a control character"),
    }
}

/// An absolute, normalized path of printable characters, safe to hand to
/// systemd as an executable or a working directory.
///
/// Rules: starts with '/'; no empty, `.` or `..` component (so no `//`
/// and no trailing '/', except the root `/` itself); no control character;
/// none of `"`, `'`, `\` and `$` (systemd refuses quotes and backslashes in
/// an executable path and never expands `$` in one); no trailing
/// whitespace (systemd strips it); at most [`MAX_PATH_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbsolutePath(String);

impl AbsolutePath {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        match path_problem(&s) {
            None => Ok(Self(s)),
            Some(fix) => Err(InvalidValue::invalid("path", &s, fix)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_path(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl fmt::Display for AbsolutePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AbsolutePath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// What is wrong with `s` as an [`AbsolutePath`], as a fix.
fn path_problem(s: &str) -> Option<String> {
    if !s.starts_with('/') {
        return Some("use an absolute path, starting with '/'".to_owned());
    }
    if s.len() > MAX_PATH_BYTES {
        return Some(format!("use a path of at most {MAX_PATH_BYTES} bytes"));
    }
    // Unlike arguments, paths refuse tab too: systemd refuses every control
    // character in an executable path.
    if let Some(problem) = control_char_problem(s) {
        return Some(format!("it {problem}; remove it"));
    }
    if s.contains('\t') {
        return Some("it contains a tab; remove it".to_owned());
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '"' | '\'' | '\\' | '$')) {
        return Some(format!(
            "remove the {c:?}: paths may not contain quotes, '\\' or '$'"
        ));
    }
    if s.ends_with(char::is_whitespace) {
        return Some("remove the whitespace at the end".to_owned());
    }
    if s != "/"
        && s[1..]
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Some(
            "write it normalized: no '.' or '..' components, no '//' and no '/' at the end"
                .to_owned(),
        );
    }
    None
}

/// A program name systemd resolves itself (in its fixed search path, since
/// systemd 239): `python3`, `g++`. It cannot start with one of systemd's
/// ExecStart prefixes (`-`, `@`, `:`, `+`, `!`), which quoting does not
/// disarm.
fn is_program_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=255).contains(&b.len())
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-'))
}

/// A validated command line: what the experiment runs.
///
/// `argv[0]` is an [`AbsolutePath`] or a bare program name
/// (`[A-Za-z0-9_][A-Za-z0-9._+-]*`). Arguments are any text without control
/// characters other than tab. `${FLEET_CONFIG}`, `${FLEET_EXPERIMENT_ID}`
/// and `${FLEET_EPOCH}` inside an argument are replaced by systemd when the
/// experiment starts; every other `$` reaches the program as written (so a
/// shell started by the command can expand it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Command(Vec<String>);

impl Command {
    /// Checks every argument; the error lists each bad one as `command[i]`.
    pub fn new(argv: Vec<String>) -> Result<Self, SpecError> {
        let problems = check_command(&argv, &FieldPath::of(&["command"]));
        match SpecError::from_problems(problems) {
            None => Ok(Self(argv)),
            Some(err) => Err(err),
        }
    }

    /// The program: an absolute path or a name systemd looks up.
    pub fn program(&self) -> &str {
        &self.0[0]
    }

    /// Everything after the program.
    pub fn args(&self) -> &[String] {
        &self.0[1..]
    }

    pub fn argv(&self) -> &[String] {
        &self.0
    }

    /// Whether an argument refers to `${name}`.
    pub fn refers_to(&self, name: &str) -> bool {
        let pattern = format!("${{{name}}}");
        self.0.iter().any(|arg| arg.contains(&pattern))
    }
}

fn check_command(argv: &[String], path: &FieldPath) -> Vec<FieldError> {
    let mut problems = Vec::new();
    if argv.is_empty() {
        problems.push(FieldError::new(
            path.clone(),
            "command is empty: give the program to run and its arguments, \
             e.g. [\"python3\", \"train.py\"]",
        ));
        return problems;
    }
    if argv.len() > MAX_ARGS {
        problems.push(FieldError::new(
            path.clone(),
            format!(
                "command has {} arguments: use at most {MAX_ARGS} (put long lists in the config file)",
                argv.len()
            ),
        ));
        return problems;
    }
    let total: usize = argv.iter().map(String::len).sum();
    if total > MAX_COMMAND_BYTES {
        problems.push(FieldError::new(
            path.clone(),
            format!(
                "command has {total} bytes: use at most {MAX_COMMAND_BYTES} \
                 (put long values in the config file)"
            ),
        ));
    }
    let program = &argv[0];
    if program.starts_with('/') {
        if let Some(fix) = path_problem(program) {
            problems.push(FieldError::new(
                path.index(0),
                InvalidValue::invalid("program", program, fix),
            ));
        }
    } else if !is_program_name(program) {
        problems.push(FieldError::new(
            path.index(0),
            InvalidValue::invalid(
                "program",
                program,
                "give an absolute path (e.g. /usr/bin/python3) or a bare program name \
                 (letters, digits, '.', '_', '+' and '-', starting with a letter, digit or '_') \
                 that systemd finds in its search path",
            ),
        ));
    }
    for (i, arg) in argv.iter().enumerate().skip(1) {
        if let Some(problem) = control_char_problem(arg) {
            problems.push(FieldError::new(
                path.index(i),
                InvalidValue::new(
                    "argument",
                    arg,
                    problem,
                    "remove it (pass multi-line text in the config file)",
                ),
            ));
        } else if arg.len() > MAX_ARG_BYTES {
            problems.push(FieldError::new(
                path.index(i),
                InvalidValue::new(
                    "argument",
                    arg,
                    "is too long",
                    format!(
                        "use at most {MAX_ARG_BYTES} bytes (put long values in the config file)"
                    ),
                ),
            ));
        }
    }
    problems
}

/// Where `${NAME}` for one of [`SUBSTITUTED_ENV`] starts in `arg`, with the
/// name: the only `$` that systemd may expand.
pub fn substitutions(arg: &str) -> impl Iterator<Item = (usize, &'static str)> + '_ {
    arg.match_indices("${").filter_map(move |(i, _)| {
        let rest = &arg[i + 2..];
        SUBSTITUTED_ENV
            .iter()
            .find(|name| {
                rest.strip_prefix(**name)
                    .is_some_and(|after| after.starts_with('}'))
            })
            .map(|name| (i, *name))
    })
}

/// An environment variable's value: any text without control characters
/// other than tab, at most [`MAX_ENV_VALUE_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvValue(String);

impl EnvValue {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidValue> {
        let s = s.into();
        if let Some(problem) = control_char_problem(&s) {
            return Err(InvalidValue::new(
                "environment value",
                &s,
                problem,
                "remove it (pass multi-line text in the config file)",
            ));
        }
        if s.len() > MAX_ENV_VALUE_BYTES {
            return Err(InvalidValue::new(
                "environment value",
                &s,
                "is too long",
                format!(
                    "use at most {MAX_ENV_VALUE_BYTES} bytes (put long values in the config file)"
                ),
            ));
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The config file shipped to the board with an experiment; its path there
/// is given to the process as `$FLEET_CONFIG`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConfigFile {
    name: ConfigName,
    content: Vec<u8>,
}

impl ConfigFile {
    /// Refuses content larger than [`MAX_CONFIG_BYTES`].
    pub fn new(name: ConfigName, content: Vec<u8>) -> Result<Self, InvalidValue> {
        if content.len() > MAX_CONFIG_BYTES {
            return Err(InvalidValue::new(
                "config file",
                name.as_str(),
                "is too large",
                format!(
                    "it has {} bytes; ship at most {MAX_CONFIG_BYTES} (1 MiB) and fetch larger \
                     data from the experiment itself",
                    content.len()
                ),
            ));
        }
        Ok(Self { name, content })
    }

    pub fn name(&self) -> &ConfigName {
        &self.name
    }

    pub fn content(&self) -> &[u8] {
        &self.content
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn paths_must_be_absolute_and_normalized() {
        for ok in [
            "/",
            "/opt/brain-in-jar",
            "/opt/my dir/x",
            "/a/.hidden",
            "/a/b.c/d%i",
            "/é",
        ] {
            assert_eq!(AbsolutePath::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "", "opt", "./x", "~/x", "/a/../b", "/a/./b", "/a//b", "/a/", "/..", "/a\nb", "/a\0",
            "/a\"b", "/a'b", "/a\\b", "/a$b", "/a ", "/a\t", "/a\tb",
        ] {
            assert!(AbsolutePath::new(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(AbsolutePath::new(format!("/{}", "a".repeat(4094))).is_ok());
        assert!(AbsolutePath::new(format!("/{}", "a".repeat(4095))).is_err());
        assert_eq!(
            AbsolutePath::new("/a/../b").unwrap_err().to_string(),
            "path \"/a/../b\" is invalid: write it normalized: no '.' or '..' components, \
             no '//' and no '/' at the end"
        );
        assert_eq!(
            AbsolutePath::new("srv/x").unwrap_err().to_string(),
            "path \"srv/x\" is invalid: use an absolute path, starting with '/'"
        );
    }

    #[test]
    fn a_command_needs_a_program() {
        let err = Command::new(vec![]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid experiment spec: command: command is empty: give the program to run and \
             its arguments, e.g. [\"python3\", \"train.py\"]"
        );
    }

    #[test]
    fn the_program_is_an_absolute_path_or_a_bare_name() {
        for ok in [
            "python3",
            "/usr/bin/python3",
            "g++",
            "_x",
            "run.sh",
            "/opt/my tools/run",
        ] {
            let command = Command::new(argv(&[ok, "x"])).unwrap();
            assert_eq!(command.program(), ok);
            assert_eq!(command.args(), ["x"]);
        }
        for bad in [
            "",
            "./run.sh",
            "bin/run",
            "-python3",
            "@python3",
            ":python3",
            "+python3",
            "!python3",
            "py thon",
            "py$thon",
            "/usr/bin/../bin/x",
            "/opt/a\"b",
            "${FLEET_CONFIG}",
            "~/x",
        ] {
            let err = Command::new(argv(&[bad])).unwrap_err();
            assert_eq!(
                err.problems()[0].path().to_string(),
                "command[0]",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn arguments_may_hold_anything_printable() {
        let tricky = argv(&[
            "/bin/echo",
            "a b",
            "\"quoted\"",
            "back\\slash",
            "%i",
            "$HOME",
            ";",
            "",
            "ünïcødé ☃",
            "tab\there",
            "${FLEET_CONFIG}",
            "-",
            "it's",
        ]);
        assert_eq!(Command::new(tricky.clone()).unwrap().argv(), tricky);
    }

    #[test]
    fn arguments_refuse_control_characters_naming_each() {
        let err =
            Command::new(argv(&["x", "ok", "a\nb", "c\0", "d\re", "\u{1b}[31m"])).unwrap_err();
        let paths: Vec<String> = err
            .problems()
            .iter()
            .map(|p| p.path().to_string())
            .collect();
        assert_eq!(
            paths,
            ["command[2]", "command[3]", "command[4]", "command[5]"]
        );
        assert_eq!(
            err.problems()[0].to_string(),
            "command[2]: argument \"a\\nb\" contains a newline: remove it \
             (pass multi-line text in the config file)"
        );
        assert!(err.problems()[1].message().contains("contains a NUL byte"));
        assert!(err.problems()[2]
            .message()
            .contains("contains a carriage return"));
        assert!(err.problems()[3]
            .message()
            .contains("contains a control character"));
    }

    #[test]
    fn commands_have_size_limits() {
        let many = vec!["x".to_owned(); MAX_ARGS + 1];
        assert!(Command::new(many)
            .unwrap_err()
            .to_string()
            .contains("use at most 1024"));
        let long = vec!["x".to_owned(), "a".repeat(MAX_ARG_BYTES + 1)];
        assert!(Command::new(long)
            .unwrap_err()
            .to_string()
            .contains("is too long"));
        let bulky = vec!["x".to_owned(); 1]
            .into_iter()
            .chain(vec!["a".repeat(60_000); 5]);
        let err = Command::new(bulky.collect()).unwrap_err();
        assert!(
            err.to_string().contains("bytes: use at most 262144"),
            "{err}"
        );
        assert!(Command::new(vec!["x".to_owned(), "a".repeat(MAX_ARG_BYTES)]).is_ok());
    }

    #[test]
    fn substitutions_find_only_fleet_variables() {
        let found: Vec<_> =
            substitutions("--config=${FLEET_CONFIG} ${HOME} ${FLEET_EPOCH}").collect();
        assert_eq!(found, [(9, "FLEET_CONFIG"), (33, "FLEET_EPOCH")]);
        assert_eq!(
            substitutions("${FLEET_CONFIGX} $FLEET_CONFIG ${FLEET_CONFIG").count(),
            0
        );
        let command = Command::new(argv(&["x", "--config", "${FLEET_CONFIG}"])).unwrap();
        assert!(command.refers_to("FLEET_CONFIG"));
        assert!(!command.refers_to("FLEET_EPOCH"));
    }

    #[test]
    fn env_values() {
        for ok in [
            "",
            "llama-3.2-1b",
            "a b=c",
            "$HOME",
            "%i",
            "\"x\"",
            "t\tab",
            "ünï",
        ] {
            assert_eq!(EnvValue::new(ok).unwrap().as_str(), ok);
        }
        assert_eq!(
            EnvValue::new("a\nb").unwrap_err().to_string(),
            "environment value \"a\\nb\" contains a newline: remove it \
             (pass multi-line text in the config file)"
        );
        assert!(EnvValue::new("a\0").is_err());
        assert!(EnvValue::new("\u{7f}").is_err());
        assert!(EnvValue::new("a".repeat(MAX_ENV_VALUE_BYTES)).is_ok());
        assert!(EnvValue::new("a".repeat(MAX_ENV_VALUE_BYTES + 1)).is_err());
    }

    #[test]
    fn config_files_are_at_most_one_mebibyte() {
        let name = ConfigName::new("c.json").unwrap();
        assert!(ConfigFile::new(name.clone(), vec![0; MAX_CONFIG_BYTES]).is_ok());
        assert_eq!(
            ConfigFile::new(name, vec![0; MAX_CONFIG_BYTES + 1])
                .unwrap_err()
                .to_string(),
            "config file \"c.json\" is too large: it has 1048577 bytes; ship at most 1048576 \
             (1 MiB) and fetch larger data from the experiment itself"
        );
    }
}
