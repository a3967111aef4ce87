//! Exponential backoff with full jitter for retrying whole remote
//! operations: the n-th wait after consecutive failures is uniform in
//! `[0, min(max, base × 2^n)]`, and a success starts over.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max, failures: 0 }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn failed(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(random_fraction())
    }

    /// The longest wait the next failure can bring.
    pub fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.failures.min(30));
        self.base.saturating_mul(factor).min(self.max)
    }
}

/// A uniform value in [0, 1).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    // Without entropy the wait is the ceiling: still bounded, just not spread.
    if getrandom::fill(&mut bytes).is_err() {
        return 1.0;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_maximum_and_reset_on_success() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let ceiling = backoff.ceiling();
            let wait = backoff.failed();
            assert!(wait <= ceiling, "{wait:?} > {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(backoff.failures(), 8);
        backoff.succeeded();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
        // Jitter spreads the waits.
        let waits: std::collections::HashSet<Duration> =
            (0..20).map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).failed()).collect();
        assert!(waits.len() > 10);
    }
}
