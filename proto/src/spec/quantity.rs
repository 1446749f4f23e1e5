//! Sizes (`8G`), CPU quotas (`80%`) and durations (`1h30m`): parsing into
//! numbers and printing back in the same form.

use std::time::Duration;

use super::error::InvalidValue;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Smallest `memory_max`: below this nothing but a crash loop fits.
pub const MIN_MEMORY_MAX: u64 = MIB;
/// Largest `memory_max`; far above any Jetson, it only catches typos.
pub const MAX_MEMORY_MAX: u64 = 16 * TIB;
/// Largest CPU quota, 64 cores' worth.
pub const MAX_CPU_QUOTA_PERCENT: u32 = 6400;

/// Size suffixes, all binary, largest first (the order [`format_size`] tries).
const SIZE_UNITS: &[(char, u64)] = &[('T', TIB), ('G', GIB), ('M', MIB), ('K', KIB)];

const SIZE_FIX: &str = "write whole bytes or a whole number with K, M, G or T \
                        (powers of 1024), e.g. \"512M\" or \"8G\"";

/// Parses a memory size: plain bytes (`1048576`) or a whole number with a
/// binary suffix `K`, `M`, `G`, `T` (`8G` = 8 × 1024³ bytes), within
/// [`MIN_MEMORY_MAX`]..=[`MAX_MEMORY_MAX`].
pub fn parse_memory_max(s: &str) -> Result<u64, InvalidValue> {
    let invalid = || InvalidValue::invalid("memory size", s, SIZE_FIX);
    let (digits, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let unit = SIZE_UNITS
                .iter()
                .find(|(u, _)| *u == c)
                .map(|(_, n)| *n)
                .ok_or_else(invalid)?;
            (&s[..i], unit)
        }
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let too_large = || {
        InvalidValue::new(
            "memory size",
            s,
            "is too large",
            format!("use at most {}", format_size(MAX_MEMORY_MAX)),
        )
    };
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(too_large)?;
    if bytes > MAX_MEMORY_MAX {
        return Err(too_large());
    }
    if bytes < MIN_MEMORY_MAX {
        return Err(InvalidValue::new(
            "memory size",
            s,
            "is too small",
            format!("use at least {}", format_size(MIN_MEMORY_MAX)),
        ));
    }
    Ok(bytes)
}

/// Prints bytes in the largest unit that divides them exactly: `8G`,
/// `1536M`, `1000` (plain bytes).
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in SIZE_UNITS {
        if bytes != 0 && bytes.is_multiple_of(*size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Parses a CPU quota, a whole percentage of one core: `80%`, `400%` (four
/// cores), 1..=[`MAX_CPU_QUOTA_PERCENT`].
pub fn parse_cpu_quota(s: &str) -> Result<u32, InvalidValue> {
    let fix = format!(
        "write a whole percentage of one core between 1% and {MAX_CPU_QUOTA_PERCENT}%, \
         e.g. \"80%\" or \"400%\" for four cores"
    );
    let percent = s
        .strip_suffix('%')
        .filter(|d| !d.is_empty() && d.len() <= 5 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u32>().ok())
        .filter(|p| (1..=MAX_CPU_QUOTA_PERCENT).contains(p));
    percent.ok_or_else(|| InvalidValue::invalid("CPU quota", s, fix))
}

/// Duration units, largest first; a duration names each at most once, in
/// this order.
const DURATION_UNITS: &[(&str, u64)] = &[
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// The fix for a duration with bad syntax.
pub(crate) const DURATION_FIX: &str = "write whole numbers with units d, h, m, s or ms, \
                                        largest first, e.g. \"30s\", \"1h30m\" or \"500ms\"";

/// Parses a duration: one or more `<whole number><unit>` with units `d`,
/// `h`, `m`, `s`, `ms`, each at most once, largest first (`2d`, `1h30m`,
/// `500ms`, `0s`). A bare number is refused: it would be a guess between
/// seconds and milliseconds. Field rules (bounds, zero) are the caller's.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total: u64 = 0;
    // Index into DURATION_UNITS of the next unit allowed.
    let mut next_unit = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 12 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let position = DURATION_UNITS[next_unit..]
            .iter()
            .position(|(u, _)| *u == unit)?;
        let millis = DURATION_UNITS[next_unit + position].1;
        next_unit += position + 1;
        total = total.checked_add(number.checked_mul(millis)?)?;
    }
    Some(Duration::from_millis(total))
}

/// Prints a duration in the form [`parse_duration`] reads: `1h30m`, `500ms`,
/// `0s`. Below a millisecond is dropped (fleet's durations never have any).
pub fn format_duration(d: Duration) -> String {
    let mut millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in DURATION_UNITS {
        if millis >= *size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary() {
        assert_eq!(parse_memory_max("8G").unwrap(), 8 * GIB);
        assert_eq!(parse_memory_max("512M").unwrap(), 512 * MIB);
        assert_eq!(parse_memory_max("1024K").unwrap(), MIB);
        assert_eq!(parse_memory_max("2T").unwrap(), 2 * TIB);
        assert_eq!(parse_memory_max("1048576").unwrap(), MIB);
        assert_eq!(parse_memory_max("16T").unwrap(), MAX_MEMORY_MAX);
    }

    #[test]
    fn sizes_refuse_other_forms() {
        for bad in [
            "", "G", "8GB", "8g", "8 G", " 8G", "8G ", "1.5G", "-1G", "+8G", "8Gi", "0x10", "8P",
            "８G",
        ] {
            let err = parse_memory_max(bad).unwrap_err();
            assert!(err.to_string().contains("is invalid"), "{bad:?}: {err}");
        }
        assert_eq!(
            parse_memory_max("8GB").unwrap_err().to_string(),
            "memory size \"8GB\" is invalid: write whole bytes or a whole number with K, M, G \
             or T (powers of 1024), e.g. \"512M\" or \"8G\""
        );
    }

    #[test]
    fn sizes_have_bounds() {
        assert_eq!(
            parse_memory_max("17T").unwrap_err().to_string(),
            "memory size \"17T\" is too large: use at most 16T"
        );
        assert_eq!(
            parse_memory_max("99999999999999999999999")
                .unwrap_err()
                .to_string(),
            "memory size \"99999999999999999999999\" is too large: use at most 16T"
        );
        // Overflows u64 once multiplied.
        assert!(parse_memory_max("18014398509481984K").is_err());
        assert_eq!(
            parse_memory_max("1023K").unwrap_err().to_string(),
            "memory size \"1023K\" is too small: use at least 1M"
        );
        assert!(parse_memory_max("0").is_err());
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(format_size(8 * GIB), "8G");
        assert_eq!(format_size(1536 * MIB), "1536M");
        assert_eq!(format_size(3 * TIB), "3T");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        for bytes in [MIB, 3 * MIB + 5, 7 * GIB, MAX_MEMORY_MAX] {
            assert_eq!(parse_memory_max(&format_size(bytes)).unwrap(), bytes);
        }
    }

    #[test]
    fn cpu_quotas_are_whole_percentages() {
        assert_eq!(parse_cpu_quota("80%").unwrap(), 80);
        assert_eq!(parse_cpu_quota("1%").unwrap(), 1);
        assert_eq!(parse_cpu_quota("6400%").unwrap(), 6400);
        for bad in [
            "",
            "%",
            "80",
            "0%",
            "6401%",
            "12.5%",
            "-5%",
            " 80%",
            "80 %",
            "99999999999%",
        ] {
            assert!(parse_cpu_quota(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_cpu_quota("80").unwrap_err().to_string(),
            "CPU quota \"80\" is invalid: write a whole percentage of one core between 1% and \
             6400%, e.g. \"80%\" or \"400%\" for four cores"
        );
    }

    #[test]
    fn durations_add_up_their_parts() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("12h"), Duration::from_secs(12 * 3600));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("2d"), Duration::from_secs(2 * 86400));
        assert_eq!(d("1d2h3m4s5ms"), Duration::from_millis(93_784_005));
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("90m"), Duration::from_secs(5400));
    }

    #[test]
    fn durations_refuse_ambiguous_or_malformed_text() {
        for bad in [
            "",
            "5",
            "s",
            "5 s",
            " 5s",
            "5s ",
            "5S",
            "5sec",
            "1.5h",
            "-5s",
            "30m1h",
            "1h1h",
            "5ms3s",
            "1w",
            "5us",
            "h5",
            "1h 30m",
            "9999999999999s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        // Overflow of u64 milliseconds.
        assert_eq!(parse_duration("999999999999d"), None);
    }

    #[test]
    fn durations_print_in_the_form_they_are_read() {
        let f = |ms| format_duration(Duration::from_millis(ms));
        assert_eq!(f(5000), "5s");
        assert_eq!(f(5_400_000), "1h30m");
        assert_eq!(f(500), "500ms");
        assert_eq!(f(0), "0s");
        assert_eq!(f(93_784_005), "1d2h3m4s5ms");
        for ms in [1, 999, 1000, 61_000, 86_400_000, 31_536_000_000] {
            assert_eq!(parse_duration(&f(ms)), Some(Duration::from_millis(ms)));
        }
    }
}
