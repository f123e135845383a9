//! Codecs: what the bytes of a frame mean. A codec turns each received frame into the text a
//! scenario's matchers and pointers read, and the text a scenario's templates render into the
//! frame to send — so templates, matchers, tracking and metrics stay one engine whatever the
//! server speaks. [`framing`] cuts byte streams into frames where no WebSocket does.
//!
//! - `text` (default): frames are text; a binary frame that is UTF-8 is read as text.
//! - `mqtt` (3.1.1) or `{mqtt: {version: 5}}`: MQTT packets, read and written as JSON
//!   ([`mqtt`]), framed as MQTT.
//! - `{protobuf: {files, message}}`: protobuf messages from the user's `.proto` files, read and
//!   written as their JSON ([`protobuf`]).

pub mod framing;
pub mod mqtt;
pub mod protobuf;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use framing::Framing;

/// `scenario.codec` as a config gives it: `text`, `mqtt`, `{mqtt: {version: 5}}` or
/// `{protobuf: {...}}` (maps, not YAML tags).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(try_from = "serde_norway::Value")]
pub enum CodecSpec {
    #[default]
    Text,
    Mqtt(mqtt::Version),
    Protobuf(protobuf::ProtobufSpec),
}

impl TryFrom<serde_norway::Value> for CodecSpec {
    type Error = String;
    fn try_from(value: serde_norway::Value) -> Result<CodecSpec, String> {
        use serde_norway::Value;
        match &value {
            Value::String(name) if name == "text" => return Ok(CodecSpec::Text),
            Value::String(name) if name == "mqtt" => {
                return Ok(CodecSpec::Mqtt(mqtt::Version::V311));
            }
            Value::Mapping(map) if map.len() == 1 => {
                if let Some(Value::Mapping(spec)) = map.get("mqtt") {
                    if let Some(key) = spec.keys().find(|k| k.as_str() != Some("version")) {
                        return Err(format!(
                            "mqtt: unknown field `{}`, expected `version`",
                            serde_norway::to_string(key).unwrap_or_default().trim()
                        ));
                    }
                    return spec
                        .get("version")
                        .map_or(Ok(mqtt::Version::V311), mqtt::Version::parse)
                        .map(CodecSpec::Mqtt);
                }
                if let Some(spec) = map.get("protobuf") {
                    return serde_norway::from_value(spec.clone())
                        .map(CodecSpec::Protobuf)
                        .map_err(|err| format!("protobuf: {err}"));
                }
            }
            _ => {}
        }
        Err(format!(
            "codec must be `text`, `mqtt`, {{mqtt: {{version: 5}}}} or {{protobuf: {{files: [...], message: package.Type}}}}, got {}",
            serde_norway::to_string(&value).unwrap_or_default().trim()
        ))
    }
}

impl Serialize for CodecSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            CodecSpec::Text => serializer.serialize_str("text"),
            CodecSpec::Mqtt(mqtt::Version::V311) => serializer.serialize_str("mqtt"),
            CodecSpec::Mqtt(version) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("mqtt", &serde_json::json!({"version": version.name()}))?;
                map.end()
            }
            CodecSpec::Protobuf(spec) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("protobuf", spec)?;
                map.end()
            }
        }
    }
}

/// A compiled codec, shared read-only by every user.
#[derive(Debug, Clone, Default)]
pub enum Codec {
    #[default]
    Text,
    Mqtt(mqtt::Version),
    Protobuf(Box<protobuf::Protobuf>),
}

impl Codec {
    /// Compiles a codec; `.proto` paths are relative to `base_dir`.
    pub fn compile(spec: &CodecSpec, base_dir: &std::path::Path) -> Result<Codec, String> {
        Ok(match spec {
            CodecSpec::Text => Codec::Text,
            CodecSpec::Mqtt(version) => Codec::Mqtt(*version),
            CodecSpec::Protobuf(spec) => {
                Codec::Protobuf(Box::new(protobuf::Protobuf::compile(spec, base_dir)?))
            }
        })
    }

    /// The framing this codec brings, if any (MQTT packets carry their own length).
    pub fn framing(&self) -> Option<Framing> {
        match self {
            Codec::Text | Codec::Protobuf(_) => None,
            Codec::Mqtt(_) => Some(Framing::Mqtt),
        }
    }

    /// What a received frame says, as text for the scenario; `None` when it is not a frame of
    /// this protocol (counted as unmatched by the caller).
    pub fn decode<'a>(&self, frame: &'a [u8]) -> Option<Cow<'a, str>> {
        match self {
            Codec::Text => std::str::from_utf8(frame).ok().map(Cow::Borrowed),
            Codec::Mqtt(version) => mqtt::decode(frame, *version).ok().map(Cow::Owned),
            Codec::Protobuf(codec) => codec.decode(frame).ok().map(Cow::Owned),
        }
    }

    /// The frame that says `text`; the error names what in it is wrong.
    pub fn encode(&self, text: String) -> Result<Message, String> {
        match self {
            Codec::Text => Ok(Message::text(text)),
            Codec::Mqtt(version) => mqtt::encode(&text, *version).map(Message::Binary),
            Codec::Protobuf(codec) => codec.encode(&text).map(Message::Binary),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codecs() -> Vec<Codec> {
        vec![
            Codec::Text,
            Codec::Mqtt(mqtt::Version::V311),
            Codec::Mqtt(mqtt::Version::V5),
        ]
    }

    #[test]
    fn codecs_are_written_as_names_or_maps() {
        let spec = |yaml: &str| serde_norway::from_str::<CodecSpec>(yaml);
        assert_eq!(
            spec("mqtt").expect("valid"),
            CodecSpec::Mqtt(mqtt::Version::V311)
        );
        assert_eq!(
            spec("{mqtt: {version: 5}}").expect("valid"),
            CodecSpec::Mqtt(mqtt::Version::V5)
        );
        assert_eq!(
            spec("{mqtt: {version: 3.1.1}}").expect("valid"),
            CodecSpec::Mqtt(mqtt::Version::V311)
        );
        for (bad, says) in [
            ("{mqtt: {version: 6}}", "3.1.1 or 5"),
            ("{mqtt: {qos: 1}}", "unknown field"),
            ("json", "codec must be"),
            ("{protobuf: {files: []}}", "message"),
        ] {
            let err = spec(bad).expect_err(bad).to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let v5 = spec("{mqtt: {version: 5}}").expect("valid");
        let written = serde_norway::to_string(&v5).expect("writes");
        assert_eq!(spec(&written).expect("reads back"), v5);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        /// A frame of a protocol the scenario does not describe never panics a codec: it is
        /// read or refused (and then counted unmatched).
        #[test]
        fn garbage_frames_never_panic(data in proptest::collection::vec(any::<u8>(), 0..96)) {
            for codec in codecs() {
                let _ = codec.decode(&data);
            }
        }

        /// Whatever a template renders, encoding returns a frame or an error.
        #[test]
        fn any_text_encodes_or_is_refused(text in ".{0,64}") {
            for codec in codecs() {
                let _ = codec.encode(text.clone());
            }
        }
    }
}
