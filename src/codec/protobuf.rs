//! Protobuf in binary frames, described by the user's `.proto` files, compiled at start
//! without `protoc` (protox) and read and written through prost-reflect: a frame reads as the
//! JSON of its message (proto field names, 64-bit integers as numbers), and a send template is
//! that JSON, encoded. One message type is every frame — typically an envelope whose `oneof`
//! says what the frame is (`{"ack":{"id":"u1-3"}}`), so matchers test `/ack`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions,
};
use serde::{Deserialize, Serialize};

/// `codec: {protobuf: {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtobufSpec {
    /// The `.proto` files (relative to the config file).
    pub files: Vec<PathBuf>,
    /// Import paths (relative to the config file); default: the directories of `files`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<PathBuf>,
    /// The fully qualified message type of every frame, e.g. `chat.Envelope`.
    pub message: String,
}

/// A compiled message type.
#[derive(Debug, Clone)]
pub struct Protobuf {
    message: MessageDescriptor,
}

const READ: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .stringify_64_bit_integers(false);

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
        let message = pool.get_message_by_name(&spec.message).ok_or_else(|| {
            let known: Vec<String> = pool
                .all_messages()
                .map(|m| m.full_name().to_string())
                .collect();
            format!(
                "protobuf: no message `{}` in the .proto files; they define {}",
                spec.message,
                known.join(", ")
            )
        })?;
        Ok(Protobuf { message })
    }

    /// A frame as the JSON of its message, or why it is not one.
    pub fn decode(&self, frame: &[u8]) -> Result<String, String> {
        let message =
            DynamicMessage::decode(self.message.clone(), frame).map_err(|err| err.to_string())?;
        let mut out = Vec::with_capacity(frame.len() * 2 + 16);
        message
            .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &READ)
            .map_err(|err| err.to_string())?;
        String::from_utf8(out).map_err(|err| err.to_string())
    }

    /// The message `text` (its JSON) describes, encoded.
    pub fn encode(&self, text: &str) -> Result<Bytes, String> {
        let mut json = serde_json::Deserializer::from_str(text);
        let message = DynamicMessage::deserialize_with_options(
            self.message.clone(),
            &mut json,
            &DeserializeOptions::new(),
        )
        .map_err(|err| format!("not a {} in JSON: {err}", self.message.full_name()))?;
        json.end()
            .map_err(|err| format!("trailing text after the JSON: {err}"))?;
        Ok(message.encode_to_vec().into())
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
