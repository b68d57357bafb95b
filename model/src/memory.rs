//! [`Memory`]: a memory limit written as `512Mi`, `1Gi` or `1G`.

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A memory limit in bytes, written as a whole number with an optional unit
/// as Kubernetes writes it: binary `Ki`, `Mi`, `Gi`, `Ti` or decimal `k`,
/// `M`, `G`, `T`. A YAML number means bytes.
///
/// It prints with the largest unit that divides it exactly, binary first
/// (`1024Mi` prints as `1Gi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Memory {
    bytes: u64,
}

/// Why a text is not a [`Memory`] limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid memory {text:?}: write a whole number with a unit, as in \"512Mi\" or \"2Gi\"")]
pub struct MemoryError {
    text: String,
}

const UNITS: [(&str, u64); 8] = [
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
    ("T", 1_000_000_000_000),
    ("G", 1_000_000_000),
    ("M", 1_000_000),
    ("k", 1_000),
];

impl Memory {
    /// A limit of `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        Self { bytes }
    }

    /// The limit in bytes.
    pub const fn bytes(self) -> u64 {
        self.bytes
    }
}

impl FromStr for Memory {
    type Err = MemoryError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || MemoryError { text: text.to_string() };
        let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(digits_end);
        if number.is_empty() {
            return Err(fail());
        }
        let number: u64 = number.parse().map_err(|_| fail())?;
        let scale = match unit {
            "" => 1,
            "K" => 1_000,
            unit => UNITS.iter().find(|(name, _)| *name == unit).map(|(_, scale)| *scale).ok_or_else(fail)?,
        };
        let bytes = number.checked_mul(scale).ok_or_else(fail)?;
        Ok(Self { bytes })
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bytes > 0 {
            for (unit, scale) in UNITS {
                let (count, rest) = (self.bytes / scale, self.bytes % scale);
                if rest == 0 {
                    return write!(f, "{count}{unit}");
                }
            }
        }
        write!(f, "{}", self.bytes)
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Memory;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a memory limit such as \"512Mi\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Memory, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Memory, E> {
                Ok(Memory::from_bytes(v))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for (text, bytes, canonical) in [
            ("512Mi", 512 << 20, "512Mi"),
            ("1024Mi", 1 << 30, "1Gi"),
            ("1G", 1_000_000_000, "1G"),
            ("1500", 1500, "1500"),
            ("2048", 2048, "2Ki"),
            ("0", 0, "0"),
        ] {
            let memory: Memory = text.parse().unwrap();
            assert_eq!(memory.bytes(), bytes);
            assert_eq!(memory.to_string(), canonical);
        }
        for bad in ["", "Mi", "1.5Gi", "12XB", "-1", "99999999999Ti"] {
            assert!(bad.parse::<Memory>().is_err(), "{bad}");
        }
    }
}
