//! Server-Sent Events against a real SSE server: nginx with the nchan module (Debian's
//! `nginx-light` and `libnginx-mod-nchan`, installed by scripts/protocol-tools). Each user
//! subscribes to its room's channel as an EventSource (`sse+http://`), publishes its messages by
//! POST (`scenario.publish`), reads nchan's answer to each POST as the ack (they come in order,
//! one per message) and the room's events as deliveries. Each connection lives 2-3 s (`lifetime`),
//! so users reconnect and resume with `Last-Event-ID`: nchan replays what they missed.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::net::SocketAddr;

use helpers::*;

const MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// nginx serving nchan: subscribers at `/sub/ROOM`, publishers at `/pub/ROOM` (a buffer
/// of 10,000 messages per channel to replay); its access log says which subscriptions
/// carried a `Last-Event-ID`.
async fn nchan() -> Option<(SocketAddr, ServerProcess)> {
    let nginx = tool(
        "nginx",
        "Debian's nginx-light (scripts/protocol-tools installs it)",
    )?;
    if !installed(
        MODULE,
        "Debian's libnginx-mod-nchan (scripts/protocol-tools installs it)",
    ) {
        return None;
    }
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!(
            r#"load_module {MODULE};
daemon off;
# One process: killing it (the test's cleanup) leaves no orphaned worker behind.
master_process off;
pid nginx.pid;
events {{ worker_connections 1024; }}
http {{
  log_format sse '$request_method $uri $status "$http_last_event_id"';
  access_log access.log sse;
  client_body_buffer_size 64k;
  server {{
    listen {addr};
    location ~ ^/sub/(.+)$ {{
      nchan_subscriber eventsource;
      nchan_channel_id $1;
      nchan_subscriber_first_message newest;
    }}
    location ~ ^/pub/(.+)$ {{
      nchan_publisher;
      nchan_channel_id $1;
      nchan_message_buffer_length 10000;
      nchan_message_timeout 10m;
    }}
  }}
}}
"#
        ),
    )
    .unwrap();
    let prefix = dir.path().to_str().unwrap().to_string();
    let server = ServerProcess::spawn(
        &nginx,
        &["-p", &prefix, "-c", "nginx.conf", "-e", "error.log"],
        dir,
        &[addr],
    )
    .await;
    Some((addr, server))
}

/// Ten users in two rooms of five against nchan, five messages a second each, every
/// connection living 2-3 s; reconnects wait their turn at 5 connects a second, so a user is
/// away long enough to miss messages that its resumed stream must replay.
fn fleet(server: SocketAddr) -> String {
    format!(
        r#"target: sse+http://{server}/
users: 10
connect_rate: 5
message_interval: 200ms
heartbeat: {{interval: 0s}}
lifetime: {{min: 2s, max: 3s}}
reconnect: {{initial: 100ms, max: 500ms}}
scenario:
  url: "sse+http://{server}/sub/{{{{room}}}}"
  room_size: 5
  publish:
    url: "http://{server}/pub/{{{{room}}}}"
    headers: {{Accept: application/json}}
  message:
    send: '{{"id":"{{{{msg_id}}}}","from":"{{{{user_id}}}}","seq":{{{{seq}}}},"ts":{{{{ts}}}}}}'
    ack: {{match: {{pointer: /messages}}}}
    delivery: {{match: {{pointer: /from}}, sender: /from, seq: /seq, ts: /ts}}
"#
    )
}

/// Publishes answered in order are the acks, events the deliveries, nothing lost or doubled
/// across a reconnect every 2-3 s per user, and every reconnect resumed from the last
/// event seen: nchan's log shows each one carrying a `Last-Event-ID`, and what it replayed
/// arrived (as deliveries sent before the receiver's books reopened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nchan_event_stream_is_measured_and_resumed_with_last_event_id() {
    let Some((addr, server)) = nchan().await else {
        return;
    };
    let daemon = start_daemon(&fleet(addr)).await;
    let api = daemon.addr();
    wait_active(api, 10.0, 30).await;
    wait_for("reconnects and deliveries", 60, || async {
        let scraped = scrape(api).await;
        scraped.get(r#"wsfleet_connects_total{result="ok"}"#) >= 30.0
            && scraped.get("wsfleet_deliveries_received_total") >= 1000.0
    })
    .await;
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.is_some_and(|d| d.settled));
    let counts = metrics.message_counts();
    assert_eq!(
        counts.lost + counts.duplicated + counts.reordered,
        0,
        "{counts:?}"
    );
    assert_eq!(counts.ack_timeouts, 0, "every publish answered: {counts:?}");
    assert_eq!(
        counts.frames_invalid + counts.frames_unmatched,
        0,
        "{counts:?}"
    );
    assert!(
        counts.own_echoes > 0,
        "nchan sends a publisher its own messages too"
    );
    assert!(
        counts.deliveries_untracked > 0,
        "the replays after each resume: {counts:?}"
    );
    assert_eq!(metrics.publish_refused.get(), 0);
    // Every message is answered but one still in flight when its user left by choice (its
    // lifetime ended: churn leaves without waiting, and counts no timeout for it).
    let acked = metrics.message_rtt.get_sample_count();
    let churned = metrics
        .disconnect(wsfleet::metrics::DisconnectReason::Churn)
        .get();
    assert!(churned >= 20, "{churned} lifetimes ended");
    assert!(
        acked <= counts.sent && counts.sent - acked <= churned,
        "an ack for each but those in flight at a churn: {acked} acks, {} sent, {churned} churned",
        counts.sent
    );
    assert!(metrics.delivery_latency.get_sample_count() >= 1000);

    let log = std::fs::read_to_string(server.dir.path().join("access.log")).unwrap();
    let subscriptions: Vec<&str> = log.lines().filter(|l| l.starts_with("GET /sub/")).collect();
    let resumed = subscriptions
        .iter()
        .filter(|l| !l.ends_with("\"-\""))
        .count();
    assert!(
        subscriptions.len() >= 30,
        "{} subscriptions",
        subscriptions.len()
    );
    // Each user's first subscription has no event to resume from; every later one has.
    assert_eq!(
        resumed,
        subscriptions.len() - 10,
        "subscriptions with a Last-Event-ID:\n{log}"
    );
    let published = log.lines().filter(|l| l.starts_with("POST /pub/")).count() as u64;
    // One POST per message: none doubled, and every ack answered one (a message queued
    // for the publish connection when its user churned may not have been posted).
    assert!(
        (acked..=counts.sent).contains(&published),
        "{published} POSTs, {acked} acks, {} sent",
        counts.sent
    );
    assert!(
        log.lines()
            .filter(|l| l.starts_with("POST"))
            .all(|l| l.contains(" 201 ") || l.contains(" 202 ")),
        "every publish accepted"
    );
}
