//! Durations as users type them on the command line (`30`, `0.5`, `500ms`, `1h30m`) and as pglock
//! prints them back in messages.

use std::time::Duration;

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
    Duration::try_from_secs_f64(total).map_err(|_| format!("'{text}' is too long"))
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
    fn formats_compactly() {
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_secs(10)), "10s");
        assert_eq!(format(Duration::from_secs(185)), "3m05s");
        assert_eq!(format(Duration::from_secs(7980)), "2h13m");
        assert_eq!(format(Duration::from_secs(600)), "10m");
    }
}
