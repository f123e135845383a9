//! The live page and the report, driven in headless Chromium (`tests/browser/page.py`:
//! Debian's chromium and chromium-driver through selenium, installed by the README's test
//! command; without them this test says loudly that it skipped).

#![allow(clippy::unwrap_used)]

mod helpers;

use std::path::PathBuf;

use helpers::*;

const TOKEN: &str = "page-t0ken";

/// `wsfleet run ARGS --report REPORT` to its end (bounded to a minute), which must exit 0.
async fn run_with_report(args: &[&str], report: &std::path::Path) {
    let run = tokio::process::Command::new(BIN)
        .arg("run")
        .args(args)
        .arg("--report")
        .arg(report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_and_steers_the_fleet_and_the_report_opens() {
    let Some(python) = selenium() else {
        return;
    };
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), TOKEN).unwrap();

    // A --duration run with its report, as a person would attach it.
    let report = dir.path().join("run.html");
    let url = target.ws_url();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--users",
        "5",
        "--duration",
        "4s",
        "--target",
    ];
    run_with_report(&[&args[..], &[url.as_str()]].concat(), &report).await;
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.len() < 200_000,
        "the report is bounded: {} bytes",
        html.len()
    );

    let daemon = start_daemon_from_file(
        &dir.path().join("fleet.yaml"),
        &format!(
            "target: {}\nusers: 10\nconnect_rate: 200\nmessage_interval: 100ms\napi: {{token_file: token}}\n\
             sla: {{p99_rtt: 500ms}}\n",
            target.ws_url()
        ),
    )
    .await;
    let url = format!("http://{}/", daemon.addr());
    let (report, out_dir) = (report.to_str().unwrap(), dir.path().to_str().unwrap());
    let seen = browse(&python, "page.py", &[&url, TOKEN, report, out_dir]).await;
    assert!(seen["prompt"].as_str().unwrap().contains("token"), "{seen}");
    for chart in ["users", "rtt", "messages", "connects"] {
        assert!(
            seen["chart_points"][chart].as_u64().unwrap() >= 3,
            "{chart}: {seen}"
        );
    }
    assert_eq!(
        seen["users_after"].as_f64(),
        Some(seen["users_before"].as_f64().unwrap() + 5.0)
    );
    assert_eq!(seen["change_listed"], true, "{seen}");
    assert_eq!(seen["sent_while_paused"].as_f64(), Some(0.0), "{seen}");
    assert!(seen["screenshot"].as_u64().unwrap() > 10_000, "{seen}");
    // That run sets no SLA: no verdict, not a PASS.
    assert_eq!(seen["report_verdict"], "no SLA", "{seen}");
    assert!(
        seen["report_chart_points"]["messages"].as_u64().unwrap() >= 2,
        "{seen}"
    );
    assert!(
        seen["report_text"]
            .as_str()
            .unwrap()
            .contains("message rtt"),
        "{seen}"
    );
    assert!(dir.path().join("page.png").is_file() && dir.path().join("report.png").is_file());
    if let Some(keep) = std::env::var_os("WSFLEET_KEEP_SCREENSHOTS") {
        for shot in ["page.png", "report.png"] {
            std::fs::copy(dir.path().join(shot), PathBuf::from(&keep).join(shot)).unwrap();
        }
    }
    daemon.shutdown().await.unwrap();
}

/// A fleet of several groups: the page lists them, shows the link of the shaped one, and
/// changes one group's users alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_the_groups_and_steers_one() {
    let Some(python) = selenium() else {
        return;
    };
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nconnect_rate: 200\nmessage_interval: 200ms\ngroups:\n\
         \x20 - {{name: chatters, users: 6}}\n\x20 - {{name: bots, users: 4, network: lte}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    wait_for("both groups connected", 30, || async {
        scrape(api).await.sum("wsfleet_users_active") == 10.0
    })
    .await;
    let url = format!("http://{api}/");
    let seen = browse(&python, "groups.py", &[&url, "bots", "7"]).await;
    assert_eq!(
        seen["groups"],
        serde_json::json!(["chatters", "bots"]),
        "{seen}"
    );
    assert!(
        seen["network"].as_str().unwrap().ends_with("bots lte"),
        "only the shaped group, with its preset: {seen}"
    );
    assert_eq!(seen["users_shown"], 4, "{seen}");
    assert_eq!(seen["users_after"].as_f64(), Some(7.0), "{seen}");
    assert_eq!(seen["others_before"], seen["others_after"], "{seen}");
    assert_eq!(
        seen["others_after"]["chatters"].as_f64(),
        Some(6.0),
        "{seen}"
    );
    assert!(seen["group_chart_points"].as_u64().unwrap() >= 2, "{seen}");
    daemon.shutdown().await.unwrap();
}

/// The report's heat map, drawn in headless Chromium, shows a server that answers half its
/// deliveries 200 ms late as two bands — the loopback one and the late one — with nothing
/// shaded between them (which p50/p99 lines would average into one curve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reports_heat_map_shows_a_bimodal_server_as_two_bands() {
    let Some(python) = selenium() else {
        return;
    };
    let target = Target::start().await;
    target
        .faults(serde_json::json!({"tail": [{"share": 0.5, "delay": "200ms"}]}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("run.html");
    let config = dir.path().join("fleet.yaml");
    std::fs::write(
        &config,
        format!(
            "target: {}\nlisten: 127.0.0.1:0\nusers: 10\nmessage_interval: 100ms\n\
             scenario: {{extends: im, room_size: 5}}\n",
            target.ws_url()
        ),
    )
    .unwrap();
    run_with_report(
        &["-c", config.to_str().unwrap(), "--duration", "5s"],
        &report,
    )
    .await;
    let url = format!("file://{}", report.display());
    let seen = browse(&python, "heat.py", &[&url, dir.path().to_str().unwrap()]).await;
    let shade: Vec<f64> = seen["shade"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let bounds: Vec<f64> = seen["bounds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let row = |secs: f64| bounds.iter().position(|&b| secs <= b).unwrap();
    let darkest =
        |rows: std::ops::RangeInclusive<usize>| rows.map(|r| shade[r]).fold(0.0_f64, f64::max);
    let lightest =
        |rows: std::ops::RangeInclusive<usize>| rows.map(|r| shade[r]).fold(1.0_f64, f64::min);
    // Loopback deliveries below 50 ms (milliseconds here; a busy runner may add tens), the
    // late half just above 200 ms; between them a row at most a quarter as dark as either band
    // (a few stray samples of the ramp may shade it).
    let (fast, late) = (darkest(0..=row(0.05)), darkest(row(0.2)..=row(0.5)));
    let gap = lightest(row(0.1)..=row(0.2));
    assert!(
        fast > 0.3 && late > 0.3 && gap < fast.min(late) / 4.0,
        "two bands, a gap between: {seen}"
    );
    assert!(seen["screenshot"].as_u64().unwrap() > 1_000, "{seen}");
    if let Some(keep) = std::env::var_os("WSFLEET_KEEP_SCREENSHOTS") {
        std::fs::copy(
            dir.path().join("heat.png"),
            PathBuf::from(&keep).join("heat.png"),
        )
        .unwrap();
    }
}
