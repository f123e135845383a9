//! wsfleet's own control endpoints under `/api/v1`: status, load, pause, profiles, reload.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ApiState, Caller, ErrorBody};
use crate::failures::Sample;
use crate::fleet::Origin;
use crate::groups::LoadView;
use crate::load::{Limits, LoadPatch};
use crate::metrics::{ConnectResult, DisconnectReason, MessageCounts, Quantiles, Source};
use crate::profile::{ProfileSpec, ProfileStatus};
use crate::shard::Shard;

/// `GET /api/v1/status`: desired against reached, totals, and recent latency quantiles.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub target: String,
    pub uptime_seconds: f64,
    pub paused: bool,
    /// This instance's part of the fleet (index 0 of 1 when not sharded).
    pub shard: Shard,
    /// Whether the generator itself is healthy enough for its numbers to be trusted.
    pub generator: crate::health::Health,
    pub users: UsersStatus,
    /// The desired load.
    pub load: LoadView,
    /// What is actually reached.
    pub reached: Reached,
    pub limits: Limits,
    /// The running load profile, or the last one that ended.
    pub profile: Option<ProfileStatus>,
    /// The link in force for each shaped group (`network:`), as a person reads it (`3g`,
    /// `50ms±10ms, down 1mbit`, `none`); empty when no group is shaped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub network: BTreeMap<String, String>,
    /// SLA thresholds by SLO name (seconds or ratios).
    pub sla: BTreeMap<String, f64>,
    /// Every SLO judged now: latencies on the last complete `status_window`, rates since
    /// start, the connected ratio now — by the fleet's SLA, or each group's by its own.
    #[serde(default)]
    pub slos: Vec<crate::sla::SloResult>,
    pub connects: Totals,
    pub disconnects: Totals,
    /// The last sample of each kind of failure (`connect.http_status`,
    /// `disconnect.server_close`, ...): what exactly happened, and when.
    pub errors: BTreeMap<String, Sample>,
    pub messages: MessageCounts,
    /// Quantiles (seconds) of the last complete `status_window`.
    pub latency: LatencyStatus,
    /// Each group's part, in a fleet of several groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupStatus>,
}

/// One group's part of the status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GroupStatus {
    pub name: String,
    /// This instance's share of the group's desired users, and those connected.
    pub desired: u32,
    pub active: i64,
    /// Messages per second this group should send here (0 while paused).
    pub message_rate_target: f64,
    /// The group's SLA thresholds by SLO name.
    pub sla: BTreeMap<String, f64>,
    pub messages: MessageCounts,
    pub latency: LatencyStatus,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsersStatus {
    /// This instance's share of the fleet-wide desired users.
    pub desired: u32,
    /// Users the whole fleet (every shard) should hold.
    pub fleet_desired: u32,
    pub active: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Reached {
    /// Connected users divided by desired users (1 when none are desired).
    pub connected_ratio: f64,
    /// Messages per second desired (users / message_interval; 0 while paused).
    pub message_rate_target: f64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LatencyStatus {
    pub message_rtt: Quantiles,
    pub delivery: Quantiles,
    pub connect: Quantiles,
}

#[utoipa::path(get, path = "/api/v1/status", tag = "status",
    responses((status = 200, body = Status), (status = 401, body = ErrorBody)))]
pub async fn status(State(state): State<ApiState>) -> Result<Json<Status>, ApiError> {
    let m = &state.metrics;
    let desired = state.fleet.desired();
    let desired_by_group = state.fleet.local_users_by_group();
    let share: u32 = desired_by_group.iter().sum();
    let load = desired.load;
    let active = m.users_active.get();
    let generator = state
        .health
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let profile = state.fleet.profile().await?;
    let totals = |pairs: Vec<(&'static str, u64)>| Totals {
        total: pairs.iter().map(|(_, n)| n).sum(),
        by_reason: pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    };
    Ok(Json(Status {
        target: crate::failures::redact(state.target.as_str()).into_owned(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        paused: desired.paused,
        shard: state.fleet.shard(),
        generator,
        users: UsersStatus {
            desired: share,
            fleet_desired: load.total_users(),
            active,
        },
        reached: Reached {
            connected_ratio: if share == 0 {
                1.0
            } else {
                active as f64 / f64::from(share)
            },
            message_rate_target: m.message_rate_target.get(),
        },
        limits: state.fleet.limits().clone(),
        profile,
        network: links_in_force(&load),
        sla: state.sla.borrow().fleet.by_label(),
        slos: judged_now(&state, &desired_by_group),
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
        errors: state.failures.samples(),
        messages: m.message_counts(),
        latency: LatencyStatus {
            message_rtt: m.rtt_window.quantiles(),
            delivery: m.delivery_window.quantiles(),
            connect: m.connect_window.quantiles(),
        },
        groups: group_statuses(&state, &desired_by_group),
        load: LoadView::from(&load),
    }))
}

/// The SLOs as they stand now ([`Status::slos`]).
fn judged_now(state: &ApiState, desired: &[u32]) -> Vec<crate::sla::SloResult> {
    let m = &state.metrics;
    let ratio = |active: i64, desired: u32| {
        if desired == 0 {
            1.0
        } else {
            active as f64 / f64::from(desired)
        }
    };
    let slas = state.sla.borrow();
    if slas.groups.is_empty() {
        let connected = ratio(m.users_active.get(), desired.iter().sum());
        return slas.fleet.judge(&m.observed_now(None, connected));
    }
    slas.groups
        .iter()
        .enumerate()
        .flat_map(|(g, (name, sla))| {
            let connected = ratio(
                m.users_active.of(g).get(),
                desired.get(g).copied().unwrap_or(0),
            );
            sla.judge_group(Some(name), &m.observed_now(Some(g), connected))
        })
        .collect()
}

/// The link of each shaped group, by group name.
fn links_in_force(load: &crate::groups::FleetLoad) -> BTreeMap<String, String> {
    load.groups
        .iter()
        .zip(load.loads())
        .filter(|(group, _)| group.shaped)
        .map(|(group, effective)| (group.name.clone(), effective.network.to_string()))
        .collect()
}

/// Each group's status, in a fleet of several groups.
fn group_statuses(state: &ApiState, desired: &[u32]) -> Vec<GroupStatus> {
    let m = &state.metrics;
    let slas = state.sla.borrow();
    slas.groups
        .iter()
        .enumerate()
        .map(|(g, (name, sla))| GroupStatus {
            name: name.clone(),
            desired: desired.get(g).copied().unwrap_or(0),
            active: m.users_active.of(g).get(),
            message_rate_target: m.message_rate_target.of(g).get(),
            sla: sla.by_label(),
            messages: m.message_counts_in(Some(g)),
            latency: LatencyStatus {
                message_rtt: m.rtt_window.of(g).quantiles(),
                delivery: m.delivery_window.of(g).quantiles(),
                connect: m.connect_window.of(g).quantiles(),
            },
        })
        .collect()
}

#[utoipa::path(get, path = "/api/v1/load", tag = "load",
    responses((status = 200, body = LoadView), (status = 401, body = ErrorBody)))]
pub async fn get_load(State(state): State<ApiState>) -> Json<LoadView> {
    Json(LoadView::from(&state.fleet.desired().load))
}

/// The load after a change, and the profile the change cancelled, if any.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoadChange {
    #[serde(flatten)]
    pub load: LoadView,
    /// Set when a running profile was cancelled by this change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_cancelled: Option<ProfileStatus>,
}

#[utoipa::path(patch, path = "/api/v1/load", tag = "load", request_body = LoadPatch,
    responses(
        (status = 200, description = "applied; a running profile is cancelled", body = LoadChange),
        (status = 400, description = "malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 415, description = "not application/json", body = ErrorBody),
        (status = 422, description = "unknown field, wrong type, out of range or over a cap", body = ErrorBody)))]
pub async fn patch_load(
    State(state): State<ApiState>,
    caller: Caller,
    patch: Result<Json<LoadPatch>, JsonRejection>,
) -> Result<Json<LoadChange>, ApiError> {
    let Json(patch) = patch?;
    let updated = state
        .fleet
        .update(patch, Origin::new(Source::Api, caller.0.0))
        .await?;
    Ok(Json(LoadChange {
        load: LoadView::from(&updated.load),
        profile_cancelled: updated.profile_cancelled,
    }))
}

/// `POST /api/v1/disrupt`: a sync storm — a share of the connected users drop at once, as
/// phones in a tunnel do, and come back within a window.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisruptRequest {
    /// The share of the connected users that drop: a fraction (`0.3`) or a percentage
    /// (`"30%"`).
    #[schema(value_type = Object)]
    pub share: serde_json::Value,
    /// Each is back after a time drawn uniformly from zero to this (`"10s"`; default `0s`:
    /// at once). Coming back goes through the connect pacer, like every connect.
    #[serde(default)]
    pub back_within: Option<String>,
    /// Only this group's users (default: every group).
    #[serde(default)]
    pub group: Option<String>,
}

/// The storm started: its number and what it asked.
#[derive(Debug, Serialize, ToSchema)]
pub struct DisruptAnswer {
    pub storm: u32,
    pub share: f64,
    pub back_within: String,
    /// Connected users now (of the group, or the fleet): about `share` of them drop.
    pub connected: i64,
}

/// Starts a sync storm.
#[utoipa::path(post, path = "/api/v1/disrupt", tag = "load", request_body = DisruptRequest,
    responses(
        (status = 200, body = DisruptAnswer),
        (status = 401, body = ErrorBody),
        (status = 409, description = "draining", body = ErrorBody),
        (status = 422, description = "share, window or group wrong", body = ErrorBody)))]
pub async fn disrupt(
    State(state): State<ApiState>,
    caller: Caller,
    request: Result<Json<DisruptRequest>, JsonRejection>,
) -> Result<Json<DisruptAnswer>, ApiError> {
    let Json(request) = request?;
    let invalid = |field: &str, problem: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("`{field}` {problem}"),
        )
        .field(field.to_string())
    };
    let share = match &request.share {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(text) => text
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<f64>().ok())
            .map(|p| p / 100.0),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(
            "share",
            format!(
                "must be a fraction (0.3) or a percentage (\"30%\"), got {}",
                request.share
            ),
        )
    })?;
    let back_within = match &request.back_within {
        Some(text) => humantime::parse_duration(text).map_err(|err| {
            invalid(
                "back_within",
                format!("must be a duration (\"10s\"): {err}"),
            )
        })?,
        None => std::time::Duration::ZERO,
    };
    let storm = crate::fleet::StormRequest {
        share,
        back_within,
        group: request.group.clone(),
    };
    let disruption = state
        .fleet
        .disrupt(storm, Origin::new(Source::Api, caller.0.0))
        .await?;
    let metrics = &state.metrics;
    let connected = match &request.group {
        Some(name) => metrics
            .groups()
            .iter()
            .position(|g| g == name)
            .map_or(0, |g| metrics.users_active.of(g).get()),
        None => metrics.users_active.iter().map(|g| g.get()).sum(),
    };
    Ok(Json(DisruptAnswer {
        storm: disruption.epoch,
        share: disruption.share,
        back_within: humantime::format_duration(disruption.back_within).to_string(),
        connected,
    }))
}

/// Whether the fleet is paused, and its load.
#[derive(Debug, Serialize, ToSchema)]
pub struct PauseState {
    pub paused: bool,
    pub load: LoadView,
}

async fn set_paused(
    state: ApiState,
    caller: Caller,
    paused: bool,
) -> Result<Json<PauseState>, ApiError> {
    let desired = state
        .fleet
        .set_paused(paused, Origin::new(Source::Api, caller.0.0))
        .await?;
    Ok(Json(PauseState {
        paused: desired.paused,
        load: LoadView::from(&desired.load),
    }))
}

/// Stops sending messages and making new connections; connected users stay connected and keep
/// their heartbeat.
#[utoipa::path(post, path = "/api/v1/pause", tag = "load",
    responses((status = 200, body = PauseState), (status = 401, body = ErrorBody)))]
pub async fn pause(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<PauseState>, ApiError> {
    set_paused(state, caller, true).await
}

#[utoipa::path(post, path = "/api/v1/resume", tag = "load",
    responses((status = 200, body = PauseState), (status = 401, body = ErrorBody)))]
pub async fn resume(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<PauseState>, ApiError> {
    set_paused(state, caller, false).await
}

#[utoipa::path(get, path = "/api/v1/profile", tag = "profile",
    responses((status = 200, description = "the running profile, or the last one that ended", body = ProfileStatus),
        (status = 401, body = ErrorBody), (status = 404, description = "no profile yet", body = ErrorBody)))]
pub async fn get_profile(State(state): State<ApiState>) -> Result<Json<ProfileStatus>, ApiError> {
    state
        .fleet
        .profile()
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no profile has been started"))
}

/// Starts following a profile: `{"stages": [{"users": 1000, "duration": "15m"}, ...]}` or
/// `{"ramp": {"from": 0, "to": 5000, "over": "10m"}}`. Replaces a running profile. With
/// `{"search": {...}}` (a `capacity:` section) it starts a capacity search instead, answered
/// with 202 and followed at `GET /api/v1/capacity`.
#[utoipa::path(put, path = "/api/v1/profile", tag = "profile", request_body = ProfileSpec,
    responses((status = 200, body = ProfileStatus), (status = 202, description = "a capacity search started", body = crate::capacity::Outcome),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, description = "a capacity search is already running", body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, description = "bad shape, a stage out of range or over a cap", body = ErrorBody)))]
pub async fn put_profile(
    State(state): State<ApiState>,
    caller: Caller,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Json(body) = body?;
    let invalid = |err: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, err);
    if let Some(search) = body.as_object().and_then(|o| o.get("search")) {
        let spec: crate::capacity::CapacitySpec = serde_path_to_error::deserialize(search)
            .map_err(|err| invalid(format!("search.{err}")))?;
        spec.validate(&state.sla.borrow().fleet).map_err(invalid)?;
        let outcome = state
            .searches
            .start(spec, &state.fleet, &state.metrics, &state.sla)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "a capacity search is already running; DELETE /api/v1/capacity cancels it",
                )
            })?;
        return Ok((StatusCode::ACCEPTED, Json(outcome)).into_response());
    }
    let spec: ProfileSpec =
        serde_path_to_error::deserialize(&body).map_err(|err| invalid(err.to_string()))?;
    let status = state
        .fleet
        .start_profile(spec, Origin::new(Source::Api, caller.0.0))
        .await?;
    Ok(Json(status).into_response())
}

#[utoipa::path(get, path = "/api/v1/capacity", tag = "profile",
    responses((status = 200, body = crate::capacity::Outcome, description = "the running (or last) capacity search"),
        (status = 401, body = ErrorBody), (status = 404, description = "no search has been started", body = ErrorBody)))]
pub async fn get_capacity(
    State(state): State<ApiState>,
) -> Result<Json<crate::capacity::Outcome>, ApiError> {
    state
        .searches
        .outcome()
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no capacity search has been started"))
}

#[utoipa::path(delete, path = "/api/v1/capacity", tag = "profile",
    responses((status = 200, body = crate::capacity::Outcome, description = "the search, cancelled"),
        (status = 401, body = ErrorBody), (status = 404, description = "no search is running", body = ErrorBody)))]
pub async fn delete_capacity(
    State(state): State<ApiState>,
) -> Result<Json<crate::capacity::Outcome>, ApiError> {
    state
        .searches
        .cancel()
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no capacity search is running"))
}

#[utoipa::path(delete, path = "/api/v1/profile", tag = "profile",
    responses((status = 200, description = "the cancelled profile", body = ProfileStatus),
        (status = 401, body = ErrorBody), (status = 404, description = "no profile is running", body = ErrorBody)))]
pub async fn delete_profile(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<ProfileStatus>, ApiError> {
    state
        .fleet
        .stop_profile(Origin::new(Source::Api, caller.0.0))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no profile is running"))
}

/// Re-reads the config file, as SIGHUP does: a valid file is applied like a PATCH.
#[utoipa::path(post, path = "/api/v1/reload", tag = "load",
    responses((status = 200, body = LoadView), (status = 401, body = ErrorBody),
        (status = 409, description = "started without a config file", body = ErrorBody),
        (status = 422, description = "the file is invalid; nothing changed", body = ErrorBody)))]
pub async fn reload(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<LoadView>, ApiError> {
    let Some(reload) = &state.reload else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wsfleet was started without a config file (-c); nothing to reload",
        ));
    };
    Ok(Json(LoadView::from(&reload.reload(&caller.0.0).await?)))
}

/// `GET /api/v1/histograms`: every latency sample since the start, encoded so that another
/// process (`wsfleet ctl --fleet status`) can merge the shards' samples into exact fleet-wide
/// quantiles.
#[derive(Debug, Serialize, ToSchema)]
pub struct Histograms {
    /// Message round trips, microseconds: HdrHistogram V2 encoding, base64.
    pub message_rtt: String,
    /// Room delivery latency, the same encoding.
    pub delivery: String,
    /// Handshakes, the same encoding.
    pub connect: String,
}

#[utoipa::path(get, path = "/api/v1/histograms", tag = "status",
    responses((status = 200, body = Histograms), (status = 401, body = ErrorBody)))]
pub async fn histograms(State(state): State<ApiState>) -> Json<Histograms> {
    let m = &state.metrics;
    Json(Histograms {
        message_rtt: m.rtt_window.total_encoded(),
        delivery: m.delivery_window.total_encoded(),
        connect: m.connect_window.total_encoded(),
    })
}

#[utoipa::path(get, path = "/api/v1/history", tag = "status",
    responses((status = 200, body = crate::history::Snapshot, description = "the last 15 minutes, one point a second, and the recent load changes"),
        (status = 401, body = ErrorBody)))]
pub async fn history(State(state): State<ApiState>) -> Json<crate::history::Snapshot> {
    Json(state.history.recent())
}

#[utoipa::path(get, path = "/api/v1/report", tag = "status",
    responses((status = 200, description = "the run so far as one self-contained HTML file", content_type = "text/html"),
        (status = 401, body = ErrorBody)))]
pub async fn report(
    State(state): State<ApiState>,
) -> Result<axum::response::Html<String>, ApiError> {
    let sla = state.sla.borrow().clone();
    let active: Vec<i64> = state.metrics.users_active.iter().map(|g| g.get()).collect();
    let mut summary = crate::summary::Summary::judge(
        &state.metrics,
        &state.fleet.local_users_by_group(),
        &sla,
        state.started.elapsed(),
        &active,
        Some(&state.history.trends()),
    );
    summary.capacity = state.searches.outcome();
    summary.provenance = Some((*state.provenance).clone().ended());
    let report = crate::report::Report::new(
        &summary,
        state.history.run(),
        state.fleet.profile().await?,
        &sla,
        &state.target,
        (*state.config).clone(),
    );
    Ok(axum::response::Html(report.render()))
}
