//! Frame and URL templates: text with `{{name}}` placeholders, compiled once into segments so
//! rendering a message is a few `push_str`s. A placeholder may also hold an expression — a
//! generator or a variable passed through filters, `{{ body | len }}` — see [`functions`]; a
//! var that uses per-message values is rendered where it is used (inlined).

pub mod functions;

use std::fmt::Write;

use functions::{Arg, Filter, Generator};

/// Built-in variables; anything else must be a credentials column or a scenario `vars` entry.
pub const BUILTINS: &[&str] = &[
    "user_id",
    "user",
    "room",
    "seq",
    "msg_id",
    "ts",
    "payload",
    "target",
    "last_seen.cursor",
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
    /// The cursor of the last delivery the user received (any connection), "" before one.
    LastSeen,
    Custom(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Var(Var),
    /// A var rendered at each use (it uses per-message values).
    Nested(Box<Template>),
    /// A value made fresh at each render.
    Generate(Generator),
    /// A value passed through filters.
    Filtered(Box<(Template, Vec<Filter>)>),
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
    /// `{{last_seen.cursor}}`.
    pub last_seen: &'a str,
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
        while let Some(mut start) = rest.find("{{") {
            // `{{{x}}`: a literal `{` before a placeholder (JSON that opens with one).
            while rest[start + 2..].starts_with('{') {
                start += 1;
            }
            if start > 0 {
                segments.push(Segment::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in template {text:?}"))?;
            segments.push(expression(after[..end].trim(), custom)?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        Ok(Template { segments })
    }

    /// A template of `text` alone.
    pub fn literal(text: String) -> Template {
        Template {
            segments: vec![Segment::Text(text)],
        }
    }

    /// Every variable the template uses, inlined vars' and filters' included.
    fn vars(&self) -> Vec<Var> {
        let mut vars = Vec::new();
        self.collect_vars(&mut vars);
        vars
    }

    fn collect_vars(&self, vars: &mut Vec<Var>) {
        for segment in &self.segments {
            match segment {
                Segment::Var(var) => vars.push(*var),
                Segment::Nested(inner) => inner.collect_vars(vars),
                Segment::Filtered(filtered) => {
                    filtered.0.collect_vars(vars);
                    for filter in &filtered.1 {
                        if let Filter::HmacSha256(key) = filter {
                            key.collect_vars(vars);
                        }
                    }
                }
                Segment::Text(_) | Segment::Generate(_) => {}
            }
        }
    }

    /// The custom variables the template uses, by index.
    pub fn customs(&self) -> impl Iterator<Item = usize> {
        self.vars().into_iter().filter_map(|var| match var {
            Var::Custom(i) => Some(i),
            _ => None,
        })
    }

    /// Whether the template names the user's room (`{{room}}`).
    pub fn uses_room(&self) -> bool {
        self.vars().contains(&Var::Room)
    }

    /// Whether the template uses a variable that changes per message (or the room, which a
    /// message and a joining login step choose): a var that does is rendered at each use.
    pub fn uses_message_vars(&self) -> bool {
        self.vars().iter().any(|var| {
            matches!(
                var,
                Var::Seq | Var::MsgId | Var::Ts | Var::Payload | Var::Room
            )
        })
    }

    pub fn render(&self, values: &Values<'_>) -> String {
        let mut out = String::with_capacity(self.size_hint(values));
        self.render_into(&mut out, values);
        out
    }

    fn render_into(&self, out: &mut String, values: &Values<'_>) {
        for segment in &self.segments {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Var(var) => match var {
                    Var::UserId => out.push_str(values.user_id),
                    Var::UserIndex => push_number(out, values.user),
                    Var::Room => out.push_str(values.room),
                    Var::Target => out.push_str(values.target),
                    Var::LastSeen => out.push_str(values.last_seen),
                    Var::Seq => push_number(out, values.seq),
                    Var::MsgId => {
                        out.push_str(values.user_id);
                        out.push('-');
                        push_number(out, values.seq);
                    }
                    Var::Ts => push_number(out, values.ts),
                    Var::Payload => out.extend(std::iter::repeat_n('x', values.payload_size)),
                    Var::Custom(i) => {
                        out.push_str(values.custom.get(*i).map_or("", String::as_str))
                    }
                },
                Segment::Nested(inner) => inner.render_into(out, values),
                Segment::Generate(generator) => generator.push(out),
                Segment::Filtered(filtered) => {
                    let (source, filters) = filtered.as_ref();
                    functions::push_filtered(out, source.render(values), filters, values);
                }
            }
        }
    }

    fn size_hint(&self, values: &Values<'_>) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                Segment::Text(t) => t.len(),
                Segment::Var(Var::Payload) => values.payload_size,
                Segment::Nested(inner) => inner.size_hint(values),
                Segment::Var(_) | Segment::Generate(_) | Segment::Filtered(_) => 24,
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
    /// Vars rendered at each use: a reference to one is its template.
    inline: std::collections::HashMap<String, Template>,
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

    /// From now on a reference to `name` renders `template` where it stands.
    pub fn set_inline(&mut self, name: &str, template: Template) {
        self.inline.insert(name.to_string(), template);
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

/// The segment of one `{{ ... }}`: a variable, a generator, or either through filters.
fn expression(text: &str, custom: &Names) -> Result<Segment, String> {
    let mut parts = split_top(text, '|').into_iter();
    let source = parts.next().unwrap_or_default();
    let source = value(source.trim(), custom)?;
    let filters = parts
        .map(|part| {
            let (name, args) = call(part.trim())?;
            let args = args
                .unwrap_or_default()
                .into_iter()
                .map(|arg| argument(arg.trim(), custom))
                .collect::<Result<Vec<_>, _>>()?;
            Filter::parse(name, args)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if filters.is_empty() {
        return Ok(source);
    }
    functions::check_pipeline(&filters).map_err(|err| format!("in `{{{{{text}}}}}`: {err}"))?;
    let source = Template {
        segments: vec![source],
    };
    Ok(Segment::Filtered(Box::new((source, filters))))
}

/// A source: a quoted text, a generator call, or a variable.
fn value(text: &str, custom: &Names) -> Result<Segment, String> {
    if let Some(literal) = quoted(text) {
        return Ok(Segment::Text(literal.to_string()));
    }
    let (name, args) = call(text)?;
    if let Some(args) = args {
        let args = args
            .into_iter()
            .map(|arg| argument(arg.trim(), custom))
            .collect::<Result<Vec<_>, _>>()?;
        return Generator::parse(name, &args)?
            .map(Segment::Generate)
            .ok_or_else(|| {
                format!(
                    "unknown function `{name}()`; known: {}",
                    functions::FUNCTIONS
                )
            });
    }
    if let Some(inline) = custom.inline.get(name) {
        return Ok(Segment::Nested(Box::new(inline.clone())));
    }
    resolve(name, custom).map(Segment::Var).ok_or_else(|| {
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
    })
}

/// An argument: a quoted text, a number, or a variable (its template).
fn argument(text: &str, custom: &Names) -> Result<Arg, String> {
    if let Some(literal) = quoted(text) {
        return Ok(Arg::Literal(literal.to_string()));
    }
    if text.parse::<i64>().is_ok() {
        return Ok(Arg::Literal(text.to_string()));
    }
    let segment = value(text, custom)?;
    Ok(Arg::Template(Template {
        segments: vec![segment],
    }))
}

/// `name(a, b)` as the name and its arguments, or a bare `name` (no arguments list).
fn call(text: &str) -> Result<(&str, Option<Vec<&str>>), String> {
    let Some(open) = text.find('(') else {
        return Ok((text, None));
    };
    let inner = text[open + 1..]
        .strip_suffix(')')
        .ok_or_else(|| format!("unclosed `(` in `{text}`"))?;
    let name = text[..open].trim();
    let args = if inner.trim().is_empty() {
        Vec::new()
    } else {
        split_top(inner, ',')
    };
    Ok((name, Some(args)))
}

/// The text inside matching quotes (`'...'` or `"..."`), if it is quoted.
fn quoted(text: &str) -> Option<&str> {
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    text.strip_prefix(quote)?.strip_suffix(quote)
}

/// `text` split at `separator` outside quotes and parentheses.
fn split_top(text: &str, separator: char) -> Vec<&str> {
    let (mut parts, mut start, mut depth, mut quote) = (Vec::new(), 0, 0i32, None);
    for (at, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, c) if c == separator && depth == 0 => {
                parts.push(&text[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
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
        "last_seen.cursor" => Var::LastSeen,
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
                    last_seen: "",
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
            last_seen: "c9",
            seq: 42,
            ts: 1234,
            payload_size: 3,
        }
    }

    #[test]
    fn renders_every_variable() {
        let custom: Names = ["token"].into_iter().collect();
        let t = Template::compile(
            r#"{"u":"{{user_id}}","i":{{user}},"r":"{{ room }}","s":{{seq}},"id":"{{msg_id}}","ts":{{ts}},"p":"{{payload}}","k":"{{token}}","t":"{{target}}","c":"{{last_seen.cursor}}"}"#,
            &custom,
        )
        .expect("compiles");
        let values_custom = vec!["secret".to_string()];
        assert_eq!(
            t.render(&values(&values_custom)),
            r#"{"u":"u7","i":7,"r":"room-0","s":42,"id":"u7-42","ts":1234,"p":"xxx","k":"secret","t":"ws://t/ws","c":"c9"}"#
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
    fn a_brace_before_a_placeholder_is_text() {
        let custom = vec![String::new()];
        let t = Template::compile(r#"{{{user_id}}: 1}"#, &Names::default()).expect("compiles");
        assert_eq!(t.render(&values(&custom)), "{u7: 1}");
    }

    #[test]
    fn unknown_and_unclosed_variables_are_errors() {
        let err = Template::compile("{{nope}}", &Names::default()).expect_err("unknown");
        assert!(err.contains("nope") && err.contains("user_id"), "{err}");
        assert!(Template::compile("{{seq", &Names::default()).is_err());
    }

    fn render(text: &str) -> String {
        let names: Names = ["secret"].into_iter().collect();
        let custom = vec!["Jefe".to_string()];
        Template::compile(text, &names)
            .expect("compiles")
            .render(&values(&custom))
    }

    #[test]
    fn filters_transform_what_they_are_given() {
        assert_eq!(render("{{ payload | len }}"), "3");
        assert_eq!(render("{{ seq | pad(6) }}"), "000042");
        assert_eq!(render("{{ user_id | base64 }}"), "dTc=");
        assert_eq!(render("{{ user_id | hex | upper }}"), "7537");
        assert_eq!(
            render("{{ 'abc' | sha256 | hex }}"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // RFC 4231, test case 2.
        assert_eq!(
            render("{{ 'what do ya want for nothing?' | hmac_sha256(secret) | hex }}"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(render("{{ 'x' | hmac_sha256('k') | base64url }}").len(), 43);
        assert_eq!(render(r#"{{ 'a"b\c' | json }}"#), r#"a\"b\\c"#);
        assert_eq!(render("{{ 'AbC' | lower }}"), "abc");
        assert_eq!(
            render("{{ 'abc' | sha256 | len }}"),
            "32",
            "a digest's length"
        );
    }

    #[test]
    fn generators_make_a_fresh_value_each_time() {
        let id = render("{{ uuid() }}");
        assert_eq!(
            uuid::Uuid::parse_str(&id)
                .expect("a uuid")
                .get_version_num(),
            4
        );
        assert_ne!(render("{{ uuid() }}"), id);
        for _ in 0..200 {
            let n: i64 = render("{{ random(-2, 2) }}").parse().expect("a number");
            assert!((-2..=2).contains(&n));
            assert!(["a", "b"].contains(&render("{{ pick('a', \"b\") }}").as_str()));
        }
        let ms: u128 = render("{{ now_ms() }}").parse().expect("ms");
        let s: u128 = render("{{ now_s() }}").parse().expect("s");
        assert!(ms / 1000 >= s.saturating_sub(1) && ms > 1_600_000_000_000);
        assert_eq!(render("{{ uuid() | len }}"), "36");
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let err = |text: &str| Template::compile(text, &Names::default()).expect_err(text);
        assert!(err("{{ seq | frobnicate }}").contains("unknown filter `frobnicate`"));
        assert!(err("{{ seq | sha256 }}").contains("hex, base64 or base64url"));
        assert!(err("{{ seq | sha256 | upper }}").contains("hex, base64"));
        assert!(err("{{ seq | pad(99999) }}").contains("pad"));
        assert!(err("{{ seq | pad(x) }}").contains("unknown variable"));
        assert!(err("{{ nothing() }}").contains("unknown function `nothing()`"));
        assert!(err("{{ random(5, 1) }}").contains("min is above max"));
        assert!(err("{{ uuid(3) }}").contains("no arguments"));
        assert!(err("{{ seq | pad(3 }}").contains("unclosed"));
        assert!(err("{{ pick() }}").contains("at least one"));
    }

    #[test]
    fn an_inlined_var_is_rendered_where_it_stands_and_measured() {
        let mut names: Names = ["body"].into_iter().collect();
        let body = Template::compile(r#"{"seq":{{seq}},"p":"{{payload}}"}"#, &names).expect("body");
        names.set_inline("body", body);
        let t =
            Template::compile("PUB {{room}} {{ body | len }}\r\n{{body}}", &names).expect("pub");
        let custom = vec![String::new()];
        let mut v = values(&custom);
        for size in [0, 5, 1000] {
            v.payload_size = size;
            let out = t.render(&v);
            let (head, body) = out.split_once("\r\n").expect("two parts");
            assert_eq!(head, format!("PUB room-0 {}", body.len()));
        }
        assert!(t.uses_message_vars() && t.uses_room());
    }

    #[test]
    fn message_ids_map_back_to_sequence_numbers() {
        assert_eq!(seq_of_msg_id(&msg_id("u-1", 9), "u-1"), Some(9));
        assert_eq!(seq_of_msg_id(&msg_id("u-1", 9), "u-2"), None);
        assert_eq!(seq_of_msg_id("garbage", "u-1"), None);
    }
}
