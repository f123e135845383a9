//! Scenarios: what a user says and expects, for any server's JSON protocol, as data.
//!
//! A [`ScenarioSpec`] comes from the config (or is a built-in: `im`, `echo`, `idle`, kept as
//! YAML under `builtin/`); [`Scenario::compile`] turns it, once, into templates and matchers.

pub mod json;
pub mod matcher;
pub mod reading;
pub mod template;
pub mod tracking;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::framing::Framing;
use crate::codec::{Codec, CodecSpec};
use matcher::{Matcher, MatcherSpec};
use template::{Template, Values};

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
    /// CSV (with a header row) or JSON (array of objects) file: one row per user, cycled;
    /// every column becomes a template variable. A `user_id` column sets the user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// Variables of your own, as templates over the built-ins and credential columns.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// Frames exchanged after the upgrade, in order, before the user counts as active.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub login: Vec<StepSpec>,
    /// Application-level heartbeat; without it, WebSocket pings are the heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<AppHeartbeatSpec>,
    /// Frames answered whenever they arrive (a server's own heartbeat: Socket.IO's `2` → `3`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replies: Vec<ReplySpec>,
    /// The message flow; without it, users send nothing (idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageSpec>,
    /// Users are grouped into rooms of this many members: user i is in room `room-{i / size}`.
    #[serde(default = "default_room_size")]
    pub room_size: u32,
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
    pub expect: MatcherSpec,
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
}

fn default_room_size() -> u32 {
    10
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

/// A scenario mistake, naming where in `scenario:` it is.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("config field `scenario.{field}`: {problem}")]
pub struct ScenarioError {
    pub field: String,
    pub problem: String,
}

fn at(field: impl Into<String>) -> impl FnOnce(String) -> ScenarioError {
    let field = field.into();
    move |problem| ScenarioError { field, problem }
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
            credentials: self.credentials.clone().or(base.credentials),
            vars,
            login: or(&self.login, base.login),
            heartbeat: self.heartbeat.clone().or(base.heartbeat),
            replies: if self.replies.is_empty() {
                base.replies
            } else {
                self.replies.clone()
            },
            message: self.message.clone().or(base.message),
            room_size: self.room_size,
            codec: if self.codec == CodecSpec::default() {
                base.codec
            } else {
                self.codec.clone()
            },
            framing: self.framing.or(base.framing),
        }
    }
}

/// One login step, compiled.
#[derive(Debug, Clone)]
pub struct Step {
    pub send: Option<Template>,
    pub expect: Option<Matcher>,
    pub reject: Option<Matcher>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AppHeartbeat {
    pub send: Template,
    pub expect: Matcher,
}

/// Field references (`/pointer`, `$capture`, `$capture/pointer`) are resolved by
/// [`reading::Reading::compile`].
#[derive(Debug, Clone)]
pub struct Ack {
    pub matcher: Matcher,
    pub key: AckKey,
}

/// What an ack carries to name the message it answers.
#[derive(Debug, Clone)]
pub enum AckKey {
    Id(String),
    Seq(String),
    Oldest,
}

#[derive(Debug, Clone)]
pub struct DeliveryPlan {
    pub matcher: Matcher,
    pub sender: String,
    pub seq: String,
    pub ts: String,
}

/// A compiled reply rule.
#[derive(Debug, Clone)]
pub struct Reply {
    pub matcher: Matcher,
    pub send: Template,
}

#[derive(Debug, Clone)]
pub struct MessagePlan {
    pub send: Template,
    pub ack: Option<Ack>,
    pub delivery: Option<DeliveryPlan>,
}

/// Rows of a credentials file.
#[derive(Debug, Clone, Default)]
struct Credentials {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A compiled scenario, shared read-only by every user.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub url: Option<Template>,
    pub headers: Vec<(String, Template)>,
    credentials: Credentials,
    user_id_column: Option<usize>,
    /// Templates of `vars`, rendered per user after the credential columns.
    vars: Vec<Template>,
    pub login: Vec<Step>,
    pub heartbeat: Option<AppHeartbeat>,
    pub message: Option<MessagePlan>,
    /// The receive side: what each frame means, read in one walk.
    pub reading: reading::Reading,
    pub room_size: u32,
    /// What frames mean, in bytes.
    pub codec: Codec,
    /// How frames are cut from a byte stream: the scenario's, or its codec's own.
    pub framing: Option<Framing>,
}

/// Who a user is, for rendering its templates; made once per connection.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: u32,
    pub user_id: String,
    pub room: String,
    pub custom: Vec<String>,
}

impl Identity {
    pub fn values<'a>(
        &'a self,
        target: &'a str,
        seq: u64,
        ts: u64,
        payload_size: usize,
    ) -> Values<'a> {
        Values {
            user_id: &self.user_id,
            user: self.user,
            room: &self.room,
            target,
            custom: &self.custom,
            seq,
            ts,
            payload_size,
        }
    }
}

impl Scenario {
    /// Compiles a spec; relative credential paths are read from `base_dir`.
    pub fn compile(spec: &ScenarioSpec, base_dir: &Path) -> Result<Scenario, ScenarioError> {
        if let Some(name) = &spec.extends {
            return Err(at("extends")(format!(
                "unknown built-in scenario `{name}`; built-ins are {}",
                Builtin::names()
            )));
        }
        let credentials = match &spec.credentials {
            Some(path) => read_credentials(&base_dir.join(path)).map_err(at("credentials"))?,
            None => Credentials::default(),
        };
        let columns: template::Names = credentials.columns.iter().cloned().collect();
        let mut custom = columns.clone();
        let mut vars = Vec::new();
        for (name, text) in &spec.vars {
            if spec.inherited_vars.contains(name) && credentials.columns.contains(name) {
                continue; // the user's column replaces the built-in's default
            }
            if template::BUILTINS.contains(&name.as_str()) || custom.contains(name) {
                return Err(at(format!("vars.{name}"))(format!(
                    "`{name}` is already a variable (built-in or credentials column)"
                )));
            }
            // A var may use the built-ins and credential columns, not other vars.
            vars.push(Template::compile(text, &columns).map_err(at(format!("vars.{name}")))?);
            custom.push(name.clone());
        }
        let compile =
            |field: String, text: &str| Template::compile(text, &custom).map_err(at(field));
        let matcher = |field: String, spec: &MatcherSpec| Matcher::compile(spec).map_err(at(field));

        let url = spec
            .url
            .as_deref()
            .map(|u| compile("url".into(), u))
            .transpose()?;
        let headers = spec
            .headers
            .iter()
            .map(|(name, value)| {
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    at(format!("headers.{name}"))("not a valid HTTP header name".into())
                })?;
                Ok((name.clone(), compile(format!("headers.{name}"), value)?))
            })
            .collect::<Result<_, ScenarioError>>()?;
        let login = spec
            .login
            .iter()
            .enumerate()
            .map(|(i, step)| {
                if step.send.is_none() && step.expect.is_none() {
                    return Err(at(format!("login[{i}]"))(
                        "a step needs `send`, `expect`, or both".into(),
                    ));
                }
                crate::load::check_duration(
                    "timeout",
                    step.timeout,
                    Duration::from_millis(1),
                    crate::load::MAX_TIMEOUT,
                    None,
                )
                .map_err(|err| at(format!("login[{i}].timeout"))(err.problem))?;
                Ok(Step {
                    send: step
                        .send
                        .as_deref()
                        .map(|s| compile(format!("login[{i}].send"), s))
                        .transpose()?,
                    expect: step
                        .expect
                        .as_ref()
                        .map(|m| matcher(format!("login[{i}].expect"), m))
                        .transpose()?,
                    reject: step
                        .reject
                        .as_ref()
                        .map(|m| matcher(format!("login[{i}].reject"), m))
                        .transpose()?,
                    timeout: step.timeout,
                })
            })
            .collect::<Result<_, _>>()?;
        let heartbeat = spec
            .heartbeat
            .as_ref()
            .map(|hb| {
                Ok(AppHeartbeat {
                    send: compile("heartbeat.send".into(), &hb.send)?,
                    expect: matcher("heartbeat.expect".into(), &hb.expect)?,
                })
            })
            .transpose()?;
        let message = spec
            .message
            .as_ref()
            .map(|m| {
                Ok(MessagePlan {
                    send: compile("message.send".into(), &m.send)?,
                    ack: m
                        .ack
                        .as_ref()
                        .map(|a| {
                            Ok(Ack {
                                matcher: matcher("message.ack.match".into(), &a.matcher)?,
                                key: match (&a.id, &a.seq) {
                                    (Some(id), None) => AckKey::Id(id.clone()),
                                    (None, Some(seq)) => AckKey::Seq(seq.clone()),
                                    (None, None) => AckKey::Oldest,
                                    (Some(_), Some(_)) => {
                                        return Err(at("message.ack")(
                                            "give `id` or `seq` (or neither, for acks in order), not both"
                                                .into(),
                                        ));
                                    }
                                },
                            })
                        })
                        .transpose()?,
                    delivery: m
                        .delivery
                        .as_ref()
                        .map(|d| {
                            Ok(DeliveryPlan {
                                matcher: matcher("message.delivery.match".into(), &d.matcher)?,
                                sender: d.sender.clone(),
                                seq: d.seq.clone(),
                                ts: d.ts.clone(),
                            })
                        })
                        .transpose()?,
                })
            })
            .transpose()?;
        if spec.room_size == 0 {
            return Err(at("room_size")("must be at least 1".into()));
        }
        let replies = spec
            .replies
            .iter()
            .enumerate()
            .map(|(i, reply)| {
                let matcher = matcher(format!("replies[{i}].match"), &reply.matcher)?;
                // A reply may use the named captures of its regex, after the scenario's vars.
                let mut names = custom.clone();
                if let Matcher::Regex(regex) = &matcher {
                    names.extend(regex.capture_names().flatten().map(str::to_string));
                }
                let send = Template::compile(&reply.send, &names)
                    .map_err(at(format!("replies[{i}].send")))?;
                Ok(Reply { matcher, send })
            })
            .collect::<Result<Vec<_>, ScenarioError>>()?;
        let reading = reading::Reading::compile(heartbeat.as_ref(), message.as_ref(), &replies)
            .map_err(|problem| match problem.split_once(": ") {
                Some((field, problem)) => at(field)(problem.to_string()),
                None => at("message")(problem),
            })?;
        let codec = Codec::compile(&spec.codec, base_dir).map_err(at("codec"))?;
        let framing = match (spec.framing, codec.framing()) {
            (Some(_), Some(_)) => {
                return Err(at("framing")(
                    "this codec frames its own packets; leave `framing` out".into(),
                ));
            }
            (mine, theirs) => mine.or(theirs),
        };
        let scenario = Scenario {
            url,
            headers,
            user_id_column: credentials.columns.iter().position(|c| c == "user_id"),
            credentials,
            vars,
            login,
            heartbeat,
            message,
            reading,
            room_size: spec.room_size,
            codec,
            framing,
        };
        scenario.check_encoding(&replies)?;
        Ok(scenario)
    }

    /// Every send template, rendered for user 0 (captures of replies as `1`), must encode:
    /// a template the codec cannot encode is a config error, not a failure per user later.
    fn check_encoding(&self, replies: &[Reply]) -> Result<(), ScenarioError> {
        let identity = self.identity(0, self.room_size);
        let values = identity.values("ws://127.0.0.1/", 1, 1, 1);
        let check = |field: String, text: String| {
            self.codec
                .encode(text)
                .map(drop)
                .map_err(|err| at(field)(format!("the codec cannot encode it: {err}")))
        };
        for (i, step) in self.login.iter().enumerate() {
            if let Some(send) = &step.send {
                check(format!("login[{i}].send"), send.render(&values))?;
            }
        }
        if let Some(heartbeat) = &self.heartbeat {
            check("heartbeat.send".into(), heartbeat.send.render(&values))?;
        }
        if let Some(message) = &self.message {
            check("message.send".into(), message.send.render(&values))?;
        }
        for (i, reply) in replies.iter().enumerate() {
            let mut custom = identity.custom.clone();
            custom.resize(custom.len() + 16, "1".into());
            let values = Values {
                custom: &custom,
                ..identity.values("ws://127.0.0.1/", 1, 1, 1)
            };
            check(format!("replies[{i}].send"), reply.send.render(&values))?;
        }
        Ok(())
    }

    /// The identity of user number `user` when rooms hold `room_size` users.
    pub fn identity(&self, user: u32, room_size: u32) -> Identity {
        let mut identity = Identity {
            user,
            user_id: self.user_id(user),
            room: room_name(user, room_size),
            custom: self.credentials_row(user).cloned().unwrap_or_default(),
        };
        identity.custom.reserve(self.vars.len());
        // Each var reads only credential columns, which come first: the values rendered so far
        // can stay where they are (copying them for each var was quadratic, per connect).
        for var in &self.vars {
            let value = var.render(&identity.values("", 0, 0, 0));
            identity.custom.push(value);
        }
        identity
    }
}

impl Scenario {
    fn credentials_row(&self, user: u32) -> Option<&Vec<String>> {
        (!self.credentials.rows.is_empty())
            .then(|| &self.credentials.rows[user as usize % self.credentials.rows.len()])
    }

    /// The id user number `user` goes by (`{{user_id}}`): `u{user}`, or its credentials row's.
    pub fn user_id(&self, user: u32) -> String {
        match (self.credentials_row(user), self.user_id_column) {
            (Some(row), Some(col)) => row[col].clone(),
            _ => format!("u{user}"),
        }
    }
}

/// The users of user `user`'s room among the first `users` users.
pub fn room_range(user: u32, users: u32, room_size: u32) -> std::ops::Range<u32> {
    let room_size = room_size.max(1);
    let first = user / room_size * room_size;
    first..first.saturating_add(room_size).min(users.max(first))
}

/// The room of user `user` when rooms hold `room_size` users.
pub fn room_name(user: u32, room_size: u32) -> String {
    format!("room-{}", user / room_size.max(1))
}

/// Members of user `user`'s room among the first `users` users.
pub fn room_members(user: u32, users: u32, room_size: u32) -> u32 {
    let range = room_range(user, users, room_size);
    range.end - range.start
}

fn read_credentials(path: &Path) -> Result<Credentials, String> {
    let text = crate::files::read_text(path, crate::files::MAX_CREDENTIALS_BYTES)
        .map_err(|err| format!("cannot read `{}`: {err}", path.display()))?;
    let credentials = if path.extension().is_some_and(|e| e == "json") {
        credentials_from_json(&text)
    } else {
        credentials_from_csv(&text)
    }
    .map_err(|err| format!("`{}`: {err}", path.display()))?;
    if credentials.rows.is_empty() {
        return Err(format!("`{}` has no rows", path.display()));
    }
    Ok(credentials)
}

fn credentials_from_csv(text: &str) -> Result<Credentials, String> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let columns: Vec<String> = reader
        .headers()
        .map_err(|err| err.to_string())?
        .iter()
        .map(str::to_string)
        .collect();
    let rows = reader
        .records()
        .map(|r| {
            r.map(|r| r.iter().map(str::to_string).collect())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    Ok(Credentials { columns, rows })
}

fn credentials_from_json(text: &str) -> Result<Credentials, String> {
    let objects: Vec<BTreeMap<String, serde_json::Value>> =
        serde_json::from_str(text).map_err(|err| format!("expected an array of objects: {err}"))?;
    let columns: Vec<String> = objects
        .first()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let rows = objects
        .iter()
        .enumerate()
        .map(|(i, object)| {
            columns
                .iter()
                .map(|c| match object.get(c) {
                    Some(serde_json::Value::String(s)) => Ok(s.clone()),
                    Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                        Ok(v.to_string())
                    }
                    _ => Err(format!("row {i}: `{c}` missing or not a string/number")),
                })
                .collect()
        })
        .collect::<Result<_, _>>()?;
    Ok(Credentials { columns, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_compile() {
        for &builtin in Builtin::ALL {
            Scenario::compile(&builtin.spec(), Path::new(".")).expect("built-ins are valid");
        }
    }

    #[test]
    fn rooms_group_users() {
        let scenario = Scenario::compile(&Builtin::Im.spec(), Path::new(".")).expect("valid");
        assert_eq!(scenario.identity(0, 10).room, "room-0");
        assert_eq!(scenario.identity(19, 10).room, "room-1");
        assert_eq!(room_members(15, 100, 10), 10);
        assert_eq!(room_members(15, 13, 10), 3, "a partly filled last room");
    }

    #[test]
    fn credentials_and_vars_become_variables() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("users.csv"),
            "user_id,password\nalice,pw1\nbob,pw2\n",
        )
        .expect("write");
        let spec: ScenarioSpec = serde_norway::from_str(
            "credentials: users.csv\nvars: {token: 'tok-{{user_id}}-{{password}}'}\nlogin:\n  - send: '{{user_id}}:{{token}}'\n",
        )
        .expect("parses");
        let scenario = Scenario::compile(&spec, dir.path()).expect("valid");
        let bob = scenario.identity(3, 10);
        assert_eq!(bob.user_id, "bob");
        let send = scenario.login[0].send.as_ref().expect("has send");
        assert_eq!(send.render(&bob.values("", 0, 0, 0)), "bob:tok-bob-pw2");
    }

    #[test]
    fn an_extended_builtin_keeps_what_is_not_given_and_yields_vars_to_columns() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("users.csv"), "user_id,token\nalice,t-a\n").expect("write");
        let choice: ScenarioChoice = serde_norway::from_str(
            "{extends: socketio, credentials: users.csv, vars: {event: message}, room_size: 4}",
        )
        .expect("parses");
        let spec = choice.spec();
        assert_eq!(spec.replies, Builtin::Socketio.spec().replies, "kept");
        let scenario = Scenario::compile(&spec, dir.path()).expect("the token column wins");
        let alice = scenario.identity(0, 4);
        let send = scenario.login[1].send.as_ref().expect("CONNECT");
        assert_eq!(
            send.render(&alice.values("", 0, 0, 0)),
            r#"40{"token":"t-a"}"#
        );
        let message = scenario.message.as_ref().expect("messages");
        assert!(
            message
                .send
                .render(&alice.values("", 1, 0, 0))
                .contains(r#"["message","#),
            "the event var was replaced"
        );
        let unknown: ScenarioChoice = serde_norway::from_str("{extends: chat}").expect("parses");
        let err = Scenario::compile(&unknown.spec(), Path::new(".")).expect_err("no such built-in");
        assert!(err.to_string().contains("scenario.extends"), "{err}");
    }

    #[test]
    fn mistakes_name_their_place() {
        let err = |yaml: &str| {
            let spec: ScenarioSpec = serde_norway::from_str(yaml).expect("parses");
            Scenario::compile(&spec, Path::new("."))
                .expect_err("rejected")
                .to_string()
        };
        assert!(err("login: [{send: '{{who}}'}]").contains("scenario.login[0].send"));
        assert!(
            err("message: {send: x, ack: {match: {pointer: type}, id: /id}}")
                .contains("scenario.message.ack.match")
        );
        assert!(err("credentials: /nonexistent.csv").contains("scenario.credentials"));
        assert!(err("room_size: 0").contains("scenario.room_size"));
        assert!(err("headers: {'bad header': x}").contains("scenario.headers.bad header"));
    }
}
