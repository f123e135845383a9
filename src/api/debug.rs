//! Profiles of the running daemon in pprof's protobuf format, which `go tool pprof` and
//! flamegraph tools read — the way users of the Go tools in this field find a generator's hot
//! spots. Both sit behind the API token when one is set.
//!
//! - `GET /debug/pprof/profile?seconds=N`: CPU, sampled at 99 Hz for N seconds (1–60, default
//!   10), one profile at a time.
//! - `GET /debug/pprof/heap`: the in-use heap, sampled by the allocator since start
//!   ([`crate::heap`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{ApiError, ErrorBody};

/// Longest profile one request may ask for.
pub const MAX_PROFILE_SECONDS: u64 = 60;
const DEFAULT_PROFILE_SECONDS: u64 = 10;
const SAMPLES_PER_SECOND: i32 = 99;

/// Only one profiler can run in a process.
static PROFILING: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProfileQuery {
    /// How long to sample, 1–60 (default 10).
    #[param(minimum = 1, maximum = 60)]
    seconds: Option<u64>,
}

#[utoipa::path(get, path = "/debug/pprof/profile", tag = "debug", params(ProfileQuery),
    responses((status = 200, description = "pprof protobuf", content_type = "application/octet-stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 409, description = "a profile is already being taken", body = ErrorBody),
        (status = 422, description = "seconds out of range", body = ErrorBody)))]
pub async fn profile(
    query: Result<Query<ProfileQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, err.body_text()))?;
    let seconds = query.seconds.unwrap_or(DEFAULT_PROFILE_SECONDS);
    if !(1..=MAX_PROFILE_SECONDS).contains(&seconds) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("seconds must be between 1 and {MAX_PROFILE_SECONDS}, got {seconds}"),
        )
        .field("seconds"));
    }
    let Some(profiling) = Profiling::start() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "a profile is already being taken; try again when it is done",
        ));
    };
    // The profiler is released when its thread is done, not when this handler is: a caller
    // that hangs up mid-profile drops the handler, never the thread.
    let taken = tokio::task::spawn_blocking(move || {
        let _profiling = profiling;
        take(Duration::from_secs(seconds))
    })
    .await;
    download("CPU", "wsfleet-cpu.pb", taken)
}

/// The one profiler of the process, held; released on drop, on every path.
struct Profiling;

impl Profiling {
    fn start() -> Option<Profiling> {
        // Not `then_some(Profiling)`: that would make (and drop, releasing the profiler) a
        // guard for the caller refused too.
        if PROFILING.swap(true, Ordering::AcqRel) {
            None
        } else {
            Some(Profiling)
        }
    }
}

impl Drop for Profiling {
    fn drop(&mut self) {
        PROFILING.store(false, Ordering::Release);
    }
}

#[utoipa::path(get, path = "/debug/pprof/heap", tag = "debug",
    responses((status = 200, description = "pprof protobuf, gzipped", content_type = "application/octet-stream"),
        (status = 401, body = ErrorBody),
        (status = 500, description = "the allocator could not dump its profile", body = ErrorBody)))]
pub async fn heap() -> Result<Response, ApiError> {
    download(
        "heap",
        "wsfleet-heap.pb.gz",
        tokio::task::spawn_blocking(crate::heap::profile).await,
    )
}

/// A finished profile as a file download, or the failure logged and answered with a 500.
fn download<E: std::fmt::Display>(
    kind: &str,
    file_name: &str,
    taken: Result<Result<Vec<u8>, E>, tokio::task::JoinError>,
) -> Result<Response, ApiError> {
    let failure = match taken {
        Ok(Ok(bytes)) => {
            let disposition = format!("attachment; filename=\"{file_name}\"");
            return Ok((
                [
                    (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (header::CONTENT_DISPOSITION, disposition),
                ],
                bytes,
            )
                .into_response());
        }
        Ok(Err(err)) => err.to_string(),
        Err(err) => format!("the profiler task failed: {err}"),
    };
    tracing::error!(err = %failure, "taking a {kind} profile failed");
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("taking a {kind} profile failed"),
    ))
}

/// Samples the whole process for `span` (on a blocking thread: the profiler is not `Send`).
fn take(span: Duration) -> Result<Vec<u8>, pprof::Error> {
    use pprof::protos::Message as _;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(SAMPLES_PER_SECOND)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()?;
    // The profile's length, not a wait for an event: samples are taken meanwhile.
    std::thread::sleep(span);
    let profile = guard.report().build()?.pprof()?;
    drop(guard);
    // Symbolising parsed the binary's debug information into a cache that would otherwise
    // stay for the life of the process (21 MB -> 357 MB RSS after one profile of a debug
    // build); the next profile parses it again.
    backtrace::clear_symbol_cache();
    Ok(profile.encode_to_vec())
}
