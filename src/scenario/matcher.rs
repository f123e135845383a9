//! Recognising server frames: a matcher is a JSON-pointer test, a regular expression, or a
//! combination of matchers (`not`, `all`, `any`); an extractor reads one field by JSON
//! pointer. A frame is parsed as JSON at most once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::json::{self, Found, Pointer};

/// How a config describes a matcher: `{pointer: /type, equals: ack}`, `{pointer: /id}` (the
/// field exists), `{regex: '^pong'}`, or a combination: `{not: {...}}`, `{all: [...]}`,
/// `{any: [...]}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatcherSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Matches what the inner matcher does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<MatcherSpec>>,
    /// Matches what every inner matcher matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<MatcherSpec>>,
    /// Matches what some inner matcher matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<MatcherSpec>>,
}

/// Deepest nesting of `not`, `all` and `any`.
const MAX_DEPTH: usize = 8;

/// What a JSON field must equal: a value, or one of the user's own (an `equals` naming
/// `{{user_id}}` or another per-connection variable), by its index among the scenario's
/// per-user templates — rendered once per connection, compared without a per-frame cost.
#[derive(Debug, Clone, PartialEq)]
pub enum Equals {
    Value(Value),
    Mine(usize),
}

impl Equals {
    /// Whether `found` is what this wants, given the user's own values `mine`.
    pub fn holds(&self, found: &Found<'_>, mine: &[String]) -> bool {
        match self {
            Equals::Value(wanted) => found.equals(wanted),
            Equals::Mine(i) => mine.get(*i).is_some_and(|m| found.equals_text(m)),
        }
    }
}

/// Registers a matcher's per-user template (the text of an `equals` with `{{...}}`); returns
/// its index, or why it cannot be one.
pub type Mine<'a> = dyn FnMut(&str) -> Result<usize, String> + 'a;

#[derive(Debug, Clone)]
pub enum Matcher {
    Json {
        pointer: Pointer,
        equals: Option<Equals>,
    },
    Regex(regex::Regex),
    Not(Box<Matcher>),
    All(Vec<Matcher>),
    Any(Vec<Matcher>),
}

impl Matcher {
    /// A matcher of fixed values only.
    pub fn compile(spec: &MatcherSpec) -> Result<Matcher, String> {
        Matcher::compile_with(spec, &mut |_| {
            Err("only a scenario's matchers may name the user's own variables".into())
        })
    }

    /// A matcher whose `equals` may name the user's variables, each registered by `mine`.
    pub fn compile_with(spec: &MatcherSpec, mine: &mut Mine<'_>) -> Result<Matcher, String> {
        Matcher::compile_at(spec, 0, mine)
    }

    fn compile_at(
        spec: &MatcherSpec,
        depth: usize,
        mine: &mut Mine<'_>,
    ) -> Result<Matcher, String> {
        let combined = [spec.not.is_some(), spec.all.is_some(), spec.any.is_some()];
        let simple = spec.pointer.is_some() || spec.regex.is_some();
        match combined.iter().filter(|&&c| c).count() {
            0 => {}
            1 if !simple && spec.equals.is_none() => {
                if depth >= MAX_DEPTH {
                    return Err(format!(
                        "matchers nest at most {MAX_DEPTH} deep (not, all, any)"
                    ));
                }
                let mut inner = |specs: &[MatcherSpec], name: &str| {
                    if specs.is_empty() {
                        return Err(format!("`{name}` needs at least one matcher"));
                    }
                    specs
                        .iter()
                        .map(|s| Matcher::compile_at(s, depth + 1, &mut *mine))
                        .collect::<Result<Vec<_>, _>>()
                };
                return match (&spec.not, &spec.all, &spec.any) {
                    (Some(not), _, _) => Ok(Matcher::Not(Box::new(Matcher::compile_at(
                        not,
                        depth + 1,
                        mine,
                    )?))),
                    (_, Some(all), _) => inner(all, "all").map(Matcher::All),
                    (_, _, Some(any)) => inner(any, "any").map(Matcher::Any),
                    _ => unreachable!("one combination is set"),
                };
            }
            _ => {
                return Err(
                    "give one of `pointer`, `regex`, `not`, `all` or `any` per matcher (nest them to combine)"
                        .into(),
                );
            }
        }
        match (&spec.pointer, &spec.regex) {
            (Some(pointer), None) => Ok(Matcher::Json {
                pointer: Pointer::parse(pointer)?,
                equals: match &spec.equals {
                    Some(Value::String(text)) if text.contains("{{") => {
                        Some(Equals::Mine(mine(text)?))
                    }
                    other => other.clone().map(Equals::Value),
                },
            }),
            (None, Some(pattern)) if spec.equals.is_none() => regex::Regex::new(pattern)
                .map(Matcher::Regex)
                .map_err(|err| {
                    format!(
                        "invalid regex: {}",
                        crate::failures::one_line(&err.to_string())
                    )
                }),
            (None, Some(_)) => Err("`equals` goes with `pointer`, not with `regex`".into()),
            (Some(_), Some(_)) => Err("give either `pointer` or `regex`, not both".into()),
            (None, None) => {
                Err("a matcher needs `pointer` (with optional `equals`) or `regex`".into())
            }
        }
    }

    pub fn matches(&self, frame: &Frame<'_>) -> bool {
        self.matches_for(frame, &[])
    }

    /// Whether `frame` matches for the user whose own values are `mine`.
    pub fn matches_for(&self, frame: &Frame<'_>, mine: &[String]) -> bool {
        match self {
            Matcher::Not(inner) => !inner.matches_for(frame, mine),
            Matcher::All(all) => all.iter().all(|m| m.matches_for(frame, mine)),
            Matcher::Any(any) => any.iter().any(|m| m.matches_for(frame, mine)),
            Matcher::Regex(regex) => regex.is_match(frame.text),
            Matcher::Json { pointer, equals } => match (frame.pointer(pointer), equals) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(found), Some(wanted)) => wanted.holds(&found, mine),
            },
        }
    }
}

/// One received text frame; fields are read by JSON pointer, borrowing from the text.
pub struct Frame<'a> {
    pub text: &'a str,
}

impl<'a> Frame<'a> {
    pub fn new(text: &'a str) -> Self {
        Self { text }
    }

    pub fn pointer(&self, pointer: &Pointer) -> Option<Found<'a>> {
        json::lookup(self.text, pointer)
    }

    /// A field as text: strings as they are, numbers in decimal.
    pub fn text_at(&self, pointer: &Pointer) -> Option<std::borrow::Cow<'a, str>> {
        self.pointer(pointer)?.text()
    }

    /// A field as an unsigned integer (a number, or a string of digits).
    pub fn u64_at(&self, pointer: &Pointer) -> Option<u64> {
        self.pointer(pointer)?.as_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// Any matcher spec compiles or is refused; a compiled one tests any frame.
        #[test]
        fn any_matcher_compiles_or_is_refused_and_never_panics(
            pointer in proptest::option::of("[a-z/~0-9]{0,12}"),
            regex in proptest::option::of("\\PC{0,16}"),
            frame in "\\PC{0,64}",
        ) {
            let spec = MatcherSpec { pointer, regex, ..MatcherSpec::default() };
            if let Ok(matcher) = Matcher::compile(&spec) {
                let _ = matcher.matches(&Frame::new(&frame));
            }
        }
    }

    fn spec(yaml: &str) -> Matcher {
        Matcher::compile(&serde_norway::from_str(yaml).expect("spec parses")).expect("compiles")
    }

    #[test]
    fn json_pointer_matchers() {
        let frame = Frame::new(r#"{"type":"ack","id":"u1-3","n":5}"#);
        assert!(spec("{pointer: /type, equals: ack}").matches(&frame));
        assert!(!spec("{pointer: /type, equals: deliver}").matches(&frame));
        assert!(spec("{pointer: /id}").matches(&frame));
        assert!(!spec("{pointer: /missing}").matches(&frame));
        assert!(spec("{pointer: /n, equals: '5'}").matches(&frame));
        let at = |p: &str| Pointer::parse(p).expect("valid pointer");
        assert_eq!(frame.text_at(&at("/id")).as_deref(), Some("u1-3"));
        assert_eq!(frame.u64_at(&at("/n")), Some(5));
        assert!(!spec("{pointer: /type}").matches(&Frame::new("not json")));
    }

    #[test]
    fn regex_matchers() {
        assert!(spec("{regex: '^PONG \\d+$'}").matches(&Frame::new("PONG 12")));
        assert!(!spec("{regex: '^PONG'}").matches(&Frame::new("PING")));
    }

    #[test]
    fn matchers_combine() {
        let frame = Frame::new(r#"{"type":"msg","id":"s2"}"#);
        assert!(spec("{not: {pointer: /id, equals: s1}}").matches(&frame));
        assert!(!spec("{not: {pointer: /id}}").matches(&frame));
        let both = "{all: [{pointer: /type, equals: msg}, {not: {regex: 's1'}}]}";
        assert!(spec(both).matches(&frame));
        assert!(!spec(both).matches(&Frame::new(r#"{"type":"msg","id":"s1"}"#)));
        let either = "{any: [{pointer: /type, equals: ack}, {regex: '^PING'}]}";
        assert!(spec(either).matches(&Frame::new("PING")));
        assert!(!spec(either).matches(&frame));
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let bad = |yaml: &str| {
            Matcher::compile(&serde_norway::from_str(yaml).expect("spec parses"))
                .expect_err("rejected")
        };
        assert!(bad("{pointer: type}").contains("must start with `/`"));
        assert!(bad("{regex: '('}").contains("invalid regex"));
        assert!(bad("{}").contains("needs"));
        assert!(bad("{pointer: /a, regex: b}").contains("not both"));
        assert!(bad("{all: []}").contains("at least one"));
        assert!(bad("{not: {regex: a}, pointer: /a}").contains("one of"));
        let deep = (0..10).fold("{regex: a}".to_string(), |m, _| format!("{{not: {m}}}"));
        assert!(bad(&deep).contains("nest"));
    }
}
