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
    /// From the upgrade to the last login step's reply, also in the windows.
    Login,
    /// A returning receiver's time to its last missed message, also in the windows.
    Catchup,
    Heartbeat,
    SendLag,
    /// A delivery of what its receiver missed while away, from the scheduled send time.
    OfflineDelivery,
    /// A chunk's time in a shaped user's link (`network:`), either way.
    NetworkDelay,
    /// The part of it spent waiting for the link's bandwidth.
    NetworkThrottle,
}

impl Latency {
    pub const ALL: [Latency; 10] = [
        Latency::Rtt,
        Latency::Delivery,
        Latency::Connect,
        Latency::Login,
        Latency::Catchup,
        Latency::Heartbeat,
        Latency::SendLag,
        Latency::OfflineDelivery,
        Latency::NetworkDelay,
        Latency::NetworkThrottle,
    ];
}

/// How often each user thread pushes its buffers out: what a reader sees is at most this old.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Latencies with exact-quantile windows (the SLA's [`crate::sla::Measure`]s, in its order):
/// the first five of [`Latency::ALL`].
const WINDOWED: usize = crate::sla::Measure::ALL.len();

/// One thread's buffers for one [`Metrics`], group by group: counter `count` of group `g` is
/// at `g * Count::ALL.len() + count` (and likewise for the histograms and windows), so a
/// fleet of one group indexes as before groups existed.
struct Local {
    owner: Arc<Metrics>,
    counters: Vec<LocalIntCounter>,
    histograms: Vec<LocalHistogram>,
    /// Samples for the exact-quantile windows, by group and [`Latency`] index.
    windows: Vec<Hdr<u64>>,
}

/// Where one group records its measurements: [`Metrics::group`].
#[derive(Clone, Copy)]
pub struct Meter<'a> {
    metrics: &'a Metrics,
    group: usize,
}

impl Meter<'_> {
    /// Adds `n` to a per-message counter of this group.
    pub fn add(&self, count: Count, n: u64) {
        self.metrics.add(self.group, count, n);
    }

    /// Records one latency sample of this group.
    pub fn observe(&self, latency: Latency, took: Duration) {
        self.metrics.observe(self.group, latency, took);
    }

    /// This group's connected users.
    pub fn users_active(&self) -> &prometheus::IntGauge {
        self.metrics.users_active.of(self.group)
    }

    /// This group's users away on purpose (`offline:`).
    pub fn users_offline(&self) -> &prometheus::IntGauge {
        self.metrics.users_offline.of(self.group)
    }

    /// This group's connection attempts that ended with `result`.
    pub fn connect_result(&self, result: super::ConnectResult) -> &prometheus::IntCounter {
        self.metrics.connect_result(result).of(self.group)
    }

    /// This group's disconnects for `reason`.
    pub fn disconnect(&self, reason: super::DisconnectReason) -> &prometheus::IntCounter {
        self.metrics.disconnect(reason).of(self.group)
    }

    /// This group's arrivals let in, turned away, and departures (open arrivals).
    pub fn arrivals(&self) -> &prometheus::IntCounter {
        self.metrics.arrivals.of(self.group)
    }

    pub fn arrivals_turned_away(&self) -> &prometheus::IntCounter {
        self.metrics.arrivals_turned_away.of(self.group)
    }

    pub fn departures(&self) -> &prometheus::IntCounter {
        self.metrics.departures.of(self.group)
    }
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

impl Metrics {
    /// Makes the calling thread buffer its per-message measurements for `self` (until
    /// [`Metrics::flush_thread`] pushes them out). Call it on each user thread at start.
    pub fn adopt_thread(self: &Arc<Self>) {
        let groups = 0..self.groups().len();
        let local = Local {
            owner: Arc::clone(self),
            counters: groups
                .clone()
                .flat_map(|g| {
                    Count::ALL
                        .iter()
                        .map(move |&c| self.counter(c).of(g).local())
                })
                .collect(),
            histograms: groups
                .clone()
                .flat_map(|g| {
                    Latency::ALL
                        .iter()
                        .map(move |&l| self.histogram(l).of(g).local())
                })
                .collect(),
            windows: groups
                .flat_map(|_| (0..WINDOWED).map(|_| new_hdr()))
                .collect(),
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
            for (i, hdr) in local.windows.iter_mut().enumerate() {
                let (group, latency) = (i / WINDOWED, Latency::ALL[i % WINDOWED]);
                if !hdr.is_empty()
                    && let Some(window) = self.window(latency)
                {
                    window.of(group).merge(hdr);
                    hdr.reset();
                }
            }
        });
    }

    /// Where group `group` records its measurements.
    pub fn group(&self, group: usize) -> Meter<'_> {
        Meter {
            metrics: self,
            group,
        }
    }

    /// Adds `n` to a per-message counter of group `group`.
    fn add(&self, group: usize, count: Count, n: u64) {
        let buffered = LOCAL.with(|cell| match cell.borrow_mut().as_mut() {
            Some(local) if std::ptr::eq(&*local.owner, self) => {
                local.counters[group * Count::ALL.len() + count as usize].inc_by(n);
                true
            }
            _ => false,
        });
        if !buffered {
            self.counter(count).of(group).inc_by(n);
        }
    }

    /// Records one latency sample of group `group` (and, for the SLA's measures, in the
    /// windows).
    fn observe(&self, group: usize, latency: Latency, took: Duration) {
        let buffered = LOCAL.with(|cell| match cell.borrow_mut().as_mut() {
            Some(local) if std::ptr::eq(&*local.owner, self) => {
                local.histograms[group * Latency::ALL.len() + latency as usize]
                    .observe(took.as_secs_f64());
                if (latency as usize) < WINDOWED {
                    local.windows[group * WINDOWED + latency as usize]
                        .saturating_record(super::micros(took));
                }
                true
            }
            _ => false,
        });
        if !buffered {
            self.histogram(latency)
                .of(group)
                .observe(took.as_secs_f64());
            if let Some(window) = self.window(latency) {
                window.of(group).record(took);
            }
        }
    }

    /// The shared value of a per-message counter, every group's (buffers not yet flushed
    /// excluded).
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
            m.group(0).add(Count::Sent, 3);
            m.group(0).observe(Latency::Rtt, Duration::from_millis(5));
            // Another registry is not this thread's: written at once.
            o.group(0).add(Count::Sent, 1);
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
        metrics.group(0).add(Count::Lost, 2);
        assert_eq!(metrics.total(Count::Lost), 2);
    }
}
