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
//!
//! A new codec is a module implementing [`Protocol`] and one line in the `codecs!` table
//! below: its spec is read as a name or `{name: {settings}}` ([`named`]), compiled, and
//! dispatched from there.

pub mod framing;
pub mod mqtt;
pub mod named;
pub mod protobuf;
pub mod text;

use std::borrow::Cow;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use framing::Framing;

/// One protocol's meaning of a frame: compiled from its settings in the config, then shared
/// read-only by every user.
pub trait Protocol: Sized {
    /// Its settings as the config writes them under its name; `Default` is the bare name.
    type Spec;
    /// Builds it; paths in the settings are relative to `base_dir`.
    fn compile(spec: &Self::Spec, base_dir: &Path) -> Result<Self, String>;
    /// The framing it brings, if any (MQTT packets carry their own length).
    fn framing(&self) -> Option<Framing> {
        None
    }
    /// What a received frame says, as text for the scenario; `None` when it is not a frame of
    /// this protocol (counted as unmatched by the caller).
    fn decode<'a>(&self, frame: &'a [u8]) -> Option<Cow<'a, str>>;
    /// The frame that says `text`; the error names what in it is wrong.
    fn encode(&self, text: String) -> Result<Message, String>;
}

/// Declares the codecs: for each, its variant, its name in the config, and its [`Protocol`].
/// Adding a codec is one line here and its module.
macro_rules! codecs {
    ($($(#[$doc:meta])* $variant:ident = $name:literal: $protocol:ty),+ $(,)?) => {
        /// `scenario.codec` as a config gives it: a name, or `{name: {settings}}`
        /// ([`named`]).
        #[derive(Debug, Clone, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub enum CodecSpec {
            $($(#[$doc])* #[serde(rename = $name)] $variant(<$protocol as Protocol>::Spec)),+
        }

        impl Serialize for CodecSpec {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(CodecSpec::$variant(spec) => {
                        named::write($name, spec, *spec == Default::default(), s)
                    })+
                }
            }
        }

        /// A compiled codec, shared read-only by every user.
        #[derive(Debug, Clone)]
        pub enum Codec {
            $($variant(Box<$protocol>)),+
        }

        impl Codec {
            /// Compiles a codec; paths are relative to `base_dir`.
            pub fn compile(spec: &CodecSpec, base_dir: &Path) -> Result<Codec, String> {
                Ok(match spec {
                    $(CodecSpec::$variant(spec) => {
                        Codec::$variant(Box::new(<$protocol as Protocol>::compile(spec, base_dir)?))
                    })+
                })
            }

            /// The framing this codec brings, if any.
            pub fn framing(&self) -> Option<Framing> {
                match self {
                    $(Codec::$variant(codec) => Protocol::framing(&**codec)),+
                }
            }

            /// What a received frame says ([`Protocol::decode`]).
            pub fn decode<'a>(&self, frame: &'a [u8]) -> Option<Cow<'a, str>> {
                match self {
                    $(Codec::$variant(codec) => Protocol::decode(&**codec, frame)),+
                }
            }

            /// The frame that says `text` ([`Protocol::encode`]).
            pub fn encode(&self, text: String) -> Result<Message, String> {
                match self {
                    $(Codec::$variant(codec) => Protocol::encode(&**codec, text)),+
                }
            }
        }
    };
}

codecs! {
    /// Frames are text; a binary frame that is UTF-8 is read as text.
    Text = "text": text::Text,
    /// MQTT packets, read and written as JSON, framed as MQTT.
    Mqtt = "mqtt": mqtt::Mqtt,
    /// Protobuf messages from the user's `.proto` files, read and written as their JSON.
    Protobuf = "protobuf": protobuf::Protobuf,
}

impl Default for CodecSpec {
    fn default() -> CodecSpec {
        CodecSpec::Text(text::TextSpec {})
    }
}

impl Default for Codec {
    fn default() -> Codec {
        Codec::Text(Box::new(text::Text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codecs() -> Vec<Codec> {
        let mqtt = |version| Codec::Mqtt(Box::new(mqtt::Mqtt { version }));
        vec![
            Codec::default(),
            mqtt(mqtt::Version::V311),
            mqtt(mqtt::Version::V5),
        ]
    }

    /// A config field holding a codec, as the scenario holds it.
    #[derive(Debug, Deserialize, Serialize)]
    struct Field {
        #[serde(with = "named")]
        codec: CodecSpec,
    }

    #[test]
    fn codecs_are_written_as_names_or_maps() {
        let spec = |yaml: &str| {
            serde_norway::from_str::<Field>(&format!("codec: {yaml}")).map(|field| field.codec)
        };
        let mqtt = |version| CodecSpec::Mqtt(mqtt::MqttSpec { version });
        assert_eq!(spec("text").expect("valid"), CodecSpec::default());
        assert_eq!(spec("mqtt").expect("valid"), mqtt(mqtt::Version::V311));
        assert_eq!(
            spec("{mqtt: {version: 5}}").expect("valid"),
            mqtt(mqtt::Version::V5)
        );
        assert_eq!(
            spec("{mqtt: {version: 3.1.1}}").expect("valid"),
            mqtt(mqtt::Version::V311)
        );
        for (bad, says) in [
            (
                "{mqtt: {version: 6}}",
                "mqtt.version: mqtt version must be 3.1.1 or 5",
            ),
            ("{mqtt: {qos: 1}}", "unknown field `qos`"),
            (
                "json",
                "unknown variant `json`, expected one of `text`, `mqtt`, `protobuf`",
            ),
            ("{protobuf: {files: []}}", "missing field `message`"),
            ("protobuf", "missing field `files`"),
            ("{mqtt: {}, text: {}}", "a map of 2 entries"),
        ] {
            let err = spec(bad).expect_err(bad).to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        for written in ["text", "mqtt", "{mqtt: {version: 5}}"] {
            let read = spec(written).expect("valid");
            let field = serde_norway::to_string(&Field {
                codec: read.clone(),
            })
            .expect("writes");
            assert_eq!(
                serde_norway::from_str::<Field>(&field)
                    .expect("reads back")
                    .codec,
                read
            );
        }
        assert_eq!(
            serde_norway::to_string(&Field {
                codec: mqtt(mqtt::Version::V311)
            })
            .expect("writes"),
            "codec: mqtt\n",
            "defaults are written as the bare name"
        );
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
