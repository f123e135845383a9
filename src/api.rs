//! The HTTP control API and `/metrics`: a router built from state, so tests can drive it
//! without a socket and `daemon` can serve it.
//!
//! Caller mistakes become 4xx JSON bodies that name the field; they are not logged as errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use url::Url;

use crate::fleet::{FleetHandle, UpdateError};
use crate::load::{Load, LoadPatch};
use crate::metrics::{ConnectResult, DisconnectReason, Metrics, Quantiles};

/// Largest request body accepted: load patches are a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers need.
#[derive(Clone)]
pub struct ApiState {
    pub fleet: FleetHandle,
    pub metrics: Arc<Metrics>,
    pub target: Url,
    pub started: Instant,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/status", get(status))
        .route("/api/v1/load", get(get_load).patch(patch_load))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
}

/// An error as the API returns it: `{"error": "...", "field": "..."}` with a 4xx/5xx status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: message.into(),
                field: None,
            },
        }
    }

    fn field(mut self, field: impl Into<String>) -> Self {
        self.body.field = Some(field.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // axum's messages already carry serde's path ("users: invalid type ..."); keep its
        // status (400 syntax, 415 content type, 413 too large, 422 wrong data).
        ApiError::new(rejection.status(), rejection.body_text())
    }
}

impl From<UpdateError> for ApiError {
    fn from(err: UpdateError) -> Self {
        match err {
            UpdateError::Invalid(err) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, err.to_string()).field(err.field)
            }
            UpdateError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
            }
        }
    }
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [("content-type", prometheus::TEXT_FORMAT)],
        state.metrics.encode(),
    )
}

async fn get_load(State(state): State<ApiState>) -> Json<Load> {
    Json(state.fleet.load())
}

async fn patch_load(
    State(state): State<ApiState>,
    patch: Result<Json<LoadPatch>, JsonRejection>,
) -> Result<Json<Load>, ApiError> {
    let Json(patch) = patch?;
    Ok(Json(state.fleet.update(patch).await?))
}

/// `GET /api/v1/status`: desired against reached, totals, and recent latency quantiles.
#[derive(Debug, Serialize)]
pub struct Status {
    pub target: String,
    pub uptime_seconds: f64,
    pub users: UsersStatus,
    pub load: Load,
    pub connects: Totals,
    pub disconnects: Totals,
    pub messages: MessageStatus,
    /// Quantiles (seconds) of the last complete `status_window`.
    pub latency: LatencyStatus,
}

#[derive(Debug, Serialize)]
pub struct UsersStatus {
    pub desired: u32,
    pub active: i64,
}

#[derive(Debug, Serialize)]
pub struct Totals {
    pub total: u64,
    pub by_reason: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub struct MessageStatus {
    pub sent: u64,
    pub received: u64,
    pub ack_timeouts: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub deliveries_expected: u64,
    pub deliveries_received: u64,
    pub frames_invalid: u64,
    pub frames_unmatched: u64,
}

#[derive(Debug, Serialize)]
pub struct LatencyStatus {
    pub message_rtt: Quantiles,
    pub delivery: Quantiles,
    pub connect: Quantiles,
}

async fn status(State(state): State<ApiState>) -> Json<Status> {
    let m = &state.metrics;
    let load = state.fleet.load();
    let totals = |pairs: Vec<(&'static str, u64)>| Totals {
        total: pairs.iter().map(|(_, n)| n).sum(),
        by_reason: pairs.into_iter().collect(),
    };
    Json(Status {
        target: state.target.to_string(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        users: UsersStatus {
            desired: load.users,
            active: m.users_active.get(),
        },
        connects: totals(
            ConnectResult::ALL
                .iter()
                .map(|&r| (r.as_str(), m.connect_result(r).get()))
                .collect(),
        ),
        disconnects: totals(
            DisconnectReason::ALL
                .iter()
                .map(|&r| (r.as_str(), m.disconnect(r).get()))
                .collect(),
        ),
        messages: MessageStatus {
            sent: m.messages_sent.get(),
            received: m.messages_received.get(),
            ack_timeouts: m.message_timeouts.get(),
            lost: m.messages_lost.get(),
            duplicated: m.messages_duplicated.get(),
            reordered: m.messages_reordered.get(),
            deliveries_expected: m.deliveries_expected.get(),
            deliveries_received: m.deliveries_received.get(),
            frames_invalid: m.frames_invalid.get(),
            frames_unmatched: m.frames_unmatched.get(),
        },
        latency: LatencyStatus {
            message_rtt: m.rtt_window.quantiles(),
            delivery: m.delivery_window.quantiles(),
            connect: m.connect_window.quantiles(),
        },
        load,
    })
}
