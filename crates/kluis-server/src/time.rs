//! Wall-clock time as the store keeps it (milliseconds since the Unix epoch), durations as
//! operators write them (`90d`, `12h`), and RFC 3339 for people.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `2026-11-22T10:04:05Z` for a time in milliseconds since the epoch (UTC).
pub fn rfc3339(ms: i64) -> String {
    kluis_core::UtcDateTime::from_unix_ms(ms).to_string()
}

/// Parse a duration such as `90d`, `12h`, `30m` or `45s` into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad =
        || format!("`{s}` is not a duration: write a number and a unit, like 90d, 12h, 30m or 45s");
    let unit = s.chars().last().ok_or_else(bad)?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().map_err(|_| bad())?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale)
        .filter(|&v| v > 0 && v <= 100 * 366 * 86_400)
        .ok_or_else(|| format!("`{s}` is out of range: between 1s and 100 years"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_the_cores_calendar() {
        assert_eq!(rfc3339(951_827_696_000), "2000-02-29T12:34:56Z");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration("2s"), Ok(2));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        for bad in [
            "",
            "d",
            "0s",
            "5",
            "5w",
            "-1d",
            "1.5d",
            "99999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
