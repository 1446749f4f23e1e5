//! Times and durations as people and scripts read them: RFC 3339 in JSON,
//! local wall-clock time and ages (`3h 12m ago`) in tables, and the
//! `--since` argument (`10m`, `1h30m ago`, `2025-06-01T12:00:00Z`).
//!
//! Timestamps are microseconds since the Unix epoch, as on the wire.

use std::time::Duration;

use fleet_proto::spec::parse_duration;

const US_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

pub use fleet_proto::unix::{now_us, unix_us as system_time_us};

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number from [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both fit: day is 1..=31 and month 1..=12.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Date and time of day of a timestamp shifted by `offset_secs`.
fn broken_down(us: i64, offset_secs: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let secs = us.div_euclid(US_PER_SEC) + offset_secs;
    let micros = us.rem_euclid(US_PER_SEC);
    let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
    let tod = secs.rem_euclid(SECS_PER_DAY);
    (
        year,
        month,
        day,
        tod / 3600,
        tod / 60 % 60,
        tod % 60,
        micros,
    )
}

/// RFC 3339 in UTC with microseconds, the form of every time in JSON
/// output: `2025-06-01T12:03:22.123456Z`.
pub fn rfc3339_utc(us: i64) -> String {
    let (y, mo, d, h, mi, s, micros) = broken_down(us, 0);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{micros:06}Z")
}

/// Wall-clock time for a table: `2025-06-01 14:03:22` at the given
/// offset from UTC.
pub fn wall_clock(us: i64, offset_secs: i64) -> String {
    let (y, mo, d, h, mi, s, _) = broken_down(us, offset_secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// The local time zone's offset from UTC at `us`, from the C library (which
/// reads `TZ` and the system's zone); UTC when it cannot tell.
// `time_t` and `c_long` are `i64` on 64-bit Linux but not on every target.
#[allow(clippy::useless_conversion)]
pub fn local_offset_secs(us: i64) -> i64 {
    let t: libc::time_t = match us.div_euclid(US_PER_SEC).try_into() {
        Ok(t) => t,
        Err(_) => return 0,
    };
    // SAFETY: `localtime_r` writes only into the `tm` we pass and reads `t`;
    // fleetctl never changes its environment, so reading TZ cannot race.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            0
        } else {
            i64::from(tm.tm_gmtoff)
        }
    }
}

/// Local wall-clock time of a timestamp, for tables.
pub fn local(us: i64) -> String {
    wall_clock(us, local_offset_secs(us))
}

/// A duration for people, two units at most: `45s`, `12m 5s`, `3h 12m`,
/// `2d 4h`; under a second in milliseconds.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.subsec_millis());
    }
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) if seconds == 0 => format!("{minutes}m"),
        (0, 0, _) => format!("{minutes}m {seconds}s"),
        (0, _, 0) => format!("{hours}h"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        (_, 0, _) => format!("{days}d"),
        _ => format!("{days}d {hours}h"),
    }
}

/// How long ago `us` was, seen at `now_us`: `3h 12m ago`, or `in 5s` for a
/// time ahead of our clock.
pub fn age(us: i64, now_us: i64) -> String {
    let diff = now_us.saturating_sub(us);
    let d = Duration::from_micros(diff.unsigned_abs());
    if diff >= 0 {
        format!("{} ago", human_duration(d))
    } else {
        format!("in {}", human_duration(d))
    }
}

/// Parses `--since`: a duration back from `now_us` (`10m`, `1h30m`, `2d`,
/// optionally followed by ` ago`) or an RFC 3339 time
/// (`2025-06-01T12:00:00Z`, `2025-06-01 14:00:00+02:00`).
pub fn parse_since(s: &str, now_us: i64) -> Result<i64, String> {
    let trimmed = s.trim();
    let relative = trimmed.strip_suffix("ago").map_or(trimmed, str::trim_end);
    if let Some(d) = parse_duration(relative) {
        let back = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        return Ok(now_us.saturating_sub(back));
    }
    parse_rfc3339(trimmed).ok_or_else(|| {
        format!(
            "\"{s}\" is neither a duration nor a time: write how long ago, e.g. \"10m\" or \
             \"1h30m\", or an RFC 3339 time with its offset, e.g. \"2025-06-01T12:00:00Z\""
        )
    })
}

/// Parses an RFC 3339 date-time (`T`, `t` or a space between date and
/// time; `Z` or `±HH:MM` offset required) into microseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(range)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    let year = num(0..4)?;
    let month = u32::try_from(num(5..7)?).ok()?;
    let day = u32::try_from(num(8..10)?).ok()?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // 60 is a leap second; it reads as the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept: String = frac[..digits]
            .chars()
            .chain("000000".chars())
            .take(6)
            .collect();
        micros = kept.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || rb[3] != b':' {
                return None;
            }
            let sign = match rb[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let secs =
        days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + minute * 60 + second
            - offset;
    secs.checked_mul(US_PER_SEC)?.checked_add(micros)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2025-06-01T12:03:22.5Z
    const T: i64 = 1_748_779_402_500_000;

    #[test]
    fn formats_rfc3339_and_wall_clock() {
        assert_eq!(rfc3339_utc(T), "2025-06-01T12:03:22.500000Z");
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(wall_clock(T, 2 * 3600), "2025-06-01 14:03:22");
        assert_eq!(wall_clock(T, -13 * 3600), "2025-05-31 23:03:22");
        // A leap day.
        assert_eq!(
            rfc3339_utc(1_709_164_800 * US_PER_SEC),
            "2024-02-29T00:00:00.000000Z"
        );
    }

    #[test]
    fn parses_rfc3339_with_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("2025-06-01T12:03:22.5Z"), Some(T));
        assert_eq!(parse_rfc3339("2025-06-01 14:03:22.500+02:00"), Some(T));
        assert_eq!(parse_rfc3339("2025-06-01t02:03:22.5-10:00"), Some(T));
        assert_eq!(
            parse_rfc3339(&rfc3339_utc(T + 123_456)),
            Some(T + 123_456),
            "round trip"
        );
        for bad in [
            "2025-06-01T12:03:22",
            "2025-06-01",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-06-01T24:00:00Z",
            "2025-06-01T12:03:22.Z",
            "2025-06-01T12:03:22+0200",
            "yesterday",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn since_takes_durations_back_from_now_or_times() {
        let now = T;
        assert_eq!(parse_since("10m", now), Ok(T - 600 * US_PER_SEC));
        assert_eq!(parse_since("1h30m ago", now), Ok(T - 5400 * US_PER_SEC));
        assert_eq!(parse_since("2d", now), Ok(T - 2 * 86_400 * US_PER_SEC));
        assert_eq!(parse_since("2025-06-01T12:03:22.5Z", 0), Ok(T));
        let err = parse_since("10 minutes", now).unwrap_err();
        assert!(err.contains("\"10m\""), "{err}");
        assert!(parse_since("", now).is_err());
    }

    #[test]
    fn human_durations_and_ages() {
        let s = Duration::from_secs;
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(s(45)), "45s");
        assert_eq!(human_duration(s(600)), "10m");
        assert_eq!(human_duration(s(725)), "12m 5s");
        assert_eq!(human_duration(s(3 * 3600 + 12 * 60 + 9)), "3h 12m");
        assert_eq!(human_duration(s(7200)), "2h");
        assert_eq!(human_duration(s(2 * 86_400 + 4 * 3600 + 5)), "2d 4h");
        assert_eq!(human_duration(s(86_400 + 60)), "1d");
        assert_eq!(age(T - 90 * US_PER_SEC, T), "1m 30s ago");
        assert_eq!(age(T + 5 * US_PER_SEC, T), "in 5s");
    }

    #[test]
    fn local_offset_follows_tz_rules() {
        // Whatever the machine's zone, the offset is within a day.
        assert!(local_offset_secs(T).abs() < 86_400);
    }
}
