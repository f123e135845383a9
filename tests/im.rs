//! IM behaviour end to end: login, rooms, acks, delivery latency, and loss / duplicate /
//! reorder detection compared with what the reference target says it did.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::time::Duration;

use helpers::*;
use serde_json::json;

fn im_config(target: &Target, users: u32, interval: &str, extra: &str) -> String {
    format!(
        "target: {}\nusers: {users}\nconnect_rate: 1000\nmessage_interval: {interval}\n\
         loss_grace: 500ms\nstatus_window: 1s\nheartbeat: {{interval: 1s, timeout: 5s}}\n{extra}",
        target.ws_url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_scenario_logs_in_joins_rooms_and_exchanges_messages() {
    full_exchange(Target::start().await).await;
}

/// `wsfleet target --lean` speaks the same protocol: the same exchange, books and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lean_target_speaks_the_same_protocol() {
    let target = Target::start_lean().await;
    let refused = http()
        .get(format!("http://{}/metrics", target.addr))
        .send()
        .await;
    assert!(
        refused.is_err() || refused.unwrap().status() == 404,
        "the lean listener serves /ws only"
    );
    full_exchange(target).await;
}

async fn full_exchange(target: Target) {
    // Sending starts only once every member is in its room, so every message has a full room.
    let daemon = start_daemon(&im_config(&target, 100, "0s", "")).await;
    let api = daemon.addr();
    wait_active(api, 100.0, 30).await;
    assert_eq!(
        patch_load(api, json!({"message_interval": "100ms"}))
            .await
            .status(),
        200
    );
    wait_for("deliveries, acks and app heartbeats", 30, || async {
        let m = scrape(api).await;
        m.get("wsfleet_deliveries_received_total") >= 5000.0
            && m.get("wsfleet_message_rtt_seconds_count") >= 1000.0
            && m.get("wsfleet_heartbeat_rtt_seconds_count") >= 100.0
    })
    .await;
    // Stop sending and let everything in flight arrive: then reach must be exactly 1.
    assert_eq!(
        patch_load(api, json!({"message_interval": "0s"}))
            .await
            .status(),
        200
    );
    // Our counters are flushed from the user threads every 100 ms: wait for them to agree with
    // the target's, which counts at once.
    wait_for(
        "every expected delivery to arrive, as the target counts it",
        30,
        || async {
            let m = scrape(api).await;
            let t = target.metrics().await;
            m.get("wsfleet_deliveries_received_total") == m.get("wsfleet_deliveries_expected_total")
                && m.get("wsfleet_message_rtt_seconds_count")
                    == m.get("wsfleet_messages_sent_total")
                && t.get("wsfleet_target_deliveries_total")
                    == m.get("wsfleet_deliveries_received_total")
        },
    )
    .await;
    let m = scrape(api).await;
    let t = target.metrics().await;
    assert_eq!(t.get(r#"wsfleet_target_logins_total{result="ok"}"#), 100.0);
    assert!(m.get("wsfleet_delivery_latency_seconds_count") > 0.0);
    assert_eq!(m.get("wsfleet_login_duration_seconds_count"), 100.0);
    for counter in [
        "wsfleet_messages_lost_total",
        "wsfleet_messages_duplicated_total",
        "wsfleet_messages_reordered_total",
        "wsfleet_message_timeouts_total",
        "wsfleet_frames_invalid_total",
        "wsfleet_frames_unmatched_total",
    ] {
        assert_eq!(m.sum(counter), 0.0, "{counter}");
    }
    let s = status(api).await;
    assert!(
        s["latency"]["delivery"]["count"].as_u64().unwrap() > 0,
        "{s}"
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_and_duplicated_deliveries_match_what_the_target_did() {
    let target = Target::start().await;
    let daemon = start_daemon(&im_config(&target, 100, "100ms", "")).await;
    let api = daemon.addr();
    wait_active(api, 100.0, 30).await;
    // Every receiver has heard every sender in its room once: baselines are set.
    wait_for("deliveries to flow", 30, || async {
        scrape(api).await.get("wsfleet_deliveries_received_total") >= 9000.0
    })
    .await;

    let before = target
        .metrics()
        .await
        .sum("wsfleet_target_deliveries_total")
        + target
            .metrics()
            .await
            .sum("wsfleet_target_deliveries_dropped_total");
    target
        .faults(json!({"drop": 0.01, "duplicate": 0.01}))
        .await;
    wait_for("20,000 deliveries under faults", 60, || async {
        let t = target.metrics().await;
        t.get("wsfleet_target_deliveries_total") + t.get("wsfleet_target_deliveries_dropped_total")
            - before
            >= 20_000.0
    })
    .await;
    target.faults(json!({"drop": 0.0, "duplicate": 0.0})).await;
    // Let every sender send again, so every drop is followed by a later sequence.
    let after_faults = target
        .metrics()
        .await
        .get("wsfleet_target_deliveries_total");
    wait_for("deliveries after the faults", 30, || async {
        target
            .metrics()
            .await
            .get("wsfleet_target_deliveries_total")
            >= after_faults + 5000.0
    })
    .await;

    let t = target.metrics().await;
    let dropped = t.get("wsfleet_target_deliveries_dropped_total");
    let duplicated = t.get("wsfleet_target_deliveries_duplicated_total");
    assert!(
        dropped >= 100.0 && duplicated >= 100.0,
        "faults happened: {dropped} {duplicated}"
    );
    let within = |seen: f64, truth: f64| (seen - truth).abs() <= (truth * 0.01).max(1.0);
    // Gaps become losses after the 500 ms grace: wait for the count to settle on the truth.
    wait_for(
        "lost == dropped and duplicated == duplicated",
        10,
        || async {
            let m = scrape(api).await;
            within(m.sum("wsfleet_messages_lost_total"), dropped)
                && within(m.sum("wsfleet_messages_duplicated_total"), duplicated)
        },
    )
    .await;
    let m = scrape(api).await;
    assert_eq!(m.get("wsfleet_messages_reordered_total"), 0.0);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_delivery_latency_shows_in_the_median() {
    let target = Target::start().await;
    let daemon = start_daemon(&im_config(&target, 50, "200ms", "")).await;
    let api = daemon.addr();
    wait_active(api, 50.0, 30).await;
    target.faults(json!({"delay": "50ms"})).await;
    let p50 = || async {
        status(api).await["latency"]["delivery"]["p50"]
            .as_f64()
            .unwrap()
    };
    wait_for("the median to include the delay", 30, || async {
        p50().await >= 0.050
    })
    .await;
    // The window just reported may straddle the change; judge the next full one.
    tokio::time::sleep(Duration::from_millis(2100)).await; // two 1 s status windows
    let median = p50().await;
    assert!((0.050..=0.060).contains(&median), "delivery p50 {median} s");
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_shows_in_the_p99_as_users_feel_it() {
    let target = Target::start().await;
    let daemon = start_daemon(&im_config(&target, 50, "100ms", "")).await;
    let api = daemon.addr();
    wait_active(api, 50.0, 30).await;
    let sent = || async { scrape(api).await.get("wsfleet_messages_sent_total") };
    let start = sent().await;
    wait_for("traffic before the stall", 30, || async {
        sent().await >= start + 2000.0
    })
    .await;
    target.faults(json!({"stall": "2s"})).await;
    let at_stall = sent().await;
    // The stall lasts 2 s; sending goes on (open model) and everything arrives afterwards.
    wait_for("traffic during and after the stall", 30, || async {
        sent().await >= at_stall + 3000.0
    })
    .await;
    let m = scrape(api).await;
    let delivery_p99 = histogram_quantile(&m, "wsfleet_delivery_latency_seconds", 0.99);
    let ack_p99 = histogram_quantile(&m, "wsfleet_message_rtt_seconds", 0.99);
    assert!(
        delivery_p99 >= 1.0,
        "delivery p99 {delivery_p99} s hides the stall"
    );
    assert!(ack_p99 >= 1.0, "ack p99 {ack_p99} s hides the stall");
    // Sending went on during the stall: the typical message left on time. (The flood of
    // held-back frames at the end of the stall may delay a few sends; send lag shows that.)
    assert!(histogram_quantile(&m, "wsfleet_send_lag_seconds", 0.5) <= 0.01);
    daemon.shutdown().await.unwrap();
}

/// Lifting a stall releases what it held at once, on a connection that says nothing more:
/// held frames waited for the stall's first end (here an hour) until something else arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifted_stall_releases_held_answers_at_once() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let target = Target::start().await;
    let (ws, _) = tokio_tungstenite::connect_async(target.ws_url())
        .await
        .unwrap();
    let (mut ws, mut incoming) = ws.split();
    let mut next_text = async || loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), incoming.next()).await;
        match frame.expect("an answer within 30 s").unwrap().unwrap() {
            Message::Text(text) => {
                return serde_json::from_str::<serde_json::Value>(&text).unwrap();
            }
            _ => continue,
        }
    };
    ws.send(Message::text(r#"{"type":"login","user":"u0"}"#))
        .await
        .unwrap();
    assert_eq!(next_text().await["type"], "login_ok");
    target.faults(json!({"stall": "1h"})).await;
    ws.send(Message::text(r#"{"type":"ping","n":1}"#))
        .await
        .unwrap();
    wait_for("the ping held", 30, || async {
        target
            .metrics()
            .await
            .get(r#"wsfleet_target_frames_received_total{kind="text"}"#)
            >= 2.0
    })
    .await;
    target.faults(json!({"stall": "0s"})).await;
    let pong = next_text().await;
    assert_eq!(
        (pong["type"].as_str(), pong["n"].as_i64()),
        (Some("pong"), Some(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_a_counted_login_failure_that_is_retried() {
    let target = Target::start_with(wsfleet::target::TargetOptions {
        token: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    let daemon = start_daemon(&im_config(
        &target,
        5,
        "1s",
        "reconnect: {initial: 50ms, max: 200ms}\n",
    ))
    .await;
    let api = daemon.addr();
    wait_for("login failures to be retried", 30, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_connects_total{result="login"}"#)
            >= 10.0
    })
    .await;
    let m = scrape(api).await;
    assert_eq!(m.get("wsfleet_users_active"), 0.0);
    assert_eq!(m.get(r#"wsfleet_connects_total{result="ok"}"#), 0.0);
    assert!(
        target
            .metrics()
            .await
            .get(r#"wsfleet_target_logins_total{result="bad_token"}"#)
            >= 10.0
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_closes_and_reopens_connections() {
    let target = Target::start().await;
    let daemon = start_daemon(&im_config(
        &target,
        20,
        "200ms",
        "lifetime: {min: 200ms, max: 400ms}\n",
    ))
    .await;
    let api = daemon.addr();
    wait_for(
        "every user to churn at least once on average",
        30,
        || async {
            let m = scrape(api).await;
            m.get(r#"wsfleet_disconnects_total{reason="churn"}"#) >= 40.0
        },
    )
    .await;
    // Each churned user reopens: awaited, since a reconnect may still be under way when its
    // disconnect is counted (on a busy runner the scrape above caught 59 of 60).
    wait_for("the churned users reconnected", 30, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_connects_total{result="ok"}"#)
            >= 60.0
    })
    .await;
    let m = scrape(api).await;
    assert_eq!(m.get(r#"wsfleet_disconnects_total{reason="reset"}"#), 0.0);
    let t = target.metrics().await;
    assert!(
        t.get(r#"wsfleet_target_frames_received_total{kind="close"}"#) >= 40.0,
        "churn closes cleanly"
    );
    daemon.shutdown().await.unwrap();
}

/// Users going offline on a schedule, cleanly: each goes away with a close frame (the
/// target counts them), is reported `offline` while away — not connected, not a failure —
/// and comes back; nothing is lost meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_go_offline_with_a_close_and_come_back() {
    let target = Target::start().await;
    let yaml = im_config(
        &target,
        10,
        "200ms",
        "offline: {every: {uniform: {min: 500ms, max: 1s}}, for: 500ms, expect_sync: false}\n",
    );
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    wait_for("users away and users back", 30, || async {
        let m = scrape(api).await;
        m.get(r#"wsfleet_disconnects_total{reason="offline"}"#) >= 20.0
            && m.get(r#"wsfleet_connects_total{result="ok"}"#) >= 30.0
    })
    .await;
    wait_for("a user reported offline", 30, || async {
        scrape(api).await.get("wsfleet_users_offline") >= 1.0
    })
    .await;
    let m = scrape(api).await;
    let failures = m.sum("wsfleet_disconnects_total")
        - m.get(r#"wsfleet_disconnects_total{reason="offline"}"#);
    assert_eq!(failures, 0.0, "going away is no failure");
    assert!(m.get("wsfleet_users_offline") <= 10.0);
    let t = target.metrics().await;
    assert!(
        t.get(r#"wsfleet_target_frames_received_total{kind="close"}"#) >= 20.0,
        "each went away with a close"
    );
    let metrics = std::sync::Arc::clone(daemon.metrics());
    daemon.finish().await.unwrap();
    assert_eq!(metrics.message_counts().lost, 0);
}

/// Users vanishing: gone without a close, their sockets held open and silent while they
/// are away — the target still holds connections our users no longer use, until its own idle
/// timeout closes them: the silent drop shows as the server's timeout, not ours — then back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_vanish_without_a_close_and_the_server_times_them_out() {
    let target = Target::start_with(wsfleet::target::TargetOptions {
        idle_timeout: Some(std::time::Duration::from_secs(3)),
        ..Default::default()
    })
    .await;
    let yaml = im_config(
        &target,
        10,
        "0s",
        "offline: {every: 500ms, for: 4s, how: vanish}\n",
    );
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    wait_for(
        "vanished users' sockets still open at the target",
        30,
        || async {
            let m = scrape(api).await;
            let held = target.metrics().await.get("wsfleet_target_connections");
            m.get("wsfleet_users_offline") >= 1.0 && held > m.get("wsfleet_users_active")
        },
    )
    .await;
    timed_out_and_back(api, &target, 5.0).await;
    assert_eq!(
        target
            .metrics()
            .await
            .get(r#"wsfleet_target_frames_received_total{kind="close"}"#),
        0.0,
        "no close frame from a vanished user"
    );
    daemon.shutdown().await.unwrap();
}

/// Users going silent: connected, but sending nothing, not even a ping, until the target's
/// idle timeout closes them; that close counts as their going offline (not a server close),
/// and they come back once their time away is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_users_are_timed_out_by_the_server_and_come_back() {
    let target = Target::start_with(wsfleet::target::TargetOptions {
        idle_timeout: Some(std::time::Duration::from_secs(2)),
        ..Default::default()
    })
    .await;
    let yaml = format!(
        "target: {}\nusers: 10\nconnect_rate: 1000\nmessage_interval: 0s\n\
         heartbeat: {{interval: 500ms, timeout: 5s}}\n\
         offline: {{every: 500ms, for: 4s, how: silent}}\n",
        target.ws_url()
    );
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    let m = timed_out_and_back(api, &target, 10.0).await;
    assert!(m.get(r#"wsfleet_disconnects_total{reason="offline"}"#) >= 10.0);
    daemon.shutdown().await.unwrap();
}

/// Waits until the target's idle timeout closed `timeouts` of our users and 20 connects
/// succeeded (ten users, each back at least once), then checks that every end was a user
/// going offline: none was a heartbeat timeout of ours, a reset or a server close.
async fn timed_out_and_back(api: std::net::SocketAddr, target: &Target, timeouts: f64) -> Scrape {
    wait_for("the target timing users out", 30, || async {
        target
            .metrics()
            .await
            .get("wsfleet_target_idle_timeouts_total")
            >= timeouts
    })
    .await;
    wait_for("users back", 30, || async {
        let m = scrape(api).await;
        m.get(r#"wsfleet_connects_total{result="ok"}"#) >= 20.0
    })
    .await;
    let m = scrape(api).await;
    assert_eq!(
        m.sum("wsfleet_disconnects_total"),
        m.get(r#"wsfleet_disconnects_total{reason="offline"}"#),
        "only offline ends"
    );
    m
}

/// A protocol with nothing in common with the reference target's but JSON: other field
/// names, nested ack and event bodies, string sequence numbers. Config only, no code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_json_protocol_works_by_config_alone() {
    let server = other_protocol::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("creds.csv"),
        "user_id,secret\nalice,a1\nbob,b2\ncarol,c3\ndave,d4\n",
    )
    .unwrap();
    let yaml = format!(
        r#"
target: ws://{server}/socket
users: 8
connect_rate: 500
message_interval: 100ms
loss_grace: 500ms
scenario:
  credentials: creds.csv
  vars: {{session: "{{{{user_id}}}}#{{{{user}}}}"}}
  login:
    - send: '{{"op":"hello","name":"{{{{session}}}}","key":"{{{{secret}}}}"}}'
      expect: {{pointer: /op, equals: welcome}}
    - send: '{{"op":"sub","chan":"{{{{room}}}}"}}'
      expect: {{regex: '"op":"subbed"'}}
  heartbeat:
    send: '{{"op":"hb"}}'
    expect: {{pointer: /op, equals: hb_ack}}
  message:
    send: '{{"op":"post","chan":"{{{{room}}}}","cid":"{{{{msg_id}}}}","n":"{{{{seq}}}}","t":{{{{ts}}}},"text":"{{{{payload}}}}"}}'
    ack: {{match: {{pointer: /op, equals: posted}}, id: /ref/cid}}
    delivery:
      match: {{pointer: /op, equals: event}}
      sender: /data/author
      seq: /data/n
      ts: /data/t
  room_size: 4
heartbeat: {{interval: 500ms, timeout: 5s}}
"#
    );
    let daemon = start_daemon_from_file(&dir.path().join("fleet.yaml"), &yaml).await;
    let api = daemon.addr();
    wait_active(api, 8.0, 30).await;
    wait_for("acks, deliveries and heartbeats", 30, || async {
        let m = scrape(api).await;
        m.get("wsfleet_message_rtt_seconds_count") >= 100.0
            && m.get("wsfleet_deliveries_received_total") >= 200.0
            && m.get("wsfleet_heartbeat_rtt_seconds_count") >= 8.0
    })
    .await;
    let m = scrape(api).await;
    for counter in [
        "wsfleet_messages_lost_total",
        "wsfleet_messages_duplicated_total",
        "wsfleet_frames_invalid_total",
        "wsfleet_frames_unmatched_total",
    ] {
        assert_eq!(m.sum(counter), 0.0, "{counter}");
    }
    // Users 0..8 cycle through 4 credential rows; the server saw each name with its key.
    let logins = server_logins(&server).await;
    assert!(
        logins.contains(&"alice#0:a1".to_string()) && logins.contains(&"alice#4:a1".to_string()),
        "{logins:?}"
    );
    daemon.shutdown().await.unwrap();
}

async fn server_logins(addr: &std::net::SocketAddr) -> Vec<String> {
    other_protocol::logins(addr)
}

/// The tiny server of [`another_json_protocol_works_by_config_alone`].
mod other_protocol {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex, OnceLock};

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::sync::mpsc;
    use tokio_tungstenite::tungstenite::Message;

    type Channels = Arc<Mutex<HashMap<String, Vec<(usize, mpsc::UnboundedSender<String>)>>>>;

    static LOGINS: OnceLock<Mutex<HashMap<SocketAddr, Vec<String>>>> = OnceLock::new();

    pub fn logins(addr: &SocketAddr) -> Vec<String> {
        LOGINS
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .get(addr)
            .cloned()
            .unwrap_or_default()
    }

    pub async fn start() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let channels: Channels = Arc::default();
        tokio::spawn(async move {
            let mut next = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                next += 1;
                tokio::spawn(serve(tcp, next, addr, Arc::clone(&channels)));
            }
        });
        addr
    }

    async fn serve(tcp: tokio::net::TcpStream, id: usize, server: SocketAddr, channels: Channels) {
        let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let mut name = String::new();
        loop {
            tokio::select! {
                Some(out) = rx.recv() => { if sink.send(Message::text(out)).await.is_err() { break } }
                incoming = stream.next() => {
                    let Some(Ok(Message::Text(text))) = incoming else { break };
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    let reply = match frame["op"].as_str().unwrap() {
                        "hello" => {
                            name = frame["name"].as_str().unwrap().split('#').next().unwrap().to_string();
                            let login = format!("{}:{}", frame["name"].as_str().unwrap(), frame["key"].as_str().unwrap());
                            LOGINS.get_or_init(Default::default).lock().unwrap().entry(server).or_default().push(login);
                            json!({"op": "welcome"})
                        }
                        "sub" => {
                            let chan = frame["chan"].as_str().unwrap().to_string();
                            channels.lock().unwrap().entry(chan).or_default().push((id, tx.clone()));
                            json!({"op": "subbed"})
                        }
                        "hb" => json!({"op": "hb_ack"}),
                        "post" => {
                            let event = json!({"op": "event", "data": {
                                "author": name,
                                "n": frame["n"], "t": frame["t"], "text": frame["text"]}});
                            let chan = frame["chan"].as_str().unwrap();
                            for (member, out) in channels.lock().unwrap().get(chan).into_iter().flatten() {
                                if *member != id { let _ = out.send(event.to_string()); }
                            }
                            json!({"op": "posted", "ref": {"cid": frame["cid"]}})
                        }
                        other => panic!("unexpected op {other}"),
                    };
                    if sink.send(Message::text(reply.to_string())).await.is_err() { break }
                }
            }
        }
        for members in channels.lock().unwrap().values_mut() {
            members.retain(|(member, _)| *member != id);
        }
    }
}

/// The verdict is taken once the books are settled: with 1% of deliveries dropped and 1%
/// duplicated from the first message to the last, the summary counts what the target did —
/// gaps younger than the grace period, drops right after a receiver joined, and the dropped
/// last message of a sender (no later sequence ever shows it) included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_after_the_drain_counts_every_drop_and_duplicate_of_the_target() {
    let target = Target::start().await;
    target
        .faults(json!({"drop": 0.01, "duplicate": 0.01}))
        .await;
    let yaml = im_config(&target, 100, "100ms", "sla: {error_rate: 0%}\n");
    let sla = wsfleet::config::Config::parse(&yaml).unwrap().sla;
    let daemon = start_daemon(&yaml).await;
    let deliveries = || async {
        let t = target.metrics().await;
        t.get("wsfleet_target_deliveries_total") + t.get("wsfleet_target_deliveries_dropped_total")
    };
    wait_for("20,000 deliveries under faults", 60, || async {
        deliveries().await >= 20_000.0
    })
    .await;
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let desired = daemon.fleet().local_users();
    let finished = daemon.finish().await.unwrap();
    let drain = finished.drain.expect("the fleet drained");
    assert!(drain.settled, "{drain:?}");
    assert_eq!(drain.active, 100);
    let summary = wsfleet::summary::Summary::collect(
        &metrics,
        desired,
        &sla,
        finished.run_time,
        drain.active,
    );
    let t = target.metrics().await;
    let dropped = t.get("wsfleet_target_deliveries_dropped_total");
    let duplicated = t.get("wsfleet_target_deliveries_duplicated_total");
    assert!(
        dropped >= 150.0 && duplicated >= 150.0,
        "{dropped} {duplicated}"
    );
    let counts = summary.messages.counts;
    let within = |seen: u64, truth: f64| (seen as f64 - truth).abs() <= truth * 0.01;
    assert!(
        within(counts.lost, dropped),
        "lost {} of {dropped} dropped",
        counts.lost
    );
    assert!(
        within(counts.duplicated, duplicated),
        "duplicated {} of {duplicated}",
        counts.duplicated
    );
    assert_eq!(counts.ack_timeouts, 0, "the target drops no acks");
    assert!(!summary.passed, "a zero-loss SLA was not met");
}

/// Users moved to another room leave by choice: acks still pending then are abandoned, not
/// timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_change_abandons_pending_acks_without_counting_timeouts() {
    let target = Target::start().await;
    let daemon = start_daemon(&im_config(&target, 20, "100ms", "ack_timeout: 30s\n")).await;
    let api = daemon.addr();
    wait_active(api, 20.0, 30).await;
    // Hold every answer, so every user has acks pending when the rooms change.
    target.faults(json!({"stall": "3s"})).await;
    let sent = scrape(api).await.get("wsfleet_messages_sent_total");
    wait_for("messages awaiting their acks", 10, || async {
        scrape(api).await.get("wsfleet_messages_sent_total") >= sent + 100.0
    })
    .await;
    assert_eq!(patch_load(api, json!({"room_size": 5})).await.status(), 200);
    // Users 5..=19 change rooms (room-{i/10} becomes room-{i/5}); 0..=4 stay in room-0.
    wait_for("room changes", 20, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_disconnects_total{reason="room_change"}"#)
            == 15.0
    })
    .await;
    wait_active(api, 20.0, 30).await;
    assert_eq!(scrape(api).await.get("wsfleet_message_timeouts_total"), 0.0);
    daemon.shutdown().await.unwrap();
}
