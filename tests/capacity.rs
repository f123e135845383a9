//! Capacity search end to end: the reference target slows every delivery by a fixed delay for
//! each connection above 50; `wsfleet run --find-capacity` finds that knee within its
//! precision, says which SLO broke, and exits 0 — or 3 when even its first step breaks the SLA.
//! The knee is steep (100 ms per connection against a 200 ms SLA): below it the server adds
//! nothing, so the machine's own latency — on a busy runner tens of milliseconds — cannot move
//! the answer. Each step settles longer than the largest delay a step sees (3 s at 80 users),
//! so what the last step sent late does not land in the next one's window.

#![allow(clippy::unwrap_used)]

mod helpers;

use helpers::*;
use serde_json::json;

/// Runs `--find-capacity` from `start` against `target`; returns the exit code and summary.
async fn search(target: &Target, start: u32, sla: &str) -> (Option<i32>, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.yaml");
    std::fs::write(
        &config,
        format!(
            "target: {}\nlisten: 127.0.0.1:0\nusers: {start}\nconnect_rate: 1000\nmessage_interval: 100ms\n\
             sla: {{p99_delivery: {sla}}}\n\
             capacity: {{dimension: users, start: {start}, factor: 2, max: 400, precision: 0.1, hold: 3s, settle: 4s}}\n",
            target.ws_url()
        ),
    )
    .unwrap();
    let summary = dir.path().join("summary.json");
    let run = tokio::process::Command::new(BIN)
        .args(["run", "--find-capacity", "-c"])
        .arg(&config)
        .arg("--summary-out")
        .arg(&summary)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(std::time::Duration::from_secs(300), run)
        .await
        .expect("the search ends within its bound")
        .unwrap();
    let summary = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    (status.code(), summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_finds_the_knee_within_its_precision() {
    let target = Target::start().await;
    target
        .faults(json!({"knee": 50, "knee_delay": "100ms"}))
        .await;
    let (code, summary) = search(&target, 10, "200ms").await;
    let capacity = &summary["capacity"];
    eprintln!("capacity: {capacity}");
    assert_eq!(code, Some(0), "{capacity}");
    assert_eq!(capacity["state"], "found", "{capacity}");
    let held = capacity["held"].as_f64().unwrap();
    let broke = capacity["broke"].as_f64().unwrap();
    // The knee: nothing added up to 50 connections, 100 ms at 51, 200 ms from 52 on.
    assert!(
        (45.0..=51.0).contains(&held) && broke >= 51.0,
        "held {held}, broke {broke}"
    );
    assert!(
        (broke - held) / held <= 0.1,
        "within the precision: {held} .. {broke}"
    );
    assert_eq!(capacity["broken_slos"], json!(["p99_delivery_seconds"]));
    let steps = capacity["steps"].as_array().unwrap();
    assert!(steps.len() >= 5, "geometric, then bisection: {capacity}");
    assert!(
        steps
            .iter()
            .all(|s| s["observed"]["p99_delivery_seconds"].is_number())
    );
    assert!(
        steps.iter().all(|s| s["value"].as_f64().unwrap() <= 400.0),
        "never past max"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_step_that_breaks_exits_3() {
    let target = Target::start().await;
    target
        .faults(json!({"knee": 50, "knee_delay": "2ms"}))
        .await;
    // 100 ms added at 100 users: twice the SLA, whatever the machine adds.
    let (code, summary) = search(&target, 100, "50ms").await;
    assert_eq!(code, Some(3), "{summary}");
    assert_eq!(summary["capacity"]["state"], "broke_at_start");
    assert_eq!(summary["capacity"]["steps"].as_array().unwrap().len(), 1);
}

/// Through the API like any profile: started with `PUT /api/v1/profile {"search": ...}`,
/// inspected at `GET /api/v1/capacity` and on /metrics, each step a load change of source
/// `capacity`; a pause holds it (no step is judged while paused); cancelled by DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_through_the_api_can_be_paused_inspected_and_cancelled() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 5\nconnect_rate: 1000\nmessage_interval: 100ms\nsla: {{p99_rtt: 1s}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    let url = |path: &str| format!("http://{api}{path}");
    let search =
        json!({"search": {"start": 5, "max": 40, "factor": 1.5, "hold": "2s", "settle": "0s"}});
    let started = http()
        .put(url("/api/v1/profile"))
        .json(&search)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let again = http()
        .put(url("/api/v1/profile"))
        .json(&search)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "one search at a time");
    let bad = http()
        .put(url("/api/v1/profile"))
        .json(&json!({"search": {"start": 5, "max": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    wait_for("a judged step", 30, || async {
        get_json(&url("/api/v1/capacity")).await["steps"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    })
    .await;
    assert!(scrape(api).await.get("wsfleet_capacity_steps") >= 1.0);
    assert_eq!(
        scrape(api).await.get("wsfleet_capacity_search_running"),
        1.0
    );
    // Paused, the search judges nothing.
    http().post(url("/api/v1/pause")).send().await.unwrap();
    let steps = get_json(&url("/api/v1/capacity")).await["steps"]
        .as_array()
        .unwrap()
        .len();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await; // a window longer than a hold
    let paused_steps = get_json(&url("/api/v1/capacity")).await["steps"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(paused_steps, steps, "no step judged while paused");
    http().post(url("/api/v1/resume")).send().await.unwrap();
    let history = get_json(&url("/api/v1/history")).await;
    assert!(
        history["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["source"] == "capacity"),
        "{history}"
    );
    let cancelled = http().delete(url("/api/v1/capacity")).send().await.unwrap();
    assert_eq!(cancelled.status(), 200);
    wait_for("the search to end", 30, || async {
        get_json(&url("/api/v1/capacity")).await["state"] == "cancelled"
    })
    .await;
    assert_eq!(
        scrape(api).await.get("wsfleet_capacity_search_running"),
        0.0
    );
    daemon.shutdown().await.unwrap();
}
