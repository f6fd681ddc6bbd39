//! Calendar dates and times (UTC, proleptic Gregorian) for timestamps, so that every kluis
//! program shows times the same way without a date library.

use std::fmt;

/// A point in time as a UTC calendar date and time of day, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UtcDateTime {
    /// The year (may be before 1970 or negative for far-past times).
    pub year: i64,
    /// 1-12.
    pub month: u8,
    /// 1-31.
    pub day: u8,
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
    /// 0-59.
    pub second: u8,
}

impl UtcDateTime {
    /// The calendar time of `ms` milliseconds since the Unix epoch (Howard Hinnant's
    /// `civil_from_days`).
    pub fn from_unix_ms(ms: i64) -> Self {
        let secs = ms.div_euclid(1000);
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        UtcDateTime {
            year: yoe + era * 400 + i64::from(month <= 2),
            month: month as u8,
            day: day as u8,
            hour: (rem / 3600) as u8,
            minute: (rem % 3600 / 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// `YYYY-MM-DD`.
    pub fn date(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `HH:MM:SS`.
    pub fn time(&self) -> String {
        format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second)
    }
}

/// RFC 3339: `2026-11-22T10:04:05Z`.
impl fmt::Display for UtcDateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}T{}Z", self.date(), self.time())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let t = |ms| UtcDateTime::from_unix_ms(ms).to_string();
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        // A leap day in a year divisible by 400.
        assert_eq!(t(951_827_696_000), "2000-02-29T12:34:56Z");
        assert_eq!(t(-1000), "1969-12-31T23:59:59Z");
        assert_eq!(t(4_102_444_800_000), "2100-01-01T00:00:00Z");
        // 1601-01-01, the earliest modification time the format keeps.
        assert_eq!(t(-11_644_473_600_000), "1601-01-01T00:00:00Z");
        assert_eq!(
            UtcDateTime::from_unix_ms(1_795_340_773_011).date(),
            "2026-11-22"
        );
    }
}
