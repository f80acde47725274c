//! Durations as users type them on the command line (`30`, `0.5`, `500ms`, `1h30m`) and as pglock
//! prints them back in messages, and the one way to turn one into a deadline.
//!
//! Every duration pglock takes from a flag, a variable or a connection string is at most [`MAX`]:
//! a bound far beyond any wait or period a job needs, and far below what `Instant`, `Duration`
//! arithmetic and PostgreSQL's `interval` can hold, so that a typo of twenty digits is a usage
//! error instead of a panic somewhere later.

use std::time::{Duration, Instant};

/// The longest duration pglock accepts anywhere: 3650 days, about ten years.
pub const MAX: Duration = Duration::from_secs(3650 * 86400);

/// How [`MAX`] is written in messages and documentation.
pub const MAX_TEXT: &str = "3650d (about 10 years)";

const HINT: &str = "use seconds (30, 0.5) or units (500ms, 30s, 10m, 1h, 1h30m)";

/// The units, largest first.
const UNITS: &[(&str, f64)] = &[
    ("d", 86400.0),
    ("h", 3600.0),
    ("m", 60.0),
    ("s", 1.0),
    ("ms", 0.001),
];

/// Parses a duration. A bare number is seconds, fractions allowed; otherwise a sequence of
/// number+unit pairs (`d`, `h`, `m`, `s`, `ms`) that add up, largest unit first and each unit at
/// most once, so that a typo such as `1m1h` is not silently read as 61 minutes.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(format!("empty duration: {HINT}"));
    }
    if s.starts_with('-') {
        return Err(format!("'{text}' is negative: {HINT}"));
    }
    let bad = || format!("'{text}' is not a duration: {HINT}");
    let mut total = 0f64;
    let mut rest = s;
    // Index in UNITS of the last unit seen: the next one must come after it.
    let mut last: Option<usize> = None;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = if unit.is_empty() && num_len == s.len() {
            // A bare number means seconds, but only on its own: "1h30" is ambiguous.
            1.0
        } else {
            let at = UNITS.iter().position(|(u, _)| *u == unit).ok_or_else(bad)?;
            if last.is_some_and(|l| at <= l) {
                return Err(format!(
                    "'{text}' is not a duration: give each unit once, largest first (1h30m, \
                     2m30s)"
                ));
            }
            last = Some(at);
            UNITS[at].1
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    // Compared as a float, before it becomes a Duration: `inf` and 1e300 are too long as well.
    if total > MAX.as_secs_f64() {
        return Err(format!("'{text}' is too long: at most {MAX_TEXT}"));
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("'{text}' is too long"))
}

/// `at + d`, for a deadline: never panics. Durations pglock accepts stay far below what
/// `Instant` can hold, but sums of them are computed in many places; a sum the clock cannot
/// represent is shortened until it can, which for any real clock is a deadline years away.
pub fn after(at: Instant, d: Duration) -> Instant {
    let mut d = d;
    loop {
        if let Some(t) = at.checked_add(d) {
            return t;
        }
        d /= 2;
    }
}

/// Formats a duration compactly for messages: `250ms`, `10s`, `1.5s`, `2h13m`, `3m05s`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        let tenths = (ms % 1000) / 100;
        return if tenths == 0 {
            format!("{secs}s")
        } else {
            format!("{secs}.{tenths}s")
        };
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, s) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{m}m{s:02}s"),
        (_, _) if h >= 24 => format!("{}d{}h", h / 24, h % 24),
        _ => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        let cases = [
            ("30", 30_000),
            ("0.5", 500),
            ("500ms", 500),
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("1m30.5s", 90_500),
            ("0", 0),
            (" 2s ", 2_000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in [
            "", "-1", "-5s", "abc", "5x", "1.2.3", "1h30", "s", "1e3", "inf", "nan",
        ] {
            assert!(parse(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn units_go_from_largest_to_smallest_once_each() {
        assert_eq!(parse("1d2h3m4s5ms"), Ok(Duration::from_millis(93_784_005)));
        for text in ["1m1h", "30s1m", "1h1h", "5s5s", "1ms1s", "1s1ms1s"] {
            let err = parse(text).unwrap_err();
            assert!(err.contains("largest first"), "{text}: {err}");
        }
    }

    #[test]
    fn refuses_more_than_the_maximum() {
        assert_eq!(parse("3650d"), Ok(MAX));
        for text in [
            "3650d1ms",
            "3651d",
            "9999999999999999999",
            "315360001",
            "99999999999999999999999999999999999999999h",
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains("at most 3650d"), "{text}: {err}");
        }
        // Far beyond anything f64 holds: the digits parse to infinity, which is too long too.
        assert!(parse(&"9".repeat(400)).unwrap_err().contains("at most"));
    }

    #[test]
    fn after_never_overflows() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(after(now, Duration::MAX) > now);
    }

    proptest::proptest! {
        /// Whatever a user types, parse answers: a duration within MAX, or a message.
        #[test]
        fn parse_never_panics(text in "\\PC*") {
            if let Ok(d) = parse(&text) {
                proptest::prop_assert!(d <= MAX);
            }
        }

        /// The same over the parser's own alphabet, which reaches its every branch.
        #[test]
        fn parse_of_digits_and_units_never_panics(text in "[0-9.dhms -]{0,40}") {
            if let Ok(d) = parse(&text) {
                proptest::prop_assert!(d <= MAX);
            }
        }

        /// What pglock does with an accepted duration: deadlines from now, the lease's sums and
        /// products, milliseconds for the server, messages.
        #[test]
        fn arithmetic_on_accepted_durations_never_panics(
            a in 0u64..=MAX.as_millis() as u64,
            b in 0u64..=MAX.as_millis() as u64,
        ) {
            let (a, b) = (Duration::from_millis(a), Duration::from_millis(b));
            // Accepted, and read back within a microsecond (the parser counts in f64 seconds).
            let read = parse(&format!("{}ms", a.as_millis())).unwrap();
            proptest::prop_assert!(read.abs_diff(a) < Duration::from_micros(1));
            let now = Instant::now();
            proptest::prop_assert!(after(now, a) >= now);
            proptest::prop_assert!(after(after(now, a), b) >= now);
            let lease = crate::lease::new(a, b, None);
            proptest::prop_assert!(lease.length >= crate::lease::minimum(a, b));
            proptest::prop_assert!(after(now, lease.length) >= now);
            proptest::prop_assert!(i64::try_from(lease.length.as_millis()).is_ok());
            proptest::prop_assert!(!format(a).is_empty());
        }
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_secs(10)), "10s");
        assert_eq!(format(Duration::from_secs(185)), "3m05s");
        assert_eq!(format(Duration::from_secs(7980)), "2h13m");
        assert_eq!(format(Duration::from_secs(600)), "10m");
    }
}
