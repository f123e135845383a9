//! Capacity search: the most load the server holds within its SLA, found by the fleet itself.
//!
//! One dimension grows — users, the per-user message rate, or the connect rate — first
//! geometrically from `start` by `factor`, then by bisection between the last step that held
//! and the first that broke, until they are within `precision` (or `max` is reached). Each step
//! is applied through the fleet (a load change from source `capacity`), given time to ramp and
//! `settle`, then held for `hold` and judged by the config's SLA over that window only: p99
//! round trip and delivery from exact HdrHistogram differences, the error rate from counter
//! differences, the connected ratio at its end. A step during which the generator itself was
//! saturated ends the search: then the generator is the limit, and no number is claimed
//! about the server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::fleet::{FleetHandle, Origin};
use crate::load::LoadPatch;
use crate::metrics::{Metrics, Source};
use crate::sla::{Measure, Sla, Slas};

/// The dimension that grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Users connected.
    #[default]
    Users,
    /// Messages per second each user sends.
    MessageRate,
    /// Connection attempts per second.
    ConnectRate,
}

/// `capacity:` in the config, or `{"search": {...}}` for `PUT /api/v1/profile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapacitySpec {
    #[serde(default)]
    pub dimension: Dimension,
    /// The first step's value.
    pub start: f64,
    /// Geometric growth per step until one breaks (> 1; default 2).
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// The largest value tried (and never above `limits:`).
    pub max: f64,
    /// Stop when the first step that broke is within this fraction of the last that held
    /// (default 0.05).
    #[serde(default = "default_precision")]
    pub precision: f64,
    /// How long each step is judged.
    #[serde(default = "default_hold", with = "humantime_serde")]
    #[schema(value_type = String, example = "60s")]
    pub hold: Duration,
    /// Time after a step's load is reached before its judging window opens.
    #[serde(default = "default_settle", with = "humantime_serde")]
    #[schema(value_type = String, example = "10s")]
    pub settle: Duration,
}

fn default_factor() -> f64 {
    2.0
}
fn default_precision() -> f64 {
    0.05
}
fn default_hold() -> Duration {
    Duration::from_secs(60)
}
fn default_settle() -> Duration {
    Duration::from_secs(10)
}

/// Most steps a search takes, whatever the spec.
const MAX_STEPS: usize = 64;

impl CapacitySpec {
    /// Checks the spec against the SLA it will judge by; the error names the field.
    pub fn validate(&self, sla: &Sla) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            (v.is_finite() && v > 0.0)
                .then_some(())
                .ok_or_else(|| format!("capacity.{name} must be a positive number, got {v}"))
        };
        positive("start", self.start)?;
        positive("max", self.max)?;
        // Every value tried must be a load the fleet can be set to, after rounding.
        let (least, most) = self.dimension.bounds();
        for (name, value) in [("start", self.start), ("max", self.max)] {
            if !(least..=most).contains(&self.round(value)) {
                return Err(format!(
                    "capacity.{name} must be between {least} and {most} {}, got {value}",
                    self.dimension.unit()
                ));
            }
        }
        if self.max < self.start {
            return Err(format!(
                "capacity.max ({}) is below capacity.start ({})",
                self.max, self.start
            ));
        }
        if !(self.factor > 1.0 && self.factor <= 100.0) {
            return Err(format!(
                "capacity.factor must be above 1 and at most 100, got {}",
                self.factor
            ));
        }
        if !(self.precision > 0.0 && self.precision < 1.0) {
            return Err(format!(
                "capacity.precision must be a fraction between 0 and 1, got {}",
                self.precision
            ));
        }
        for (name, value) in [("hold", self.hold), ("settle", self.settle)] {
            crate::load::check_duration(
                name,
                value,
                Duration::ZERO,
                crate::load::MAX_TIMEOUT,
                None,
            )
            .map_err(|err| format!("capacity.{name}: {}", err.problem))?;
        }
        if self.hold.is_zero() {
            return Err("capacity.hold must be longer than 0s".into());
        }
        if sla.thresholds().is_empty() {
            return Err(
                "a capacity search judges steps by the SLA: give the config an `sla:` section"
                    .into(),
            );
        }
        Ok(())
    }

    /// The load patch that puts the fleet at `value` of the dimension; a value that maps to
    /// no valid load is an error, never a panic (the fleet checks the patch again).
    fn patch(&self, value: f64) -> Result<LoadPatch, String> {
        let (least, most) = self.dimension.bounds();
        if !(least..=most).contains(&value) {
            return Err(format!(
                "step {value} is outside {least}..={most} {}",
                self.dimension.unit()
            ));
        }
        Ok(match self.dimension {
            Dimension::Users => LoadPatch {
                users: Some(value.round() as u32),
                ..LoadPatch::default()
            },
            Dimension::MessageRate => LoadPatch {
                message_interval: Some(
                    Duration::try_from_secs_f64(1.0 / value)
                        .map_err(|err| format!("step {value} messages/s: {err}"))?,
                ),
                ..LoadPatch::default()
            },
            Dimension::ConnectRate => LoadPatch {
                connect_rate: Some(value),
                ..LoadPatch::default()
            },
        })
    }

    /// Values are whole users; rates keep three decimals.
    fn round(&self, value: f64) -> f64 {
        match self.dimension {
            Dimension::Users => value.round().max(1.0),
            _ => (value * 1000.0).round() / 1000.0,
        }
    }
}

impl Dimension {
    /// The values a step may take: what [`crate::load::Load::validate`] accepts once the
    /// value is turned into a load (a message rate of 1000/s is the 1 ms interval; 1/3600 the
    /// 1 h one, below the 0.001 that three decimals keep).
    fn bounds(self) -> (f64, f64) {
        use crate::load::{MAX_CONNECT_RATE, MAX_USERS, MIN_CONNECT_RATE, MIN_MESSAGE_INTERVAL};
        match self {
            Dimension::Users => (1.0, f64::from(MAX_USERS)),
            Dimension::MessageRate => (0.001, 1.0 / MIN_MESSAGE_INTERVAL.as_secs_f64()),
            Dimension::ConnectRate => (MIN_CONNECT_RATE, MAX_CONNECT_RATE),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Dimension::Users => "users",
            Dimension::MessageRate => "messages per second per user",
            Dimension::ConnectRate => "connects per second",
        }
    }
}

/// One judged step: the load and what each SLO measured over its window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Step {
    pub value: f64,
    pub held: bool,
    /// The SLOs it broke (names as in `wsfleet_sla_threshold{slo}`).
    pub broke: Vec<String>,
    /// Each SLO's value over the step's window.
    pub observed: std::collections::BTreeMap<String, f64>,
    pub generator_saturated: bool,
}

/// Where a search stands, or how it ended.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Outcome {
    /// `running`, `found`, `broke_at_start` (even the first step broke), `reached_max`,
    /// `generator_limit` (the generator saturated: no number about the server), `cancelled`,
    /// `failed` (a step could not be applied, or the search itself failed).
    pub state: String,
    pub dimension: Dimension,
    /// The highest load that held.
    pub held: Option<f64>,
    /// The first load that broke, and the SLOs it broke.
    pub broke: Option<f64>,
    pub broken_slos: Vec<String>,
    /// Every step, in the order taken: the curve of each SLO against the load.
    pub steps: Vec<Step>,
}

/// A search's shared view, for the API and the gauges.
pub type Shared = Arc<Mutex<Outcome>>;

/// Counter totals at the start of a judging window.
struct Mark {
    books: crate::metrics::Mark,
    saturations: u64,
}

impl Mark {
    fn take(metrics: &Metrics) -> Mark {
        Mark {
            books: metrics.mark(),
            saturations: metrics.generator_saturations.get(),
        }
    }
}

/// Load changes made by anyone but the search.
fn changes_by_others(metrics: &Metrics) -> u64 {
    Source::ALL
        .iter()
        .filter(|&&s| s != Source::Capacity)
        .map(|&s| metrics.load_changes(s).get())
        .sum()
}

/// Runs a search to its end (or until `cancel`), sharing its progress in `shared`. Each step
/// is judged by the SLA in force when it is judged (a reload may change it).
pub async fn run(
    spec: CapacitySpec,
    fleet: FleetHandle,
    metrics: Arc<Metrics>,
    sla: watch::Receiver<Slas>,
    shared: Shared,
    cancel: CancellationToken,
) -> Outcome {
    let update = |f: &dyn Fn(&mut Outcome)| {
        let mut outcome = shared.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut outcome);
        publish(&metrics, &outcome);
    };
    update(&|o| {
        *o = Outcome {
            state: "running".into(),
            dimension: spec.dimension,
            ..Outcome::default()
        }
    });
    let (mut held, mut broke): (Option<f64>, Option<f64>) = (None, None);
    let mut value = spec.round(spec.start);
    let state = loop {
        let taken = shared.lock().unwrap_or_else(|e| e.into_inner()).steps.len();
        if taken >= MAX_STEPS {
            break "found";
        }
        let step = tokio::select! {
            _ = cancel.cancelled() => break "cancelled",
            step = judge(&spec, value, &fleet, &metrics, &sla) => step,
        };
        let step = match step {
            Ok(step) => step,
            Err(err) => {
                tracing::warn!(%err, "capacity search stopped: a step could not be applied");
                break "failed";
            }
        };
        tracing::info!(
            value = step.value,
            held = step.held,
            broke = ?step.broke,
            observed = ?step.observed,
            "capacity step judged"
        );
        let saturated = step.generator_saturated;
        let held_now = step.held;
        update(&|o| o.steps.push(step.clone()));
        if saturated {
            break "generator_limit";
        }
        if held_now {
            held = Some(value);
        } else {
            broke = Some(value);
            update(&|o| {
                o.broken_slos = o.steps.last().map(|s| s.broke.clone()).unwrap_or_default()
            });
        }
        let next = match (held, broke) {
            (None, Some(_)) => break "broke_at_start",
            (Some(lo), None) if lo >= spec.max => break "reached_max",
            (Some(lo), None) => spec.round((lo * spec.factor).min(spec.max)),
            (Some(lo), Some(hi)) if (hi - lo) / lo <= spec.precision => break "found",
            (Some(lo), Some(hi)) => spec.round((lo + hi) / 2.0),
            (None, None) => unreachable!("a step was judged"),
        };
        if Some(next) == held || Some(next) == broke {
            break "found"; // no value left between them at this resolution
        }
        value = next;
    };
    update(&|o| {
        o.state = state.into();
        o.held = held;
        o.broke = broke;
    });
    let outcome = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
    tracing::info!(state, held = ?held, broke = ?broke, slos = ?outcome.broken_slos, "capacity search ended");
    outcome
}

/// Applies `value`, waits for the load to be reached and settle, holds, and judges.
async fn judge(
    spec: &CapacitySpec,
    value: f64,
    fleet: &FleetHandle,
    metrics: &Metrics,
    sla: &watch::Receiver<Slas>,
) -> Result<Step, String> {
    let origin = Origin::new(Source::Capacity, format!("capacity search step {value}"));
    fleet
        .update(spec.patch(value)?, origin)
        .await
        .map_err(|err| err.to_string())?;
    // Reach the step's users (bounded: a server that refuses them is judged as it is).
    let desired = fleet.local_users();
    let ramp = Duration::from_secs_f64(
        f64::from(desired) / fleet.desired().load.fleet.connect_rate.max(1.0) * 2.0 + 10.0,
    );
    let reached = tokio::time::timeout(ramp, async {
        while metrics.users_active.get() < i64::from(desired) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let _ = reached.await;
    tokio::time::sleep(spec.settle).await; // the configured settle time
    // A window during which anyone else changed the load — a pause included — judges nothing:
    // it is taken again once the fleet runs (paused, it waits).
    let (mark, now) = loop {
        let mut desired = fleet.subscribe();
        let _ = desired.wait_for(|d| !d.paused).await;
        let others = changes_by_others(metrics);
        let mark = Mark::take(metrics);
        tokio::time::sleep(spec.hold).await; // the judging window
        if changes_by_others(metrics) == others && !fleet.desired().paused {
            break (mark, Mark::take(metrics));
        }
        tracing::info!(
            value,
            "capacity step judged again: the load changed during its window"
        );
    };
    let connected = if desired == 0 {
        1.0
    } else {
        metrics.users_active.get() as f64 / f64::from(desired)
    };
    let mut observed = metrics.observed(None, Some(&mark.books), connected);
    // Handshakes and logins happen mostly in the ramp, before the window: judged there too.
    for measure in [Measure::Connect, Measure::Login] {
        observed.latencies[measure as usize] = metrics.window_of(measure).latest();
    }
    let results = sla.borrow().fleet.judge(&observed);
    let observed = results
        .iter()
        .map(|r| (r.slo.clone(), r.observed))
        .collect();
    let broke: Vec<String> = results
        .iter()
        .filter(|r| r.breached)
        .map(|r| r.slo.clone())
        .collect();
    let saturated = now.saturations > mark.saturations || metrics.generator_saturated.get() == 1;
    Ok(Step {
        value,
        held: broke.is_empty() && !saturated,
        broke,
        observed,
        generator_saturated: saturated,
    })
}

/// The capacity search started through the API (`PUT /api/v1/profile {"search": ...}`): at
/// most one runs; the last one's outcome stays to be read.
#[derive(Debug, Default)]
pub struct Searches(Mutex<Option<(Shared, CancellationToken)>>);

impl Searches {
    /// Starts a search, unless one runs (then `None`).
    pub fn start(
        &self,
        spec: CapacitySpec,
        fleet: &FleetHandle,
        metrics: &Arc<Metrics>,
        sla: &watch::Receiver<Slas>,
    ) -> Option<Outcome> {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((shared, _)) = current.as_ref()
            && shared.lock().unwrap_or_else(|e| e.into_inner()).state == "running"
        {
            return None;
        }
        let shared: Shared = Arc::new(Mutex::new(Outcome {
            state: "running".into(),
            dimension: spec.dimension,
            ..Outcome::default()
        }));
        let cancel = CancellationToken::new();
        let ended = EndedGuard(Arc::clone(&shared), Arc::clone(metrics));
        let search = run(
            spec,
            fleet.clone(),
            Arc::clone(metrics),
            sla.clone(),
            Arc::clone(&shared),
            cancel.clone(),
        );
        tokio::spawn(async move {
            let _ended = ended;
            search.await
        });
        let outcome = shared.lock().unwrap_or_else(|e| e.into_inner()).clone();
        *current = Some((shared, cancel));
        Some(outcome)
    }

    /// The running or last search.
    pub fn outcome(&self) -> Option<Outcome> {
        let current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .map(|(shared, _)| shared.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Cancels the running search; its outcome, or `None` when none runs.
    pub fn cancel(&self) -> Option<Outcome> {
        let outcome = self.outcome().filter(|o| o.state == "running")?;
        if let Some((_, cancel)) = self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            cancel.cancel();
        }
        Some(outcome)
    }
}

/// Marks a search that ended without saying how (its task panicked or was dropped) as
/// `failed`, so it never stays `running` with nobody running it.
struct EndedGuard(Shared, Arc<Metrics>);

impl Drop for EndedGuard {
    fn drop(&mut self) {
        let mut outcome = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if outcome.state == "running" {
            outcome.state = "failed".into();
            publish(&self.1, &outcome);
        }
    }
}

/// The `wsfleet_capacity_*` gauges from an outcome.
fn publish(metrics: &Metrics, outcome: &Outcome) {
    let g = &metrics.capacity;
    g.running.set(i64::from(outcome.state == "running"));
    g.steps.set(outcome.steps.len() as i64);
    g.held.set(outcome.held.unwrap_or(0.0));
    g.broke.set(outcome.broke.unwrap_or(0.0));
    if let Some(step) = outcome.steps.last() {
        g.step_value.set(step.value);
    }
}

/// The exit code of `--find-capacity`: 0 when a capacity was found (or the maximum held), 3
/// when even the first step broke the SLA, 1 when the generator was the limit or the search
/// was cancelled.
pub fn exit_code(outcome: &Outcome) -> u8 {
    match outcome.state.as_str() {
        "found" | "reached_max" => 0,
        "broke_at_start" => 3,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> CapacitySpec {
        serde_norway::from_str(yaml).expect("spec")
    }

    #[test]
    fn specs_are_checked_against_the_sla() {
        let sla: Sla = serde_norway::from_str("{p99_rtt: 100ms}").expect("sla");
        spec("{start: 10, max: 1000}")
            .validate(&sla)
            .expect("valid");
        for (yaml, says) in [
            (
                "{dimension: message_rate, start: 0.0001, max: 1}",
                "capacity.start",
            ),
            (
                "{dimension: message_rate, start: 1, max: 1e10}",
                "capacity.max",
            ),
            (
                "{dimension: connect_rate, start: 1e-300, max: 10}",
                "capacity.start",
            ),
            ("{start: 10, max: 1e12}", "capacity.max"),
            ("{start: 10, max: 5}", "below"),
            ("{start: 10, max: 100, factor: 1}", "factor"),
            ("{start: 10, max: 100, precision: 2}", "precision"),
            ("{start: 0, max: 100}", "start"),
            ("{start: 10, max: 100, hold: 0s}", "hold"),
        ] {
            let err = spec(yaml).validate(&sla).expect_err(yaml);
            assert!(err.contains(says), "{yaml}: {err}");
        }
        let err = spec("{start: 10, max: 100}")
            .validate(&Sla::default())
            .expect_err("no sla");
        assert!(err.contains("sla"), "{err}");
    }

    /// A search task that dies (here: dropped mid-step, as a panic unwinds it) releases the
    /// API's single search slot: before, it stayed `running` for good, DELETE could not end it
    /// and every new search got 409.
    #[tokio::test(start_paused = true)]
    async fn a_search_that_dies_is_failed_not_running_forever() {
        let shared: Shared = Arc::new(Mutex::new(Outcome {
            state: "running".into(),
            ..Outcome::default()
        }));
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn({
            let guard = EndedGuard(Arc::clone(&shared), Arc::clone(&metrics));
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
            }
        });
        tokio::task::yield_now().await;
        task.abort();
        let _ = task.await;
        assert_eq!(shared.lock().expect("lock").state, "failed");
        assert_eq!(metrics.capacity.running.get(), 0);
    }

    #[test]
    fn steps_become_load_patches() {
        let users = spec("{start: 10, max: 100}");
        assert_eq!(users.patch(12.4).expect("valid").users, Some(12));
        let rate = spec("{dimension: message_rate, start: 1, max: 100}");
        assert_eq!(
            rate.patch(4.0).expect("valid").message_interval,
            Some(Duration::from_millis(250))
        );
        // Before: 0 -> "cannot convert float seconds to Duration" (a panic); 1e10 -> a 0 ns
        // interval, which means "no messages" and held.
        for bad in [0.0, 1e10, f64::NAN] {
            assert!(rate.patch(bad).is_err(), "{bad}");
        }
        assert_eq!(users.round(0.2), 1.0, "at least one user");
    }
}
