//! The run's verdict as JUnit XML (`wsfleet run --junit FILE`), so CI systems show each SLO as
//! a test of their own: one test suite per group judged (the fleet's in a fleet of one group),
//! one test case per SLO, a breach a `<failure>` carrying observed against threshold. Without
//! an SLA the one test case is skipped: nothing was asked, so nothing passed. Follows the
//! Jenkins xUnit plugin's `junit-10.xsd`, which the tests validate it against.

use std::io;

use quick_xml::Writer;
use quick_xml::events::BytesText;

use crate::sla::SloResult;
use crate::summary::Summary;

/// The suite of a fleet of one group.
const FLEET: &str = "fleet";

/// The summary's SLOs as a JUnit XML document.
pub fn render(summary: &Summary) -> String {
    let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing into a Vec cannot fail.
    let _ = write(&mut writer, summary);
    String::from_utf8_lossy(&writer.into_inner()).into_owned()
}

fn write(writer: &mut Writer<Vec<u8>>, summary: &Summary) -> io::Result<()> {
    writer.write_event(quick_xml::events::Event::Decl(
        quick_xml::events::BytesDecl::new("1.0", Some("UTF-8"), None),
    ))?;
    let mut suites: Vec<(&str, Vec<&SloResult>)> = Vec::new();
    for slo in &summary.slos {
        let suite = slo.group.as_deref().unwrap_or(FLEET);
        match suites.iter_mut().find(|(name, _)| *name == suite) {
            Some((_, cases)) => cases.push(slo),
            None => suites.push((suite, vec![slo])),
        }
    }
    let time = seconds(summary.duration_seconds);
    let failures = summary.breaches().count().to_string();
    let tests = summary.slos.len().max(1).to_string();
    writer
        .create_element("testsuites")
        .with_attributes([
            ("name", "wsfleet"),
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("errors", "0"),
            ("time", time.as_str()),
        ])
        .write_inner_content(|w| {
            if suites.is_empty() {
                return unjudged(w, summary, &time);
            }
            for (suite, cases) in &suites {
                write_suite(w, summary, suite, cases, &time)?;
            }
            Ok(())
        })?;
    Ok(())
}

/// One group's SLOs (or the fleet's).
fn write_suite(
    w: &mut Writer<Vec<u8>>,
    summary: &Summary,
    suite: &str,
    cases: &[&SloResult],
    time: &str,
) -> io::Result<()> {
    let failures = cases.iter().filter(|c| c.breached).count().to_string();
    let tests = cases.len().to_string();
    let name = format!("wsfleet sla {suite}");
    w.create_element("testsuite")
        .with_attributes([
            ("name", name.as_str()),
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("errors", "0"),
            ("skipped", "0"),
            ("time", time),
        ])
        .write_inner_content(|w| {
            for case in cases {
                write_case(w, suite, case, time)?;
            }
            suspect(w, summary)
        })?;
    Ok(())
}

fn write_case(
    w: &mut Writer<Vec<u8>>,
    suite: &str,
    case: &SloResult,
    time: &str,
) -> io::Result<()> {
    let classname = format!("wsfleet.sla.{suite}");
    let element = w.create_element("testcase").with_attributes([
        ("name", case.slo.as_str()),
        ("classname", classname.as_str()),
        ("time", time),
    ]);
    if !case.breached {
        element.write_empty()?;
        return Ok(());
    }
    let message = format!(
        "{} observed {} above threshold {}",
        case.slo, case.observed, case.threshold
    );
    let message = if case.slo == "min_connected_ratio" {
        message.replace("above", "below")
    } else {
        message
    };
    let detail = format!(
        "observed: {}\nthreshold: {}{}{}\n",
        case.observed,
        case.threshold,
        case.quantile
            .map(|q| format!("\nquantile: {q}"))
            .unwrap_or_default(),
        case.group
            .as_deref()
            .map(|g| format!("\ngroup: {g}"))
            .unwrap_or_default(),
    );
    element.write_inner_content(|w| {
        w.create_element("failure")
            .with_attributes([("type", "sla_breached"), ("message", message.as_str())])
            .write_text_content(BytesText::new(&detail))?;
        Ok(())
    })?;
    Ok(())
}

/// A run without an SLA: one skipped case saying so.
fn unjudged(w: &mut Writer<Vec<u8>>, summary: &Summary, time: &str) -> io::Result<()> {
    w.create_element("testsuite")
        .with_attributes([
            ("name", "wsfleet sla"),
            ("tests", "1"),
            ("failures", "0"),
            ("errors", "0"),
            ("skipped", "1"),
            ("time", time),
        ])
        .write_inner_content(|w| {
            w.create_element("testcase")
                .with_attributes([
                    ("name", "sla"),
                    ("classname", "wsfleet.sla"),
                    ("time", time),
                ])
                .write_inner_content(|w| {
                    w.create_element("skipped")
                        .with_attribute(("message", "no sla configured: nothing to judge"))
                        .write_empty()?;
                    Ok(())
                })?;
            suspect(w, summary)
        })?;
    Ok(())
}

/// The generator's own saturation, where it happened: the figures may be inflated.
fn suspect(w: &mut Writer<Vec<u8>>, summary: &Summary) -> io::Result<()> {
    if let Some(why) = &summary.suspect {
        w.create_element("system-err")
            .write_text_content(BytesText::new(&format!("SUSPECT: {why}")))?;
    }
    Ok(())
}

/// Seconds as the schema's `SUREFIRE_TIME` wants them: at most three decimals.
fn seconds(value: f64) -> String {
    format!("{value:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn a_breach_is_a_failure_naming_observed_and_threshold() {
        let metrics = Metrics::new();
        metrics
            .connect_result(crate::metrics::ConnectResult::Refused)
            .of(0)
            .inc_by(10);
        let sla: crate::sla::Sla =
            serde_norway::from_str("{error_rate: 1%, p99_rtt: 1s}").expect("sla");
        let summary = Summary::collect(
            &metrics,
            10,
            &sla,
            std::time::Duration::from_millis(2500),
            0,
        );
        let xml = render(&summary);
        assert!(
            xml.contains(r#"<testsuites name="wsfleet" tests="2" failures="1""#),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<testcase name="p99_rtt_seconds" classname="wsfleet.sla.fleet" time="2.500"/>"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"message="error_rate observed 1 above threshold 0.01""#),
            "{xml}"
        );
        let none = render(&Summary::collect(
            &metrics,
            10,
            &crate::sla::Sla::default(),
            std::time::Duration::from_secs(1),
            0,
        ));
        assert!(
            none.contains("<skipped message=\"no sla configured"),
            "{none}"
        );
    }
}
