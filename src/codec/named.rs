//! "A name, or a map of that one name to its settings": how the config writes a choice among
//! kinds — `codec: mqtt`, `codec: {mqtt: {version: 5}}`, `framing: {length_prefixed: {...}}`.
//! One reader for every such choice, over serde's externally tagged enums, so a new kind is a
//! new variant and nothing else.

use serde::de::{DeserializeOwned, Error};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_norway::value::{Tag, TaggedValue};
use serde_norway::{Mapping, Value};

/// Reads a kind: a bare name is that kind with its default settings (`mqtt` is `{mqtt: {}}`);
/// a map names one kind and its settings. Errors name the setting (`mqtt.version: ...`) and
/// list the kinds there are. (YAML's own form of an enum is a tag, `!mqtt {version: 5}`: it is
/// read too.)
pub fn deserialize<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<T, D::Error> {
    let read = |value: Value| -> Result<T, String> {
        serde_path_to_error::deserialize(value).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner().to_string();
            if path == "." || path.is_empty() {
                inner
            } else {
                format!("{path}: {inner}")
            }
        })
    };
    let tagged = |name: String, settings: Value| {
        Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(name),
            value: settings,
        }))
    };
    match Value::deserialize(d)? {
        // A kind without settings (`newline`), else one whose settings all have defaults.
        Value::String(name) => read(Value::String(name.clone())).or_else(|as_name| {
            read(tagged(name, Value::Mapping(Mapping::new()))).map_err(|with_defaults| {
                if as_name.contains("unknown variant") {
                    as_name
                } else {
                    with_defaults
                }
            })
        }),
        Value::Mapping(map) => match map.into_iter().collect::<Vec<_>>().as_slice() {
            [(Value::String(name), settings)] => read(tagged(name.clone(), settings.clone())),
            other => Err(format!(
                "expected a name, or a map of one name to its settings; got a map of {} entries",
                other.len()
            )),
        },
        other => read(other),
    }
    .map_err(D::Error::custom)
}

/// A kind read from YAML text, as a field holding it reads it.
#[cfg(test)]
pub fn from_str<T: DeserializeOwned>(yaml: &str) -> Result<T, serde_norway::Error> {
    deserialize(serde_norway::Deserializer::from_str(yaml))
}

/// Reads an optional field holding a kind (absent is `None`, with `#[serde(default)]`).
pub fn some<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    deserialize(d).map(Some)
}

/// Writes a field holding a kind (`#[serde(with = "named")]`): as the kind writes itself.
pub fn serialize<S: Serializer, T: Serialize>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    value.serialize(s)
}

/// Writes a kind back as a config would: its bare name when its settings are the defaults.
pub fn write<S: Serializer, T: Serialize>(
    name: &str,
    settings: &T,
    defaults: bool,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    if defaults {
        return s.serialize_str(name);
    }
    let mut map = s.serialize_map(Some(1))?;
    map.serialize_entry(name, settings)?;
    map.end()
}
