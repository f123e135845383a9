//! k6's REST dialect (`GET|PATCH /v1/status`), so scripts and the k6 CLI (`k6 status`,
//! `k6 scale --vus N`, `k6 pause`, `k6 resume --address HOST:PORT`) steer wsfleet unchanged:
//! `vus` maps to users, `paused` to pause, `vus-max` to the user cap.
//!
//! The k6 CLI sends its PATCH with no content type, so the body is parsed here, not by the
//! `Json` extractor.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiState, Caller, ErrorBody};
use crate::fleet::Origin;
use crate::load::{LoadPatch, MAX_USERS};
use crate::metrics::Source;

/// k6's JSON:API envelope.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct K6Envelope {
    pub data: K6Data,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct K6Data {
    #[serde(rename = "type", default = "status_type")]
    pub kind: String,
    #[serde(default = "default_id")]
    pub id: String,
    pub attributes: K6Status,
}

/// k6's status attributes; in a PATCH, `null` (or absent) leaves a field unchanged.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct K6Status {
    /// k6's execution status code; 7 is "running". Ignored in a PATCH.
    #[serde(default)]
    pub status: Option<i64>,
    #[serde(default)]
    pub paused: Option<bool>,
    #[serde(default)]
    pub vus: Option<i64>,
    #[serde(rename = "vus-max", default)]
    pub vus_max: Option<i64>,
    #[serde(default)]
    pub stopped: Option<bool>,
    #[serde(default)]
    pub running: Option<bool>,
    #[serde(default)]
    pub tainted: Option<bool>,
}

fn status_type() -> String {
    "status".into()
}
fn default_id() -> String {
    "default".into()
}

/// k6's execution status "running".
const K6_RUNNING: i64 = 7;

fn current(state: &ApiState) -> K6Envelope {
    let desired = state.fleet.desired();
    K6Envelope {
        data: K6Data {
            kind: status_type(),
            id: default_id(),
            attributes: K6Status {
                status: Some(K6_RUNNING),
                paused: Some(desired.paused),
                vus: Some(i64::from(desired.load.total_users())),
                vus_max: Some(vus_max(state)),
                stopped: Some(false),
                running: Some(true),
                tainted: Some(false),
            },
        },
    }
}

fn vus_max(state: &ApiState) -> i64 {
    i64::from(state.fleet.limits().max_users.unwrap_or(MAX_USERS))
}

#[utoipa::path(get, path = "/v1/status", tag = "k6",
    responses((status = 200, body = K6Envelope), (status = 401, body = ErrorBody)))]
pub async fn get_status(State(state): State<ApiState>) -> Json<K6Envelope> {
    Json(current(&state))
}

#[utoipa::path(patch, path = "/v1/status", tag = "k6", request_body = K6Envelope,
    responses((status = 200, body = K6Envelope), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 422, description = "vus out of range or over the cap; vus-max or stopped changed", body = ErrorBody)))]
pub async fn patch_status(
    State(state): State<ApiState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<K6Envelope>, ApiError> {
    let envelope: K6Envelope = serde_json::from_slice(&body).map_err(|err| {
        let status = if err.is_data() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(
            status,
            format!("expected k6's status document {{\"data\":{{\"attributes\":{{...}}}}}}: {err}"),
        )
    })?;
    let wanted = envelope.data.attributes;
    if wanted.stopped == Some(true) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "stopping wsfleet through the k6 API is not supported; send SIGTERM",
        )
        .field("stopped"));
    }
    if let Some(max) = wanted.vus_max
        && max != vus_max(&state)
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "vus-max is fixed at {} by limits.max_users in wsfleet's config",
                vus_max(&state)
            ),
        )
        .field("vus-max"));
    }
    // Check everything before changing anything: a rejected request changes nothing.
    let users = match wanted.vus {
        Some(vus) => Some(u32::try_from(vus).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("vus must be between 0 and {MAX_USERS}, got {vus}"),
            )
            .field("vus")
        })?),
        None => None,
    };
    let origin = Origin::new(Source::K6, caller.0.0);
    if let Some(users) = users {
        let patch = LoadPatch {
            users: Some(users),
            ..LoadPatch::default()
        };
        state
            .fleet
            .update(patch, origin.clone())
            .await
            .map_err(|err| {
                let api: ApiError = err.into();
                api.field("vus")
            })?;
    }
    if let Some(paused) = wanted.paused {
        state.fleet.set_paused(paused, origin).await?;
    }
    Ok(Json(current(&state)))
}
