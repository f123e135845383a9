//! `wsfleet ctl`: a small client of the control API, for people (`--json` for scripts).

use std::time::Duration;

use serde_json::{Map, Value};

use url::Url;

use crate::api::Status;
use crate::cli::{CtlAction, CtlArgs};
use crate::profile::ProfileState;

/// Why a `ctl` call failed; the exit code tells usage mistakes from failed calls.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

/// Runs one `ctl` action (on one instance, or on every instance with `--fleet`) and returns
/// what to print.
pub async fn run(args: &CtlArgs) -> Result<String, CtlError> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(|err| CtlError::Failed(format!("cannot build an HTTP client: {err}")))?;
    let body = request_body(&args.action)?;
    let Some(fleet) = &args.fleet else {
        let answer = call(&client, args, &args.endpoint, body.as_ref()).await?;
        return Ok(describe(args, &answer));
    };
    let endpoints = resolve_fleet(fleet, &args.endpoint).await?;
    let body = match (&args.action, body) {
        (CtlAction::Profile { .. }, Some(spec)) => {
            Some(in_step(&client, args, &endpoints, spec).await)
        }
        (_, body) => body,
    };
    let answers = futures_util::future::join_all(
        endpoints
            .iter()
            .map(|endpoint| call(&client, args, endpoint, body.as_ref())),
    )
    .await;
    let failed = answers.iter().filter(|a| a.is_err()).count();
    let fleet_view = match &args.action {
        CtlAction::Status => Some(fleet_status(&client, args, &endpoints, &answers).await),
        _ => None,
    };
    let report = if args.json {
        let by_instance: Map<String, Value> = endpoints
            .iter()
            .zip(&answers)
            .map(|(endpoint, answer)| {
                let value = match answer {
                    Ok(body) => body.clone(),
                    Err(err) => serde_json::json!({"error": err.to_string()}),
                };
                (instance(endpoint), value)
            })
            .collect();
        let mut out = Map::new();
        out.insert("instances".into(), Value::Object(by_instance));
        if let Some(fleet) = &fleet_view {
            out.insert("fleet".into(), fleet.clone());
        }
        format!("{:#}", Value::Object(out))
    } else {
        let mut lines: Vec<String> = endpoints
            .iter()
            .zip(&answers)
            .map(|(endpoint, answer)| match answer {
                Ok(body) => format!(
                    "{}  ok      {}",
                    instance(endpoint),
                    describe_line(args, body)
                ),
                Err(err) => format!("{}  FAILED  {err}", instance(endpoint)),
            })
            .collect();
        if let Some(fleet) = &fleet_view {
            lines.push(describe_fleet(fleet));
        }
        lines.push(format!(
            "{} of {} instances {}",
            endpoints.len() - failed,
            endpoints.len(),
            if failed == 0 {
                "done".to_string()
            } else {
                "done; run the same command again to retry the others (it is idempotent)".into()
            }
        ));
        lines.join("\n")
    };
    if failed > 0 {
        return Err(CtlError::Failed(report));
    }
    Ok(report)
}

/// The JSON body of an action, if it has one.
fn request_body(action: &CtlAction) -> Result<Option<Value>, CtlError> {
    Ok(match action {
        CtlAction::Set { changes } => Some(parse_changes(changes)?),
        CtlAction::Profile { file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|err| CtlError::Usage(format!("cannot read {}: {err}", file.display())))?;
            let profile: Value = serde_norway::from_str(&text).map_err(|err| {
                CtlError::Usage(format!("{}: not YAML or JSON: {err}", file.display()))
            })?;
            Some(profile)
        }
        CtlAction::Status | CtlAction::Pause | CtlAction::Resume | CtlAction::Reload => None,
    })
}

/// The endpoint each action calls: the one table of the API `ctl` uses.
fn route(action: &CtlAction) -> (reqwest::Method, &'static str) {
    use reqwest::Method;
    match action {
        CtlAction::Status => (Method::GET, "/api/v1/status"),
        CtlAction::Set { .. } => (Method::PATCH, "/api/v1/load"),
        CtlAction::Pause => (Method::POST, "/api/v1/pause"),
        CtlAction::Resume => (Method::POST, "/api/v1/resume"),
        CtlAction::Profile { .. } => (Method::PUT, "/api/v1/profile"),
        CtlAction::Reload => (Method::POST, "/api/v1/reload"),
    }
}

/// An instance's status, typed: the API's own [`Status`], so a renamed field is a compile
/// error here, not a `null` on screen.
fn typed(body: &Value) -> Result<Status, String> {
    serde_json::from_value(body.clone())
        .map_err(|err| format!("unreadable status (another wsfleet version?): {err}"))
}

/// One call of the action to one instance; the answer's JSON, or what went wrong.
async fn call(
    client: &reqwest::Client,
    args: &CtlArgs,
    endpoint: &Url,
    body: Option<&Value>,
) -> Result<Value, CtlError> {
    let url = |path: &str| {
        endpoint
            .join(path)
            .map_err(|err| CtlError::Usage(format!("--endpoint {endpoint}: {err}")))
    };
    let (method, path) = route(&args.action);
    let request = client.request(method, url(path)?);
    let request = match body {
        Some(body) => request.json(body),
        None => request,
    };
    let request = match &args.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|err| CtlError::Failed(format!("cannot reach {endpoint}: {err}")))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|err| CtlError::Failed(format!("{status}: unreadable answer: {err}")))?;
    if !status.is_success() {
        let message = body["error"].as_str().unwrap_or("no message");
        return Err(CtlError::Failed(format!("{status}: {message}")));
    }
    Ok(body)
}

/// The fleet as a whole from every instance's status and its latency histograms: users
/// summed, and quantiles of the union of every shard's samples (exact, not averaged).
async fn fleet_status(
    client: &reqwest::Client,
    args: &CtlArgs,
    endpoints: &[Url],
    statuses: &[Result<Value, CtlError>],
) -> Value {
    let answering: Vec<Status> = statuses
        .iter()
        .flatten()
        .filter_map(|body| typed(body).ok())
        .collect();
    let sum = |users: fn(&Status) -> u64| -> u64 { answering.iter().map(users).sum() };
    let fleet_desired = answering
        .iter()
        .map(|s| s.users.fleet_desired)
        .max()
        .unwrap_or(0);
    let histograms = futures_util::future::join_all(endpoints.iter().map(|endpoint| async move {
        let url = endpoint.join("/api/v1/histograms").ok()?;
        let request = client.get(url);
        let request = match &args.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        request.send().await.ok()?.json::<Value>().await.ok()
    }))
    .await;
    let merged = |name: &str| {
        let encoded: Vec<&str> = histograms
            .iter()
            .flatten()
            .filter_map(|h| h[name].as_str())
            .collect();
        crate::metrics::merged_quantiles(encoded)
            .map_or(Value::Null, |q| serde_json::to_value(q).unwrap_or_default())
    };
    serde_json::json!({
        "instances_answering": answering.len(),
        "users": {
            "active": sum(|s| u64::try_from(s.users.active).unwrap_or(0)),
            "desired": sum(|s| u64::from(s.users.desired)),
            "fleet_desired": fleet_desired,
        },
        "latency_since_start": {"message_rtt": merged("message_rtt"), "delivery": merged("delivery"), "connect": merged("connect")},
        "groups": group_totals(&answering),
    })
}

/// Each group's users and messages summed over the instances (which split every group by its
/// rooms), in the order the first instance lists them; empty for a fleet of one group.
fn group_totals(answering: &[Status]) -> Value {
    let mut totals: Vec<(String, [u64; 4])> = Vec::new();
    for group in answering.iter().flat_map(|s| &s.groups) {
        let index = match totals.iter().position(|(name, _)| *name == group.name) {
            Some(index) => index,
            None => {
                totals.push((group.name.clone(), [0; 4]));
                totals.len() - 1
            }
        };
        let sums = &mut totals[index].1;
        let figures = [
            u64::try_from(group.active).unwrap_or(0),
            u64::from(group.desired),
            group.messages.sent,
            group.messages.lost,
        ];
        for (sum, figure) in sums.iter_mut().zip(figures) {
            *sum += figure;
        }
    }
    Value::Array(
        totals
            .into_iter()
            .map(|(name, [active, desired, sent, lost])| {
                serde_json::json!({"name": name, "active": active, "desired": desired, "sent": sent, "lost": lost})
            })
            .collect(),
    )
}

fn describe_fleet(fleet: &Value) -> String {
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("-".to_string(), |s| format!("{:.2} ms", s * 1000.0))
    };
    let latency = &fleet["latency_since_start"];
    format!(
        "fleet: users {} active of {} (shards' shares {}); since start, all shards' samples: rtt p50 {} p99 {}, delivery p50 {} p99 {}",
        fleet["users"]["active"],
        fleet["users"]["fleet_desired"],
        fleet["users"]["desired"],
        ms(&latency["message_rtt"]["p50"]),
        ms(&latency["message_rtt"]["p99"]),
        ms(&latency["delivery"]["p50"]),
        ms(&latency["delivery"]["p99"]),
    ) + &fleet["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            format!(
                "\n  group {}: users {} active of {}, sent {}, lost {}",
                g["name"].as_str().unwrap_or("?"),
                g["active"],
                g["desired"],
                g["sent"],
                g["lost"]
            )
        })
        .collect::<String>()
}

/// A profile for every instance, with one start time so they run in step: the start of an
/// instance already following the same profile (a retried command joins it), else a moment
/// from now.
async fn in_step(
    client: &reqwest::Client,
    args: &CtlArgs,
    endpoints: &[Url],
    mut spec: Value,
) -> Value {
    if spec.get("start_at").is_some() {
        return spec;
    }
    let status = CtlArgs {
        action: CtlAction::Status,
        ..args.clone()
    };
    let running = futures_util::future::join_all(
        endpoints
            .iter()
            .map(|endpoint| call(client, &status, endpoint, None)),
    )
    .await;
    let same = running.iter().flatten().find_map(|status| {
        let profile = &status["profile"];
        let mut running_spec = profile["spec"].clone();
        running_spec.as_object_mut()?.remove("start_at");
        (profile["state"] == "running" && running_spec == spec).then(|| profile["start_at"].clone())
    });
    let start_at = same.unwrap_or_else(|| {
        let soon = std::time::SystemTime::now() + PROFILE_LEAD;
        Value::String(humantime::format_rfc3339_millis(soon).to_string())
    });
    if let Some(object) = spec.as_object_mut() {
        object.insert("start_at".into(), start_at);
    }
    spec
}

/// Time given to every instance to receive a fleet-wide profile before it starts.
const PROFILE_LEAD: Duration = Duration::from_secs(2);

/// Every instance's control API: `ADDR,ADDR,...` or DNS names resolving to each pod.
async fn resolve_fleet(spec: &str, endpoint: &Url) -> Result<Vec<Url>, CtlError> {
    let default_port = endpoint.port_or_known_default().unwrap_or(9750);
    let mut addrs = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let found: Vec<std::net::SocketAddr> = match item.parse::<std::net::SocketAddr>() {
            Ok(addr) => vec![addr],
            Err(_) => {
                let with_port = item
                    .rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
                let target = if with_port {
                    item.to_string()
                } else {
                    format!("{item}:{default_port}")
                };
                tokio::net::lookup_host(target)
                    .await
                    .map_err(|err| {
                        CtlError::Usage(format!("--fleet `{item}`: cannot resolve: {err}"))
                    })?
                    .collect()
            }
        };
        addrs.extend(found);
    }
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(CtlError::Usage(format!("--fleet `{spec}`: no instance")));
    }
    addrs
        .into_iter()
        .map(|addr| {
            Url::parse(&format!("{}://{addr}/", endpoint.scheme()))
                .map_err(|err| CtlError::Usage(format!("--fleet {addr}: {err}")))
        })
        .collect()
}

fn instance(endpoint: &Url) -> String {
    endpoint.authority().to_string()
}

/// What to print for one instance's answer.
fn describe(args: &CtlArgs, body: &Value) -> String {
    if args.json {
        return format!("{body:#}");
    }
    match &args.action {
        CtlAction::Status => typed(body).map_or_else(|err| err, |s| describe_status(&s)),
        _ => describe_line(args, body),
    }
}

fn describe_line(args: &CtlArgs, body: &Value) -> String {
    match &args.action {
        CtlAction::Status => typed(body).map_or_else(
            |err| err,
            |s| {
                format!(
                    "shard {}/{}  users {} active of {} (fleet {})",
                    s.shard.index,
                    s.shard.count,
                    s.users.active,
                    s.users.desired,
                    s.users.fleet_desired
                )
            },
        ),
        CtlAction::Pause | CtlAction::Resume => format!("paused: {}", body["paused"]),
        CtlAction::Profile { .. } => format!(
            "profile {}: stage {} of {}, {:.0} s in total, from {}",
            body["state"].as_str().unwrap_or("?"),
            body["stage"],
            body["stages"],
            body["total_seconds"].as_f64().unwrap_or(0.0),
            body["start_at"].as_str().unwrap_or("?")
        ),
        CtlAction::Set { .. } | CtlAction::Reload => {
            let mut out = describe_load(body);
            if body.get("profile_cancelled").is_some() {
                out.push_str(" (the running profile was cancelled)");
            }
            out
        }
    }
}

/// `users=5000 message_interval=1s` -> `{"users": 5000, "message_interval": "1s"}`; numbers
/// stay numbers, the server names any field or value it rejects.
/// `users=5000 chatters.message_interval=5s` as a load patch: `GROUP.FIELD` changes one
/// group (`{"groups": {"chatters": {"message_interval": "5s"}}}`).
fn parse_changes(changes: &[String]) -> Result<Value, CtlError> {
    let mut patch = Map::new();
    for change in changes {
        let (field, value) = change.split_once('=').ok_or_else(|| {
            CtlError::Usage(format!(
                "`{change}`: expected FIELD=VALUE or GROUP.FIELD=VALUE, e.g. users=5000"
            ))
        })?;
        let value = match value.parse::<serde_json::Number>() {
            Ok(number) => Value::Number(number),
            Err(_) => Value::String(value.to_string()),
        };
        match field.trim().split_once('.') {
            Some((group, field)) => {
                let groups = patch
                    .entry("groups")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(groups) = groups
                    && let Value::Object(fields) = groups
                        .entry(group.to_string())
                        .or_insert_with(|| Value::Object(Map::new()))
                {
                    fields.insert(field.to_string(), value);
                }
            }
            None => {
                patch.insert(field.trim().to_string(), value);
            }
        }
    }
    Ok(Value::Object(patch))
}

/// `users 5000  connect_rate 200 ...`: every field of the load, as the API names it (so a new
/// live field shows without a change here).
fn describe_load(load: &Value) -> String {
    let Some(fields) = load.as_object() else {
        return load.to_string();
    };
    let fleet = fields
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "profile_cancelled" | "groups"))
        .map(|(name, value)| match value.as_str() {
            Some(text) => format!("{name} {text}"),
            None => format!("{name} {value}"),
        })
        .collect::<Vec<_>>()
        .join("  ");
    let groups = fields
        .get("groups")
        .and_then(Value::as_array)
        .filter(|groups| groups.len() > 1);
    let mut lines = vec![fleet];
    for group in groups.into_iter().flatten() {
        let mut group = group.clone();
        let name = group
            .as_object_mut()
            .and_then(|g| g.remove("name"))
            .and_then(|n| n.as_str().map(str::to_string))
            .unwrap_or_default();
        lines.push(format!("  group {name}: {}", describe_load(&group)));
    }
    lines.join("\n")
}

fn describe_status(s: &Status) -> String {
    let ms = |seconds: f64| format!("{:.1} ms", seconds * 1000.0);
    let latency = |q: &crate::metrics::Quantiles| {
        if q.count == 0 {
            "p50 -  p99 -".to_string()
        } else {
            format!("p50 {}  p99 {}", ms(q.p50), ms(q.p99))
        }
    };
    let profile = match &s.profile {
        Some(p) if p.state == ProfileState::Running => format!("stage {} of {}", p.stage, p.stages),
        Some(p) => serde_json::to_value(p.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        None => "none".into(),
    };
    let load = serde_json::to_value(&s.load).unwrap_or_default();
    let m = &s.messages;
    format!(
        "target       {}\nusers        {} active of {} desired{}\nload         {}\nprofile      {profile}\nconnects     {} (failed {})\nmessages     sent {}  received {}  lost {}  duplicated {}\nrtt          {}\ndelivery     {}",
        s.target,
        s.users.active,
        s.users.desired,
        if s.paused { " (PAUSED)" } else { "" },
        describe_load(&load),
        s.connects.total,
        s.connects.total - s.connects.by_reason.get("ok").copied().unwrap_or(0),
        m.sent,
        m.received,
        m.lost,
        m.duplicated,
        latency(&s.latency.message_rtt),
        latency(&s.latency.delivery),
    ) + &s
        .groups
        .iter()
        .map(|g| {
            format!(
                "\ngroup {:<10} {} active of {}  sent {}  lost {}  rtt {}  delivery {}",
                g.name,
                g.active,
                g.desired,
                g.messages.sent,
                g.messages.lost,
                latency(&g.latency.message_rtt),
                latency(&g.latency.delivery)
            )
        })
        .collect::<String>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_fields_go_under_their_group() {
        let changes = [
            "users=50",
            "bots.users=6",
            "bots.message_interval=1s",
            "a.users=1",
        ];
        let patch = parse_changes(&changes.map(String::from)).expect("valid");
        assert_eq!(
            patch,
            serde_json::json!({
                "users": 50,
                "groups": {"bots": {"users": 6, "message_interval": "1s"}, "a": {"users": 1}}
            })
        );
        assert!(parse_changes(&["users".to_string()]).is_err());
    }
}
