//! Runs the board's tools (`nvpmodel`, `jetson_clocks`) as child processes: no shell,
//! a deadline, output collected from both streams, and stdin either closed or answered
//! by the caller when a prompt appears.
//!
//! Exit statuses are collected but the callers decide from the text: neither tool's
//! exit status can be trusted (jetson_clocks exits 0 after failed writes; nvpmodel's
//! is undocumented).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// What a tool printed.
#[derive(Debug, Clone, Default)]
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
    pub status: Option<ExitStatus>,
}

impl ToolOutput {
    /// stdout then stderr, for parsers that do not care which stream a line used.
    pub fn text(&self) -> String {
        let mut text = self.stdout.clone();
        if !text.is_empty() && !text.ends_with('\n') && !self.stderr.is_empty() {
            text.push('\n');
        }
        text.push_str(&self.stderr);
        text
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("could not start {program} (is it installed, and is the configured path right?)")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost contact with {program} while it ran")]
    Io {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?} and was killed")]
    TimedOut { program: PathBuf, timeout: Duration },
}

/// Decides, from everything printed so far, whether to answer on stdin. Returning
/// `Some(text)` writes the text and closes stdin; it is asked again after every chunk
/// of output until it answers.
pub type Responder<'a> = &'a mut (dyn FnMut(&str) -> Option<String> + Send);

/// Runs `program args…`. With no responder stdin is closed from the start, so a tool
/// that unexpectedly prompts reads end-of-file instead of waiting forever.
pub async fn run_tool(
    program: &Path,
    args: &[String],
    timeout: Duration,
    responder: Option<Responder<'_>>,
) -> Result<ToolOutput, ToolError> {
    let io_error = |source| ToolError::Io {
        program: program.to_path_buf(),
        source,
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if responder.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| ToolError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let mut responder = responder;

    let work = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (mut out_open, mut err_open) = (true, true);
        let mut out_chunk = [0u8; 4096];
        let mut err_chunk = [0u8; 4096];
        while out_open || err_open {
            tokio::select! {
                n = stdout.read(&mut out_chunk), if out_open => {
                    match n.map_err(io_error)? {
                        0 => out_open = false,
                        n => out.extend_from_slice(&out_chunk[..n]),
                    }
                }
                n = stderr.read(&mut err_chunk), if err_open => {
                    match n.map_err(io_error)? {
                        0 => err_open = false,
                        n => err.extend_from_slice(&err_chunk[..n]),
                    }
                }
            }
            if let (Some(pipe), Some(respond)) = (stdin.as_mut(), responder.as_mut()) {
                let mut seen = String::from_utf8_lossy(&out).into_owned();
                seen.push('\n');
                seen.push_str(&String::from_utf8_lossy(&err));
                if let Some(answer) = respond(&seen) {
                    // The tool may have exited already; a broken pipe is not our failure.
                    let _ = pipe.write_all(answer.as_bytes()).await;
                    let _ = pipe.flush().await;
                    stdin = None;
                }
            }
        }
        drop(stdin);
        let status = child.wait().await.map_err(io_error)?;
        Ok(ToolOutput {
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&err).into_owned(),
            status: Some(status),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(ToolError::TimedOut {
            program: program.to_path_buf(),
            timeout,
        }),
    }
}
