//! End-to-end tests of the daemon core against the reference target on loopback.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::process::Command;
use std::time::Duration;

use helpers::*;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_users_connect_exchange_messages_and_close_cleanly() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 1000\nconnect_rate: 2000\nmessage_interval: 500ms\nheartbeat: {{interval: 1s, timeout: 30s}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    // Progress, not a budget: a debug build on two busy cores connects 1,000 users slowly.
    wait_progressing("users connecting", 1000.0, 30, 300, || async {
        scrape(api).await.get("wsfleet_users_active")
    })
    .await;
    wait_progressing("RTT and heartbeat samples", 1.0, 30, 300, || async {
        let m = scrape(api).await;
        let rtt = m.get("wsfleet_message_rtt_seconds_count") / 2000.0;
        let heartbeat = m.get("wsfleet_heartbeat_rtt_seconds_count") / 1000.0;
        rtt.min(heartbeat)
    })
    .await;

    let m = scrape(api).await;
    assert_eq!(m.get("wsfleet_users_target"), 1000.0);
    assert_eq!(m.get("wsfleet_connect_duration_seconds_count"), 1000.0);
    assert_eq!(m.get(r#"wsfleet_connects_total{result="ok"}"#), 1000.0);
    assert_eq!(
        m.sum("wsfleet_connects_total"),
        1000.0,
        "no failed attempts"
    );
    let disconnects: Vec<_> =
        m.0.iter()
            .filter(|(k, v)| k.starts_with("wsfleet_disconnects_total") && **v > 0.0)
            .collect();
    assert!(disconnects.is_empty(), "{disconnects:?}");
    assert_eq!(m.get("wsfleet_frames_invalid_total"), 0.0);
    assert!(m.get("wsfleet_bytes_sent_total") > 0.0);
    assert!(m.get("process_resident_memory_bytes") > 0.0);
    // The target counts a connection once hyper hands it the upgraded socket, a moment after
    // the client saw the 101.
    wait_for("the target to count 1000 connections", 30, || async {
        target.metrics().await.get("wsfleet_target_connections") == 1000.0
    })
    .await;

    let status = status(api).await;
    assert_eq!(status["users"]["desired"], 1000);
    assert_eq!(status["users"]["active"], 1000);
    assert!(status["latency"]["message_rtt"]["count"].as_u64().unwrap() > 0);
    assert!(status["latency"]["message_rtt"]["p99"].as_f64().unwrap() > 0.0);

    // Graceful shutdown: every user sends a close frame before the daemon ends.
    daemon.shutdown().await.unwrap();
    let t = target.metrics().await;
    assert_eq!(
        t.get(r#"wsfleet_target_frames_received_total{kind="close"}"#),
        1000.0
    );
    assert_eq!(t.get("wsfleet_target_connections"), 0.0);
}

/// Patches the user count to `goal` and samples the active count until it gets there,
/// checking that it never moved faster than `rate` users per second. Clock and baseline are
/// taken before the PATCH: users connect at most `rate` per second from that moment on.
async fn ramp_to(api: std::net::SocketAddr, goal: f64, patch: serde_json::Value, rate: f64) {
    let start_count = scrape(api).await.get("wsfleet_users_active");
    let start = Instant::now();
    let response = patch_load(api, patch).await;
    assert_eq!(response.status(), 200);
    let load: serde_json::Value = response.json().await.unwrap();
    assert_eq!(load["users"], goal);
    assert_eq!(
        load["message_interval"], "2s",
        "unpatched fields keep their values"
    );
    // Progress is the distance to the goal shrinking; never faster than the rate.
    wait_progressing(&format!("a ramp to {goal} users"), 0.0, 30, 300, || async {
        let active = scrape(api).await.get("wsfleet_users_active");
        let allowed = rate * (start.elapsed().as_secs_f64() + 0.1) + 2.0;
        let moved = (active - start_count).abs();
        assert!(
            moved <= allowed,
            "moved {moved} users in {:?}, faster than {rate}/s",
            start.elapsed()
        );
        -(active - goal).abs()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patching_the_user_count_ramps_at_the_connect_rate() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 100\nconnect_rate: 1000\nmessage_interval: 2s\nheartbeat: {{interval: 2s, timeout: 30s}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    wait_active(api, 100.0, 30).await;

    ramp_to(
        api,
        3000.0,
        serde_json::json!({"users": 3000, "connect_rate": 800}),
        800.0,
    )
    .await;
    wait_for("the target to count 3000 connections", 30, || async {
        target.metrics().await.get("wsfleet_target_connections") == 3000.0
    })
    .await;

    ramp_to(api, 200.0, serde_json::json!({"users": 200}), 800.0).await;
    wait_for("the target to count 200 connections", 30, || async {
        target.metrics().await.get("wsfleet_target_connections") == 200.0
    })
    .await;

    let m = scrape(api).await;
    // The ramp-down closed exactly the surplus, each with a close frame; no one else moved.
    assert_eq!(
        m.get(r#"wsfleet_disconnects_total{reason="client_close"}"#),
        2800.0
    );
    assert_eq!(m.sum("wsfleet_disconnects_total"), 2800.0);
    assert_eq!(m.sum("wsfleet_connects_total"), 3000.0);
    let t = target.metrics().await;
    assert_eq!(
        t.get(r#"wsfleet_target_frames_received_total{kind="close"}"#),
        2800.0
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_target_is_retried_at_a_bounded_rate_and_the_fleet_comes_back() {
    let addr = free_addr();
    let mut target = TargetProcess::start(addr).await;
    let rate = 100.0;
    let daemon = start_daemon(&format!(
        "target: ws://{addr}/ws\nusers: 200\nconnect_rate: {rate}\nmessage_interval: 200ms\n\
         heartbeat: {{interval: 1s, timeout: 2s}}\nreconnect: {{initial: 50ms, max: 500ms}}\n"
    ))
    .await;
    let api = daemon.addr();
    wait_active(api, 200.0, 30).await;

    target.kill();
    wait_for("every user to notice the dead target", 30, || async {
        let m = scrape(api).await;
        m.get("wsfleet_users_active") == 0.0 && m.sum("wsfleet_disconnects_total") == 200.0
    })
    .await;

    // With 200 users retrying every <= 500 ms, only the pacer keeps attempts at `rate`.
    let before = scrape(api).await.sum("wsfleet_connects_total");
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await; // a measurement window, not a wait for an event
    let after = scrape(api).await;
    let attempts = after.sum("wsfleet_connects_total") - before;
    let allowed = rate * window.elapsed().as_secs_f64() + 2.0;
    assert!(
        attempts > 0.0,
        "users keep retrying (generator saturated: {})",
        after.get("wsfleet_generator_saturated")
    );
    assert!(
        attempts <= allowed,
        "{attempts} attempts in {:?}: a reconnect storm",
        window.elapsed()
    );
    assert!(after.get(r#"wsfleet_connects_total{result="refused"}"#) > 0.0);

    let target = TargetProcess::start(addr).await;
    wait_active(api, 200.0, 60).await;
    wait_for(
        "the restarted target to count 200 connections",
        30,
        || async { target.metrics().await.get("wsfleet_target_connections") == 200.0 },
    )
    .await;
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_generator_adds_no_users_and_says_why() {
    let target = Target::start().await;
    // Demanding more free file descriptors than the process can have: saturated at once.
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 5\nself_health: {{min_fds_available: 100000000}}\n",
        target.ws_url()
    ))
    .await;
    let api = daemon.addr();
    wait_for("the generator to call itself saturated", 30, || async {
        scrape(api).await.get("wsfleet_generator_saturated") == 1.0
    })
    .await;
    let status = status(api).await;
    assert_eq!(status["generator"]["saturated"], true);
    assert!(
        status["generator"]["reason"]
            .as_str()
            .unwrap()
            .contains("file descriptors"),
        "{status}"
    );
    let m = scrape(api).await;
    assert_eq!(m.get("wsfleet_users_active"), 0.0);
    assert_eq!(
        m.sum("wsfleet_connects_total"),
        0.0,
        "no connection attempted"
    );
    assert!(m.get("wsfleet_fds_available") > 0.0);
    assert!(m.get("wsfleet_event_loop_lag_seconds_count") > 0.0);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_source_addresses() {
    let target = Target::start().await;
    let daemon = start_daemon(&format!(
        "target: {}\nusers: 20\nconnect_rate: 1000\nscenario: idle\nsource_addresses: [127.0.0.2, 127.0.0.3]\n",
        target.ws_url()
    ))
    .await;
    wait_active(daemon.addr(), 20.0, 30).await;
    let peers = peers_of(target.addr.port());
    let expected: std::collections::BTreeMap<String, usize> =
        [("127.0.0.2".to_string(), 10), ("127.0.0.3".to_string(), 10)].into();
    assert_eq!(peers, expected, "round-robin over both addresses");
    daemon.shutdown().await.unwrap();
}

/// In a network namespace of its own with five ephemeral ports, ten users: a few connect, the
/// rest fail with `ports_exhausted` and keep retrying — counted, never a hang.
#[test]
fn exhausted_ports_are_a_counted_failure_not_a_hang() {
    if !root("a network namespace of its own") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = format!("wsfleet-test-{}", std::process::id());
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(
        run(&["netns", "add", &ns]),
        "creating a network namespace needs root and iproute2"
    );
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    std::fs::write(
        dir.path().join("fleet.yaml"),
        "target: ws://127.0.0.1:9001/ws\nlisten: 127.0.0.1:9750\nusers: 10\nconnect_rate: 1000\nscenario: idle\n\
         reconnect: {initial: 100ms, max: 200ms}\n",
    )
    .unwrap();
    let summary = dir.path().join("summary.json");
    let script = format!(
        "ip link set lo up && sysctl -qw net.ipv4.ip_local_port_range='40000 40004' && \
         ({BIN} target --listen 127.0.0.1:9001 2>/dev/null & echo $! > {dir}/target.pid) && \
         timeout 60 {BIN} run -c {dir}/fleet.yaml --duration 3s --summary-out {summary}; \
         kill $(cat {dir}/target.pid)",
        dir = dir.path().display(),
        summary = summary.display()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &ns, "sh", "-c", &script])
        .output()
        .unwrap();
    let summary = std::fs::read_to_string(&summary)
        .unwrap_or_else(|_| panic!("no summary: {}", String::from_utf8_lossy(&out.stderr)));
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    // Linux splits the range between connect() and bind() by port parity, so up to 5 connect.
    let active = summary["users"]["active"].as_u64().unwrap();
    assert!((1..=5).contains(&active), "{summary}");
    let exhausted = summary["connects"]["errors"]["ports_exhausted"]
        .as_u64()
        .unwrap();
    assert!(
        exhausted >= 10 - active,
        "every user left out was counted: {summary}"
    );
    let other_failures: u64 = summary["connects"]["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum::<u64>()
        - exhausted;
    assert_eq!(other_failures, 0, "{summary}");
}

/// wss:// end to end: a self-signed certificate trusted through `tls.ca_file` works; without
/// it, every attempt is a counted `tls` failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_targets_work_with_a_trusted_ca_and_fail_cleanly_without() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let target = Target::start_with(wsfleet::target::TargetOptions {
        tls: Some(wsfleet::target::server_config(&cert_path, &key_path).unwrap()),
        ..Default::default()
    })
    .await;
    let url = format!("wss://{}/ws", target.addr);

    let trusted = start_daemon(&format!(
        "target: {url}\nusers: 10\nmessage_interval: 100ms\ntls: {{ca_file: {}}}\n",
        cert_path.display()
    ))
    .await;
    wait_active(trusted.addr(), 10.0, 30).await;
    wait_for("acks over TLS", 30, || async {
        scrape(trusted.addr())
            .await
            .get("wsfleet_message_rtt_seconds_count")
            >= 20.0
    })
    .await;
    trusted.shutdown().await.unwrap();

    let untrusted = start_daemon(&format!(
        "target: {url}\nusers: 3\nreconnect: {{initial: 50ms, max: 100ms}}\n"
    ))
    .await;
    wait_for("certificate failures to be counted", 30, || async {
        scrape(untrusted.addr())
            .await
            .get(r#"wsfleet_connects_total{result="tls"}"#)
            >= 3.0
    })
    .await;
    assert_eq!(
        scrape(untrusted.addr()).await.get("wsfleet_users_active"),
        0.0
    );
    untrusted.shutdown().await.unwrap();
}

/// A wrong path: every connect fails with HTTP 404. The terminal says so within seconds (one
/// line per reason per 10 s, with a sample), the status API keeps the sample, and the progress
/// line counts the errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_show_in_the_log_and_the_status_api() {
    let target = Target::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.yaml");
    let wrong = format!("ws://{}/nope", target.addr);
    std::fs::write(
        &config,
        format!(
            "target: {wrong}\nusers: 5\nlisten: 127.0.0.1:0\nprogress_interval: 1s\n\
             reconnect: {{initial: 50ms, max: 100ms}}\n"
        ),
    )
    .unwrap();
    let daemon = DaemonProcess::start(&["run", "-c", config.to_str().unwrap()]).await;
    let line = daemon
        .wait_log(&["connect failed", "HTTP 404 Not Found for", "/nope"], 5)
        .await;
    assert!(line.contains("http_status"), "{line}");
    let progress = daemon
        .wait_log(&["progress: users 0/5", "connect.http_status="], 10)
        .await;
    assert!(progress.contains("connects "), "{progress}");
    let errors = &status(daemon.api).await["errors"];
    let sample = &errors["connect.http_status"];
    assert_eq!(sample["last"], format!("HTTP 404 Not Found for {wrong}"));
    assert!(sample["count"].as_u64().unwrap() >= 5, "{errors}");
    assert!(
        sample["last_at"].as_str().unwrap().ends_with('Z'),
        "{errors}"
    );
    // Many failures, one line per reason per 10 s.
    wait_for("more failures", 10, || async {
        scrape(daemon.api)
            .await
            .get(r#"wsfleet_connects_total{result="http_status"}"#)
            >= 50.0
    })
    .await;
    let lines = daemon.log_lines(&["connect failed"]);
    assert!(
        lines <= 2,
        "{lines} log lines for one reason within seconds"
    );
}

/// A server that never answers the upgrade: timeouts, each named with the URL and the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_shows_its_timeouts() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let daemon = start_daemon(&format!(
        "target: ws://{addr}/ws\nusers: 3\nconnect_timeout: 200ms\nscenario: idle\n"
    ))
    .await;
    let api = daemon.addr();
    wait_for("a timeout sample", 10, || async {
        status(api).await["errors"]["connect.timeout"]["last"]
            .as_str()
            .is_some_and(|s| {
                s.contains("within connect_timeout (200ms)") && s.contains(&addr.to_string())
            })
    })
    .await;
    daemon.shutdown().await.unwrap();
    held.abort();
}

/// Two shards of one fleet against one server: their users add up to the fleet-wide count, and
/// each holds whole rooms — every delivery a member expects comes from its own process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_split_the_fleet_by_whole_rooms() {
    let target = Target::start().await;
    let yaml = |index: u32| {
        format!(
            "target: {}\nusers: 25\nconnect_rate: 500\nmessage_interval: 0s\nloss_grace: 500ms\n\
             shard: {{index: {index}, count: 2}}\n",
            target.ws_url()
        )
    };
    let a = start_daemon(&yaml(0)).await;
    let b = start_daemon(&yaml(1)).await;
    // Rooms of 10: rooms 0 and 2 (5 users) on shard 0, room 1 on shard 1.
    wait_active(a.addr(), 15.0, 30).await;
    wait_active(b.addr(), 10.0, 30).await;
    let s = status(b.addr()).await;
    assert_eq!(s["shard"], serde_json::json!({"index": 1, "count": 2}));
    assert_eq!(
        (
            s["users"]["desired"].as_u64(),
            s["users"]["fleet_desired"].as_u64()
        ),
        (Some(10), Some(25))
    );
    assert_eq!(
        scrape(a.addr()).await.get("wsfleet_fleet_users_target"),
        25.0
    );
    for api in [a.addr(), b.addr()] {
        assert_eq!(
            patch_load(api, serde_json::json!({"message_interval": "100ms"}))
                .await
                .status(),
            200
        );
    }
    wait_for("deliveries on both shards", 30, || async {
        scrape(a.addr())
            .await
            .get("wsfleet_deliveries_received_total")
            >= 500.0
            && scrape(b.addr())
                .await
                .get("wsfleet_deliveries_received_total")
                >= 500.0
    })
    .await;
    for api in [a.addr(), b.addr()] {
        assert_eq!(
            patch_load(api, serde_json::json!({"message_interval": "0s"}))
                .await
                .status(),
            200
        );
    }
    for api in [a.addr(), b.addr()] {
        wait_for(
            "every expected delivery, from the same process",
            30,
            || async {
                let m = scrape(api).await;
                m.get("wsfleet_deliveries_received_total")
                    == m.get("wsfleet_deliveries_expected_total")
            },
        )
        .await;
        assert_eq!(scrape(api).await.sum("wsfleet_messages_lost_total"), 0.0);
    }
    assert_eq!(
        target
            .metrics()
            .await
            .get(r#"wsfleet_target_logins_total{result="ok"}"#),
        25.0
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
