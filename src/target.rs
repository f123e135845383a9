//! The reference target: a WebSocket server to aim the fleet at in demos, tests and
//! benchmarks. It echoes every data frame, answers pings, and counts what it did on its own
//! `/metrics`, so tests can compare what both sides saw.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The target's own counters, under the `wsfleet_target_` prefix.
pub struct TargetMetrics {
    registry: Registry,
    pub connections: IntGauge,
    connections_total: prometheus::IntCounter,
    frames_received: IntCounterVec,
    frames_sent: IntCounterVec,
}

impl TargetMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        let connections = IntGauge::new(
            "wsfleet_target_connections",
            "WebSocket connections open right now.",
        )
        .expect("valid metric");
        let connections_total = prometheus::IntCounter::new(
            "wsfleet_target_connections_total",
            "WebSocket connections accepted.",
        )
        .expect("valid metric");
        let frames = |name, help| {
            IntCounterVec::new(Opts::new(name, help), &["kind"]).expect("valid metric")
        };
        let frames_received = frames(
            "wsfleet_target_frames_received_total",
            "Frames received, by kind.",
        );
        let frames_sent = frames("wsfleet_target_frames_sent_total", "Frames sent, by kind.");
        for collector in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections_total.clone()),
            Box::new(frames_received.clone()),
            Box::new(frames_sent.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        TargetMetrics {
            registry,
            connections,
            connections_total,
            frames_received,
            frames_sent,
        }
    }

    fn encode(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|err| format!("# encoding metrics failed: {err}\n"))
    }
}

#[derive(Clone)]
struct TargetState {
    metrics: Arc<TargetMetrics>,
    shutdown: CancellationToken,
}

/// The target's routes: `/ws` (WebSocket), `/metrics`, `/healthz`.
fn router(state: TargetState) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// Serves the target on `listener` until `shutdown` is cancelled; open WebSockets are closed
/// with a close frame (1001, going away) first.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let state = TargetState {
        metrics: Arc::new(TargetMetrics::new()),
        shutdown: shutdown.clone(),
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn metrics(State(state): State<TargetState>) -> impl IntoResponse {
    (
        [("content-type", prometheus::TEXT_FORMAT)],
        state.metrics.encode(),
    )
}

async fn upgrade(State(state): State<TargetState>, ws: WebSocketUpgrade) -> impl IntoResponse {
    // Small buffers, like the fleet's: the target must hold as many connections as we send.
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| echo(socket, state))
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
    }
}

async fn echo(mut socket: WebSocket, state: TargetState) {
    let metrics = &state.metrics;
    metrics.connections.inc();
    metrics.connections_total.inc();
    loop {
        let message = tokio::select! {
            _ = state.shutdown.cancelled() => {
                let goodbye = Message::Close(Some(CloseFrame {
                    code: close_code::AWAY,
                    reason: "target shutting down".into(),
                }));
                let _ = socket.send(goodbye).await;
                break;
            }
            message = socket.recv() => message,
        };
        let Some(Ok(message)) = message else { break };
        metrics
            .frames_received
            .with_label_values(&[kind(&message)])
            .inc();
        // Pings are answered by the WebSocket layer itself; a close ends the conversation.
        let reply = match message {
            Message::Text(_) | Message::Binary(_) => message,
            Message::Ping(_) => {
                metrics.frames_sent.with_label_values(&["pong"]).inc();
                continue;
            }
            Message::Pong(_) => continue,
            Message::Close(_) => break,
        };
        let reply_kind = kind(&reply);
        if socket.send(reply).await.is_err() {
            break;
        }
        metrics.frames_sent.with_label_values(&[reply_kind]).inc();
    }
    metrics.connections.dec();
}
