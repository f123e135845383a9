//! A scenario as a config describes it ([`ScenarioSpec`] and its parts), the built-ins kept as
//! YAML under `builtin/`, and the choice the config makes between them ([`ScenarioChoice`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::matcher::MatcherSpec;
use crate::codec::CodecSpec;
use crate::codec::framing::Framing;

/// A scenario as a config describes it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// A built-in scenario this one starts from: what is given here replaces the built-in's
    /// part (`vars` are merged, name by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// Connect URL template; default: the `target` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Extra handshake headers (templates), e.g. `Authorization: "Bearer {{token}}"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// How a user of a Server-Sent Events target (`sse+http://`) sends: each frame is the
    /// body of an HTTP request to `url`, and the answer's body is a frame it reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishSpec>,
    /// CSV (with a header row) or JSON (array of objects) file: one row per user, cycled;
    /// every column becomes a template variable. A `user_id` column sets the user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// Variables of your own, as templates over the built-ins and credential columns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// Tokens minted for each connection, each a variable (`{{jwt}}`): `{jwt: {alg: HS256,
    /// secret: ..., claims: '{"sub":"{{user_id}}"}', expires_in: 30s}}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens: BTreeMap<String, TokenSpec>,
    /// Fresh tokens sent while connected, before the old ones expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<RefreshSpec>,
    /// Frames exchanged after the upgrade, in order, before the user counts as active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub login: Vec<StepSpec>,
    /// Application-level heartbeat; without it, WebSocket pings are the heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<AppHeartbeatSpec>,
    /// Frames that are expected and carry nothing to measure (a server's `complete` after each
    /// reply): counted as ignored, not as unmatched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<MatcherSpec>,
    /// Frames answered whenever they arrive (a server's own heartbeat: Socket.IO's `2` → `3`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replies: Vec<ReplySpec>,
    /// The message flow; without it, users send nothing (idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageSpec>,
    /// Users are grouped into rooms of this many members: user i is in room `room-{i / size}`.
    #[serde(default = "default_room_size")]
    pub room_size: u32,
    /// Rooms each user is in (1..=16), its messages going to them in turn; rooms are cut
    /// from blocks of `room_size × rooms_per_user` users (see [`crate::topology`]).
    #[serde(default = "one_room", skip_serializing_if = "is_one_room")]
    pub rooms_per_user: u32,
    /// Rooms of several sizes instead: each user is in `per_user` rooms of each row's `size`
    /// (a DM, a team room, a big room), fixed at start (`room_size` does not apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<RoomsRowSpec>,
    /// The built-in's vars, when this spec extends one: a credentials column of the same name
    /// takes their place (the built-in's default gives way to the user's data).
    #[serde(skip)]
    pub inherited_vars: std::collections::BTreeSet<String>,
    /// What the bytes of a frame mean: `text` (default), `mqtt`, or `{protobuf: {...}}`.
    #[serde(
        default,
        with = "crate::codec::named",
        skip_serializing_if = "is_default"
    )]
    pub codec: CodecSpec,
    /// How frames are cut from a plain TCP stream (`tcp://`, `tls://` targets): `newline` or
    /// `{length_prefixed: {bytes: 1|2|4|varint, endian, includes_header}}`.
    #[serde(
        default,
        deserialize_with = "crate::codec::named::some",
        skip_serializing_if = "Option::is_none"
    )]
    pub framing: Option<Framing>,
}

/// `scenario.publish`: the HTTP request each frame is sent in (SSE targets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSpec {
    /// `http://` or `https://` URL template (`http://host/pub/{{room}}`), rendered per
    /// connection.
    pub url: String,
    /// `POST` (default) or `PUT`.
    #[serde(default = "post")]
    pub method: String,
    /// Request headers (templates), e.g. `Content-Type: application/json`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

fn post() -> String {
    "POST".into()
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<MatcherSpec>,
    /// A frame that fails the step at once (a login refused) unless it matches `expect`,
    /// instead of waiting the timeout out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject: Option<MatcherSpec>,
    #[serde(default = "default_step_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppHeartbeatSpec {
    pub send: String,
    /// The server's answer; without it the heartbeat is one-way: any frame from the server
    /// within `heartbeat.timeout` of a heartbeat proves it alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<MatcherSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSpec {
    pub send: String,
    /// How to recognise the server's acknowledgement of one's own message, and where its id
    /// (the `{{msg_id}}` that was sent) is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<AckSpec>,
    /// How to recognise another member's message delivered to this user, and where its
    /// sender (`{{user_id}}`), sequence (`{{seq}}`) and timestamp (`{{ts}}`) are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// How the server's ack names the message: `id` (where our `{{msg_id}}` is), `seq` (where our
/// `{{seq}}` is, as in Socket.IO's ack ids), or neither (acks come in order, one per message).
/// Each is a JSON pointer (`/id`), a capture of the regex (`$n`) or a pointer into one
/// (`$body/id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckSpec {
    #[serde(rename = "match")]
    pub matcher: MatcherSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<String>,
}

/// When a frame matches, send `send` (a template that may use the regex's named captures).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplySpec {
    #[serde(rename = "match")]
    pub matcher: MatcherSpec,
    pub send: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySpec {
    #[serde(rename = "match")]
    pub matcher: MatcherSpec,
    pub sender: String,
    pub seq: String,
    pub ts: String,
    /// Where the server's cursor (a position in its history) is in a delivery: the last one
    /// received is `{{last_seen.cursor}}`, for a login step asking for what was missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A token minted per connection: a JWT signed with HS256 (a `secret`) or RS256 (a PEM
/// private key in `key_file`, relative to the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    pub alg: TokenAlg,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The claims, a template of a JSON object; `iat` and `exp` are added unless it sets them.
    pub claims: String,
    /// How long a minted token is valid (`exp` = now + this).
    #[serde(with = "humantime_serde")]
    pub expires_in: Duration,
    /// The header's key id, if the server picks its key by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenAlg {
    HS256,
    RS256,
}

/// Sending fresh tokens: every `every`, the tokens are minted again and `send` rendered with
/// them; `expect` (if given) must answer within `timeout`, or the refresh counts as failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshSpec {
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    pub send: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<MatcherSpec>,
    #[serde(default = "default_step_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// One row of a `rooms` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsRowSpec {
    pub size: u32,
    #[serde(default = "one_room", skip_serializing_if = "is_one_room")]
    pub per_user: u32,
}

fn default_room_size() -> u32 {
    10
}
fn one_room() -> u32 {
    1
}
fn is_one_room(rooms: &u32) -> bool {
    *rooms == 1
}
fn default_step_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Declares the built-in scenarios once: each a name and its `builtin/<name>.yaml`.
macro_rules! builtins {
    ($($variant:ident => $name:literal),+ $(,)?) => {
        crate::label::label_enum! {
            /// The built-in scenarios.
            Builtin { $($variant => $name),+ }
        }

        impl Builtin {
            /// Its description, as shipped.
            fn yaml(self) -> &'static str {
                match self {
                    $(Builtin::$variant => include_str!(concat!("builtin/", $name, ".yaml"))),+
                }
            }
        }
    };
}

builtins! {
    Im => "im",
    Echo => "echo",
    Idle => "idle",
    Socketio => "socketio",
    Mqtt => "mqtt",
    Nats => "nats",
    Xmpp => "xmpp",
}

impl Builtin {
    /// Every name, for help and error messages: `im, echo, ...`.
    pub fn names() -> String {
        let names: Vec<&str> = Builtin::ALL.iter().map(|b| b.as_str()).collect();
        names.join(", ")
    }

    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.iter().copied().find(|b| b.as_str() == name)
    }

    pub fn name(self) -> &'static str {
        self.as_str()
    }

    pub fn spec(self) -> ScenarioSpec {
        let yaml = self.yaml();
        serde_norway::from_str(yaml).expect("built-in scenarios parse")
    }
}

/// `scenario:` in the config: a built-in's name, or a full description.
#[derive(Debug, Clone, PartialEq)]
pub enum ScenarioChoice {
    Builtin(Builtin),
    Custom(Box<ScenarioSpec>),
}

impl Default for ScenarioChoice {
    fn default() -> Self {
        ScenarioChoice::Builtin(Builtin::Im)
    }
}

impl ScenarioChoice {
    /// The full description: a built-in's, or the config's over the built-in it extends.
    pub fn spec(&self) -> ScenarioSpec {
        match self {
            ScenarioChoice::Builtin(builtin) => builtin.spec(),
            ScenarioChoice::Custom(spec) => spec.resolved(),
        }
    }

    pub fn from_name(name: &str) -> Result<ScenarioChoice, String> {
        Builtin::from_name(name).map(ScenarioChoice::Builtin).ok_or_else(|| {
            format!(
                "unknown scenario `{name}`; built-in scenarios are {}, or describe one in the config file",
                Builtin::names()
            )
        })
    }
}

impl Serialize for ScenarioChoice {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ScenarioChoice::Builtin(builtin) => serializer.serialize_str(builtin.name()),
            ScenarioChoice::Custom(spec) => spec.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for ScenarioChoice {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ChoiceVisitor;
        impl<'de> Visitor<'de> for ChoiceVisitor {
            type Value = ScenarioChoice;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a built-in scenario name ({}) or a scenario description",
                    Builtin::names()
                )
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<ScenarioChoice, E> {
                ScenarioChoice::from_name(name).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ScenarioChoice, A::Error> {
                let spec = ScenarioSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ScenarioChoice::Custom(Box::new(spec)))
            }
        }
        deserializer.deserialize_any(ChoiceVisitor)
    }
}

impl ScenarioSpec {
    /// This spec over the built-in it `extends`, if any: every part given here replaces the
    /// built-in's, and `vars` merge name by name (a credentials column replaces a built-in's
    /// var of its name). An unknown built-in is left in place for [`Scenario::compile`] to
    /// reject.
    fn resolved(&self) -> ScenarioSpec {
        let Some(base) = self.extends.as_deref().and_then(Builtin::from_name) else {
            return self.clone();
        };
        let base = base.spec();
        let inherited_vars = base
            .vars
            .keys()
            .filter(|name| !self.vars.contains_key(*name))
            .cloned()
            .collect();
        let mut vars = base.vars;
        vars.extend(self.vars.clone());
        let or = |mine: &Vec<StepSpec>, theirs: Vec<StepSpec>| {
            if mine.is_empty() {
                theirs
            } else {
                mine.clone()
            }
        };
        ScenarioSpec {
            extends: None,
            inherited_vars,
            url: self.url.clone().or(base.url),
            headers: if self.headers.is_empty() {
                base.headers
            } else {
                self.headers.clone()
            },
            publish: self.publish.clone().or(base.publish),
            credentials: self.credentials.clone().or(base.credentials),
            vars,
            tokens: if self.tokens.is_empty() {
                base.tokens
            } else {
                self.tokens.clone()
            },
            refresh: self.refresh.clone().or(base.refresh),
            login: or(&self.login, base.login),
            heartbeat: self.heartbeat.clone().or(base.heartbeat),
            replies: if self.replies.is_empty() {
                base.replies
            } else {
                self.replies.clone()
            },
            ignore: if self.ignore.is_empty() {
                base.ignore
            } else {
                self.ignore.clone()
            },
            message: self.message.clone().or(base.message),
            room_size: self.room_size,
            rooms_per_user: self.rooms_per_user,
            rooms: if self.rooms.is_empty() {
                base.rooms
            } else {
                self.rooms.clone()
            },
            codec: if self.codec == CodecSpec::default() {
                base.codec
            } else {
                self.codec.clone()
            },
            framing: self.framing.or(base.framing),
        }
    }
}
