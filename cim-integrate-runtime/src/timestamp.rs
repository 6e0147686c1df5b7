//! [`Timestamp`]: a UTC instant that travels as RFC 3339 text.

use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A UTC instant with nanosecond precision, serialised as RFC 3339
/// (`2026-11-24T13:25:00.123456789Z`), as in the `X-Occurred-At` header.
///
/// ```
/// use cim_integrate_runtime::Timestamp;
/// let t: Timestamp = "2026-11-24T13:25:00.5+01:00".parse().unwrap();
/// assert_eq!(t.to_string(), "2026-11-24T12:25:00.5Z");
/// assert!("yesterday".parse::<Timestamp>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

/// Why a string is not an RFC 3339 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp `{input}`: {reason}; expected RFC 3339 such as `2026-11-24T13:25:00Z`")]
pub struct TimestampParseError {
    /// The rejected input, cut to 64 characters.
    pub input: String,
    /// What the parser said.
    pub reason: String,
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        // Whole seconds, then the nanoseconds: the same instant as `OffsetDateTime::now_utc`,
        // for less than half its arithmetic (no 128-bit division).
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        since_epoch
            .ok()
            .and_then(|d| {
                let secs = i64::try_from(d.as_secs()).ok()?;
                OffsetDateTime::from_unix_timestamp(secs)
                    .ok()?
                    .replace_nanosecond(d.subsec_nanos())
                    .ok()
            })
            .map_or_else(|| Self(OffsetDateTime::now_utc()), Self)
    }

    /// The Unix epoch.
    pub const UNIX_EPOCH: Self = Self(OffsetDateTime::UNIX_EPOCH);

    /// From nanoseconds since the Unix epoch; `None` if out of range.
    pub fn from_unix_nanos(nanos: i128) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(nanos).ok().map(Self)
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(&self) -> i128 {
        self.0.unix_timestamp_nanos()
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> i64 {
        (self.0.unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// Converts from `time`'s type (normalised to UTC).
    pub fn from_offset_date_time(t: OffsetDateTime) -> Self {
        Self(t.to_offset(time::UtcOffset::UTC))
    }

    /// The value as `time`'s type.
    pub fn as_offset_date_time(&self) -> OffsetDateTime {
        self.0
    }

    /// RFC 3339 text.
    pub fn to_rfc3339(&self) -> String {
        // Formatting a UTC value in years 0..=9999 cannot fail; the epoch is a sane fallback.
        self.0
            .format(&Rfc3339)
            .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
    }
}

impl FromStr for Timestamp {
    type Err = TimestampParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OffsetDateTime::parse(s, &Rfc3339)
            .map(Self::from_offset_date_time)
            .map_err(|e| TimestampParseError {
                input: s.chars().take(64).collect(),
                reason: e.to_string(),
            })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        Self(OffsetDateTime::from(t))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = Timestamp::now();
        let text = t.to_string();
        assert_eq!(text.parse::<Timestamp>().unwrap(), t);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        assert_eq!(Timestamp::from_unix_nanos(t.unix_nanos()), Some(t));
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in ["", "2026-13-01T00:00:00Z", "2026-11-24", "\u{0}", "9999999999"] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Timestamp>("12").is_err());
        assert_eq!(Timestamp::from_unix_nanos(i128::MAX), None);
    }
}
