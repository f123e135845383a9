//! The connect-rate limiter shared by every user of the fleet.
//!
//! Every connection attempt — ramp-up, reconnect after a failure — takes the next free slot,
//! so attempts never exceed the configured rate, even when the whole fleet reconnects at once.
//!
//! Why not `governor`: its `until_ready` has every waiter re-check the bucket when a cell frees
//! up, which with 20k users queued behind a dead server is 20k wake-ups per connect. Here each
//! waiter reserves one slot and sleeps exactly once, and the rate can change while it runs.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Pacer {
    state: Mutex<Slots>,
}

#[derive(Debug)]
struct Slots {
    spacing: Duration,
    next_free: Instant,
}

impl Pacer {
    /// A pacer handing out `per_second` slots per second (must be positive and finite).
    pub fn new(per_second: f64) -> Self {
        Self {
            state: Mutex::new(Slots {
                spacing: spacing(per_second),
                next_free: Instant::now(),
            }),
        }
    }

    /// Changes the rate for slots reserved from now on.
    pub fn set_rate(&self, per_second: f64) {
        let mut slots = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let old_spacing = slots.spacing;
        slots.spacing = spacing(per_second);
        // Slots already promised keep their times; the next one follows the new spacing.
        slots.next_free = slots
            .next_free
            .checked_sub(old_spacing)
            .unwrap_or(slots.next_free)
            .max(Instant::now())
            + slots.spacing;
    }

    /// Reserves the next free slot and returns when it starts.
    pub fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut slots = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.next_free.max(now);
        slots.next_free = slot + slots.spacing;
        slot
    }

    /// Waits for the next free slot.
    pub async fn wait(&self) {
        tokio::time::sleep_until(self.reserve()).await;
    }
}

fn spacing(per_second: f64) -> Duration {
    Duration::from_secs_f64(1.0 / per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_rate() {
        let pacer = Pacer::new(10.0);
        let start = Instant::now();
        let slots: Vec<_> = (0..5).map(|_| pacer.reserve() - start).collect();
        assert_eq!(
            slots,
            (0..5)
                .map(|i| Duration::from_millis(100 * i))
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pacer_does_not_bank_slots() {
        let pacer = Pacer::new(10.0);
        tokio::time::advance(Duration::from_secs(5)).await;
        let now = Instant::now();
        assert_eq!(pacer.reserve(), now);
        assert_eq!(pacer.reserve(), now + Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_to_the_next_slot() {
        let pacer = Pacer::new(1.0);
        let start = Instant::now();
        assert_eq!(pacer.reserve(), start);
        pacer.set_rate(100.0);
        assert_eq!(pacer.reserve(), start + Duration::from_millis(10));
    }
}
