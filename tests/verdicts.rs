//! Verdicts for CI and for audit: SLOs on any quantile and in tiers, judged exactly from the
//! run's HdrHistograms after the drain, and the verdict as JUnit XML validated against the
//! Jenkins xUnit plugin's schema.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::path::Path;
use std::process::Command;

use helpers::*;
use serde_json::Value;

/// `wsfleet run` with `config` (a file in `dir`) and `args`: its exit code and stdout.
async fn run(dir: &Path, config: &str, args: &[&str]) -> (Option<i32>, String) {
    let file = dir.join("fleet.yaml");
    std::fs::write(&file, config).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["run", "-c", file.to_str().unwrap()])
        .args(args);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A server whose deliveries are p99 ≈ 150 ms and p9999 ≈ 900 ms (1.5% of them 150 ms late,
/// 0.3% 900 ms late, each overtaken by the rest): a group judged by `{"99%": 200ms,
/// "99.99%": 1s}` passes, one judged by `{"99.99%": 500ms}` fails naming that tier, the run
/// exits 3, and the JUnit file says the same in the schema's terms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_slos_judge_each_quantile_and_name_the_breached_tier() {
    let target = Target::start().await;
    target
        .faults(serde_json::json!({"tail": [
            {"share": 0.015, "delay": "150ms"},
            {"share": 0.003, "delay": "900ms"},
        ]}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (summary, junit) = (
        dir.path().join("summary.json"),
        dir.path().join("junit.xml"),
    );
    let config = format!(
        "target: {}\nlisten: 127.0.0.1:0\nusers: 40\nconnect_rate: 1000\nmessage_interval: 100ms\n\
         scenario: {{extends: im, room_size: 10}}\ngroups:\n\
         \x20 - {{name: tiers, users: 20, sla: {{delivery: {{\"99%\": 200ms, \"99.99%\": 1s}}}}}}\n\
         \x20 - {{name: strict, users: 20, sla: {{delivery: {{\"99.99%\": 500ms}}}}}}\n",
        target.ws_url()
    );
    let (code, stdout) = run(
        dir.path(),
        &config,
        &[
            "--duration",
            "10s",
            "--summary-out",
            summary.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, Some(3), "one group breached: {stdout}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let slos: Vec<(String, String, f64, bool)> = summary["slos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["group"].as_str().unwrap().to_string(),
                s["slo"].as_str().unwrap().to_string(),
                s["observed"].as_f64().unwrap(),
                s["breached"].as_bool().unwrap(),
            )
        })
        .collect();
    eprintln!("{slos:?}");
    let names: Vec<_> = slos
        .iter()
        .map(|(g, slo, _, breached)| (g.as_str(), slo.as_str(), *breached))
        .collect();
    assert_eq!(
        names,
        [
            ("tiers", "p99_delivery_seconds", false),
            ("tiers", "p9999_delivery_seconds", false),
            ("strict", "p9999_delivery_seconds", true),
        ]
    );
    // Exact quantiles of the samples: the 150 ms band sets the p99, the 900 ms band the p9999.
    let (p99, p9999) = (slos[0].2, slos[1].2);
    assert!((0.15..0.2).contains(&p99), "p99 {p99}");
    assert!((0.9..1.0).contains(&p9999), "p9999 {p9999}");
    let groups = summary["groups"].as_array().unwrap();
    assert_eq!(groups[0]["verdict"], "pass");
    assert_eq!(groups[1]["verdict"], "fail");
    assert!(
        stdout.contains("SLO strict/p9999_delivery_seconds") && stdout.contains("BREACHED"),
        "{stdout}"
    );

    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"<testsuites name="wsfleet" tests="3" failures="1""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase name="p9999_delivery_seconds" classname="wsfleet.sla.strict""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<failure type="sla_breached" message="p9999_delivery_seconds observed"#),
        "{xml}"
    );
    validate_junit(&junit);
}

/// Validates `file` against the Jenkins xUnit plugin's `junit-10.xsd` (scripts/test fetches
/// it from PyPI) with Python's xmlschema; says loudly when either is missing.
fn validate_junit(file: &Path) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test/junit-10.xsd");
    let Some(python) = venv_python("xmlschema") else {
        return;
    };
    if !installed(
        schema.to_str().unwrap(),
        "the JUnit schema .venv-test/junit-10.xsd (scripts/test fetches it)",
    ) {
        return;
    }
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, xmlschema; xmlschema.XMLSchema(sys.argv[1]).validate(sys.argv[2]); print('valid')",
        ])
        .arg(&schema)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} is not valid JUnit XML: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `wsfleet compare` and `run --baseline`: a run against a target that adds 20 ms to every
/// delivery regressed from one without (exit 3, the delivery quantiles named, the table in the
/// summary and the report); a summary compared with itself did not (exit 0); a file that is not
/// a summary, or a limit that means nothing, is refused (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_slower_than_its_baseline_regresses_and_the_same_run_does_not() {
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let config = format!(
        "target: {}\nlisten: 127.0.0.1:0\nusers: 10\nconnect_rate: 1000\nmessage_interval: 100ms\n\
         scenario: {{extends: im, room_size: 5}}\n",
        target.ws_url()
    );
    let (code, stdout) = run(
        dir.path(),
        &config,
        &["--duration", "4s", "--summary-out", &path("base.json")],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}");
    target.faults(serde_json::json!({"delay": "20ms"})).await;
    let (code, stdout) = run(
        dir.path(),
        &config,
        &[
            "--duration",
            "4s",
            "--summary-out",
            &path("run.json"),
            "--report",
            &path("report.html"),
            "--baseline",
            &path("base.json"),
        ],
    )
    .await;
    assert_eq!(code, Some(3), "a regression fails the run: {stdout}");
    assert!(stdout.contains("compared with"), "{stdout}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(path("run.json")).unwrap()).unwrap();
    let regressions = summary["comparison"]["regressions"].to_string();
    assert!(regressions.contains("\"p50_delivery\""), "{regressions}");
    let row = summary["comparison"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["figure"] == "p50_delivery")
        .unwrap()
        .clone();
    assert!(row["run"].as_f64().unwrap() >= 0.020, "{row}");
    assert!(
        row["run"].as_f64().unwrap() - row["base"].as_f64().unwrap() > 0.015,
        "{row}"
    );
    assert_eq!(
        summary["verdict"], "none",
        "no SLA: the regression alone failed it"
    );
    let report = std::fs::read_to_string(path("report.html")).unwrap();
    assert!(
        report.contains("\"regressions\":[\"p50_delivery\""),
        "the report carries it"
    );

    let compare = |args: Vec<String>| {
        let out = Command::new(BIN)
            .arg("compare")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, table, _) = compare(vec![path("base.json"), path("run.json")]);
    assert_eq!(code, Some(3), "{table}");
    let line = table
        .lines()
        .find(|l| l.trim_start().starts_with("p50_delivery "))
        .unwrap();
    assert!(line.ends_with("REGRESSED"), "{table}");
    assert!(table.contains("comparison   REGRESSED: "), "{table}");
    let (code, table, _) = compare(vec![path("base.json"), path("base.json")]);
    assert_eq!(code, Some(0), "{table}");
    assert!(table.contains("comparison   no regression"), "{table}");
    assert!(!table.contains("REGRESSED"), "{table}");
    // Allowed: 20 ms more at the p50 and p90 is within 10x; the p99 within 100 ms.
    let (_, table, _) = compare(vec![
        path("base.json"),
        path("run.json"),
        "--max-regression".into(),
        "p50_delivery=1000%".into(),
        "--max-regression".into(),
        "p90_delivery=1000%".into(),
        "--max-regression".into(),
        "p99_delivery=100ms".into(),
    ]);
    let delivery_regressed = table
        .lines()
        .any(|l| l.contains("_delivery ") && l.ends_with("REGRESSED"));
    assert!(!delivery_regressed, "{table}");
    let (code, _, stderr) = compare(vec![path("base.json"), path("report.html")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("report.html is not a wsfleet summary"),
        "{stderr}"
    );
    let (code, _, stderr) = compare(vec![
        path("base.json"),
        path("run.json"),
        "--max-regression".into(),
        "p98_delivery=10%".into(),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("p98_delivery"), "{stderr}");
}

/// `--report-dir`: three runs (one passing its SLA, one failing it, one without) leave three
/// reports and summaries under names that sort by start, and an index listing each with its
/// verdict; each report says what ran (version, build, config hash, host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runs_leave_three_reports_and_an_index_of_their_verdicts() {
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("reports");
    for (sla, code) in [("{error_rate: 50%}", 0), ("{p99_rtt: 1us}", 3), ("{}", 0)] {
        let config = format!(
            "target: {}\nlisten: 127.0.0.1:0\nusers: 4\nmessage_interval: 100ms\nsla: {sla}\n",
            target.ws_url()
        );
        let (exit, stdout) = run(
            dir.path(),
            &config,
            &["--duration", "2s", "--report-dir", kept.to_str().unwrap()],
        )
        .await;
        assert_eq!(exit, Some(code), "{sla}: {stdout}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&kept)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names.len(),
        7,
        "three reports, three summaries, an index: {names:?}"
    );
    assert!(names.contains(&"index.html".to_string()));
    let index = std::fs::read_to_string(kept.join("index.html")).unwrap();
    assert!(index.contains("3 run(s) kept here"), "{index}");
    let verdicts: Vec<&str> = index
        .lines()
        .filter(|l| l.starts_with("<tr class="))
        .map(|l| l.split("<b>").nth(1).unwrap().split("</b>").next().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["no SLA", "FAIL", "PASS"],
        "newest first: {index}"
    );
    assert!(
        index.contains("p99_rtt_seconds"),
        "the breach is named: {index}"
    );
    for name in names.iter().filter(|n| n.ends_with(".json")) {
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(kept.join(name)).unwrap()).unwrap();
        let p = &summary["provenance"];
        assert!(
            p["version"].as_str().unwrap().starts_with("wsfleet "),
            "{p}"
        );
        assert_eq!(p["config_sha256"].as_str().unwrap().len(), 64, "{p}");
        let stem = name.trim_end_matches(".json");
        assert!(
            stem.starts_with(&p["started_at"].as_str().unwrap()[..4]),
            "{stem}"
        );
        assert!(index.contains(&format!("href=\"{stem}.html\"")), "{index}");
        let report = std::fs::read_to_string(kept.join(format!("{stem}.html"))).unwrap();
        assert!(
            report.contains(p["config_sha256"].as_str().unwrap()),
            "the report says what ran"
        );
    }
    // A place that cannot take reports fails before the run.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let config = format!(
        "target: {}\nlisten: 127.0.0.1:0\nusers: 1\n",
        target.ws_url()
    );
    let (exit, _) = run(
        dir.path(),
        &config,
        &[
            "--duration",
            "2s",
            "--report-dir",
            blocker.join("sub").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(exit, Some(2));
}

/// Drift: a target that slows down steadily (20 ms more per minute) over a 3-minute run fails
/// a drift SLO on the delivery p99's slope (100 ms an hour at most: it grows ~1.2 s an hour)
/// while the p99 SLO of the same run (500 ms) passes — the end looks fine, the trend does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_that_slowly_degrades_fails_its_drift_slo_though_its_p99_passes() {
    let target = Target::start().await;
    target.faults(serde_json::json!({"creep": "20ms"})).await;
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let config = format!(
        "target: {}\nlisten: 127.0.0.1:0\nusers: 10\nmessage_interval: 200ms\n\
         scenario: {{extends: im, room_size: 5}}\n\
         sla: {{p99_delivery: 500ms, drift: {{after: 2m, p99_delivery: 100ms/h, rss: 1GiB/h}}}}\n",
        target.ws_url()
    );
    let (code, stdout) = run(
        dir.path(),
        &config,
        &[
            "--duration",
            "3m",
            "--summary-out",
            summary.to_str().unwrap(),
        ],
    )
    .await;
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let judged: Vec<(String, f64, bool)> = summary["slos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["slo"].as_str().unwrap().to_string(),
                s["observed"].as_f64().unwrap(),
                s["breached"].as_bool().unwrap(),
            )
        })
        .collect();
    eprintln!("{judged:?}");
    assert_eq!(code, Some(3), "{stdout}");
    let find = |name: &str| judged.iter().find(|(slo, ..)| slo == name).unwrap().clone();
    let (_, p99, p99_breached) = find("p99_delivery_seconds");
    assert!(
        !p99_breached && p99 < 0.5,
        "the final figure passes: {judged:?}"
    );
    let (_, slope, drift_breached) = find("drift_p99_delivery_seconds_per_hour");
    assert!(drift_breached, "{judged:?}");
    // 20 ms a minute is 1.2 s an hour (the status window's p99 lags, so a little less).
    assert!((0.6..2.0).contains(&slope), "slope {slope} s/h");
    let (_, _, rss_breached) = find("drift_rss_bytes_per_hour");
    assert!(!rss_breached, "{judged:?}");
}

/// The status judges every tier as things stand (the last status window), by the same
/// judgement as the verdict: what the live page's "SLOs breached now" shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_judges_every_tier_now() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 6\nmessage_interval: 100ms\nstatus_window: 1s\n\
         scenario: {{extends: im, room_size: 3}}\n\
         sla: {{delivery: {{p50: 1us, \"99.9%\": 10s}}, error_rate: 50%}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    wait_for("a window of deliveries judged", 30, || async {
        status(api).await["slos"]
            .as_array()
            .is_some_and(|slos| slos.iter().any(|s| s["observed"].as_f64() > Some(0.0)))
    })
    .await;
    let slos: Vec<(String, Option<f64>, bool)> = status(api).await["slos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["slo"].as_str().unwrap().to_string(),
                s["quantile"].as_f64(),
                s["breached"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        slos,
        [
            ("p50_delivery_seconds".to_string(), Some(0.5), true),
            ("p999_delivery_seconds".to_string(), Some(0.999), false),
            ("error_rate".to_string(), None, false),
        ]
    );
    daemon.shutdown().await.unwrap();
}
