//! The service levels a run is judged by: the SLA's thresholds ([`Sla`], the config's `sla:`
//! section), the SLOs they set ([`Slo`], also the label of `wsfleet_sla_threshold`), and the one
//! judgement ([`Sla::judge`]) that the exit verdict, the capacity search, the status and the
//! report all use — with the one error-rate formula ([`Errors::rate`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::label::label_enum;

label_enum! {
    /// The service levels an SLA can set (`wsfleet_sla_threshold{slo}`).
    Slo {
        P99Rtt => "p99_rtt_seconds",
        P99Delivery => "p99_delivery_seconds",
        P99Connect => "p99_connect_seconds",
        ErrorRate => "error_rate",
        MinConnectedRatio => "min_connected_ratio",
    }
}

impl Slo {
    /// Whether `observed` breaks `threshold`: a floor for the connected ratio, a ceiling for
    /// the rest.
    pub fn breached(self, observed: f64, threshold: f64) -> bool {
        match self {
            Slo::MinConnectedRatio => observed < threshold,
            _ => observed > threshold,
        }
    }
}

/// SLA thresholds; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    /// Largest acceptable p99 of the message round trip (ack).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99_rtt: Option<Duration>,
    /// Largest acceptable p99 of end-to-end room delivery latency.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99_delivery: Option<Duration>,
    /// Largest acceptable p99 of the connect handshake.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99_connect: Option<Duration>,
    /// Largest acceptable error rate: "0.1%" or 0.001. Errors are failed connects, ack
    /// timeouts and lost deliveries; operations are connect attempts, messages sent and
    /// deliveries expected.
    #[serde(default, with = "ratio", skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Smallest acceptable ratio of connected to desired users at the end of the run.
    #[serde(default, with = "ratio", skip_serializing_if = "Option::is_none")]
    pub min_connected_ratio: Option<f64>,
}

impl Sla {
    /// (SLO, threshold) pairs for the SLOs set; durations in seconds.
    pub fn thresholds(&self) -> Vec<(Slo, f64)> {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        [
            (Slo::P99Rtt, secs(self.p99_rtt)),
            (Slo::P99Delivery, secs(self.p99_delivery)),
            (Slo::P99Connect, secs(self.p99_connect)),
            (Slo::ErrorRate, self.error_rate),
            (Slo::MinConnectedRatio, self.min_connected_ratio),
        ]
        .into_iter()
        .filter_map(|(slo, value)| Some((slo, value?)))
        .collect()
    }

    /// Every SLO this SLA sets, judged against `observed`.
    pub fn judge(&self, observed: &Observed) -> Vec<SloResult> {
        self.judge_group(None, observed)
    }

    /// [`Sla::judge`] of one group's figures, each result naming the group.
    pub fn judge_group(&self, group: Option<&str>, observed: &Observed) -> Vec<SloResult> {
        self.thresholds()
            .into_iter()
            .map(|(slo, threshold)| {
                let observed = observed.of(slo);
                SloResult {
                    slo: slo.as_str(),
                    group: group.map(str::to_string),
                    threshold,
                    observed,
                    breached: slo.breached(observed, threshold),
                }
            })
            .collect()
    }

    /// The thresholds by their label, for the status, the report and the gauge.
    pub fn by_label(&self) -> std::collections::BTreeMap<String, f64> {
        self.thresholds()
            .into_iter()
            .map(|(slo, v)| (slo.as_str().to_string(), v))
            .collect()
    }
}

/// Ratios written as `0.1%` or `0.001`.
pub(crate) mod ratio {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        let value = match Option::<Raw>::deserialize(d)? {
            None => return Ok(None),
            Some(Raw::Number(n)) => n,
            Some(Raw::Text(text)) => {
                let text = text.trim();
                let (number, scale) = match text.strip_suffix('%') {
                    Some(percent) => (percent.trim(), 0.01),
                    None => (text, 1.0),
                };
                number.parse::<f64>().map_err(|_| {
                    D::Error::custom(format!("expected a ratio like 0.001 or 0.1%, got {text:?}"))
                })? * scale
            }
        };
        if !(0.0..=1.0).contains(&value) {
            return Err(D::Error::custom(format!(
                "a ratio must be between 0 and 1 (0% and 100%), got {value}"
            )));
        }
        Ok(Some(value))
    }

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_f64(*v),
            None => s.serialize_none(),
        }
    }
}

/// The operations of a span of the run and those that failed, for the error rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Errors {
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub sent: u64,
    pub ack_timeouts: u64,
    pub deliveries_expected: u64,
    pub lost: u64,
}

impl Errors {
    /// Errors (failed connects, ack timeouts, lost deliveries) per operation (connect
    /// attempts, messages sent, deliveries expected); 0 when nothing was attempted.
    pub fn rate(&self) -> f64 {
        let operations = self.connect_attempts + self.sent + self.deliveries_expected;
        let errors = self.connect_failures + self.ack_timeouts + self.lost;
        if operations == 0 {
            0.0
        } else {
            errors as f64 / operations as f64
        }
    }

    /// What happened between `earlier` and `self` (both totals).
    pub fn since(&self, earlier: &Errors) -> Errors {
        Errors {
            connect_attempts: self
                .connect_attempts
                .saturating_sub(earlier.connect_attempts),
            connect_failures: self
                .connect_failures
                .saturating_sub(earlier.connect_failures),
            sent: self.sent.saturating_sub(earlier.sent),
            ack_timeouts: self.ack_timeouts.saturating_sub(earlier.ack_timeouts),
            deliveries_expected: self
                .deliveries_expected
                .saturating_sub(earlier.deliveries_expected),
            lost: self.lost.saturating_sub(earlier.lost),
        }
    }
}

/// What a span of the run showed, in the SLOs' terms (latencies in seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observed {
    pub p99_rtt: f64,
    pub p99_delivery: f64,
    pub p99_connect: f64,
    pub error_rate: f64,
    pub connected_ratio: f64,
}

impl Observed {
    fn of(&self, slo: Slo) -> f64 {
        match slo {
            Slo::P99Rtt => self.p99_rtt,
            Slo::P99Delivery => self.p99_delivery,
            Slo::P99Connect => self.p99_connect,
            Slo::ErrorRate => self.error_rate,
            Slo::MinConnectedRatio => self.connected_ratio,
        }
    }
}

/// The SLAs a run is judged by: the fleet's and, in a fleet of several groups, each group's
/// (the fleet's thresholds with the group's own set over them), which judge the groups'
/// figures in its place.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slas {
    pub fleet: Sla,
    /// (group name, its SLA), in the fleet's order; empty in a fleet of one group.
    pub groups: Vec<(String, Sla)>,
}

impl Slas {
    /// The SLA of a fleet of one group.
    pub fn single(fleet: Sla) -> Slas {
        Slas {
            fleet,
            groups: Vec::new(),
        }
    }
}

/// One SLO judged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloResult {
    pub slo: &'static str,
    /// The group judged, in a fleet of several groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub threshold: f64,
    pub observed: f64,
    pub breached: bool,
}

/// The verdict of a judgement: `none` when the SLA sets nothing (no SLA is not a pass).
pub fn verdict(results: &[SloResult]) -> &'static str {
    match (results.is_empty(), results.iter().any(|r| r.breached)) {
        (true, _) => "none",
        (false, true) => "fail",
        (false, false) => "pass",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_judgement_ceilings_floors_and_no_sla_is_no_verdict() {
        let sla: Sla =
            serde_norway::from_str("{p99_rtt: 100ms, error_rate: 1%, min_connected_ratio: 0.9}")
                .expect("sla");
        let observed = Observed {
            p99_rtt: 0.2,
            error_rate: 0.01,
            connected_ratio: 0.8,
            ..Observed::default()
        };
        let results = sla.judge(&observed);
        let breached: Vec<_> = results
            .iter()
            .filter(|r| r.breached)
            .map(|r| r.slo)
            .collect();
        assert_eq!(breached, ["p99_rtt_seconds", "min_connected_ratio"]);
        assert_eq!(verdict(&results), "fail");
        assert_eq!(verdict(&Sla::default().judge(&observed)), "none");
    }

    #[test]
    fn the_error_rate_counts_failures_per_operation_over_a_span() {
        let start = Errors {
            connect_attempts: 10,
            connect_failures: 10,
            ..Errors::default()
        };
        let end = Errors {
            connect_attempts: 20,
            connect_failures: 11,
            sent: 80,
            ack_timeouts: 1,
            deliveries_expected: 100,
            lost: 2,
        };
        assert!((end.since(&start).rate() - 4.0 / 190.0).abs() < 1e-12);
        assert_eq!(
            Errors::default().rate(),
            0.0,
            "nothing attempted, nothing failed"
        );
    }
}
