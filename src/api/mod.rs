//! The HTTP control API and `/metrics`: a router built from state, so tests can drive it
//! without a socket and `daemon` can serve it.
//!
//! Caller mistakes become 4xx JSON bodies that name the field; they are not logged as errors.
//! With a bearer token configured, every `/api` and `/v1` call must carry it.

mod control;
mod debug;
mod guard;
mod k6;
pub mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json};
use serde::Serialize;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use url::Url;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::fleet::{FleetError, FleetHandle};
use crate::metrics::Metrics;
use crate::reload::ReloadError;
use crate::sla::Slas;

pub use control::Status;
pub use guard::Allowed;
pub use serve::{MAX_CONNECTIONS, serve};

/// Largest request body accepted: load patches and profiles are a few kilobytes.
pub const BODY_LIMIT: usize = 64 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const PROFILE_TIMEOUT: Duration = Duration::from_secs(debug::MAX_PROFILE_SECONDS + 10);

fn timeout(limit: Duration) -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limit)
}

/// What the handlers need.
#[derive(Clone)]
pub struct ApiState {
    pub fleet: FleetHandle,
    pub metrics: Arc<Metrics>,
    /// The last failures, shown by the status.
    pub failures: Arc<crate::failures::Failures>,
    /// The run's history, for the live page and the report.
    pub history: Arc<crate::history::History>,
    pub target: Url,
    pub started: Instant,
    /// The SLA in force: the one copy, which a reload replaces ([`crate::reload`]).
    pub sla: tokio::sync::watch::Receiver<Slas>,
    /// The generator's view of its own health.
    pub health: Arc<std::sync::Mutex<crate::health::Health>>,
    /// Bearer token guarding `/api` and `/v1`; `None` leaves them open.
    pub token: Option<Arc<str>>,
    /// Re-reads the config file; present when the daemon was started with one.
    pub reload: Option<Arc<crate::reload::Reloader>>,
    /// The effective config, secrets masked, for reports.
    pub config: Arc<serde_json::Value>,
    /// What the run is and what runs it, for reports.
    pub provenance: Arc<crate::provenance::Provenance>,
    /// Capacity searches started through the API.
    pub searches: Arc<crate::capacity::Searches>,
    /// Host names and origins accepted besides the daemon's own ([`guard`]).
    pub allowed: Allowed,
}

/// The API: each endpoint listed once, in [`endpoints`]; its OpenAPI document is made from
/// the same list (so the two cannot drift) and served at `/api/v1/openapi.json`.
pub fn router(state: ApiState) -> Router {
    let (guarded, document) = endpoints().split_for_parts();
    let document = axum::body::Bytes::from(
        serde_json::to_vec(&document).expect("the OpenAPI document serializes"),
    );
    let guarded = guarded
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let json = (
                    [(header::CONTENT_TYPE, "application/json")],
                    document.clone(),
                );
                std::future::ready(json)
            }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let guarding = middleware::from_fn_with_state(state.clone(), guard::guard);
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route_layer(timeout(REQUEST_TIMEOUT))
        .merge(guarded)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
        .layer(middleware::from_fn(identify))
        .layer(guarding)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TraceLayer::new_for_http())
}

/// Every documented endpoint (behind the token when one is set): adding one is one line here
/// and its handler. Handlers of one path are listed together.
fn endpoints() -> OpenApiRouter<ApiState> {
    let (schemas, paths, profile) = routes!(debug::profile);
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(control::status))
        .routes(routes!(control::histograms))
        .routes(routes!(control::get_load, control::patch_load))
        .routes(routes!(control::pause))
        .routes(routes!(control::disrupt))
        .routes(routes!(control::resume))
        .routes(routes!(
            control::get_profile,
            control::put_profile,
            control::delete_profile
        ))
        .routes(routes!(control::reload))
        .routes(routes!(control::history))
        .routes(routes!(control::get_capacity, control::delete_capacity))
        .routes(routes!(control::report))
        .routes(routes!(k6::get_status, k6::patch_status))
        .routes(routes!(debug::heap))
        .route_layer(timeout(REQUEST_TIMEOUT))
        // A profile takes as long as it was asked to: its own, longer bound.
        .routes((schemas, paths, profile.layer(timeout(PROFILE_TIMEOUT))))
}

/// Who made a request, for the change log: peer address and user agent.
#[derive(Debug, Clone)]
pub struct Who(pub String);

async fn identify(mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "local".to_string(), |c| c.0.to_string());
    let agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let who = Who(format!("{peer} ({agent})"));
    request.extensions_mut().insert(who);
    next.run(request).await
}

async fn authorize(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    if crate::bearer::presented(request.headers(), token) {
        next.run(request).await
    } else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("static header"),
        );
        response
    }
}

/// An error as the API returns it: `{"error": "...", "field": "..."}` with a 4xx/5xx status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, for a person to act on.
    error: String,
    /// The field at fault, when there is one.
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

impl From<FleetError> for ApiError {
    fn from(err: FleetError) -> Self {
        match err {
            FleetError::Invalid(err) => {
                let field = err.field.clone();
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, err.to_string()).field(field)
            }
            FleetError::Draining => ApiError::new(StatusCode::CONFLICT, err.to_string()),
            FleetError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
            }
        }
    }
}

impl From<ReloadError> for ApiError {
    fn from(err: ReloadError) -> Self {
        match err {
            ReloadError::Fleet(err) => err.into(),
            ReloadError::Config(err) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, err.to_string())
            }
            ReloadError::Slow => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string()),
        }
    }
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [("content-type", prometheus::TEXT_FORMAT)],
        state.metrics.encode(),
    )
}

/// The OpenAPI document's frame; its paths come from [`endpoints`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "wsfleet control API",
        description = "Steer a running wsfleet: load, pause, profiles, reload; plus k6's /v1/status dialect."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []), ())
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The live page: static, self-contained; its calls to the API carry the token.
async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(crate::report::PAGE)
}

/// Handlers take the caller's identity for the change log.
pub(crate) type Caller = Extension<Who>;
