//! Reports kept for audit (`wsfleet run --report-dir DIR`): each run leaves its report and its
//! summary under a stable name — start time and config hash, `20261202T135313Z-3fa9c2d1.html`
//! and `.json` — and the directory's `index.html` lists every run kept there, newest first,
//! with its verdict, so "show me the load test behind this release" has an answer. The index
//! is rebuilt from the summaries in the directory each time, so it never disagrees with them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::output::{Output, OutputError};

/// The index page of a report directory.
pub const INDEX: &str = "index.html";

/// A directory reports are kept in.
#[derive(Debug, Clone)]
pub struct Archive {
    dir: PathBuf,
}

impl Archive {
    /// The directory, made if missing, and checked writable now: a place that cannot take the
    /// reports fails before the run, not after.
    pub fn open(dir: &Path) -> Result<Archive, OutputError> {
        let index = Output::new("--report-dir", &dir.join(INDEX));
        if let Err(source) = std::fs::create_dir_all(dir) {
            return Err(Output::new("--report-dir", dir).failed(source));
        }
        index.check()?;
        Ok(Archive {
            dir: dir.to_path_buf(),
        })
    }

    /// Keeps one run: its report and summary under `stem` (a free name: `-2`, `-3` appended
    /// when taken), then the index. Returns the report's path.
    pub fn keep(&self, stem: &str, report: &str, summary: &str) -> Result<PathBuf, OutputError> {
        let free = (1..)
            .map(|n| {
                if n == 1 {
                    stem.to_string()
                } else {
                    format!("{stem}-{n}")
                }
            })
            .find(|name| !self.dir.join(format!("{name}.json")).exists())
            .unwrap_or_else(|| stem.to_string());
        let html = self.dir.join(format!("{free}.html"));
        Output::new("--report-dir", &self.dir.join(format!("{free}.json")))
            .write(summary.as_bytes())?;
        Output::new("--report-dir", &html).write(report.as_bytes())?;
        Output::new("--report-dir", &self.dir.join(INDEX)).write(self.index().as_bytes())?;
        Ok(html)
    }

    /// The index page: one row per kept summary (a `.json` with a report beside it).
    fn index(&self) -> String {
        let mut runs: Vec<(String, Value)> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|entry| {
                        let path = entry.path();
                        let stem = path.file_stem()?.to_str()?.to_string();
                        let kept = path.extension().is_some_and(|e| e == "json")
                            && path.with_extension("html").is_file();
                        let text =
                            crate::files::read_text(&path, crate::compare::MAX_SUMMARY_BYTES)
                                .ok()?;
                        let summary: Value = serde_json::from_str(&text).ok()?;
                        (kept && summary.get("provenance").is_some()).then_some((stem, summary))
                    })
                    .collect()
            })
            .unwrap_or_default();
        runs.sort_by(|a, b| b.0.cmp(&a.0));
        let mut rows = String::new();
        for (stem, s) in &runs {
            let p = &s["provenance"];
            let text = |v: &Value| escape(v.as_str().unwrap_or("-"));
            let regressed = s["comparison"]["regressions"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
            let verdict = match (s["verdict"].as_str(), regressed) {
                (Some("fail"), _) => "FAIL",
                (_, true) => "REGRESSED",
                (Some("pass"), false) => "PASS",
                _ => "no SLA",
            };
            let breached: Vec<String> = s["slos"]
                .as_array()
                .map(|slos| {
                    slos.iter()
                        .filter(|x| x["breached"] == true)
                        .map(|x| {
                            let name = x["slo"].as_str().unwrap_or("?");
                            x["group"]
                                .as_str()
                                .map_or(name.to_string(), |g| format!("{g}/{name}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let _ = writeln!(
                rows,
                r#"<tr class="{class}"><td><a href="{href}.html">{started}</a></td><td>{ended}</td><td>{duration:.0} s</td><td>{target}</td><td><b>{verdict}</b> {breached}</td><td><code>{hash}</code></td><td>{version} ({build})</td><td>{host}</td></tr>"#,
                class = verdict.to_lowercase().replace(' ', "-"),
                href = escape(stem),
                started = text(&p["started_at"]),
                ended = text(&p["ended_at"]),
                duration = s["duration_seconds"].as_f64().unwrap_or(0.0),
                target = text(&p["target"]),
                breached = escape(&breached.join(", ")),
                hash = escape(
                    &p["config_sha256"]
                        .as_str()
                        .unwrap_or("-")
                        .chars()
                        .take(12)
                        .collect::<String>()
                ),
                version = text(&p["version"]),
                build = text(&p["build"]),
                host = text(&p["host"]),
            );
        }
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>wsfleet reports</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}}.fail b,.regressed b{{color:#b00}}.pass b{{color:#070}}</style>
</head><body><h1>wsfleet reports</h1><p>{count} run(s) kept here, newest first.</p>
<table id="runs"><tr><th>started</th><th>ended</th><th>ran</th><th>target</th><th>verdict</th><th>config</th><th>wsfleet</th><th>host</th></tr>
{rows}</table></body></html>
"#,
            count = runs.len()
        )
    }
}

/// Text safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
