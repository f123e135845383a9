//! The periodic one-line progress report in the log (every `progress_interval`), the line a
//! k6 user watches: users active of desired, connects and messages per second, RTT and
//! delivery p99, and errors by reason since the previous line.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::fleet::FleetHandle;
use crate::metrics::{ConnectResult, DisconnectReason, Metrics};

/// The counters a progress line differences.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub attempts: u64,
    pub sent: u64,
    /// Failed connects and unplanned disconnects, by name, in a fixed order.
    pub errors: Vec<(String, u64)>,
}

impl Counters {
    pub fn read(metrics: &Metrics) -> Counters {
        let connects = ConnectResult::ALL
            .iter()
            .filter(|&&r| r != ConnectResult::Ok)
            .map(|&r| {
                (
                    format!("connect.{}", r.as_str()),
                    metrics.connect_result(r).get(),
                )
            });
        let disconnects = DisconnectReason::ALL
            .iter()
            .filter(|r| r.is_failure())
            .map(|&r| {
                (
                    format!("disconnect.{}", r.as_str()),
                    metrics.disconnect(r).get(),
                )
            });
        Counters {
            attempts: metrics.connect_attempts(),
            sent: metrics.total(crate::metrics::Count::Sent),
            errors: connects.chain(disconnects).collect(),
        }
    }
}

/// What one line reports besides the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gauges {
    pub active: i64,
    pub desired: u32,
    pub rtt_p99: f64,
    pub delivery_p99: f64,
}

/// `progress: users 95/100 | connects 10.0/s | messages 1000.0/s | rtt p99 2.10 ms | ...`
pub fn line(before: &Counters, now: &Counters, elapsed: Duration, gauges: Gauges) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let mut out = format!(
        "progress: users {}/{} | connects {:.1}/s | messages {:.1}/s | rtt p99 {:.2} ms | delivery p99 {:.2} ms | errors",
        gauges.active,
        gauges.desired,
        rate(before.attempts, now.attempts),
        rate(before.sent, now.sent),
        gauges.rtt_p99 * 1000.0,
        gauges.delivery_p99 * 1000.0,
    );
    let mut any = false;
    for (name, count) in &now.errors {
        let old = before
            .errors
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c);
        if *count > old {
            let _ = write!(out, " {name}={}", count - old);
            any = true;
        }
    }
    if !any {
        out.push_str(" none");
    }
    out
}

/// Logs a progress line every `interval` until `shutdown`.
pub fn spawn(
    interval: Duration,
    metrics: Arc<Metrics>,
    fleet: FleetHandle,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut before = Counters::read(&metrics);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let now = Counters::read(&metrics);
            let gauges = Gauges {
                active: metrics.users_active.get(),
                desired: fleet.local_users(),
                rtt_p99: metrics.rtt_window.quantiles().p99,
                delivery_p99: metrics.delivery_window.quantiles().p99,
            };
            tracing::info!("{}", line(&before, &now, last.elapsed(), gauges));
            before = now;
            last = Instant::now();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_shows_rates_latency_and_new_errors_only() {
        let before = Counters {
            attempts: 100,
            sent: 1000,
            errors: vec![
                ("connect.http_status".into(), 5),
                ("disconnect.reset".into(), 2),
            ],
        };
        let now = Counters {
            attempts: 200,
            sent: 11_000,
            errors: vec![
                ("connect.http_status".into(), 38),
                ("disconnect.reset".into(), 2),
            ],
        };
        let gauges = Gauges {
            active: 95,
            desired: 100,
            rtt_p99: 0.0021,
            delivery_p99: 0.0034,
        };
        assert_eq!(
            line(&before, &now, Duration::from_secs(10), gauges),
            "progress: users 95/100 | connects 10.0/s | messages 1000.0/s | rtt p99 2.10 ms | delivery p99 3.40 ms | errors connect.http_status=33"
        );
        assert!(line(&now, &now, Duration::from_secs(10), gauges).ends_with("errors none"));
    }
}
