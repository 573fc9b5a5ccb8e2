//! How long a negatively acknowledged message waits before its redelivery, by how often it
//! was redelivered already: [`RedeliveryBackoff`], and Pulsar's exponential one,
//! [`MultiplierRedeliveryBackoff`]. Plain arithmetic without I/O.

use std::time::Duration;

/// Pulsar's `MultiplierRedeliveryBackoff` defaults: 1 s, doubling, at most 60 s.
pub const DEFAULT_MIN_REDELIVERY_DELAY: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_REDELIVERY_DELAY: Duration = Duration::from_secs(60);
pub const DEFAULT_REDELIVERY_MULTIPLIER: f64 = 2.0;

/// The delay before a redelivery, by the message's redelivery count (Pulsar's
/// `RedeliveryBackoff`).
pub trait RedeliveryBackoff: Send + Sync {
    fn next(&self, redelivery_count: u32) -> Duration;
}

impl std::fmt::Debug for dyn RedeliveryBackoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedeliveryBackoff")
    }
}

/// `min_delay * multiplier ^ redelivery_count`, at most `max_delay`; `min_delay` for a
/// message never redelivered (Pulsar's `MultiplierRedeliveryBackoff.next`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiplierRedeliveryBackoff {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub multiplier: f64,
}

impl Default for MultiplierRedeliveryBackoff {
    fn default() -> Self {
        MultiplierRedeliveryBackoff {
            min_delay: DEFAULT_MIN_REDELIVERY_DELAY,
            max_delay: DEFAULT_MAX_REDELIVERY_DELAY,
            multiplier: DEFAULT_REDELIVERY_MULTIPLIER,
        }
    }
}

impl MultiplierRedeliveryBackoff {
    pub fn new(min_delay: Duration, max_delay: Duration) -> Self {
        MultiplierRedeliveryBackoff { min_delay, max_delay, ..Default::default() }
    }

    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }
}

impl RedeliveryBackoff for MultiplierRedeliveryBackoff {
    fn next(&self, redelivery_count: u32) -> Duration {
        if redelivery_count == 0 || self.min_delay.is_zero() {
            return self.min_delay;
        }
        // Float arithmetic saturates (infinity, NaN from a silly multiplier) before the cap.
        let factor = self.multiplier.powi(i32::try_from(redelivery_count).unwrap_or(i32::MAX));
        let delay = self.min_delay.as_secs_f64() * factor;
        if !delay.is_finite() || delay < 0.0 || delay >= self.max_delay.as_secs_f64() {
            return self.max_delay.max(self.min_delay);
        }
        Duration::from_secs_f64(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_by_the_multiplier_up_to_the_maximum() {
        let backoff = MultiplierRedeliveryBackoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<u128> = (0..6).map(|count| backoff.next(count).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        let tripling = backoff.multiplier(3.0);
        assert_eq!(tripling.next(2), Duration::from_millis(900));
    }

    #[test]
    fn extreme_counts_and_multipliers_stay_within_bounds() {
        let backoff = MultiplierRedeliveryBackoff::default();
        assert_eq!(backoff.next(u32::MAX), DEFAULT_MAX_REDELIVERY_DELAY);
        let odd = MultiplierRedeliveryBackoff::default().multiplier(f64::NAN);
        assert_eq!(odd.next(3), DEFAULT_MAX_REDELIVERY_DELAY);
        let negative = MultiplierRedeliveryBackoff::default().multiplier(-2.0);
        assert!(negative.next(3) <= DEFAULT_MAX_REDELIVERY_DELAY);
    }
}
