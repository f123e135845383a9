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

/// Time elapsed since a timestamp taken with [`micros_at`] or [`now_micros`].
pub fn since_micros(stamp: u64) -> Duration {
    Duration::from_micros(now_micros().saturating_sub(stamp))
}
