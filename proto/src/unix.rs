//! Small facts about the Unix the daemons and fleetctl run on, written once:
//! the time as microseconds since the epoch, and signals by name.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch of `t` (negative before it; saturating).
pub fn unix_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Now, in microseconds since the epoch.
pub fn now_us() -> i64 {
    unix_us(SystemTime::now())
}

/// The name of signal `sig` on Linux (`SIGTERM` for 15); `None` for one
/// without a common name.
pub fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return None,
    })
}

/// `SIGTERM`, or `signal 42` for a signal without a common name.
pub fn signal_text(sig: i32) -> String {
    signal_name(sig).map_or_else(|| format!("signal {sig}"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_and_signals() {
        assert_eq!(
            unix_us(UNIX_EPOCH + Duration::from_micros(1_500_000)),
            1_500_000
        );
        assert_eq!(unix_us(UNIX_EPOCH - Duration::from_micros(7)), -7);
        assert!(now_us() > 1_700_000_000_000_000);
        assert_eq!(signal_text(libc_sigterm()), "SIGTERM");
        assert_eq!(signal_text(14), "SIGALRM");
        assert_eq!(signal_text(42), "signal 42");
    }

    fn libc_sigterm() -> i32 {
        15
    }
}
