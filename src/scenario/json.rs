//! Reading one field of a JSON frame by JSON pointer without building a `serde_json::Value`:
//! a streaming walk that skips everything off the path and borrows strings from the frame.
//! Matching and extracting then allocate nothing for ordinary frames (DHAT showed ten
//! allocations per received message with `Value`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A value found at a pointer: scalars as they are, objects and arrays only as "something".
#[derive(Debug, Clone, PartialEq)]
pub enum Found<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Null,
    Composite,
}

impl<'a> Found<'a> {
    /// Whether this equals a value from the config; numbers and strings compare loosely
    /// (`"5"` equals `5`), as configs are hand-written.
    pub fn equals(&self, wanted: &Value) -> bool {
        match (self, wanted) {
            (Found::Str(s), Value::String(w)) => s == w,
            (Found::Str(s), Value::Number(n)) => *s == n.to_string(),
            (Found::U64(v), Value::Number(n)) => n.as_u64() == Some(*v),
            (Found::I64(v), Value::Number(n)) => n.as_i64() == Some(*v),
            (Found::F64(v), Value::Number(n)) => n.as_f64() == Some(*v),
            (found, Value::String(w)) => found.number_text().is_some_and(|t| &t == w),
            (Found::Bool(b), Value::Bool(w)) => b == w,
            (Found::Null, Value::Null) => true,
            _ => false,
        }
    }

    fn number_text(&self) -> Option<String> {
        match self {
            Found::U64(v) => Some(v.to_string()),
            Found::I64(v) => Some(v.to_string()),
            Found::F64(v) => Some(v.to_string()),
            _ => None,
        }
    }

    /// Text of a string or number, borrowing from the frame when it can.
    pub fn text(self) -> Option<Cow<'a, str>> {
        match self {
            Found::Str(s) => Some(s),
            other => other.number_text().map(Cow::Owned),
        }
    }

    /// An unsigned integer: a non-negative number, or a string of digits.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Found::U64(v) => Some(*v),
            Found::I64(v) => u64::try_from(*v).ok(),
            Found::Str(s) => s.parse().ok(),
            _ => None,
        }
    }
}

/// A JSON pointer (RFC 6901), split into unescaped tokens once, when the scenario compiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Pointer {
    tokens: Vec<Box<str>>,
}

impl Pointer {
    /// Parses `""` (the whole document) or `/a/b`; `~1` is `/` and `~0` is `~`.
    pub fn parse(pointer: &str) -> Result<Pointer, String> {
        if pointer.is_empty() {
            return Ok(Pointer { tokens: Vec::new() });
        }
        let Some(rest) = pointer.strip_prefix('/') else {
            return Err(format!(
                "JSON pointer must start with `/`, got {pointer:?} (did you mean \"/{pointer}\"?)"
            ));
        };
        let tokens = rest
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~").into_boxed_str())
            .collect();
        Ok(Pointer { tokens })
    }
}

/// The value at `pointer` in the JSON `text`; `None` if absent or if `text` is not JSON.
pub fn lookup<'a>(text: &'a str, pointer: &Pointer) -> Option<Found<'a>> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let found = Walk {
        tokens: &pointer.tokens,
    }
    .deserialize(&mut deserializer)
    .ok()?;
    deserializer.end().ok()?;
    found
}

/// Follows the remaining pointer tokens into a value.
struct Walk<'t> {
    tokens: &'t [Box<str>],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<Found<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Option<Found<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(self
            .tokens
            .is_empty()
            .then_some(Found::Str(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        // Only strings with escapes land here: they cannot be borrowed.
        Ok(self
            .tokens
            .is_empty()
            .then(|| Found::Str(Cow::Owned(v.to_string()))))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(self.tokens.is_empty().then_some(Found::U64(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(self.tokens.is_empty().then_some(Found::I64(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(self.tokens.is_empty().then_some(Found::F64(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(self.tokens.is_empty().then_some(Found::Bool(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(self.tokens.is_empty().then_some(Found::Null))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match self.tokens.split_first() {
                Some((token, rest)) if found.is_none() && *key.0 == **token => {
                    found = map.next_value_seed(Walk { tokens: rest })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(if self.tokens.is_empty() {
            Some(Found::Composite)
        } else {
            found
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let wanted = match self.tokens.split_first() {
            Some((token, rest)) => token.parse::<usize>().ok().map(|i| (i, rest)),
            None => None,
        };
        let mut found = None;
        let mut index = 0;
        loop {
            let element = match wanted {
                Some((i, rest)) if i == index => seq
                    .next_element_seed(Walk { tokens: rest })?
                    .map(|f| found = f),
                _ => seq.next_element::<IgnoredAny>()?.map(|_| ()),
            };
            if element.is_none() {
                break;
            }
            index += 1;
        }
        Ok(if self.tokens.is_empty() {
            Some(Found::Composite)
        } else {
            found
        })
    }
}

/// An object key, borrowed unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: &str = r#"{"type":"deliver","data":{"from":"u1","n":"7","t":12,"neg":-3,"f":1.5,"ok":true,"x":null},
        "list":[10,{"k":"v"}],"esc":"a\"b","a/b":1,"pad":"xxxxxxxx"}"#;

    fn lookup<'a>(text: &'a str, pointer: &str) -> Option<Found<'a>> {
        super::lookup(text, &Pointer::parse(pointer).expect("valid pointer"))
    }

    #[test]
    fn finds_scalars_anywhere_by_pointer() {
        assert_eq!(lookup(FRAME, "/type"), Some(Found::Str("deliver".into())));
        assert_eq!(lookup(FRAME, "/data/from"), Some(Found::Str("u1".into())));
        assert_eq!(lookup(FRAME, "/data/t"), Some(Found::U64(12)));
        assert_eq!(lookup(FRAME, "/data/neg"), Some(Found::I64(-3)));
        assert_eq!(lookup(FRAME, "/data/f"), Some(Found::F64(1.5)));
        assert_eq!(lookup(FRAME, "/data/ok"), Some(Found::Bool(true)));
        assert_eq!(lookup(FRAME, "/data/x"), Some(Found::Null));
        assert_eq!(lookup(FRAME, "/list/0"), Some(Found::U64(10)));
        assert_eq!(lookup(FRAME, "/list/1/k"), Some(Found::Str("v".into())));
        assert_eq!(lookup(FRAME, "/esc"), Some(Found::Str("a\"b".into())));
        assert_eq!(lookup(FRAME, "/a~1b"), Some(Found::U64(1)));
        assert_eq!(lookup(FRAME, "/data"), Some(Found::Composite));
    }

    #[test]
    fn agrees_with_serde_json_value() {
        let value: Value = serde_json::from_str(FRAME).expect("valid");
        for pointer in [
            "/type",
            "/data/from",
            "/data/n",
            "/data/t",
            "/list/1/k",
            "/esc",
            "/missing",
            "/list/5",
            "/type/x",
        ] {
            let ours = lookup(FRAME, pointer)
                .and_then(Found::text)
                .map(|c| c.into_owned());
            let theirs = value.pointer(pointer).and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            });
            assert_eq!(ours, theirs, "{pointer}");
        }
    }

    #[test]
    fn missing_paths_and_bad_json_find_nothing() {
        assert_eq!(lookup(FRAME, "/nope"), None);
        assert_eq!(lookup(FRAME, "/type/deeper"), None);
        assert_eq!(lookup("not json", "/type"), None);
        assert_eq!(lookup(r#"{"type":"a"} trailing"#, "/type"), None);
        assert_eq!(lookup(r#"{"type":"a""#, "/type"), None);
    }

    #[test]
    fn loose_equality_for_hand_written_configs() {
        assert!(Found::Str("5".into()).equals(&serde_json::json!(5)));
        assert!(Found::U64(5).equals(&serde_json::json!("5")));
        assert!(Found::Str("ack".into()).equals(&serde_json::json!("ack")));
        assert!(!Found::Str("ack".into()).equals(&serde_json::json!("deliver")));
    }
}
