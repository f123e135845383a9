//! The reference target: an IM server to aim the fleet at in demos, tests and benchmarks.
//!
//! It speaks a small JSON protocol (login, join a room, message -> ack + room broadcast, ping
//! -> pong; anything else is echoed), has an admin API for fault injection, and counts what it
//! did on its own `/metrics`, so tests can compare both sides. See the README for the protocol.

mod faults;
mod im;
mod lean;
pub mod store;
mod tls;

pub use tls::{mutual_server_config, server_config};

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use faults::FaultSwitch;
pub use faults::{Faults, FaultsPatch};

/// How the target is run.
#[derive(Debug, Clone, Default)]
pub struct TargetOptions {
    /// If set, a login must carry this token.
    pub token: Option<String>,
    /// If set, serve `wss://` (and https) with this config.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// If set, also serve the IM protocol over plain TCP on this address (TLS when `tls` is
    /// set), each frame with a 4-byte big-endian length prefix (for `tcp://` and `tls://`
    /// targets).
    pub tcp: Option<std::net::SocketAddr>,
    /// If set, `/admin` calls must carry `Authorization: Bearer <this>`: anyone who can
    /// reach the port could otherwise stall or close every connection.
    pub admin_token: Option<String>,
    /// If set, a client heard from (any frame, pings included) less recently than this is
    /// closed (1001, "idle timeout"), as servers do with clients that vanished.
    pub idle_timeout: Option<std::time::Duration>,
    /// If set, rooms keep their history by cursor and a client may sync what it missed
    /// (`--history`).
    pub history: Option<store::HistoryLimits>,
    /// Serve WebSockets with the least memory per connection (`--lean`, see [`lean`]): the
    /// listener takes `/ws` only, and the HTTP API is served on `admin_listen` if set.
    pub lean: bool,
    pub admin_listen: Option<std::net::SocketAddr>,
}

/// The target's own counters, under the `wsfleet_target_` prefix.
pub struct TargetMetrics {
    registry: Registry,
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    pub refused: IntCounter,
    pub frames_received: ByKind,
    pub frames_sent: ByKind,
    pub logins: IntCounterVec,
    pub messages: IntCounter,
    pub acks: IntCounter,
    pub deliveries: IntCounter,
    pub dropped: IntCounter,
    pub duplicated: IntCounter,
    pub errors: IntCounterVec,
    pub idle_timeouts: IntCounter,
    pub sync_requests: IntCounter,
    pub synced: IntCounter,
    pub sync_truncated: IntCounter,
    pub sync_duplicated: IntCounter,
    pub sync_dropped: IntCounter,
    pub history_evicted: IntCounter,
}

impl TargetMetrics {
    fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        TargetMetrics {
            connections: gauge(
                "wsfleet_target_connections",
                "WebSocket connections open right now.",
            ),
            connections_total: counter(
                "wsfleet_target_connections_total",
                "WebSocket connections accepted.",
            ),
            refused: counter(
                "wsfleet_target_refused_total",
                "Upgrades refused by the `refuse` fault.",
            ),
            frames_received: ByKind::new(
                counter_vec(
                    "wsfleet_target_frames_received_total",
                    "Frames received, by kind.",
                    "kind",
                ),
                &["text", "binary", "ping", "pong", "close"],
            ),
            frames_sent: ByKind::new(
                counter_vec(
                    "wsfleet_target_frames_sent_total",
                    "Frames sent, by kind.",
                    "kind",
                ),
                &[
                    "echo",
                    "ack",
                    "deliver",
                    "pong",
                    "login_ok",
                    "login_error",
                    "joined",
                    "error",
                    im::SYNC,
                    im::SYNC_AGAIN,
                    "synced",
                ],
            ),
            logins: counter_vec(
                "wsfleet_target_logins_total",
                "Login attempts, by result.",
                "result",
            ),
            messages: counter(
                "wsfleet_target_messages_total",
                "Room messages received from senders.",
            ),
            acks: counter("wsfleet_target_acks_total", "Acks sent to senders."),
            deliveries: counter(
                "wsfleet_target_deliveries_total",
                "Room deliveries sent to members (duplicates included).",
            ),
            dropped: counter(
                "wsfleet_target_deliveries_dropped_total",
                "Room deliveries dropped by the `drop` fault.",
            ),
            duplicated: counter(
                "wsfleet_target_deliveries_duplicated_total",
                "Extra copies sent by the `duplicate` fault.",
            ),
            errors: counter_vec(
                "wsfleet_target_errors_total",
                "Client frames answered with an error, by reason.",
                "reason",
            ),
            idle_timeouts: counter(
                "wsfleet_target_idle_timeouts_total",
                "Connections closed because the client was silent for --idle-timeout.",
            ),
            sync_requests: counter(
                "wsfleet_target_sync_requests_total",
                "Sync requests of returning clients (--history).",
            ),
            synced: counter(
                "wsfleet_target_synced_total",
                "Messages of syncs written to clients (copies of the sync_twice fault included).",
            ),
            sync_truncated: counter(
                "wsfleet_target_sync_truncated_total",
                "Messages of a backlog the sync_truncate fault never sent.",
            ),
            sync_duplicated: counter(
                "wsfleet_target_sync_duplicated_total",
                "Extra copies of backlog messages the sync_twice fault wrote to clients.",
            ),
            sync_dropped: counter(
                "wsfleet_target_sync_dropped_total",
                "Live deliveries the sync_drop_live fault dropped during a client's sync.",
            ),
            history_evicted: counter(
                "wsfleet_target_history_evicted_total",
                "Messages pushed out of a room's history by its count or age limit.",
            ),
            registry,
        }
    }

    /// A frame of `kind` written to a client; a sync's are counted here, as written, so a
    /// backlog cut short by the client leaving counts only what it was sent.
    pub fn sent(&self, kind: &'static str) {
        self.frames_sent.inc(kind);
        if kind == im::SYNC || kind == im::SYNC_AGAIN {
            self.synced.inc();
        }
        if kind == im::SYNC_AGAIN {
            self.sync_duplicated.inc();
        }
    }

    fn encode(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|err| format!("# encoding metrics failed: {err}\n"))
    }
}

/// A counter per frame kind, resolved once: counting a frame is one atomic add, not a
/// labelled lookup (a hash and a lock inside prometheus) per message.
pub struct ByKind {
    vec: IntCounterVec,
    known: Vec<(&'static str, IntCounter)>,
}

impl ByKind {
    fn new(vec: IntCounterVec, kinds: &[&'static str]) -> Self {
        let known = kinds
            .iter()
            .map(|&kind| (kind, vec.with_label_values(&[kind])))
            .collect();
        Self { vec, known }
    }

    pub fn inc(&self, kind: &'static str) {
        match self.known.iter().find(|(k, _)| *k == kind) {
            Some((_, counter)) => counter.inc(),
            None => self.vec.with_label_values(&[kind]).inc(),
        }
    }
}

/// What every connection and handler of the target shares.
pub struct Shared {
    pub metrics: TargetMetrics,
    pub faults: FaultSwitch,
    pub rooms: im::Rooms,
    pub options: TargetOptions,
    /// Cancelled by shutdown, and replaced (after cancelling) by `POST /admin/close-all`.
    close_all: Mutex<CancellationToken>,
}

impl Shared {
    fn close_token(&self) -> CancellationToken {
        self.close_all
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

type TargetState = Arc<Shared>;

/// `GET /client`: a web client of the protocol (two users in one room), for capturing a
/// browser session to `wsfleet record`.
const CLIENT_PAGE: &str = include_str!("client.html");

/// The target's routes.
fn router(state: TargetState) -> Router {
    let admin = Router::new()
        .route("/admin/faults", get(get_faults).patch(patch_faults))
        .route("/admin/close-all", post(close_all))
        .route("/admin/rooms", get(rooms))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            authorize_admin,
        ));
    Router::new()
        .route("/ws", get(upgrade))
        .route(
            "/client",
            get(|| async { axum::response::Html(CLIENT_PAGE) }),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(admin)
        .with_state(state)
}

/// With an admin token set, `/admin` calls must carry it (compared in constant time).
async fn authorize_admin(
    State(state): State<TargetState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = &state.options.admin_token else {
        return next.run(request).await;
    };
    if crate::bearer::presented(request.headers(), token) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({
                "error": "the target's admin API needs its token (Authorization: Bearer <--admin-token>)"
            })),
        )
            .into_response()
    }
}

/// Listen backlog of the target: a connect storm must not overflow the accept queue (tokio's
/// default of 1024 does at 2000 simultaneous connects, costing a 1 s SYN retransmit).
pub const LISTEN_BACKLOG: u32 = 16 * 1024;

/// Binds the target's listener with a backlog fit for connect storms.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves the target on `listener` until `shutdown` is cancelled; open WebSockets get a close
/// frame (1001, going away) first.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    serve_with(listener, TargetOptions::default(), shutdown).await
}

/// [`serve`] with options.
pub async fn serve_with(
    listener: TcpListener,
    options: TargetOptions,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(Shared {
        metrics: TargetMetrics::new(),
        faults: FaultSwitch::default(),
        rooms: im::Rooms::default(),
        options,
        close_all: Mutex::new(shutdown.child_token()),
    });
    let closing = Arc::clone(&state);
    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        closing.close_token().cancel();
    });
    if let Some(addr) = state.options.tcp {
        tokio::spawn(serve_tcp(bind(addr)?, Arc::clone(&state), shutdown.clone()));
    }
    if state.options.lean {
        if let Some(addr) = state.options.admin_listen {
            let admin = axum::serve(bind(addr)?, router(Arc::clone(&state)))
                .with_graceful_shutdown(shutdown.clone().cancelled_owned());
            tokio::spawn(async move {
                if let Err(err) = admin.await {
                    tracing::error!(%err, "the target's admin listener failed");
                }
            });
        }
        lean::serve(listener, state, shutdown).await;
        return Ok(());
    }
    if let Some(config) = state.options.tls.clone() {
        let listener = tls::TlsListener {
            tcp: listener,
            acceptor: tokio_rustls::TlsAcceptor::from(config),
        };
        return axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    }
    // Nagle's algorithm would hold small frames back for up to 40 ms (with delayed ACKs).
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(%err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The IM protocol over length-prefixed TCP (or TLS), until `shutdown`.
async fn serve_tcp(listener: TcpListener, state: TargetState, shutdown: CancellationToken) {
    accept_each(listener, state, shutdown, |tcp, state, close| async move {
        match state.options.tls.clone() {
            // TLS too when the target serves wss://: a `tls://` target.
            Some(config) => match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                Ok(tls) => im::serve_connection(im::framed(tls), state, close).await,
                Err(err) => tracing::debug!(%err, "TLS handshake failed"),
            },
            None => im::serve_connection(im::framed(tcp), state, close).await,
        }
    })
    .await;
}

/// Accepts connections on `listener` until `shutdown`, each served by its own task with the
/// close-all token current when it came (no Nagle: answers are small and timed).
async fn accept_each<F, Serve>(
    listener: TcpListener,
    state: TargetState,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, TargetState, CancellationToken) -> Serve,
    Serve: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                let close = state.close_token();
                tokio::spawn(serve(tcp, Arc::clone(&state), close));
            }
            Err(err) => {
                tracing::warn!(%err, "accepting a TCP connection failed");
                // Out of descriptors, say: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn metrics(State(state): State<TargetState>) -> impl IntoResponse {
    (
        [("content-type", prometheus::TEXT_FORMAT)],
        state.metrics.encode(),
    )
}

async fn upgrade(State(state): State<TargetState>, ws: WebSocketUpgrade) -> Response {
    if let Some((status, retry_after)) = state.faults.refusing() {
        state.metrics.refused.inc();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut response = (status, "refusing connections (fault injection)\n").into_response();
        if let Some(wait) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(wait.as_secs()),
            );
        }
        return response;
    }
    let close = state.close_token();
    // Small buffers, like the fleet's: the target must hold as many connections as we send.
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| im::serve_connection(socket, state, close))
}

fn admin_error(message: String) -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

async fn get_faults(State(state): State<TargetState>) -> Json<Faults> {
    Json(state.faults.get())
}

async fn patch_faults(
    State(state): State<TargetState>,
    patch: Result<Json<FaultsPatch>, JsonRejection>,
) -> Response {
    let patch = match patch {
        Ok(Json(patch)) => patch,
        Err(rejection) => return admin_error(rejection.body_text()),
    };
    match state.faults.apply(&patch) {
        Ok(faults) => {
            tracing::info!(?faults, "target faults changed");
            Json(faults).into_response()
        }
        Err(message) => admin_error(message),
    }
}

/// Every room ever joined: its members now and what it carried.
async fn rooms(State(state): State<TargetState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "rooms": state.rooms.report() }))
}

async fn close_all(State(state): State<TargetState>) -> Json<serde_json::Value> {
    let mut token = state.close_all.lock().unwrap_or_else(|e| e.into_inner());
    token.cancel();
    *token = CancellationToken::new();
    let open = state.metrics.connections.get();
    tracing::info!(open, "closing every connection (admin)");
    Json(serde_json::json!({ "closing": open }))
}
