//! Units an operator writes: sizes, durations and message rates.
//!
//! Operators write `max_bytes = "512 MiB"` and `max_age = "7d"` rather than
//! counting zeros; a bare integer is still accepted (bytes, seconds). Rates
//! come in ThingsBoard's `N:seconds` form (`"200:1,6000:60"`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// A size in bytes, written as an integer or as `"64 KiB"`, `"10MB"`, `"1 GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// `812 B`, `3.4 KiB`, `1.2 GiB`: a size for a person.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = "KiB";
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// A duration, written as an integer number of seconds or as `"500ms"`,
/// `"30s"`, `"15m"`, `"12h"`, `"7d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

/// `"64 KiB"` → (64.0, "KiB"), or `None` if it does not start with a number.
fn number_and_unit(text: &str) -> Option<(f64, &str)> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let (num, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a size (try `64 KiB` or `512MiB`)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}` in `{text}` (use B, KB, KiB, MB, MiB, GB or GiB)"
            ))
        }
    };
    Ok((num * mult as f64) as u64)
}

/// `default`, or in a debug build the milliseconds in the environment
/// variable `var`: integration tests stretch a few of outpost's waits this
/// way to land a kill or a reconnect inside them. A release build never
/// reads the variable.
pub fn test_stretch(var: &str, default: Duration) -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok()) {
        return Duration::from_millis(ms);
    }
    #[cfg(not(debug_assertions))]
    let _ = var;
    default
}

/// `d` from now on tokio's clock; a year from now if `d` cannot be added
/// (a deadline that far is as good as none, and is no panic).
pub fn deadline(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}

/// The longest duration any setting takes: ten years. Anything longer is
/// a typo, and would overflow the clock arithmetic it feeds.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86_400);

fn bounded(d: Duration, text: &dyn fmt::Display) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "`{text}` is longer than the 10 years a duration may be"
        ));
    }
    Ok(d)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (num, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a duration (try `30s`, `15m`, `7d`)"))?;
    let secs = match unit {
        "ms" => num / 1000.0,
        "" | "s" => num,
        "m" | "min" => num * 60.0,
        "h" => num * 3600.0,
        "d" => num * 86_400.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}` (use ms, s, m, h or d)"
            ))
        }
    };
    let d = Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("`{text}` is longer than the 10 years a duration may be"))?;
    bounded(d, &text)
}

/// Message-rate windows in ThingsBoard's `N:seconds` form
/// (`"200:1,6000:60,14000:3600"`: at most 200 messages in any second, 6000
/// in any minute, 14000 in any hour, all at once).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateSpec {
    /// (messages, window).
    pub windows: Vec<(usize, Duration)>,
}

impl RateSpec {
    /// Parses `"N:seconds,N:seconds"`; an empty text is no limit.
    pub fn parse(text: &str) -> Result<RateSpec, String> {
        let mut windows = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (n, secs) = part
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not N:seconds"))?;
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: `{n}` is not a count"))?;
            let secs: u64 = secs
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: `{secs}` is not a number of seconds"))?;
            if n == 0 || secs == 0 {
                return Err(format!("`{part}`: count and seconds must be above zero"));
            }
            let window = bounded(Duration::from_secs(secs), &part)?;
            windows.push((n, window));
        }
        Ok(RateSpec { windows })
    }

    /// Both limits at once (e.g. `messages` and `telemetryMessages`).
    pub fn and(mut self, other: RateSpec) -> RateSpec {
        self.windows.extend(other.windows);
        self
    }

    pub fn is_limited(&self) -> bool {
        !self.windows.is_empty()
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: bytes as an integer, or a string such as \"64 MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration: seconds as an integer, or a string such as \"30s\" or \"7d\"",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("a duration cannot be negative"))?;
                self.visit_u64(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                bounded(Duration::from_secs(v), &v)
                    .map(Seconds)
                    .map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                parse_duration(v).map(Seconds).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Unix seconds as UTC date and time, with `date` and `time` between the
/// date's, the two halves' and the time's fields (`"-", " ", ":"` gives
/// `2026-11-22 09:00:00`; `"", "", ""` gives `20261122090000`). Empty for a
/// second outside the calendar.
pub fn utc_text(second: i64, date: &str, between: &str, time: &str) -> String {
    let Ok(t) = ::time::OffsetDateTime::from_unix_timestamp(second) else {
        return String::new();
    };
    format!(
        "{:04}{date}{:02}{date}{:02}{between}{:02}{time}{:02}{time}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64 KiB"), Ok(65_536));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("12"), Ok(12));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn rates() {
        let r = RateSpec::parse("200:1,6000:60").expect("parse");
        assert_eq!(
            r.windows,
            [
                (200, Duration::from_secs(1)),
                (6000, Duration::from_secs(60))
            ]
        );
        assert!(RateSpec::parse("200").is_err());
        assert!(RateSpec::parse("0:1").is_err());
        assert!(!RateSpec::parse("").expect("empty is no limit").is_limited());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("3 fortnights").is_err());
    }

    #[test]
    fn huge_durations_and_rate_windows_are_refused_not_a_panic() {
        for text in ["99999999999999999999d", "11000000000", "3651d"] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains("10 years"), "{err}");
        }
        assert!(parse_duration("1e30s").is_err());
        let big: Result<Seconds, _> = toml::from_str::<toml::Table>("d = 9223372036854775807")
            .map_err(|e| e.to_string())
            .and_then(|t| {
                t["d"]
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| e.to_string())
            });
        assert!(big.is_err());
        assert!(RateSpec::parse("1:18446744073709551615").is_err());
    }
}
