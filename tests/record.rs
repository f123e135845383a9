//! `wsfleet record`: sessions captured in headless Chromium (`tests/browser/har.py` builds the
//! HAR from the DevTools protocol's Network events, as devtools' export does) become
//! scenarios that run against the same server with every frame explained; `--check` passes;
//! and no secret of a capture reaches the written file or the log. Servers: the reference
//! target's `/client` page, a Socket.IO chat (npm `socket.io`), an MQTT broker over
//! WebSocket (npm `aedes`, the browser on mqtt.js) and a protobuf chat (npm `protobufjs`, in
//! the browser too), installed by `scripts/protocol-tools`.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::path::Path;
use std::process::Output;

use helpers::*;

/// `wsfleet ARGS` to its end (bounded to two minutes).
async fn wsfleet<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
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

/// Captures `page` in Chromium until `ready`, records it (with `args`), and checks what every recorded
/// scenario must do: name each part it inferred (`said`), keep the secret (`(variable,
/// value)`) out of the file and the log, fail `--check` until the user fills `{{variable}}`
/// with it, then pass `--check` and run a few users with zero unmatched frames, measured RTT
/// and deliveries.
async fn captured_scenario_runs(
    python: &Path,
    page: &str,
    ready: &str,
    (var, secret): (&str, &str),
    said: &[&str],
    args: &[&str],
) {
    let dir = tempfile::tempdir().unwrap();
    let har = dir.path().join("session.har");
    let seen = browse(python, "har.py", &[page, har.to_str().unwrap(), ready]).await;
    let sockets = seen["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 2, "the user and its peer: {seen}");
    assert!(sockets.iter().all(|s| s["status"] == 101), "{seen}");

    let scenario = dir.path().join("scenario.yaml");
    let record = |more: &[&str]| -> Vec<String> {
        ["record", har.to_str().unwrap()]
            .iter()
            .chain(args)
            .chain(more)
            .map(|a| a.to_string())
            .collect()
    };
    let out = wsfleet(&record(&["-o", scenario.to_str().unwrap()])).await;
    let log = text(&out.stderr);
    assert!(out.status.success(), "{log}");
    let yaml = std::fs::read_to_string(&scenario).unwrap();
    let listed = format!("secret: {{{{{var}}}}}");
    let sessions = "session 1 of the 2 WebSocket sessions in the HAR";
    for said in said.iter().chain(&[listed.as_str(), sessions]) {
        assert!(log.contains(said), "{said:?} in:\n{log}");
    }
    assert!(
        !yaml.contains(secret) && !log.contains(secret),
        "the token leaked:\n{yaml}\n{log}"
    );
    assert!(
        yaml.contains("{{msg_id}}") && yaml.contains("{{seq}}"),
        "{yaml}"
    );

    // The peer's socket is the HAR's second session; there is no third.
    let peer = wsfleet(&record(&["--session", "2"])).await;
    assert!(peer.status.success(), "{}", text(&peer.stderr));
    assert!(text(&peer.stderr).contains("session 2 of the 2"));
    let none = wsfleet(&record(&["--session", "3"])).await;
    assert!(!none.status.success());
    assert!(
        text(&none.stderr).contains("holds 2 WebSocket session(s)"),
        "{}",
        text(&none.stderr)
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
    let filled = yaml.replace(&format!("    {var}: ''"), &format!("    {var}: '{secret}'"));
    assert_ne!(filled, yaml, "the token variable is in the file:\n{yaml}");
    std::fs::write(&scenario, &filled).unwrap();
    let check = wsfleet(&["record", "--check", scenario.to_str().unwrap()]).await;
    let report = text(&check.stderr);
    assert!(check.status.success(), "{report}");
    for part in [
        "connect and login: matched",
        "messages and acks: matched",
        "frames: matched (0 unmatched, 0 invalid)",
    ] {
        assert!(report.contains(part), "{part:?} in:\n{report}");
    }

    let summary = run_summary(&scenario, 4, 3).await;
    let messages = &summary["messages"];
    for zero in ["frames_unmatched", "frames_invalid", "ack_timeouts", "lost"] {
        assert_eq!(messages[zero], 0, "{zero}: {summary}");
    }
    assert!(
        summary["latency"]["message_rtt"]["count"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        summary["latency"]["delivery"]["count"].as_u64().unwrap() > 0,
        "{summary}"
    );
}

const STATUS: &str = "document.getElementById('status').dataset";

/// The ready condition of a page whose `#status` counts acks and deliveries.
fn counted(acked: u32, delivered: u32) -> String {
    format!("{STATUS}.acked >= {acked} && {STATUS}.delivered >= {delivered}")
}

/// The ready condition of a page whose `#status` counts heartbeat answers.
fn pongs(at_least: u32) -> String {
    format!("{STATUS}.pongs >= {at_least}")
}

/// The target's web client (two users in a room, the target requiring a login token the
/// page passes in its URL and login frame): login, heartbeat, messages, acks and deliveries
/// are named, and the scenario runs.
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
    let page = format!("http://{}/client?every=200&token={TOKEN}", target.addr);
    let ready = format!("{} && {}", counted(8, 6), pongs(3));
    captured_scenario_runs(
        &python,
        &page,
        &ready,
        ("token", TOKEN),
        &[
            "login step: `login`, answered by `login_ok`",
            "login step: `join`, answered by `joined`",
            "acked by `ack` (our id at `/id`)",
            "deliveries: `deliver` (sender `/from`, sequence `/seq`, time `/ts`)",
            "heartbeat: `ping`",
        ],
        &[],
    )
    .await;
    drop(target);
}

/// A Socket.IO chat (npm socket.io, its browser client served by the server): the open
/// packet, CONNECT with the auth token, the join, ping/pong, the acked `chat` event and the
/// room's deliveries are named, and the scenario runs against the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_on_socket_io_becomes_a_scenario_that_runs() {
    let Some(python) = selenium() else {
        return;
    };
    let Some(server) =
        NodeServer::start("socket.io", include_str!("servers/socketio_chat.js"), &[])
    else {
        return;
    };
    let page = format!("http://{}/client?every=200&token=s3cret", server.addr);
    captured_scenario_runs(&python, &page, &counted(8, 6), ("token", "s3cret"), &[
        "frames are Socket.IO 4 packets",
        "login step: CONNECT with its auth payload",
        "login step: event `join`, answered by its ack",
        "Engine.IO ping `2`, answered by pong `3`",
        "messages: event `chat`",
        "deliveries: event `chat` (sender `$message/from`, sequence `$message/seq`, time `$message/ts`)",
    ], &[])
    .await;
}

/// MQTT over WebSocket (npm aedes, the browser's mqtt.js): CONNECT with its password,
/// SUBSCRIBE to the room's topic, PINGREQ, PUBLISH at QoS 1 acked by PUBACK and the
/// subscription's deliveries (each PUBACKed) are named, and the scenario runs against the
/// same broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_on_mqtt_over_websocket_becomes_a_scenario_that_runs() {
    let Some(python) = selenium() else {
        return;
    };
    const PASSWORD: &str = "mqtt-s3cret-9";
    let Some(broker) = NodeServer::start(
        "mqtt",
        include_str!("servers/mqtt_broker.js"),
        &[("PASSWORD", PASSWORD)],
    ) else {
        return;
    };
    let page = format!(
        "http://{}/client?every=200&password={PASSWORD}",
        broker.addr
    );
    // A PINGRESP seen: the capture holds a PINGREQ (keep-alive 2 s).
    let ready = format!("{} && {}", counted(20, 20), pongs(1));
    captured_scenario_runs(&python, &page, &ready, ("password", PASSWORD), &[
        "frames are MQTT 3.1.1 packets over WebSocket",
        "login step: CONNECT with a password",
        "login step: SUBSCRIBE to `chat/lobby` as `chat/{{room}}` at QoS 1",
        "heartbeat: PINGREQ",
        "messages: PUBLISH to `chat/{{room}}` at QoS 1",
        "deliveries: PUBLISH from the subscription (sender `/payload/from`, sequence `/payload/seq`, time `/payload/ts`)",
        "deliveries at QoS 1: each answered by its PUBACK",
    ], &[])
    .await;
    assert!(
        broker.stats().await["refused"].as_u64().unwrap() >= 1,
        "the check without the password was refused"
    );
}

/// A protobuf chat (npm protobufjs on both sides), recorded with `--proto chat.proto
/// --message chat.Envelope`: the envelope's oneof names each frame; login with its token,
/// join, ping/pong, the acked `msg` and the room's `deliver`ies are named, and the scenario
/// (`codec: protobuf`) runs against the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_on_protobuf_becomes_a_scenario_that_runs() {
    let Some(python) = selenium() else {
        return;
    };
    const TOKEN: &str = "pb-s3cret-5";
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/proto/chat.proto");
    let Some(server) = NodeServer::start(
        "protobufjs",
        include_str!("servers/protobuf_chat.js"),
        &[("PROTO", proto), ("TOKEN", TOKEN)],
    ) else {
        return;
    };
    let page = format!("http://{}/client?every=200&token={TOKEN}", server.addr);
    // Two pongs: the ping repeats, so it reads as the heartbeat.
    let ready = format!("{} && {}", counted(8, 6), pongs(2));
    captured_scenario_runs(&python, &page, &ready, ("token", TOKEN), &[
        "binary frames are protobuf messages",
        "frames are envelopes: one key names each frame",
        "login step: `login`, answered by `login_ok`",
        "login step: `join`, answered by `joined`",
        "acked by `ack` (our id at `/ack/id`)",
        "deliveries: `deliver` (sender `/deliver/from`, sequence `/deliver/seq`, time `/deliver/ts`)",
        "heartbeat: `ping` every",
    ], &["--proto", proto, "--message", "chat.Envelope"])
    .await;
    let stats = server.stats().await;
    assert!(
        stats["refused"].as_u64().unwrap() >= 1,
        "the check without the token: {stats}"
    );
    assert_eq!(
        stats["invalid"], 0,
        "every frame the scenario sent decoded: {stats}"
    );
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
