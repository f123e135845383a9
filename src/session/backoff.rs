//! Reconnect delays: exponential growth, capped, with a configurable share of jitter.
//!
//! The state a user keeps is one attempt counter; the delay is computed when needed, so a
//! fleet of idle users pays nothing for it. With `jitter: 1.0` this is the "full jitter" of
//! AWS's backoff study: uniform in [0, min(max, initial * 2^attempt)).

use std::time::Duration;

use rand::RngExt;

use super::settings::Reconnect;

/// Delay before reconnect attempt number `attempt` (1 for the first retry).
pub fn delay(policy: &Reconnect, attempt: u32) -> Duration {
    delay_with(policy, attempt, rand::rng().random::<f64>())
}

/// [`delay`] with the random draw (in [0, 1)) given, for tests.
pub fn delay_with(policy: &Reconnect, attempt: u32, draw: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let ceiling = policy
        .initial
        .saturating_mul(1u32 << doublings.min(31))
        .min(policy.max);
    ceiling.mul_f64(1.0 - policy.jitter * draw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> Reconnect {
        Reconnect {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter,
        }
    }

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let p = policy(0.0);
        let delays: Vec<_> = (1..=7).map(|a| delay_with(&p, a, 0.5)).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            delays,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(2000),
                ms(2000)
            ]
        );
        assert_eq!(delay_with(&p, u32::MAX, 0.5), ms(2000));
    }

    #[test]
    fn full_jitter_spans_zero_to_ceiling() {
        let p = policy(1.0);
        assert_eq!(delay_with(&p, 3, 0.0), Duration::from_millis(400));
        assert!(delay_with(&p, 3, 0.999) < Duration::from_millis(1));
        for _ in 0..1000 {
            assert!(delay(&p, 3) <= Duration::from_millis(400));
        }
    }
}
