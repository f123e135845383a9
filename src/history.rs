//! What the live page and the report chart: one point a second of what users feel and what the
//! generator does, kept in memory with a fixed size — the last 15 minutes at full resolution,
//! and the whole run downsampled (every other point dropped whenever it fills, so a run of any
//! length fits) — plus the recent load changes with who made them. A fleet of several groups
//! also keeps each group's users, pace, delivery p99 and loss beside each point. Beside each
//! point too: how many round trips and deliveries fell in each latency bucket (the Prometheus
//! histograms' buckets), for the heat maps; in the downsampled run a column sums every second
//! it stands for, so no sample is dropped from the picture.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use utoipa::ToSchema;

use crate::metrics::{ConnectResult, Count, DisconnectReason, Metrics};

/// Points of the live view: 15 minutes at one a second.
pub const RECENT_POINTS: usize = 15 * 60;
/// Points of the whole run, at most.
pub const RUN_POINTS: usize = 720;
/// Load changes remembered.
const CHANGES: usize = 50;

/// One second of the run (rates per second; latencies in seconds, of the status window).
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct Point {
    /// Unix time, seconds.
    pub t: f64,
    pub users_desired: u32,
    pub users_active: i64,
    pub connects: f32,
    pub connect_failures: f32,
    pub sent: f32,
    pub received: f32,
    pub disconnects: f32,
    /// Disconnects the users did not choose (server close, reset, timeouts, protocol) /s.
    pub unplanned_disconnects: f32,
    pub rtt_p50: f32,
    pub rtt_p99: f32,
    pub rtt_p999: f32,
    pub delivery_p50: f32,
    pub delivery_p99: f32,
    pub delivery_p999: f32,
    pub lost: f32,
    pub duplicated: f32,
    pub reordered: f32,
    /// Deliveries received / expected over this second (1 when none were expected).
    pub reach: f32,
    /// Worst event-loop lag of the last 5 s.
    pub loop_lag: f32,
    /// The generator's resident memory, bytes.
    pub rss: f32,
    pub saturated: bool,
}

/// One group's part of a [`Point`] (a fleet of several groups only).
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct GroupPoint {
    pub users_active: i64,
    /// Messages sent per second.
    pub sent: f32,
    pub rtt_p99: f32,
    pub delivery_p99: f32,
    /// Deliveries lost per second.
    pub lost: f32,
}

/// How many samples of each latency fell in each bucket over a span: one count per upper
/// bound of [`crate::metrics::LATENCY_BUCKETS`], then the count above the last.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Heat {
    pub rtt: Box<[u32]>,
    pub delivery: Box<[u32]>,
}

impl Heat {
    /// Adds `other`'s counts to these.
    fn add(&mut self, other: &Heat) {
        for (mine, theirs) in [
            (&mut self.rtt, &other.rtt),
            (&mut self.delivery, &other.delivery),
        ] {
            if mine.len() < theirs.len() {
                let mut grown = mine.to_vec();
                grown.resize(theirs.len(), 0);
                *mine = grown.into_boxed_slice();
            }
            for (m, t) in mine.iter_mut().zip(theirs.iter()) {
                *m = m.saturating_add(*t);
            }
        }
    }
}

/// A change of the desired load, as the fleet applied it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Change {
    /// Unix time, seconds.
    pub t: f64,
    /// `api`, `k6`, `reload`, `profile`, `capacity`.
    pub source: String,
    pub who: String,
    /// What changed, for a person.
    pub what: String,
}

/// The history of a run.
#[derive(Debug, Default)]
pub struct History(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    recent: VecDeque<Point>,
    run: Vec<Point>,
    /// Each point's groups, beside `recent` and `run` (empty in a fleet of one group).
    recent_groups: VecDeque<Box<[GroupPoint]>>,
    run_groups: Vec<Box<[GroupPoint]>>,
    /// Each point's latency buckets, beside `recent` and `run`; `pending` sums the seconds
    /// since the last point kept in `run`.
    recent_heat: VecDeque<Heat>,
    run_heat: Vec<Heat>,
    pending_heat: Heat,
    /// Seconds between two points of `run`; doubles when it fills.
    run_step: u32,
    /// Points seen since the last one kept in `run`.
    since_kept: u32,
    changes: VecDeque<Change>,
    /// The group names, in a fleet of several.
    names: Vec<String>,
    /// The counters at the previous point, for rates.
    last: Option<Totals>,
}

/// Counter totals at one instant.
#[derive(Debug, Clone)]
struct Totals {
    at: std::time::Instant,
    connects: u64,
    failures: u64,
    sent: u64,
    received: u64,
    disconnects: u64,
    unplanned: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    expected: u64,
    delivered: u64,
    /// (sent, lost) of each group, in a fleet of several.
    groups: Vec<(u64, u64)>,
    /// Samples so far in each latency bucket.
    rtt_buckets: Vec<u64>,
    delivery_buckets: Vec<u64>,
}

impl Totals {
    fn read(metrics: &Metrics) -> Totals {
        let counts = metrics.message_counts();
        Totals {
            at: std::time::Instant::now(),
            connects: metrics.connect_attempts(),
            failures: ConnectResult::ALL
                .iter()
                .filter(|&&r| r != ConnectResult::Ok)
                .map(|&r| metrics.connect_result(r).get())
                .sum(),
            sent: metrics.total(Count::Sent),
            received: counts.received,
            disconnects: DisconnectReason::ALL
                .iter()
                .map(|&r| metrics.disconnect(r).get())
                .sum(),
            unplanned: metrics.tally().unplanned_disconnects,
            lost: counts.lost,
            duplicated: counts.duplicated,
            reordered: counts.reordered,
            expected: counts.deliveries_expected,
            delivered: counts.deliveries_received,
            groups: if metrics.groups().len() > 1 {
                (0..metrics.groups().len())
                    .map(|g| {
                        (
                            metrics.messages_sent.of(g).get(),
                            metrics.messages_lost.of(g).get(),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
            rtt_buckets: metrics.message_rtt.bucket_counts(),
            delivery_buckets: metrics.delivery_latency.bucket_counts(),
        }
    }

    /// What fell in each bucket between `earlier` and these totals.
    fn heat_since(&self, earlier: &Totals) -> Heat {
        let since = |now: &[u64], then: &[u64]| -> Box<[u32]> {
            now.iter()
                .enumerate()
                .map(|(i, &n)| {
                    let was = then.get(i).copied().unwrap_or(0);
                    u32::try_from(n.saturating_sub(was)).unwrap_or(u32::MAX)
                })
                .collect()
        };
        Heat {
            rtt: since(&self.rtt_buckets, &earlier.rtt_buckets),
            delivery: since(&self.delivery_buckets, &earlier.delivery_buckets),
        }
    }
}

/// A snapshot for `GET /api/v1/history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Snapshot {
    /// Seconds between points.
    pub step: u32,
    pub points: Vec<Point>,
    /// The recent load changes, oldest first.
    pub changes: Vec<Change>,
    /// In a fleet of several groups: their names, and for each point its groups' figures in
    /// that order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub group_points: Vec<Box<[GroupPoint]>>,
    /// The latency buckets' upper bounds (seconds) of `heat`, whose last count is above them.
    pub heat_buckets: &'static [f64],
    /// For each point, its round trips and deliveries by latency bucket.
    pub heat: Vec<Heat>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl History {
    /// Takes one point from the metrics and what the fleet and its health say now.
    pub fn sample(&self, metrics: &Metrics, users_desired: u32, health: &crate::health::Health) {
        let now = Totals::read(metrics);
        let rtt = metrics.rtt_window.quantiles();
        let delivery = metrics.delivery_window.quantiles();
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(last) = inner.last.replace(now.clone()) else {
            return; // the first reading only starts the rates
        };
        let secs = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
        let rate = |now: u64, then: u64| (now.saturating_sub(then) as f64 / secs) as f32;
        let groups: Box<[GroupPoint]> = now
            .groups
            .iter()
            .zip(&last.groups)
            .enumerate()
            .map(|(g, (&(sent, lost), &(sent_then, lost_then)))| GroupPoint {
                users_active: metrics.users_active.of(g).get(),
                sent: rate(sent, sent_then),
                rtt_p99: metrics.rtt_window.of(g).quantiles().p99 as f32,
                delivery_p99: metrics.delivery_window.of(g).quantiles().p99 as f32,
                lost: rate(lost, lost_then),
            })
            .collect();
        let expected = now.expected.saturating_sub(last.expected);
        let point = Point {
            t: unix_now(),
            users_desired,
            users_active: metrics.users_active.get(),
            connects: rate(now.connects, last.connects),
            connect_failures: rate(now.failures, last.failures),
            sent: rate(now.sent, last.sent),
            received: rate(now.received, last.received),
            disconnects: rate(now.disconnects, last.disconnects),
            unplanned_disconnects: rate(now.unplanned, last.unplanned),
            rtt_p50: rtt.p50 as f32,
            rtt_p99: rtt.p99 as f32,
            rtt_p999: rtt.p999 as f32,
            delivery_p50: delivery.p50 as f32,
            delivery_p99: delivery.p99 as f32,
            delivery_p999: delivery.p999 as f32,
            lost: rate(now.lost, last.lost),
            duplicated: rate(now.duplicated, last.duplicated),
            reordered: rate(now.reordered, last.reordered),
            reach: if expected == 0 {
                1.0
            } else {
                (now.delivered.saturating_sub(last.delivered) as f64 / expected as f64) as f32
            },
            loop_lag: health.loop_lag_max_seconds as f32,
            rss: crate::host::resident_bytes().unwrap_or(0) as f32,
            saturated: health.saturated,
        };
        inner.push(point, groups, now.heat_since(&last));
        if inner.names.is_empty() && metrics.groups().len() > 1 {
            inner.names = metrics.groups().to_vec();
        }
    }

    /// Remembers a load change.
    pub fn change(&self, source: &str, who: &str, what: String) {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if inner.changes.len() == CHANGES {
            inner.changes.pop_front();
        }
        inner.changes.push_back(Change {
            t: unix_now(),
            source: source.to_string(),
            who: who.to_string(),
            what,
        });
    }

    /// The last 15 minutes, one point a second.
    pub fn recent(&self) -> Snapshot {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            step: 1,
            points: inner.recent.iter().copied().collect(),
            changes: inner.changes.iter().cloned().collect(),
            groups: inner.names.clone(),
            group_points: inner.recent_groups.iter().cloned().collect(),
            heat_buckets: crate::metrics::LATENCY_BUCKETS,
            heat: inner.recent_heat.iter().cloned().collect(),
        }
    }

    /// How the run's p99 latencies and RSS moved over it, per hour (least squares over the
    /// whole run's points; a latency's over the points that measured one).
    pub fn trends(&self) -> crate::sla::Trends {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let run = &inner.run;
        // A latency's slope over the points that measured one; a rate's over every point.
        let series = |value: fn(&Point) -> f32, measured_only: bool| -> Option<f64> {
            let points: Vec<(f64, f64)> = run
                .iter()
                .map(|p| (p.t, f64::from(value(p))))
                .filter(|&(_, v)| !measured_only || v > 0.0)
                .collect();
            slope(&points).map(|per_second| per_second * 3600.0)
        };
        crate::sla::Trends {
            span_seconds: match (run.first(), run.last()) {
                (Some(first), Some(last)) => last.t - first.t,
                _ => 0.0,
            },
            slopes: [
                series(|p| p.rtt_p99, true),
                series(|p| p.delivery_p99, true),
                series(|p| p.rss, true),
                series(|p| p.unplanned_disconnects, false),
            ],
        }
    }

    /// The whole run, downsampled to at most [`RUN_POINTS`].
    pub fn run(&self) -> Snapshot {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            step: inner.run_step.max(1),
            points: inner.run.clone(),
            changes: inner.changes.iter().cloned().collect(),
            groups: inner.names.clone(),
            group_points: inner.run_groups.clone(),
            heat_buckets: crate::metrics::LATENCY_BUCKETS,
            heat: inner.run_heat.clone(),
        }
    }
}

impl Inner {
    /// Keeps `point` (and its groups' figures, empty in a fleet of one group, and its
    /// latency buckets).
    fn push(&mut self, point: Point, groups: Box<[GroupPoint]>, heat: Heat) {
        let grouped = !groups.is_empty();
        if self.recent.len() == RECENT_POINTS {
            self.recent.pop_front();
            self.recent_groups.pop_front();
            self.recent_heat.pop_front();
        }
        self.recent.push_back(point);
        if grouped {
            self.recent_groups.push_back(groups.clone());
        }
        self.pending_heat.add(&heat);
        self.recent_heat.push_back(heat);
        self.run_step = self.run_step.max(1);
        self.since_kept += 1;
        if self.since_kept < self.run_step {
            return;
        }
        self.since_kept = 0;
        if self.run.len() == RUN_POINTS {
            // Full: keep every other point, and one point per twice as many seconds from now;
            // each heat column kept takes in the one dropped after it.
            keep_every_other(&mut self.run);
            keep_every_other(&mut self.run_groups);
            self.run_heat = self
                .run_heat
                .chunks(2)
                .map(|pair| {
                    let mut sum = pair[0].clone();
                    if let Some(next) = pair.get(1) {
                        sum.add(next);
                    }
                    sum
                })
                .collect();
            self.run_step *= 2;
        }
        self.run.push(point);
        if grouped {
            self.run_groups.push(groups);
        }
        self.run_heat.push(std::mem::take(&mut self.pending_heat));
    }
}

/// The least-squares slope of `points` (x, y), per unit of x; None below three points or
/// when every x is the same.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let (mean_x, mean_y) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), &(x, y)| (sx + x / n, sy + y / n));
    let (covariance, variance) = points.iter().fold((0.0, 0.0), |(c, v), &(x, y)| {
        (
            c + (x - mean_x) * (y - mean_y),
            v + (x - mean_x) * (x - mean_x),
        )
    });
    (variance > 0.0).then(|| covariance / variance)
}

/// Drops every second element, from the second on.
fn keep_every_other<T>(items: &mut Vec<T>) {
    let mut index = 0;
    items.retain(|_| {
        index += 1;
        index % 2 == 1
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn memory_is_bounded_however_long_the_run() {
        let mut inner = Inner::default();
        for i in 0..100_000 {
            let heat = Heat {
                rtt: Box::new([1, 0]),
                delivery: Box::new([]),
            };
            inner.push(
                Point {
                    t: f64::from(i),
                    ..Point::default()
                },
                Box::new([]),
                heat,
            );
        }
        let counted: u32 = inner.run_heat.iter().map(|h| h.rtt[0]).sum();
        let pending = inner.pending_heat.rtt.first().copied().unwrap_or(0);
        assert_eq!(
            counted + pending,
            100_000,
            "the run's heat map counts every sample, however far downsampled"
        );
        assert_eq!(inner.run_heat.len(), inner.run.len());
        assert_eq!(inner.recent.len(), RECENT_POINTS);
        assert!(inner.run.len() <= RUN_POINTS);
        assert!(inner.run.len() > RUN_POINTS / 2, "{}", inner.run.len());
        assert_eq!(inner.run[0].t, 0.0, "the run starts at its start");
        let last = inner.run.last().map_or(0.0, |p| p.t);
        assert!(last > 99_000.0, "and reaches its end: {last}");
        let steps: Vec<f64> = inner.run.windows(2).map(|w| w[1].t - w[0].t).collect();
        assert!(
            steps.iter().all(|&s| s == f64::from(inner.run_step)),
            "even spacing"
        );
    }

    /// A p99 that grows 10 ms a minute, with noise, slopes 0.6 s an hour; a flat one, 0.
    #[test]
    fn trends_are_least_squares_slopes_per_hour() {
        let noise = [0.002, -0.001, 0.0, 0.001, -0.002];
        let grows: Vec<(f64, f64)> = (0..300)
            .map(|i| {
                (
                    f64::from(i),
                    0.05 + f64::from(i) * 0.01 / 60.0 + noise[i as usize % 5],
                )
            })
            .collect();
        let per_hour = slope(&grows).expect("enough points") * 3600.0;
        assert!((per_hour - 0.6).abs() < 0.01, "{per_hour}");
        let flat: Vec<(f64, f64)> = (0..300).map(|i| (f64::from(i), 0.05)).collect();
        assert!(slope(&flat).is_some_and(|s| s.abs() < 1e-12));
        assert_eq!(slope(&flat[..2]), None, "two points are not a trend");
        let mut inner = Inner::default();
        for (t, y) in &grows {
            let point = Point {
                t: *t,
                delivery_p99: *y as f32,
                ..Point::default()
            };
            inner.push(point, Box::new([]), Heat::default());
        }
        let history = History(Mutex::new(inner));
        let trends = history.trends();
        assert_eq!(trends.span_seconds, 299.0);
        let delivery = trends.slopes[crate::sla::Trend::P99Delivery as usize].expect("measured");
        assert!((delivery - 0.6).abs() < 0.01, "{delivery}");
        assert_eq!(
            trends.slopes[crate::sla::Trend::P99Rtt as usize],
            None,
            "never measured"
        );
    }

    #[test]
    fn a_point_is_small() {
        // README "Live page and report" states the history's memory from this.
        assert!(
            std::mem::size_of::<Point>() <= 104,
            "{}",
            std::mem::size_of::<Point>()
        );
    }

    #[test]
    fn rates_come_from_counter_differences() {
        let metrics = Metrics::new();
        let history = History::default();
        let health = crate::health::Health::default();
        history.sample(&metrics, 10, &health);
        metrics.group(0).add(Count::Sent, 50);
        let meter = metrics.group(0);
        meter.observe(crate::metrics::Latency::Delivery, Duration::from_millis(3));
        meter.observe(
            crate::metrics::Latency::Delivery,
            Duration::from_millis(300),
        );
        history.sample(&metrics, 10, &health);
        let snapshot = history.recent();
        let bucket = |secs: f64| {
            snapshot
                .heat_buckets
                .iter()
                .position(|&upper| secs <= upper)
                .unwrap_or(snapshot.heat_buckets.len())
        };
        let delivery = &snapshot.heat[0].delivery;
        assert_eq!(delivery.iter().sum::<u32>(), 2, "{delivery:?}");
        assert_eq!((delivery[bucket(0.003)], delivery[bucket(0.3)]), (1, 1));
        assert_eq!(
            snapshot.points.len(),
            1,
            "the first reading starts the rates"
        );
        assert!(snapshot.points[0].sent > 0.0);
        history.change("api", "127.0.0.1", "users 10 -> 20".into());
        assert_eq!(history.recent().changes[0].what, "users 10 -> 20");
        assert!(
            history.recent().groups.is_empty(),
            "one group: no group series"
        );
    }

    #[test]
    fn a_fleet_of_groups_keeps_each_group_beside_each_point() {
        let names = ["chatters".to_string(), "bots".to_string()];
        let metrics = Metrics::with_window(crate::metrics::WINDOW, &names);
        let history = History::default();
        let health = crate::health::Health::default();
        history.sample(&metrics, 10, &health);
        metrics.group(1).add(Count::Sent, 40);
        metrics.group(1).add(Count::Lost, 2);
        history.sample(&metrics, 10, &health);
        history.sample(&metrics, 10, &health);
        let snapshot = history.run();
        assert_eq!(snapshot.groups, names);
        assert_eq!(snapshot.group_points.len(), snapshot.points.len());
        let first = &snapshot.group_points[0];
        assert!(first[1].sent > 0.0 && first[1].lost > 0.0 && first[0].sent == 0.0);
        assert_eq!(snapshot.group_points[1][1].sent, 0.0, "a rate, not a total");
    }
}
