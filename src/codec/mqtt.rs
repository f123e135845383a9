//! MQTT 3.1.1 packets as JSON, so a scenario describes MQTT with the same templates, matchers
//! and pointers as any JSON protocol. The packet codec is rumqttc's `mqttbytes`.
//!
//! Received packets read as (fields in this order):
//! `{"type":"connack","code":"success","session_present":false}`,
//! `{"type":"publish","topic":"room-0","qos":0,"pkid":0,"retain":false,"payload":...}` (the
//! payload as JSON if it is JSON, else as a string), `{"type":"puback","pkid":7}`,
//! `{"type":"suback","pkid":1,"codes":[0]}`, `{"type":"pingresp"}`, and so on.
//! Packets to send are written the same way: `{"type":"connect","client_id":...}`,
//! `{"type":"subscribe","pkid":1,"topic":...,"qos":0}`, `{"type":"publish",...}`,
//! `{"type":"puback","pkid":...}`, `{"type":"pingreq"}`, `{"type":"disconnect"}`. A packet id
//! may be any positive number: it is folded into 1..=65535.

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, Subscribe, SubscribeReasonCode,
    Unsubscribe,
};
use serde::Deserialize;
use serde_json::Value;

use super::framing::MAX_FRAME;

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

/// The packet `text` describes, encoded.
pub fn encode(text: &str) -> Result<Bytes, String> {
    let outgoing: Outgoing = serde_json::from_str(text)
        .map_err(|err| format!("not an MQTT packet description: {err}"))?;
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
        Outgoing::Subscribe { pkid, topic, qos } => {
            let mut subscribe = Subscribe::new(topic, qos_of(qos)?);
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
            qos,
            pkid,
            retain,
            payload,
        } => {
            let payload = match payload {
                Value::String(text) => text.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            let qos = qos_of(qos)?;
            let mut publish = Publish::new(topic, qos, payload);
            publish.retain = retain;
            if qos != QoS::AtMostOnce {
                publish.pkid = packet_id(pkid)?;
            }
            Packet::Publish(publish)
        }
        Outgoing::Puback { pkid } => Packet::PubAck(PubAck::new(packet_id(pkid)?)),
        Outgoing::Pingreq => Packet::PingReq,
        Outgoing::Disconnect => Packet::Disconnect,
    };
    let mut out = BytesMut::with_capacity(packet.size());
    packet
        .write(&mut out, MAX_FRAME)
        .map_err(|err| format!("encoding the MQTT packet failed: {err}"))?;
    Ok(out.freeze())
}

/// One whole packet as JSON, or why it is not one.
pub fn decode(frame: &[u8]) -> Result<String, String> {
    let mut buffer = BytesMut::from(frame);
    let packet = Packet::read(&mut buffer, MAX_FRAME).map_err(|err| err.to_string())?;
    let mut out = String::with_capacity(64);
    let text = |out: &mut String, kind: &str, pkid: u16| {
        let _ = write!(out, r#"{{"type":"{kind}","pkid":{pkid}}}"#);
    };
    match packet {
        Packet::ConnAck(ConnAck {
            session_present,
            code,
        }) => {
            let _ = write!(
                out,
                r#"{{"type":"connack","code":"{}","session_present":{session_present}}}"#,
                return_code(code)
            );
        }
        Packet::Publish(publish) => {
            let _ = write!(
                out,
                r#"{{"type":"publish","topic":{},"qos":{},"pkid":{},"retain":{},"payload":"#,
                Value::String(publish.topic),
                publish.qos as u8,
                publish.pkid,
                publish.retain
            );
            match std::str::from_utf8(&publish.payload) {
                Ok(payload) if serde_json::from_str::<serde::de::IgnoredAny>(payload).is_ok() => {
                    out.push_str(payload)
                }
                Ok(payload) => out.push_str(&Value::String(payload.to_string()).to_string()),
                Err(_) => out.push_str(
                    &Value::String(String::from_utf8_lossy(&publish.payload).into_owned())
                        .to_string(),
                ),
            }
            out.push('}');
        }
        Packet::PubAck(ack) => text(&mut out, "puback", ack.pkid),
        Packet::PubRec(ack) => text(&mut out, "pubrec", ack.pkid),
        Packet::PubRel(ack) => text(&mut out, "pubrel", ack.pkid),
        Packet::PubComp(ack) => text(&mut out, "pubcomp", ack.pkid),
        Packet::UnsubAck(ack) => text(&mut out, "unsuback", ack.pkid),
        Packet::SubAck(ack) => {
            let codes: Vec<String> = ack
                .return_codes
                .iter()
                .map(|code| match code {
                    SubscribeReasonCode::Success(qos) => (*qos as u8).to_string(),
                    SubscribeReasonCode::Failure => "128".into(),
                })
                .collect();
            let _ = write!(
                out,
                r#"{{"type":"suback","pkid":{},"codes":[{}]}}"#,
                ack.pkid,
                codes.join(",")
            );
        }
        Packet::PingResp => out.push_str(r#"{"type":"pingresp"}"#),
        Packet::PingReq => out.push_str(r#"{"type":"pingreq"}"#),
        Packet::Disconnect => out.push_str(r#"{"type":"disconnect"}"#),
        Packet::Connect(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => {
            return Err("a client packet, sent by the server".into());
        }
    }
    Ok(out)
}

fn return_code(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Success => "success",
        ConnectReturnCode::RefusedProtocolVersion => "refused_protocol_version",
        ConnectReturnCode::BadClientId => "bad_client_id",
        ConnectReturnCode::ServiceUnavailable => "service_unavailable",
        ConnectReturnCode::BadUserNamePassword => "bad_user_name_or_password",
        ConnectReturnCode::NotAuthorized => "not_authorized",
    }
}

fn qos_of(qos: u8) -> Result<QoS, String> {
    rumqttc::mqttbytes::qos(qos).map_err(|_| format!("qos must be 0, 1 or 2, got {qos}"))
}

/// Any positive number, folded into MQTT's 1..=65535 (so `{{seq}}` serves as a packet id).
fn packet_id(n: u64) -> Result<u16, String> {
    if n == 0 {
        return Err("a packet id (pkid) must be at least 1".into());
    }
    Ok(((n - 1) % 65_535 + 1) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_back(bytes: &Bytes) -> Packet {
        Packet::read(&mut BytesMut::from(&bytes[..]), MAX_FRAME).expect("a packet")
    }

    #[test]
    fn described_packets_encode_to_mqtt() {
        let connect = encode(
            r#"{"type":"connect","client_id":"u1","keep_alive":30,"username":"u1","password":"pw"}"#,
        )
        .expect("encodes");
        let Packet::Connect(connect) = read_back(&connect) else {
            panic!("a CONNECT");
        };
        assert_eq!((connect.client_id.as_str(), connect.keep_alive), ("u1", 30));
        assert_eq!(connect.login.expect("login").username, "u1");
        let publish = encode(
            r#"{"type":"publish","topic":"room-0","qos":1,"pkid":65536,"payload":{"seq":3}}"#,
        )
        .expect("encodes");
        let Packet::Publish(publish) = read_back(&publish) else {
            panic!("a PUBLISH");
        };
        assert_eq!(publish.pkid, 1, "folded into 1..=65535");
        assert_eq!(&publish.payload[..], br#"{"seq":3}"#);
        assert!(matches!(
            read_back(&encode(r#"{"type":"pingreq"}"#).expect("encodes")),
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
            decode(&wire).expect("decodes"),
            r#"{"type":"publish","topic":"room-0","qos":1,"pkid":4,"retain":false,"payload":{"from":"u2","seq":9}}"#
        );
        wire.clear();
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, false))
            .write(&mut wire, MAX_FRAME)
            .expect("writes");
        assert_eq!(
            decode(&wire).expect("decodes"),
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
        let text = decode(&wire).expect("decodes");
        let value: Value = serde_json::from_str(&text).expect("always JSON");
        assert_eq!(value["payload"], "plain \"text\"");
    }

    #[test]
    fn mistakes_are_named() {
        assert!(
            encode(r#"{"type":"publish","topic":"t","qos":3,"payload":""}"#)
                .expect_err("qos 3")
                .contains("qos must be 0, 1 or 2")
        );
        assert!(
            encode(r#"{"type":"publish","topic":"t","qos":1,"payload":""}"#)
                .expect_err("no pkid")
                .contains("pkid")
        );
        assert!(
            encode(r#"{"type":"hello"}"#)
                .expect_err("no such packet")
                .contains("not an MQTT packet description")
        );
        assert!(decode(&[0xf0, 0x00]).is_err(), "reserved packet type 15");
    }
}
