//! Series kept per group of users: one child per group, labelled `group` in a fleet of
//! several groups and unlabelled in a fleet of one (whose series are exactly what they were
//! before groups existed, and cost no more). Readers get the fleet's figure (the sum, or the
//! union of the histograms) unless they ask for one group with [`PerGroup::of`].

use hdrhistogram::Histogram as Hdr;
use prometheus::{Histogram, IntCounter, IntGauge};

use super::{LatencyWindow, Quantiles, new_hdr, quantiles_of};

/// One `T` per group, in the fleet's order of groups.
pub struct PerGroup<T> {
    children: Vec<T>,
}

impl<T> PerGroup<T> {
    pub fn new(children: Vec<T>) -> PerGroup<T> {
        assert!(!children.is_empty(), "a fleet has at least one group");
        PerGroup { children }
    }

    /// Group `group`'s series.
    pub fn of(&self, group: usize) -> &T {
        &self.children[group]
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.children.iter()
    }
}

impl PerGroup<IntCounter> {
    /// The fleet's count: every group's.
    pub fn get(&self) -> u64 {
        self.children.iter().map(IntCounter::get).sum()
    }

    /// The fleet's count (`None`) or one group's.
    pub fn get_in(&self, group: Option<usize>) -> u64 {
        group.map_or_else(|| self.get(), |g| self.of(g).get())
    }
}

impl PerGroup<IntGauge> {
    /// The fleet's value: every group's.
    pub fn get(&self) -> i64 {
        self.children.iter().map(IntGauge::get).sum()
    }
}

impl PerGroup<prometheus::Gauge> {
    /// The fleet's value: every group's.
    pub fn get(&self) -> f64 {
        self.children.iter().map(prometheus::Gauge::get).sum()
    }
}

impl PerGroup<Histogram> {
    pub fn get_sample_count(&self) -> u64 {
        self.children.iter().map(Histogram::get_sample_count).sum()
    }

    pub fn get_sample_sum(&self) -> f64 {
        self.children.iter().map(Histogram::get_sample_sum).sum()
    }

    /// Samples so far in each bucket of every group together (not cumulative): one count per
    /// upper bound, then the count above the last.
    pub fn bucket_counts(&self) -> Vec<u64> {
        use prometheus::core::Metric as _;
        let mut counts = Vec::new();
        for child in &self.children {
            let metric = child.metric();
            let histogram = metric.get_histogram();
            let cumulative: Vec<u64> = histogram
                .get_bucket()
                .iter()
                .map(|b| b.cumulative_count())
                .chain([histogram.get_sample_count()])
                .collect();
            counts.resize(cumulative.len(), 0);
            let mut below = 0;
            for (count, &upto) in counts.iter_mut().zip(&cumulative) {
                *count += upto.saturating_sub(below);
                below = upto;
            }
        }
        counts
    }
}

impl PerGroup<LatencyWindow> {
    /// The union of every group's histograms as `part` reads them.
    fn union(&self, part: impl Fn(&LatencyWindow) -> Hdr<u64>) -> Hdr<u64> {
        let mut union = new_hdr();
        for window in &self.children {
            // Same bounds on every side: adding cannot fail.
            let _ = union.add(part(window));
        }
        union
    }

    /// The last complete window of every group together.
    pub fn latest(&self) -> Hdr<u64> {
        self.union(LatencyWindow::latest)
    }

    /// Quantiles of the last complete window of every group together.
    pub fn quantiles(&self) -> Quantiles {
        match self.children.as_slice() {
            [one] => one.quantiles(),
            _ => quantiles_of(&self.union(LatencyWindow::latest)),
        }
    }

    /// Quantiles of everything every group recorded since start.
    pub fn total(&self) -> Quantiles {
        quantiles_of(&self.snapshot())
    }

    /// [`PerGroup::total`] of the fleet (`None`) or of one group.
    pub fn total_in(&self, group: Option<usize>) -> Quantiles {
        group.map_or_else(|| self.total(), |g| self.of(g).total())
    }

    /// Everything every group recorded since start ([`PerGroup::quantiles_since`]).
    pub fn snapshot(&self) -> Hdr<u64> {
        self.union(LatencyWindow::snapshot)
    }

    /// Exact quantiles of what every group recorded since `earlier` (a snapshot).
    pub fn quantiles_since(&self, earlier: &Hdr<u64>) -> Quantiles {
        let mut since = self.snapshot();
        // `earlier` is a prefix of the same totals: subtracting cannot underflow a bucket.
        let _ = since.subtract(earlier);
        quantiles_of(&since)
    }

    /// Everything since start, encoded for another process ([`LatencyWindow::encode`]).
    pub fn total_encoded(&self) -> String {
        LatencyWindow::encode(&self.snapshot())
    }
}
