//! `wsfleet record`: sessions captured in headless Chromium (`tests/browser/har.py` builds the
//! HAR from the DevTools protocol's Network events, as devtools' export does) become
//! scenarios that run against the same server with every frame explained; `--check` passes;
//! and no secret of a capture reaches the written file or the log.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::path::Path;
use std::process::Output;

use helpers::*;

/// `wsfleet ARGS` to its end (bounded to two minutes).
async fn wsfleet(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(BIN)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(120), run)
        .await
        .expect("wsfleet ended in time")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the scenario at `path` with `users` for `seconds`: its summary.
async fn run_summary(path: &Path, users: u32, seconds: u32) -> serde_json::Value {
    let summary = path.with_extension("summary.json");
    let out = wsfleet(&[
        "run",
        "-c",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--users",
        &users.to_string(),
        "--duration",
        &format!("{seconds}s"),
        "--summary-out",
        summary.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap()
}

/// The target's web client in Chromium (two users in a room, the target requiring a login
/// token the page passes in its URL and login frame): the recorded scenario names the login,
/// heartbeat, messages, acks and deliveries, leaves the token out, and — the token filled in,
/// as a user would — runs with zero unmatched frames, measured RTT and deliveries; `--check`
/// of the written file passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_on_the_target_becomes_a_scenario_that_runs() {
    let Some(python) = selenium() else {
        return;
    };
    const TOKEN: &str = "l0gin-s3cret-77";
    let target = Target::start_with(wsfleet::target::TargetOptions {
        token: Some(TOKEN.into()),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let har = dir.path().join("session.har");
    let page = format!("http://{}/client?every=200&token={TOKEN}", target.addr);
    let status = "document.getElementById('status').dataset";
    let ready = format!("{status}.acked >= 8 && {status}.delivered >= 6 && {status}.pongs >= 3");
    let seen = browse(&python, "har.py", &[&page, har.to_str().unwrap(), &ready]).await;
    let sockets = seen["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 2, "the user and its peer: {seen}");
    assert!(sockets.iter().all(|s| s["status"] == 101), "{seen}");

    let scenario = dir.path().join("scenario.yaml");
    let out = wsfleet(&[
        "record",
        har.to_str().unwrap(),
        "-o",
        scenario.to_str().unwrap(),
    ])
    .await;
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    let yaml = std::fs::read_to_string(&scenario).unwrap();
    for said in [
        "login step: `login`, answered by `login_ok`",
        "login step: `join`, answered by `joined`",
        "acked by `ack` (our id at `/id`)",
        "deliveries: `deliver` (sender `/from`, sequence `/seq`, time `/ts`)",
        "heartbeat: `ping`",
        "secret: {{token}}",
    ] {
        assert!(log.contains(said), "{said:?} in:\n{log}");
    }
    assert!(
        !yaml.contains(TOKEN) && !log.contains(TOKEN),
        "the token leaked:\n{yaml}\n{log}"
    );
    assert!(
        yaml.contains(r#""id":"{{msg_id}}""#) && yaml.contains(r#""seq":{{seq}}"#),
        "{yaml}"
    );

    // Without the token the server refuses the login, and the check says so.
    let refused = wsfleet(&[
        "record",
        "--check",
        "--check-for",
        "5s",
        scenario.to_str().unwrap(),
    ])
    .await;
    assert!(!refused.status.success(), "{}", text(&refused.stderr));
    assert!(text(&refused.stderr).contains("connect and login: NOT matched"));

    // The user fills the variable from their credentials; then everything matches.
    let filled = yaml.replace("    token: ''", &format!("    token: '{TOKEN}'"));
    assert_ne!(filled, yaml, "the token variable is in the file:\n{yaml}");
    std::fs::write(&scenario, &filled).unwrap();
    let check = wsfleet(&["record", "--check", scenario.to_str().unwrap()]).await;
    let report = text(&check.stderr);
    assert!(check.status.success(), "{report}");
    for part in [
        "connect and login: matched",
        "heartbeat: matched",
        "messages and acks: matched",
        "frames: matched (0 unmatched, 0 invalid)",
    ] {
        assert!(report.contains(part), "{part:?} in:\n{report}");
    }

    let summary = run_summary(&scenario, 4, 3).await;
    let messages = &summary["messages"];
    assert_eq!(messages["frames_unmatched"], 0, "{summary}");
    assert_eq!(messages["frames_invalid"], 0, "{summary}");
    assert_eq!(messages["ack_timeouts"], 0, "{summary}");
    assert_eq!(messages["lost"], 0, "{summary}");
    assert!(
        summary["latency"]["message_rtt"]["count"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        summary["latency"]["delivery"]["count"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(messages["heartbeats"].as_u64().unwrap() > 0, "{summary}");
    drop(target);
}

/// A capture with an `Authorization` header, a token in the URL, a cookie and a token in a
/// frame: none of them reaches the written file or the log; each is a variable, listed.
#[tokio::test]
async fn no_secret_of_a_capture_reaches_the_file_or_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("session.jsonl");
    let secrets = [
        "Bearer-eyJhbGciOi.x.y",
        "url-t0ken-42",
        "sess-c00kie-9",
        "frame-t0ken-5",
    ];
    let mut lines = vec![
        serde_json::json!({
            "url": format!("wss://chat.example.test/ws?access_token={}&room=lobby", secrets[1]),
            "headers": {"Authorization": format!("Bearer {}", secrets[0]), "Cookie": format!("session={}", secrets[2])},
        }),
        serde_json::json!({"dir": "send", "time": 0.0, "data": format!(r#"{{"type":"auth","token":"{}"}}"#, secrets[3])}),
        serde_json::json!({"dir": "receive", "time": 0.01, "data": r#"{"type":"auth_ok"}"#}),
    ];
    for n in 1..=4 {
        let at = f64::from(n);
        lines.push(serde_json::json!({"dir": "send", "time": at, "data": format!(r#"{{"type":"say","id":"m{n}","text":"t{n}"}}"#)}));
        lines.push(serde_json::json!({"dir": "receive", "time": at + 0.01, "data": format!(r#"{{"type":"said","id":"m{n}"}}"#)}));
    }
    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&capture, lines.join("\n")).unwrap();
    let out = wsfleet(&["record", capture.to_str().unwrap()]).await;
    let (yaml, log) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{log}");
    for secret in secrets {
        assert!(
            !yaml.contains(secret) && !log.contains(secret),
            "{secret} leaked:\n{yaml}\n{log}"
        );
    }
    for place in [
        "the Authorization header",
        "the URL's `access_token` parameter",
        "the Cookie header",
        "the `token` field",
    ] {
        assert!(log.contains(place), "{place:?} listed in:\n{log}");
    }
    assert!(yaml.contains("Bearer {{"), "{yaml}");
    assert!(wsfleet::config::Config::parse(&yaml).is_ok(), "{yaml}");
}
