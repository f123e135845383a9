//! The service levels a run is judged by: the SLA's thresholds ([`Sla`], the config's `sla:`
//! section) — latencies at any quantile and in tiers, and rates — the SLOs they set ([`Slo`],
//! also the labels of `wsfleet_sla_threshold{slo, quantile}`), and the one judgement
//! ([`Sla::judge`]) that the exit verdict, the capacity search, the status, the report, JUnit
//! and the baseline comparison all use — with the one formula of each rate ([`Tally`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram as Hdr;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::label::label_enum;

label_enum! {
    /// The latencies an SLA can set thresholds on, each measured into an exact-quantile
    /// HdrHistogram.
    Measure {
        Rtt => "rtt",
        Delivery => "delivery",
        Connect => "connect",
        Login => "login",
        Catchup => "catchup",
    }
}

label_enum! {
    /// The rates an SLA can bound.
    Rate {
        Errors => "error_rate",
        Loss => "loss_rate",
        Duplicates => "duplicate_rate",
        Reconnects => "reconnect_rate",
        Connected => "min_connected_ratio",
    }
}

label_enum! {
    /// What a drift SLO bounds the slope of, over a soak.
    Trend {
        P99Rtt => "p99_rtt",
        P99Delivery => "p99_delivery",
        Rss => "rss",
        Reconnects => "reconnects",
    }
}

impl Trend {
    /// The slope's unit, in its SLO's name.
    fn unit(self) -> &'static str {
        match self {
            Trend::P99Rtt | Trend::P99Delivery => "seconds",
            Trend::Rss => "bytes",
            Trend::Reconnects => "per_second",
        }
    }
}

/// A rate of change per hour, written `50ms/h` (a latency) or `64MiB/h` (memory).
#[derive(Debug, Clone, PartialEq)]
pub struct PerHour {
    text: String,
    /// Seconds or bytes per hour.
    pub value: f64,
}

/// What a [`PerHour`] is a change of.
#[derive(Clone, Copy)]
enum Amount {
    Latency,
    Bytes,
    Number,
}

impl PerHour {
    fn parse(text: &str, kind: Amount) -> Result<PerHour, String> {
        let example = match kind {
            Amount::Latency => "50ms/h",
            Amount::Bytes => "64MiB/h",
            Amount::Number => "0.5/h",
        };
        let amount = text
            .trim()
            .strip_suffix("/h")
            .ok_or_else(|| format!("expected a change per hour like {example}, got {text:?}"))?
            .trim();
        let bad = |err: String| format!("{amount:?} is not an amount like {example}: {err}");
        let value = match kind {
            Amount::Bytes => amount.parse::<bytesize::ByteSize>().map_err(bad)?.as_u64() as f64,
            Amount::Latency => humantime::parse_duration(amount)
                .map_err(|err| bad(err.to_string()))?
                .as_secs_f64(),
            Amount::Number => amount
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad("not a number of 0 or more".into()))?,
        };
        Ok(PerHour {
            text: text.trim().to_string(),
            value,
        })
    }
}

impl Serialize for PerHour {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Drift SLOs: for a run at least `after` long, bounds on how fast things get worse — the
/// slope (least squares, per hour) of the fleet's p99 latencies and of the generator's RSS
/// over the whole run — so a soak that slowly degrades fails even when its end looks fine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drift {
    /// Shorter runs are not judged on drift: a slope over minutes says little about hours.
    #[serde(default = "Drift::default_after", with = "humantime_serde")]
    pub after: Duration,
    /// Largest acceptable growth of the round trip's p99 per hour: `50ms/h`.
    #[serde(
        default,
        deserialize_with = "per_hour_latency",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99_rtt: Option<PerHour>,
    /// Largest acceptable growth of the delivery latency's p99 per hour.
    #[serde(
        default,
        deserialize_with = "per_hour_latency",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99_delivery: Option<PerHour>,
    /// Largest acceptable growth of the generator's resident memory per hour: `64MiB/h`.
    #[serde(
        default,
        deserialize_with = "per_hour_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub rss: Option<PerHour>,
    /// Largest acceptable growth per hour of the unplanned disconnects per second (server
    /// closes, resets, timeouts: each one a reconnect): `0.5/h`.
    #[serde(
        default,
        deserialize_with = "per_hour_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub reconnects: Option<PerHour>,
}

impl Drift {
    fn default_after() -> Duration {
        Duration::from_secs(600)
    }

    /// (trend, largest slope per hour) for the trends it bounds.
    fn thresholds(&self) -> Vec<(Trend, f64)> {
        [
            (Trend::P99Rtt, &self.p99_rtt),
            (Trend::P99Delivery, &self.p99_delivery),
            (Trend::Rss, &self.rss),
            (Trend::Reconnects, &self.reconnects),
        ]
        .into_iter()
        .filter_map(|(trend, limit)| Some((trend, limit.as_ref()?.value)))
        .collect()
    }
}

fn per_hour<'de, D: Deserializer<'de>>(d: D, kind: Amount) -> Result<Option<PerHour>, D::Error> {
    let text = String::deserialize(d)?;
    PerHour::parse(&text, kind)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn per_hour_latency<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PerHour>, D::Error> {
    per_hour(d, Amount::Latency)
}

fn per_hour_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PerHour>, D::Error> {
    per_hour(d, Amount::Bytes)
}

fn per_hour_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PerHour>, D::Error> {
    per_hour(d, Amount::Number)
}

/// How the run's figures moved over it (from its history), per hour.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Trends {
    /// Seconds from the first point to the last.
    pub span_seconds: f64,
    /// Least-squares slope per hour of each [`Trend`], by `Trend as usize` (None: too few
    /// points).
    pub slopes: [Option<f64>; Trend::ALL.len()],
}

/// A quantile strictly between 0 and 1, written `p99`, `p995`, `p9999` (the digits after
/// "0."), `99.5%`, or `0.995`.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Quantile(f64);

/// Finest quantile an SLO may ask for: the histograms keep three significant digits, and a
/// p999999 needs a million samples to mean anything.
const MAX_QUANTILE_DIGITS: usize = 6;

impl Quantile {
    pub fn value(self) -> f64 {
        self.0
    }

    /// The quantile's digits after "0.": `99` for 0.99, `995` for 0.995.
    fn digits(self) -> String {
        let text = format!("{:.*}", MAX_QUANTILE_DIGITS, self.0);
        let digits = text.trim_start_matches("0.").trim_end_matches('0');
        if digits.len() == 1 {
            format!("{digits}0")
        } else {
            digits.to_string()
        }
    }

    /// `0.995`: the `quantile` label's value.
    pub fn label(self) -> String {
        format!("0.{}", self.digits())
    }
}

impl fmt::Display for Quantile {
    /// `p995`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.digits())
    }
}

impl std::str::FromStr for Quantile {
    type Err = String;

    fn from_str(text: &str) -> Result<Quantile, String> {
        let text = text.trim();
        let bad = || {
            format!("expected a quantile like p99, p995, p9999, \"99.5%\" or 0.995, got {text:?}")
        };
        let value = if let Some(digits) = text.strip_prefix('p') {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            format!("0.{digits}").parse::<f64>().map_err(|_| bad())?
        } else if let Some(percent) = text.strip_suffix('%') {
            percent.trim().parse::<f64>().map_err(|_| bad())? / 100.0
        } else {
            text.parse::<f64>().map_err(|_| bad())?
        };
        if !(value > 0.0 && value < 1.0) {
            return Err(format!(
                "a quantile must be above 0 and below 1 (0% and 100%), got {text:?}"
            ));
        }
        let scaled = value * 10f64.powi(MAX_QUANTILE_DIGITS as i32);
        if (scaled.round() - scaled).abs() > 1e-6 {
            return Err(format!(
                "a quantile may have at most {MAX_QUANTILE_DIGITS} digits (p999999), got {text:?}"
            ));
        }
        Ok(Quantile(value))
    }
}

/// Longest latency threshold: the histograms record up to an hour.
pub const MAX_THRESHOLD: Duration = Duration::from_secs(3600);

/// Thresholds of one latency at several quantiles: `{p99: 200ms, "99.99%": 1s}`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tiers(Vec<(Quantile, Duration)>);

impl Tiers {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (Quantile, Duration)> + '_ {
        self.0.iter().copied()
    }

    fn get(&self, quantile: Quantile) -> Option<Duration> {
        self.iter().find(|(q, _)| *q == quantile).map(|(_, d)| d)
    }
}

impl<'de> Deserialize<'de> for Tiers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Tiers, D::Error> {
        use serde::de::Error;
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        let (mut tiers, mut keys) = (Vec::new(), Vec::<String>::new());
        for (key, value) in raw {
            let quantile: Quantile = key.parse().map_err(D::Error::custom)?;
            let threshold = humantime::parse_duration(value.trim()).map_err(|err| {
                D::Error::custom(format!(
                    "{key}: expected a duration like 200ms, got {value:?} ({err})"
                ))
            })?;
            if let Some(other) = keys.iter().zip(&tiers).find(|(_, (q, _))| *q == quantile) {
                return Err(D::Error::custom(format!(
                    "{:?} and {key:?} are the same quantile ({quantile}): give one of them \
                     (a group's tier replaces the fleet's only when written the same way)",
                    other.0
                )));
            }
            keys.push(key.clone());
            tiers.push((quantile, threshold));
        }
        tiers.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        Ok(Tiers(tiers))
    }
}

impl Serialize for Tiers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (quantile, threshold) in &self.0 {
            map.serialize_entry(
                &quantile.to_string(),
                &humantime::format_duration(*threshold).to_string(),
            )?;
        }
        map.end()
    }
}

/// One service level objective: a latency at a quantile, or a rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Slo {
    Latency(Measure, Quantile),
    Rate(Rate),
    /// A slope per hour over a soak.
    Drift(Trend),
}

impl Slo {
    /// Its name in results and the `slo` label: `p99_rtt_seconds`, `p9999_delivery_seconds`,
    /// `error_rate`.
    pub fn name(self) -> String {
        match self {
            Slo::Latency(measure, quantile) => format!("{quantile}_{}_seconds", measure.as_str()),
            Slo::Rate(rate) => rate.as_str().to_string(),
            Slo::Drift(trend) => format!("drift_{}_{}_per_hour", trend.as_str(), trend.unit()),
        }
    }

    /// The `quantile` label's value of a latency SLO.
    pub fn quantile(self) -> Option<Quantile> {
        match self {
            Slo::Latency(_, quantile) => Some(quantile),
            Slo::Rate(_) | Slo::Drift(_) => None,
        }
    }

    /// Whether `observed` breaks `threshold`: a floor for the connected ratio, a ceiling for
    /// the rest.
    pub fn breached(self, observed: f64, threshold: f64) -> bool {
        match self {
            Slo::Rate(Rate::Connected) => observed < threshold,
            _ => observed > threshold,
        }
    }
}

/// SLA thresholds; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    /// Largest acceptable p99 of the message round trip (ack): short for `rtt: {p99: ...}`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99_rtt: Option<Duration>,
    /// Largest acceptable p99 of end-to-end room delivery latency (`delivery: {p99: ...}`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99_delivery: Option<Duration>,
    /// Largest acceptable p99 of the connect handshake (`connect: {p99: ...}`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub p99_connect: Option<Duration>,
    /// Message round trip (ack) thresholds by quantile: `{p99: 200ms, "99.99%": 1s}`.
    #[serde(default, skip_serializing_if = "Tiers::is_empty")]
    pub rtt: Tiers,
    /// End-to-end room delivery latency thresholds by quantile.
    #[serde(default, skip_serializing_if = "Tiers::is_empty")]
    pub delivery: Tiers,
    /// Connect handshake thresholds by quantile.
    #[serde(default, skip_serializing_if = "Tiers::is_empty")]
    pub connect: Tiers,
    /// Login (upgrade to the last login step's reply) thresholds by quantile.
    #[serde(default, skip_serializing_if = "Tiers::is_empty")]
    pub login: Tiers,
    /// Offline catch-up (a returning receiver's time to its last missed message) thresholds.
    #[serde(default, skip_serializing_if = "Tiers::is_empty")]
    pub catchup: Tiers,
    /// Largest acceptable error rate: "0.1%" or 0.001. Errors are failed connects, ack
    /// timeouts and lost deliveries; operations are connect attempts, messages sent and
    /// deliveries expected.
    #[serde(default, with = "ratio", skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Largest acceptable share of expected deliveries lost.
    #[serde(default, with = "ratio", skip_serializing_if = "Option::is_none")]
    pub loss_rate: Option<f64>,
    /// Largest acceptable share of received deliveries that were duplicates.
    #[serde(default, with = "ratio", skip_serializing_if = "Option::is_none")]
    pub duplicate_rate: Option<f64>,
    /// Largest acceptable share of connections the user did not end (closed by the server,
    /// reset, timed out, broken by the protocol) per connection made.
    #[serde(default, with = "ratio", skip_serializing_if = "Option::is_none")]
    pub reconnect_rate: Option<f64>,
    /// Smallest acceptable ratio of connected to desired users at the end of the run.
    #[serde(default, with = "ratio", skip_serializing_if = "Option::is_none")]
    pub min_connected_ratio: Option<f64>,
    /// Bounds on trends over a soak, judged for the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
}

impl Sla {
    /// The tiers of `measure`, with its `p99_*` shorthand among them.
    fn tiers(&self, measure: Measure) -> Vec<(Quantile, Duration)> {
        let (tiers, shorthand) = match measure {
            Measure::Rtt => (&self.rtt, self.p99_rtt),
            Measure::Delivery => (&self.delivery, self.p99_delivery),
            Measure::Connect => (&self.connect, self.p99_connect),
            Measure::Login => (&self.login, None),
            Measure::Catchup => (&self.catchup, None),
        };
        let p99 = Quantile(0.99);
        let mut all: Vec<_> = tiers.iter().collect();
        if let Some(threshold) = shorthand
            && tiers.get(p99).is_none()
        {
            all.push((p99, threshold));
            all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        }
        all
    }

    /// Why this SLA cannot be used, naming the field: a shorthand that contradicts its
    /// tier, or a threshold beyond what the histograms measure.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        let measures = [
            ("sla.p99_rtt", "sla.rtt", self.p99_rtt, &self.rtt),
            (
                "sla.p99_delivery",
                "sla.delivery",
                self.p99_delivery,
                &self.delivery,
            ),
            (
                "sla.p99_connect",
                "sla.connect",
                self.p99_connect,
                &self.connect,
            ),
            ("sla.login", "sla.login", None, &self.login),
            ("sla.catchup", "sla.catchup", None, &self.catchup),
        ];
        for (short_field, field, shorthand, tiers) in measures {
            let format = |d: Duration| humantime::format_duration(d).to_string();
            if let (Some(short), Some(tier)) = (shorthand, tiers.get(Quantile(0.99)))
                && short != tier
            {
                let problem = format!(
                    "is {} but {field}.p99 is {}: give one of them",
                    format(short),
                    format(tier)
                );
                return Some((short_field, problem));
            }
            let too_long = shorthand
                .map(|d| (short_field, d))
                .into_iter()
                .chain(tiers.iter().map(|(_, d)| (field, d)))
                .find(|(_, d)| *d > MAX_THRESHOLD);
            if let Some((field, threshold)) = too_long {
                let problem = format!(
                    "{} is beyond what the histograms measure ({} at most)",
                    format(threshold),
                    format(MAX_THRESHOLD)
                );
                return Some((field, problem));
            }
        }
        None
    }

    /// Every (SLO, threshold) this SLA sets, latencies first; durations in seconds.
    pub fn thresholds(&self) -> Vec<(Slo, f64)> {
        let latencies = Measure::ALL.iter().flat_map(|&measure| {
            self.tiers(measure)
                .into_iter()
                .map(move |(q, d)| (Slo::Latency(measure, q), d.as_secs_f64()))
        });
        let rates = [
            (Rate::Errors, self.error_rate),
            (Rate::Loss, self.loss_rate),
            (Rate::Duplicates, self.duplicate_rate),
            (Rate::Reconnects, self.reconnect_rate),
            (Rate::Connected, self.min_connected_ratio),
        ]
        .into_iter()
        .filter_map(|(rate, value)| Some((Slo::Rate(rate), value?)));
        latencies.chain(rates).collect()
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
                let value = observed.of(slo);
                SloResult {
                    slo: slo.name(),
                    quantile: slo.quantile().map(Quantile::value),
                    group: group.map(str::to_string),
                    threshold,
                    observed: value,
                    breached: slo.breached(value, threshold),
                }
            })
            .collect()
    }

    /// The drift SLOs judged against the run's `trends` (the fleet's): none for a run shorter
    /// than `drift.after`, or without a history.
    pub fn judge_drift(&self, trends: Option<&Trends>) -> Vec<SloResult> {
        let (Some(drift), Some(trends)) = (&self.drift, trends) else {
            return Vec::new();
        };
        if trends.span_seconds < drift.after.as_secs_f64() {
            return Vec::new();
        }
        drift
            .thresholds()
            .into_iter()
            .filter_map(|(trend, threshold)| {
                let slope = trends.slopes[trend as usize]?;
                let slo = Slo::Drift(trend);
                Some(SloResult {
                    slo: slo.name(),
                    quantile: None,
                    group: None,
                    threshold,
                    observed: slope,
                    breached: slo.breached(slope, threshold),
                })
            })
            .collect()
    }

    /// The thresholds by their name, for the status and the report.
    pub fn by_label(&self) -> BTreeMap<String, f64> {
        self.thresholds()
            .into_iter()
            .map(|(slo, v)| (slo.name(), v))
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

/// The counts of a span of the run that its rates are made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub connect_attempts: u64,
    pub connect_failures: u64,
    pub sent: u64,
    pub ack_timeouts: u64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Connections the user did not end: closed by the server, reset, timed out, broken.
    pub unplanned_disconnects: u64,
}

/// `num / den`, 0 when nothing was attempted.
fn share(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl Tally {
    /// Errors (failed connects, ack timeouts, lost deliveries) per operation (connect
    /// attempts, messages sent, deliveries expected); 0 when nothing was attempted.
    pub fn error_rate(&self) -> f64 {
        share(
            self.connect_failures + self.ack_timeouts + self.lost,
            self.connect_attempts + self.sent + self.deliveries_expected,
        )
    }

    /// Lost deliveries per delivery expected.
    pub fn loss_rate(&self) -> f64 {
        share(self.lost, self.deliveries_expected)
    }

    /// Duplicates per delivery received.
    pub fn duplicate_rate(&self) -> f64 {
        share(self.duplicated, self.deliveries_received)
    }

    /// Connections the user did not end per connection made.
    pub fn reconnect_rate(&self) -> f64 {
        share(
            self.unplanned_disconnects,
            self.connect_attempts.saturating_sub(self.connect_failures),
        )
    }

    /// What happened between `earlier` and `self` (both totals).
    pub fn since(&self, earlier: &Tally) -> Tally {
        let less = |now: u64, then: u64| now.saturating_sub(then);
        Tally {
            connect_attempts: less(self.connect_attempts, earlier.connect_attempts),
            connect_failures: less(self.connect_failures, earlier.connect_failures),
            sent: less(self.sent, earlier.sent),
            ack_timeouts: less(self.ack_timeouts, earlier.ack_timeouts),
            deliveries_expected: less(self.deliveries_expected, earlier.deliveries_expected),
            deliveries_received: less(self.deliveries_received, earlier.deliveries_received),
            lost: less(self.lost, earlier.lost),
            duplicated: less(self.duplicated, earlier.duplicated),
            unplanned_disconnects: less(self.unplanned_disconnects, earlier.unplanned_disconnects),
        }
    }
}

/// What a span of the run showed, in the SLOs' terms: each latency's samples (exact quantiles
/// of any tier), the counts of the rates, and the connected ratio at its end.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The samples of each [`Measure`] (microseconds), by `Measure as usize`; a measure
    /// without samples reads 0.
    pub latencies: Vec<Hdr<u64>>,
    pub tally: Tally,
    pub connected_ratio: f64,
}

impl Observed {
    /// The observed value of `slo`: a latency in seconds, or a rate.
    pub fn of(&self, slo: Slo) -> f64 {
        match slo {
            Slo::Latency(measure, quantile) => self
                .latencies
                .get(measure as usize)
                .filter(|hdr| !hdr.is_empty())
                .map_or(0.0, |hdr| {
                    hdr.value_at_quantile(quantile.value()) as f64 / 1e6
                }),
            Slo::Rate(Rate::Errors) => self.tally.error_rate(),
            Slo::Rate(Rate::Loss) => self.tally.loss_rate(),
            Slo::Rate(Rate::Duplicates) => self.tally.duplicate_rate(),
            Slo::Rate(Rate::Reconnects) => self.tally.reconnect_rate(),
            Slo::Rate(Rate::Connected) => self.connected_ratio,
            // Judged from the run's trends ([`Sla::judge_drift`]), not a span's figures.
            Slo::Drift(_) => 0.0,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SloResult {
    /// [`Slo::name`]: `p9999_delivery_seconds`, `error_rate`.
    pub slo: String,
    /// The tier's quantile, for a latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantile: Option<f64>,
    /// The group judged, in a fleet of several groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub threshold: f64,
    pub observed: f64,
    pub breached: bool,
}

impl SloResult {
    /// `chat/p99_rtt_seconds`, or the SLO's name alone in a fleet of one group.
    pub fn qualified_name(&self) -> String {
        match &self.group {
            Some(group) => format!("{group}/{}", self.slo),
            None => self.slo.clone(),
        }
    }
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

    fn sla(yaml: &str) -> Sla {
        serde_norway::from_str(yaml).expect("sla")
    }

    /// Samples (milliseconds) of one latency, the rest empty.
    fn observed(measure: Measure, millis: &[(u64, u64)]) -> Observed {
        let mut latencies = vec![Hdr::new_with_bounds(1, 3_600_000_000, 3).expect("hdr"); 5];
        for &(ms, count) in millis {
            latencies[measure as usize]
                .record_n(ms * 1000, count)
                .expect("in range");
        }
        Observed {
            latencies,
            ..Observed::default()
        }
    }

    #[test]
    fn one_judgement_ceilings_floors_and_no_sla_is_no_verdict() {
        let sla = sla("{p99_rtt: 100ms, error_rate: 1%, min_connected_ratio: 0.9}");
        let mut observed = observed(Measure::Rtt, &[(200, 100)]);
        observed.tally = Tally {
            sent: 100,
            ack_timeouts: 2,
            ..Tally::default()
        };
        observed.connected_ratio = 0.8;
        let results = sla.judge(&observed);
        let breached: Vec<_> = results
            .iter()
            .filter(|r| r.breached)
            .map(|r| r.slo.as_str())
            .collect();
        assert_eq!(
            breached,
            ["p99_rtt_seconds", "error_rate", "min_connected_ratio"]
        );
        assert_eq!(verdict(&results), "fail");
        assert_eq!(verdict(&Sla::default().judge(&observed)), "none");
    }

    /// 98.9% of deliveries at 10 ms, 1% at 150 ms, 0.1% at 900 ms: p99 150 ms, p9999 900 ms.
    #[test]
    fn tiers_judge_each_quantile_exactly_and_name_the_tier() {
        let observed = observed(Measure::Delivery, &[(10, 9890), (150, 100), (900, 10)]);
        let judged = |yaml: &str| -> Vec<(String, bool)> {
            sla(yaml)
                .judge(&observed)
                .into_iter()
                .map(|r| (r.slo, r.breached))
                .collect()
        };
        assert_eq!(
            judged(r#"{delivery: {"99%": 200ms, "99.99%": 1s}}"#),
            [
                ("p99_delivery_seconds".into(), false),
                ("p9999_delivery_seconds".into(), false)
            ]
        );
        assert_eq!(
            judged(r#"{delivery: {"99.99%": 500ms}}"#),
            [("p9999_delivery_seconds".into(), true)]
        );
        let result = &sla("{delivery: {p995: 100ms}}").judge(&observed)[0];
        assert_eq!(result.slo, "p995_delivery_seconds");
        assert_eq!(result.quantile, Some(0.995));
        assert!((result.observed - 0.15).abs() < 0.001, "{result:?}");
    }

    #[test]
    fn quantiles_read_in_every_spelling_and_bad_ones_are_named() {
        for (text, label, name) in [
            ("p99", "0.99", "p99"),
            ("p50", "0.50", "p50"),
            ("p5", "0.50", "p50"),
            ("p995", "0.995", "p995"),
            ("99.5%", "0.995", "p995"),
            ("99.99%", "0.9999", "p9999"),
            ("0.999", "0.999", "p999"),
        ] {
            let q: Quantile = text.parse().expect(text);
            assert_eq!((q.label().as_str(), q.to_string().as_str()), (label, name));
        }
        for bad in ["p", "p9x", "100%", "0", "1.5", "fast", "p99999999"] {
            let err = bad.parse::<Quantile>().expect_err(bad);
            assert!(err.contains(bad), "{err}");
        }
        let err = serde_norway::from_str::<Sla>(r#"{rtt: {"p99": 1s, "99%": 2s}}"#)
            .expect_err("two tiers of one quantile");
        assert!(err.to_string().contains("same quantile"), "{err}");
        let err = serde_norway::from_str::<Sla>("{rtt: {p99: soon}}").expect_err("no duration");
        assert!(err.to_string().contains("p99"), "{err}");
        let clash = sla("{p99_rtt: 1s, rtt: {p99: 2s}}")
            .problem()
            .expect("clash");
        assert_eq!(clash.0, "sla.p99_rtt");
        let long = sla("{delivery: {p999: 2h}}").problem().expect("too long");
        assert_eq!(long.0, "sla.delivery");
        assert_eq!(
            sla("{p99_rtt: 1s, rtt: {p99: 1s, p999: 2s}}")
                .thresholds()
                .len(),
            2
        );
    }

    #[test]
    fn drift_is_judged_on_runs_long_enough_and_its_limits_read_per_hour() {
        let sla =
            sla("{drift: {after: 1h, p99_delivery: 100ms/h, rss: 64MiB/h, reconnects: 0.5/h}}");
        let mut trends = Trends {
            span_seconds: 1800.0,
            slopes: [None, Some(0.3), Some(1e6), Some(0.1)],
        };
        assert!(
            sla.judge_drift(Some(&trends)).is_empty(),
            "half an hour is not judged"
        );
        trends.span_seconds = 7200.0;
        let judged: Vec<_> = sla
            .judge_drift(Some(&trends))
            .into_iter()
            .map(|r| (r.slo, r.threshold, r.breached))
            .collect();
        assert_eq!(
            judged,
            [
                ("drift_p99_delivery_seconds_per_hour".to_string(), 0.1, true),
                ("drift_rss_bytes_per_hour".to_string(), 67_108_864.0, false),
                (
                    "drift_reconnects_per_second_per_hour".to_string(),
                    0.5,
                    false
                ),
            ]
        );
        for bad in [
            "{drift: {p99_rtt: 50ms}}",
            "{drift: {rss: lots/h}}",
            "{drift: {reconnects: -1/h}}",
        ] {
            let err = serde_norway::from_str::<Sla>(bad)
                .expect_err(bad)
                .to_string();
            assert!(err.contains("/h") || err.contains("amount"), "{bad}: {err}");
        }
    }

    #[test]
    fn every_rate_counts_per_its_own_operations_over_a_span() {
        let start = Tally {
            connect_attempts: 10,
            connect_failures: 10,
            ..Tally::default()
        };
        let end = Tally {
            connect_attempts: 20,
            connect_failures: 11,
            sent: 80,
            ack_timeouts: 1,
            deliveries_expected: 100,
            deliveries_received: 99,
            lost: 2,
            duplicated: 1,
            unplanned_disconnects: 3,
        };
        let span = end.since(&start);
        assert!((span.error_rate() - 4.0 / 190.0).abs() < 1e-12);
        assert!((span.loss_rate() - 0.02).abs() < 1e-12);
        assert!((span.duplicate_rate() - 1.0 / 99.0).abs() < 1e-12);
        assert!((span.reconnect_rate() - 3.0 / 9.0).abs() < 1e-12);
        assert_eq!(
            Tally::default().error_rate(),
            0.0,
            "nothing attempted, nothing failed"
        );
    }
}
