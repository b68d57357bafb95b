//! [`Cpu`]: a CPU limit written as cores (`2`, `0.5`) or millicores (`500m`).

use std::fmt;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A CPU limit in thousandths of a core, written as Kubernetes writes it:
/// `2`, `0.5` or `500m`. YAML numbers are accepted too.
///
/// It prints whole cores as a number (`2`) and anything else in millicores
/// (`0.5` prints as `500m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cpu {
    millicores: u64,
}

/// Why a text is not a [`Cpu`] limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid cpu {text:?}: write cores as in \"2\" or \"0.5\", or millicores as in \"500m\"")]
pub struct CpuError {
    text: String,
}

impl Cpu {
    /// A limit of `millicores` thousandths of a core.
    pub const fn from_millicores(millicores: u64) -> Self {
        Self { millicores }
    }

    /// The limit in thousandths of a core.
    pub const fn millicores(self) -> u64 {
        self.millicores
    }
}

impl FromStr for Cpu {
    type Err = CpuError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || CpuError { text: text.to_string() };
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let millicores = if let Some(millis) = text.strip_suffix('m') {
            if !all_digits(millis) {
                return Err(fail());
            }
            millis.parse::<u64>().map_err(|_| fail())?
        } else {
            let (whole, fraction) = match text.split_once('.') {
                Some((whole, fraction)) if all_digits(fraction) => (whole, fraction),
                Some(_) => return Err(fail()),
                None => (text, ""),
            };
            if !all_digits(whole) || fraction.len() > 3 {
                return Err(fail());
            }
            let whole: u64 = whole.parse().map_err(|_| fail())?;
            let fraction: u64 = format!("{fraction:0<3}").parse().map_err(|_| fail())?;
            whole.checked_mul(1000).and_then(|m| m.checked_add(fraction)).ok_or_else(fail)?
        };
        Ok(Self { millicores })
    }
}

impl fmt::Display for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (cores, rest) = (self.millicores / 1000, self.millicores % 1000);
        if rest == 0 {
            write!(f, "{cores}")
        } else {
            write!(f, "{}m", self.millicores)
        }
    }
}

impl Serialize for Cpu {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cpu {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Cpu;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CPU limit such as \"2\", \"0.5\" or \"500m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cpu, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cpu, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpu, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpu, E> {
                self.visit_str(&v.to_string())
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
        for (text, millicores, canonical) in [
            ("2", 2000, "2"),
            ("0.5", 500, "500m"),
            ("500m", 500, "500m"),
            ("1.25", 1250, "1250m"),
            ("2000m", 2000, "2"),
        ] {
            let cpu: Cpu = text.parse().unwrap();
            assert_eq!(cpu.millicores(), millicores);
            assert_eq!(cpu.to_string(), canonical);
        }
        for bad in ["", "m", "1.2345", "two", "-1", "1.", ".5x"] {
            assert!(bad.parse::<Cpu>().is_err(), "{bad}");
        }
    }
}
