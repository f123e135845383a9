//! What a conversation reads from each received frame: which of the scenario's expectations
//! it meets — heartbeat reply, ack of our message, room delivery, in that order — the fields it
//! carries, and whether a reply rule answers it.
//!
//! A field is found by a JSON pointer into the frame (`/id`), by a named capture of the rule's
//! regex (`$id`), or by a JSON pointer into such a capture (`$body/from`: a Socket.IO event's
//! payload after its `42["chat",` prefix). JSON pointers into the whole frame are read in one
//! walk ([`Fields`]) however many matchers and pointers look at it, and nothing is allocated
//! for ordinary JSON frames; a regex rule that matches costs one capture search.

use std::borrow::Cow;

use super::json::{FieldValues, Fields, Found, Pointer};
use super::matcher::{Equals, Matcher};
use super::template::{Template, Values};
use super::{AckKey, AppHeartbeat, MessagePlan, Reply};

/// The receive side of a scenario, compiled once.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// Pointers into the whole frame, read in one walk.
    fields: Fields,
    heartbeat: Option<Rule<0>>,
    /// The answer to a token refresh.
    refresh: Option<Rule<0>>,
    ack: Option<(Rule<1>, AckRead)>,
    /// Sender, sequence, timestamp.
    delivery: Option<Rule<4>>,
    replies: Vec<(Test, Template)>,
    /// Frames expected that carry nothing (`ignore`).
    ignore: Vec<Test>,
}

/// How an ack names the message it acknowledges.
#[derive(Debug, Clone, Copy, PartialEq)]
enum AckRead {
    /// By our message id (`{{msg_id}}`).
    Id,
    /// By our sequence number (`{{seq}}`), as Socket.IO ack ids do.
    Seq,
    /// By nothing: acks come in order, each answers the oldest pending message.
    Oldest,
}

/// A matcher and the `N` fields read when it matches.
#[derive(Debug, Clone)]
struct Rule<const N: usize> {
    test: Test,
    sources: [Source; N],
    /// Whether a field comes from a regex capture (then a match costs a capture search).
    reads_captures: bool,
}

/// A matcher, as a test of the walked fields (or of the raw text, for a regex).
#[derive(Debug, Clone)]
enum Test {
    Field {
        index: usize,
        equals: Option<Equals>,
    },
    Regex {
        regex: regex::Regex,
        /// JSON pointers into captures: by capture group, the pointers read from it.
        inside: Vec<(usize, Fields)>,
    },
    Not(Box<Test>),
    All(Vec<Test>),
    Any(Vec<Test>),
}

/// Where one field comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Nothing: the rule reads no field here.
    Nowhere,
    /// The whole frame's field at this index of [`Reading::fields`].
    Frame(usize),
    /// A capture group of the rule's regex, as text.
    Capture(usize),
    /// A field inside a capture: `inside[slot]`'s field `index`.
    InCapture { slot: usize, index: usize },
}

/// One received frame, read.
#[derive(Debug)]
pub struct Read<'a> {
    pub meaning: Meaning<'a>,
    /// The reply rule that answers the frame, if any (whatever it means otherwise).
    pub reply: Option<ReplyDue<'a>>,
}

/// What one received frame is.
#[derive(Debug, PartialEq)]
pub enum Meaning<'a> {
    HeartbeatReply,
    /// The server took our fresh tokens.
    RefreshReply,
    /// The ack of one of our messages, by what it names.
    Ack(Acked<'a>),
    /// A room delivery, with what could be read of it.
    Delivery {
        sender: Option<Cow<'a, str>>,
        seq: Option<u64>,
        ts: Option<u64>,
        /// The server's cursor, where the rule reads one.
        cursor: Option<Cow<'a, str>>,
    },
    /// A frame an `ignore` rule expects.
    Ignored,
    /// Nothing the scenario expects.
    Other,
}

/// Which of our messages an ack answers.
#[derive(Debug, PartialEq)]
pub enum Acked<'a> {
    Id(Cow<'a, str>),
    Seq(u64),
    Oldest,
    /// The ack matched but its id or sequence could not be read.
    Unreadable,
}

/// A reply rule that matched a frame, with what its template may use.
#[derive(Debug)]
pub struct ReplyDue<'a> {
    rule: usize,
    captures: Option<regex::Captures<'a>>,
}

impl Reading {
    pub fn compile(
        heartbeat: Option<&AppHeartbeat>,
        refresh: Option<&super::tokens::Refresh>,
        message: Option<&MessagePlan>,
        replies: &[Reply],
        ignore: &[Matcher],
    ) -> Result<Reading, String> {
        let mut fields = Fields::default();
        let heartbeat = heartbeat
            .and_then(|hb| hb.expect.as_ref())
            .map(|expect| Rule::compile(expect, [], &mut fields))
            .transpose()
            .map_err(|err| format!("heartbeat.expect: {err}"))?;
        let refresh = refresh
            .and_then(|r| r.expect.as_ref())
            .map(|expect| Rule::compile(expect, [], &mut fields))
            .transpose()
            .map_err(|err| format!("refresh.expect: {err}"))?;
        let ack = message
            .and_then(|m| m.ack.as_ref())
            .map(|ack| {
                let (read, field) = match &ack.key {
                    AckKey::Id(field) => (AckRead::Id, field.as_str()),
                    AckKey::Seq(field) => (AckRead::Seq, field.as_str()),
                    AckKey::Oldest => (AckRead::Oldest, ""),
                };
                Ok::<_, String>((Rule::compile(&ack.matcher, [field], &mut fields)?, read))
            })
            .transpose()
            .map_err(|err| format!("message.ack: {err}"))?;
        let delivery = message
            .and_then(|m| m.delivery.as_ref())
            .map(|d| {
                Rule::compile(
                    &d.matcher,
                    [
                        d.sender.as_str(),
                        d.seq.as_str(),
                        d.ts.as_str(),
                        d.cursor.as_str(),
                    ],
                    &mut fields,
                )
            })
            .transpose()
            .map_err(|err| format!("message.delivery: {err}"))?;
        let replies = replies
            .iter()
            .enumerate()
            .map(|(i, reply)| {
                let rule = Rule::compile(&reply.matcher, [], &mut fields)
                    .map_err(|err| format!("replies[{i}].match: {err}"))?;
                Ok((rule.test, reply.send.clone()))
            })
            .collect::<Result<_, String>>()?;
        let ignore = ignore
            .iter()
            .map(|m| Test::compile(m, &mut fields))
            .collect::<Result<_, String>>()?;
        Ok(Reading {
            fields,
            heartbeat,
            refresh,
            ack,
            delivery,
            replies,
            ignore,
        })
    }

    /// Reads one frame for the user whose own values (for matchers that name them) are
    /// `mine`: what it means, and the reply rule that answers it, if any (one walk of it, if
    /// any test needs a field of the whole frame).
    pub fn read<'a>(&self, text: &'a str, mine: &[String]) -> Read<'a> {
        let mut values = self.fields.read(text);
        let reply = self.reply_to(text, &values, mine);
        Read {
            meaning: self.meaning(text, &mut values, mine),
            reply,
        }
    }

    fn meaning<'a>(
        &self,
        text: &'a str,
        values: &mut FieldValues<'a>,
        mine: &[String],
    ) -> Meaning<'a> {
        if let Some(rule) = &self.heartbeat
            && rule.read(text, values, mine).is_some()
        {
            return Meaning::HeartbeatReply;
        }
        if let Some(rule) = &self.refresh
            && rule.read(text, values, mine).is_some()
        {
            return Meaning::RefreshReply;
        }
        if let Some((rule, how)) = &self.ack
            && let Some([key]) = rule.read(text, values, mine)
        {
            return Meaning::Ack(match how {
                AckRead::Oldest => Acked::Oldest,
                AckRead::Id => key
                    .and_then(Found::text)
                    .map_or(Acked::Unreadable, Acked::Id),
                AckRead::Seq => key
                    .as_ref()
                    .and_then(Found::as_u64)
                    .map_or(Acked::Unreadable, Acked::Seq),
            });
        }
        if let Some(delivery) = self.delivery_in(text, values, mine) {
            return delivery;
        }
        if self
            .ignore
            .iter()
            .any(|test| test.passes(text, values, mine))
        {
            return Meaning::Ignored;
        }
        Meaning::Other
    }

    /// What the delivery rule reads of `text`, if it matches: for a frame that matched the
    /// ack rule but acknowledges nothing of ours (every occupant of an XMPP room gets the
    /// same stanza), read again as a delivery.
    pub fn delivery<'a>(&self, text: &'a str, mine: &[String]) -> Option<Meaning<'a>> {
        self.delivery.as_ref()?;
        let mut values = self.fields.read(text);
        self.delivery_in(text, &mut values, mine)
    }

    fn delivery_in<'a>(
        &self,
        text: &'a str,
        values: &mut FieldValues<'a>,
        mine: &[String],
    ) -> Option<Meaning<'a>> {
        let [sender, seq, ts, cursor] = self.delivery.as_ref()?.read(text, values, mine)?;
        Some(Meaning::Delivery {
            sender: sender.and_then(Found::text),
            seq: seq.as_ref().and_then(Found::as_u64),
            ts: ts.as_ref().and_then(Found::as_u64),
            cursor: cursor.and_then(Found::text),
        })
    }

    /// The first reply rule that answers `text`, if any.
    fn reply_to<'a>(
        &self,
        text: &'a str,
        values: &FieldValues<'a>,
        mine: &[String],
    ) -> Option<ReplyDue<'a>> {
        self.replies
            .iter()
            .enumerate()
            .find_map(|(rule, (test, _))| match test {
                Test::Regex { regex, .. } => regex.captures(text).map(|captures| ReplyDue {
                    rule,
                    captures: Some(captures),
                }),
                _ => test.passes(text, values, mine).then_some(ReplyDue {
                    rule,
                    captures: None,
                }),
            })
    }

    /// The reply's frame: its template rendered with the user's values and, after the
    /// scenario's own variables, the named captures of its regex.
    pub fn render_reply(&self, due: &ReplyDue<'_>, values: &Values<'_>) -> String {
        let (test, template) = &self.replies[due.rule];
        let (Some(captures), Test::Regex { regex, .. }) = (&due.captures, test) else {
            return template.render(values);
        };
        let mut custom = values.custom.to_vec();
        custom.extend(
            regex
                .capture_names()
                .flatten()
                .map(|name| captures.name(name).map_or("", |m| m.as_str()).to_string()),
        );
        template.render(&Values {
            custom: &custom,
            ..*values
        })
    }
}

impl<const N: usize> Rule<N> {
    /// A matcher and its field references: `/pointer`, `$capture` or `$capture/pointer`; an
    /// empty reference reads nothing.
    fn compile(matcher: &Matcher, refs: [&str; N], fields: &mut Fields) -> Result<Rule<N>, String> {
        let mut test = Test::compile(matcher, fields)?;
        let mut sources = [Source::Nowhere; N];
        for (source, reference) in sources.iter_mut().zip(refs) {
            *source = test.source(reference, fields)?;
        }
        let reads_captures = sources
            .iter()
            .any(|s| matches!(s, Source::Capture(_) | Source::InCapture { .. }));
        Ok(Rule {
            test,
            sources,
            reads_captures,
        })
    }

    /// The rule's fields if its test passes (each `None` when absent).
    fn read<'a>(
        &self,
        text: &'a str,
        frame: &mut FieldValues<'a>,
        mine: &[String],
    ) -> Option<[Option<Found<'a>>; N]> {
        let Test::Regex { regex, inside } = &self.test else {
            return self.test.passes(text, frame, mine).then(|| {
                self.sources.map(|source| match source {
                    Source::Frame(index) => frame.take(index),
                    _ => None,
                })
            });
        };
        if !self.reads_captures {
            return regex
                .is_match(text)
                .then(|| self.sources.map(|source| take_frame(source, frame)));
        }
        let captures = regex.captures(text)?;
        let mut within: Vec<FieldValues<'a>> = inside
            .iter()
            .map(|(group, fields)| {
                captures
                    .get(*group)
                    .map(|m| fields.read(m.as_str()))
                    .unwrap_or_default()
            })
            .collect();
        Some(self.sources.map(|source| {
            match source {
                Source::Capture(group) => captures
                    .get(group)
                    .map(|m| Found::Str(Cow::Borrowed(m.as_str()))),
                Source::InCapture { slot, index } => within[slot].take(index),
                other => take_frame(other, frame),
            }
        }))
    }
}

fn take_frame<'a>(source: Source, frame: &mut FieldValues<'a>) -> Option<Found<'a>> {
    match source {
        Source::Frame(index) => frame.take(index),
        _ => None,
    }
}

impl Test {
    /// The test of `matcher`, its pointers added to `fields`.
    fn compile(matcher: &Matcher, fields: &mut Fields) -> Result<Test, String> {
        let all = |matchers: &[Matcher], fields: &mut Fields| {
            matchers
                .iter()
                .map(|m| Test::compile(m, fields))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(match matcher {
            Matcher::Json { pointer, equals } => Test::Field {
                index: fields.add(pointer)?,
                equals: equals.clone(),
            },
            Matcher::Regex(regex) => Test::Regex {
                regex: regex.clone(),
                inside: Vec::new(),
            },
            Matcher::Not(inner) => Test::Not(Box::new(Test::compile(inner, fields)?)),
            Matcher::All(inner) => Test::All(all(inner, fields)?),
            Matcher::Any(inner) => Test::Any(all(inner, fields)?),
        })
    }

    /// Where a field reference reads from, checked against this test.
    fn source(&mut self, reference: &str, fields: &mut Fields) -> Result<Source, String> {
        if reference.is_empty() {
            return Ok(Source::Nowhere);
        }
        let Some(capture) = reference.strip_prefix('$') else {
            return Ok(Source::Frame(fields.add(&Pointer::parse(reference)?)?));
        };
        let (name, pointer) = match capture.find('/') {
            Some(at) => (&capture[..at], Some(&capture[at..])),
            None => (capture, None),
        };
        let Test::Regex { regex, inside } = self else {
            return Err(format!(
                "`{reference}` reads a regex capture, but the matcher is not a regex"
            ));
        };
        let group = regex
            .capture_names()
            .position(|n| n == Some(name))
            .ok_or_else(|| {
                format!("`{reference}`: the matcher's regex has no capture named `{name}`")
            })?;
        let Some(pointer) = pointer else {
            return Ok(Source::Capture(group));
        };
        let pointer = Pointer::parse(pointer)?;
        let slot = match inside.iter().position(|(g, _)| *g == group) {
            Some(slot) => slot,
            None => {
                inside.push((group, Fields::default()));
                inside.len() - 1
            }
        };
        let index = inside[slot].1.add(&pointer)?;
        Ok(Source::InCapture { slot, index })
    }

    /// Whether the frame `text`, walked into `values`, passes for the user of `mine`.
    fn passes(&self, text: &str, values: &FieldValues<'_>, mine: &[String]) -> bool {
        match self {
            Test::Regex { regex, .. } => regex.is_match(text),
            Test::Field { index, equals } => match (values.get(*index), equals) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(found), Some(wanted)) => wanted.holds(found, mine),
            },
            Test::Not(inner) => !inner.passes(text, values, mine),
            Test::All(all) => all.iter().all(|t| t.passes(text, values, mine)),
            Test::Any(any) => any.iter().any(|t| t.passes(text, values, mine)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::{Builtin, Identity, Scenario, ScenarioSpec};

    fn reading_of(builtin: Builtin) -> Reading {
        Scenario::compile(&builtin.spec(), std::path::Path::new("."))
            .expect("built-in")
            .reading
    }

    fn reading(yaml: &str) -> Result<Reading, String> {
        let spec: ScenarioSpec = serde_norway::from_str(yaml).expect("parses");
        Scenario::compile(&spec, std::path::Path::new("."))
            .map(|s| s.reading)
            .map_err(|e| e.to_string())
    }

    fn user0(custom: usize) -> Identity {
        Identity::new(
            0,
            "u0".into(),
            vec!["room-0".into()],
            vec![String::new(); custom],
        )
    }

    #[test]
    fn the_im_protocol_is_read_in_one_walk() {
        let reading = reading_of(Builtin::Im);
        let meaning = |text| reading.read(text, &[]).meaning;
        assert_eq!(
            meaning(r#"{"type":"pong","ts":5}"#),
            Meaning::HeartbeatReply
        );
        assert_eq!(
            meaning(r#"{"type":"ack","id":"u3-7"}"#),
            Meaning::Ack(Acked::Id("u3-7".into()))
        );
        assert_eq!(
            meaning(r#"{"type":"deliver","from":"u1","seq":9,"ts":"123","body":"x"}"#),
            Meaning::Delivery {
                sender: Some("u1".into()),
                seq: Some(9),
                ts: Some(123),
                cursor: None
            }
        );
        assert_eq!(
            meaning(r#"{"type":"deliver","seq":9}"#),
            Meaning::Delivery {
                sender: None,
                seq: Some(9),
                ts: None,
                cursor: None
            },
            "matched but incomplete: the caller counts it invalid"
        );
        assert_eq!(meaning(r#"{"type":"joined"}"#), Meaning::Other);
        assert_eq!(meaning("not json"), Meaning::Other);
        assert!(
            reading.read(r#"{"type":"ping"}"#, &[]).reply.is_none(),
            "no replies in im"
        );
    }

    #[test]
    fn socket_io_frames_are_read_through_captures() {
        let reading = reading_of(Builtin::Socketio);
        let meaning = |text| reading.read(text, &[]).meaning;
        assert_eq!(
            meaning(r#"4317[{"ok":true}]"#),
            Meaning::Ack(Acked::Seq(17))
        );
        assert_eq!(
            meaning(r#"42["chat",{"from":"u4","seq":3,"ts":1700000000000000,"body":"xx"}]"#),
            Meaning::Delivery {
                sender: Some("u4".into()),
                seq: Some(3),
                ts: Some(1_700_000_000_000_000),
                cursor: None
            }
        );
        assert_eq!(meaning(r#"42["other",{}]"#), Meaning::Other);
        let ping = reading.read("2", &[]);
        assert_eq!(ping.meaning, Meaning::Other, "a ping is not ours");
        let due = ping.reply.expect("the Engine.IO ping is answered");
        let identity = user0(8);
        assert_eq!(
            reading.render_reply(&due, &identity.values("", 0, 0, 0)),
            "3"
        );
        assert!(reading.read("3", &[]).reply.is_none());
    }

    #[test]
    fn replies_render_captures_and_acks_may_carry_no_id() {
        let reading = reading(
            "replies:\n  - match: {regex: '^PING (?P<token>\\w+)$'}\n    send: 'PONG {{token}} from {{user_id}}'\n\
             message:\n  send: 'PUB {{seq}}'\n  ack: {match: {regex: '^\\+OK$'}}\n",
        )
        .expect("valid");
        let due = reading.read("PING abc", &[]).reply.expect("matches");
        assert_eq!(
            reading.render_reply(&due, &user0(0).values("", 0, 0, 0)),
            "PONG abc from u0"
        );
        assert_eq!(
            reading.read("+OK", &[]).meaning,
            Meaning::Ack(Acked::Oldest)
        );
        assert_eq!(reading.read("-ERR", &[]).meaning, Meaning::Other);
    }

    #[test]
    fn capture_references_are_checked_when_the_scenario_compiles() {
        let err =
            reading("message:\n  send: x\n  ack: {match: {regex: '^ack (?P<n>\\d+)'}, seq: $id}\n")
                .expect_err("no such capture");
        assert!(
            err.contains("scenario.message") && err.contains("no capture named `id`"),
            "{err}"
        );
        let err = reading("message:\n  send: x\n  ack: {match: {pointer: /type}, id: $id}\n")
            .expect_err("not a regex");
        assert!(err.contains("not a regex"), "{err}");
        let err = reading("message:\n  send: x\n  ack: {match: {pointer: /t}, id: /a, seq: /b}\n")
            .expect_err("both");
        assert!(err.contains("`id` or `seq`"), "{err}");
        let err = reading("replies: [{match: {regex: '^PING'}, send: '{{nope}}'}]\n")
            .expect_err("unknown var");
        assert!(err.contains("scenario.replies[0].send"), "{err}");
    }

    #[test]
    fn a_capture_can_be_read_as_json() {
        let reading = reading(
            "message:\n  send: x\n  delivery:\n    match: {regex: '^MSG (?P<sender>\\S+) (?P<body>\\{.*\\})$'}\n    \
             sender: $sender\n    seq: $body/n\n    ts: $body/t\n",
        )
        .expect("valid");
        assert_eq!(
            reading.read(r#"MSG alice {"n":4,"t":"99"}"#, &[]).meaning,
            Meaning::Delivery {
                sender: Some("alice".into()),
                seq: Some(4),
                ts: Some(99),
                cursor: None
            }
        );
    }

    /// A matcher may compare a field with the user's own id: rendered once per connection,
    /// each user recognises what is addressed to it.
    #[test]
    fn a_matcher_knows_the_user_it_reads_for() {
        let spec: ScenarioSpec = serde_norway::from_str(
            r#"{message: {send: 'x', delivery: {match: {all: [{pointer: /type, equals: msg}, {pointer: /to, equals: "{{user_id}}"}]}, sender: /from, seq: /seq, ts: /ts}}}"#,
        )
        .expect("parses");
        let scenario = Scenario::compile(&spec, std::path::Path::new(".")).expect("valid");
        let me = scenario.mine_of(&scenario.identity(3, scenario.topology(10)));
        assert_eq!(&*me, ["u3".to_string()]);
        let frame =
            |to: &str| format!(r#"{{"type":"msg","to":"{to}","from":"u1","seq":1,"ts":5}}"#);
        assert!(matches!(
            scenario.reading.read(&frame("u3"), &me).meaning,
            Meaning::Delivery { .. }
        ));
        assert_eq!(
            scenario.reading.read(&frame("u4"), &me).meaning,
            Meaning::Other
        );
        let bad: ScenarioSpec = serde_norway::from_str(
            r#"{message: {send: 'x', ack: {match: {pointer: /id, equals: "{{seq}}"}}}}"#,
        )
        .expect("parses");
        let err = Scenario::compile(&bad, std::path::Path::new("."))
            .expect_err("per-message")
            .to_string();
        assert!(err.contains("not per-message"), "{err}");
    }
}
