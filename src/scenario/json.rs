//! Reading fields of a JSON frame by JSON pointer without building a `serde_json::Value`: a
//! streaming walk that skips everything off the paths and borrows strings from the frame.
//! [`Fields`] reads every field a scenario needs from a frame in one walk; matching and
//! extracting then allocate nothing for ordinary frames (DHAT showed ten allocations per
//! received message with `Value`).

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
    /// (`"5"` equals `5`), as configs are hand-written. Allocates nothing.
    /// Whether this is the text `wanted` (a number compared as its decimal text).
    pub fn equals_text(&self, wanted: &str) -> bool {
        match self {
            Found::Str(s) => s == wanted,
            Found::U64(v) => wanted.parse::<u64>() == Ok(*v),
            Found::I64(v) => wanted.parse::<i64>() == Ok(*v),
            Found::F64(v) => wanted.parse::<f64>() == Ok(*v),
            Found::Bool(b) => wanted == if *b { "true" } else { "false" },
            _ => false,
        }
    }

    pub fn equals(&self, wanted: &Value) -> bool {
        match (self, wanted) {
            (Found::Str(s), Value::String(w)) => s == w,
            (Found::Str(s), Value::Number(n)) => text_is_number(s, n),
            (Found::U64(v), Value::Number(n)) => n.as_u64() == Some(*v),
            (Found::I64(v), Value::Number(n)) => n.as_i64() == Some(*v),
            (Found::F64(v), Value::Number(n)) => n.as_f64() == Some(*v),
            (Found::U64(v), Value::String(w)) => w.parse::<u64>() == Ok(*v),
            (Found::I64(v), Value::String(w)) => w.parse::<i64>() == Ok(*v),
            (Found::F64(v), Value::String(w)) => w.parse::<f64>() == Ok(*v),
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

/// Whether `text` spells the number `n` (`"5"` and 5; `"1.5"` and 1.5).
fn text_is_number(text: &str, n: &serde_json::Number) -> bool {
    if let Some(u) = n.as_u64() {
        text.parse::<u64>() == Ok(u)
    } else if let Some(i) = n.as_i64() {
        text.parse::<i64>() == Ok(i)
    } else {
        n.as_f64().is_some_and(|f| text.parse::<f64>() == Ok(f))
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

/// Most fields one [`Fields`] reads: a scenario needs at most seven (heartbeat, ack and
/// delivery matchers, ack id, sender, sequence, timestamp).
pub const MAX_FIELDS: usize = 8;

/// A set of pointers read together: one walk of a frame yields every one of them.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    pointers: Vec<Pointer>,
}

/// What one walk found, by the index [`Fields::add`] gave each pointer; on the stack.
#[derive(Debug, Default)]
pub struct FieldValues<'a> {
    values: [Option<Found<'a>>; MAX_FIELDS],
}

impl<'a> FieldValues<'a> {
    pub fn get(&self, index: usize) -> Option<&Found<'a>> {
        self.values.get(index)?.as_ref()
    }

    pub fn take(&mut self, index: usize) -> Option<Found<'a>> {
        self.values.get_mut(index)?.take()
    }
}

impl Fields {
    /// Adds a pointer (once: an equal one already added is shared); returns its index.
    pub fn add(&mut self, pointer: &Pointer) -> Result<usize, String> {
        if let Some(index) = self.pointers.iter().position(|p| p == pointer) {
            return Ok(index);
        }
        if self.pointers.len() == MAX_FIELDS {
            return Err(format!("at most {MAX_FIELDS} distinct JSON pointers"));
        }
        self.pointers.push(pointer.clone());
        Ok(self.pointers.len() - 1)
    }

    /// Every field in one walk of `text`; all absent if `text` is not JSON.
    pub fn read<'a>(&self, text: &'a str) -> FieldValues<'a> {
        let mut found = FieldValues::default();
        if self.pointers.is_empty() {
            return found;
        }
        let mut paths = Paths::default();
        for (index, pointer) in self.pointers.iter().enumerate() {
            paths.push(index, &pointer.tokens);
        }
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let walked = MultiWalk {
            paths: &paths,
            out: &mut found,
        }
        .deserialize(&mut deserializer);
        if walked.is_err() || deserializer.end().is_err() {
            return FieldValues::default();
        }
        found
    }
}

/// The pointers still followed at one depth: (index, tokens left), on the stack.
#[derive(Default)]
struct Paths<'t> {
    entries: [(usize, &'t [Box<str>]); MAX_FIELDS],
    len: usize,
}

impl<'t> Paths<'t> {
    fn push(&mut self, index: usize, tokens: &'t [Box<str>]) {
        if self.len < MAX_FIELDS {
            self.entries[self.len] = (index, tokens);
            self.len += 1;
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(usize, &'t [Box<str>])> {
        self.entries[..self.len].iter()
    }

    /// The paths that go on through `token`, with it consumed.
    fn under(&self, token: &str) -> Paths<'t> {
        let mut next = Paths::default();
        for &(index, tokens) in self.iter() {
            if let Some((first, rest)) = tokens.split_first()
                && **first == *token
            {
                next.push(index, rest);
            }
        }
        next
    }

    /// Records `value` for every path that ends here.
    fn ends_here<'a>(&self, value: &Found<'a>, out: &mut FieldValues<'a>) {
        for &(index, tokens) in self.iter() {
            if tokens.is_empty() {
                out.values[index] = Some(value.clone());
            }
        }
    }
}

/// Follows several pointers at once, writing what it finds into `out`.
struct MultiWalk<'p, 't, 'o, 'a> {
    paths: &'p Paths<'t>,
    out: &'o mut FieldValues<'a>,
}

impl<'de> DeserializeSeed<'de> for MultiWalk<'_, '_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> MultiWalk<'_, '_, '_, 'de> {
    fn scalar<E: de::Error>(self, value: Found<'de>) -> Result<(), E> {
        self.paths.ends_here(&value, self.out);
        Ok(())
    }
}

impl<'de> Visitor<'de> for MultiWalk<'_, '_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.scalar(Found::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        // Only strings with escapes land here: they cannot be borrowed.
        if self.paths.iter().any(|(_, tokens)| tokens.is_empty()) {
            return self.scalar(Found::Str(Cow::Owned(v.to_string())));
        }
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(Found::U64(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(Found::I64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(Found::F64(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(Found::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(Found::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.paths.ends_here(&Found::Composite, self.out);
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let under = self.paths.under(&key.0);
            if under.len == 0 {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(MultiWalk {
                    paths: &under,
                    out: &mut *self.out,
                })?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.paths.ends_here(&Found::Composite, self.out);
        let mut index = 0usize;
        loop {
            let mut digits = itoa_buffer();
            let under = self.paths.under(format_index(index, &mut digits));
            let more = if under.len == 0 {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(MultiWalk {
                    paths: &under,
                    out: &mut *self.out,
                })?
                .is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }
}

/// A buffer for an array index in decimal, without allocating.
fn itoa_buffer() -> [u8; 20] {
    [0; 20]
}

fn format_index(mut index: usize, buffer: &mut [u8; 20]) -> &str {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (index % 10) as u8;
        index /= 10;
        if index == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[at..]).unwrap_or("")
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
    fn one_walk_reads_every_field_and_agrees_with_one_lookup_each() {
        let pointers = [
            "/type",
            "/data/from",
            "/data/t",
            "/list/1/k",
            "/esc",
            "/data",
            "/missing",
            "/list/0",
        ];
        let mut fields = Fields::default();
        let indexes: Vec<usize> = pointers
            .iter()
            .map(|p| {
                fields
                    .add(&Pointer::parse(p).expect("valid"))
                    .expect("room")
            })
            .collect();
        let values = fields.read(FRAME);
        for (pointer, index) in pointers.iter().zip(indexes) {
            assert_eq!(
                values.get(index).cloned(),
                lookup(FRAME, pointer),
                "{pointer}"
            );
        }
        let same = fields
            .add(&Pointer::parse("/type").expect("valid"))
            .expect("shared");
        assert_eq!(same, 0, "an equal pointer is read once");
        assert!(
            fields
                .add(&Pointer::parse("/ninth").expect("valid"))
                .is_err()
        );
        let broken = fields.read(r#"{"type":"a""#);
        assert!(broken.get(0).is_none(), "not JSON: nothing");
    }

    #[test]
    fn loose_equality_for_hand_written_configs() {
        assert!(Found::Str("5".into()).equals(&serde_json::json!(5)));
        assert!(Found::U64(5).equals(&serde_json::json!("5")));
        assert!(Found::Str("ack".into()).equals(&serde_json::json!("ack")));
        assert!(!Found::Str("ack".into()).equals(&serde_json::json!("deliver")));
        assert!(Found::Str("1.5".into()).equals(&serde_json::json!(1.5)));
        assert!(Found::I64(-2).equals(&serde_json::json!("-2")));
        assert!(!Found::Str("5x".into()).equals(&serde_json::json!(5)));
    }
}
