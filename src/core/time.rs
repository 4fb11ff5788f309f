//! Event time: milliseconds since the Unix epoch, UTC.

use std::fmt;

/// A point in event time, in milliseconds since the Unix epoch (UTC).
///
/// Milliseconds, not a float, so that timestamps hash, order and compare
/// exactly and every replica derives the same timer due times.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn saturating_add_ms(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    pub fn saturating_sub_ms(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_sub(ms))
    }

    /// RFC 3339 with millisecond precision, e.g. `2026-11-25T16:44:17.000Z`.
    pub fn to_rfc3339(self) -> String {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            None => format!("{}ms", self.0),
        }
    }

    /// Parses an RFC 3339 / ISO 8601 timestamp with an offset (`Z` or `+hh:mm`).
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| Timestamp(t.timestamp_millis()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

pub const MS_PER_SECOND: i64 = 1_000;
pub const MS_PER_DAY: i64 = 86_400_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_with_offsets() {
        let t = Timestamp::parse_rfc3339("2026-11-25T10:00:00.250+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-25T08:00:00.250Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }
}
