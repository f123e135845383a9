//! permessage-deflate against a server that negotiates it on its own terms: Python's
//! `websockets` echo server (`tests/servers/echo_server.py`, from the test venv), which answers
//! with windows of 2^12 and compresses everything it sends. Every byte between the fleet and
//! the server passes a counting relay, so the compression is seen on the wire, not only in
//! wsfleet's own counters.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use helpers::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use wsfleet::metrics::MessageCounts;

/// The echo server, with `args` (`--no-compression`).
async fn echo_server(args: &[&str]) -> Option<(SocketAddr, ServerProcess)> {
    let python = venv_python("websockets")?;
    let addr = free_addr();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/echo_server.py");
    let port = addr.port().to_string();
    let mut all = vec![script.to_str().unwrap(), "--port", &port];
    all.extend_from_slice(args);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&python, &all, dir, &[addr]).await;
    Some((addr, server))
}

/// What went through a relay: bytes towards the server and back.
#[derive(Default)]
struct Wire {
    up: AtomicU64,
    down: AtomicU64,
}

/// A TCP relay to `server` counting each direction's bytes; the relay ends with the fleet.
struct Relay {
    addr: SocketAddr,
    wire: Arc<Wire>,
    accepting: tokio::task::JoinHandle<JoinSet<()>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let wire = Arc::new(Wire::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let (counted, stopping) = (Arc::clone(&wire), stop.clone());
        let accepting = tokio::spawn(async move {
            let mut relays = JoinSet::new();
            loop {
                let mut client = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap().0,
                    () = stopping.cancelled() => return relays,
                };
                let wire = Arc::clone(&counted);
                relays.spawn(async move {
                    let mut upstream = TcpStream::connect(server).await.unwrap();
                    if let Ok((up, down)) =
                        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    {
                        wire.up.fetch_add(up, Ordering::Relaxed);
                        wire.down.fetch_add(down, Ordering::Relaxed);
                    }
                });
            }
        });
        Relay {
            addr,
            wire,
            accepting,
            stop,
        }
    }

    /// Once the fleet has closed its connections: the bytes each way.
    async fn finish(self) -> (u64, u64) {
        self.stop.cancel();
        let mut relays = self.accepting.await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), async {
            while relays.join_next().await.is_some() {}
        })
        .await
        .expect("the relayed connections end with the fleet");
        (
            self.wire.up.load(Ordering::Relaxed),
            self.wire.down.load(Ordering::Relaxed),
        )
    }
}

const USERS: u64 = 4;

/// What an echo run saw.
struct Run {
    counts: MessageCounts,
    /// Payload bytes of the data frames sent and received (`wsfleet_bytes_*_total`).
    payload: (u64, u64),
    /// Bytes the relay carried up and down.
    wire: (u64, u64),
    /// What the server logged it agreed with each connection.
    agreed: Vec<String>,
}

/// An echo run of [`USERS`] users through a relay to `server`, ended by a drain once
/// `messages` echoes came back; every echo must come back, nobody reconnect.
async fn echo_run(server: &(SocketAddr, ServerProcess), compression: &str, messages: u64) -> Run {
    let relay = Relay::start(server.0).await;
    let log = server.1.dir.path().join("connections.log");
    // The server appends to it: emptied, not removed.
    let _ = std::fs::write(&log, "");
    let yaml = format!(
        "target: ws://{}/\nusers: {USERS}\nconnect_rate: 100\nmessage_interval: 20ms\npayload_size: 1000\n\
         scenario: echo\nheartbeat: {{interval: 500ms}}\n{compression}\n",
        relay.addr
    );
    let daemon = start_daemon(&yaml).await;
    let api = daemon.addr();
    wait_active(api, USERS as f64, 30).await;
    wait_for("echoes", 60, || async {
        scrape(api).await.get("wsfleet_messages_received_total") >= messages as f64
    })
    .await;
    let scraped = scrape(api).await;
    assert_eq!(scraped.sum("wsfleet_disconnects_total"), 0.0);
    assert_eq!(
        scraped.get(r#"wsfleet_connects_total{result="ok"}"#),
        USERS as f64
    );
    let metrics = Arc::clone(daemon.metrics());
    let finished = daemon.finish().await.unwrap();
    assert!(finished.drain.is_some_and(|d| d.settled));
    let wire = relay.finish().await;
    let counts = metrics.message_counts();
    assert_eq!(
        counts.received, counts.sent,
        "every echo came back: {counts:?}"
    );
    assert_eq!(counts.ack_timeouts, 0, "{counts:?}");
    assert_eq!(
        counts.frames_invalid + counts.frames_unmatched,
        0,
        "{counts:?}"
    );
    assert!(
        metrics.heartbeat_rtt.get_sample_count() > 0,
        "pings answered"
    );
    let agreed = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    Run {
        counts,
        payload: (metrics.bytes_sent.get(), metrics.bytes_received.get()),
        wire,
        agreed,
    }
}

/// `compression: deflate`, as a browser offers it: the server's answer (windows of 2^12) is
/// taken, every message goes compressed both ways — the compressed counts are all the bytes
/// counted, and the relay sees a fraction of them — and every echo is read back whole. The same
/// run uncompressed, for comparison, puts every byte on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_as_a_browser_offers_it_compresses_both_ways_on_the_wire() {
    let Some(server) = echo_server(&[]).await else {
        return;
    };
    let run = echo_run(&server, "compression: deflate", 400).await;
    let (c, (up, down)) = (run.counts.compression, run.wire);
    assert_eq!((c.negotiated, c.declined), (USERS, 0), "{c:?}");
    assert_eq!(
        run.agreed,
        vec![
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12";
            USERS as usize
        ]
    );
    assert_eq!(
        c.bytes_sent, run.payload.0,
        "every data frame sent went compressed"
    );
    assert_eq!(
        c.bytes_received, run.payload.1,
        "every data frame received came compressed"
    );
    assert!(c.wire_bytes_sent * 4 < c.bytes_sent, "{c:?}");
    assert!(c.wire_bytes_received * 4 < c.bytes_received, "{c:?}");
    assert!(
        up * 2 < c.bytes_sent,
        "the relay saw {up} bytes up for {c:?}"
    );
    assert!(
        down * 2 < c.bytes_received,
        "the relay saw {down} bytes down for {c:?}"
    );

    let plain = echo_run(&server, "", 400).await;
    assert_eq!(
        plain.counts.compression,
        Default::default(),
        "nothing offered, nothing counted"
    );
    assert_eq!(
        plain.agreed,
        vec![String::new(); USERS as usize],
        "no extension"
    );
    assert!(
        plain.wire.0 > plain.payload.0,
        "uncompressed, every payload byte crosses the wire"
    );
}

/// Each message on its own (no context takeover either way, so users share one context per
/// thread) and a smaller window of our own: the server agrees to all of it, and echoes still
/// come back whole. A server that does not compress answers without the extension: counted as
/// declined, and the run goes on uncompressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_per_message_are_agreed_and_a_server_without_compression_declines() {
    let Some(server) = echo_server(&[]).await else {
        return;
    };
    let offer = "compression: {deflate: {client_no_context_takeover: true, server_no_context_takeover: true, client_max_window_bits: 10, level: 1}}";
    let run = echo_run(&server, offer, 300).await;
    let (c, up) = (run.counts.compression, run.wire.0);
    assert_eq!((c.negotiated, c.declined), (USERS, 0), "{c:?}");
    for line in &run.agreed {
        for term in [
            "server_no_context_takeover",
            "client_no_context_takeover",
            "client_max_window_bits=10",
        ] {
            assert!(line.contains(term), "{line}");
        }
    }
    assert_eq!(run.agreed.len(), USERS as usize);
    assert!(c.wire_bytes_sent * 4 < c.bytes_sent, "{c:?}");
    assert!(up * 2 < c.bytes_sent, "{up} bytes up for {c:?}");
    drop(server);

    let Some(plain_server) = echo_server(&["--no-compression"]).await else {
        return;
    };
    let run = echo_run(&plain_server, "compression: deflate", 200).await;
    let c = run.counts.compression;
    assert_eq!((c.negotiated, c.declined), (0, USERS), "{c:?}");
    assert_eq!(c.bytes_sent + c.wire_bytes_received, 0, "{c:?}");
    assert_eq!(run.agreed, vec![String::new(); USERS as usize]);
}
