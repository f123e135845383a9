//! The process-local monotonic clock that timestamps inside messages are read from.
//!
//! Timestamps that travel inside messages are compared only with this same process's clock, so
//! they are microseconds since a process-wide epoch, never wall-clock time.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds from the process epoch to `at`; instants before the epoch map to 0.
pub fn micros_at(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds from the process epoch to now.
pub fn now_micros() -> u64 {
    micros_at(Instant::now())
}

/// Time from a timestamp taken with [`micros_at`] to `now`; `None` for a stamp after `now`,
/// which this clock never gave (the frame carrying it is wrong).
pub fn elapsed_to(stamp: u64, now: Instant) -> Option<Duration> {
    micros_at(now).checked_sub(stamp).map(Duration::from_micros)
}

/// `at + span`, or, were that beyond what the clock can represent, the furthest instant it
/// can (a century on): deadlines from any input never overflow.
pub fn later<I>(at: I, span: Duration) -> I
where
    I: Copy + CheckedAdd,
{
    at.checked_add_span(span)
        .or_else(|| at.checked_add_span(CENTURY))
        .unwrap_or(at)
}

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The checked addition both `std` and `tokio` instants have.
pub trait CheckedAdd: Sized {
    fn checked_add_span(self, span: Duration) -> Option<Self>;
}

impl CheckedAdd for Instant {
    fn checked_add_span(self, span: Duration) -> Option<Self> {
        self.checked_add(span)
    }
}

impl CheckedAdd for tokio::time::Instant {
    fn checked_add_span(self, span: Duration) -> Option<Self> {
        self.checked_add(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_never_overflows() {
        let now = tokio::time::Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(3600));
    }
}
