//! [`Duration`]: a length of time written as `250ms`, `5s`, `30m` or `1h30m`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A length of time with millisecond precision, written as whole numbers of
/// hours, minutes, seconds and milliseconds: `250ms`, `5s`, `30m`, `1h30m`.
///
/// It prints in canonical form, largest unit first and each unit once
/// (`90m` prints as `1h30m`, zero as `0s`), so a canonical text survives a
/// round trip unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Duration {
    millis: u64,
}

/// Why a text is not a [`Duration`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {reason}")]
pub struct DurationError {
    text: String,
    reason: String,
}

const UNITS_HINT: &str = "use whole numbers with h, m, s or ms, as in \"1h30m\"";

impl Duration {
    /// A duration of `millis` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// A duration of `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Self { millis: secs.saturating_mul(1000) }
    }

    /// The length in milliseconds.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// The same length as a [`std::time::Duration`].
    pub const fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.millis == 0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(duration: Duration) -> Self {
        duration.as_std()
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| DurationError { text: text.to_string(), reason };
        if text.is_empty() {
            return Err(fail(format!("it is empty; {UNITS_HINT}")));
        }
        let bytes = text.as_bytes();
        let mut millis: u64 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if start == i {
                let rest = &text[i..];
                let shown: String = rest.chars().take(1).collect();
                return Err(fail(format!("expected a number before {shown:?}; {UNITS_HINT}")));
            }
            let number: u64 = text[start..i].parse().map_err(|_| fail(format!("{} is too large", &text[start..i])))?;
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit = &text[unit_start..i];
            let scale = match unit {
                "h" => 3_600_000,
                "m" => 60_000,
                "s" => 1_000,
                "ms" => 1,
                "" if i == bytes.len() => {
                    return Err(fail(format!("{number} has no unit; {UNITS_HINT}, so \"{number}s\" for seconds")))
                }
                "" => {
                    let shown: String = text[i..].chars().take(1).collect();
                    return Err(fail(format!("{shown:?} is not allowed; {UNITS_HINT}")));
                }
                other => return Err(fail(format!("unknown unit {other:?}; {UNITS_HINT}"))),
            };
            millis = number
                .checked_mul(scale)
                .and_then(|part| millis.checked_add(part))
                .ok_or_else(|| fail("it is too large".to_string()))?;
        }
        Ok(Self { millis })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.millis;
        for (scale, unit) in [(3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")] {
            let count = rest / scale;
            rest %= scale;
            if count > 0 {
                write!(f, "{count}{unit}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonically() {
        for (text, millis, canonical) in [
            ("250ms", 250, "250ms"),
            ("5s", 5_000, "5s"),
            ("30m", 1_800_000, "30m"),
            ("1h30m", 5_400_000, "1h30m"),
            ("90m", 5_400_000, "1h30m"),
            ("1h0m5s10ms", 3_605_010, "1h5s10ms"),
            ("0s", 0, "0s"),
        ] {
            let duration: Duration = text.parse().unwrap();
            assert_eq!(duration.as_millis(), millis, "{text}");
            assert_eq!(duration.to_string(), canonical, "{text}");
        }
    }

    #[test]
    fn rejects_with_reasons() {
        for (text, message) in [
            ("", "invalid duration \"\": it is empty; use whole numbers with h, m, s or ms, as in \"1h30m\""),
            ("30", "invalid duration \"30\": 30 has no unit; use whole numbers with h, m, s or ms, as in \"1h30m\", so \"30s\" for seconds"),
            ("5x", "invalid duration \"5x\": unknown unit \"x\"; use whole numbers with h, m, s or ms, as in \"1h30m\""),
            ("1.5h", "invalid duration \"1.5h\": \".\" is not allowed; use whole numbers with h, m, s or ms, as in \"1h30m\""),
            ("h", "invalid duration \"h\": expected a number before \"h\"; use whole numbers with h, m, s or ms, as in \"1h30m\""),
            ("99999999999999999999h", "invalid duration \"99999999999999999999h\": 99999999999999999999 is too large"),
            ("9999999999999999h", "invalid duration \"9999999999999999h\": it is too large"),
        ] {
            assert_eq!(text.parse::<Duration>().unwrap_err().to_string(), message);
        }
    }
}
