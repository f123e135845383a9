//! The connect-rate limiter shared by every user of the fleet.
//!
//! Every connection attempt — ramp-up, reconnect after a failure — first acquires a permit,
//! so attempts never exceed the configured rate, even when the whole fleet reconnects at once.
//!
//! Waiters queue in a FIFO semaphore; one granting task hands out permits at the rate, and
//! only while someone waits. A waiter holds nothing until it is granted: one that gives up
//! (the fleet paused, the user was ramped down or shut down) drops out of the queue and costs
//! nothing, and the next waiter gets the next slot. Each waiter is woken exactly once.
//!
//! Why not `governor`: its `until_ready` has every waiter re-check the bucket when a cell frees
//! up, which with 20k users queued behind a dead server is 20k wake-ups per connect. Why not a
//! reserved slot per waiter (this module's first design): a reservation made before waiting
//! outlives the decision it was made for — pausing mid-ramp still connected every user that
//! held one, and cancelled reservations left phantom slots that later connects queued behind.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::clock;

/// The rate limiter; its granting task ends when it is dropped.
#[derive(Debug)]
pub struct Pacer {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

#[derive(Debug)]
struct Shared {
    permits: Semaphore,
    /// Users inside [`Pacer::acquire`] right now.
    waiting: AtomicUsize,
    /// Signalled when someone starts waiting or the rate changes.
    wake: Notify,
    spacing: Mutex<Duration>,
}

impl Pacer {
    /// A pacer handing out `per_second` permits per second (positive and finite); it must be
    /// created inside a tokio runtime, which runs its granting task.
    pub fn new(per_second: f64) -> Self {
        let shared = Arc::new(Shared {
            permits: Semaphore::new(0),
            waiting: AtomicUsize::new(0),
            wake: Notify::new(),
            spacing: Mutex::new(spacing(per_second)),
        });
        let stop = CancellationToken::new();
        tokio::spawn(grant(Arc::clone(&shared), stop.clone()));
        Self {
            shared,
            _stop: stop.drop_guard(),
        }
    }

    /// Changes the rate; the next permit follows the new spacing from the last one granted.
    pub fn set_rate(&self, per_second: f64) {
        *self
            .shared
            .spacing
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = spacing(per_second);
        self.shared.wake.notify_one();
    }

    /// Waits for a permit to connect. Dropping the future gives up the place in the queue.
    pub async fn acquire(&self) {
        let _waiting = Waiting::enter(&self.shared);
        // The semaphore is never closed; should it ever be, going ahead is the safe failure.
        if let Ok(permit) = self.shared.permits.acquire().await {
            permit.forget();
        }
    }

    /// Waits for a permit for one of `wanted` (at least one) connects, and takes as many
    /// more as the same grant makes available at once (rates above the timer's resolution are
    /// granted in batches); returns how many it took. The supervisor admits new users with it,
    /// so that a user costs nothing until it may connect.
    pub async fn acquire_up_to(&self, wanted: usize) -> usize {
        let wanted = wanted.max(1);
        let _waiting = Waiting::enter_many(&self.shared, wanted);
        if let Ok(permit) = self.shared.permits.acquire().await {
            permit.forget();
        }
        let mut taken = 1;
        while taken < wanted {
            match self.shared.permits.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => break,
            }
            taken += 1;
        }
        taken
    }

    /// Users waiting for a permit.
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::Relaxed)
    }
}

/// Counts waiters for as long as they wait (including when their future is dropped).
struct Waiting<'a>(&'a Shared, usize);

impl<'a> Waiting<'a> {
    fn enter(shared: &'a Shared) -> Self {
        Waiting::enter_many(shared, 1)
    }

    fn enter_many(shared: &'a Shared, count: usize) -> Self {
        shared.waiting.fetch_add(count, Ordering::Relaxed);
        shared.wake.notify_one();
        Waiting(shared, count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// Grants permits at the rate while anyone waits; sleeps (no timer) while nobody does.
async fn grant(shared: Arc<Shared>, stop: CancellationToken) {
    let spacing = || *shared.spacing.lock().unwrap_or_else(|e| e.into_inner());
    // When the last permit was granted; the next is due one spacing later.
    let mut last: Option<Instant> = None;
    let demand = || {
        shared
            .waiting
            .load(Ordering::Relaxed)
            .saturating_sub(shared.permits.available_permits())
    };
    loop {
        if demand() == 0 {
            if shared.waiting.load(Ordering::Relaxed) == 0 {
                // Granted to a waiter that gave up: nobody may inherit it as a burst.
                shared
                    .permits
                    .forget_permits(shared.permits.available_permits());
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = shared.wake.notified() => {}
            }
            // An idle pacer banks nothing: after a quiet spell the next permit is due now.
            if let (Some(at), Some(floor)) = (last, Instant::now().checked_sub(spacing())) {
                last = Some(at.max(floor));
            }
            continue;
        }
        let gap = spacing();
        let due = last.map_or_else(Instant::now, |at| clock::later(at, gap));
        if due > Instant::now() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep_until(due) => {}
                // A new rate or a new waiter: look again.
                _ = shared.wake.notified() => continue,
            }
        }
        // Slots that fell due while the task slept (rates above the timer's 1 ms resolution
        // are granted in batches), never more than are wanted.
        // Waiters may have given up while this task slept.
        let demand = demand();
        if demand == 0 {
            continue;
        }
        let behind = Instant::now().saturating_duration_since(due);
        let slots = 1 + (behind.as_nanos() / gap.as_nanos().max(1)).min(1 << 20) as usize;
        let granted = slots.min(demand);
        shared.permits.add_permits(granted);
        let extra = u32::try_from(granted - 1).unwrap_or(u32::MAX);
        last = Some(clock::later(due, gap.saturating_mul(extra)));
    }
}

fn spacing(per_second: f64) -> Duration {
    Duration::try_from_secs_f64(1.0 / per_second).unwrap_or(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spawns `n` waiters; each reports (its number, when it got its permit).
    fn waiters(
        pacer: &Arc<Pacer>,
        n: usize,
    ) -> (
        Vec<tokio::task::JoinHandle<()>>,
        tokio::sync::mpsc::UnboundedReceiver<(usize, Duration)>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let handles = (0..n)
            .map(|i| {
                let (pacer, tx) = (Arc::clone(pacer), tx.clone());
                tokio::spawn(async move {
                    pacer.acquire().await;
                    let _ = tx.send((i, start.elapsed()));
                })
            })
            .collect();
        (handles, rx)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn permits_are_spaced_by_the_rate_in_arrival_order() {
        let pacer = Arc::new(Pacer::new(10.0));
        let (_handles, mut got) = waiters(&pacer, 5);
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(got.recv().await.expect("a permit"));
        }
        let expected: Vec<_> = (0..5)
            .map(|i| (i, Duration::from_millis(100 * i as u64)))
            .collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pacer_does_not_bank_permits() {
        let pacer = Arc::new(Pacer::new(10.0));
        tokio::time::advance(Duration::from_secs(5)).await;
        let (_handles, mut got) = waiters(&pacer, 3);
        let times: Vec<_> = [
            got.recv().await.expect("1"),
            got.recv().await.expect("2"),
            got.recv().await.expect("3"),
        ]
        .iter()
        .map(|(_, at)| *at)
        .collect();
        assert_eq!(
            times,
            [0, 100, 200].map(Duration::from_millis),
            "one at once, then at the rate"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiters_cost_nothing() {
        // One permit a second, ten waiters; nine give up (paused, ramped down): the last one
        // is next in line, not behind nine phantom slots.
        let pacer = Arc::new(Pacer::new(1.0));
        let (handles, mut got) = waiters(&pacer, 10);
        assert_eq!(got.recv().await, Some((0, Duration::ZERO)));
        settle().await;
        for handle in &handles[1..9] {
            handle.abort();
        }
        settle().await;
        assert_eq!(pacer.waiting(), 1);
        assert_eq!(got.recv().await, Some((9, Duration::from_secs(1))));
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_waiting_means_no_permits_are_handed_out() {
        let pacer = Arc::new(Pacer::new(100.0));
        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
        assert_eq!(pacer.shared.permits.available_permits(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_to_the_next_permit() {
        let pacer = Arc::new(Pacer::new(1.0));
        let (_handles, mut got) = waiters(&pacer, 2);
        assert_eq!(got.recv().await, Some((0, Duration::ZERO)));
        settle().await;
        pacer.set_rate(100.0);
        assert_eq!(got.recv().await, Some((1, Duration::from_millis(10))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waiter_takes_what_one_grant_makes_available_at_the_rate() {
        let pacer = Pacer::new(10_000.0);
        let start = Instant::now();
        let mut taken = 0;
        while taken < 1000 {
            taken += pacer.acquire_up_to(1000 - taken).await;
        }
        assert_eq!(taken, 1000);
        let took = start.elapsed();
        assert!(took >= Duration::from_micros(99_900), "{took:?}");
        assert!(took <= Duration::from_millis(102), "{took:?}");
        assert_eq!(pacer.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn high_rates_are_granted_in_batches_without_exceeding_the_rate() {
        // 100k/s is a permit every 10 µs, far below the timer's 1 ms resolution.
        let pacer = Arc::new(Pacer::new(100_000.0));
        let (_handles, mut got) = waiters(&pacer, 1000);
        let mut last = Duration::ZERO;
        for _ in 0..1000 {
            last = got.recv().await.expect("a permit").1;
        }
        assert!(last >= Duration::from_micros(9_990), "{last:?}");
        assert!(last <= Duration::from_millis(12), "{last:?}");
    }
}
