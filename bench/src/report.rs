//! The one table the tool prints: a row per figure, Xene beside its peer or floor, the
//! ratio, the target of PERF.md and whether it is met.

use std::fmt::Write as _;
use std::time::Duration;

/// One figure of one workload.
#[derive(Debug, Clone)]
pub struct Row {
    pub workload: String,
    pub xene: String,
    pub peer: String,
    pub ratio: String,
    pub target: String,
    /// `None` when the row has no target of its own (context for another row) or when a
    /// figure is missing.
    pub met: Option<bool>,
}

impl Row {
    pub fn new(workload: impl Into<String>) -> Row {
        Row {
            workload: workload.into(),
            xene: String::new(),
            peer: String::new(),
            ratio: String::new(),
            target: String::new(),
            met: None,
        }
    }

    pub fn xene(mut self, value: impl Into<String>) -> Row {
        self.xene = value.into();
        self
    }

    pub fn peer(mut self, value: impl Into<String>) -> Row {
        self.peer = value.into();
        self
    }

    /// Xene's figure divided by the peer's, printed with two decimals.
    pub fn ratio(mut self, xene: f64, peer: f64) -> Row {
        self.ratio = if peer > 0.0 && xene.is_finite() { format!("{:.2}", xene / peer) } else { "–".into() };
        self
    }

    pub fn target(mut self, target: impl Into<String>, met: Option<bool>) -> Row {
        self.target = target.into();
        self.met = met;
        self
    }

    /// A row saying the workload could not be measured, and why (the first 300 characters
    /// of the error, without terminal colours; the whole error goes to stderr).
    pub fn failed(workload: impl Into<String>, error: &anyhow::Error) -> Row {
        let message = strip_colours(&format!("{error:#}")).replace('|', "/").replace('\n', " ");
        let short: String = message.chars().take(300).collect();
        let ellipsis = if short.len() < message.len() { "…" } else { "" };
        Row::new(workload).xene(format!("error: {short}{ellipsis}"))
    }
}

/// `text` without ANSI colour sequences (`ESC [ ... m`), as found in copied server logs.
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The table as Markdown, so it can be pasted into BENCHMARKS.md as printed.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| Workload | Xene | Peer or floor | Ratio | Target | Met? |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for row in rows {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.workload, row.xene, row.peer, row.ratio, row.target, met
        );
    }
    out
}

/// A duration in the unit that reads best: µs, ms or s.
pub fn dur(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else if micros < 10_000_000.0 {
        format!("{:.1} ms", micros / 1e3)
    } else {
        format!("{:.2} s", micros / 1e6)
    }
}

/// A rate with thousands separators.
pub fn rate(per_second: f64, unit: &str) -> String {
    format!("{}{unit}", thousands(per_second.round() as u64))
}

pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(4_370_123), "4,370,123");
    }

    #[test]
    fn errors_lose_colours_and_pipes() {
        let row = Row::failed("W5", &anyhow::anyhow!("\u{1b}[33m WARN\u{1b}[0m a | b"));
        assert_eq!(row.xene, "error:  WARN a / b");
    }

    #[test]
    fn durations_pick_a_unit() {
        assert_eq!(dur(Duration::from_micros(30)), "30 µs");
        assert_eq!(dur(Duration::from_micros(2_100)), "2.1 ms");
        assert_eq!(dur(Duration::from_millis(12_500)), "12.50 s");
    }
}
