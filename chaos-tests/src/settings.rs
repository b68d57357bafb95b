//! The parameters every chaos scenario shares: one seed for every random choice, and the
//! short (CI) or long (soak) variant (DESIGN §14, STYLE 18–19).
//!
//! - `XENE_CHAOS_SEED=S` replays seed `S`; without it a fresh seed is drawn from the clock.
//!   Either way the seed is printed first, so a failed run can be replayed.
//! - `XENE_CHAOS_LONG=1` runs the soak variant instead of the short one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::SeedableRng;

pub const SEED_ENV: &str = "XENE_CHAOS_SEED";
pub const LONG_ENV: &str = "XENE_CHAOS_LONG";

/// The seed and variant of one scenario run.
#[derive(Clone, Copy, Debug)]
pub struct ChaosSettings {
    pub seed: u64,
    pub long: bool,
}

impl ChaosSettings {
    /// Reads the environment and prints the seed and how to replay it.
    pub fn from_env(scenario: &str) -> ChaosSettings {
        let seed = match std::env::var(SEED_ENV) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{SEED_ENV}={text:?} is not a u64 seed")),
            Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
        };
        let long = std::env::var(LONG_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        let settings = ChaosSettings { seed, long };
        println!("{scenario}: seed {seed} ({} variant); replay with {SEED_ENV}={seed}", settings.variant());
        settings
    }

    pub fn variant(&self) -> &'static str {
        if self.long {
            "long"
        } else {
            "short"
        }
    }

    /// `short` in the short variant, `long` in the soak.
    pub fn pick<T>(&self, short: T, long: T) -> T {
        if self.long {
            long
        } else {
            short
        }
    }

    /// The duration of the fault phase.
    pub fn duration(&self, short: Duration, long: Duration) -> Duration {
        self.pick(short, long)
    }

    /// An independent random stream for one actor (the nemesis, a client), derived from the
    /// seed so that each actor's choices do not depend on how the others' interleave.
    pub fn rng(&self, stream: u64) -> StdRng {
        // SplitMix64's finaliser spreads neighbouring stream numbers over the seed space.
        let mut z = self.seed ^ stream.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        StdRng::seed_from_u64(z ^ (z >> 31))
    }
}
