//! Following a stream across controller restarts: when to reconnect, how
//! long to wait between attempts, and which log lines were already printed.
//!
//! `events -f` resumes with `from_seq` = the last sequence printed + 1, so
//! the controller replays exactly what was missed. `logs -f` resumes with
//! `since` = the last line's timestamp; lines of that same microsecond come
//! again and are recognised by their journal cursor. The loops themselves
//! live with the commands ([`crate::controller_cmds`]); what is decided
//! here is pure and tested on its own.

use std::collections::HashSet;
use std::time::Duration;

use fleet_proto::v1;
use tonic::Code;

/// The first wait before reconnecting.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(8);

/// Doubling waits between reconnection attempts, from [`FIRST_RETRY`] up
/// to [`MAX_RETRY`]; back to the first once a stream is up again.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_RETRY }
    }
}

impl Backoff {
    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_RETRY);
        wait
    }

    pub fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

/// Whether a followed stream that ended with `status` is worth resuming:
/// the controller went away or restarted (its connection broke, it is
/// shutting down), rather than refusing the request. An answer about the
/// request itself (not found, permission, bad argument, a sequence number
/// no longer kept) ends the command with its exit code.
pub fn is_transient(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable
        | Code::Unknown
        | Code::Internal
        | Code::Cancelled
        | Code::Aborted
        | Code::DeadlineExceeded => true,
        Code::Ok
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::DataLoss
        | Code::Unauthenticated => false,
    }
}

/// Where a followed log is, so a reconnect asks for the right lines and
/// prints none twice.
#[derive(Debug, Default)]
pub struct LogPosition {
    /// The timestamp of the last line printed; 0 before the first.
    last_us: i64,
    /// The lines of that microsecond already printed.
    printed_at_last: HashSet<String>,
    /// Set by a reconnect until a line newer than `last_us` comes.
    resuming: bool,
}

impl LogPosition {
    /// Whether any line was printed yet.
    pub fn started(&self) -> bool {
        self.last_us != 0
    }

    /// The `since` of the request that resumes the stream.
    pub fn since_us(&self) -> i64 {
        self.last_us
    }

    /// A reconnect is under way: lines up to the last one printed come
    /// again and must be skipped.
    pub fn resume(&mut self) {
        self.resuming = true;
    }

    /// Whether `line` is new; records it when it is.
    pub fn admit(&mut self, line: &v1::LogLine) -> bool {
        let key = line_key(line);
        if self.resuming {
            if line.timestamp_unix_us < self.last_us {
                return false;
            }
            if line.timestamp_unix_us == self.last_us && self.printed_at_last.contains(&key) {
                return false;
            }
            if line.timestamp_unix_us > self.last_us {
                self.resuming = false;
            }
        }
        if line.timestamp_unix_us != self.last_us {
            self.last_us = line.timestamp_unix_us;
            self.printed_at_last.clear();
        }
        self.printed_at_last.insert(key);
        true
    }
}

/// A line's identity: its journal cursor, else its text (a line without a
/// cursor is only ever compared with lines of the same microsecond).
fn line_key(line: &v1::LogLine) -> String {
    if line.cursor.is_empty() {
        format!("{}\u{0}{}\u{0}{}", line.pid, line.priority, line.message)
    } else {
        line.cursor.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(us: i64, cursor: &str, message: &str) -> v1::LogLine {
        v1::LogLine {
            timestamp_unix_us: us,
            message: message.to_owned(),
            priority: 6,
            pid: 1,
            cursor: cursor.to_owned(),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..8).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, vec![250, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        b.reset();
        assert_eq!(b.next_wait(), FIRST_RETRY);
    }

    #[test]
    fn only_a_controller_going_away_is_transient() {
        assert!(is_transient(&tonic::Status::unavailable("restarting")));
        assert!(is_transient(&tonic::Status::unknown("h2 protocol error")));
        assert!(!is_transient(&tonic::Status::not_found(
            "no such experiment"
        )));
        assert!(!is_transient(&tonic::Status::permission_denied("viewer")));
        assert!(!is_transient(&tonic::Status::out_of_range("seq 1 is gone")));
    }

    #[test]
    fn a_resumed_log_skips_what_was_printed_by_cursor() {
        let mut p = LogPosition::default();
        assert!(!p.started());
        assert!(p.admit(&line(10, "c1", "a")));
        assert!(p.admit(&line(20, "c2", "b")));
        assert!(p.admit(&line(20, "c3", "c")));
        assert_eq!(p.since_us(), 20);
        p.resume();
        // The controller sends everything since 20 again, and one line
        // older than that.
        assert!(!p.admit(&line(10, "c1", "a")));
        assert!(!p.admit(&line(20, "c2", "b")));
        assert!(!p.admit(&line(20, "c3", "c")));
        // A line of the same microsecond not seen before is new.
        assert!(p.admit(&line(20, "c4", "d")));
        assert!(p.admit(&line(30, "c5", "e")));
        // Out of resuming, lines are taken as they come.
        assert!(p.admit(&line(25, "c6", "late")));
    }

    #[test]
    fn lines_without_cursors_compare_by_text() {
        let mut p = LogPosition::default();
        assert!(p.admit(&line(20, "", "same")));
        p.resume();
        assert!(!p.admit(&line(20, "", "same")));
        assert!(p.admit(&line(20, "", "other")));
    }
}
