//! A run against a baseline (`wsfleet compare BASE.json RUN.json`, `wsfleet run --baseline
//! FILE`): the two summaries side by side — counts, rates, every quantile of every latency,
//! loss, for the fleet and each group both have — with the change, and a verdict against the
//! regressions allowed. By default a latency's p50/p90/p99 may grow 10% or 5 ms, whichever is
//! more, a rate 10% or 0.001, the connected ratio fall by 0.01; `--max-regression NAME=LIMIT`
//! sets one figure's own (`p99_delivery=10%`, `p99_rtt=20ms`, `chat/error_rate=0.001`). The
//! higher quantiles, the reach and the counts are shown, not judged, unless named.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Largest summary file read (here and by the report directory's index).
pub(crate) const MAX_SUMMARY_BYTES: u64 = 64 << 20;

/// The exit code of a comparison that found a regression: an SLA breach's
/// (`summary::EXIT_SLA_BREACHED`), so CI treats both as the run failing its gate.
pub const EXIT_REGRESSED: u8 = 3;

/// Which way a figure gets worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Worse {
    Higher,
    Lower,
    /// A count or a rate of work: different, not worse.
    Neither,
}

/// How far a figure may move the worse way: beyond both a share of the base and an amount.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Allowance {
    pub relative: f64,
    pub absolute: f64,
}

impl Allowance {
    fn exceeded(self, worse: Worse, base: f64, run: f64) -> bool {
        let by = match worse {
            Worse::Higher => run - base,
            Worse::Lower => base - run,
            Worse::Neither => return false,
        };
        by > self.absolute && by > self.relative * base.abs()
    }
}

impl std::fmt::Display for Allowance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.relative > 0.0, self.absolute > 0.0) {
            (true, true) => write!(f, "{}% & {}", self.relative * 100.0, self.absolute),
            (true, false) => write!(f, "{}%", self.relative * 100.0),
            _ => write!(f, "{}", self.absolute),
        }
    }
}

/// `NAME=LIMIT` of `--max-regression`: a figure (optionally `group/`) and its allowance —
/// `10%` of the base, a duration (`20ms`) for a latency, or an amount (`0.001`).
#[derive(Debug, Clone, PartialEq)]
pub struct MaxRegression {
    pub figure: String,
    pub allowance: Allowance,
}

impl std::str::FromStr for MaxRegression {
    type Err = String;

    fn from_str(text: &str) -> Result<MaxRegression, String> {
        let (figure, limit) = text.split_once('=').ok_or_else(|| {
            format!("expected NAME=LIMIT like p99_delivery=10% or p99_rtt=20ms, got {text:?}")
        })?;
        let (group, name) = figure
            .rsplit_once('/')
            .map_or((None, figure), |(g, n)| (Some(g), n));
        if !figures().iter().any(|f| f.name == name) || group.is_some_and(str::is_empty) {
            let known: Vec<_> = figures().into_iter().map(|f| f.name).collect();
            return Err(format!(
                "{figure:?} is not a figure of the comparison (one of {}, optionally GROUP/NAME)",
                known.join(", ")
            ));
        }
        let limit = limit.trim();
        let allowance = if let Some(percent) = limit.strip_suffix('%') {
            let share = percent
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|p| *p >= 0.0 && p.is_finite());
            Allowance {
                relative: share.ok_or_else(|| bad_limit(figure, limit))? / 100.0,
                absolute: 0.0,
            }
        } else if let Ok(amount) = limit.parse::<f64>() {
            if !(amount >= 0.0 && amount.is_finite()) {
                return Err(bad_limit(figure, limit));
            }
            Allowance {
                relative: 0.0,
                absolute: amount,
            }
        } else {
            let span: Duration =
                humantime::parse_duration(limit).map_err(|_| bad_limit(figure, limit))?;
            Allowance {
                relative: 0.0,
                absolute: span.as_secs_f64(),
            }
        };
        Ok(MaxRegression {
            figure: figure.to_string(),
            allowance,
        })
    }
}

fn bad_limit(figure: &str, limit: &str) -> String {
    format!("{figure}: expected a limit like 10%, 20ms or 0.001, got {limit:?}")
}

/// One figure a summary has: its name, where it is, which way is worse, and its default
/// allowance (None: shown, not judged).
struct Figure {
    name: String,
    pointer: String,
    worse: Worse,
    allowance: Option<Allowance>,
}

/// Every figure compared, in the table's order.
fn figures() -> Vec<Figure> {
    let figure = |name: &str, pointer: &str, worse, allowance| Figure {
        name: name.to_string(),
        pointer: pointer.to_string(),
        worse,
        allowance,
    };
    let rate = Some(Allowance {
        relative: 0.10,
        absolute: 0.001,
    });
    let mut all = vec![
        figure(
            "connected_ratio",
            "/users/connected_ratio",
            Worse::Lower,
            Some(Allowance {
                relative: 0.0,
                absolute: 0.01,
            }),
        ),
        figure("connects", "/connects/count", Worse::Neither, None),
        figure("sent", "/messages/sent", Worse::Neither, None),
        figure(
            "sent_per_second",
            "/messages/sent_per_second",
            Worse::Neither,
            None,
        ),
        figure("received", "/messages/received", Worse::Neither, None),
        figure(
            "ack_timeouts",
            "/messages/ack_timeouts",
            Worse::Higher,
            None,
        ),
        figure("lost", "/messages/lost", Worse::Higher, None),
        figure("duplicated", "/messages/duplicated", Worse::Higher, None),
        figure("reordered", "/messages/reordered", Worse::Higher, None),
        // Shown, not judged: deliveries in flight at a join or a leave move it; loss_rate is
        // the exact figure.
        figure("reach", "/messages/reach", Worse::Lower, None),
        figure("error_rate", "/error_rate", Worse::Higher, rate),
        figure("loss_rate", "/loss_rate", Worse::Higher, rate),
        figure("duplicate_rate", "/duplicate_rate", Worse::Higher, rate),
        figure("reconnect_rate", "/reconnect_rate", Worse::Higher, rate),
    ];
    let judged = Some(Allowance {
        relative: 0.10,
        absolute: 0.005,
    });
    for (latency, key) in [
        ("rtt", "message_rtt"),
        ("delivery", "delivery"),
        ("connect", "connect"),
        ("login", "login"),
        ("catchup", "catchup"),
    ] {
        for (quantile, allowance) in [
            ("p50", judged),
            ("p90", judged),
            ("p99", judged),
            ("p999", None),
            ("max", None),
        ] {
            all.push(figure(
                &format!("{quantile}_{latency}"),
                &format!("/latency/{key}/{quantile}"),
                Worse::Higher,
                allowance,
            ));
        }
    }
    all
}

/// One row of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The figure, `group/figure` for a group's.
    pub figure: String,
    pub base: f64,
    pub run: f64,
    /// `(run - base) / base`; absent when the base is 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change: Option<f64>,
    /// The regression allowed, when judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Allowance>,
    pub regressed: bool,
}

/// Two summaries compared.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub base: String,
    pub rows: Vec<Row>,
    /// The figures that regressed beyond their allowance.
    pub regressions: Vec<String>,
    /// Groups in only one of the two, not compared.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unmatched_groups: Vec<String>,
}

/// Why a summary file cannot be compared.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a wsfleet summary (--summary-out JSON): {problem}")]
    NotASummary { path: String, problem: String },
}

/// A summary file, read and checked that it is one.
pub fn read_summary(path: &std::path::Path) -> Result<Value, CompareError> {
    let name = path.display().to_string();
    let text = crate::files::read_text_at_start(path, MAX_SUMMARY_BYTES).map_err(|source| {
        CompareError::Read {
            path: name.clone(),
            source,
        }
    })?;
    let summary: Value = serde_json::from_str(&text).map_err(|err| CompareError::NotASummary {
        path: name.clone(),
        problem: err.to_string(),
    })?;
    for needed in [
        "/duration_seconds",
        "/users/connected_ratio",
        "/latency/message_rtt/p99",
    ] {
        if summary.pointer(needed).and_then(Value::as_f64).is_none() {
            return Err(CompareError::NotASummary {
                path: name,
                problem: format!("it has no number at {needed}"),
            });
        }
    }
    Ok(summary)
}

/// `run` against `base` (both summaries as JSON), with `limits` over the default allowances.
pub fn compare(base_name: &str, base: &Value, run: &Value, limits: &[MaxRegression]) -> Comparison {
    let group = |summary: &Value, name: &str| {
        summary["groups"]
            .as_array()
            .and_then(|groups| groups.iter().find(|g| g["name"] == name))
            .cloned()
    };
    let names = |summary: &Value| -> Vec<String> {
        summary["groups"]
            .as_array()
            .map(|groups| {
                groups
                    .iter()
                    .filter_map(|g| g["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut parts = vec![(None, base.clone(), run.clone())];
    let mut unmatched_groups = Vec::new();
    for name in names(base) {
        match group(run, &name) {
            Some(in_run) => parts.push((
                Some(name.clone()),
                group(base, &name).unwrap_or_default(),
                in_run,
            )),
            None => unmatched_groups.push(name),
        }
    }
    unmatched_groups.extend(names(run).into_iter().filter(|n| group(base, n).is_none()));
    let mut rows = Vec::new();
    for (group, base, run) in &parts {
        for figure in figures() {
            let (Some(b), Some(r)) = (
                base.pointer(&figure.pointer).and_then(Value::as_f64),
                run.pointer(&figure.pointer).and_then(Value::as_f64),
            ) else {
                continue;
            };
            let is_latency = figure.pointer.starts_with("/latency/");
            if is_latency && b == 0.0 && r == 0.0 {
                continue; // measured in neither run
            }
            let qualified = match group {
                Some(g) => format!("{g}/{}", figure.name),
                None => figure.name.clone(),
            };
            let named = limits
                .iter()
                .rev()
                .find(|l| l.figure == qualified)
                .or_else(|| limits.iter().rev().find(|l| l.figure == figure.name));
            let allowed = named.map(|l| l.allowance).or(figure.allowance);
            let regressed = allowed.is_some_and(|a| a.exceeded(figure.worse, b, r));
            rows.push(Row {
                figure: qualified,
                base: b,
                run: r,
                change: (b != 0.0).then(|| (r - b) / b.abs()),
                allowed,
                regressed,
            });
        }
    }
    Comparison {
        base: base_name.to_string(),
        regressions: rows
            .iter()
            .filter(|r| r.regressed)
            .map(|r| r.figure.clone())
            .collect(),
        rows,
        unmatched_groups,
    }
}

impl Comparison {
    pub fn regressed(&self) -> bool {
        !self.regressions.is_empty()
    }

    /// A table for people: figure, base, run, change, allowance, verdict.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "compared with {}", self.base);
        let _ = writeln!(
            out,
            "  {:<28} {:>14} {:>14} {:>9}  {:<14}",
            "figure", "base", "run", "change", "allowed"
        );
        for row in &self.rows {
            let change = row
                .change
                .map_or_else(|| "-".to_string(), |c| format!("{:+.1}%", c * 100.0));
            let _ = writeln!(
                out,
                "  {:<28} {:>14} {:>14} {:>9}  {:<14} {}",
                row.figure,
                number(row.base),
                number(row.run),
                change,
                row.allowed
                    .map_or_else(|| "-".to_string(), |a| a.to_string()),
                if row.regressed { "REGRESSED" } else { "" }
            );
        }
        for group in &self.unmatched_groups {
            let _ = writeln!(
                out,
                "  group {group} is in only one of the two: not compared"
            );
        }
        let _ = writeln!(
            out,
            "comparison   {}",
            if self.regressed() {
                format!("REGRESSED: {}", self.regressions.join(", "))
            } else {
                "no regression".into()
            }
        );
        out
    }
}

/// A figure with as many digits as it deserves.
fn number(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.6}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(p99_delivery: f64, error_rate: f64) -> Value {
        json!({
            "duration_seconds": 10.0,
            "users": {"connected_ratio": 1.0},
            "messages": {"sent": 100, "reach": 1.0},
            "error_rate": error_rate,
            "latency": {"message_rtt": {"p50": 0.001, "p99": 0.002}, "delivery": {"p99": p99_delivery}},
            "groups": [{"name": "chat", "users": {"connected_ratio": 1.0}, "error_rate": error_rate,
                        "latency": {"message_rtt": {"p99": 0.002}, "delivery": {"p99": p99_delivery}}}],
        })
    }

    #[test]
    fn a_regression_is_beyond_both_the_share_and_the_amount() {
        let base = summary(0.100, 0.0);
        let same = compare("base", &base, &base, &[]);
        assert!(!same.regressed(), "{}", same.render());
        // +4 ms of 100 ms: under 10% and under 5 ms; +30 ms: over both, fleet and group.
        assert!(!compare("base", &base, &summary(0.104, 0.0), &[]).regressed());
        let slower = compare("base", &base, &summary(0.130, 0.0), &[]);
        assert_eq!(slower.regressions, ["p99_delivery", "chat/p99_delivery"]);
        assert!(
            slower
                .render()
                .contains("REGRESSED: p99_delivery, chat/p99_delivery")
        );
        // A limit of its own: 50% allows the 30%, for the group only.
        let limit: MaxRegression = "chat/p99_delivery=50%".parse().expect("limit");
        assert_eq!(
            compare("base", &base, &summary(0.130, 0.0), &[limit]).regressions,
            ["p99_delivery"]
        );
        let errors = compare("base", &base, &summary(0.1, 0.01), &[]);
        assert_eq!(errors.regressions, ["error_rate", "chat/error_rate"]);
    }

    #[test]
    fn limits_read_as_shares_amounts_or_durations_and_bad_ones_are_named() {
        let read = |text: &str| text.parse::<MaxRegression>().map(|m| m.allowance);
        assert_eq!(
            read("p99_delivery=10%"),
            Ok(Allowance {
                relative: 0.1,
                absolute: 0.0
            })
        );
        assert_eq!(
            read("p99_rtt=20ms"),
            Ok(Allowance {
                relative: 0.0,
                absolute: 0.02
            })
        );
        assert_eq!(
            read("chat/error_rate=0.001"),
            Ok(Allowance {
                relative: 0.0,
                absolute: 0.001
            })
        );
        for bad in [
            "p99_delivery",
            "p98_delivery=1%",
            "p99_delivery=-1%",
            "p99_rtt=soon",
            "/p99_rtt=1%",
        ] {
            let err = read(bad).expect_err(bad);
            assert!(err.contains(bad.split('=').next().unwrap_or(bad)), "{err}");
        }
    }
}
