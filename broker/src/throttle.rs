//! Rate limits that slow a stream down rather than drop from it (publish rate, dispatch
//! rate): a token bucket per dimension (messages, bytes), refilled continuously at the rate.
//! Taking more than is there leaves the bucket in debt; the caller waits out the debt before
//! taking more (a connection stops reading, a dispatcher pauses), so the long-run rate never
//! passes the limit and nothing is refused.
//!
//! A bucket holds at most a tenth of a period's allowance, so a burst after an idle spell
//! passes the rate by at most that much.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::tenancy::effective::Rate;

/// Share of one period's allowance a full bucket holds.
const BURST_SHARE: f64 = 0.1;

#[derive(Debug)]
struct Bucket {
    per_second: f64,
    capacity: f64,
    tokens: f64,
}

impl Bucket {
    fn new(limit: Option<u64>, period: Duration) -> Option<Bucket> {
        let limit = limit? as f64;
        let per_second = limit / period.as_secs_f64().max(0.001);
        let capacity = (limit * BURST_SHARE).max(1.0);
        Some(Bucket { per_second, capacity, tokens: capacity })
    }

    fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.capacity);
    }

    /// Takes `amount`; how long until the debt (if any) is paid back.
    fn take(&mut self, amount: f64) -> Duration {
        self.tokens -= amount;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

#[derive(Debug)]
struct State {
    rate: Rate,
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    last: Instant,
}

/// A rate limit shared by everything that feeds one stream (every producer of a topic).
#[derive(Debug)]
pub struct Throttle {
    state: Mutex<State>,
}

impl Throttle {
    pub fn new(rate: Rate) -> Throttle {
        Throttle {
            state: Mutex::new(State {
                rate,
                messages: Bucket::new(rate.messages, rate.period),
                bytes: Bucket::new(rate.bytes, rate.period),
                last: Instant::now(),
            }),
        }
    }

    /// Changes the rate (a policy change); the buckets start over when it differs.
    pub fn set(&self, rate: Rate) {
        let mut state = self.state.lock();
        if state.rate != rate {
            *state = State {
                rate,
                messages: Bucket::new(rate.messages, rate.period),
                bytes: Bucket::new(rate.bytes, rate.period),
                last: Instant::now(),
            };
        }
    }

    pub fn is_limited(&self) -> bool {
        self.state.lock().rate.is_limited()
    }

    /// How much may pass now: `Ok(None)` without a message limit, `Ok(Some(n))` for `n`
    /// messages, `Err(wait)` while a bucket is empty or in debt (a reader sizes its next read
    /// by this, so a stream does not go out in bursts beyond the rate).
    pub fn budget(&self) -> Result<Option<u64>, Duration> {
        let mut state = self.state.lock();
        if !state.rate.is_limited() {
            return Ok(None);
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.last);
        state.last = now;
        let mut budget = None;
        let State { messages, bytes, .. } = &mut *state;
        for bucket in [messages, bytes].into_iter().flatten() {
            bucket.refill(elapsed);
        }
        if let Some(bytes) = &state.bytes {
            if bytes.tokens < 1.0 {
                return Err(Duration::from_secs_f64((1.0 - bytes.tokens) / bytes.per_second));
            }
        }
        if let Some(messages) = &state.messages {
            if messages.tokens < 1.0 {
                return Err(Duration::from_secs_f64((1.0 - messages.tokens) / messages.per_second));
            }
            budget = Some(messages.tokens as u64);
        }
        Ok(budget)
    }

    /// Counts `messages` and `bytes` just passed; answers how long the caller waits before
    /// passing more (zero within the rate).
    pub fn acquire(&self, messages: u64, bytes: u64) -> Duration {
        self.acquire_at(messages, bytes, Instant::now())
    }

    fn acquire_at(&self, messages: u64, bytes: u64, now: Instant) -> Duration {
        let mut state = self.state.lock();
        if !state.rate.is_limited() {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(state.last);
        state.last = now;
        let mut wait = Duration::ZERO;
        if let Some(bucket) = &mut state.messages {
            bucket.refill(elapsed);
            wait = wait.max(bucket.take(messages as f64));
        }
        if let Some(bucket) = &mut state.bytes {
            bucket.refill(elapsed);
            wait = wait.max(bucket.take(bytes as f64));
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `count` single messages as fast as the throttle lets them through (simulated
    /// time); returns the time it took.
    fn run(throttle: &Throttle, count: u64, bytes_each: u64) -> Duration {
        let start = Instant::now();
        let mut now = start;
        for _ in 0..count {
            now += throttle.acquire_at(1, bytes_each, now);
        }
        now - start
    }

    #[test]
    fn a_stream_is_held_to_its_rate_not_dropped() {
        let throttle = Throttle::new(Rate { messages: Some(100), bytes: None, period: Duration::from_secs(1) });
        // 1000 messages at 100/s: about 10 s less the initial burst of 10.
        let took = run(&throttle, 1000, 1).as_secs_f64();
        assert!((9.8..=10.0).contains(&took), "took {took}");
        let bytes = Throttle::new(Rate { messages: None, bytes: Some(1000), period: Duration::from_secs(1) });
        let took = run(&bytes, 100, 100).as_secs_f64();
        assert!((9.8..=10.0).contains(&took), "100 x 100 bytes at 1000 B/s: {took}");
    }

    #[test]
    fn no_limit_never_waits_and_a_new_rate_applies() {
        let throttle = Throttle::new(Rate::NONE);
        assert_eq!(run(&throttle, 10_000, 1_000_000), Duration::ZERO);
        throttle.set(Rate { messages: Some(10), bytes: None, period: Duration::from_secs(1) });
        assert_eq!(throttle.budget(), Ok(Some(1)), "a full bucket holds a tenth of a second's 10");
        assert!(run(&throttle, 20, 1) >= Duration::from_millis(1800));
        assert!(throttle.budget().is_err(), "in debt: wait before reading more");
        assert_eq!(Throttle::new(Rate::NONE).budget(), Ok(None));
    }
}
