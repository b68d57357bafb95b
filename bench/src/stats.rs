//! Latency samples and their percentiles.

use std::time::Duration;

/// Latencies of one measurement, sorted on demand.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    values: Vec<Duration>,
    sorted: bool,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.values.push(d);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.values.extend(other.values);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `p`-th percentile (0–100), nearest rank; zero when empty.
    pub fn percentile(&mut self, p: f64) -> Duration {
        if self.values.is_empty() {
            return Duration::ZERO;
        }
        if !self.sorted {
            self.values.sort_unstable();
            self.sorted = true;
        }
        let rank = ((p / 100.0) * self.values.len() as f64).ceil() as usize;
        self.values[rank.clamp(1, self.values.len()) - 1]
    }

    pub fn median(&mut self) -> Duration {
        self.percentile(50.0)
    }

    pub fn max(&mut self) -> Duration {
        self.percentile(100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.median(), Duration::from_millis(50));
        assert_eq!(s.percentile(99.0), Duration::from_millis(99));
        assert_eq!(s.max(), Duration::from_millis(100));
        assert_eq!(Samples::default().median(), Duration::ZERO);
    }
}
