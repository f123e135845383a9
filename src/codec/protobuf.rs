//! Protobuf in binary frames, described by the user's `.proto` files, compiled at start
//! without `protoc` (protox) and read and written through prost-reflect: a frame reads as the
//! JSON of its message (proto field names, 64-bit integers as numbers), and a send template is
//! that JSON, encoded. One message type is every frame — typically an envelope whose `oneof`
//! says what the frame is (`{"ack":{"id":"u1-3"}}`), so matchers test `/ack`. Or an envelope
//! with a type field and a `bytes` payload (`by_type`): the payload is read and written as the
//! message its type names (`{"type":"ack","body":{"id":"u1-3"}}`).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use serde::{Deserialize, Serialize};

/// `codec: {protobuf: {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtobufSpec {
    /// The `.proto` files (relative to the config file).
    pub files: Vec<PathBuf>,
    /// Import paths (relative to the config file); default: the directories of `files`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<PathBuf>,
    /// The fully qualified message type of every frame, e.g. `chat.Envelope`.
    pub message: String,
    /// An envelope whose type field names the message in its `bytes` payload field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_type: Option<ByTypeSpec>,
}

/// `by_type: {field: type, payload: body, types: {ack: chat.Ack, ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ByTypeSpec {
    /// The envelope's field that says the type (a string, number or enum).
    pub field: String,
    /// The envelope's `bytes` field that holds the message.
    pub payload: String,
    /// Type value -> fully qualified message name.
    pub types: std::collections::BTreeMap<String, String>,
}

/// A compiled message type.
#[derive(Debug, Clone)]
pub struct Protobuf {
    message: MessageDescriptor,
    by_type: Option<ByType>,
}

#[derive(Debug, Clone)]
struct ByType {
    field: String,
    payload: String,
    types: std::collections::BTreeMap<String, MessageDescriptor>,
}

const READ: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .stringify_64_bit_integers(false);

impl super::Protocol for Protobuf {
    type Spec = ProtobufSpec;

    fn compile(spec: &ProtobufSpec, base_dir: &Path) -> Result<Protobuf, String> {
        Protobuf::compile(spec, base_dir)
    }

    fn decode<'a>(&self, frame: &'a [u8]) -> Option<std::borrow::Cow<'a, str>> {
        Protobuf::decode(self, frame)
            .ok()
            .map(std::borrow::Cow::Owned)
    }

    fn encode(&self, text: String) -> Result<tokio_tungstenite::tungstenite::Message, String> {
        Protobuf::encode(self, &text).map(tokio_tungstenite::tungstenite::Message::Binary)
    }
}

impl Protobuf {
    pub fn compile(spec: &ProtobufSpec, base_dir: &Path) -> Result<Protobuf, String> {
        let files: Vec<PathBuf> = spec.files.iter().map(|f| base_dir.join(f)).collect();
        if files.is_empty() {
            return Err("protobuf: `files` lists no .proto file".into());
        }
        let mut include: Vec<PathBuf> = spec.include.iter().map(|d| base_dir.join(d)).collect();
        if include.is_empty() {
            include = files
                .iter()
                .filter_map(|f| f.parent().map(Path::to_path_buf))
                .collect();
            include.dedup();
        }
        let set = protox::compile(&files, &include)
            .map_err(|err| format!("protobuf: compiling the .proto files failed: {err}"))?;
        let pool = DescriptorPool::from_file_descriptor_set(set)
            .map_err(|err| format!("protobuf: {err}"))?;
        let lookup = |name: &str| {
            pool.get_message_by_name(name).ok_or_else(|| {
                let known: Vec<String> = pool
                    .all_messages()
                    .map(|m| m.full_name().to_string())
                    .collect();
                format!(
                    "protobuf: no message `{name}` in the .proto files; they define {}",
                    known.join(", ")
                )
            })
        };
        let message = lookup(&spec.message)?;
        let by_type = spec
            .by_type
            .as_ref()
            .map(|by| {
                for field in [&by.field, &by.payload] {
                    if message.get_field_by_name(field).is_none() {
                        return Err(format!(
                            "protobuf.by_type: `{}` has no field `{field}`",
                            spec.message
                        ));
                    }
                }
                Ok(ByType {
                    field: by.field.clone(),
                    payload: by.payload.clone(),
                    types: by
                        .types
                        .iter()
                        .map(|(value, name)| Ok((value.clone(), lookup(name)?)))
                        .collect::<Result<_, String>>()?,
                })
            })
            .transpose()?;
        Ok(Protobuf { message, by_type })
    }

    /// A frame as the JSON of its message, or why it is not one.
    pub fn decode(&self, frame: &[u8]) -> Result<String, String> {
        let message =
            DynamicMessage::decode(self.message.clone(), frame).map_err(|err| err.to_string())?;
        let Some(by) = &self.by_type else {
            let mut out = Vec::with_capacity(frame.len() * 2 + 16);
            message
                .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &READ)
                .map_err(|err| err.to_string())?;
            return String::from_utf8(out).map_err(|err| err.to_string());
        };
        let mut view = to_value(&message)?;
        let kind = type_name(&view[by.field.as_str()]);
        let inner = by
            .types
            .get(&kind)
            .ok_or_else(|| format!("unknown type `{kind}`"))?;
        let payload = message
            .get_field_by_name(&by.payload)
            .and_then(|value| value.as_bytes().cloned())
            .unwrap_or_default();
        let inner =
            DynamicMessage::decode(inner.clone(), payload).map_err(|err| err.to_string())?;
        view[by.payload.as_str()] = to_value(&inner)?;
        Ok(view.to_string())
    }

    /// The message `text` (its JSON) describes, encoded.
    pub fn encode(&self, text: &str) -> Result<Bytes, String> {
        let Some(by) = &self.by_type else {
            let mut json = serde_json::Deserializer::from_str(text);
            let message = from_json(&self.message, &mut json)?;
            json.end()
                .map_err(|err| format!("trailing text after the JSON: {err}"))?;
            return Ok(message.encode_to_vec().into());
        };
        let mut view: serde_json::Value =
            serde_json::from_str(text).map_err(|err| format!("not JSON: {err}"))?;
        let kind = type_name(&view[by.field.as_str()]);
        let inner = by.types.get(&kind).ok_or_else(|| {
            let known: Vec<&str> = by.types.keys().map(String::as_str).collect();
            format!(
                "`{}` is `{kind}`, not one of {}",
                by.field,
                known.join(", ")
            )
        })?;
        let payload = from_json(inner, view[by.payload.as_str()].take())?.encode_to_vec();
        // proto3 JSON writes bytes as base64.
        view[by.payload.as_str()] =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, payload).into();
        Ok(from_json(&self.message, view)?.encode_to_vec().into())
    }
}

fn to_value(message: &DynamicMessage) -> Result<serde_json::Value, String> {
    message
        .serialize_with_options(serde_json::value::Serializer, &READ)
        .map_err(|err| err.to_string())
}

fn from_json<'de, D: serde::Deserializer<'de>>(
    descriptor: &MessageDescriptor,
    json: D,
) -> Result<DynamicMessage, String>
where
    D::Error: std::fmt::Display,
{
    DynamicMessage::deserialize_with_options(descriptor.clone(), json, &DeserializeOptions::new())
        .map_err(|err| format!("not a {} in JSON: {err}", descriptor.full_name()))
}

/// A type field's value as the key of `types`: strings and enum names as they are, numbers in
/// decimal.
fn type_name(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = r#"
syntax = "proto3";
package chat;
message Msg { string room = 1; string id = 2; uint64 seq = 3; uint64 ts = 4; string from = 6; }
message Ack { string id = 1; }
message Envelope { oneof body { Msg msg = 1; Ack ack = 2; Msg deliver = 3; } }
"#;

    fn chat() -> (Protobuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("chat.proto"), PROTO).expect("write");
        let spec: ProtobufSpec =
            serde_norway::from_str("{files: [chat.proto], message: chat.Envelope}").expect("spec");
        (Protobuf::compile(&spec, dir.path()).expect("compiles"), dir)
    }

    #[test]
    fn json_round_trips_through_the_wire_format() {
        let (codec, _dir) = chat();
        let frame = codec
            .encode(r#"{"deliver":{"room":"room-0","from":"u2","seq":7,"ts":1700000000000000}}"#)
            .expect("encodes");
        assert_eq!(
            codec.decode(&frame).expect("decodes"),
            r#"{"deliver":{"room":"room-0","seq":7,"ts":1700000000000000,"from":"u2"}}"#
        );
    }

    #[test]
    fn a_type_field_names_the_payload_message() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("frame.proto"),
            "syntax = \"proto3\";\npackage wire;\nmessage Frame { string type = 1; bytes body = 2; }\n\
             message Ack { string id = 1; }\nmessage Msg { uint64 seq = 1; string from = 2; }\n",
        )
        .expect("write");
        let spec: ProtobufSpec = serde_norway::from_str(
            "{files: [frame.proto], message: wire.Frame, by_type: {field: type, payload: body, types: {ack: wire.Ack, msg: wire.Msg}}}",
        )
        .expect("spec");
        let codec = Protobuf::compile(&spec, dir.path()).expect("compiles");
        let frame = codec
            .encode(r#"{"type":"msg","body":{"seq":4,"from":"u1"}}"#)
            .expect("encodes");
        assert_eq!(
            codec.decode(&frame).expect("decodes"),
            r#"{"body":{"from":"u1","seq":4},"type":"msg"}"#
        );
        assert!(
            codec
                .encode(r#"{"type":"nope","body":{}}"#)
                .expect_err("no such type")
                .contains("not one of ack, msg")
        );
        let bad: ProtobufSpec = serde_norway::from_str(
            "{files: [frame.proto], message: wire.Frame, by_type: {field: kind, payload: body, types: {}}}",
        )
        .expect("spec");
        assert!(
            Protobuf::compile(&bad, dir.path())
                .expect_err("no such field")
                .contains("no field `kind`")
        );
    }

    #[test]
    fn mistakes_are_named() {
        let (codec, dir) = chat();
        assert!(
            codec
                .encode(r#"{"nack":{}}"#)
                .expect_err("no such field")
                .contains("not a chat.Envelope")
        );
        let spec: ProtobufSpec =
            serde_norway::from_str("{files: [chat.proto], message: chat.Nope}").expect("spec");
        let err = Protobuf::compile(&spec, dir.path()).expect_err("no such message");
        assert!(err.contains("chat.Envelope"), "{err}");
        let spec: ProtobufSpec =
            serde_norway::from_str("{files: [missing.proto], message: chat.Envelope}")
                .expect("spec");
        assert!(Protobuf::compile(&spec, dir.path()).is_err());
        assert!(codec.decode(&[0xff, 0xff, 0xff]).is_err(), "not protobuf");
    }
}
