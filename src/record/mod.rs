//! `wsfleet record FILE`: a captured session (a browser's HAR export, or JSON lines of
//! frames) of a JSON, Socket.IO, MQTT-over-WebSocket or protobuf (given its `.proto`)
//! protocol turned into a scenario that runs — its login, heartbeat, messages, acks and
//! deliveries inferred, its secrets replaced by variables — and `--check`, which replays the
//! written scenario with one user and says which parts matched.

mod capture;
mod check;
mod infer;
mod mqtt;
mod secrets;
mod socketio;

pub use check::{CheckReport, check};

use std::collections::BTreeMap;
use std::fmt::Write;

use url::Url;

use crate::codec::protobuf::{Protobuf, ProtobufSpec};

/// A written scenario and what went into it.
#[derive(Debug)]
pub struct Recording {
    /// The config, YAML with comments.
    pub yaml: String,
    /// What was inferred, one line each.
    pub found: Vec<String>,
    /// What could not be, and what that means.
    pub missing: Vec<String>,
    /// The variables standing for the capture's secrets, and where each was.
    pub secrets: BTreeMap<String, String>,
}

/// Whether `path` names a scenario (`.yaml`, `.yml`) rather than a capture: `record --check`
/// replays such a file as it is, once its secrets are filled.
pub fn is_scenario_file(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Which session of a capture to read, how its binary frames are encoded, and where to aim
/// it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Replaces the captured URL's scheme, host and port.
    pub target: Option<Url>,
    /// The WebSocket session to read, from 1 in the HAR's order.
    pub session: usize,
    /// Binary frames are this protobuf message (its `.proto` files as the scenario will name
    /// them: absolute, or relative to where it is written).
    pub protobuf: Option<ProtobufSpec>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            target: None,
            session: 1,
            protobuf: None,
        }
    }
}

/// The capture's binary frames read as the JSON of `spec`'s message; its `codec:` line.
fn read_protobuf(capture: &mut capture::Capture, spec: &ProtobufSpec) -> Result<String, String> {
    let codec = Protobuf::compile(spec, std::path::Path::new(""))?;
    for (n, frame) in capture.frames.iter_mut().enumerate() {
        if let capture::Data::Binary(bytes) = &frame.data {
            let json = codec.decode(bytes).map_err(|err| {
                format!(
                    "frame {} is not a protobuf `{}`: {err}",
                    n + 1,
                    spec.message
                )
            })?;
            // Protobuf names no type: a wrong --message may decode, its strings then holding
            // another message's raw bytes (a secret among them, unscrubbed). Control
            // characters in a string say so.
            if has_control_chars(&serde_json::from_str(&json).unwrap_or_default()) {
                return Err(format!(
                    "frame {} reads as `{}` only with raw bytes in its strings (not shown: they may hold a secret); is --message the type every frame is?",
                    n + 1,
                    spec.message
                ));
            }
            frame.data = capture::Data::Text(json);
        }
    }
    let flow = serde_json::json!({ "protobuf": spec });
    Ok(flow.to_string())
}

/// Reads the capture `text` (from `source`, for the file's header) and writes its scenario.
pub fn record(text: &str, source: &str, options: &Options) -> Result<Recording, String> {
    let mut capture = capture::read(text, options.session)?;
    let protobuf = options
        .protobuf
        .as_ref()
        .map(|spec| read_protobuf(&mut capture, spec))
        .transpose()?;
    let target = options.target.as_ref();
    let mut url = match (&capture.url, target) {
        (_, Some(target)) => target.clone(),
        (Some(url), None) => {
            Url::parse(url).map_err(|err| format!("the captured URL {url:?}: {err}"))?
        }
        (None, None) => {
            return Err("the capture names no URL: pass --target ws://HOST:PORT/PATH".into());
        }
    };
    if let (Some(captured), Some(_)) = (&capture.url, target)
        && let Ok(captured) = Url::parse(captured)
    {
        url.set_path(captured.path());
        url.set_query(captured.query());
    }
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => {
            return Err(format!(
                "the URL's scheme {other:?} is not a WebSocket's (ws, wss)"
            ));
        }
    };
    url.set_scheme(scheme)
        .map_err(|()| format!("cannot make {url} a {scheme}:// URL"))?;
    let mut secrets = secrets::Secrets::default();
    let connect_url = secrets.url(&url);
    let headers = secrets.headers(&capture.headers);
    let mut inferred = if let Some(codec) = protobuf {
        let mut inferred = infer::infer(&capture, &mut secrets)?;
        inferred.found.insert(
            0,
            format!("binary frames are protobuf messages (codec: {codec})"),
        );
        inferred.codec = Some(codec);
        inferred
    } else if mqtt::is_mqtt(&capture) {
        mqtt::infer(&capture, &mut secrets)?
    } else if socketio::is_socketio(&capture) {
        socketio::infer(&capture, &mut secrets)?
    } else {
        infer::infer(&capture, &mut secrets)?
    };
    if capture.sessions.len() > 1 {
        inferred.found.insert(
            0,
            format!(
                "session {} of the {} WebSocket sessions in the HAR ({}); --session N reads another",
                options.session,
                capture.sessions.len(),
                capture.sessions.join(", ")
            ),
        );
    }
    let yaml = render(
        &capture,
        source,
        &url,
        &connect_url,
        &headers,
        &inferred,
        &secrets,
    );
    let yaml = secrets.scrub(&yaml);
    // What was written must load: a mistake here is ours, not the user's.
    crate::config::Config::parse(&yaml)
        .map_err(|err| format!("the scenario written does not load ({err}); please report this with the capture's shape"))?;
    Ok(Recording {
        yaml,
        found: inferred.found,
        missing: inferred.missing,
        secrets: secrets.found().clone(),
    })
}

/// Whether a string anywhere in `value` holds a control character other than tab, CR, LF.
fn has_control_chars(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')),
        serde_json::Value::Array(items) => items.iter().any(has_control_chars),
        serde_json::Value::Object(map) => map.values().any(has_control_chars),
        _ => false,
    }
}

/// A YAML single-quoted scalar.
fn yaml_str(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Seconds as a duration the config reads (`500ms`).
fn millis(seconds: f64) -> String {
    format!("{}ms", (seconds * 1000.0).round().max(1.0))
}

fn render(
    capture: &capture::Capture,
    source: &str,
    url: &Url,
    connect_url: &str,
    headers: &[(String, String)],
    inferred: &infer::Inferred,
    secrets: &secrets::Secrets,
) -> String {
    let sent = capture
        .frames
        .iter()
        .filter(|f| f.dir == capture::Dir::Sent)
        .count();
    let span = capture.frames.last().map_or(0.0, |f| f.at);
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Written by `wsfleet record {source}`: {} frames ({sent} sent, {} received) over {span:.1} s.",
        capture.frames.len(),
        capture.frames.len() - sent
    );
    y.push_str("# Inferred:\n");
    for line in &inferred.found {
        let _ = writeln!(y, "#   - {line}");
    }
    if !inferred.missing.is_empty() {
        y.push_str("# Not inferred:\n");
        for line in &inferred.missing {
            let _ = writeln!(y, "#   - {line}");
        }
    }
    y.push_str("# Run `wsfleet record --check` on the capture (or `wsfleet run -c` this file with a few users)\n# and read the summary's `frames` line: unmatched frames are what this file does not yet explain.\n");
    let mut target = url.clone();
    target.set_query(None);
    let _ = writeln!(y, "target: {}", yaml_str(target.as_str()));
    y.push_str("users: 10\nconnect_rate: 10\n");
    if let Some(message) = &inferred.message {
        let _ = writeln!(
            y,
            "message_interval: {}  # as captured",
            millis(message.interval)
        );
    }
    if let Some(heartbeat) = &inferred.heartbeat {
        let _ = writeln!(
            y,
            "heartbeat: {{interval: {}}}  # as captured",
            millis(heartbeat.interval)
        );
    }
    y.push_str("scenario:\n");
    if let Some(codec) = &inferred.codec {
        let _ = writeln!(y, "  codec: {codec}");
    }
    if connect_url != target.as_str() {
        let _ = writeln!(y, "  url: {}", yaml_str(connect_url));
    }
    if !headers.is_empty() {
        y.push_str("  headers:\n");
        for (name, value) in headers {
            let _ = writeln!(y, "    {}: {}", yaml_str(name), yaml_str(value));
        }
    }
    if !secrets.found().is_empty() {
        y.push_str("  # Secrets from the capture, taken out: fill each from your credentials\n  # (or a `credentials:` file with a column of the same name).\n  vars:\n");
        for (var, place) in secrets.found() {
            let _ = writeln!(y, "    {var}: ''  # was in {place}");
        }
    }
    if !inferred.login.is_empty() {
        y.push_str("  login:\n");
        for step in &inferred.login {
            let mut lead = "    - ";
            for (key, value) in [
                ("send", step.send.as_deref().map(yaml_str)),
                ("expect", step.expect.clone()),
                ("reject", step.reject.clone()),
            ] {
                if let Some(value) = value {
                    let _ = writeln!(y, "{lead}{key}: {value}");
                    lead = "      ";
                }
            }
        }
    }
    if let Some(heartbeat) = &inferred.heartbeat {
        let _ = writeln!(y, "  heartbeat:\n    send: {}", yaml_str(&heartbeat.send));
        if let Some(expect) = &heartbeat.expect {
            let _ = writeln!(y, "    expect: {expect}");
        }
    }
    if !inferred.replies.is_empty() {
        y.push_str("  replies:  # the server's own heartbeat, answered as captured\n");
        for (matcher, send) in &inferred.replies {
            let _ = writeln!(y, "    - match: {matcher}\n      send: {}", yaml_str(send));
        }
    }
    if let Some(message) = &inferred.message {
        let _ = writeln!(y, "  message:\n    send: {}", yaml_str(&message.send));
        if let Some((matcher, by)) = &message.ack {
            let by = match by {
                infer::AckBy::Id(field) => format!(", id: {field}"),
                infer::AckBy::Seq(field) => format!(", seq: {field}"),
                infer::AckBy::Order => String::new(),
            };
            let _ = writeln!(y, "    ack: {{match: {matcher}{by}}}");
        }
        if let Some(d) = &message.delivery {
            let _ = writeln!(
                y,
                "    delivery: {{match: {}, sender: {}, seq: {}, ts: {}}}",
                d.matcher, d.sender, d.seq, d.ts
            );
        }
    }
    if !inferred.ignore.is_empty() {
        y.push_str("  ignore:  # server frames that carry nothing measured\n");
        for (matcher, seen) in &inferred.ignore {
            let _ = writeln!(y, "    - {matcher}  # seen {seen} times");
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session of the reference target's protocol, as JSON lines, with a token in the URL,
    /// an Authorization header and a token in the login frame.
    fn im_session() -> String {
        let mut lines = vec![
            r#"{"url":"ws://127.0.0.1:9/ws?room=lobby&token=hunter2-url","headers":{"Authorization":"Bearer hunter2-header","Origin":"http://127.0.0.1:9","Sec-WebSocket-Key":"abc"}}"#.to_string(),
            r#"{"dir":"send","time":0.0,"data":"{\"type\":\"login\",\"user\":\"alice\",\"token\":\"hunter2-frame\"}"}"#.into(),
            r#"{"dir":"receive","time":0.01,"data":"{\"type\":\"login_ok\",\"user\":\"alice\"}"}"#.into(),
            r#"{"dir":"send","time":0.02,"data":"{\"type\":\"join\",\"room\":\"lobby\"}"}"#.into(),
            r#"{"dir":"receive","time":0.03,"data":"{\"type\":\"joined\",\"room\":\"lobby\",\"members\":2}"}"#.into(),
        ];
        for n in 1..=6u64 {
            let t = 0.5 * n as f64;
            let ts = 1_764_000_000_000u64 + n * 500;
            lines.push(format!(r#"{{"dir":"send","time":{t},"data":"{{\"type\":\"msg\",\"room\":\"lobby\",\"id\":\"alice-{n}\",\"seq\":{n},\"ts\":{ts},\"body\":\"hello {n}\"}}"}}"#));
            lines.push(format!(r#"{{"dir":"receive","time":{},"data":"{{\"type\":\"ack\",\"id\":\"alice-{n}\"}}"}}"#, t + 0.01));
            lines.push(format!(r#"{{"dir":"receive","time":{},"data":"{{\"type\":\"deliver\",\"from\":\"bob\",\"room\":\"lobby\",\"id\":\"bob-{n}\",\"seq\":{n},\"ts\":{ts},\"body\":\"hi\"}}"}}"#, t + 0.2));
            if n % 2 == 0 {
                lines.push(format!(
                    r#"{{"dir":"send","time":{},"data":"{{\"type\":\"ping\",\"ts\":{ts}}}"}}"#,
                    t + 0.3
                ));
                lines.push(format!(
                    r#"{{"dir":"receive","time":{},"data":"{{\"type\":\"pong\",\"ts\":{ts}}}"}}"#,
                    t + 0.31
                ));
            }
        }
        lines.push(
            r#"{"dir":"receive","time":4.0,"data":"{\"type\":\"presence\",\"user\":\"carol\"}"}"#
                .into(),
        );
        lines.join("\n")
    }

    #[test]
    fn an_im_session_becomes_a_scenario_with_its_login_heartbeat_messages_and_deliveries() {
        let recording =
            record(&im_session(), "im.jsonl", &Options::default()).expect("as captured");
        let yaml = &recording.yaml;
        assert!(!yaml.contains("hunter2"), "a secret leaked:\n{yaml}");
        assert_eq!(
            recording.secrets.keys().collect::<Vec<_>>(),
            ["token", "token_2", "token_3"],
            "{yaml}"
        );
        let plan = crate::config::Config::parse(yaml).expect("as captured");
        let spec = plan.scenario.spec();
        assert_eq!(spec.login.len(), 2, "{yaml}");
        assert_eq!(
            spec.login[0].send.as_deref(),
            Some(r#"{"token":"{{token_3}}","type":"login","user":"{{user_id}}"}"#)
        );
        assert_eq!(
            spec.login[1].send.as_deref(),
            Some(r#"{"room":"{{room}}","type":"join"}"#)
        );
        let message = spec.message.expect("as captured");
        assert_eq!(
            message.send,
            r#"{"body":"{{payload}}","id":"{{msg_id}}","room":"{{room}}","seq":{{seq}},"ts":{{ts}},"type":"msg"}"#
        );
        assert_eq!(message.ack.expect("as captured").id.as_deref(), Some("/id"));
        let delivery = message.delivery.expect("as captured");
        assert_eq!(
            [&delivery.sender, &delivery.seq, &delivery.ts],
            ["/from", "/seq", "/ts"]
        );
        assert_eq!(
            spec.heartbeat.expect("as captured").send,
            r#"{"ts":{{ts}},"type":"ping"}"#
        );
        assert_eq!(spec.ignore.len(), 1, "presence is ignored:\n{yaml}");
        assert_eq!(plan.message_interval, std::time::Duration::from_millis(500));
        assert_eq!(
            spec.headers.get("Authorization").map(String::as_str),
            Some("Bearer {{token_2}}")
        );
        assert_eq!(
            spec.url.as_deref(),
            Some("ws://127.0.0.1:9/ws?room=lobby&token={{token}}")
        );
    }

    /// The im session as protobuf envelopes (`examples/proto/chat.proto`): each frame's
    /// `type` the envelope's key, binary frames in base64.
    fn protobuf_session(spec: &ProtobufSpec) -> String {
        let codec = Protobuf::compile(spec, std::path::Path::new("")).expect("compiles");
        im_session()
            .lines()
            .filter_map(|line| {
                let mut line: serde_json::Value = serde_json::from_str(line).expect("JSON");
                let Some(data) = line.get("data").and_then(|d| d.as_str()) else {
                    return Some(line.to_string());
                };
                let mut frame: serde_json::Value = serde_json::from_str(data).expect("JSON");
                let body = frame.as_object_mut().expect("an object");
                let kind = body.remove("type").expect("a type");
                body.remove("members");
                let kind = kind.as_str().expect("a string");
                if kind == "presence" {
                    return None; // no such message in chat.proto
                }
                let envelope = serde_json::json!({ kind: body }).to_string();
                let bytes = codec.encode(&envelope).expect("encodes");
                line["data"] =
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
                        .into();
                line["binary"] = true.into();
                Some(line.to_string())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A protobuf session given its `.proto`: the envelope's oneof names each frame, its
    /// fields are placed under it, and the scenario speaks the codec.
    #[test]
    fn a_protobuf_session_becomes_a_scenario_of_envelopes() {
        let spec = ProtobufSpec {
            files: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/examples/proto/chat.proto").into()],
            message: "chat.Envelope".into(),
            ..ProtobufSpec::default()
        };
        let options = Options {
            protobuf: Some(spec.clone()),
            ..Options::default()
        };
        let session = protobuf_session(&spec);
        let recording = record(&session, "pb.jsonl", &options).expect("as captured");
        let yaml = &recording.yaml;
        assert!(!yaml.contains("hunter2"), "a secret leaked:\n{yaml}");
        assert!(
            yaml.contains("  codec: {\"protobuf\":{\"files\":["),
            "{yaml}"
        );
        let plan = crate::config::Config::parse(yaml).expect("as captured");
        let spec = plan.scenario.spec();
        assert_eq!(
            spec.login[0].send.as_deref(),
            Some(r#"{"login":{"token":"{{token_3}}","user":"{{user_id}}"}}"#)
        );
        assert_eq!(
            spec.login[1].send.as_deref(),
            Some(r#"{"join":{"room":"{{room}}"}}"#)
        );
        let message = spec.message.expect("as captured");
        assert_eq!(
            message.send,
            r#"{"msg":{"body":"{{payload}}","id":"{{msg_id}}","room":"{{room}}","seq":{{seq}},"ts":{{ts}}}}"#
        );
        assert_eq!(
            message.ack.expect("as captured").id.as_deref(),
            Some("/ack/id")
        );
        let delivery = message.delivery.expect("as captured");
        assert_eq!(
            [&delivery.sender, &delivery.seq, &delivery.ts],
            ["/deliver/from", "/deliver/seq", "/deliver/ts"]
        );
        assert_eq!(
            spec.heartbeat.expect("as captured").send,
            r#"{"ping":{"ts":{{ts}}}}"#
        );

        // Without --proto binary frames are named as unread; bytes that are no protobuf
        // message are an error naming the frame.
        let err = record(&session, "pb.jsonl", &Options::default()).expect_err("no --proto");
        assert!(err.contains("--proto FILE --message TYPE"), "{err}");
        let mut lines: Vec<String> = session.lines().map(str::to_string).collect();
        lines[3] = r#"{"dir":"send","time":0.02,"binary":true,"data":"//8="}"#.into();
        let err = record(&lines.join("\n"), "pb.jsonl", &options).expect_err("0xffff");
        assert!(
            err.contains("frame 3 is not a protobuf `chat.Envelope`"),
            "{err}"
        );
        // The wrong type decodes (protobuf names none), but its strings are raw bytes.
        let wrong = Options {
            protobuf: Some(ProtobufSpec {
                message: "chat.Ack".into(),
                ..options.protobuf.clone().expect("given")
            }),
            ..Options::default()
        };
        let err = record(&session, "pb.jsonl", &wrong).expect_err("no Ack");
        assert!(
            err.contains("frame 1 reads as `chat.Ack` only with raw bytes")
                && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn what_cannot_be_read_is_named() {
        let text = concat!(
            r#"{"url":"ws://127.0.0.1:9/mqtt"}"#,
            "\n",
            r#"{"dir":"send","time":0,"data":"{}"}"#,
            "\n",
            r#"{"dir":"receive","time":0.1,"data":"PONG 1"}"#
        );
        let err = record(text, "x", &Options::default()).expect_err("plain text is not read yet");
        assert!(
            err.contains("frame 2") && err.contains("text protocol"),
            "{err}"
        );
        let nourl = r#"{"dir":"send","time":0,"data":"{}"}"#;
        assert!(
            record(nourl, "x", &Options::default())
                .expect_err("an error")
                .contains("--target")
        );
    }
}
