//! Recognising server frames: a matcher is a JSON-pointer test or a regular expression, and an
//! extractor reads one field by JSON pointer. A frame is parsed as JSON at most once.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::json::{self, Found, Pointer};

/// How a config describes a matcher: `{pointer: /type, equals: ack}`, `{pointer: /id}` (the
/// field exists), or `{regex: '^pong'}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatcherSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Matcher {
    Json {
        pointer: Pointer,
        equals: Option<Value>,
    },
    Regex(regex::Regex),
}

impl Matcher {
    pub fn compile(spec: &MatcherSpec) -> Result<Matcher, String> {
        match (&spec.pointer, &spec.regex) {
            (Some(pointer), None) => Ok(Matcher::Json {
                pointer: Pointer::parse(pointer)?,
                equals: spec.equals.clone(),
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
        match self {
            Matcher::Regex(regex) => regex.is_match(frame.text),
            Matcher::Json { pointer, equals } => match (frame.pointer(pointer), equals) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(found), Some(wanted)) => found.equals(wanted),
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
            let spec = MatcherSpec { pointer, equals: None, regex };
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
    fn bad_specs_say_what_is_wrong() {
        let bad = |yaml: &str| {
            Matcher::compile(&serde_norway::from_str(yaml).expect("spec parses"))
                .expect_err("rejected")
        };
        assert!(bad("{pointer: type}").contains("must start with `/`"));
        assert!(bad("{regex: '('}").contains("invalid regex"));
        assert!(bad("{}").contains("needs"));
        assert!(bad("{pointer: /a, regex: b}").contains("not both"));
    }
}
