//! MQTT 3.1.1 and 5 packets as JSON, so a scenario describes MQTT with the same templates,
//! matchers and pointers as any JSON protocol. The packet codecs are rumqttc's `mqttbytes`
//! (v4 for 3.1.1, v5).
//!
//! Received packets read as (fields in this order):
//! `{"type":"connack","code":"success","session_present":false}`,
//! `{"type":"publish","topic":"room-0","qos":0,"pkid":0,"retain":false,"payload":...}` (the
//! payload as JSON if it is JSON, else as a string), `{"type":"puback","pkid":7}`,
//! `{"type":"suback","pkid":1,"codes":[0]}`, `{"type":"pingresp"}`, and so on.
//! Packets to send are written the same way: `{"type":"connect","client_id":...}`,
//! `{"type":"subscribe","pkid":1,"topic":...,"qos":0}` (MQTT 5: `"no_local":true` too),
//! `{"type":"publish",...}`, `{"type":"puback","pkid":...}`, `{"type":"pingreq"}`,
//! `{"type":"disconnect"}`. A packet id may be any positive number: it is folded into
//! 1..=65535.

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::framing::MAX_FRAME;

/// `codec: mqtt` (3.1.1) or `codec: {mqtt: {version: 5}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSpec {
    #[serde(default)]
    pub version: Version,
}

/// The MQTT codec: packets of `version`, framed as MQTT.
#[derive(Debug, Clone)]
pub struct Mqtt {
    pub version: Version,
}

impl super::Protocol for Mqtt {
    type Spec = MqttSpec;

    fn compile(spec: &MqttSpec, _: &std::path::Path) -> Result<Mqtt, String> {
        Ok(Mqtt {
            version: spec.version,
        })
    }

    fn framing(&self) -> Option<super::framing::Framing> {
        Some(super::framing::Framing::Mqtt)
    }

    fn decode<'a>(&self, frame: &'a [u8]) -> Option<std::borrow::Cow<'a, str>> {
        decode(frame, self.version)
            .ok()
            .map(std::borrow::Cow::Owned)
    }

    fn encode(&self, text: String) -> Result<tokio_tungstenite::tungstenite::Message, String> {
        encode(&text, self.version).map(tokio_tungstenite::tungstenite::Message::Binary)
    }
}

/// The protocol version spoken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    #[default]
    V311,
    V5,
}

impl Version {
    /// As a config writes it: `3.1.1` (or 4) and 5.
    pub fn parse(value: &serde_norway::Value) -> Result<Version, String> {
        match value {
            serde_norway::Value::Number(n) if n.as_u64() == Some(4) => Ok(Version::V311),
            serde_norway::Value::Number(n) if n.as_u64() == Some(5) => Ok(Version::V5),
            serde_norway::Value::String(s) if s == "3.1.1" || s == "4" => Ok(Version::V311),
            serde_norway::Value::String(s) if s == "5" || s == "5.0" => Ok(Version::V5),
            other => Err(format!(
                "mqtt version must be 3.1.1 or 5, got {}",
                serde_norway::to_string(other).unwrap_or_default().trim()
            )),
        }
    }

    /// The version a CONNECT packet asks for, by its protocol level (4 or 5), or what is wrong.
    pub fn of_connect(packet: &[u8]) -> Result<Version, String> {
        if packet.first().map(|t| t >> 4) != Some(1) {
            return Err("the first packet sent is not a CONNECT".into());
        }
        // The remaining length is 1 to 4 bytes, each with its top bit set but the last.
        let length_bytes = packet[1..]
            .iter()
            .take(4)
            .position(|b| b & 0x80 == 0)
            .ok_or("the CONNECT's remaining length is malformed")?
            + 1;
        let header = &packet[1 + length_bytes..];
        match header {
            [0, 4, b'M', b'Q', b'T', b'T', 4, ..] => Ok(Version::V311),
            [0, 4, b'M', b'Q', b'T', b'T', 5, ..] => Ok(Version::V5),
            [0, 4, b'M', b'Q', b'T', b'T', level, ..] => Err(format!(
                "the CONNECT asks for MQTT protocol level {level}; 4 (3.1.1) and 5 are read"
            )),
            [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', ..] => {
                Err("the CONNECT is MQTT 3.1 (MQIsdp); 3.1.1 and 5 are read".into())
            }
            _ => Err("the CONNECT does not name the MQTT protocol".into()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Version, D::Error> {
        Version::parse(&serde_norway::Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A packet to send, as a scenario writes it.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Outgoing {
    Connect {
        client_id: String,
        #[serde(default = "default_keep_alive")]
        keep_alive: u16,
        #[serde(default = "yes")]
        clean_session: bool,
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
    },
    Subscribe {
        pkid: u64,
        topic: String,
        #[serde(default)]
        qos: u8,
        /// MQTT 5: the broker does not send our own publishes back.
        #[serde(default)]
        no_local: bool,
    },
    Unsubscribe {
        pkid: u64,
        topic: String,
    },
    Publish {
        topic: String,
        #[serde(default)]
        qos: u8,
        #[serde(default)]
        pkid: u64,
        #[serde(default)]
        retain: bool,
        payload: Value,
    },
    Puback {
        pkid: u64,
    },
    Pingreq,
    Disconnect,
}

fn default_keep_alive() -> u16 {
    60
}
fn yes() -> bool {
    true
}

/// The packet `text` describes, encoded for `version`.
pub fn encode(text: &str, version: Version) -> Result<Bytes, String> {
    let outgoing: Outgoing = serde_json::from_str(text)
        .map_err(|err| format!("not an MQTT packet description: {err}"))?;
    let mut out = BytesMut::new();
    match version {
        Version::V311 => v311::encode(outgoing, &mut out),
        Version::V5 => v5::encode(outgoing, &mut out),
    }
    .map_err(|err| format!("encoding the MQTT {} packet failed: {err}", version.name()))?;
    Ok(out.freeze())
}

/// One whole packet from the server as JSON, or why it is not one.
pub fn decode(frame: &[u8], version: Version) -> Result<String, String> {
    let mut buffer = BytesMut::from(frame);
    let mut view = View(String::with_capacity(64 + frame.len()));
    read(&mut buffer, &mut view, version, false)?;
    Ok(view.0)
}

/// A whole packet of a capture, sent by either side (a client's CONNECT, SUBSCRIBE and
/// UNSUBSCRIBE read as a scenario writes them: the first filter's topic and QoS), as JSON.
pub fn decode_captured(packet: &[u8], version: Version) -> Result<String, String> {
    let mut buffer = BytesMut::from(packet);
    let mut view = View(String::with_capacity(64 + packet.len()));
    read(&mut buffer, &mut view, version, true)?;
    Ok(view.0)
}

fn read(
    buffer: &mut BytesMut,
    view: &mut View,
    version: Version,
    client: bool,
) -> Result<(), String> {
    match version {
        Version::V311 => v311::decode(buffer, view, client),
        Version::V5 => v5::decode(buffer, view, client),
    }
}

/// The JSON view of a received packet, written field by field in a fixed order (so a regex
/// over it, as the built-in's reply rule is, can rely on the order).
struct View(String);

impl View {
    fn connack(&mut self, code: impl std::fmt::Debug, session_present: bool) {
        let _ = write!(
            self.0,
            r#"{{"type":"connack","code":"{}","session_present":{session_present}}}"#,
            snake_case(&format!("{code:?}"))
        );
    }

    fn publish(&mut self, topic: &[u8], qos: u8, pkid: u16, retain: bool, payload: &[u8]) {
        let topic = Value::String(String::from_utf8_lossy(topic).into_owned());
        let _ = write!(
            self.0,
            r#"{{"type":"publish","topic":{topic},"qos":{qos},"pkid":{pkid},"retain":{retain},"payload":"#
        );
        match std::str::from_utf8(payload) {
            Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
                self.0.push_str(text)
            }
            _ => self.0.push_str(
                &Value::String(String::from_utf8_lossy(payload).into_owned()).to_string(),
            ),
        }
        self.0.push('}');
    }

    fn ack(&mut self, kind: &str, pkid: u16) {
        let _ = write!(self.0, r#"{{"type":"{kind}","pkid":{pkid}}}"#);
    }

    fn suback(&mut self, pkid: u16, codes: impl Iterator<Item = u8>) {
        let codes: Vec<String> = codes.map(|c| c.to_string()).collect();
        let _ = write!(
            self.0,
            r#"{{"type":"suback","pkid":{pkid},"codes":[{}]}}"#,
            codes.join(",")
        );
    }

    fn connect(
        &mut self,
        client_id: &str,
        keep_alive: u16,
        clean: bool,
        login: Option<(&str, &str)>,
    ) {
        let (username, password) = login.unwrap_or_default();
        let _ = write!(
            self.0,
            r#"{{"type":"connect","client_id":{},"keep_alive":{keep_alive},"clean_session":{clean},"username":{},"password":{}}}"#,
            Value::from(client_id),
            Value::from(username),
            Value::from(password)
        );
    }

    fn subscribe(&mut self, pkid: u16, first: Option<(&str, u8)>) {
        let (topic, qos) = first.unwrap_or_default();
        let _ = write!(
            self.0,
            r#"{{"type":"subscribe","pkid":{pkid},"topic":{},"qos":{qos}}}"#,
            Value::from(topic)
        );
    }

    fn unsubscribe(&mut self, pkid: u16, first: Option<&str>) {
        let _ = write!(
            self.0,
            r#"{{"type":"unsubscribe","pkid":{pkid},"topic":{}}}"#,
            Value::from(first.unwrap_or_default())
        );
    }

    fn bare(&mut self, kind: &str) {
        let _ = write!(self.0, r#"{{"type":"{kind}"}}"#);
    }
}

/// `NotAuthorized` → `not_authorized`.
fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn check_qos(qos: u8) -> Result<u8, String> {
    (qos <= 2)
        .then_some(qos)
        .ok_or_else(|| format!("qos must be 0, 1 or 2, got {qos}"))
}

/// Any positive number, folded into MQTT's 1..=65535 (so `{{seq}}` serves as a packet id).
fn packet_id(n: u64) -> Result<u16, String> {
    if n == 0 {
        return Err("a packet id (pkid) must be at least 1".into());
    }
    Ok(((n - 1) % 65_535 + 1) as u16)
}

fn payload_bytes(payload: Value) -> Vec<u8> {
    match payload {
        Value::String(text) => text.into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

mod v311 {
    use bytes::BytesMut;
    use rumqttc::mqttbytes::v4::{
        Connect, Packet, PubAck, Publish, Subscribe, SubscribeReasonCode, Unsubscribe,
    };

    use super::{MAX_FRAME, Outgoing, View, check_qos, packet_id, payload_bytes};

    fn qos(n: u8) -> Result<rumqttc::mqttbytes::QoS, String> {
        rumqttc::mqttbytes::qos(check_qos(n)?).map_err(|err| err.to_string())
    }

    pub(super) fn encode(outgoing: Outgoing, out: &mut BytesMut) -> Result<(), String> {
        let packet = match outgoing {
            Outgoing::Connect {
                client_id,
                keep_alive,
                clean_session,
                username,
                password,
            } => {
                let mut connect = Connect::new(client_id);
                connect.keep_alive = keep_alive;
                connect.clean_session = clean_session;
                if !username.is_empty() || !password.is_empty() {
                    connect.set_login(username, password);
                }
                Packet::Connect(connect)
            }
            Outgoing::Subscribe {
                pkid,
                topic,
                qos: level,
                no_local,
            } => {
                if no_local {
                    return Err("no_local needs MQTT 5 (codec: {mqtt: {version: 5}})".into());
                }
                let mut subscribe = Subscribe::new(topic, qos(level)?);
                subscribe.pkid = packet_id(pkid)?;
                Packet::Subscribe(subscribe)
            }
            Outgoing::Unsubscribe { pkid, topic } => {
                let mut unsubscribe = Unsubscribe::new(topic);
                unsubscribe.pkid = packet_id(pkid)?;
                Packet::Unsubscribe(unsubscribe)
            }
            Outgoing::Publish {
                topic,
                qos: level,
                pkid,
                retain,
                payload,
            } => {
                let mut publish = Publish::new(topic, qos(level)?, payload_bytes(payload));
                publish.retain = retain;
                if level > 0 {
                    publish.pkid = packet_id(pkid)?;
                }
                Packet::Publish(publish)
            }
            Outgoing::Puback { pkid } => Packet::PubAck(PubAck::new(packet_id(pkid)?)),
            Outgoing::Pingreq => Packet::PingReq,
            Outgoing::Disconnect => Packet::Disconnect,
        };
        packet
            .write(out, MAX_FRAME)
            .map(drop)
            .map_err(|err| err.to_string())
    }

    pub(super) fn decode(
        buffer: &mut BytesMut,
        view: &mut View,
        client: bool,
    ) -> Result<(), String> {
        match Packet::read(buffer, MAX_FRAME).map_err(|err| err.to_string())? {
            Packet::ConnAck(ack) => view.connack(ack.code, ack.session_present),
            Packet::Publish(p) => view.publish(
                p.topic.as_bytes(),
                p.qos as u8,
                p.pkid,
                p.retain,
                &p.payload,
            ),
            Packet::PubAck(ack) => view.ack("puback", ack.pkid),
            Packet::PubRec(ack) => view.ack("pubrec", ack.pkid),
            Packet::PubRel(ack) => view.ack("pubrel", ack.pkid),
            Packet::PubComp(ack) => view.ack("pubcomp", ack.pkid),
            Packet::UnsubAck(ack) => view.ack("unsuback", ack.pkid),
            Packet::SubAck(ack) => view.suback(
                ack.pkid,
                ack.return_codes.iter().map(|code| match code {
                    SubscribeReasonCode::Success(qos) => *qos as u8,
                    SubscribeReasonCode::Failure => 0x80,
                }),
            ),
            Packet::PingResp => view.bare("pingresp"),
            Packet::PingReq => view.bare("pingreq"),
            Packet::Disconnect => view.bare("disconnect"),
            Packet::Connect(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) if !client => {
                return Err("a client packet, sent by the server".into());
            }
            Packet::Connect(c) => view.connect(
                &c.client_id,
                c.keep_alive,
                c.clean_session,
                c.login
                    .as_ref()
                    .map(|l| (l.username.as_str(), l.password.as_str())),
            ),
            Packet::Subscribe(s) => view.subscribe(
                s.pkid,
                s.filters.first().map(|f| (f.path.as_str(), f.qos as u8)),
            ),
            Packet::Unsubscribe(u) => {
                view.unsubscribe(u.pkid, u.topics.first().map(String::as_str))
            }
        }
        Ok(())
    }
}

mod v5 {
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5::{
        Connect, Disconnect, DisconnectReasonCode, Filter, Login, Packet, PingReq, PubAck,
        PubAckReason, Publish, Subscribe, SubscribeReasonCode, Unsubscribe,
    };

    use super::{Outgoing, View, check_qos, packet_id, payload_bytes};

    fn qos(n: u8) -> Result<rumqttc::v5::mqttbytes::QoS, String> {
        rumqttc::v5::mqttbytes::qos(check_qos(n)?).ok_or_else(|| format!("qos {n}"))
    }

    const MAX: Option<u32> = Some(super::MAX_FRAME as u32);

    pub(super) fn encode(outgoing: Outgoing, out: &mut BytesMut) -> Result<(), String> {
        let packet = match outgoing {
            Outgoing::Connect {
                client_id,
                keep_alive,
                clean_session,
                username,
                password,
            } => {
                let connect = Connect {
                    keep_alive,
                    client_id,
                    clean_start: clean_session,
                    properties: None,
                };
                let login = (!username.is_empty() || !password.is_empty())
                    .then(|| Login::new(username, password));
                Packet::Connect(connect, None, login)
            }
            Outgoing::Subscribe {
                pkid,
                topic,
                qos: level,
                no_local,
            } => {
                let mut filter = Filter::new(topic, qos(level)?);
                filter.nolocal = no_local;
                let mut subscribe = Subscribe::new(filter, None);
                subscribe.pkid = packet_id(pkid)?;
                Packet::Subscribe(subscribe)
            }
            Outgoing::Unsubscribe { pkid, topic } => {
                let mut unsubscribe = Unsubscribe::new(topic, None);
                unsubscribe.pkid = packet_id(pkid)?;
                Packet::Unsubscribe(unsubscribe)
            }
            Outgoing::Publish {
                topic,
                qos: level,
                pkid,
                retain,
                payload,
            } => {
                let mut publish = Publish::new(topic, qos(level)?, payload_bytes(payload), None);
                publish.retain = retain;
                if level > 0 {
                    publish.pkid = packet_id(pkid)?;
                }
                Packet::Publish(publish)
            }
            Outgoing::Puback { pkid } => Packet::PubAck(PubAck {
                pkid: packet_id(pkid)?,
                reason: PubAckReason::Success,
                properties: None,
            }),
            Outgoing::Pingreq => Packet::PingReq(PingReq),
            Outgoing::Disconnect => {
                Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
            }
        };
        packet
            .write(out, MAX)
            .map(drop)
            .map_err(|err| err.to_string())
    }

    pub(super) fn decode(
        buffer: &mut BytesMut,
        view: &mut View,
        client: bool,
    ) -> Result<(), String> {
        match Packet::read(buffer, MAX).map_err(|err| err.to_string())? {
            Packet::ConnAck(ack) => view.connack(ack.code, ack.session_present),
            Packet::Publish(p) => view.publish(&p.topic, p.qos as u8, p.pkid, p.retain, &p.payload),
            Packet::PubAck(ack) => view.ack("puback", ack.pkid),
            Packet::PubRec(ack) => view.ack("pubrec", ack.pkid),
            Packet::PubRel(ack) => view.ack("pubrel", ack.pkid),
            Packet::PubComp(ack) => view.ack("pubcomp", ack.pkid),
            Packet::UnsubAck(ack) => view.ack("unsuback", ack.pkid),
            Packet::SubAck(ack) => view.suback(
                ack.pkid,
                ack.return_codes.iter().map(|code| match code {
                    SubscribeReasonCode::Success(qos) => *qos as u8,
                    _ => 0x80,
                }),
            ),
            Packet::PingResp(_) => view.bare("pingresp"),
            Packet::PingReq(_) => view.bare("pingreq"),
            Packet::Disconnect(_) => view.bare("disconnect"),
            Packet::Auth(_) => view.bare("auth"),
            Packet::Connect(..) | Packet::Subscribe(_) | Packet::Unsubscribe(_) if !client => {
                return Err("a client packet, sent by the server".into());
            }
            Packet::Connect(c, _, login) => view.connect(
                &c.client_id,
                c.keep_alive,
                c.clean_start,
                login
                    .as_ref()
                    .map(|l| (l.username.as_str(), l.password.as_str())),
            ),
            Packet::Subscribe(s) => view.subscribe(
                s.pkid,
                s.filters.first().map(|f| (f.path.as_str(), f.qos as u8)),
            ),
            Packet::Unsubscribe(u) => {
                view.unsubscribe(u.pkid, u.filters.first().map(String::as_str))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet, Publish};

    fn read_back(bytes: &Bytes) -> Packet {
        Packet::read(&mut BytesMut::from(&bytes[..]), MAX_FRAME).expect("a packet")
    }

    #[test]
    fn described_packets_encode_to_mqtt() {
        let connect = encode(
            r#"{"type":"connect","client_id":"u1","keep_alive":30,"username":"u1","password":"pw"}"#,
            Version::V311,
        )
        .expect("encodes");
        let Packet::Connect(connect) = read_back(&connect) else {
            panic!("a CONNECT");
        };
        assert_eq!((connect.client_id.as_str(), connect.keep_alive), ("u1", 30));
        assert_eq!(connect.login.expect("login").username, "u1");
        let publish = encode(
            r#"{"type":"publish","topic":"room-0","qos":1,"pkid":65536,"payload":{"seq":3}}"#,
            Version::V311,
        )
        .expect("encodes");
        let Packet::Publish(publish) = read_back(&publish) else {
            panic!("a PUBLISH");
        };
        assert_eq!(publish.pkid, 1, "folded into 1..=65535");
        assert_eq!(&publish.payload[..], br#"{"seq":3}"#);
        assert!(matches!(
            read_back(&encode(r#"{"type":"pingreq"}"#, Version::V311).expect("encodes")),
            Packet::PingReq
        ));
    }

    #[test]
    fn received_packets_read_as_json() {
        let mut wire = BytesMut::new();
        let mut publish = Publish::new(
            "room-0",
            QoS::AtLeastOnce,
            br#"{"from":"u2","seq":9}"#.to_vec(),
        );
        publish.pkid = 4;
        Packet::Publish(publish)
            .write(&mut wire, MAX_FRAME)
            .expect("writes");
        assert_eq!(
            decode(&wire, Version::V311).expect("decodes"),
            r#"{"type":"publish","topic":"room-0","qos":1,"pkid":4,"retain":false,"payload":{"from":"u2","seq":9}}"#
        );
        wire.clear();
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, false))
            .write(&mut wire, MAX_FRAME)
            .expect("writes");
        assert_eq!(
            decode(&wire, Version::V311).expect("decodes"),
            r#"{"type":"connack","code":"not_authorized","session_present":false}"#
        );
        wire.clear();
        Packet::Publish(Publish::new(
            "t",
            QoS::AtMostOnce,
            b"plain \"text\"".to_vec(),
        ))
        .write(&mut wire, MAX_FRAME)
        .expect("writes");
        let text = decode(&wire, Version::V311).expect("decodes");
        let value: Value = serde_json::from_str(&text).expect("always JSON");
        assert_eq!(value["payload"], "plain \"text\"");
    }

    /// What a capture holds reads back as a scenario writes it, client packets too; a server
    /// refuses a client's packet; the version is the CONNECT's protocol level.
    #[test]
    fn captured_frames_read_as_the_packets_a_scenario_writes() {
        let described = [
            r#"{"type":"connect","client_id":"u1","keep_alive":30,"clean_session":true,"username":"al","password":"pw"}"#,
            r#"{"type":"subscribe","pkid":2,"topic":"chat/lobby","qos":1}"#,
            r#"{"type":"unsubscribe","pkid":3,"topic":"chat/lobby"}"#,
            r#"{"type":"pingreq"}"#,
        ];
        for version in [Version::V311, Version::V5] {
            for text in described {
                let packet = encode(text, version).expect("encodes");
                assert_eq!(
                    decode_captured(&packet, version).as_deref(),
                    Ok(text),
                    "MQTT {}",
                    version.name()
                );
            }
            let connect = encode(described[0], version).expect("encodes");
            assert!(decode(&connect, version).is_err(), "not from a server");
            assert_eq!(Version::of_connect(&connect), Ok(version), "its level");
        }
        let mut mqtt_3_1 = encode(described[0], Version::V311)
            .expect("encodes")
            .to_vec();
        mqtt_3_1[8] = 3;
        assert!(Version::of_connect(&mqtt_3_1).is_err_and(|e| e.contains("level 3")));
        assert!(
            Version::of_connect(&[0x30, 0]).is_err(),
            "a PUBLISH is no CONNECT"
        );
        assert!(
            Version::of_connect(&[0x10, 0xff, 0xff]).is_err(),
            "cut short"
        );
        assert!(
            decode_captured(&[0x30, 0x7f], Version::V311).is_err(),
            "cut short"
        );
    }

    #[test]
    fn mqtt_5_packets_round_trip_with_no_local() {
        use rumqttc::v5::mqttbytes::v5::Packet as Packet5;
        let subscribe = encode(
            r#"{"type":"subscribe","pkid":1,"topic":"room-0","qos":1,"no_local":true}"#,
            Version::V5,
        )
        .expect("encodes");
        let Packet5::Subscribe(subscribe) =
            Packet5::read(&mut BytesMut::from(&subscribe[..]), None).expect("a packet")
        else {
            panic!("a SUBSCRIBE");
        };
        assert!(subscribe.filters[0].nolocal);
        let publish = encode(
            r#"{"type":"publish","topic":"room-0","qos":1,"pkid":2,"payload":{"seq":1}}"#,
            Version::V5,
        )
        .expect("encodes");
        // A broker's copy of it reads as the 3.1.1 view does.
        assert_eq!(
            decode(&publish, Version::V5).expect("decodes"),
            r#"{"type":"publish","topic":"room-0","qos":1,"pkid":2,"retain":false,"payload":{"seq":1}}"#
        );
        assert!(
            encode(
                r#"{"type":"subscribe","pkid":1,"topic":"t","no_local":true}"#,
                Version::V311
            )
            .expect_err("3.1.1 has no no_local")
            .contains("MQTT 5")
        );
    }

    #[test]
    fn mistakes_are_named() {
        let v4 = |text| encode(text, Version::V311);
        assert!(
            v4(r#"{"type":"publish","topic":"t","qos":3,"payload":""}"#)
                .expect_err("qos 3")
                .contains("qos must be 0, 1 or 2")
        );
        assert!(
            v4(r#"{"type":"publish","topic":"t","qos":1,"payload":""}"#)
                .expect_err("no pkid")
                .contains("pkid")
        );
        assert!(
            v4(r#"{"type":"hello"}"#)
                .expect_err("no such packet")
                .contains("not an MQTT packet description")
        );
        assert!(
            decode(&[0xf0, 0x00], Version::V311).is_err(),
            "reserved packet type 15"
        );
    }
}
