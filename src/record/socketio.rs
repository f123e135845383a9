//! What a captured Socket.IO 4 session (Engine.IO 4 packets over WebSocket) means: the open
//! packet and the CONNECT with its auth payload, the events sent before any repeats (a room
//! join), the repeated acked event (the message, its ack id our sequence), the events that
//! carry another user's message (deliveries) and the server's ping answered by pong.
//!
//! Packets are read as the protocol defines them (Engine.IO type, Socket.IO type, optional
//! namespace, optional ack id, JSON payload); the event objects' fields are inferred as a JSON
//! session's are ([`super::infer`]'s fields, identity and templates).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::capture::{Capture, Dir, Frame};
use super::infer::{
    AckBy, Delivery, Fields, Identity, Inferred, Message, Step, carried, median_gap, template,
};
use super::secrets::Secrets;
use super::yaml_str;

/// Whether the capture is Socket.IO: its URL is an Engine.IO one, or the server opened with
/// Engine.IO's open packet.
pub fn is_socketio(capture: &Capture) -> bool {
    capture
        .url
        .as_deref()
        .is_some_and(|u| u.contains("/socket.io/") && u.contains("EIO="))
        || capture
            .frames
            .iter()
            .find(|f| f.dir == Dir::Received)
            .is_some_and(|f| f.text().starts_with("0{\"sid\""))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Open,
    Ping,
    Pong,
    Connect,
    ConnectError,
    Event(String),
    Ack,
    /// Close, noop, disconnect, binary events: carried, not modelled.
    Other,
}

/// One Engine.IO/Socket.IO packet.
struct Packet<'a> {
    frame: &'a Frame,
    kind: Kind,
    /// The namespace prefix as written (`/chat,`), empty for `/`.
    namespace: String,
    ack: Option<u64>,
    /// An event's arguments after its name; CONNECT's payload.
    args: Vec<Value>,
}

fn parse(n: usize, frame: &Frame) -> Result<Packet<'_>, String> {
    let bad = |why: &str| {
        format!(
            "frame {} ({:?}) is not an Engine.IO 4 packet: {why}",
            n + 1,
            frame.text()
        )
    };
    if frame.is_binary() {
        return Err(bad("a binary frame (binary events are not read yet)"));
    }
    let mut rest = frame.text();
    let engine = rest.chars().next().ok_or_else(|| bad("empty"))?;
    rest = &rest[1..];
    let mut packet = Packet {
        frame,
        kind: Kind::Other,
        namespace: String::new(),
        ack: None,
        args: Vec::new(),
    };
    packet.kind = match engine {
        '0' => Kind::Open,
        '2' => Kind::Ping,
        '3' => Kind::Pong,
        '1' | '5' | '6' => Kind::Other,
        '4' => {
            let socket = rest
                .chars()
                .next()
                .ok_or_else(|| bad("a message with no Socket.IO type"))?;
            rest = &rest[1..];
            if rest.starts_with('/') {
                let end = rest.find(',').map_or(rest.len(), |i| i + 1);
                packet.namespace = rest[..end].to_string();
                rest = &rest[end..];
            }
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 {
                packet.ack = Some(
                    rest[..digits]
                        .parse()
                        .map_err(|_| bad("an ack id out of range"))?,
                );
                rest = &rest[digits..];
            }
            let payload: Option<Value> = if rest.is_empty() {
                None
            } else {
                Some(
                    serde_json::from_str(rest)
                        .map_err(|e| bad(&format!("its payload is not JSON ({e})")))?,
                )
            };
            match socket {
                '0' => {
                    packet.args = payload.into_iter().collect();
                    Kind::Connect
                }
                '4' => Kind::ConnectError,
                '2' => match payload {
                    Some(Value::Array(mut items))
                        if items.first().is_some_and(Value::is_string) =>
                    {
                        let name = items.remove(0).as_str().unwrap_or_default().to_string();
                        packet.args = items;
                        Kind::Event(name)
                    }
                    _ => return Err(bad("an event whose payload is not [\"name\", ...]")),
                },
                '3' => Kind::Ack,
                _ => Kind::Other,
            }
        }
        _ => return Err(bad("its first character is not an Engine.IO packet type")),
    };
    Ok(packet)
}

/// A regex matcher (YAML flow) of `pattern`.
fn regex(pattern: &str) -> String {
    format!("{{regex: {}}}", yaml_str(pattern))
}

/// An event's arguments as a template: objects through the JSON template, a room name
/// (a string argument of a join-like event) as `{{room}}`.
fn arguments(
    name: &str,
    args: &[Value],
    fields: &Fields,
    identity: &Identity,
    secrets: &mut Secrets,
) -> String {
    let joins = ["join", "subscribe", "enter"]
        .iter()
        .any(|w| name.to_ascii_lowercase().contains(w));
    let mut parts = vec![Value::from(name).to_string()];
    for arg in args {
        parts.push(match arg {
            Value::Object(object) => template(object, fields, identity, secrets),
            Value::String(_) if joins => "\"{{room}}\"".into(),
            other => other.to_string(),
        });
    }
    format!("[{}]", parts.join(","))
}

fn object(args: &[Value]) -> Option<&serde_json::Map<String, Value>> {
    args.first().and_then(Value::as_object)
}

/// Infers the scenario of a Socket.IO capture, secrets taken out.
pub fn infer(capture: &Capture, secrets: &mut Secrets) -> Result<Inferred, String> {
    let packets: Vec<Packet> = capture
        .frames
        .iter()
        .enumerate()
        .map(|(n, f)| parse(n, f))
        .collect::<Result<_, _>>()?;
    let mut inferred = Inferred::default();
    inferred
        .found
        .push("frames are Socket.IO 4 packets (Engine.IO 4)".into());
    let sent = |p: &&Packet| p.frame.dir == Dir::Sent;
    let received = |p: &&Packet| p.frame.dir == Dir::Received;
    let sent_objects: Vec<&serde_json::Map<String, Value>> = packets
        .iter()
        .filter(sent)
        .filter_map(|p| object(&p.args))
        .collect();
    let identity = Identity::of(&sent_objects);

    // Login: the open packet, CONNECT, and the events sent before any event repeats.
    if packets.iter().any(|p| p.kind == Kind::Open) {
        inferred.login.push(Step {
            send: None,
            expect: Some(regex(r"^0\{")),
            reject: None,
        });
        inferred
            .found
            .push("login step: Engine.IO's open packet (`0{...}`)".into());
    }
    if let Some(connect) = packets
        .iter()
        .filter(sent)
        .find(|p| p.kind == Kind::Connect)
    {
        let payload = object(&connect.args).map_or(String::new(), |o| {
            template(o, &Fields::default(), &identity, secrets)
        });
        inferred.login.push(Step {
            send: Some(format!("40{}{payload}", connect.namespace)),
            expect: Some(regex("^40")),
            reject: Some(regex("^44")),
        });
        inferred.found.push(format!(
            "login step: CONNECT{} (a refusal, `44`, fails the login)",
            if payload.is_empty() {
                String::new()
            } else {
                " with its auth payload".into()
            }
        ));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for p in packets.iter().filter(sent) {
        if let Kind::Event(name) = &p.kind {
            *counts.entry(name).or_default() += 1;
        }
    }
    let repeated = |p: &Packet| matches!(&p.kind, Kind::Event(name) if counts[name.as_str()] >= 2);
    let first_repeat = packets
        .iter()
        .position(|p| p.frame.dir == Dir::Sent && repeated(p))
        .unwrap_or(packets.len());
    for p in packets[..first_repeat].iter().filter(sent) {
        let Kind::Event(name) = &p.kind else { continue };
        let args = arguments(name, &p.args, &Fields::default(), &identity, secrets);
        let acked = p.ack.filter(|id| {
            packets
                .iter()
                .filter(received)
                .any(|a| a.kind == Kind::Ack && a.ack == Some(*id))
        });
        inferred.login.push(Step {
            send: Some(format!(
                "42{}{}{args}",
                p.namespace,
                p.ack.map_or(String::new(), |id| id.to_string())
            )),
            expect: acked.map(|id| regex(&format!(r"^43{}{id}\[", regex::escape(&p.namespace)))),
            reject: None,
        });
        inferred.found.push(format!(
            "login step: event `{name}`{}",
            if acked.is_some() {
                ", answered by its ack"
            } else {
                " (no ack seen)"
            }
        ));
    }

    // The server's heartbeat: ping answered by pong.
    if packets.iter().any(|p| p.kind == Kind::Ping)
        && packets
            .iter()
            .any(|p| p.kind == Kind::Pong && p.frame.dir == Dir::Sent)
    {
        inferred.replies.push((regex("^2$"), "3".into()));
        inferred
            .found
            .push("the server's heartbeat: Engine.IO ping `2`, answered by pong `3`".into());
    }

    // The message: the repeated event sent with an ack id each time.
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    let message_name = counts
        .iter()
        .filter(|&(_, &n)| n >= 2)
        .map(|(name, _)| *name)
        .find(|name| {
            packets
                .iter()
                .filter(sent)
                .filter(|p| p.kind == Kind::Event((*name).into()))
                .all(|p| p.ack.is_some())
        });
    match message_name {
        Some(name) => {
            let of_name: Vec<&Packet> = packets.iter().filter(sent).filter(|p| p.kind == Kind::Event(name.into())).collect();
            let objects: Vec<_> = of_name.iter().filter_map(|p| object(&p.args)).collect();
            let fields = if objects.len() == of_name.len() { Fields::of(&objects) } else { Fields::default() };
            let interval = median_gap(&of_name.iter().map(|p| p.frame.at).collect::<Vec<_>>());
            let namespace = of_name[0].namespace.clone();
            let args = arguments(name, &of_name[0].args, &fields, &identity, secrets);
            inferred.found.push(format!(
                "messages: event `{name}` every {interval:.2} s, acked by Socket.IO's ack (`43<id>[...]`, our sequence as its id)"
            ));
            claimed.insert(name.to_string());
            let delivery = delivery_of(&packets, &fields);
            match &delivery {
                Some(d) => inferred.found.push(format!(
                    "deliveries: event `{}` (sender `{}`, sequence `{}`, time `{}`)",
                    d.kind, d.sender, d.seq, d.ts
                )),
                None => inferred.missing.push(
                    "deliveries: no event the server sent carries a sender, sequence and time, so loss, duplication and delivery latency are not measured (a message is judged by its ack alone)".into(),
                ),
            }
            if let Some(d) = &delivery {
                claimed.insert(d.kind.clone());
            }
            inferred.message = Some(Message {
                send: format!("42{namespace}{{{{seq}}}}{args}"),
                interval,
                ack: Some((regex(&format!(r"^43{}(?P<ack>\d+)\[", regex::escape(&namespace))), AckBy::Seq("$ack".into()))),
                delivery,
            });
        }
        None => inferred.missing.push(
            "messages: no event is sent repeatedly with an ack id, so no message flow was written (users only connect and answer pings)".into(),
        ),
    }

    // Events from the server that nothing above explains: ignored, by name.
    let mut rest: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for p in packets[first_repeat.min(packets.len())..]
        .iter()
        .filter(received)
    {
        if let Kind::Event(name) = &p.kind
            && !claimed.contains(name)
        {
            *rest
                .entry((p.namespace.as_str(), name.as_str()))
                .or_default() += 1;
        }
    }
    inferred.ignore = rest
        .into_iter()
        .map(|((namespace, name), seen)| {
            let name = Value::from(name).to_string();
            (
                regex(&format!(
                    r"^42{}\[{}",
                    regex::escape(namespace),
                    regex::escape(&name)
                )),
                seen,
            )
        })
        .collect();
    Ok(inferred)
}

/// The deliveries: events from the server (no ack id) whose object carries a sender, and our
/// messages' sequence and time fields (a room passes them on).
fn delivery_of(packets: &[Packet], fields: &Fields) -> Option<Delivery> {
    packets
        .iter()
        .filter(|p| p.frame.dir == Dir::Received && p.ack.is_none())
        .find_map(|p| {
            let Kind::Event(name) = &p.kind else {
                return None;
            };
            let (sender, seq, ts) = carried(object(&p.args)?, fields)?;
            Some(Delivery {
                kind: name.clone(),
                matcher: regex(&format!(
                    r#"^42{}\[{},(?P<message>\{{.*\}})\]$"#,
                    regex::escape(&p.namespace),
                    regex::escape(&Value::from(name.as_str()).to_string())
                )),
                sender: format!("$message/{sender}"),
                seq: format!("$message/{seq}"),
                ts: format!("$message/{ts}"),
            })
        })
}
