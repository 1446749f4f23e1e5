//! An experiment's journal lines, read with `journalctl -o json`.
//!
//! journald's files have no stable library API outside libsystemd, so the
//! agent runs `journalctl` (no shell; the match is built from a validated id)
//! and parses its JSON. Lines are matched on `SYSLOG_IDENTIFIER`, which the
//! template sets to `brain-experiment-<id>`: `_SYSTEMD_UNIT` is missing for
//! a user manager outside a user slice.

use std::path::PathBuf;
use std::process::Stdio;

use futures_util::Stream;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error(
        "cannot run {path} to read the journal; set `journalctl` in the agent config to its path"
    )]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub timestamp_us: i64,
    pub message: String,
    pub priority: u32,
    pub pid: u32,
    pub cursor: String,
}

#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub tail: u32,
    pub since_us: i64,
    pub follow: bool,
}

/// `MESSAGE` is a string, or an array of bytes when it is not valid UTF-8.
#[derive(Deserialize)]
#[serde(untagged)]
enum Message {
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "MESSAGE")]
    message: Option<Message>,
    #[serde(rename = "__REALTIME_TIMESTAMP")]
    realtime: Option<String>,
    #[serde(rename = "PRIORITY")]
    priority: Option<String>,
    #[serde(rename = "_PID")]
    pid: Option<String>,
    #[serde(rename = "__CURSOR")]
    cursor: Option<String>,
}

pub fn parse_line(json: &str) -> Option<LogLine> {
    let e: Entry = serde_json::from_str(json).ok()?;
    let message = match e.message? {
        Message::Text(s) => s,
        Message::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
    };
    Some(LogLine {
        timestamp_us: e.realtime.and_then(|t| t.parse().ok()).unwrap_or(0),
        message,
        priority: e.priority.and_then(|p| p.parse().ok()).unwrap_or(6),
        pid: e.pid.and_then(|p| p.parse().ok()).unwrap_or(0),
        cursor: e.cursor.unwrap_or_default(),
    })
}

/// The argv for journalctl (after the program) for one identifier.
pub fn journalctl_args(identifier: &str, q: &LogQuery) -> Vec<String> {
    let mut args = vec![
        "--no-pager".to_owned(),
        "--quiet".to_owned(),
        "--output=json".to_owned(),
        format!("SYSLOG_IDENTIFIER={identifier}"),
    ];
    if q.since_us > 0 {
        // journalctl takes "@<seconds>" with a fraction.
        args.push(format!(
            "--since=@{}.{:06}",
            q.since_us / 1_000_000,
            q.since_us % 1_000_000
        ));
    }
    if q.tail > 0 {
        args.push(format!("--lines={}", q.tail));
    } else if q.follow && q.since_us == 0 {
        args.push("--lines=0".to_owned());
    }
    if q.follow {
        args.push("--follow".to_owned());
    }
    args
}

/// Streams lines until journalctl ends (or forever with `follow`). Dropping
/// the stream kills journalctl.
pub fn stream(
    journalctl: PathBuf,
    identifier: String,
    q: LogQuery,
) -> Result<impl Stream<Item = LogLine> + Send + 'static, LogsError> {
    let mut child = Command::new(&journalctl)
        .args(journalctl_args(&identifier, &q))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| LogsError::Spawn {
            path: journalctl.clone(),
            source,
        })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let lines = BufReader::new(stdout).lines();
    Ok(futures_util::stream::unfold(
        (lines, child),
        |(mut lines, child)| async move {
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) => {
                        if let Some(line) = parse_line(&l) {
                            return Some((line, (lines, child)));
                        }
                    }
                    _ => return None,
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_journalctl_json_including_binary_messages() {
        let l = parse_line(r#"{"MESSAGE":"hello","__REALTIME_TIMESTAMP":"1700000000000001","PRIORITY":"6","_PID":"42","__CURSOR":"s=1"}"#).unwrap();
        assert_eq!(l.message, "hello");
        assert_eq!(
            (l.timestamp_us, l.priority, l.pid),
            (1_700_000_000_000_001, 6, 42)
        );
        let b = parse_line(r#"{"MESSAGE":[104,105,255]}"#).unwrap();
        assert_eq!(b.message, "hi\u{fffd}");
        assert!(parse_line(r#"{"OTHER":"x"}"#).is_none());
    }

    #[test]
    fn builds_tail_since_and_follow_arguments() {
        let a = journalctl_args(
            "brain-experiment-x",
            &LogQuery {
                tail: 5,
                since_us: 1_500_000,
                follow: true,
            },
        );
        assert!(a.contains(&"SYSLOG_IDENTIFIER=brain-experiment-x".to_owned()));
        assert!(a.contains(&"--since=@1.500000".to_owned()));
        assert!(a.contains(&"--lines=5".to_owned()));
        assert!(a.contains(&"--follow".to_owned()));
        let f = journalctl_args(
            "i",
            &LogQuery {
                follow: true,
                ..Default::default()
            },
        );
        assert!(f.contains(&"--lines=0".to_owned()));
    }
}
