//! The report every chaos scenario prints at its end: seed, operations by kind, faults by
//! kind, violations and wall time (issue 8, item 5).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::settings::ChaosSettings;

/// What one scenario run did and found.
#[derive(Debug, Default)]
pub struct ScenarioReport {
    pub scenario: String,
    pub seed: u64,
    pub variant: &'static str,
    /// Operations by kind.
    pub operations: BTreeMap<String, u64>,
    /// Operations whose outcome the client never learned.
    pub indeterminate: u64,
    /// Faults injected, by kind (and target role).
    pub faults: BTreeMap<String, u64>,
    /// Other figures worth a line ("events seen", "retries", ...).
    pub notes: Vec<(String, String)>,
    pub violations: Vec<String>,
    pub wall: Duration,
}

impl ScenarioReport {
    pub fn new(scenario: &str, settings: &ChaosSettings) -> ScenarioReport {
        ScenarioReport {
            scenario: scenario.to_string(),
            seed: settings.seed,
            variant: settings.variant(),
            ..ScenarioReport::default()
        }
    }

    pub fn note(&mut self, name: &str, value: impl fmt::Display) {
        self.notes.push((name.to_string(), value.to_string()));
    }

    pub fn violation(&mut self, what: impl Into<String>) {
        self.violations.push(what.into());
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    let total: u64 = map.values().sum();
    let parts: Vec<String> = map.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    format!("{total} ({})", parts.join(", "))
}

impl fmt::Display for ScenarioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "== chaos report: {} ==", self.scenario)?;
        writeln!(f, "seed: {} ({} variant; replay with XENE_CHAOS_SEED={})", self.seed, self.variant, self.seed)?;
        writeln!(f, "operations: {}; indeterminate {}", counts(&self.operations), self.indeterminate)?;
        writeln!(f, "faults: {}", counts(&self.faults))?;
        for (name, value) in &self.notes {
            writeln!(f, "{name}: {value}")?;
        }
        writeln!(f, "violations: {}", self.violations.len())?;
        for violation in self.violations.iter().take(20) {
            writeln!(f, "  - {violation}")?;
        }
        if self.violations.len() > 20 {
            writeln!(f, "  ... and {} more", self.violations.len() - 20)?;
        }
        write!(f, "wall time: {:.1} s", self.wall.as_secs_f64())
    }
}
