//! Durations as users type them on the command line (`30`, `0.5`, `500ms`, `1h30m`) and as pglock
//! prints them back in messages.

use std::time::Duration;

const HINT: &str = "use seconds (30, 0.5) or units (500ms, 30s, 10m, 1h, 1h30m)";

/// Parses a duration. A bare number is seconds, fractions allowed; otherwise a sequence of
/// number+unit pairs (`ms`, `s`, `m`, `h`, `d`) that add up.
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
        let scale = match &rest[..unit_len] {
            // A bare number means seconds, but only on its own: "1h30" is ambiguous.
            "" if total == 0.0 && num_len == s.len() => 1.0,
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
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
    fn formats_compactly() {
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_secs(10)), "10s");
        assert_eq!(format(Duration::from_secs(185)), "3m05s");
        assert_eq!(format(Duration::from_secs(7980)), "2h13m");
        assert_eq!(format(Duration::from_secs(600)), "10m");
    }
}
