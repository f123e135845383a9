//! What a conversation reads from each received text frame: which of the scenario's
//! expectations it meets — heartbeat reply, ack of our message, room delivery, in that order —
//! and the fields it carries, all from one walk of the frame ([`Fields`]) however many
//! matchers and pointers look at it, with nothing allocated for ordinary frames.

use std::borrow::Cow;

use serde_json::Value;

use super::json::{FieldValues, Fields, Found};
use super::matcher::Matcher;
use super::{AppHeartbeat, MessagePlan};

/// The receive side of a scenario, compiled once.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    fields: Fields,
    heartbeat: Option<Test>,
    ack: Option<(Test, usize)>,
    /// The test, then the indexes of sender, sequence and timestamp.
    delivery: Option<(Test, [usize; 3])>,
}

/// A matcher, as a test of the walked fields (or of the raw text, for a regex).
#[derive(Debug, Clone)]
enum Test {
    Field { index: usize, equals: Option<Value> },
    Regex(regex::Regex),
}

/// What one received frame is.
#[derive(Debug, PartialEq)]
pub enum Meaning<'a> {
    HeartbeatReply,
    /// The ack of one of our messages, with its id if readable.
    Ack {
        id: Option<Cow<'a, str>>,
    },
    /// A room delivery, with what could be read of it.
    Delivery {
        sender: Option<Cow<'a, str>>,
        seq: Option<u64>,
        ts: Option<u64>,
    },
    /// Nothing the scenario expects.
    Other,
}

impl Reading {
    pub fn compile(
        heartbeat: Option<&AppHeartbeat>,
        message: Option<&MessagePlan>,
    ) -> Result<Reading, String> {
        let mut fields = Fields::default();
        let heartbeat = heartbeat
            .map(|hb| Test::of(&hb.expect, &mut fields))
            .transpose()?;
        let ack = message
            .and_then(|m| m.ack.as_ref())
            .map(|ack| {
                Ok::<_, String>((Test::of(&ack.matcher, &mut fields)?, fields.add(&ack.id)?))
            })
            .transpose()?;
        let delivery = message
            .and_then(|m| m.delivery.as_ref())
            .map(|d| {
                Ok::<_, String>((
                    Test::of(&d.matcher, &mut fields)?,
                    [
                        fields.add(&d.sender)?,
                        fields.add(&d.seq)?,
                        fields.add(&d.ts)?,
                    ],
                ))
            })
            .transpose()?;
        Ok(Reading {
            fields,
            heartbeat,
            ack,
            delivery,
        })
    }

    /// Reads one frame (one walk, if any test needs a field).
    pub fn read<'a>(&self, text: &'a str) -> Meaning<'a> {
        let mut values = self.fields.read(text);
        if self
            .heartbeat
            .as_ref()
            .is_some_and(|test| test.passes(text, &values))
        {
            return Meaning::HeartbeatReply;
        }
        if let Some((test, id)) = &self.ack
            && test.passes(text, &values)
        {
            return Meaning::Ack {
                id: values.take(*id).and_then(Found::text),
            };
        }
        if let Some((test, [sender, seq, ts])) = &self.delivery
            && test.passes(text, &values)
        {
            return Meaning::Delivery {
                sender: values.take(*sender).and_then(Found::text),
                seq: values.get(*seq).and_then(Found::as_u64),
                ts: values.get(*ts).and_then(Found::as_u64),
            };
        }
        Meaning::Other
    }
}

impl Test {
    fn of(matcher: &Matcher, fields: &mut Fields) -> Result<Test, String> {
        Ok(match matcher {
            Matcher::Json { pointer, equals } => Test::Field {
                index: fields.add(pointer)?,
                equals: equals.clone(),
            },
            Matcher::Regex(regex) => Test::Regex(regex.clone()),
        })
    }

    fn passes(&self, text: &str, values: &FieldValues<'_>) -> bool {
        match self {
            Test::Regex(regex) => regex.is_match(text),
            Test::Field { index, equals } => match (values.get(*index), equals) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(found), Some(wanted)) => found.equals(wanted),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Builtin, Scenario};

    fn im() -> Reading {
        Scenario::compile(&Builtin::Im.spec(), std::path::Path::new("."))
            .expect("built-in")
            .reading
    }

    #[test]
    fn the_im_protocol_is_read_in_one_walk() {
        let reading = im();
        assert_eq!(
            reading.read(r#"{"type":"pong","ts":5}"#),
            Meaning::HeartbeatReply
        );
        assert_eq!(
            reading.read(r#"{"type":"ack","id":"u3-7"}"#),
            Meaning::Ack {
                id: Some("u3-7".into())
            }
        );
        assert_eq!(
            reading.read(r#"{"type":"deliver","from":"u1","seq":9,"ts":"123","body":"x"}"#),
            Meaning::Delivery {
                sender: Some("u1".into()),
                seq: Some(9),
                ts: Some(123)
            }
        );
        assert_eq!(
            reading.read(r#"{"type":"deliver","seq":9}"#),
            Meaning::Delivery {
                sender: None,
                seq: Some(9),
                ts: None
            },
            "matched but incomplete: the caller counts it invalid"
        );
        assert_eq!(reading.read(r#"{"type":"joined"}"#), Meaning::Other);
        assert_eq!(reading.read("not json"), Meaning::Other);
    }
}
