//! Open arrivals of one group: when its next user arrives (a Poisson process at the group's
//! rate) and when each present user leaves (its stay drawn on arrival). The supervisor
//! ([`crate::fleet`]) asks what is due and spawns or ends users; this module only keeps time,
//! so its processes are tested on tokio's paused clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use rand_distr::Distribution;
use tokio::time::Instant;

use crate::clock;
use crate::session::settings::Arrivals;

/// The clock of one group's arrivals and departures.
#[derive(Debug)]
pub struct ArrivalClock {
    spec: Arrivals,
    /// Arrivals per second this instance takes (its shard's share of the rate).
    rate: f64,
    next: Instant,
    /// (when, user) of every present user's departure, earliest first.
    departures: BinaryHeap<Reverse<(Instant, u32)>>,
}

impl ArrivalClock {
    /// A clock whose first arrival is one random gap after `now`.
    pub fn new(spec: Arrivals, rate: f64, now: Instant) -> ArrivalClock {
        let mut clock = ArrivalClock {
            spec,
            rate,
            next: now,
            departures: BinaryHeap::new(),
        };
        clock.next = clock.after(now);
        clock
    }

    /// One exponential gap after `at`.
    fn after(&self, at: Instant) -> Instant {
        if self.rate <= 0.0 {
            return clock::later(at, crate::load::MAX_SPAN);
        }
        let gap: f64 = rand_distr::Exp1.sample(&mut rand::rng());
        clock::later(at, Duration::from_secs_f64((gap / self.rate).min(1e9)))
    }

    /// When something is next due: an arrival or a departure.
    pub fn next_event(&self) -> Instant {
        match self.departures.peek() {
            Some(Reverse((at, _))) => self.next.min(*at),
            None => self.next,
        }
    }

    /// How many users arrived by `now` (the clock moves past them).
    pub fn arrivals_due(&mut self, now: Instant) -> usize {
        let mut due = 0;
        while self.next <= now {
            due += 1;
            self.next = self.after(self.next);
        }
        due
    }

    /// Nobody arrives for the time up to `now` (a pause): no backlog of arrivals afterwards.
    pub fn skip_to(&mut self, now: Instant) {
        if self.next < now {
            self.next = self.after(now);
        }
    }

    /// User `user` arrived at `now`: when it leaves (a stay drawn from the spec).
    pub fn arrived(&mut self, user: u32, now: Instant) -> Instant {
        let leaves = clock::later(now, self.spec.stay.sample(&mut rand::rng()));
        self.departures.push(Reverse((leaves, user)));
        leaves
    }

    /// The users whose stay is over by `now`.
    pub fn departures_due(&mut self, now: Instant) -> Vec<u32> {
        let mut due = Vec::new();
        while let Some(Reverse((at, user))) = self.departures.peek().copied() {
            if at > now {
                break;
            }
            self.departures.pop();
            due.push(user);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Arrivals {
        serde_norway::from_str(yaml).expect("arrivals")
    }

    #[tokio::test(start_paused = true)]
    async fn arrivals_come_at_their_rate() {
        let start = Instant::now();
        let mut clock = ArrivalClock::new(spec("{rate: 50, stay: 1s}"), 50.0, start);
        let mut arrived = 0;
        for second in 1..=200 {
            arrived += clock.arrivals_due(start + Duration::from_secs(second));
        }
        // 10,000 expected; a Poisson count's standard deviation is 100: six of them.
        assert!((arrived as f64 - 10_000.0).abs() < 600.0, "{arrived}");
    }

    #[tokio::test(start_paused = true)]
    async fn stays_follow_their_distribution_and_end_in_order() {
        let start = Instant::now();
        let mut clock = ArrivalClock::new(
            spec("{rate: 1, stay: {lognormal: {median: 10s, p99: 2m}}}"),
            1.0,
            start,
        );
        let n = 20_000u32;
        let mut stays: Vec<f64> = (0..n)
            .map(|user| (clock.arrived(user, start) - start).as_secs_f64())
            .collect();
        let mean = stays.iter().sum::<f64>() / f64::from(n);
        let expected = clock.spec.stay.mean.as_secs_f64();
        assert!(
            (mean - expected).abs() < expected * 0.05,
            "{mean} vs {expected}"
        );
        stays.sort_by(f64::total_cmp);
        let median = stays[stays.len() / 2];
        assert!((median - 10.0).abs() < 0.5, "median {median}");
        // Departures come out earliest first, each exactly once.
        let mut left = 0;
        let mut last = start;
        for second in 0..=100_000u64 {
            let now = start + Duration::from_secs(second);
            let due = clock.departures_due(now);
            left += due.len();
            if !due.is_empty() {
                assert!(now >= last);
                last = now;
            }
        }
        assert_eq!(left, n as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_leaves_no_backlog_of_arrivals() {
        let start = Instant::now();
        let mut clock = ArrivalClock::new(spec("{rate: 10, stay: 1s}"), 10.0, start);
        let resumed = start + Duration::from_secs(60);
        clock.skip_to(resumed);
        assert!(clock.arrivals_due(resumed) == 0);
        assert!(clock.next_event() > resumed);
    }
}
