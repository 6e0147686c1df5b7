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
        Self::from(std::time::SystemTime::now())
    }

    /// Whole seconds since the epoch plus `nanos` (below one second), without 128-bit arithmetic.
    /// The date and time of day of the last second asked for on this thread are kept: the clock
    /// is read many times a second, and only the nanoseconds change within one.
    fn from_secs_and_nanos(secs: i64, nanos: u32) -> Option<Self> {
        thread_local! {
            static SECOND: std::cell::Cell<(i64, OffsetDateTime)> =
                const { std::cell::Cell::new((0, OffsetDateTime::UNIX_EPOCH)) };
        }
        let (cached, at) = SECOND.get();
        let whole = if cached == secs {
            at
        } else {
            let at = OffsetDateTime::from_unix_timestamp(secs).ok()?;
            SECOND.set((secs, at));
            at
        };
        whole.replace_nanosecond(nanos).ok().map(Self)
    }

    /// The Unix epoch.
    pub const UNIX_EPOCH: Self = Self(OffsetDateTime::UNIX_EPOCH);

    /// From nanoseconds since the Unix epoch; `None` if out of range.
    pub fn from_unix_nanos(nanos: i128) -> Option<Self> {
        // Whole seconds and the rest in 64 bits where they fit (every date of this era): the
        // same instant as `from_unix_timestamp_nanos`, without its 128-bit division.
        if let Ok(n) = i64::try_from(nanos) {
            let sub = u32::try_from(n.rem_euclid(1_000_000_000)).ok()?;
            return Self::from_secs_and_nanos(n.div_euclid(1_000_000_000), sub);
        }
        OffsetDateTime::from_unix_timestamp_nanos(nanos).ok().map(Self)
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(&self) -> i128 {
        self.0.unix_timestamp_nanos()
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> i64 {
        // From whole seconds where that rounds the same way as the nanoseconds would (every
        // time since the epoch): no 128-bit division.
        let secs = self.0.unix_timestamp();
        if secs >= 0 {
            return secs.saturating_mul(1000) + i64::from(self.0.millisecond());
        }
        (self.0.unix_timestamp_nanos() / 1_000_000) as i64
    }

    /// Converts from `time`'s type (normalised to UTC). A value whose UTC date falls past the
    /// years `time` can hold (`9999-12-31T23:59:59-23:59` is in the next year) is clamped to the
    /// first or last instant it can; [`checked_from_offset_date_time`](Self::checked_from_offset_date_time)
    /// says `None` instead.
    pub fn from_offset_date_time(t: OffsetDateTime) -> Self {
        Self::checked_from_offset_date_time(t).unwrap_or_else(|| {
            let edge = if t.year() > 0 {
                time::PrimitiveDateTime::MAX
            } else {
                time::PrimitiveDateTime::MIN
            };
            Self(edge.assume_utc())
        })
    }

    /// Converts from `time`'s type (normalised to UTC); `None` if its UTC date falls past the
    /// years `time` can hold.
    pub fn checked_from_offset_date_time(t: OffsetDateTime) -> Option<Self> {
        t.checked_to_offset(time::UtcOffset::UTC).map(Self)
    }

    /// The value as `time`'s type.
    pub fn as_offset_date_time(&self) -> OffsetDateTime {
        self.0
    }

    /// RFC 3339 text.
    pub fn to_rfc3339(&self) -> String {
        let mut buf = [0u8; RFC3339_MAX];
        self.write_rfc3339(&mut buf).to_owned()
    }

    /// The RFC 3339 text into `buf`, without allocating: exactly what `time`'s `Rfc3339`
    /// formatter writes for a UTC value (four-digit year, the fraction only when not zero and
    /// without trailing zeros, `Z`). Years outside 0..=9999, which RFC 3339 cannot write, read as
    /// the epoch.
    pub(crate) fn write_rfc3339<'b>(&self, buf: &'b mut [u8; RFC3339_MAX]) -> &'b str {
        let t = self.0;
        let year = t.year();
        if !(0..=9999).contains(&year) {
            return "1970-01-01T00:00:00Z";
        }
        fn digits(out: &mut [u8], mut v: u32) {
            for b in out.iter_mut().rev() {
                *b = b'0' + (v % 10) as u8;
                v /= 10;
            }
        }
        digits(&mut buf[0..4], year.unsigned_abs());
        buf[4] = b'-';
        digits(&mut buf[5..7], u32::from(u8::from(t.month())));
        buf[7] = b'-';
        digits(&mut buf[8..10], u32::from(t.day()));
        buf[10] = b'T';
        digits(&mut buf[11..13], u32::from(t.hour()));
        buf[13] = b':';
        digits(&mut buf[14..16], u32::from(t.minute()));
        buf[16] = b':';
        digits(&mut buf[17..19], u32::from(t.second()));
        let mut len = 19;
        let mut nanos = t.nanosecond();
        if nanos != 0 {
            let mut width = 9;
            while nanos.is_multiple_of(10) {
                nanos /= 10;
                width -= 1;
            }
            buf[19] = b'.';
            digits(&mut buf[20..20 + width], nanos);
            len = 20 + width;
        }
        buf[len] = b'Z';
        // Only ASCII digits and separators were written.
        std::str::from_utf8(&buf[..=len]).unwrap_or("1970-01-01T00:00:00Z")
    }

    /// Parses `text` only if it is exactly what [`to_rfc3339`](Self::to_rfc3339) writes for the
    /// instant it names (UTC `Z`, no trailing zeros in the fraction, ...); `None` for any other
    /// spelling, valid RFC 3339 or not. A fixed-layout read with no general parser, for headers
    /// this crate wrote.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // read by the NATS transport
    pub(crate) fn parse_canonical(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() < 20 || b.len() > RFC3339_MAX || b[b.len() - 1] != b'Z' {
            return None;
        }
        fn num(b: &[u8]) -> Option<u32> {
            b.iter().try_fold(0u32, |acc, &d| {
                d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
            })
        }
        let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
        if seps.iter().any(|&(i, c)| b[i] != c) {
            return None;
        }
        let nanos = match &b[19..b.len() - 1] {
            [] => 0,
            [b'.', fraction @ ..] if !fraction.is_empty() && fraction.len() <= 9 && fraction.last() != Some(&b'0') => {
                num(fraction)? * 10u32.pow(9 - fraction.len() as u32)
            }
            _ => return None,
        };
        let month = time::Month::try_from(u8::try_from(num(&b[5..7])?).ok()?).ok()?;
        let date = time::Date::from_calendar_date(
            i32::try_from(num(&b[0..4])?).ok()?,
            month,
            u8::try_from(num(&b[8..10])?).ok()?,
        )
        .ok()?;
        let clock = time::Time::from_hms_nano(
            u8::try_from(num(&b[11..13])?).ok()?,
            u8::try_from(num(&b[14..16])?).ok()?,
            u8::try_from(num(&b[17..19])?).ok()?,
            nanos,
        )
        .ok()?;
        Some(Self(time::PrimitiveDateTime::new(date, clock).assume_utc()))
    }
}

/// The longest RFC 3339 text of a [`Timestamp`]: `9999-12-31T23:59:59.999999999Z`.
pub(crate) const RFC3339_MAX: usize = 30;

impl FromStr for Timestamp {
    type Err = TimestampParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| TimestampParseError {
            input: s.chars().take(64).collect(),
            reason,
        };
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| error(e.to_string()))?;
        // A valid text near the end of year 9999 (or the start of year 0) with an offset can
        // name an instant whose UTC date has a year of five digits (past what `time` holds), or
        // a negative one (which RFC 3339 cannot write back).
        Self::checked_from_offset_date_time(t)
            .filter(|t| (0..=9999).contains(&t.0.year()))
            .ok_or_else(|| error("the instant in UTC falls outside the years 0000 to 9999".to_owned()))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.write_rfc3339(&mut [0u8; RFC3339_MAX]))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl From<std::time::SystemTime> for Timestamp {
    fn from(t: std::time::SystemTime) -> Self {
        // Whole seconds, then the nanoseconds, with the thread's cached second: the same instant
        // as `time`'s conversion, for less than half its arithmetic (no 128-bit division). Every
        // `now` and every stored time of the embedded transport is made here.
        t.duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| Self::from_secs_and_nanos(i64::try_from(d.as_secs()).ok()?, d.subsec_nanos()))
            .unwrap_or_else(|| Self(OffsetDateTime::from(t)))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.write_rfc3339(&mut [0u8; RFC3339_MAX]))
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
    fn from_system_time_is_time_crates_conversion() {
        use std::time::{Duration, UNIX_EPOCH};
        let now = std::time::SystemTime::now();
        let times = [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::new(1, 999_999_999),
            UNIX_EPOCH - Duration::new(86_400 * 365, 5),
            now,
            now + Duration::from_nanos(1),
            now + Duration::new(1, 0),
            now + Duration::new(86_400 * 365 * 30, 123_456_789),
        ];
        for t in times {
            assert_eq!(Timestamp::from(t).0, OffsetDateTime::from(t), "{t:?}");
        }
    }

    #[test]
    fn unix_millis_truncates_the_nanoseconds() {
        for nanos in [
            0_i128,
            1,
            999_999,
            1_000_000,
            1_764_000_000_123_456_789,
            -1,
            -999_999,
            -1_000_000,
            -1_000_001,
            -500_500_000,
            -86_400_000_000_001,
        ] {
            let t = Timestamp::from_unix_nanos(nanos).unwrap();
            assert_eq!(i128::from(t.unix_millis()), nanos / 1_000_000, "{nanos}");
        }
        for t in instants().take(2000) {
            assert_eq!(i128::from(t.unix_millis()), t.unix_nanos() / 1_000_000, "{t}");
        }
    }

    /// The text as `time`'s own RFC 3339 formatter writes it, and whether it is canonical by the
    /// definition `parse_canonical` replaces (parse, format again, compare).
    fn reference(t: &Timestamp) -> String {
        t.0.format(&Rfc3339).unwrap()
    }

    fn canonical_by_reference(text: &str) -> Option<Timestamp> {
        let t: Timestamp = text.parse().ok()?;
        (t.0.year() >= 0 && reference(&t) == text).then_some(t)
    }

    /// Deterministic instants over the whole writable range, with every fraction width.
    fn instants() -> impl Iterator<Item = Timestamp> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let max = Timestamp::parse_canonical("9999-12-31T23:59:59.999999999Z")
            .unwrap()
            .unix_nanos();
        let min = Timestamp::parse_canonical("0000-01-01T00:00:00Z").unwrap().unix_nanos();
        (0..20_000).map(move |i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let span = (max - min) as u128;
            let mut n = min + ((u128::from(x) * 7919) % span) as i128;
            // Fractions with 0..=9 significant digits.
            n -= n.rem_euclid(10i128.pow(i % 10));
            Timestamp::from_unix_nanos(n).unwrap()
        })
    }

    #[test]
    fn the_fast_writer_and_reader_agree_with_time_s_formatter() {
        let special = [
            "1970-01-01T00:00:00Z",
            "2000-02-29T23:59:59.5Z",
            "0000-01-01T00:00:00.000000001Z",
        ];
        let all = instants()
            .chain(special.iter().map(|s| s.parse().unwrap()))
            .chain([Timestamp::now()]);
        for t in all {
            let text = reference(&t);
            assert_eq!(t.to_rfc3339(), text);
            assert_eq!(t.to_string(), text);
            assert_eq!(Timestamp::parse_canonical(&text), Some(t), "{text}");
        }
    }

    #[test]
    fn only_the_canonical_spelling_is_read_fast() {
        let t: Timestamp = "2026-11-24T13:25:00.12Z".parse().unwrap();
        let text = t.to_rfc3339();
        let mut variants = vec![
            "2026-11-24T13:25:00.120Z".to_owned(),
            "2026-11-24T13:25:00.12+00:00".to_owned(),
            "2026-11-24t13:25:00.12Z".to_owned(),
            "2026-11-24T13:25:00.Z".to_owned(),
            "2026-11-24T13:25:00.0Z".to_owned(),
            "2026-11-24T13:25:60Z".to_owned(),
            "2026-02-30T13:25:00Z".to_owned(),
            "2026-00-10T13:25:00Z".to_owned(),
            "2026-11-24T24:00:00Z".to_owned(),
            "+026-11-24T13:25:00Z".to_owned(),
            "2026-11-24T13:25:00.1234567891Z".to_owned(),
            "".to_owned(),
        ];
        // Every single-byte change of the canonical text.
        for i in 0..text.len() {
            for c in [b'0', b'9', b'Z', b'.', b'-', b':', b'T', b' ', 0xff] {
                let mut b = text.clone().into_bytes();
                b[i] = c;
                if let Ok(s) = String::from_utf8(b) {
                    variants.push(s);
                }
            }
            variants.push(format!("{}{}", &text[..i], &text[i + 1..]));
        }
        for v in variants {
            assert_eq!(Timestamp::parse_canonical(&v), canonical_by_reference(&v), "{v:?}");
        }
    }

    /// Valid RFC 3339 whose instant, in UTC, has a year `time` cannot hold: an error, never a
    /// panic (the conversion to UTC used to panic, from any header or payload field parsed as a
    /// timestamp: `X-Occurred-At`, `X-Redrive-Stored`, a saga record's times).
    #[test]
    fn a_text_whose_utc_year_is_out_of_range_is_an_error() {
        for text in [
            "9999-12-31T23:59:59-23:59",
            "9999-12-31T23:00:00.5-01:00",
            "0000-01-01T00:00:00+00:01",
        ] {
            let e = text.parse::<Timestamp>().expect_err(text);
            assert!(e.reason.contains("outside the years"), "{e:?}");
            assert!(
                serde_json::from_str::<Timestamp>(&format!("\"{text}\"")).is_err(),
                "{text}"
            );
        }
        // The edges themselves are in range.
        for text in [
            "9999-12-31T23:59:59-00:00",
            "9999-12-31T22:59:59-01:00",
            "0000-01-01T00:00:00Z",
        ] {
            assert!(text.parse::<Timestamp>().is_ok(), "{text}");
        }
        let time = |text| OffsetDateTime::parse(text, &Rfc3339).expect("valid RFC 3339");
        let late = time("9999-12-31T23:59:59-23:59");
        let minute = time::UtcOffset::from_hms(0, 1, 0).expect("offset");
        let early = time::PrimitiveDateTime::MIN.assume_offset(minute);
        assert_eq!(Timestamp::checked_from_offset_date_time(late), None);
        assert_eq!(Timestamp::checked_from_offset_date_time(early), None);
        assert_eq!(
            Timestamp::from_offset_date_time(late).as_offset_date_time(),
            time::PrimitiveDateTime::MAX.assume_utc()
        );
        assert_eq!(
            Timestamp::from_offset_date_time(early).as_offset_date_time(),
            time::PrimitiveDateTime::MIN.assume_utc()
        );
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in ["", "2026-13-01T00:00:00Z", "2026-11-24", "\u{0}", "9999999999"] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<Timestamp>("12").is_err());
        assert_eq!(Timestamp::from_unix_nanos(i128::MAX), None);
        for n in [
            0,
            1,
            -1,
            -999_999_999,
            -1_000_000_001,
            i128::from(i64::MIN),
            i128::from(i64::MAX),
            253_402_300_799_999_999_999,
        ] {
            assert_eq!(
                Timestamp::from_unix_nanos(n).map(|t| t.0),
                OffsetDateTime::from_unix_timestamp_nanos(n).ok(),
                "{n}"
            );
        }
    }
}
