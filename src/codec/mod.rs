//! Codecs: what the bytes of a frame mean. A codec turns each received frame into the text a
//! scenario's matchers and pointers read, and the text a scenario's templates render into the
//! frame to send — so templates, matchers, tracking and metrics stay one engine whatever the
//! server speaks. [`framing`] cuts byte streams into frames where no WebSocket does.
//!
//! - `text` (default): frames are text; a binary frame that is UTF-8 is read as text.
//! - `mqtt`: MQTT 3.1.1 packets, read and written as JSON ([`mqtt`]), framed as MQTT.

pub mod framing;
pub mod mqtt;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use framing::Framing;

/// `scenario.codec` as a config gives it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum CodecSpec {
    #[default]
    Text,
    Mqtt,
}

/// A compiled codec, shared read-only by every user.
#[derive(Debug, Clone, Default)]
pub enum Codec {
    #[default]
    Text,
    Mqtt,
}

impl Codec {
    pub fn compile(spec: &CodecSpec) -> Result<Codec, String> {
        Ok(match spec {
            CodecSpec::Text => Codec::Text,
            CodecSpec::Mqtt => Codec::Mqtt,
        })
    }

    /// The framing this codec brings, if any (MQTT packets carry their own length).
    pub fn framing(&self) -> Option<Framing> {
        match self {
            Codec::Text => None,
            Codec::Mqtt => Some(Framing::Mqtt),
        }
    }

    /// What a received frame says, as text for the scenario; `None` when it is not a frame of
    /// this protocol (counted as unmatched by the caller).
    pub fn decode<'a>(&self, frame: &'a [u8]) -> Option<Cow<'a, str>> {
        match self {
            Codec::Text => std::str::from_utf8(frame).ok().map(Cow::Borrowed),
            Codec::Mqtt => mqtt::decode(frame).ok().map(Cow::Owned),
        }
    }

    /// The frame that says `text`; the error names what in it is wrong.
    pub fn encode(&self, text: String) -> Result<Message, String> {
        match self {
            Codec::Text => Ok(Message::text(text)),
            Codec::Mqtt => mqtt::encode(&text).map(Message::Binary),
        }
    }
}
