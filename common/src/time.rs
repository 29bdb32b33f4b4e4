//! Wall-clock helpers. Queue times are stored as Unix seconds (UTC).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Formats Unix microseconds as RFC 3339 in UTC, as the log lines'
/// timestamps and `next_retry_at`: `2025-11-16T10:30:45.623456+00:00`.
pub fn rfc3339_micros(unix_micros: u64) -> String {
    Rfc3339Micros(unix_micros).to_string()
}

/// [`rfc3339_micros`] as it is written, for a log line that is written
/// without a string of its own.
pub struct Rfc3339Micros(pub u64);

impl std::fmt::Display for Rfc3339Micros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unix_micros = self.0;
        let secs = unix_micros / 1_000_000;
        let days = secs / 86_400;
        let secs_of_day = secs % 86_400;
        let (year, month, day) = civil_from_days(days as i64);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
            secs_of_day / 3600,
            (secs_of_day / 60) % 60,
            secs_of_day % 60,
            unix_micros % 1_000_000
        )
    }
}

/// [`rfc3339_micros`] of Unix seconds.
pub fn rfc3339(unix_secs: u64) -> String {
    rfc3339_micros(unix_secs.saturating_mul(1_000_000))
}

/// Microseconds since the Unix epoch, now.
pub fn unix_now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// The RFC 3164 timestamp of a syslog line (UTC): `Nov 16 10:10:45`,
/// the day padded with a space as syslog files have it.
pub fn syslog_timestamp(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (_, month, day) = civil_from_days(days as i64);
    format!(
        "{} {day:2} {:02}:{:02}:{:02}",
        MONTHS[(month - 1) as usize],
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    )
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Formats Unix seconds as an RFC 5322 date in UTC: `Mon, 23 Nov 2026 09:15:00 +0000`.
pub fn rfc5322_date(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let weekday = DAYS[(days % 7) as usize];
    format!(
        "{weekday}, {day:02} {} {year:04} {:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    )
}

/// Formats Unix seconds the way `mailq` shows arrival times: `Mon Nov 23 09:15:00` (UTC).
pub fn short_date(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (_, month, day) = civil_from_days(days as i64);
    format!(
        "{} {} {day:2} {:02}:{:02}:{:02}",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs_of_day / 3600,
        (secs_of_day / 60) % 60,
        secs_of_day % 60
    )
}

/// Converts days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_763_287_845),
            "Sun, 16 Nov 2025 10:10:45 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(short_date(1_763_287_845), "Sun Nov 16 10:10:45");
        assert_eq!(short_date(0), "Thu Jan  1 00:00:00");
        assert_eq!(
            rfc3339_micros(1_763_289_045_623_456),
            "2025-11-16T10:30:45.623456+00:00"
        );
        assert_eq!(syslog_timestamp(1_763_287_845), "Nov 16 10:10:45");
        assert_eq!(syslog_timestamp(0), "Jan  1 00:00:00");
    }
}
