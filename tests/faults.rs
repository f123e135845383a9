//! The fault suite: what staging does to a load generator, each case asserting what is
//! counted and that the fleet recovers. Servers that misbehave on purpose are written here
//! (raw WebSocket frames over loopback); refusals come from the reference target's faults.
//! Network faults in a namespace are in `tests/network.rs`.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::net::SocketAddr;
use std::time::Duration;

use helpers::raw::{self, frame, read_frame};
use helpers::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Refused upgrades are counted by status; a `Retry-After` holds every user back at least that
/// long (users retrying every 50-100 ms would otherwise try 10-20 times a second each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrades_are_counted_by_status_and_retry_after_is_honoured() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 3\nconnect_rate: 1000\nscenario: idle\n\
         reconnect: {{initial: 50ms, max: 100ms}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    wait_active(api, 3.0, 30).await;
    let status_count = |m: &Scrape, s: &str| {
        m.get(&format!(
            r#"wsfleet_connect_http_status_total{{status="{s}"}}"#
        ))
    };
    for status in [401, 403, 503] {
        target
            .faults(json!({"refuse": true, "refuse_status": status}))
            .await;
        // Closing every connection makes everyone try again, into the refusal.
        target.close_all().await;
        wait_for(&format!("HTTP {status} counted"), 30, || async {
            status_count(&scrape(api).await, &status.to_string()) >= 3.0
        })
        .await;
    }
    // 429 with Retry-After: 2 s.
    target
        .faults(json!({"refuse_status": 429, "retry_after": "2s"}))
        .await;
    wait_for("HTTP 429 counted", 30, || async {
        status_count(&scrape(api).await, "429") >= 3.0
    })
    .await;
    let before = status_count(&scrape(api).await, "429");
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await; // a measurement window, not a wait for an event
    let attempts = status_count(&scrape(api).await, "429") - before;
    let allowed = 3.0 * (window.elapsed().as_secs_f64() / 2.0).ceil() + 3.0;
    assert!(
        attempts <= allowed,
        "{attempts} attempts by 3 users in {:?} despite Retry-After: 2",
        window.elapsed()
    );
    let errors = status(api).await["errors"].to_string();
    assert!(errors.contains("Retry-After: 2s"), "{errors}");
    // Recovery.
    target.faults(json!({"refuse": false})).await;
    wait_active(api, 3.0, 30).await;
    daemon.shutdown().await.unwrap();
}

/// A WebSocket server that misbehaves as `behave` says, written from raw frames.
struct EvilServer {
    addr: SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy)]
enum Behave {
    /// One text message of this many bytes.
    Oversized(usize),
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// A close frame with this code.
    Close(u16),
    /// Echo every text message back in three fragments.
    FragmentedEcho,
    /// Text frames as fast as the socket takes them, never reading.
    Flood,
}

impl EvilServer {
    async fn start(behave: Behave) -> EvilServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, behave));
            }
        });
        EvilServer { addr, _task: task }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

async fn serve(mut tcp: TcpStream, behave: Behave) {
    if raw::accept_upgrade(&mut tcp).await.is_none() {
        return;
    }
    match behave {
        Behave::Oversized(size) => {
            let _ = tcp.write_all(&frame(true, 1, &vec![b'x'; size])).await;
        }
        Behave::InvalidUtf8 => {
            let _ = tcp
                .write_all(&frame(true, 1, &[b'o', b'k', 0xff, 0xfe]))
                .await;
        }
        Behave::Close(code) => {
            let _ = tcp.write_all(&frame(true, 8, &code.to_be_bytes())).await;
        }
        Behave::Flood => {
            let chunk: Vec<u8> = (0..64).flat_map(|_| frame(true, 1, b"flood")).collect();
            while tcp.write_all(&chunk).await.is_ok() {}
            return;
        }
        Behave::FragmentedEcho => {
            while let Some((opcode, payload)) = read_frame(&mut tcp).await {
                if opcode != 1 {
                    continue;
                }
                let third = payload.len() / 3;
                let (a, rest) = payload.split_at(third);
                let (b, c) = rest.split_at(third);
                let mut out = frame(false, 1, a);
                out.extend(frame(false, 0, b));
                out.extend(frame(true, 0, c));
                if tcp.write_all(&out).await.is_err() {
                    return;
                }
            }
            return;
        }
    }
    // Hold the connection until the client leaves.
    let mut sink = [0u8; 1024];
    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
}

fn evil_config(server: &EvilServer, extra: &str) -> String {
    format!(
        "target: {}\nusers: 2\nconnect_rate: 100\nscenario: idle\nheartbeat: {{interval: 0s}}\n\
         reconnect: {{initial: 100ms, max: 200ms}}\nmax_message_size: 65536\n{extra}",
        server.url()
    )
}

/// Waits for `count` disconnects of `reason`, and `detail` in the error samples.
async fn ends_with(daemon: &wsfleet::daemon::Daemon, reason: &str, count: f64, detail: &str) {
    let series = format!(r#"wsfleet_disconnects_total{{reason="{reason}"}}"#);
    counted_with_sample(daemon.addr(), &series, count, detail).await;
}

/// A message over `max_message_size` ends the session as `protocol` before it is buffered;
/// so does text that is not UTF-8. The users reconnect and meet it again: counted each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_and_invalid_text_end_the_session_counted() {
    let oversized = EvilServer::start(Behave::Oversized(1 << 20)).await;
    let daemon = start_daemon(&evil_config(&oversized, "")).await;
    ends_with(&daemon, "protocol", 4.0, "Message too long").await;
    daemon.shutdown().await.unwrap();

    let invalid = EvilServer::start(Behave::InvalidUtf8).await;
    let daemon = start_daemon(&evil_config(&invalid, "")).await;
    ends_with(&daemon, "protocol", 4.0, "UTF-8").await;
    daemon.shutdown().await.unwrap();

    let err = wsfleet::config::Config::parse("max_message_size: 10\n").expect_err("too small");
    assert!(err.to_string().contains("max_message_size"), "{err}");
}

/// Every close code a server may send ends the session as `server_close`, the code in the
/// error sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_close_code_is_a_counted_server_close() {
    for code in [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1012, 1013, 4000, 4999,
    ] {
        let server = EvilServer::start(Behave::Close(code)).await;
        let daemon = start_daemon(&evil_config(&server, "")).await;
        ends_with(&daemon, "server_close", 2.0, &format!("close code {code}")).await;
        daemon.shutdown().await.unwrap();
    }
}

/// Fragmented messages are reassembled: an echo server that answers in three fragments is
/// measured like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_messages_are_reassembled_and_measured() {
    let server = EvilServer::start(Behave::FragmentedEcho).await;
    let yaml = evil_config(&server, "message_interval: 50ms\n")
        .replace("scenario: idle", "scenario: echo");
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    wait_for("echoes measured", 30, || async {
        scrape(api).await.get("wsfleet_message_rtt_seconds_count") >= 20.0
    })
    .await;
    let m = scrape(api).await;
    assert_eq!(m.sum("wsfleet_disconnects_total"), 0.0);
    assert_eq!(m.get("wsfleet_frames_unmatched_total"), 0.0);
    daemon.shutdown().await.unwrap();
}

/// A server flooding frames faster than they can be read: the users keep reading (counted),
/// their memory stays bounded (nothing is queued beyond one message), and they leave cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_frames_keeps_memory_bounded() {
    let server = EvilServer::start(Behave::Flood).await;
    let daemon = start_daemon(&evil_config(&server, "")).await;
    let api = daemon.addr();
    wait_active(api, 2.0, 30).await;
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap()
    };
    wait_for("a million flooded frames read", 60, || async {
        scrape(api).await.get("wsfleet_messages_received_total") >= 1_000_000.0
    })
    .await;
    let early = rss();
    wait_for("two million", 60, || async {
        scrape(api).await.get("wsfleet_messages_received_total") >= 2_000_000.0
    })
    .await;
    let grown_kb = rss() - early;
    assert!(
        grown_kb < 20_000.0,
        "RSS grew by {grown_kb} KB over a million more flooded frames"
    );
    assert_eq!(scrape(api).await.get("wsfleet_users_active"), 2.0);
    daemon.shutdown().await.unwrap();
}

/// `resend_unacked`: the target holds every answer back, then closes every connection; the
/// users reconnect and send again what was never acknowledged — same ids, counted as resent,
/// not as new messages — and every one of them is acknowledged in the end: no ack timeouts,
/// and the target received every message, at most once more than it was resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_messages_are_resent_after_a_reconnect() {
    let target = Target::start().await;
    // Heartbeat and ack timeouts far beyond the test's waits: every connection ends by the
    // target's close, and nothing is given up while the answers are held.
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 20\nconnect_rate: 1000\nmessage_interval: 100ms\nack_timeout: 5m\n\
         resend_unacked: true\nreconnect: {{initial: 50ms, max: 200ms}}\n\
         heartbeat: {{interval: 1s, timeout: 5m}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    wait_active(api, 20.0, 30).await;
    // Every answer is held until the test lifts the stall, after every connection has closed:
    // a stall that ended by itself raced a slow runner (a close after its end found everything
    // acked, nothing to resend). What the target received after the stall began is surely
    // unacknowledged (the fleet's own counters are flushed every 100 ms: a message counted
    // after the stall may have left before it, and been acked).
    target.faults(json!({"stall": "1h"})).await;
    let received = || async { target.metrics().await.get("wsfleet_target_messages_total") };
    let received_before = received().await;
    wait_for("messages sent into the stall", 30, || async {
        received().await >= received_before + 100.0
    })
    .await;
    let unacked = received().await - received_before;
    target.close_all().await;
    wait_for("every user's connection closed", 30, || async {
        scrape(api).await.sum("wsfleet_disconnects_total") >= 20.0
    })
    .await;
    target.faults(json!({"stall": "0s"})).await;
    wait_for("every unacknowledged message resent", 30, || async {
        scrape(api).await.get("wsfleet_messages_resent_total") >= unacked
    })
    .await;
    wait_active(api, 20.0, 30).await;
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.is_some_and(|d| d.settled));
    let counts = metrics.message_counts();
    assert_eq!(
        counts.ack_timeouts, 0,
        "every resent message was acked: {counts:?}"
    );
    // Each message reached the target at least once. A copy still in flight when the target
    // closed every connection never arrived and was resent: the target then saw fewer than
    // sent + resent (1 in 3 runs here missed one), never more.
    let received = target.metrics().await.get("wsfleet_target_messages_total");
    assert!(
        received >= counts.sent as f64 && received <= (counts.sent + counts.resent) as f64,
        "the target received {received}: {counts:?}"
    );
}

/// Busy loops on every core (and one more), killed on drop.
struct CpuHogs(Vec<std::process::Child>);

impl CpuHogs {
    fn start() -> CpuHogs {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        CpuHogs(
            (0..=cores)
                .map(|_| {
                    std::process::Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}

/// Starved of CPU (busy loops on every core, the generator at the lowest priority), the
/// generator says so: saturation rises, and the run's summary marks its numbers suspect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starved_generator_marks_its_numbers_suspect() {
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.yaml");
    std::fs::write(
        &config,
        format!(
            "target: {}\nlisten: 127.0.0.1:0\nusers: 50\nconnect_rate: 1000\nscenario: echo\n\
             message_interval: 20ms\nself_health: {{max_loop_lag: 5ms}}\n",
            target.ws_url()
        ),
    )
    .unwrap();
    let summary = dir.path().join("summary.json");
    let _hogs = CpuHogs::start();
    let status = tokio::process::Command::new("nice")
        .args(["-n", "19", BIN, "run", "-c"])
        .arg(&config)
        .args(["--duration", "8s", "--summary-out"])
        .arg(&summary)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    let status = tokio::time::timeout(Duration::from_secs(90), status)
        .await
        .expect("the run ends")
        .unwrap();
    assert!(status.code().is_some(), "{status:?}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let suspect = summary["suspect"]
        .as_str()
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(suspect.contains("saturated"), "{suspect}");
}

/// The target restarted under 5,000 users: everyone notices, retries stay within
/// `connect_rate` (no reconnect storm), everyone comes back, and no counter ever goes
/// backwards on /metrics meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_restarted_under_five_thousand_users_gets_them_all_back() {
    const USERS: f64 = 5000.0;
    let rate = 2500.0;
    let addr = free_addr();
    let mut target = TargetProcess::start(addr).await;
    let daemon = start_daemon(&format!(
        "target: ws://{addr}/ws\nusers: {USERS}\nconnect_rate: {rate}\nscenario: idle\n\
         heartbeat: {{interval: 2s, timeout: 2s}}\nreconnect: {{initial: 50ms, max: 500ms}}\n"
    ))
    .await;
    let api = daemon.addr();
    let last = std::sync::Mutex::new(Monotonic::default());
    let watch = |m: &Scrape| last.lock().unwrap().check(m);
    wait_progressing("5,000 users", USERS, 30, 300, || async {
        let m = scrape(api).await;
        watch(&m);
        m.get("wsfleet_users_active")
    })
    .await;
    target.kill();
    wait_for("every user to notice", 60, || async {
        let m = scrape(api).await;
        watch(&m);
        m.get("wsfleet_users_active") == 0.0
    })
    .await;
    let before = scrape(api).await.sum("wsfleet_connects_total");
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await; // a measurement window, not a wait for an event
    let attempts = scrape(api).await.sum("wsfleet_connects_total") - before;
    // Attempts are counted when they end, not when the pacer grants them: on a loaded machine
    // some granted just before the window end inside it. A storm (5,000 users retrying every
    // 50-500 ms without the pacer) would be several times the rate, far past this bound.
    let allowed = rate * window.elapsed().as_secs_f64() * 1.25 + 10.0;
    assert!(
        attempts > 0.0 && attempts <= allowed,
        "{attempts} attempts in {:?}",
        window.elapsed()
    );
    let _target = TargetProcess::start(addr).await;
    wait_progressing("everyone back", USERS, 30, 300, || async {
        let m = scrape(api).await;
        watch(&m);
        m.get("wsfleet_users_active")
    })
    .await;
    daemon.shutdown().await.unwrap();
}

/// Every `_total` series seen so far and its last value; panics if one goes backwards.
#[derive(Default)]
struct Monotonic(std::collections::BTreeMap<String, f64>);

impl Monotonic {
    fn check(&mut self, scrape: &Scrape) {
        for (series, value) in &scrape.0 {
            let name = series.split('{').next().unwrap_or_default();
            if !(name.ends_with("_total") || name.ends_with("_count")) {
                continue;
            }
            if let Some(previous) = self.0.insert(series.clone(), *value) {
                assert!(
                    *value >= previous,
                    "{series} went back from {previous} to {value}"
                );
            }
        }
    }
}

/// Nothing a person sees — log lines, the status API, the run summary — shows a token, a
/// password or a credentials column: not in URLs, not in frames the server echoed back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_show_in_logs_status_or_summaries() {
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users.csv"),
        "user_id,password,token\nalice,pw-SECRET-1,tok-SECRET-1\nbob,pw-SECRET-2,tok-SECRET-2\n",
    )
    .unwrap();
    // The target echoes frames it does not know: this login step never matches, and its
    // sample quotes the echo of our frame; the URL carries the token too.
    let config = dir.path().join("fleet.yaml");
    std::fs::write(
        &config,
        format!(
            "target: {}\nlisten: 127.0.0.1:0\nusers: 2\nreconnect: {{initial: 100ms, max: 200ms}}\n\
             progress_interval: 1s\nscenario:\n  url: '{}?token={{{{token}}}}'\n  credentials: users.csv\n  \
             login:\n    - send: '{{\"op\":\"hello\",\"user\":\"{{{{user_id}}}}\",\"password\":\"{{{{password}}}}\"}}'\n      \
             expect: {{pointer: /op, equals: welcome}}\n      timeout: 300ms\n",
            target.ws_url(),
            target.ws_url()
        ),
    )
    .unwrap();
    let summary = dir.path().join("summary.json");
    let mut daemon = DaemonProcess::start(&[
        "run",
        "-c",
        config.to_str().unwrap(),
        "--duration",
        "3s",
        "--summary-out",
        summary.to_str().unwrap(),
    ])
    .await;
    let api = daemon.api;
    wait_for("login failures sampled", 30, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_connects_total{result="login"}"#)
            >= 2.0
    })
    .await;
    let status = status(api).await.to_string();
    assert!(status.contains("password"), "the sample is there: {status}");
    daemon.wait_log(&["connect failed"], 30).await;
    daemon.stop();
    let summary = std::fs::read_to_string(&summary).unwrap();
    let log = daemon.log_text();
    for (what, text) in [("status", &status), ("summary", &summary), ("log", &log)] {
        assert!(!text.contains("SECRET"), "a secret in the {what}: {text}");
    }
}
