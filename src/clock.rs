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

/// A tokio instant, or none, in 8 bytes (an `Instant` takes 16, and so does an `Option` of
/// one): for the deadlines every connected user holds. Nanoseconds from an origin an hour
/// before the process first made one, so every instant its clocks give from then on (tokio's
/// paused test clocks too, which start at the real time their runtime was built) comes after
/// it; exact for 584 years, and the furthest deadline [`later`] gives is a century.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick(u64);

impl Tick {
    pub const NONE: Tick = Tick(u64::MAX);

    fn origin() -> tokio::time::Instant {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(|| {
            let now = Instant::now();
            now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
        });
        tokio::time::Instant::from_std(origin)
    }

    /// `at` (an instant before the origin, which no clock here gives, as the origin).
    pub fn at(at: tokio::time::Instant) -> Tick {
        let nanos = at.saturating_duration_since(Self::origin()).as_nanos();
        Tick(
            u64::try_from(nanos)
                .unwrap_or(u64::MAX - 1)
                .min(u64::MAX - 1),
        )
    }

    pub fn of(at: Option<tokio::time::Instant>) -> Tick {
        at.map_or(Tick::NONE, Tick::at)
    }

    pub fn get(self) -> Option<tokio::time::Instant> {
        (self != Tick::NONE).then(|| Self::origin() + Duration::from_nanos(self.0))
    }
}

impl Default for Tick {
    fn default() -> Tick {
        Tick::NONE
    }
}

/// A span in 8 bytes (a `Duration` takes 16): whole nanoseconds, up to 584 years (a longer
/// one is as good as never, and is held as that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(u64);

impl Span {
    pub fn of(span: Duration) -> Span {
        Span(u64::try_from(span.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn get(self) -> Duration {
        Duration::from_nanos(self.0)
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

    #[tokio::test(start_paused = true)]
    async fn a_tick_is_the_instant_it_was_made_of() {
        let now = tokio::time::Instant::now();
        for at in [
            now,
            now + Duration::from_nanos(1),
            later(now, Duration::MAX),
        ] {
            assert_eq!(Tick::at(at).get(), Some(at));
        }
        assert_eq!(Tick::of(None).get(), None);
        tokio::time::advance(Duration::from_secs(100_000)).await;
        let later_now = tokio::time::Instant::now();
        assert_eq!(Tick::at(later_now).get(), Some(later_now));
        let span = Duration::new(3, 141_592_653);
        assert_eq!(Span::of(span).get(), span);
    }
}
