//! The built-in presets against the real servers they describe, from Debian's packages
//! (scripts/protocol-tools installs them): `nats` against nats-server's WebSocket listener,
//! `xmpp` against prosody's multi-user chat over WebSocket (RFC 7395).

#![allow(clippy::unwrap_used)]

mod helpers;

use std::net::SocketAddr;
use std::path::PathBuf;

use helpers::*;
use serde_json::json;

/// Debian's program at `path`, else from PATH; `None` (said loudly) when missing.
fn debian(path: &str, what: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    if path.is_file() {
        return Some(path);
    }
    let name = path.file_name()?.to_str()?.to_string();
    tool(&name, what)
}

/// nats-server with a WebSocket listener, pinging every client each second.
struct Nats {
    ws: SocketAddr,
    _server: ServerProcess,
}

impl Nats {
    async fn start() -> Option<Nats> {
        let program = debian(
            "/usr/sbin/nats-server",
            "Debian's nats-server (scripts/protocol-tools installs it)",
        )?;
        let dir = tempfile::tempdir().unwrap();
        let (tcp, ws) = (free_addr(), free_addr());
        std::fs::write(
            dir.path().join("nats.conf"),
            format!(
                "listen: \"{tcp}\"\nping_interval: \"1s\"\nping_max: 3\n\
                 websocket {{\n  listen: \"{ws}\"\n  no_tls: true\n}}\n"
            ),
        )
        .unwrap();
        let server = ServerProcess::spawn(&program, &["-c", "nats.conf"], dir, &[tcp, ws]).await;
        Some(Nats {
            ws,
            _server: server,
        })
    }
}

/// Drains the run and checks its books: settled, nothing lost, every ack in time, every frame
/// understood. Returns the metrics and their counts.
async fn settled_without_loss(
    daemon: wsfleet::daemon::Daemon,
) -> (
    std::sync::Arc<wsfleet::metrics::Metrics>,
    wsfleet::metrics::MessageCounts,
) {
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.expect("drained").settled);
    let counts = metrics.message_counts();
    assert_eq!(
        (
            counts.lost,
            counts.ack_timeouts,
            counts.frames_invalid,
            counts.frames_unmatched
        ),
        (0, 0, 0, 0),
        "{counts:?}"
    );
    (metrics, counts)
}

fn disconnects(scrape: &Scrape) -> f64 {
    scrape.sum("wsfleet_disconnects_total")
}

/// The `nats` preset: the server's PINGs answered (idle clients are pinged every second and
/// stay), PUB with its payload's length computed — through a live payload_size change —,
/// +OK as the ack, MSG payloads as deliveries, nothing lost or misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_websocket_is_measured_without_loss_through_a_payload_change() {
    let Some(nats) = Nats::start().await else {
        return;
    };
    let yaml = format!(
        "target: ws://{}/\nusers: 20\nconnect_rate: 500\nmessage_interval: 0s\n\
         heartbeat: {{interval: 0s}}\nack_timeout: 3s\nloss_grace: 1s\n\
         scenario: {{extends: nats, room_size: 5}}\n",
        nats.ws
    );
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    wait_active(api, 20.0, 30).await;
    // Idle: only the server's PINGs keep the connections; answered, none goes stale.
    wait_for("the server's PINGs answered", 30, || async {
        scrape(api).await.get("wsfleet_replies_total") >= 60.0
    })
    .await;
    assert_eq!(disconnects(&scrape(api).await), 0.0);

    let talk = json!({"message_interval": "100ms", "heartbeat_interval": "1s"});
    assert_eq!(patch_load(api, talk).await.status(), 200);
    let delivered = |at_least: f64| async move {
        wait_for("deliveries", 30, || async {
            scrape(api).await.get("wsfleet_deliveries_received_total") >= at_least
        })
        .await;
    };
    delivered(500.0).await;
    // Bigger bodies: the PUB header's byte count follows.
    assert_eq!(
        patch_load(api, json!({"payload_size": 3000}))
            .await
            .status(),
        200
    );
    let now = scrape(api).await;
    let before = now.get("wsfleet_bytes_sent_total");
    delivered(now.get("wsfleet_deliveries_received_total") + 1000.0).await;
    let sent_bytes = scrape(api).await.get("wsfleet_bytes_sent_total") - before;
    assert!(
        sent_bytes > 3000.0 * 100.0,
        "the big bodies went out: {sent_bytes}"
    );
    assert_eq!(disconnects(&scrape(api).await), 0.0, "nobody left");
    let (_, counts) = settled_without_loss(daemon).await;
    assert_eq!(counts.own_echoes, 0, "echo: false");
    assert!(counts.heartbeats > 0, "PING/PONG timed: {counts:?}");
    assert_eq!(
        counts.frames_ignored, counts.deliveries_received,
        "one MSG header per delivery: {counts:?}"
    );
}

/// prosody with WebSocket, anonymous logins and a multi-user chat component whose rooms any
/// occupant may create.
struct Prosody {
    http: SocketAddr,
    _server: ServerProcess,
}

impl Prosody {
    async fn start() -> Option<Prosody> {
        let program = debian(
            "/usr/bin/prosody",
            "Debian's prosody (scripts/protocol-tools installs it)",
        )?;
        let dir = tempfile::tempdir().unwrap();
        let (c2s, http) = (free_addr(), free_addr());
        let path = dir.path().display().to_string();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(
            dir.path().join("prosody.cfg.lua"),
            format!(
                r#"run_as_root = true
pidfile = "{path}/prosody.pid"
data_path = "{path}/data"
certificates = "{path}"
log = {{ {{ levels = {{ min = "warn" }}, to = "console" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {} }}
s2s_ports = {{ }}
http_ports = {{ {} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
modules_enabled = {{ "saslauth"; "disco"; "ping"; "websocket"; "http" }}
modules_disabled = {{ "s2s" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
consider_websocket_secure = true
authentication = "anonymous"
storage = "memory"
VirtualHost "localhost"
Component "conference.localhost" "muc"
  muc_room_default_history_length = 0
  muc_room_locking = false
  restrict_room_creation = false
"#,
                c2s.port(),
                http.port()
            ),
        )
        .unwrap();
        let server = ServerProcess::spawn(
            &program,
            &["--config", &format!("{path}/prosody.cfg.lua"), "-F"],
            dir,
            &[c2s, http],
        )
        .await;
        Some(Prosody {
            http,
            _server: server,
        })
    }
}

/// The `xmpp` preset in a multi-user chat room of 10: the natural ack rule (the groupchat
/// stanza carrying our id) leaves every other occupant's copy to the delivery rule, so every
/// delivery is counted and nothing is lost or unmatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_multi_user_chat_against_prosody_is_measured_without_loss() {
    let Some(prosody) = Prosody::start().await else {
        return;
    };
    let yaml = format!(
        "target: ws://{}/xmpp-websocket\nusers: 10\nconnect_rate: 100\nmessage_interval: 0s\n\
         heartbeat: {{interval: 1s, timeout: 5s}}\nack_timeout: 3s\nloss_grace: 1s\n\
         scenario: xmpp\n",
        prosody.http
    );
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    wait_active(api, 10.0, 30).await;
    // Everyone is in the room: now they talk.
    let talk = json!({"message_interval": "100ms"});
    assert_eq!(patch_load(api, talk).await.status(), 200);
    wait_for("room deliveries", 30, || async {
        scrape(api).await.get("wsfleet_deliveries_received_total") >= 1000.0
    })
    .await;
    assert_eq!(disconnects(&scrape(api).await), 0.0, "nobody left");
    let (metrics, counts) = settled_without_loss(daemon).await;
    assert_eq!(
        counts.deliveries_received, counts.deliveries_expected,
        "each message reached the nine others: {counts:?}"
    );
    assert_eq!(counts.deliveries_received, counts.sent * 9, "{counts:?}");
    assert_eq!(
        metrics.message_rtt.get_sample_count(),
        counts.sent,
        "every message acked by its own copy"
    );
    assert!(counts.heartbeats > 0, "XEP-0199 pings answered");
}
