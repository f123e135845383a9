//! Where a fleet's measurements go, held together: the meters ([`Metrics`]), the last failures
//! with their details ([`Failures`]), and the run's history for the live page and the report
//! ([`History`]). Each is its own piece; none of them knows the others.

use std::sync::Arc;
use std::time::Duration;

use crate::failures::Failures;
use crate::history::History;
use crate::metrics::Metrics;

#[derive(Clone, Default)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub failures: Arc<Failures>,
    pub history: Arc<History>,
}

impl Telemetry {
    /// Telemetry of a fleet of `groups` (their names, in order) whose status quantiles cover
    /// the last `window`.
    pub fn new(window: Duration, groups: &[String]) -> Telemetry {
        Telemetry {
            metrics: Arc::new(Metrics::with_window(window, groups)),
            ..Telemetry::default()
        }
    }
}
