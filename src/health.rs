//! The generator watches itself: event-loop lag (from a tick task), file descriptors left, and
//! from those whether its own numbers can still be trusted. When they cannot, it stops adding
//! users, says why in the log and the status API, and sets `wsfleet_generator_saturated 1`.
//!
//! A user thread whose probe stops reporting is the worst lag of all (a task that never yields
//! starves everything on its thread), not an absence of evidence: the judge notices the
//! silence on its own clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::metrics::Metrics;
use crate::runtimes::Runtimes;

/// How often the lag probe ticks.
const TICK: Duration = Duration::from_millis(100);
/// Lag samples judged together: the last 5 s.
const RECENT: usize = 50;
/// Share of recent ticks that may be late before the generator counts as saturated.
const LATE_SHARE: f64 = 0.2;
/// How often file descriptors are counted (a directory listing of up to 20k entries).
const FD_EVERY: Duration = Duration::from_secs(2);
/// A user thread whose probe has not reported for this long is stuck: saturated.
const SILENT: Duration = Duration::from_secs(1);

/// `self_health:` in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// A tick later than this is a late tick; too many late ticks means saturated.
    #[serde(default = "default_max_loop_lag", with = "humantime_serde")]
    pub max_loop_lag: Duration,
    /// Fewer free file descriptors than this means saturated (no more users are added).
    #[serde(default = "default_min_fds")]
    pub min_fds_available: u64,
}

fn default_max_loop_lag() -> Duration {
    Duration::from_millis(50)
}
fn default_min_fds() -> u64 {
    200
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            max_loop_lag: default_max_loop_lag(),
            min_fds_available: default_min_fds(),
        }
    }
}

/// The generator's view of itself, for the status API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// True when the generator's own numbers cannot be trusted; no users are added meanwhile.
    pub saturated: bool,
    /// Why, when saturated.
    pub reason: Option<String>,
    /// Worst event-loop lag of the last 5 s, in seconds.
    pub loop_lag_max_seconds: f64,
    pub fds_open: u64,
    pub fds_available: u64,
}

/// Starts a lag probe on every user runtime and the task that judges them (returned; it runs
/// until `shutdown`); the returned receiver says whether the generator is saturated.
pub fn spawn(
    config: HealthConfig,
    metrics: Arc<Metrics>,
    runtimes: &Runtimes,
    shutdown: CancellationToken,
) -> (
    watch::Receiver<bool>,
    Arc<Mutex<Health>>,
    tokio::task::JoinHandle<()>,
) {
    // Judge file descriptors before the first user could connect.
    let fds_at_start = file_descriptors();
    let min_fds = config.min_fds_available;
    let starved = move |fds: Option<(u64, u64)>| {
        let (open, max) = fds.unwrap_or((0, u64::MAX));
        let available = max.saturating_sub(open);
        (available < min_fds).then(|| {
            format!(
                "only {available} file descriptors left (self_health.min_fds_available = {min_fds})"
            )
        })
    };
    let (saturated_tx, saturated_rx) = watch::channel(starved(fds_at_start).is_some());
    let health = Arc::new(Mutex::new(Health::default()));
    let (samples_tx, mut samples) = tokio::sync::mpsc::channel(1024);
    for (thread, handle) in runtimes.handles().iter().enumerate() {
        handle.spawn(probe(
            thread,
            samples_tx.clone(),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    let window = RECENT * runtimes.handles().len();
    let shared = Arc::clone(&health);
    let task = tokio::spawn(async move {
        let mut recent: VecDeque<Duration> = VecDeque::with_capacity(window);
        let mut heard = vec![Instant::now(); window / RECENT];
        let mut fds = fds_at_start;
        let mut fd_count = tokio::time::interval(FD_EVERY);
        let mut silence_check = tokio::time::interval(TICK);
        silence_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = silence_check.tick() => {}
                sample = samples.recv() => {
                    let Some(sample) = sample else { return };
                    record(&mut recent, &mut heard, window, sample);
                }
                _ = fd_count.tick() => {
                    fds = file_descriptors();
                    if let Some((open, max)) = fds {
                        metrics.fds_available.set(max.saturating_sub(open) as i64);
                    }
                }
            }
            // Everything the probes sent is read before judging: a judge that was itself
            // slow to run must not take its own delay for a user thread's silence.
            while let Ok(sample) = samples.try_recv() {
                record(&mut recent, &mut heard, window, sample);
            }
            let late = recent.iter().filter(|&&l| l > config.max_loop_lag).count();
            let lag_reason = (late as f64 >= LATE_SHARE * window as f64).then(|| {
                format!(
                    "event loop lag: {late} of the last {} ticks were over {}",
                    recent.len(),
                    humantime::format_duration(config.max_loop_lag)
                )
            });
            let silent_reason = silent_thread(&heard, Instant::now()).map(|(thread, for_)| {
                format!(
                    "user thread {thread} has not run its health probe for {:.1} s: a task there does not yield",
                    for_.as_secs_f64()
                )
            });
            let lag_reason = silent_reason.or(lag_reason);
            let (open, max) = fds.unwrap_or((0, u64::MAX));
            let available = max.saturating_sub(open);
            let reason = lag_reason.or_else(|| starved(fds));
            let saturated = reason.is_some();
            // The status first, then the signal: whoever sees the change can read why.
            metrics.generator_saturated.set(i64::from(saturated));
            *shared.lock().unwrap_or_else(|e| e.into_inner()) = Health {
                saturated,
                reason: reason.clone(),
                loop_lag_max_seconds: recent
                    .iter()
                    .max()
                    .copied()
                    .unwrap_or_default()
                    .as_secs_f64(),
                fds_open: open,
                fds_available: available.min(i64::MAX as u64),
            };
            saturated_tx.send_if_modified(|was| {
                if *was == saturated {
                    return false;
                }
                match &reason {
                    Some(why) => {
                        metrics.generator_saturations.inc();
                        tracing::warn!(reason = %why, "generator saturated: not adding users; its latency numbers may be inflated")
                    }
                    None => tracing::info!("generator healthy again"),
                }
                *was = saturated;
                true
            });
        }
    });
    (saturated_rx, health, task)
}

/// Ticks every 100 ms on one user runtime and reports how late each tick ran.
async fn probe(
    thread: usize,
    samples: tokio::sync::mpsc::Sender<Sample>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let scheduled = tokio::select! {
            _ = shutdown.cancelled() => return,
            scheduled = ticks.tick() => scheduled,
        };
        let now = Instant::now();
        let lag = now.saturating_duration_since(scheduled);
        metrics.event_loop_lag.observe(lag.as_secs_f64());
        let _ = samples.try_send((thread, lag, now));
    }
}

/// One probe tick: thread `thread` ran its tick at `at`, `lag` late. A tick `lag` late
/// stands for the ticks that could not run meanwhile: they count as late too, so a starved
/// generator, which ticks rarely, is judged by time, not by the few ticks it managed.
fn record(
    recent: &mut VecDeque<Duration>,
    heard: &mut [Instant],
    window: usize,
    (thread, lag, at): Sample,
) {
    heard[thread] = heard[thread].max(at);
    for _ in 0..ticks_covered(lag).min(window) {
        if recent.len() == window {
            recent.pop_front();
        }
        recent.push_back(lag);
    }
}

/// What a probe reports: its thread, how late its tick ran, and when.
type Sample = (usize, Duration, Instant);

/// The user thread heard from least recently, if it has been silent for longer than
/// [`SILENT`], and for how long.
fn silent_thread(heard: &[Instant], now: Instant) -> Option<(usize, Duration)> {
    heard
        .iter()
        .map(|at| now.saturating_duration_since(*at))
        .enumerate()
        .max_by_key(|&(_, silent)| silent)
        .filter(|&(_, silent)| silent > SILENT)
}

/// How many probe ticks a tick that ran `lag` late stands for: itself, and each one that
/// should have run in the meantime.
fn ticks_covered(lag: Duration) -> usize {
    1 + usize::try_from(lag.as_millis() / TICK.as_millis()).unwrap_or(usize::MAX)
}

/// (open, soft limit) file descriptors of this process, from /proc.
fn file_descriptors() -> Option<(u64, u64)> {
    Some((open_fds()?, crate::host::fd_limit()?))
}

/// File descriptors this process has open now.
pub fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_tick_stands_for_the_ticks_missed_meanwhile() {
        assert_eq!(ticks_covered(Duration::from_millis(3)), 1);
        assert_eq!(ticks_covered(Duration::from_millis(250)), 3);
        assert_eq!(ticks_covered(Duration::from_secs(2)), 21);
    }

    #[test]
    fn a_thread_not_heard_from_for_a_second_is_silent() {
        let now = Instant::now();
        let heard = [now, now - Duration::from_millis(900)];
        assert_eq!(silent_thread(&heard, now), None);
        let heard = [now, now - Duration::from_millis(1500)];
        assert_eq!(
            silent_thread(&heard, now),
            Some((1, Duration::from_millis(1500)))
        );
    }

    /// A task that never yields freezes its user thread and its probe with it: before, the
    /// judge heard nothing and kept saying healthy. The thread is held by a blocking wait the
    /// test ends, so nothing here depends on how fast the machine is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_thread_that_stops_ticking_is_saturated() {
        let runtimes = Runtimes::start(1).expect("a runtime");
        let shutdown = CancellationToken::new();
        let (mut saturated, health, task) = spawn(
            HealthConfig::default(),
            Arc::new(Metrics::new()),
            &runtimes,
            shutdown.clone(),
        );
        assert!(!*saturated.borrow());
        let (release, held) = std::sync::mpsc::channel::<()>();
        runtimes.handles()[0].spawn(async move {
            let _ = held.recv_timeout(Duration::from_secs(60));
        });
        tokio::time::timeout(Duration::from_secs(30), saturated.wait_for(|s| *s))
            .await
            .expect("saturated within 30 s")
            .expect("the judge runs");
        let reason = health.lock().expect("lock").reason.clone();
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("user thread 0 has not run its health probe")),
            "{reason:?}"
        );
        release.send(()).expect("the blocked task waits");
        tokio::time::timeout(Duration::from_secs(30), saturated.wait_for(|s| !*s))
            .await
            .expect("healthy again within 30 s")
            .expect("the judge runs");
        shutdown.cancel();
        task.await.expect("the judge ends");
    }

    #[test]
    fn file_descriptors_are_read_from_proc() {
        let (open, max) = file_descriptors().expect("linux /proc");
        assert!(open > 0 && max >= open, "{open} of {max}");
    }
}
