//! The protocols real servers speak, against those real servers on loopback: Socket.IO 4
//! (npm `socket.io`), MQTT 3.1.1 over TCP (Debian's `mosquitto`) and over WebSocket (npm
//! `aedes` behind `ws`), protobuf in binary frames (a server written here with npm's
//! `protobufjs`). `scripts/protocol-tools` installs them (the README's test command
//! runs it); without them these tests say loudly that they skipped. Plain TCP with a length
//! prefix is tested against the reference target's TCP listener.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::net::SocketAddr;
use std::path::PathBuf;

use helpers::*;

/// The Socket.IO 4 chat server (`tests/servers/socketio_chat.js`): auth by token, `join` with an ack, `chat` acked and broadcast
/// to the sender's room (every DROP_EVERY-th message not broadcast, counted per receiver
/// missed), pings every second with a one-second timeout; `/stats` counts what it saw.
const SOCKET_IO_SERVER: &str = include_str!("servers/socketio_chat.js");

fn socket_io_config(server: &NodeServer, users: u32, token: &str) -> String {
    format!(
        "target: ws://{}/socket.io/?EIO=4&transport=websocket\nusers: {users}\nconnect_rate: 500\n\
         message_interval: 200ms\nack_timeout: 2s\nloss_grace: 1s\nheartbeat: {{interval: 1s, timeout: 2s}}\n\
         scenario: {{extends: socketio, vars: {{token: {token}}}}}\n",
        server.addr
    )
}

/// Against the real Socket.IO server: users log in with their token and join their rooms,
/// answer every Engine.IO ping (so the server, which drops a client after pingInterval +
/// pingTimeout = 2 s without a pong, drops nobody over several such periods), and their acks
/// and room deliveries are measured with no loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_users_stay_connected_and_are_measured_without_loss() {
    let Some(server) = NodeServer::start("socket.io", SOCKET_IO_SERVER, &[]) else {
        return;
    };
    let daemon = start_daemon(&socket_io_config(&server, 20, "s3cret")).await;
    let api = daemon.addr();
    wait_active(api, 20.0, 30).await;
    // Five pings each: 2.5 times the server's drop deadline.
    wait_for("five Engine.IO pings answered per user", 30, || async {
        scrape(api).await.get("wsfleet_replies_total") >= 100.0
    })
    .await;
    let stats = server.stats().await;
    assert_eq!(stats["connections"], 20, "{stats}");
    assert_eq!(stats["disconnects"], serde_json::json!({}), "{stats}");
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.is_some_and(|d| d.settled));
    let counts = metrics.message_counts();
    assert!(counts.sent > 100, "{counts:?}");
    assert!(
        metrics.message_rtt.get_sample_count() > 100,
        "ack RTT samples"
    );
    assert!(
        metrics.delivery_latency.get_sample_count() > 500,
        "delivery latency samples"
    );
    assert_eq!(counts.lost, 0, "{counts:?}");
    assert_eq!(counts.ack_timeouts, 0, "{counts:?}");
    assert_eq!(counts.frames_invalid, 0, "{counts:?}");
    assert_eq!(
        counts.frames_unmatched, 0,
        "every frame is understood: {counts:?}"
    );
}

/// Deliveries the server does not broadcast are counted lost, each receiver's miss once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_deliveries_the_server_drops_are_counted_lost() {
    let Some(server) = NodeServer::start("socket.io", SOCKET_IO_SERVER, &[("DROP_EVERY", "10")])
    else {
        return;
    };
    let daemon = start_daemon(&socket_io_config(&server, 20, "s3cret")).await;
    wait_active(daemon.addr(), 20.0, 30).await;
    wait_for("some deliveries dropped", 30, || async {
        server.stats().await["dropped_deliveries"].as_f64().unwrap() >= 100.0
    })
    .await;
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.is_some_and(|d| d.settled));
    let dropped = server.stats().await["dropped_deliveries"].as_u64().unwrap();
    let counts = metrics.message_counts();
    assert_eq!(counts.lost, dropped, "{counts:?}");
    assert!(metrics.delivery_latency.get_sample_count() > 0);
}

/// A wrong token is refused by the server's middleware (CONNECT_ERROR): counted as a `login`
/// failure at once, with nobody connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_socket_io_login_counts_as_a_login_failure() {
    let Some(server) = NodeServer::start("socket.io", SOCKET_IO_SERVER, &[]) else {
        return;
    };
    let daemon = start_daemon(&socket_io_config(&server, 3, "wrong")).await;
    refused_logins(daemon, "refused by the server").await;
    assert!(server.stats().await["refused"].as_u64().unwrap() >= 3);
}

/// Waits for three `login` failures with nobody connected, and `detail` in the error samples.
async fn refused_logins(daemon: wsfleet::daemon::Daemon, detail: &str) {
    let api = daemon.addr();
    wait_for("three refused logins", 10, || async {
        scrape(api)
            .await
            .get(r#"wsfleet_connects_total{result="login"}"#)
            >= 3.0
    })
    .await;
    let scrape = scrape(api).await;
    assert_eq!(scrape.get("wsfleet_users_active"), 0.0);
    assert_eq!(scrape.get(r#"wsfleet_connects_total{result="ok"}"#), 0.0);
    let errors = status(api).await["errors"].to_string();
    assert!(errors.contains(detail), "{errors}");
    daemon.shutdown().await.unwrap();
}

/// Debian's mosquitto on a loopback port, anonymous clients allowed. Killed on drop.
struct Mosquitto {
    addr: SocketAddr,
    _server: ServerProcess,
}

impl Mosquitto {
    async fn start() -> Option<Mosquitto> {
        let program = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| {
                tool(
                    "mosquitto",
                    "Debian's mosquitto (scripts/protocol-tools installs it)",
                )
            })?;
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n",
                addr.port()
            ),
        )
        .unwrap();
        let server = ServerProcess::spawn(&program, &["-c", "mosquitto.conf"], dir, &[addr]).await;
        Some(Mosquitto {
            addr,
            _server: server,
        })
    }
}

fn mqtt_config(target: &str, users: u32, extra: &str) -> String {
    format!(
        "target: {target}\nusers: {users}\nconnect_rate: 500\nmessage_interval: 200ms\n\
         ack_timeout: 2s\nloss_grace: 1s\nheartbeat: {{interval: 1s, timeout: 2s}}\n{extra}"
    )
}

/// Runs until `deliveries` room deliveries were measured, drains, and returns the metrics.
async fn measured_run(
    daemon: wsfleet::daemon::Daemon,
    users: f64,
    deliveries: u64,
) -> std::sync::Arc<wsfleet::metrics::Metrics> {
    let api = daemon.addr();
    wait_active(api, users, 30).await;
    wait_deliveries(api, deliveries).await;
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.is_some_and(|d| d.settled));
    assert!(
        metrics.message_rtt.get_sample_count() > 0,
        "ack RTT samples"
    );
    assert!(
        metrics.delivery_latency.get_sample_count() >= deliveries,
        "delivery latency samples"
    );
    assert!(
        metrics.heartbeat_rtt.get_sample_count() > 0,
        "app heartbeats (PINGREQ/PINGRESP, ping/pong)"
    );
    metrics
}

async fn wait_deliveries(api: std::net::SocketAddr, deliveries: u64) {
    wait_for("room deliveries measured", 30, || async {
        scrape(api).await.get("wsfleet_deliveries_received_total") >= deliveries as f64
    })
    .await;
}

/// The run's counts, checked: nothing lost, every ack in time, every frame understood.
fn understood_without_loss(metrics: &wsfleet::metrics::Metrics) -> wsfleet::metrics::MessageCounts {
    let counts = metrics.message_counts();
    assert_eq!(counts.lost, 0, "{counts:?}");
    assert_eq!(counts.ack_timeouts, 0, "{counts:?}");
    assert_eq!(counts.frames_invalid, 0, "{counts:?}");
    assert_eq!(counts.frames_unmatched, 0, "{counts:?}");
    counts
}

/// MQTT over TCP against mosquitto: CONNECT, SUBSCRIBE to the room's topic, PUBLISH at QoS 1
/// timed by its PUBACK, deliveries from the subscription — no loss, every frame understood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tcp_against_mosquitto_is_measured_without_loss() {
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let yaml = mqtt_config(&format!("tcp://{}", broker.addr), 20, "scenario: mqtt\n");
    let metrics = measured_run(start_daemon(&yaml).await, 20.0, 500).await;
    understood_without_loss(&metrics);
}

/// Devices in two rooms each against mosquitto: a SUBSCRIBE per room at login, PUBLISHes to
/// the rooms in turn, every delivery judged in the room it came through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_devices_in_two_rooms_each_are_measured_room_by_room_against_mosquitto() {
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let yaml = mqtt_config(
        &format!("tcp://{}", broker.addr),
        20,
        "scenario: {extends: mqtt, room_size: 5, rooms_per_user: 2}\n",
    );
    let metrics = measured_run(start_daemon(&yaml).await, 20.0, 500).await;
    let counts = understood_without_loss(&metrics);
    assert_eq!(
        counts.deliveries_foreign, 0,
        "each delivery came through a room it shares with its sender: {counts:?}"
    );
}

/// The same against mosquitto in MQTT 5, subscribing with no_local: the broker sends no
/// one their own messages back, so every publish that arrives is a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_5_against_mosquitto_is_measured_without_loss() {
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let scenario = r#"scenario:
  extends: mqtt
  codec: {mqtt: {version: 5}}
  login:
    - send: '{"type":"connect","client_id":"{{user_id}}","keep_alive":60}'
      expect: {pointer: /code, equals: success}
      reject: {pointer: /type, equals: connack}
    - send: '{"type":"subscribe","pkid":1,"topic":"{{room}}","qos":0,"no_local":true}'
      expect: {pointer: /type, equals: suback}
"#;
    let yaml = mqtt_config(&format!("tcp://{}", broker.addr), 20, scenario);
    let metrics = measured_run(start_daemon(&yaml).await, 20.0, 500).await;
    let counts = metrics.message_counts();
    assert_eq!(counts.lost, 0, "{counts:?}");
    assert_eq!(counts.ack_timeouts, 0, "{counts:?}");
    assert_eq!(counts.frames_unmatched, 0, "{counts:?}");
    // Echoes of our own publishes would be one more frame per message sent; what arrives
    // besides deliveries, PUBACKs and PINGRESPs is at most a few deliveries of messages sent
    // before a receiver joined (not tracked).
    let accounted =
        counts.deliveries_received + counts.sent + metrics.heartbeat_rtt.get_sample_count();
    let extra = counts.received.saturating_sub(accounted);
    assert!(
        extra < counts.sent / 4,
        "no echo of our own messages: {extra} frames beyond deliveries, acks and heartbeats: {counts:?}"
    );
}

/// An MQTT broker over WebSocket (subprotocol `mqtt`): aedes behind `ws`. It refuses the
/// username `bad` (CONNACK not_authorized) and, with DROP_EVERY, does not forward every n-th
/// message (counted per subscriber it skipped).
const AEDES_SERVER: &str = include_str!("servers/mqtt_broker.js");

/// MQTT over WebSocket against aedes: measured like over TCP, and what the broker does not
/// forward is counted lost, each subscriber's miss once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_against_aedes_counts_what_the_broker_drops() {
    let Some(broker) = NodeServer::start("aedes", AEDES_SERVER, &[("DROP_EVERY", "3")]) else {
        return;
    };
    let yaml = mqtt_config(
        &format!("ws://{}/mqtt", broker.addr),
        20,
        "scenario: mqtt\n",
    );
    let metrics = measured_run(start_daemon(&yaml).await, 20.0, 1000).await;
    let counts = metrics.message_counts();
    let stats = broker.stats().await;
    let dropped = stats["dropped_deliveries"].as_u64().unwrap();
    assert!(dropped > 0, "{stats} {counts:?}");
    assert_eq!(counts.lost, dropped, "{counts:?}");
    assert_eq!(counts.ack_timeouts, 0, "{counts:?}");
    assert_eq!(counts.frames_unmatched, 0, "{counts:?}");
}

/// A CONNACK that refuses the login ends the login step at once, counted as `login`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_mqtt_connect_counts_as_a_login_failure() {
    let Some(broker) = NodeServer::start("aedes", AEDES_SERVER, &[]) else {
        return;
    };
    let yaml = mqtt_config(
        &format!("ws://{}/mqtt", broker.addr),
        3,
        "scenario: {extends: mqtt, vars: {username: bad, password: nope}}\n",
    );
    refused_logins(start_daemon(&yaml).await, "not_authorized").await;
    assert!(broker.stats().await["refused"].as_u64().unwrap() >= 3);
}

/// The reference target's IM protocol over plain TCP, 4-byte length-prefixed: the built-in
/// `im` scenario with a framing. Measured like over WebSocket, without loss; then with the
/// target dropping deliveries, what it dropped is counted lost, exactly, once the books are
/// settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_im_protocol_over_length_prefixed_tcp_is_measured_and_its_drops_counted() {
    let tcp = free_addr();
    let target = Target::start_with(wsfleet::target::TargetOptions {
        tcp: Some(tcp),
        ..Default::default()
    })
    .await;
    let yaml = tcp_config(&format!("tcp://{tcp}"), "");
    let lossless = measured_run(start_daemon(&yaml).await, 20.0, 1000).await;
    assert_eq!(lossless.message_counts().lost, 0);
    // The drops begin once every user has joined and heard from its room-mates: a message
    // in flight to a receiver while it joins is below the sequence its books begin at, so a
    // drop of it would go unjudged (README "Loss, duplicates, reordering").
    let daemon = start_daemon(&yaml).await;
    wait_active(daemon.addr(), 20.0, 30).await;
    wait_deliveries(daemon.addr(), 20 * 9 * 3).await;
    target.faults(serde_json::json!({"drop": 0.02})).await;
    let metrics = measured_run(daemon, 20.0, 2000).await;
    let counts = metrics.message_counts();
    let dropped = target
        .metrics()
        .await
        .get("wsfleet_target_deliveries_dropped_total");
    assert!(dropped > 0.0);
    assert_eq!(counts.lost as f64, dropped, "{counts:?}");
    assert_eq!(counts.ack_timeouts, 0, "{counts:?}");
    assert_eq!(counts.frames_invalid, 0, "{counts:?}");
}

fn tcp_config(target: &str, extra: &str) -> String {
    format!(
        "target: {target}\nusers: 20\nconnect_rate: 500\nmessage_interval: 100ms\n\
         ack_timeout: 2s\nloss_grace: 1s\nheartbeat: {{interval: 1s, timeout: 2s}}\n\
         scenario: {{extends: im, framing: {{length_prefixed: {{bytes: 4}}}}}}\n{extra}"
    )
}

/// `tls://`: the same over TLS, the target's certificate trusted through `tls.ca_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_im_protocol_over_tls_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tcp = free_addr();
    let _target = Target::start_with(wsfleet::target::TargetOptions {
        tls: Some(wsfleet::target::server_config(&cert_path, &key_path).unwrap()),
        tcp: Some(tcp),
        ..Default::default()
    })
    .await;
    let yaml = tcp_config(
        &format!("tls://{tcp}"),
        &format!("tls: {{ca_file: {}}}\n", cert_path.display()),
    );
    let counts = measured_run(start_daemon(&yaml).await, 20.0, 1000)
        .await
        .message_counts();
    assert_eq!(counts.lost, 0, "{counts:?}");
    assert_eq!(counts.ack_timeouts, 0, "{counts:?}");
}

/// A `tcp://` target without a framing, or without an application heartbeat, is refused at
/// start with what to do.
#[test]
fn a_plain_stream_target_needs_a_framing_and_an_app_heartbeat() {
    let err = wsfleet::config::Config::parse("target: tcp://127.0.0.1:7000\nscenario: im\n")
        .expect_err("no framing");
    assert!(
        err.to_string().contains("give the scenario a `framing`"),
        "{err}"
    );
    let err = wsfleet::config::Config::parse(
        "target: tcp://127.0.0.1:7000\nscenario: {extends: idle, framing: newline}\n",
    )
    .expect_err("no heartbeat");
    assert!(err.to_string().contains("application heartbeat"), "{err}");
    wsfleet::config::Config::parse(
        "target: tcp://127.0.0.1:7000\nheartbeat: {interval: 0s}\nscenario: {extends: idle, framing: newline}\n",
    )
    .expect("no heartbeat asked for");
    wsfleet::config::Config::parse("target: tcp://127.0.0.1:7000\nscenario: mqtt\n")
        .expect("mqtt frames its own packets");
}

/// A chat server speaking `examples/proto/chat.proto` (protobufjs, independent of our codec):
/// login, join, msg -> ack + deliver to the room (every DROP_EVERY-th not delivered, counted
/// per receiver), ping -> pong; frames that are not an Envelope are counted.
const PROTOBUF_SERVER: &str = include_str!("servers/protobuf_chat.js");

/// Protobuf in binary frames, with `examples/protobuf-chat.yaml` itself (its target and load
/// replaced): acks and deliveries measured, and what the server does not deliver counted lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_frames_are_measured_and_drops_counted() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let proto = examples.join("proto/chat.proto");
    let run = |drop_every: &'static str| {
        let examples = examples.clone();
        let proto = proto.clone();
        async move {
            let server = NodeServer::start(
                "protobufjs",
                PROTOBUF_SERVER,
                &[
                    ("DROP_EVERY", drop_every),
                    ("PROTO", proto.to_str().unwrap()),
                ],
            )?;
            let overrides: serde_norway::Mapping = serde_norway::from_str(&format!(
                "target: ws://{}/ws\nusers: 20\nconnect_rate: 500\nmessage_interval: 100ms\n\
                 ack_timeout: 2s\nloss_grace: 1s\nheartbeat: {{interval: 1s, timeout: 2s}}\n",
                server.addr
            ))
            .unwrap();
            let config = wsfleet::config::Config::read(
                Some(&examples.join("protobuf-chat.yaml")),
                overrides,
            )
            .unwrap()
            .config;
            let metrics = measured_run(start_daemon_with(config).await, 20.0, 2000).await;
            Some((server.stats().await, metrics.message_counts()))
        }
    };
    let Some((_, lossless)) = run("0").await else {
        return;
    };
    assert_eq!(lossless.lost, 0, "{lossless:?}");
    let (stats, counts) = run("7").await.unwrap();
    let dropped = stats["dropped_deliveries"].as_u64().unwrap();
    assert!(dropped > 0, "{stats}");
    assert_eq!(stats["invalid"], 0, "every frame we sent decoded: {stats}");
    assert_eq!(counts.lost, dropped, "{counts:?}");
    assert_eq!(counts.ack_timeouts, 0, "{counts:?}");
    assert_eq!(counts.frames_invalid, 0, "{counts:?}");
    assert_eq!(counts.frames_unmatched, 0, "{counts:?}");
}

/// One fleet, three protocols at once: web users on Socket.IO (npm socket.io), devices on
/// MQTT (mosquitto) and chat users on the reference target, each group held, measured and
/// judged on its own — the chat group by an SLA it cannot meet, which fails it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_fleet_speaks_three_protocols_and_judges_each_group_apart() {
    let Some(sio) = NodeServer::start("socket.io", SOCKET_IO_SERVER, &[]) else {
        return;
    };
    let Some(broker) = Mosquitto::start().await else {
        return;
    };
    let target = Target::start().await;
    let yaml = format!(
        "users: 30\nconnect_rate: 500\nmessage_interval: 200ms\nack_timeout: 2s\nloss_grace: 1s\n\
         heartbeat: {{interval: 1s, timeout: 2s}}\nsla: {{error_rate: 0%}}\ngroups:\n\
         \x20 - {{name: web, users: 10, target: 'ws://{}/socket.io/?EIO=4&transport=websocket', scenario: {{extends: socketio, vars: {{token: s3cret}}}}}}\n\
         \x20 - {{name: devices, users: 10, target: 'tcp://{}', scenario: mqtt}}\n\
         \x20 - {{name: chat, users: 10, target: '{}', sla: {{p99_delivery: 0s}}}}\n",
        sio.addr,
        broker.addr,
        target.ws_url()
    );
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    wait_for("every group connected and hearing its room", 60, || async {
        let status = status(api).await;
        status["groups"].as_array().unwrap().iter().all(|g| {
            g["active"] == 10 && g["messages"]["deliveries_received"].as_u64().unwrap() >= 200
        })
    })
    .await;
    let desired = daemon.fleet().local_users_by_group();
    let slas = daemon.sla().borrow().clone();
    let metrics = std::sync::Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    let drain = finished.drain.expect("drained");
    assert!(drain.settled, "{drain:?}");
    let summary = wsfleet::summary::Summary::judge(
        &metrics,
        &desired,
        &slas,
        finished.run_time,
        &drain.active_by_group,
        None,
    );
    let verdicts: Vec<(&str, &str)> = summary
        .groups
        .iter()
        .map(|g| (g.name.as_str(), g.verdict))
        .collect();
    assert_eq!(
        verdicts,
        [("web", "pass"), ("devices", "pass"), ("chat", "fail")]
    );
    for group in &summary.groups {
        let counts = &group.figures.messages.counts;
        assert!(
            counts.sent > 0 && counts.deliveries_received > 0,
            "{}: {counts:?}",
            group.name
        );
        assert_eq!(counts.lost, 0, "{}: {counts:?}", group.name);
        assert_eq!(counts.frames_invalid, 0, "{}: {counts:?}", group.name);
        assert_eq!(group.figures.users.active, 10, "{}", group.name);
    }
    let broke: Vec<_> = summary
        .breaches()
        .map(|slo| (slo.group.as_deref(), slo.slo.as_str()))
        .collect();
    assert_eq!(broke, [(Some("chat"), "p99_delivery_seconds")]);
    // Each server saw only its own group.
    assert_eq!(sio.stats().await["connections"], 10);
}
