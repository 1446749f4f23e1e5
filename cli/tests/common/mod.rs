//! Running the real `fleetctl` binary in a throwaway home, with no
//! `FLEET_*` variable of the caller's leaking in.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// What one run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with everything printed unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A home directory of its own for each test.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Home {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `fleetctl` with `HOME` here and a clean environment.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("FLEET_") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("HOME", self.dir.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("COLUMNS")
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(self.command().args(args))
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run fleetctl");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// DER of the first PEM block in `pem`.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64_decode(&body)
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()) {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Mode bits of a file.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

impl Home {
    /// A fleet CA, a server certificate (`controller` or `agent NODE`) and
    /// the admin user `ada`, all under `pki/`.
    pub fn init_pki(&self, server: &[&str]) {
        self.run(&["pki", "init", "--dir", "pki", "--fleet", "lab"])
            .expect_code(0);
        let mut issue = vec!["pki", "issue"];
        issue.extend_from_slice(server);
        issue.extend(["--dir", "pki"]);
        self.run(&issue).expect_code(0);
        self.run(&[
            "pki", "issue", "user", "ada", "--role", "admin", "--dir", "pki",
        ])
        .expect_code(0);
    }

    /// A config file whose current context reaches `key = addr` (`agent`
    /// or `controller`) with ada's certificate.
    pub fn write_context(&self, key: &str, addr: &str) {
        self.write(
            ".config/fleet/fleetctl.toml",
            &format!(
                "current_context = \"lab\"\n[contexts.lab]\n{key} = \"{addr}\"\n\
                 ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                self.path("pki/ca.pem").display(),
                self.path("pki/user-ada.pem").display(),
                self.path("pki/user-ada.key").display(),
            ),
        );
    }

    /// `fleetctl` running in the background, its output read line by line
    /// (`events -f`, `logs -f`).
    pub fn spawn(&self, args: &[&str]) -> Spawned {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        use std::process::Stdio;
        let mut command = self.command();
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A test run started in the background by a shell without job
        // control inherits SIGINT ignored, and so would fleetctl: give it
        // the default action, as at a terminal, so `interrupt` is Ctrl-C.
        // SAFETY: signal(2) is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn fleetctl");
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new((
            std::sync::Mutex::new(String::new()),
            std::sync::Condvar::new(),
        ));
        let pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let (text, grew) = &*sink;
                let mut text = text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
                grew.notify_all();
            }
        });
        Spawned {
            child,
            lines,
            seen: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }
}

/// A background `fleetctl` and the stdout lines it printed so far.
pub struct Spawned {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
    /// What it printed on stderr so far, and a signal when that grows.
    stderr: std::sync::Arc<(std::sync::Mutex<String>, std::sync::Condvar)>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Spawned {
    /// Waits until `n` lines have been printed in all, or fails with what
    /// was printed, its stderr and its exit status if it ended.
    #[track_caller]
    pub fn wait_for_lines(&mut self, n: usize) -> &[String] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.seen.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "waited for {n} lines, got {:#?}\nexit status: {status:?}\nstderr:\n{}",
                        self.seen,
                        self.stderr_now()
                    );
                }
            }
        }
        &self.seen
    }

    /// What it printed on stderr so far.
    pub fn stderr_now(&self) -> String {
        self.stderr.0.lock().unwrap().clone()
    }

    /// Waits until its stderr says `needle`, or fails with what it said.
    #[track_caller]
    pub fn wait_for_stderr(&mut self, needle: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let (text, grew) = &*self.stderr;
        let mut text = text.lock().unwrap();
        while !text.contains(needle) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                panic!("waited for {needle:?} on stderr, got:\n{text}");
            }
            text = grew.wait_timeout(text, left).unwrap().0;
        }
    }

    /// Ends it as Ctrl-C would, and returns what it printed on stderr.
    pub fn interrupt(mut self) -> String {
        // SAFETY: kill(2) on the child's own pid; it has not been reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        // It must end on Ctrl-C; waiting for ever would hang the suite.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "fleetctl did not end within 20 s of SIGINT; stderr:\n{}",
                    self.stderr_now()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The reader ends at the end of the pipe, which the exit closed.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.stderr_now()
    }
}

/// `text` with every date-time (`2025-06-01 14:03:22`, RFC 3339 with
/// fraction and `Z`) replaced by `<time>`: wall-clock times follow the
/// local time zone.
pub fn redact(text: &str) -> String {
    const SHAPE: &[u8] = b"dddd-dd-dd?dd:dd:dd";
    let chars: Vec<char> = text.chars().collect();
    let at = |c: &[char]| -> Option<usize> {
        if c.len() < SHAPE.len() {
            return None;
        }
        for (i, s) in SHAPE.iter().enumerate() {
            let ok = match s {
                b'd' => c[i].is_ascii_digit(),
                b'?' => c[i] == ' ' || c[i] == 'T',
                other => c[i] == char::from(*other),
            };
            if !ok {
                return None;
            }
        }
        let mut len = SHAPE.len();
        if c.get(len) == Some(&'.') {
            len += 1;
            while c.get(len).is_some_and(char::is_ascii_digit) {
                len += 1;
            }
        }
        if c.get(len) == Some(&'Z') {
            len += 1;
        }
        Some(len)
    };
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if let Some(len) = at(&chars[i..]) {
            out.push_str("<time>");
            i += len;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}
