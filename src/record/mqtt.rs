//! What a captured MQTT-over-WebSocket session (binary frames, subprotocol `mqtt`) means:
//! CONNECT and its CONNACK, the SUBSCRIBEs before the first PUBLISH (the room's topic), the
//! PINGREQ heartbeat, the repeated PUBLISH (the message, PUBACK its ack at QoS 1), the
//! PUBLISHes from the subscription that carry another user's message (deliveries) and the
//! PUBACKs that answer them.
//!
//! Packets are read by the fleet's own codec ([`crate::codec::mqtt`], rumqttc's packet
//! codecs), client packets too, as the JSON a scenario writes; a PUBLISH's JSON payload is
//! inferred as a JSON session's frames are ([`super::infer`]'s fields, identity, templates).

use std::collections::BTreeMap;

use serde_json::Value;

use super::capture::{Capture, Data, Dir, Frame};
use super::infer::{
    AckBy, Delivery, Fields, Identity, Inferred, Message, Object, Step, carried, median_gap,
    template,
};
use super::secrets::Secrets;
use bytes::BytesMut;

use crate::codec::framing::{Framing, MAX_FRAME};
use crate::codec::mqtt::{Version, decode_captured};
use crate::scenario::Builtin;

/// Whether the capture is MQTT: its first sent frame is binary and starts a CONNECT.
pub fn is_mqtt(capture: &Capture) -> bool {
    capture
        .frames
        .iter()
        .find(|f| f.dir == Dir::Sent)
        .is_some_and(
            |f| matches!(&f.data, Data::Binary(b) if b.first().is_some_and(|&t| t >> 4 == 1)),
        )
}

/// One MQTT packet of a frame, as JSON.
struct Packet<'a> {
    frame: &'a Frame,
    value: Object,
    kind: String,
}

impl Packet<'_> {
    fn sent(&self) -> bool {
        self.frame.dir == Dir::Sent
    }

    fn str(&self, key: &str) -> &str {
        self.value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    fn qos(&self) -> u64 {
        self.value.get("qos").and_then(Value::as_u64).unwrap_or(0)
    }

    fn payload(&self) -> Option<&Object> {
        self.value.get("payload").and_then(Value::as_object)
    }
}

/// The capture's packets in the version its first CONNECT asks for (the level byte is in
/// the first 12 bytes sent, which may span messages).
fn packets(capture: &Capture) -> Result<(Version, Stream<'_>), String> {
    let mut head = Vec::new();
    for frame in capture.frames.iter().filter(|f| f.dir == Dir::Sent) {
        match &frame.data {
            Data::Binary(bytes) if head.len() < 12 => head.extend_from_slice(bytes),
            _ => break,
        }
    }
    let version = Version::of_connect(&head)?;
    Ok((version, read_all(capture, version)?))
}

/// Every packet of the capture, in order: each side's frames are one byte stream (mqtt.js
/// writes a packet's header and body as separate WebSocket messages; one message may hold
/// several packets), a packet belonging to the frame that completes it.
fn read_all(capture: &Capture, version: Version) -> Result<Stream<'_>, String> {
    let mut streams = [BytesMut::new(), BytesMut::new()];
    let mut packets = Vec::new();
    for (n, frame) in capture.frames.iter().enumerate() {
        let Data::Binary(bytes) = &frame.data else {
            return Err(format!(
                "frame {} is text in an MQTT session (MQTT over WebSocket is binary)",
                n + 1
            ));
        };
        let stream = &mut streams[usize::from(frame.dir == Dir::Received)];
        stream.extend_from_slice(bytes);
        let not_mqtt = |err: String| {
            format!(
                "frame {} is not MQTT {} packets: {err}",
                n + 1,
                version.name()
            )
        };
        while let Some(packet) = Framing::Mqtt
            .cut(stream, MAX_FRAME)
            .map_err(|err| not_mqtt(err.to_string()))?
        {
            let text = decode_captured(&packet, version).map_err(not_mqtt)?;
            let value: Object = serde_json::from_str(&text).map_err(|err| err.to_string())?;
            let kind = value
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            packets.push(Packet { frame, value, kind });
        }
    }
    // A HAR exported while the page runs may end inside a packet: its start is left out.
    let cut = streams
        .iter()
        .zip(["sent", "received"])
        .filter(|(stream, _)| !stream.is_empty())
        .map(|(stream, side)| {
            format!(
                "the capture ends inside a packet {side}: its last {} bytes are left out",
                stream.len()
            )
        })
        .collect();
    Ok(Stream { packets, cut })
}

/// A capture's packets, and what was left out of a packet the capture ends inside.
struct Stream<'a> {
    packets: Vec<Packet<'a>>,
    cut: Vec<String>,
}

/// A matcher of packets of `kind` (YAML flow).
fn kind_is(kind: &str) -> String {
    format!("{{pointer: /type, equals: {kind}}}")
}

/// `topic` with the room in it as `{{room}}`: the level equal to the room the messages name,
/// else the last level.
fn topic_template(topic: &str, room: Option<&str>) -> String {
    let levels: Vec<&str> = topic.split('/').collect();
    let at = room
        .and_then(|room| levels.iter().rposition(|l| *l == room))
        .unwrap_or(levels.len() - 1);
    levels
        .iter()
        .enumerate()
        .map(|(i, level)| if i == at { "{{room}}" } else { level })
        .collect::<Vec<_>>()
        .join("/")
}

/// Infers the scenario of an MQTT capture, secrets taken out.
pub fn infer(capture: &Capture, secrets: &mut Secrets) -> Result<Inferred, String> {
    let (version, Stream { packets, cut }) = packets(capture)?;
    let mut inferred = Inferred {
        codec: Some(match version {
            Version::V311 => "mqtt".into(),
            Version::V5 => "{mqtt: {version: 5}}".into(),
        }),
        missing: cut,
        ..Inferred::default()
    };
    inferred.found.push(format!(
        "frames are MQTT {} packets over WebSocket (codec: mqtt)",
        version.name()
    ));
    let publishes: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.sent() && p.kind == "publish")
        .collect();
    let payloads: Vec<&Object> = publishes.iter().filter_map(|p| p.payload()).collect();
    let identity = Identity::of(&payloads);
    let room = identity.room.as_deref();
    let mut claimed = vec!["connack", "suback", "pingresp"];

    // Login: CONNECT, then the SUBSCRIBEs before the first PUBLISH.
    let first_publish = packets
        .iter()
        .position(|p| p.sent() && p.kind == "publish")
        .unwrap_or(packets.len());
    let connect = packets
        .iter()
        .find(|p| p.sent() && p.kind == "connect")
        .ok_or("the MQTT session has no CONNECT")?;
    let mut login = connect.value.clone();
    login.insert("client_id".into(), Value::from("{{user_id}}"));
    inferred.login.push(Step {
        send: Some(template(&login, &Fields::default(), &identity, secrets)),
        expect: Some("{pointer: /code, equals: success}".into()),
        reject: Some(kind_is("connack")),
    });
    inferred.found.push(format!(
        "login step: CONNECT{} (client id: each user's id), answered by CONNACK; a refusal fails the login",
        if connect.str("password").is_empty() {
            ""
        } else {
            " with a password"
        }
    ));
    for subscribe in packets[..first_publish]
        .iter()
        .filter(|p| p.sent() && p.kind == "subscribe")
    {
        let topic = topic_template(subscribe.str("topic"), room);
        let mut value = subscribe.value.clone();
        value.insert("topic".into(), Value::from(topic.as_str()));
        inferred.login.push(Step {
            send: Some(Value::Object(value).to_string()),
            expect: Some(kind_is("suback")),
            reject: None,
        });
        inferred.found.push(format!(
            "login step: SUBSCRIBE to `{}` as `{topic}` at QoS {}, answered by SUBACK",
            subscribe.str("topic"),
            subscribe.qos()
        ));
    }

    // The heartbeat: PINGREQ, answered by PINGRESP.
    let pings: Vec<f64> = packets
        .iter()
        .filter(|p| p.sent() && p.kind == "pingreq")
        .map(|p| p.frame.at)
        .collect();
    let keep_alive = connect
        .value
        .get("keep_alive")
        .and_then(Value::as_f64)
        .unwrap_or(60.0);
    if !pings.is_empty() {
        let interval = if pings.len() >= 2 {
            median_gap(&pings)
        } else {
            keep_alive
        };
        inferred.heartbeat = Some(super::infer::Heartbeat {
            send: r#"{"type":"pingreq"}"#.into(),
            expect: Some(kind_is("pingresp")),
            interval,
        });
        inferred.found.push(format!(
            "heartbeat: PINGREQ every {interval:.2} s (keep-alive {keep_alive} s), answered by PINGRESP"
        ));
    } else {
        inferred.missing.push(format!(
            "heartbeat: no PINGREQ was sent (the capture is shorter than its keep-alive, {keep_alive} s, or the client pinged only when idle): users send none, so keep the broker's keep-alive in mind"
        ));
    }

    // Deliveries at QoS 1 are acknowledged, as the client did.
    if packets
        .iter()
        .any(|p| !p.sent() && p.kind == "publish" && p.qos() == 1)
    {
        // The built-in mqtt scenario's own reply: a PUBACK for each QoS 1 delivery.
        for reply in Builtin::Mqtt.spec().replies {
            let matcher = serde_json::to_string(&reply.matcher).map_err(|err| err.to_string())?;
            inferred.replies.push((matcher, reply.send));
        }
        inferred
            .found
            .push("deliveries at QoS 1: each answered by its PUBACK".into());
    }

    // The message: the repeated PUBLISH, its JSON payload's fields placed.
    match publishes.first() {
        Some(first) if publishes.len() >= 2 => {
            let fields = if payloads.len() == publishes.len() {
                Fields::of(&payloads)
            } else {
                Fields::default()
            };
            let interval = median_gap(&publishes.iter().map(|p| p.frame.at).collect::<Vec<_>>());
            let qos = first.qos();
            let payload = first.payload().map_or_else(
                || "\"{{payload}}\"".to_string(),
                |object| template(object, &fields, &identity, secrets),
            );
            let topic = topic_template(first.str("topic"), room);
            let pkid = if qos > 0 { r#","pkid":{{seq}}"# } else { "" };
            let send = format!(
                r#"{{"type":"publish","topic":{},"qos":{qos}{pkid},"payload":{payload}}}"#,
                Value::from(topic.as_str())
            );
            let ack = match qos {
                1 => {
                    claimed.push("puback");
                    Some((kind_is("puback"), AckBy::Order))
                }
                _ => None,
            };
            inferred.found.push(format!(
                "messages: PUBLISH to `{topic}` at QoS {qos} every {interval:.2} s{}",
                if ack.is_some() {
                    ", acked by PUBACK (in order; the packet id is our sequence)"
                } else {
                    ""
                }
            ));
            if ack.is_none() {
                inferred.missing.push(format!(
                    "acks: the messages are QoS {qos}{}, so no round trip is measured; delivery latency still is",
                    if qos == 2 {
                        " (QoS 2's PUBREC/PUBREL/PUBCOMP is not modelled)"
                    } else {
                        " (no PUBACK)"
                    }
                ));
            }
            let delivery = packets
                .iter()
                .filter(|p| !p.sent() && p.kind == "publish")
                .find_map(|p| carried(p.payload()?, &fields));
            match delivery {
                Some((sender, seq, ts)) => {
                    claimed.push("publish");
                    inferred.found.push(format!(
                        "deliveries: PUBLISH from the subscription (sender `/payload/{sender}`, sequence `/payload/{seq}`, time `/payload/{ts}`)"
                    ));
                    inferred.message = Some(Message {
                        send,
                        interval,
                        ack,
                        delivery: Some(Delivery {
                            kind: "publish".into(),
                            matcher: kind_is("publish"),
                            sender: format!("/payload/{sender}"),
                            seq: format!("/payload/{seq}"),
                            ts: format!("/payload/{ts}"),
                        }),
                    });
                }
                None => {
                    inferred.missing.push(
                        "deliveries: no PUBLISH the broker sent carries a JSON payload with a sender, sequence and time, so loss, duplication and delivery latency are not measured".into(),
                    );
                    inferred.message = Some(Message {
                        send,
                        interval,
                        ack,
                        delivery: None,
                    });
                }
            }
        }
        _ => inferred.missing.push(
            "messages: the client published fewer than two messages, so no message flow was written (users only connect, subscribe and ping)".into(),
        ),
    }

    // Client packets left out, and what the broker sent that nothing above explains.
    let mut left: BTreeMap<&str, usize> = BTreeMap::new();
    for p in packets.iter().filter(|p| p.sent()) {
        if ["unsubscribe", "disconnect"].contains(&p.kind.as_str()) {
            *left.entry(p.kind.as_str()).or_default() += 1;
        }
    }
    for (kind, n) in left {
        inferred.missing.push(format!(
            "{} sent {n} times: left out (the fleet's users stay subscribed and connected)",
            kind.to_uppercase()
        ));
    }
    let mut rest: BTreeMap<&str, usize> = BTreeMap::new();
    for p in packets[first_publish.min(packets.len())..]
        .iter()
        .filter(|p| !p.sent() && !claimed.contains(&p.kind.as_str()))
    {
        *rest.entry(p.kind.as_str()).or_default() += 1;
    }
    inferred.ignore = rest
        .into_iter()
        .map(|(kind, seen)| (kind_is(kind), seen))
        .collect();
    Ok(inferred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::mqtt::encode;
    use base64::Engine;

    /// A binary frame of `bytes`, as a JSON-lines capture writes it.
    fn raw(dir: &str, at: f64, bytes: &[u8]) -> String {
        serde_json::json!({
            "dir": dir,
            "time": at,
            "binary": true,
            "data": base64::engine::general_purpose::STANDARD.encode(bytes),
        })
        .to_string()
    }

    /// A frame of the packet a scenario would write as `packet`.
    fn frame(dir: &str, at: f64, packet: &str) -> String {
        raw(dir, at, &encode(packet, Version::V311).expect("encodes"))
    }

    /// A browser's mqtt.js session: connect with a password (its header and body in two
    /// WebSocket messages, as mqtt.js writes them), subscribe to `chat/lobby`, publish JSON
    /// messages at QoS 1 (acked), hear a peer's, ping.
    fn session() -> String {
        let connect = encode(
            r#"{"type":"connect","client_id":"mqttjs_1a2b","keep_alive":2,"username":"alice","password":"pw-s3cret-1"}"#,
            Version::V311,
        )
        .expect("encodes");
        let mut lines = vec![
            r#"{"url":"ws://127.0.0.1:9/mqtt","headers":{"Sec-WebSocket-Protocol":"mqtt"}}"#
                .to_string(),
            raw("send", 0.0, &connect[..2]),
            raw("send", 0.0, &connect[2..]),
            // CONNACK, SUBACK and PINGRESP are no packets a scenario sends: the broker's bytes.
            raw("receive", 0.01, &[0x20, 2, 0, 0]),
            frame(
                "send",
                0.02,
                r#"{"type":"subscribe","pkid":4242,"topic":"chat/lobby","qos":1}"#,
            ),
            raw("receive", 0.03, &[0x90, 3, 0x10, 0x92, 1]),
        ];
        for n in 1..=5u64 {
            let at = 0.5 * n as f64;
            let ts = 1_764_000_000_000u64 + n * 500;
            let body = format!(
                r#"{{"id":"alice-{n}-x{n}","from":"alice","seq":{n},"ts":{ts},"body":"hi {n}"}}"#
            );
            lines.push(frame("send", at, &format!(r#"{{"type":"publish","topic":"chat/lobby","qos":1,"pkid":{},"payload":{body}}}"#, 4242 + n)));
            lines.push(frame(
                "receive",
                at + 0.01,
                &format!(r#"{{"type":"puback","pkid":{}}}"#, 4242 + n),
            ));
            let peer =
                format!(r#"{{"id":"bob-{n}-y","from":"bob","seq":{n},"ts":{ts},"body":"yo"}}"#);
            lines.push(frame("receive", at + 0.2, &format!(r#"{{"type":"publish","topic":"chat/lobby","qos":1,"pkid":{n},"payload":{peer}}}"#)));
            lines.push(frame(
                "send",
                at + 0.21,
                &format!(r#"{{"type":"puback","pkid":{n}}}"#),
            ));
            if n % 2 == 0 {
                lines.push(frame("send", at + 0.3, r#"{"type":"pingreq"}"#));
                lines.push(raw("receive", at + 0.31, &[0xd0, 0]));
            }
        }
        lines.join("\n")
    }

    #[test]
    fn an_mqtt_session_becomes_an_mqtt_scenario() {
        let recording =
            super::super::record(&session(), "mqtt.jsonl", &super::super::Options::default())
                .expect("as captured");
        let yaml = &recording.yaml;
        assert!(!yaml.contains("pw-s3cret-1"), "{yaml}");
        assert_eq!(recording.secrets.keys().collect::<Vec<_>>(), ["password"]);
        let plan = crate::config::Config::parse(yaml).expect("as captured");
        let spec = plan.scenario.spec();
        assert!(yaml.contains("  codec: mqtt\n"), "{yaml}");
        assert_eq!(
            spec.login[0].send.as_deref(),
            Some(
                r#"{"clean_session":true,"client_id":"{{user_id}}","keep_alive":2,"password":"{{password}}","type":"connect","username":"{{user_id}}"}"#
            )
        );
        assert_eq!(
            spec.login[1].send.as_deref(),
            Some(r#"{"pkid":4242,"qos":1,"topic":"chat/{{room}}","type":"subscribe"}"#)
        );
        let message = spec.message.expect("as captured");
        assert_eq!(
            message.send,
            r#"{"type":"publish","topic":"chat/{{room}}","qos":1,"pkid":{{seq}},"payload":{"body":"{{payload}}","from":"{{user_id}}","id":"{{msg_id}}","seq":{{seq}},"ts":{{ts}}}}"#
        );
        let ack = message.ack.expect("PUBACK");
        assert_eq!((ack.id, ack.seq), (None, None), "in order");
        let delivery = message.delivery.expect("the peer's");
        assert_eq!(delivery.sender, "/payload/from");
        assert_eq!(spec.replies.len(), 1, "QoS 1 deliveries are acked");
        assert_eq!(spec.heartbeat.expect("pings").send, r#"{"type":"pingreq"}"#);
        assert_eq!(plan.message_interval, std::time::Duration::from_millis(500));
        assert!(spec.ignore.is_empty(), "{yaml}");
    }

    /// Several packets in one message read as they are; a capture cut inside a packet, or
    /// with text frames, is named.
    #[test]
    fn each_side_is_one_stream_of_packets() {
        let ping = encode(r#"{"type":"pingreq"}"#, Version::V311).expect("encodes");
        let connect = encode(
            r#"{"type":"connect","client_id":"c","keep_alive":9}"#,
            Version::V311,
        )
        .expect("encodes");
        let capture = |lines: &[String]| {
            super::super::capture::read(&lines.join("\n"), 1).expect("JSON lines")
        };
        let both = capture(&[raw("send", 0.0, &[&connect[..], &ping[..]].concat())]);
        let (_, read) = packets(&both).expect("whole packets");
        assert!(read.cut.is_empty());
        let kinds: Vec<&str> = read.packets.iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(kinds, ["connect", "pingreq"]);
        let cut = capture(&[raw("send", 0.0, &connect[..connect.len() - 1])]);
        let (_, read) = packets(&cut).expect("what came before the cut");
        assert!(read.packets.is_empty());
        assert_eq!(
            read.cut,
            [format!(
                "the capture ends inside a packet sent: its last {} bytes are left out",
                connect.len() - 1
            )]
        );
        let text = capture(&[
            raw("send", 0.0, &connect),
            r#"{"dir":"receive","time":0.1,"data":"hello"}"#.to_string(),
        ]);
        let err = packets(&text).err().expect("a text frame");
        assert!(err.contains("frame 2 is text"), "{err}");
    }

    #[test]
    fn the_room_is_the_topic_level_the_messages_name() {
        assert_eq!(topic_template("a/lobby/b", Some("lobby")), "a/{{room}}/b");
        assert_eq!(topic_template("a/b", None), "a/{{room}}");
        assert_eq!(topic_template("solo", Some("x")), "{{room}}");
    }
}
