//! The default codec: frames are text, as the scenario's templates render them; a binary frame
//! that is UTF-8 is read as text.

use std::borrow::Cow;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use super::Protocol;

/// `codec: text` has no settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {}

#[derive(Debug, Clone)]
pub struct Text;

impl Protocol for Text {
    type Spec = TextSpec;

    fn compile(_: &TextSpec, _: &Path) -> Result<Text, String> {
        Ok(Text)
    }

    fn decode<'a>(&self, frame: &'a [u8]) -> Option<Cow<'a, str>> {
        std::str::from_utf8(frame).ok().map(Cow::Borrowed)
    }

    fn encode(&self, text: String) -> Result<Message, String> {
        Ok(Message::text(text))
    }
}
