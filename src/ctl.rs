//! `wsfleet ctl`: a small client of the control API, for people (`--json` for scripts).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::cli::{CtlAction, CtlArgs};

/// Why a `ctl` call failed; the exit code tells usage mistakes from failed calls.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

/// Runs one `ctl` action and returns what to print.
pub async fn run(args: &CtlArgs) -> Result<String, CtlError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|err| CtlError::Failed(format!("cannot build an HTTP client: {err}")))?;
    let url = |path: &str| {
        args.endpoint
            .join(path)
            .map_err(|err| CtlError::Usage(format!("--endpoint {}: {err}", args.endpoint)))
    };
    let request = match &args.action {
        CtlAction::Status => client.get(url("/api/v1/status")?),
        CtlAction::Set { changes } => client
            .patch(url("/api/v1/load")?)
            .json(&parse_changes(changes)?),
        CtlAction::Pause => client.post(url("/api/v1/pause")?),
        CtlAction::Resume => client.post(url("/api/v1/resume")?),
        CtlAction::Profile { file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|err| CtlError::Usage(format!("cannot read {}: {err}", file.display())))?;
            let profile: Value = serde_norway::from_str(&text).map_err(|err| {
                CtlError::Usage(format!("{}: not YAML or JSON: {err}", file.display()))
            })?;
            client.put(url("/api/v1/profile")?).json(&profile)
        }
        CtlAction::Reload => client.post(url("/api/v1/reload")?),
    };
    let request = match &args.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|err| CtlError::Failed(format!("cannot reach {}: {err}", args.endpoint)))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|err| CtlError::Failed(format!("{status}: unreadable answer: {err}")))?;
    if !status.is_success() {
        let message = body["error"].as_str().unwrap_or("no message");
        return Err(CtlError::Failed(format!("{status}: {message}")));
    }
    if args.json {
        return Ok(format!("{body:#}"));
    }
    Ok(match &args.action {
        CtlAction::Status => describe_status(&body),
        CtlAction::Pause | CtlAction::Resume => format!("paused: {}", body["paused"]),
        CtlAction::Profile { .. } => format!(
            "profile {}: stage {} of {}, {:.0} s in total",
            body["state"].as_str().unwrap_or("?"),
            body["stage"],
            body["stages"],
            body["total_seconds"].as_f64().unwrap_or(0.0)
        ),
        CtlAction::Set { .. } | CtlAction::Reload => {
            let mut out = describe_load(&body);
            if body.get("profile_cancelled").is_some() {
                out.push_str("\n(the running profile was cancelled)");
            }
            out
        }
    })
}

/// `users=5000 message_interval=1s` -> `{"users": 5000, "message_interval": "1s"}`; numbers
/// stay numbers, the server names any field or value it rejects.
fn parse_changes(changes: &[String]) -> Result<Value, CtlError> {
    let mut patch = Map::new();
    for change in changes {
        let (field, value) = change.split_once('=').ok_or_else(|| {
            CtlError::Usage(format!("`{change}`: expected FIELD=VALUE, e.g. users=5000"))
        })?;
        let value = match value.parse::<serde_json::Number>() {
            Ok(number) => Value::Number(number),
            Err(_) => Value::String(value.to_string()),
        };
        patch.insert(field.trim().to_string(), value);
    }
    Ok(Value::Object(patch))
}

fn describe_load(load: &Value) -> String {
    format!(
        "users {}  connect_rate {}/s  message_interval {}  payload_size {}  heartbeat_interval {}  room_size {}",
        load["users"],
        load["connect_rate"],
        load["message_interval"],
        load["payload_size"],
        load["heartbeat_interval"],
        load["room_size"]
    )
}

fn describe_status(s: &Value) -> String {
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("-".to_string(), |s| format!("{:.1} ms", s * 1000.0))
    };
    let profile = match s["profile"]["state"].as_str() {
        Some("running") => format!(
            "stage {} of {}",
            s["profile"]["stage"], s["profile"]["stages"]
        ),
        Some(state) => state.to_string(),
        None => "none".into(),
    };
    format!(
        "target       {}\nusers        {} active of {} desired{}\nload         {}\nprofile      {profile}\nconnects     {} (failed {})\nmessages     sent {}  received {}  lost {}  duplicated {}\nrtt          p50 {}  p99 {}\ndelivery     p50 {}  p99 {}",
        s["target"].as_str().unwrap_or("?"),
        s["users"]["active"],
        s["users"]["desired"],
        if s["paused"] == true { " (PAUSED)" } else { "" },
        describe_load(&s["load"]),
        s["connects"]["total"],
        s["connects"]["total"].as_u64().unwrap_or(0)
            - s["connects"]["by_reason"]["ok"].as_u64().unwrap_or(0),
        s["messages"]["sent"],
        s["messages"]["received"],
        s["messages"]["lost"],
        s["messages"]["duplicated"],
        ms(&s["latency"]["message_rtt"]["p50"]),
        ms(&s["latency"]["message_rtt"]["p99"]),
        ms(&s["latency"]["delivery"]["p50"]),
        ms(&s["latency"]["delivery"]["p99"]),
    )
}
