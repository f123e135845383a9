//! Per-thread recording of the per-message measurements, so no lock and no shared cache line
//! is touched per message: on a user thread, counters and histograms go into that thread's
//! buffers (prometheus' local collectors, HdrHistograms of its own), which the thread flushes
//! into the shared registry and windows every [`FLUSH_EVERY`] (a task of this module on each
//! user thread, [`Metrics::buffer_on`]) and once more when the fleet stops. Elsewhere (tests,
//! the API) the shared collectors are written directly. What a reader sees is therefore at
//! most one tick old.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram as Hdr;
use prometheus::local::{LocalHistogram, LocalIntCounter};

use super::{Count, Metrics, new_hdr};

/// A latency measured per message (or per connect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Message round trip (ack), also in the status windows.
    Rtt,
    /// Room delivery, also in the status windows.
    Delivery,
    /// Handshake, also in the status windows.
    Connect,
    Heartbeat,
    SendLag,
}

impl Latency {
    pub const ALL: [Latency; 5] = [
        Latency::Rtt,
        Latency::Delivery,
        Latency::Connect,
        Latency::Heartbeat,
        Latency::SendLag,
    ];
}

/// How often each user thread pushes its buffers out: what a reader sees is at most this old.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One thread's buffers for one [`Metrics`].
struct Local {
    owner: Arc<Metrics>,
    counters: Vec<LocalIntCounter>,
    histograms: Vec<LocalHistogram>,
    /// Samples for the exact-quantile windows, by [`Latency`] index (the first three).
    windows: Vec<Hdr<u64>>,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

impl Metrics {
    /// Makes the calling thread buffer its per-message measurements for `self` (until
    /// [`Metrics::flush_thread`] pushes them out). Call it on each user thread at start.
    pub fn adopt_thread(self: &Arc<Self>) {
        let local = Local {
            owner: Arc::clone(self),
            counters: Count::ALL
                .iter()
                .map(|&c| self.counter(c).local())
                .collect(),
            histograms: Latency::ALL
                .iter()
                .map(|&l| self.histogram(l).local())
                .collect(),
            windows: (0..3).map(|_| new_hdr()).collect(),
        };
        LOCAL.with(|cell| *cell.borrow_mut() = Some(local));
    }

    /// Makes every user thread of `runtimes` buffer its measurements, and flushes each one's
    /// buffers every [`FLUSH_EVERY`] on that thread until `shutdown` (the daemon flushes them
    /// a last time when the users are closed).
    pub async fn buffer_on(
        self: &Arc<Self>,
        runtimes: &crate::runtimes::Runtimes,
        shutdown: &tokio_util::sync::CancellationToken,
    ) {
        let adopting = Arc::clone(self);
        runtimes.on_each(move || adopting.adopt_thread()).await;
        for handle in runtimes.handles() {
            let (metrics, shutdown) = (Arc::clone(self), shutdown.clone());
            handle.spawn(async move {
                let mut ticks = tokio::time::interval(FLUSH_EVERY);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = ticks.tick() => metrics.flush_thread(),
                    }
                }
            });
        }
    }

    /// Pushes the calling thread's buffers into the shared registry and windows.
    pub fn flush_thread(&self) {
        LOCAL.with(|cell| {
            let mut local = cell.borrow_mut();
            let Some(local) = local.as_mut().filter(|l| std::ptr::eq(&*l.owner, self)) else {
                return;
            };
            local.counters.iter().for_each(LocalIntCounter::flush);
            local.histograms.iter().for_each(LocalHistogram::flush);
            for (latency, hdr) in Latency::ALL.iter().zip(local.windows.iter_mut()) {
                if !hdr.is_empty()
                    && let Some(window) = self.window(*latency)
                {
                    window.merge(hdr);
                    hdr.reset();
                }
            }
        });
    }

    /// Adds `n` to a per-message counter.
    pub fn add(&self, count: Count, n: u64) {
        let buffered = LOCAL.with(|cell| match cell.borrow_mut().as_mut() {
            Some(local) if std::ptr::eq(&*local.owner, self) => {
                local.counters[count as usize].inc_by(n);
                true
            }
            _ => false,
        });
        if !buffered {
            self.counter(count).inc_by(n);
        }
    }

    /// Records one latency sample (and, for RTT, delivery and connect, in the windows).
    pub fn observe(&self, latency: Latency, took: Duration) {
        let buffered = LOCAL.with(|cell| match cell.borrow_mut().as_mut() {
            Some(local) if std::ptr::eq(&*local.owner, self) => {
                local.histograms[latency as usize].observe(took.as_secs_f64());
                if let Some(hdr) = local.windows.get_mut(latency as usize) {
                    hdr.saturating_record(super::micros(took));
                }
                true
            }
            _ => false,
        });
        if !buffered {
            self.histogram(latency).observe(took.as_secs_f64());
            if let Some(window) = self.window(latency) {
                window.record(took);
            }
        }
    }

    /// The shared value of a per-message counter (buffers not yet flushed excluded).
    pub fn total(&self, count: Count) -> u64 {
        self.counter(count).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adopted_thread_buffers_until_it_flushes() {
        let metrics = Arc::new(Metrics::new());
        let other = Arc::new(Metrics::new());
        let (m, o) = (Arc::clone(&metrics), Arc::clone(&other));
        std::thread::spawn(move || {
            m.adopt_thread();
            m.add(Count::Sent, 3);
            m.observe(Latency::Rtt, Duration::from_millis(5));
            // Another registry is not this thread's: written at once.
            o.add(Count::Sent, 1);
            assert_eq!(m.total(Count::Sent), 0, "buffered");
            assert_eq!(m.rtt_window.total().count, 0);
            m.flush_thread();
            assert_eq!(m.total(Count::Sent), 3);
            assert_eq!(m.rtt_window.total().count, 1);
            assert_eq!(m.message_rtt.get_sample_count(), 1);
        })
        .join()
        .expect("thread");
        assert_eq!(other.total(Count::Sent), 1);
        // A thread that adopted nothing writes through.
        metrics.add(Count::Lost, 2);
        assert_eq!(metrics.total(Count::Lost), 2);
    }
}
