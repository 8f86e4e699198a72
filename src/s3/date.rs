//! The date formats S3 speaks: ISO 8601 in XML bodies (`2026-12-07T15:23:24.000Z`), the HTTP
//! date of `Last-Modified` and `Date` headers (`Mon, 07 Dec 2026 15:23:24 GMT`), and the basic
//! ISO 8601 of SigV4's `X-Amz-Date` (`20261207T152324Z`).
//! UTC only, from the Unix clock; no time-zone database.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A moment split into its UTC calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
    /// 0 = Monday.
    weekday: u32,
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian: the era arithmetic of
/// H. Hinnant's `civil_from_days` (public-domain algorithm), written out here.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn civil(t: SystemTime) -> Civil {
    // Before 1970 does not happen for mtimes this server sets; clamp rather than panic.
    let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    Civil {
        year,
        month,
        day,
        hour: rem / 3600,
        minute: rem / 60 % 60,
        second: rem % 60,
        millis: since.subsec_millis(),
        // 1970-01-01 was a Thursday (3 when Monday is 0).
        weekday: (days + 3).rem_euclid(7) as u32,
    }
}

/// `2026-12-07T15:23:24.000Z`: the form of `LastModified` and `Initiated` in S3's XML.
pub fn iso8601(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second, c.millis
    )
}

/// `20261207T152324Z`: the form of `X-Amz-Date` (seconds, no fraction).
pub fn amz_date(t: SystemTime) -> String {
    let c = civil(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// `Mon, 07 Dec 2026 15:23:24 GMT`: the HTTP date (RFC 9110's IMF-fixdate) of `Last-Modified`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = civil(t);
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[c.weekday as usize],
        c.day,
        MONTHS[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn known_moments() {
        assert_eq!(iso8601(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(http_date(at(0, 0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        // The moment of a request JuiceFS sent (X-Amz-Date 20261207T152324Z).
        assert_eq!(iso8601(at(1_796_657_004, 209)), "2026-12-07T15:23:24.209Z");
        assert_eq!(amz_date(at(1_796_657_004, 209)), "20261207T152324Z");
        assert_eq!(
            http_date(at(1_796_657_004, 0)),
            "Mon, 07 Dec 2026 15:23:24 GMT"
        );
        // A leap day and the turn of a century that is a leap year.
        assert_eq!(iso8601(at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            http_date(at(951_868_799, 0)),
            "Tue, 29 Feb 2000 23:59:59 GMT"
        );
    }

    #[test]
    fn every_day_of_four_centuries_follows_the_last() {
        let (mut y, mut m, mut d) = civil_from_days(0);
        for days in 1..146_097 {
            let next = civil_from_days(days);
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let expect = if d < len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(next, expect, "day {days}");
            (y, m, d) = next;
        }
    }
}
