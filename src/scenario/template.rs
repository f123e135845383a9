//! Frame and URL templates: text with `{{name}}` placeholders, compiled once into segments so
//! rendering a message is a few `push_str`s.

use std::fmt::Write;

/// Built-in variables; anything else must be a credentials column or a scenario `vars` entry.
pub const BUILTINS: &[&str] = &[
    "user_id", "user", "room", "seq", "msg_id", "ts", "payload", "target",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Var {
    UserId,
    UserIndex,
    Room,
    Seq,
    MsgId,
    Ts,
    Payload,
    Target,
    Custom(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Var(Var),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// The values a template is rendered with.
pub struct Values<'a> {
    pub user_id: &'a str,
    pub user: u32,
    pub room: &'a str,
    pub target: &'a str,
    /// Values of custom variables, in the order of the names given to [`Template::compile`].
    pub custom: &'a [String],
    pub seq: u64,
    pub ts: u64,
    pub payload_size: usize,
}

impl<'a> Values<'a> {
    /// The same values with `{{room}}` naming `room`.
    pub fn in_room(self, room: &'a str) -> Values<'a> {
        Values { room, ..self }
    }
}

impl Template {
    /// Compiles `text`; `custom` names the variables beyond the built-ins.
    pub fn compile(text: &str, custom: &Names) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segments.push(Segment::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in template {text:?}"))?;
            let name = after[..end].trim();
            segments.push(Segment::Var(resolve(name, custom).ok_or_else(|| {
                let mut known: Vec<&str> = BUILTINS.to_vec();
                known.extend(custom.list.iter().take(KNOWN_SHOWN).map(String::as_str));
                let more = custom.list.len().saturating_sub(KNOWN_SHOWN);
                let more = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                format!(
                    "unknown variable `{{{{{name}}}}}`; known: {}{more}",
                    known.join(", ")
                )
            })?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        Ok(Template { segments })
    }

    /// Whether the template names the user's room (`{{room}}`).
    pub fn uses_room(&self) -> bool {
        self.segments.contains(&Segment::Var(Var::Room))
    }

    /// Whether the template uses a variable that changes per message.
    pub fn uses_message_vars(&self) -> bool {
        self.segments.iter().any(|s| {
            matches!(
                s,
                Segment::Var(Var::Seq | Var::MsgId | Var::Ts | Var::Payload)
            )
        })
    }

    pub fn render(&self, values: &Values<'_>) -> String {
        let mut out = String::with_capacity(self.size_hint(values));
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Var(var) => match var {
                    Var::UserId => out.push_str(values.user_id),
                    Var::UserIndex => push_number(&mut out, values.user),
                    Var::Room => out.push_str(values.room),
                    Var::Target => out.push_str(values.target),
                    Var::Seq => push_number(&mut out, values.seq),
                    Var::MsgId => {
                        out.push_str(values.user_id);
                        out.push('-');
                        push_number(&mut out, values.seq);
                    }
                    Var::Ts => push_number(&mut out, values.ts),
                    Var::Payload => out.extend(std::iter::repeat_n('x', values.payload_size)),
                    Var::Custom(i) => {
                        out.push_str(values.custom.get(*i).map_or("", String::as_str))
                    }
                },
            }
        }
        out
    }

    fn size_hint(&self, values: &Values<'_>) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Text(t) => t.len(),
                Segment::Var(Var::Payload) => values.payload_size,
                Segment::Var(_) => 24,
            })
            .sum()
    }
}

fn push_number(out: &mut String, n: impl std::fmt::Display) {
    let _ = write!(out, "{n}");
}

/// Custom variables named in an error at most.
const KNOWN_SHOWN: usize = 20;

/// The custom variables' names, in order (their values come in that order), indexed: a
/// scenario may have tens of thousands (40,000 vars took 23 s to compile with a list search
/// per name; the index makes it linear).
#[derive(Debug, Clone, Default)]
pub struct Names {
    list: Vec<String>,
    index: std::collections::HashMap<String, usize>,
}

impl Names {
    /// Adds a name at the end; a name already present keeps its first place.
    pub fn push(&mut self, name: String) {
        let next = self.list.len();
        self.index.entry(name.clone()).or_insert(next);
        self.list.push(name);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }
}

impl<S: Into<String>> FromIterator<S> for Names {
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Names {
        let mut all = Names::default();
        for name in names {
            all.push(name.into());
        }
        all
    }
}

impl Extend<String> for Names {
    fn extend<I: IntoIterator<Item = String>>(&mut self, names: I) {
        for name in names {
            self.push(name);
        }
    }
}

fn resolve(name: &str, custom: &Names) -> Option<Var> {
    // Custom names shadow nothing: a credentials column called `user_id` *is* the user id,
    // and is looked up as such by the scenario, not here.
    Some(match name {
        "user_id" => Var::UserId,
        "user" => Var::UserIndex,
        "room" => Var::Room,
        "seq" => Var::Seq,
        "msg_id" => Var::MsgId,
        "ts" => Var::Ts,
        "payload" => Var::Payload,
        "target" => Var::Target,
        _ => Var::Custom(custom.position(name)?),
    })
}

/// The id of message `seq` of a user: `{user_id}-{seq}`, as `{{msg_id}}` renders it.
#[cfg(test)]
pub fn msg_id(user_id: &str, seq: u64) -> String {
    format!("{user_id}-{seq}")
}

/// The sequence number inside an id made by [`msg_id`], if it belongs to `user_id`.
pub fn seq_of_msg_id(id: &str, user_id: &str) -> Option<u64> {
    let (owner, seq) = id.rsplit_once('-')?;
    (owner == user_id).then(|| seq.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// Any template text compiles or is refused, and a compiled one renders.
        #[test]
        fn any_template_compiles_or_is_refused(text in "\\PC{0,60}", custom in proptest::collection::vec("[a-z]{1,6}", 0..3)) {
            if let Ok(template) = Template::compile(&text, &custom.iter().cloned().collect()) {
                let values = vec!["v".to_string(); custom.len()];
                let _ = template.render(&Values {
                    user_id: "u1",
                    user: 1,
                    room: "room-0",
                    target: "ws://x",
                    custom: &values,
                    seq: u64::MAX,
                    ts: 0,
                    payload_size: 3,
                });
            }
        }
    }

    fn values<'a>(custom: &'a [String]) -> Values<'a> {
        Values {
            user_id: "u7",
            user: 7,
            room: "room-0",
            target: "ws://t/ws",
            custom,
            seq: 42,
            ts: 1234,
            payload_size: 3,
        }
    }

    #[test]
    fn renders_every_variable() {
        let custom: Names = ["token"].into_iter().collect();
        let t = Template::compile(
            r#"{"u":"{{user_id}}","i":{{user}},"r":"{{ room }}","s":{{seq}},"id":"{{msg_id}}","ts":{{ts}},"p":"{{payload}}","k":"{{token}}","t":"{{target}}"}"#,
            &custom,
        )
        .expect("compiles");
        let values_custom = vec!["secret".to_string()];
        assert_eq!(
            t.render(&values(&values_custom)),
            r#"{"u":"u7","i":7,"r":"room-0","s":42,"id":"u7-42","ts":1234,"p":"xxx","k":"secret","t":"ws://t/ws"}"#
        );
        assert!(t.uses_message_vars());
    }

    /// Tens of thousands of vars (one per tenant, say): each found by its index, and an
    /// error names a few, not all of them.
    #[test]
    fn many_custom_variables_are_looked_up_by_name() {
        let names: Names = (0..40_000).map(|i| format!("v{i}")).collect();
        let t = Template::compile("{{v39999}}-{{v0}}", &names).expect("compiles");
        let values_custom: Vec<String> = (0..40_000).map(|i| format!("x{i}")).collect();
        assert_eq!(t.render(&values(&values_custom)), "x39999-x0");
        let err = Template::compile("{{v40000}}", &names).expect_err("unknown");
        assert!(
            err.ends_with("and 39980 more"),
            "{}",
            &err[err.len() - 40..]
        );
    }

    #[test]
    fn unknown_and_unclosed_variables_are_errors() {
        let err = Template::compile("{{nope}}", &Names::default()).expect_err("unknown");
        assert!(err.contains("nope") && err.contains("user_id"), "{err}");
        assert!(Template::compile("{{seq", &Names::default()).is_err());
    }

    #[test]
    fn message_ids_map_back_to_sequence_numbers() {
        assert_eq!(seq_of_msg_id(&msg_id("u-1", 9), "u-1"), Some(9));
        assert_eq!(seq_of_msg_id(&msg_id("u-1", 9), "u-2"), None);
        assert_eq!(seq_of_msg_id("garbage", "u-1"), None);
    }
}
