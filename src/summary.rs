//! The end-of-run verdict of `wsfleet run --duration`: per-metric totals, rates and exact
//! quantiles (from the whole-run HdrHistograms), errors by reason, and the SLA checks — for
//! the fleet and, when it has several groups, for each group, judged by its own SLA.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::metrics::{DisconnectReason, MessageCounts, Metrics, Quantiles};
use crate::sla::{Slas, SloResult, verdict};

/// The exit code of a run that breached its SLA.
pub const EXIT_SLA_BREACHED: u8 = 3;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub duration_seconds: f64,
    /// The whole fleet's figures.
    #[serde(flatten)]
    pub fleet: Part,
    /// Every SLO judged: the fleet's, or in a fleet of several groups each group's (by the
    /// group's SLA), naming the group.
    pub slos: Vec<SloResult>,
    /// No SLO breached. Without an SLA there is nothing to pass: see `verdict`.
    pub passed: bool,
    /// `pass`, `fail`, or `none` when the config sets no SLA (a run whose every connect
    /// failed is not a PASS because nobody said what would fail it).
    pub verdict: &'static str,
    /// Why the numbers cannot be fully trusted: the generator itself was saturated during the
    /// run (its latency figures may be inflated). Absent when it never was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect: Option<String>,
    /// What the run was and what ran it (set by whoever ran it: `wsfleet run`, the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::provenance::Provenance>,
    /// The run against its baseline (`--baseline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comparison: Option<crate::compare::Comparison>,
    /// The answer of a capacity search (`--find-capacity`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<crate::capacity::Outcome>,
    /// Each group's figures and verdict, in a fleet of several groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupSummary>,
}

/// A summary reads as the fleet's figures (`summary.messages`, `summary.users`, ...).
impl std::ops::Deref for Summary {
    type Target = Part;

    fn deref(&self) -> &Part {
        &self.fleet
    }
}

/// The figures of the fleet or of one group.
#[derive(Debug, Serialize)]
pub struct Part {
    pub users: Users,
    pub connects: Counted,
    pub disconnects: BTreeMap<&'static str, u64>,
    pub messages: Messages,
    /// Seconds.
    pub latency: Latency,
    /// (failed connects + ack timeouts + lost deliveries) /
    /// (connect attempts + messages sent + deliveries expected).
    pub error_rate: f64,
    /// Lost deliveries per delivery expected.
    pub loss_rate: f64,
    /// Duplicated deliveries per delivery received.
    pub duplicate_rate: f64,
    /// Connections the user did not end (server close, reset, timeouts) per connection made.
    pub reconnect_rate: f64,
}

/// One group's figures and verdict.
#[derive(Debug, Serialize)]
pub struct GroupSummary {
    pub name: String,
    #[serde(flatten)]
    pub figures: Part,
    /// `pass`, `fail` or `none`, by the group's SLA.
    pub verdict: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Users {
    pub desired: u32,
    pub active: i64,
    pub connected_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Counted {
    pub count: u64,
    pub rate_per_second: f64,
    pub errors: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct Messages {
    #[serde(flatten)]
    pub counts: MessageCounts,
    pub sent_per_second: f64,
    /// deliveries_received / deliveries_expected (1 when none were expected).
    pub reach: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub connect: Quantiles,
    pub message_rtt: Quantiles,
    pub delivery: Quantiles,
    pub login: Quantiles,
    pub catchup: Quantiles,
}

impl Part {
    /// The figures of the fleet (`group` None) or of one group, over `secs` of load, with
    /// `desired` users wanted and `active` connected at the end.
    fn collect(
        metrics: &Metrics,
        group: Option<usize>,
        secs: f64,
        desired: u32,
        active: i64,
    ) -> Part {
        let attempts = metrics.connect_attempts_in(group);
        let ratio = |num: f64, den: f64, empty: f64| if den > 0.0 { num / den } else { empty };
        let counts = metrics.message_counts_in(group);
        let tally = metrics.tally_in(group);
        Part {
            users: Users {
                desired,
                active,
                connected_ratio: ratio(active as f64, f64::from(desired), 1.0),
            },
            connects: Counted {
                count: attempts,
                rate_per_second: attempts as f64 / secs,
                errors: metrics
                    .connect_failures_in(group)
                    .map(|(r, n)| (r.as_str(), n))
                    .collect(),
            },
            disconnects: DisconnectReason::ALL
                .iter()
                .map(|&r| (r.as_str(), metrics.disconnect(r).get_in(group)))
                .collect(),
            messages: Messages {
                counts,
                sent_per_second: counts.sent as f64 / secs,
                reach: ratio(
                    counts.deliveries_received as f64,
                    counts.deliveries_expected as f64,
                    1.0,
                ),
            },
            latency: Latency {
                connect: metrics.connect_window.total_in(group),
                message_rtt: metrics.rtt_window.total_in(group),
                delivery: metrics.delivery_window.total_in(group),
                login: metrics.login_window.total_in(group),
                catchup: metrics.catchup_window.total_in(group),
            },
            error_rate: tally.error_rate(),
            loss_rate: tally.loss_rate(),
            duplicate_rate: tally.duplicate_rate(),
            reconnect_rate: tally.reconnect_rate(),
        }
    }

    /// Users, connects, messages, latency and the error rate, one block of lines.
    fn render(&self, out: &mut String) {
        let ms = |s: f64| format!("{:.2}", s * 1000.0);
        let _ = writeln!(
            out,
            "users        desired {}  active {}  connected {:.1}%",
            self.users.desired,
            self.users.active,
            self.users.connected_ratio * 100.0
        );
        let _ = writeln!(
            out,
            "connects     {} ({:.1}/s)  errors {}",
            self.connects.count,
            self.connects.rate_per_second,
            nonzero(&self.connects.errors)
        );
        let _ = writeln!(out, "disconnects  {}", nonzero(&self.disconnects));
        let (m, c) = (&self.messages, &self.messages.counts);
        let _ = writeln!(
            out,
            "messages     sent {} ({:.1}/s)  received {}  ack timeouts {}  lost {}  duplicated {}  reordered {}  reach {:.4}",
            c.sent,
            m.sent_per_second,
            c.received,
            c.ack_timeouts,
            c.lost,
            c.duplicated,
            c.reordered,
            m.reach
        );
        let _ = writeln!(
            out,
            "frames       replies {}  heartbeats {}  unmatched {}  invalid {}  ignored {}  own echoes {}  foreign deliveries {}  untracked deliveries {}  token refreshes {} (failed {})",
            c.replies,
            c.heartbeats,
            c.frames_unmatched,
            c.frames_invalid,
            c.frames_ignored,
            c.own_echoes,
            c.deliveries_foreign,
            c.deliveries_untracked,
            c.token_refreshes,
            c.token_refresh_failures
        );
        let z = &c.compression;
        if z.negotiated + z.declined > 0 {
            let _ = writeln!(
                out,
                "compression  deflate on {} connections (declined by {})  sent {} → {} bytes on the wire  received {} ← {}",
                z.negotiated,
                z.declined,
                z.bytes_sent,
                z.wire_bytes_sent,
                z.bytes_received,
                z.wire_bytes_received
            );
        }
        let o = &c.offline;
        if o.deliveries + o.lost + o.duplicated + o.catchups > 0 {
            let _ = writeln!(
                out,
                "offline      {} returns caught up  {} offline deliveries  lost {}  duplicated {} on the sync path",
                o.catchups, o.deliveries, o.lost, o.duplicated
            );
        }
        let _ = writeln!(
            out,
            "latency (ms)        count      p50      p90      p99     p999      max"
        );
        let l = &self.latency;
        let measured = [
            ("connect", &l.connect),
            ("message rtt", &l.message_rtt),
            ("delivery", &l.delivery),
            ("login", &l.login),
            ("catchup", &l.catchup),
        ];
        for (name, q) in measured.into_iter().filter(|(_, q)| q.count > 0) {
            let _ = writeln!(
                out,
                "  {name:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                q.count,
                ms(q.p50),
                ms(q.p90),
                ms(q.p99),
                ms(q.p999),
                ms(q.max)
            );
        }
        let _ = writeln!(
            out,
            "error rate   {:.4}%  loss {:.4}%  duplicates {:.4}%  reconnects {:.4}%",
            self.error_rate * 100.0,
            self.loss_rate * 100.0,
            self.duplicate_rate * 100.0,
            self.reconnect_rate * 100.0
        );
    }
}

impl Summary {
    /// [`Summary::judge`] of a fleet of one group: `desired` users, `active` at the end,
    /// judged by `sla`.
    pub fn collect(
        metrics: &Metrics,
        desired: u32,
        sla: &crate::sla::Sla,
        elapsed: Duration,
        active: i64,
    ) -> Summary {
        Summary::judge(
            metrics,
            &[desired],
            &Slas::single(sla.clone()),
            elapsed,
            &[active],
            None,
        )
    }

    /// Reads the run's numbers once its books are settled (after [`Daemon::finish`]):
    /// `desired` is this instance's share of each group's users, `elapsed` how long the load
    /// ran, `active` the users of each group connected at its end, `trends` how its figures
    /// moved (the history's). A fleet of several groups is judged group by group, each by its
    /// own SLA; drift, by the fleet's, on the fleet's trends.
    ///
    /// [`Daemon::finish`]: crate::daemon::Daemon::finish
    pub fn judge(
        metrics: &Metrics,
        desired: &[u32],
        slas: &Slas,
        elapsed: Duration,
        active: &[i64],
        trends: Option<&crate::sla::Trends>,
    ) -> Summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let fleet = Part::collect(
            metrics,
            None,
            secs,
            desired.iter().sum(),
            active.iter().sum(),
        );
        let mut slos = Vec::new();
        let mut groups = Vec::new();
        if slas.groups.is_empty() {
            let observed = metrics.observed(None, None, fleet.users.connected_ratio);
            slos = slas.fleet.judge(&observed);
        }
        for (index, (name, sla)) in slas.groups.iter().enumerate() {
            let figures = Part::collect(
                metrics,
                Some(index),
                secs,
                desired.get(index).copied().unwrap_or(0),
                active.get(index).copied().unwrap_or(0),
            );
            let observed = metrics.observed(Some(index), None, figures.users.connected_ratio);
            let judged = sla.judge_group(Some(name), &observed);
            groups.push(GroupSummary {
                name: name.clone(),
                figures,
                verdict: verdict(&judged),
            });
            slos.extend(judged);
        }
        slos.extend(slas.fleet.judge_drift(trends));
        Summary {
            duration_seconds: secs,
            passed: slos.iter().all(|s| !s.breached),
            verdict: verdict(&slos),
            fleet,
            slos,
            capacity: None,
            comparison: None,
            provenance: None,
            groups,
            suspect: match metrics.generator_saturations.get() {
                0 => None,
                n => Some(format!(
                    "the generator was saturated {n} time(s) during the run (event-loop lag or file descriptors): its latency figures may be inflated"
                )),
            },
        }
    }

    /// The run's exit code: a capacity search's own ([`crate::capacity::exit_code`]), else
    /// [`EXIT_SLA_BREACHED`] when an SLO broke or the run regressed from its baseline, else 0
    /// — also without an SLA, whose verdict is `none`: nothing was asked, so nothing failed.
    pub fn exit_code(&self) -> u8 {
        let regressed = self.comparison.as_ref().is_some_and(|c| c.regressed());
        match &self.capacity {
            Some(outcome) => crate::capacity::exit_code(outcome),
            None if self.passed && !regressed => 0,
            None => EXIT_SLA_BREACHED,
        }
    }

    /// The SLOs that were breached.
    pub fn breaches(&self) -> impl Iterator<Item = &SloResult> {
        self.slos.iter().filter(|s| s.breached)
    }

    /// A table for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "wsfleet run summary ({:.1} s)", self.duration_seconds);
        self.fleet.render(&mut out);
        for group in &self.groups {
            let _ = writeln!(out, "group {} ({})", group.name, group.verdict);
            let mut figures = String::new();
            group.figures.render(&mut figures);
            for line in figures.lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
        for slo in &self.slos {
            let _ = writeln!(
                out,
                "SLO {:<22} observed {:<12.6} threshold {:<12.6} {}",
                slo.qualified_name(),
                slo.observed,
                slo.threshold,
                if slo.breached { "BREACHED" } else { "ok" }
            );
        }
        if let Some(c) = &self.capacity {
            let _ = writeln!(
                out,
                "capacity     {} ({:?}): held {} · broke {} ({})",
                c.state,
                c.dimension,
                c.held.map_or("-".into(), |v| v.to_string()),
                c.broke.map_or("-".into(), |v| v.to_string()),
                if c.broken_slos.is_empty() {
                    "-".into()
                } else {
                    c.broken_slos.join(", ")
                }
            );
            for step in &c.steps {
                let _ = writeln!(
                    out,
                    "  step {:>10} {}  {}",
                    step.value,
                    if step.held { "held " } else { "BROKE" },
                    step.observed
                        .iter()
                        .map(|(slo, v)| format!("{slo}={v:.4}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
        }
        if let Some(comparison) = &self.comparison {
            out.push_str(&comparison.render());
        }
        if let Some(why) = &self.suspect {
            let _ = writeln!(out, "SUSPECT      {why}");
        }
        let _ = writeln!(
            out,
            "verdict      {}",
            match self.verdict {
                "pass" => "PASS",
                "fail" => "FAIL",
                _ => "none (no sla configured)",
            }
        );
        out
    }
}

fn nonzero(counts: &BTreeMap<&'static str, u64>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ConnectResult;

    /// A run whose every connect failed: judged by an SLA it fails; without one it has no
    /// verdict (not a pass) and exits 0, the error rate still on its screen.
    #[test]
    fn the_verdict_and_exit_code_follow_the_sla_in_force() {
        let metrics = Metrics::new();
        metrics
            .connect_result(ConnectResult::Refused)
            .of(0)
            .inc_by(10);
        let run = |sla: &str| {
            let sla: crate::sla::Sla = serde_norway::from_str(sla).expect("sla");
            Summary::collect(&metrics, 10, &sla, Duration::from_secs(1), 0)
        };
        let none = run("{}");
        assert_eq!((none.verdict, none.exit_code()), ("none", 0));
        assert!((none.error_rate - 1.0).abs() < 1e-12);
        let rendered = none.render();
        assert!(
            rendered.contains("verdict      none (no sla configured)")
                && rendered.contains("error rate   100.0000%"),
            "{rendered}"
        );
        let failed = run("{error_rate: 1%}");
        assert_eq!(
            (failed.verdict, failed.exit_code()),
            ("fail", EXIT_SLA_BREACHED)
        );
        let passed = run("{error_rate: 100%}");
        assert_eq!((passed.verdict, passed.exit_code()), ("pass", 0));
    }
}
