//! Hostile servers and careless callers: what a frame, a request, a signal or a file can do to
//! the daemon, each case one that froze, bloated or fooled it before (README "What wsfleet
//! survives", hostile servers and callers). Servers misbehaving on purpose are written here
//! with raw frames (`helpers::raw`).

#![allow(clippy::unwrap_used)]

mod helpers;

use std::net::SocketAddr;
use std::time::Duration;

use helpers::raw::{self, read_frame};
use helpers::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// What the hostile server answers to each message a user sends.
#[derive(Clone, Copy)]
enum Answer {
    /// A delivery "from" the other member of the room with sequence 2^63.
    ImpossibleSequence,
    /// Deliveries from 50 senders never seen before.
    Strangers,
}

/// Two users in one room, sending every 20 ms; deliveries are tracked.
const ROOM_OF_TWO: &str = r#"
users: 2
connect_rate: 100
message_interval: 20ms
heartbeat: {interval: 0s}
drain_timeout: 2s
scenario:
  message:
    send: '{"type":"msg","id":"{{msg_id}}","seq":{{seq}},"ts":{{ts}}}'
    delivery: {match: {pointer: /type, equals: deliver}, sender: /from, seq: /seq, ts: /ts}
  room_size: 2
"#;

async fn hostile_server(answer: Answer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut strangers = 0u64;
        while let Ok((mut tcp, _)) = listener.accept().await {
            let base = strangers;
            strangers += 1_000_000;
            tokio::spawn(async move {
                if raw::accept_upgrade(&mut tcp).await.is_some() {
                    answer_messages(&mut tcp, answer, base).await;
                }
            });
        }
    });
    addr
}

async fn answer_messages(tcp: &mut TcpStream, answer: Answer, mut stranger: u64) {
    while let Some((opcode, payload)) = read_frame(tcp).await {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&payload) else {
            if opcode == 8 {
                return;
            }
            continue;
        };
        let (Some(id), Some(ts)) = (msg["id"].as_str(), msg["ts"].as_u64()) else {
            continue;
        };
        let other = if id.starts_with("u0-") { "u1" } else { "u0" };
        let frames: Vec<String> = match answer {
            Answer::ImpossibleSequence => vec![format!(
                r#"{{"type":"deliver","from":"{other}","seq":9223372036854775808,"ts":{ts}}}"#
            )],
            Answer::Strangers => (0..50)
                .map(|_| {
                    stranger += 1;
                    format!(r#"{{"type":"deliver","from":"x{stranger}","seq":1,"ts":{ts}}}"#)
                })
                .collect(),
        };
        let bytes: Vec<u8> = frames.iter().flat_map(|f| raw::text(f)).collect();
        if tcp.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

fn at(server: SocketAddr) -> String {
    format!("target: ws://{server}/ws\n{ROOM_OF_TWO}")
}

/// One delivery with sequence 2^63 from a room member: before, `Tracker::observe` looped once
/// per missing sequence and froze its user thread for good (drain and shutdown waited on it
/// forever). Now the sequence is beyond what the sender issued: invalid, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_sequence_is_invalid_and_freezes_nothing() {
    let server = hostile_server(Answer::ImpossibleSequence).await;
    let daemon = start_daemon(&at(server)).await;
    let api = daemon.addr();
    wait_for("invalid deliveries counted", 30, || async {
        scrape(api).await.get("wsfleet_frames_invalid_total") >= 20.0
    })
    .await;
    let scrape = scrape(api).await;
    assert_eq!(scrape.sum("wsfleet_messages_lost_total"), 0.0);
    assert_eq!(scrape.get("wsfleet_deliveries_received_total"), 0.0);
    assert_eq!(scrape.get("wsfleet_generator_saturated"), 0.0);
    tokio::time::timeout(Duration::from_secs(30), daemon.finish())
        .await
        .expect("the drain and shutdown end: no user thread is stuck")
        .unwrap();
}

/// Deliveries "from" ever new names (a server whose rooms also hold real users, or one that
/// means harm): before, each name got a tracker entry for the session's life (2 users went
/// from 43 MB to 505 MB in 8 s) and counted as a delivery with a latency. Now they are foreign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_from_strangers_are_foreign_not_tracked() {
    let server = hostile_server(Answer::Strangers).await;
    let daemon = start_daemon(&at(server)).await;
    let api = daemon.addr();
    wait_for("5,000 foreign deliveries", 30, || async {
        scrape(api).await.get("wsfleet_deliveries_foreign_total") >= 5000.0
    })
    .await;
    let scrape = scrape(api).await;
    assert_eq!(scrape.get("wsfleet_deliveries_received_total"), 0.0);
    assert_eq!(scrape.get("wsfleet_delivery_latency_seconds_count"), 0.0);
    assert_eq!(
        status(api).await["messages"]["deliveries_foreign"]
            .as_f64()
            .unwrap_or(0.0)
            .min(1.0),
        1.0
    );
    daemon.shutdown().await.unwrap();
}

/// `kill -HUP`: before, a daemon started without `-c` died of it (rc 129, no drain, no
/// summary), and so did `wsfleet target`. Now it is logged and ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_config_file_is_logged_and_ignored() {
    for args in [
        vec!["run", "--listen", "127.0.0.1:0", "--users", "2"],
        vec!["target", "--listen", "127.0.0.1:0"],
    ] {
        let mut process = DaemonProcess::start(&args).await;
        std::process::Command::new("kill")
            .args(["-HUP", &process.pid().to_string()])
            .status()
            .unwrap();
        process.wait_log(&["SIGHUP received and ignored"], 20).await;
        let health = http()
            .get(format!("http://{}/healthz", process.api))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200, "{args:?} still serves");
        assert_eq!(process.stop(), Some(0), "{args:?} ends cleanly on SIGTERM");
    }
}

/// A page on another origin, or one reached through a DNS name of the attacker's, cannot steer
/// the fleet: before, `POST /api/v1/pause` with `text/plain` from anywhere paused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_and_rebound_requests_change_nothing() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!("target: {}\nusers: 1\n", target.ws_url())).await;
    let api = daemon.addr();
    let pause = format!("http://{api}/api/v1/pause");
    let simple = http()
        .post(&pause)
        .header("content-type", "text/plain;charset=UTF-8")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(simple.status(), 415, "a form-like body is refused");
    let foreign = http()
        .post(&pause)
        .header("origin", "http://127.0.0.2:8000")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    assert!(
        foreign
            .text()
            .await
            .unwrap()
            .contains("api.allowed_origins")
    );
    let rebound = http()
        .get(format!("http://{api}/api/v1/status"))
        .header("host", format!("attacker.example:{}", api.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    assert_eq!(
        status(api).await["paused"],
        json!(false),
        "nothing paused it"
    );
    // Scrapers call /metrics by service name; tools and the page call as before.
    let scraped = http()
        .get(format!("http://{api}/metrics"))
        .header("host", "wsfleet:9750")
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    let own = http()
        .post(&pause)
        .header("origin", format!("http://{api}"))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "the daemon's own page may");
    let page = http().get(format!("http://{api}/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    daemon.shutdown().await.unwrap();
}

/// A caller's User-Agent goes into the change log the report embeds; `<!--<script>` in it
/// blanked the report before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_user_agent_cannot_break_the_report() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!("target: {}\nusers: 1\n", target.ws_url())).await;
    let api = daemon.addr();
    let changed = http()
        .patch(format!("http://{api}/api/v1/load"))
        .header("user-agent", "<!--<script>")
        .json(&json!({"users": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    wait_for("the change in the history", 20, || async {
        let report = get_text(&format!("http://{api}/api/v1/report")).await;
        assert!(!report.contains("<!--<script>"), "the agent is escaped");
        report.contains(r"\u003c!--\u003cscript\u003e")
    })
    .await;
    daemon.shutdown().await.unwrap();
}

/// An output path that cannot be written is found before the run, not after it.
#[tokio::test]
async fn an_unwritable_output_fails_before_the_run() {
    let run = tokio::process::Command::new(BIN)
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--duration",
            "1h",
            "--summary-out",
            "/nonexistent-dir/summary.json",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("refused at once, not after the hour")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--summary-out") && stderr.contains("/nonexistent-dir/summary.json"),
        "{stderr}"
    );
}

/// The config file replaced by a FIFO, then a reload asked for: before, the read blocked the
/// runtime and `/healthz`, `/metrics` and the whole API hung. Now it is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_place_of_the_config_is_refused_and_blocks_nothing() {
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    let yaml = format!("target: {}\nusers: 2\nscenario: idle\n", target.ws_url());
    let daemon = start_daemon_from_file(&path, &yaml).await;
    let api = daemon.addr();
    std::fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    let reload = tokio::time::timeout(
        Duration::from_secs(20),
        http().post(format!("http://{api}/api/v1/reload")).send(),
    )
    .await
    .expect("answered, not hung")
    .unwrap();
    assert_eq!(reload.status(), 422);
    let body = reload.text().await.unwrap();
    assert!(body.contains("not a regular file"), "{body}");
    let health = tokio::time::timeout(
        Duration::from_secs(20),
        http().get(format!("http://{api}/healthz")).send(),
    )
    .await
    .expect("health answers")
    .unwrap();
    assert_eq!(health.status(), 200);
    daemon.shutdown().await.unwrap();
}

/// `mv fleet.yaml x; mv x fleet.yaml`: before, the restored (unchanged) file was applied
/// whole over the live change made through the API (users 6 went back to 10) and cancelled
/// the running profile. Now only what changed in the file is applied: nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_restored_unchanged_keeps_live_changes() {
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.yaml");
    let yaml = format!(
        "target: {}\nusers: 10\nconnect_rate: 500\nscenario: idle\n",
        target.ws_url()
    );
    let daemon = start_daemon_from_file(&path, &yaml).await;
    let api = daemon.addr();
    assert_eq!(patch_load(api, json!({"users": 6})).await.status(), 200);
    let reloads = |result: &'static str| async move {
        scrape(api).await.get(&format!(
            r#"wsfleet_config_reloads_total{{result="{result}"}}"#
        ))
    };
    let aside = dir.path().join("x");
    std::fs::rename(&path, &aside).unwrap();
    wait_for("the missing file rejected", 20, || async {
        reloads("rejected").await >= 1.0
    })
    .await;
    std::fs::rename(&aside, &path).unwrap();
    wait_for("the restored file reloaded", 20, || async {
        reloads("ok").await >= 1.0
    })
    .await;
    assert_eq!(
        status(api).await["load"]["users"],
        json!(6),
        "the API's change stays"
    );
    // A real change of the file is still applied, and only that field.
    std::fs::write(
        &path,
        yaml.replace("connect_rate: 500", "connect_rate: 400"),
    )
    .unwrap();
    wait_for("the edited file reloaded", 20, || async {
        reloads("ok").await >= 2.0
    })
    .await;
    let load = status(api).await["load"].clone();
    assert_eq!(
        (load["users"].clone(), load["connect_rate"].clone()),
        (json!(6), json!(400.0))
    );
    daemon.shutdown().await.unwrap();
}

/// Capacity searches whose steps map to no valid load: before, `message_rate` from 0.0001
/// panicked ("cannot convert float seconds to Duration") and left the API's search `running`
/// for good; 1e10 messages/s became a 0 ns interval, "no messages", judged as held. Now
/// `check` and the API refuse them, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_steps_that_are_no_load_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (capacity, field) in [
        (
            "{dimension: message_rate, start: 0.0001, max: 1}",
            "capacity.start",
        ),
        (
            "{dimension: message_rate, start: 1, max: 1e10}",
            "capacity.max",
        ),
    ] {
        let path = dir.path().join("fleet.yaml");
        std::fs::write(
            &path,
            format!("sla: {{p99_rtt: 100ms}}\ncapacity: {capacity}\n"),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "-c", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{capacity}: {stderr}");
        assert!(stderr.contains(field), "{stderr}");
    }
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 1\nsla: {{p99_rtt: 100ms}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    let search = http()
        .put(format!("http://{api}/api/v1/profile"))
        .json(&json!({"search": {"dimension": "message_rate", "start": 0.0001, "max": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(search.status(), 422);
    let again = http()
        .put(format!("http://{api}/api/v1/profile"))
        .json(&json!({"search": {"start": 1, "max": 2, "hold": "1s", "settle": "0s"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202, "no search is stuck running");
    daemon.shutdown().await.unwrap();
}

/// The process's anonymous memory (heap), in kB.
fn rss_anon(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// A CPU profile: before, a caller that hung up mid-profile left profiling "running" (409
/// for every later call until restart), and symbolising kept the binary's parsed debug
/// information for the rest of the process (21 MB -> 357 MB). Now the profiler is released
/// whatever the caller does, and the symbol cache is dropped after each profile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiling_releases_the_profiler_and_its_memory() {
    let mut daemon =
        DaemonProcess::start(&["run", "--listen", "127.0.0.1:0", "--users", "20"]).await;
    let url = |seconds: u32| {
        format!(
            "http://{}/debug/pprof/profile?seconds={seconds}",
            daemon.api
        )
    };
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(
        impatient.get(url(2)).send().await.is_err(),
        "hung up mid-profile"
    );
    let status = std::sync::atomic::AtomicU16::new(409);
    wait_for("the profiler to be free again", 30, || async {
        let answer = http().get(url(1)).send().await.unwrap().status().as_u16();
        status.store(answer, std::sync::atomic::Ordering::Relaxed);
        answer != 409
    })
    .await;
    assert_eq!(status.into_inner(), 200);
    let peak = rss_anon(daemon.pid());
    wait_for("the symbol cache's memory to be returned", 60, || async {
        rss_anon(daemon.pid()) * 10 < peak * 6
    })
    .await;
    assert_eq!(daemon.stop(), Some(0));
}

/// `--users 10000000`, or one unauthenticated ramp to ten million: before, ~1.5 KB was
/// allocated per *desired* user at once (12.6 GB, the supervisor unresponsive for a minute).
/// Now the default cap (what this process can hold) refuses it, naming `limits.max_users`;
/// and with a cap raised by hand, users cost nothing until the pacer admits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_count_of_millions_is_capped_or_costs_nothing_ahead() {
    let out = std::process::Command::new(BIN)
        .args(["check", "--users", "10000000"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("limits.max_users") && stderr.contains("open-file limit"),
        "{stderr}"
    );
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 1\nconnect_rate: 1\nscenario: idle\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    let ramp = http()
        .put(format!("http://{api}/api/v1/profile"))
        .json(&json!({"ramp": {"from": 0, "to": 10_000_000, "over": "1ms"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(ramp.status(), 422);
    assert!(ramp.text().await.unwrap().contains("limits.max_users"));
    daemon.shutdown().await.unwrap();

    let daemon = start_daemon(&format!(
        "target: {}\nusers: 1\nconnect_rate: 1\nscenario: idle\nlimits: {{max_users: 10000000}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    wait_active(api, 1.0, 30).await;
    let heap = || async { scrape(api).await.get("wsfleet_heap_allocated_bytes") };
    let before = heap().await;
    assert_eq!(
        patch_load(api, json!({"users": 300_000})).await.status(),
        200
    );
    // At one connect a second, a few users are admitted; 300,000 spawned at once were ~450 MB.
    // Bounded loosely (a busy runner is slow too): before, the supervisor answered nothing for
    // about a minute while it spawned every desired user.
    let answered = tokio::time::timeout(Duration::from_secs(30), status(api))
        .await
        .expect("the supervisor answers");
    assert_eq!(answered["load"]["users"], json!(300_000));
    let grown = heap().await - before;
    assert!(grown < 40e6, "the heap grew by {grown} bytes");
    daemon.shutdown().await.unwrap();
}

/// The API port held by a thousand idle connections under a small file limit: before, every
/// one held a descriptor for good and users stopped being added. Now the API holds at most
/// `MAX_CONNECTIONS`, closes the silent ones, and users keep their sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_api_connections_cannot_starve_the_fleet() {
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.yaml");
    std::fs::write(
        &config,
        format!(
            "target: {}\nusers: 200\nconnect_rate: 100\nscenario: idle\nheartbeat: {{interval: 0s}}\n",
            target.ws_url()
        ),
    )
    .unwrap();
    let mut daemon = DaemonProcess::start_with_file_limit(
        1000,
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "-c",
            config.to_str().unwrap(),
        ],
    )
    .await;
    let api = daemon.api;
    // Beyond what the API accepts and its backlog holds, connects wait for a SYN-ACK: as
    // many as get through in 2 s each are held.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(api)).await {
            Ok(Ok(tcp)) => idle.push(tcp),
            _ => break,
        }
    }
    assert!(
        idle.len() > wsfleet::api::MAX_CONNECTIONS,
        "only {} idle connections",
        idle.len()
    );
    let connected = || async { target.metrics().await.get("wsfleet_target_connections") };
    wait_for("200 users connected while the API is held", 60, || async {
        connected().await >= 200.0
    })
    .await;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
        .unwrap()
        .count();
    assert!(
        fds < 200 + wsfleet::api::MAX_CONNECTIONS + 100,
        "{fds} descriptors open"
    );
    // The silent connections are closed by the header timeout, the API answers again.
    let mut first = idle.swap_remove(0);
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::io::AsyncReadExt::read(&mut first, &mut byte),
    )
    .await
    .expect("an idle connection is closed by the API");
    assert!(matches!(closed, Ok(0) | Err(_)));
    drop(idle);
    wait_for("the API to answer again", 60, || async {
        http()
            .get(format!("http://{api}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert_eq!(daemon.stop(), Some(0));
}

/// The reference target under hostile admin calls: before, `{"delay": "500000000000y"}`
/// overflowed the clock in every sender's task (each leaking its connection gauge) and a
/// huge `stall` panicked; and its admin API answered anyone on the host. Now spans are
/// bounded and an admin token can be required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_refuses_impossible_faults_and_strangers() {
    let target = Target::start_with(wsfleet::target::TargetOptions {
        admin_token: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    let faults = format!("http://{}/admin/faults", target.addr);
    let stranger = http()
        .patch(&faults)
        .json(&json!({"delay": "1s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 401);
    for (field, value) in [
        ("delay", json!("500000000000y")),
        ("stall", json!("100000y")),
        (
            "tail",
            json!([{"share": 0.7, "delay": "1s"}, {"share": 0.7, "delay": "1s"}]),
        ),
        ("tail[0].share", json!([{"share": -1, "delay": "1s"}])),
        ("tail[0].delay", json!([{"share": 0.1, "delay": "1000y"}])),
    ] {
        let key = field.split('[').next().unwrap();
        let refused = http()
            .patch(&faults)
            .bearer_auth("s3cret")
            .json(&json!({ key: value }))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 422, "{field}");
        assert!(refused.text().await.unwrap().contains(field));
    }
    let now = http()
        .get(&faults)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    let now: serde_json::Value = now.json().await.unwrap();
    assert_eq!(now["delay"], json!("0s"), "nothing changed: {now}");
    assert_eq!(now["tail"], json!([]), "nothing changed: {now}");
    // It still serves a fleet.
    let daemon = start_daemon(&format!("target: {}\nusers: 2\n", target.ws_url())).await;
    wait_active(daemon.addr(), 2.0, 30).await;
    daemon.shutdown().await.unwrap();
}

/// A server on loopback that runs `each` for every connection.
async fn serve_raw<F, Fut>(each: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(each(tcp));
        }
    });
    addr
}

/// Holds a connection until the client leaves.
async fn hold(mut tcp: TcpStream) {
    let mut sink = [0u8; 1024];
    while matches!(tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await, Ok(n) if n > 0) {}
}

/// Waits for `count` connects of `result`, and `detail` in the error samples.
async fn connects_fail(api: SocketAddr, result: &str, detail: &str) {
    let series = format!(r#"wsfleet_connects_total{{result="{result}"}}"#);
    counted_with_sample(api, &series, 2.0, detail).await;
}

const IDLE_USERS: &str = "users: 2\nconnect_rate: 100\nscenario: idle\nheartbeat: {interval: 0s}\n\
                          reconnect: {initial: 100ms, max: 200ms}\n";

/// A 101 choosing an extension or subprotocol the client never offered: before, taken, and
/// its frames then read in a format not asked for. RFC 6455 4.1 says fail the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrequested_extension_in_the_upgrade_is_refused() {
    let server = serve_raw(|mut tcp| async move {
        let extra = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
        if raw::accept_upgrade_with(&mut tcp, extra).await.is_some() {
            hold(tcp).await;
        }
    })
    .await;
    let daemon = start_daemon(&format!("target: ws://{server}/ws\n{IDLE_USERS}")).await;
    connects_fail(daemon.addr(), "protocol", "not offered").await;
    assert_eq!(scrape(daemon.addr()).await.get("wsfleet_users_active"), 0.0);
    daemon.shutdown().await.unwrap();
}

/// A frame the WebSocket cannot read, sent while a user logs in: before, counted as a
/// `login` failure (as if the server had refused the credentials). It is the server's
/// protocol error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_frame_during_login_is_a_protocol_error() {
    let server = serve_raw(|mut tcp| async move {
        if raw::accept_upgrade(&mut tcp).await.is_some() {
            let _ = read_frame(&mut tcp).await; // the login
            let _ = tcp
                .write_all(&raw::frame(true, 1, &[b'o', 0xff, 0xfe]))
                .await;
            hold(tcp).await;
        }
    })
    .await;
    let daemon = start_daemon(&format!(
        "target: ws://{server}/ws\nusers: 2\nconnect_rate: 100\nreconnect: {{initial: 100ms, max: 200ms}}\n"
    ))
    .await;
    connects_fail(daemon.addr(), "protocol", "login step 1").await;
    assert_eq!(
        scrape(daemon.addr())
            .await
            .get(r#"wsfleet_connects_total{result="login"}"#),
        0.0
    );
    daemon.shutdown().await.unwrap();
}

/// A close code no server may send (1006): the library reports 1002; before, the sample
/// blamed the server for a 1002 it never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_close_code_is_described_not_reported_as_1002() {
    let server = serve_raw(|mut tcp| async move {
        if raw::accept_upgrade(&mut tcp).await.is_some() {
            let _ = tcp
                .write_all(&raw::frame(true, 8, &1006u16.to_be_bytes()))
                .await;
            hold(tcp).await;
        }
    })
    .await;
    let daemon = start_daemon(&format!("target: ws://{server}/ws\n{IDLE_USERS}")).await;
    let api = daemon.addr();
    wait_for("server closes counted", 30, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_disconnects_total{reason="server_close"}"#)
            >= 2.0
    })
    .await;
    let errors = status(api).await["errors"].to_string();
    assert!(
        errors.contains("a close code a server may not send"),
        "{errors}"
    );
    assert!(!errors.contains("close code 1002"), "{errors}");
    daemon.shutdown().await.unwrap();
}

/// The attack as it happened: a page on another origin, opened in Chromium, posting to the
/// API with no token set. Before, its `no-cors` text/plain POST paused the fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_cannot_pause_the_fleet_in_chromium() {
    let Some(python) = selenium() else {
        return;
    };
    let target = Target::start().await;
    let daemon = start_daemon(&format!("target: {}\nusers: 3\n", target.ws_url())).await;
    let out = tokio::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/browser/cross_site.py"
        ))
        .arg(format!("http://{}/", daemon.addr()))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .unwrap()
        .unwrap();
    let seen = script_json(&out);
    assert_eq!(seen["tried"].as_array().map(Vec::len), Some(3), "{seen}");
    assert_eq!(seen["paused"], json!(false), "{seen}");
    assert_eq!(seen["users_after"], seen["users_before"], "{seen}");
    daemon.shutdown().await.unwrap();
}
