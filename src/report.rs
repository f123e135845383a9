//! The run report: one self-contained HTML file (the live page's, with the data embedded) that
//! a person attaches to a release ticket — the verdict and each SLO, the summary table, the
//! charts over the whole run (downsampled, see [`crate::history`]), the profile's stages, the
//! load changes and the config used. Built from the same [`Summary`] as `--summary-out`, so
//! the two never disagree. `GET /api/v1/report` any time; `wsfleet run --report FILE` at the
//! end of a run.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::Snapshot;
use crate::profile::ProfileStatus;
use crate::summary::Summary;

/// The page the report is rendered into (also the live page, `GET /`).
pub const PAGE: &str = include_str!("api/page.html");
const SLOT: &str = "__REPORT_DATA__";

/// What a report shows.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// Unix time, seconds.
    pub generated: f64,
    pub target: String,
    pub summary: &'a Summary,
    pub history: Snapshot,
    pub profile: Option<ProfileStatus>,
    /// SLA thresholds by SLO name, for the charts' lines.
    pub sla: BTreeMap<String, f64>,
    /// The effective config, secrets masked.
    pub config: serde_json::Value,
}

impl<'a> Report<'a> {
    /// The report of `summary`, with the run's `history`.
    pub fn new(
        summary: &'a Summary,
        history: Snapshot,
        profile: Option<ProfileStatus>,
        sla: &crate::sla::Slas,
        target: &url::Url,
        config: serde_json::Value,
    ) -> Report<'a> {
        Report {
            generated: crate::history::unix_now(),
            target: crate::failures::redact(target.as_str()).into_owned(),
            summary,
            history,
            profile,
            sla: sla.fleet.by_label(),
            config,
        }
    }

    /// The HTML file.
    pub fn render(&self) -> String {
        let json = serde_json::to_string(self)
            .unwrap_or_else(|err| format!(r#"{{"error":"encoding the report failed: {err}"}}"#));
        PAGE.replacen(SLOT, &script_safe(&json), 1)
    }
}

/// JSON that can sit inside a `<script>` element: nothing in it can close the element or
/// open a comment that swallows the rest of the page (`</script>`, `<!--`), and no line
/// separator ends a JavaScript string early. Every replacement is a JSON escape of the same
/// character, so the data reads back unchanged.
fn script_safe(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The config as JSON with secrets masked ([`crate::failures::redact`]).
pub fn config_json(config: &crate::config::Config) -> serde_json::Value {
    let text = serde_json::to_string(config).unwrap_or_default();
    serde_json::from_str(&crate::failures::redact(&text)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A caller's User-Agent lands in the change log the report embeds: before, `<!--<script>`
    /// escaped only `</` and blanked the page.
    #[test]
    fn nothing_in_the_data_can_break_out_of_the_script_element() {
        let hostile = serde_json::json!({"who": "<!--<script>x</script>&\u{2028}\u{2029}"});
        let safe = script_safe(&hostile.to_string());
        for needle in ["<", ">", "&", "\u{2028}", "\u{2029}"] {
            assert!(!safe.contains(needle), "{needle} in {safe}");
        }
        let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
        assert_eq!(back, hostile, "the data reads back unchanged");
    }
}
