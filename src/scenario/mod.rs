//! Scenarios: what a user says and expects, for any server's JSON protocol, as data.
//!
//! A [`ScenarioSpec`] comes from the config (or is a built-in kept as YAML under `builtin/`;
//! [`spec`]); [`Scenario::compile`] turns it, once, into templates and matchers (`compile`,
//! with the users' credential rows from `credentials`). This module holds the compiled
//! scenario, who each user is in it ([`Identity`]) and how users are dealt into rooms.

mod compile;
mod credentials;
pub mod json;
pub mod matcher;
pub mod reading;
mod spec;
pub mod template;
pub mod tokens;
pub mod tracking;

use credentials::Credentials;
pub use spec::*;

use std::time::Duration;

use crate::codec::Codec;
use crate::codec::framing::Framing;
use crate::topology::{Rooms, Topology};
use matcher::{Matcher, MatcherSpec};
use template::{Template, Values};

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
    /// `None`: one-way, any frame answers it.
    pub expect: Option<Matcher>,
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
    /// Where the server's cursor is (`{{last_seen.cursor}}`); "" reads none.
    pub cursor: String,
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

/// The HTTP request a frame is sent in to an SSE target: the frame is its body.
#[derive(Debug, Clone)]
pub struct Publish {
    pub url: Template,
    pub method: http::Method,
    pub headers: Vec<(String, Template)>,
}

/// A compiled scenario, shared read-only by every user.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub url: Option<Template>,
    pub headers: Vec<(String, Template)>,
    /// How frames are sent to a Server-Sent Events target (`scenario.publish`).
    pub publish: Option<Publish>,
    credentials: Credentials,
    user_id_column: Option<usize>,
    /// Templates of `vars`, rendered per user after the credential columns.
    vars: Vec<Template>,
    /// The order to render `vars` in: each after the vars it uses.
    var_order: Vec<usize>,
    /// Tokens minted per connection, after the vars.
    tokens: Vec<tokens::Token>,
    /// Fresh tokens while connected.
    pub refresh: Option<tokens::Refresh>,
    /// The per-user values matchers compare fields with (`equals: "{{user_id}}"`).
    mine: Vec<Template>,
    pub login: Vec<Step>,
    pub heartbeat: Option<AppHeartbeat>,
    pub message: Option<MessagePlan>,
    /// The receive side: what each frame means, read in one walk.
    pub reading: reading::Reading,
    pub room_size: u32,
    /// Where rooms come from; with the live `room_size`, the [`Topology`].
    pub rooms: Rooms,
    /// What frames mean, in bytes.
    pub codec: Codec,
    /// How frames are cut from a byte stream: the scenario's, or its codec's own.
    pub framing: Option<Framing>,
    /// In a fleet of several groups, the group this scenario's users belong to: their ids
    /// and rooms carry its name, their numbers start at its own base ([`Scenario::set_group`]).
    group: Option<GroupNames>,
}

/// How the users of one group of several are named.
#[derive(Debug, Clone)]
struct GroupNames {
    prefix: String,
    base: u32,
}

/// Users a group may number before the next group's numbers start (above
/// [`crate::load::MAX_USERS`], so groups never share a number).
const GROUP_NUMBERS: u32 = 1 << 24;

/// Who a user is, for rendering its templates; made once per connection, its strings held at
/// their exact length (every connected user holds one).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub user: u32,
    pub user_id: Box<str>,
    /// Its rooms, layer by layer ([`Topology`]): `{{room}}` is the first, except in a message
    /// (the room it goes to) and in a login step that joins each. The first apart, so a user
    /// in one room holds no list.
    room: Box<str>,
    more_rooms: Box<[Box<str>]>,
    pub custom: Box<[String]>,
    /// The cursor of the last delivery received (`{{last_seen.cursor}}`), carried from one
    /// connection to the next; none before one (and when the delivery rule reads none). Boxed:
    /// one pointer in every connection, most of which never read a cursor (a `String` would
    /// be three).
    #[allow(clippy::box_collection)]
    pub last_seen: Option<Box<String>>,
}

impl Identity {
    /// A user of `rooms` (the first is the room of its templates outside messages).
    pub fn new(user: u32, user_id: String, rooms: Vec<String>, custom: Vec<String>) -> Identity {
        let mut rooms = rooms.into_iter().map(String::into_boxed_str);
        Identity {
            user,
            user_id: user_id.into_boxed_str(),
            room: rooms.next().unwrap_or_default(),
            more_rooms: rooms.collect(),
            custom: custom.into_boxed_slice(),
            last_seen: None,
        }
    }

    /// Its room in layer `layer` ("" past its last).
    pub fn room(&self, layer: usize) -> &str {
        match layer {
            0 => &self.room,
            _ => self.more_rooms.get(layer - 1).map_or("", |room| room),
        }
    }

    /// Its rooms, layer by layer.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&*self.room).chain(self.more_rooms.iter().map(|room| &**room))
    }

    /// How many rooms it is in.
    pub fn room_count(&self) -> usize {
        1 + self.more_rooms.len()
    }

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
            last_seen: self.last_seen.as_deref().map_or("", String::as_str),
            seq,
            ts,
            payload_size,
        }
    }
}

impl Scenario {
    /// Makes this the scenario of group `name`, number `index` of several: its users go by
    /// `NAME-u3` in rooms `NAME-room-0`, and `{{user}}` numbers them from `index` × 2^24, so
    /// no two groups share an id, a room or a number (an MQTT client id, say).
    pub fn set_group(&mut self, name: &str, index: usize) {
        self.group = Some(GroupNames {
            prefix: format!("{name}-"),
            base: u32::try_from(index)
                .unwrap_or(0)
                .saturating_mul(GROUP_NUMBERS),
        });
    }

    /// The values `identity`'s matchers compare with (empty for most scenarios: no
    /// allocation).
    pub fn mine_of(&self, identity: &Identity) -> Box<[String]> {
        let values = identity.values("", 0, 0, 0);
        self.mine.iter().map(|t| t.render(&values)).collect()
    }

    /// Mints `identity`'s tokens afresh (at each connect, and at each refresh). A token whose
    /// claims cannot be made is left empty: the server refuses it, and the login failure
    /// says why.
    pub fn mint_tokens(&self, identity: &mut Identity) {
        for token in &self.tokens {
            let minted = token
                .mint(&identity.values("", 0, 0, 0))
                .unwrap_or_default();
            identity.custom[token.slot] = minted;
        }
    }

    /// How this scenario's users are laid out into rooms of `room_size` (the live value).
    pub fn topology(&self, room_size: u32) -> Topology {
        self.rooms.topology(room_size)
    }

    /// The identity of user number `user` (of its group, fleet-wide) in `topology`.
    pub fn identity(&self, user: u32, topology: Topology) -> Identity {
        let base = self.group.as_ref().map_or(0, |group| group.base);
        // After the credential columns, each var, then each token (a value not rendered yet
        // is empty, as one past the end is).
        let mut custom = self.credentials_row(user).cloned().unwrap_or_default();
        let first_var = custom.len();
        custom.resize(
            first_var + self.vars.len() + self.tokens.len(),
            String::new(),
        );
        let mut identity = Identity::new(
            base.saturating_add(user),
            self.user_id(user),
            self.rooms_of(user, topology),
            custom,
        );
        // In an order that renders what each uses first.
        for &var in &self.var_order {
            let value = self.vars[var].render(&identity.values("", 0, 0, 0));
            identity.custom[first_var + var] = value;
        }
        self.mint_tokens(&mut identity);
        identity
    }
}

impl Scenario {
    fn credentials_row(&self, user: u32) -> Option<&Vec<String>> {
        (!self.credentials.rows.is_empty())
            .then(|| &self.credentials.rows[user as usize % self.credentials.rows.len()])
    }

    /// The rooms of user number `user` (fleet-wide), layer by layer: `room-N` (`NAME-room-N`
    /// in group NAME of several).
    pub fn rooms_of(&self, user: u32, topology: Topology) -> Vec<String> {
        let prefix = self
            .group
            .as_ref()
            .map_or("", |group| group.prefix.as_str());
        (0..topology.rooms_per_user())
            .map(|layer| format!("{prefix}room-{}", topology.room(user, layer)))
            .collect()
    }

    /// The id user number `user` goes by (`{{user_id}}`): `u{user}` (`NAME-u{user}` in
    /// group NAME of several), or its credentials row's.
    pub fn user_id(&self, user: u32) -> String {
        match (self.credentials_row(user), self.user_id_column, &self.group) {
            (Some(row), Some(col), _) => row[col].clone(),
            (_, _, Some(group)) => format!("{}u{user}", group.prefix),
            _ => format!("u{user}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn builtins_compile() {
        for &builtin in Builtin::ALL {
            Scenario::compile(&builtin.spec(), Path::new(".")).expect("built-ins are valid");
        }
    }

    #[test]
    fn rooms_group_users() {
        let scenario = Scenario::compile(&Builtin::Im.spec(), Path::new(".")).expect("valid");
        assert_eq!(
            scenario
                .identity(0, scenario.topology(10))
                .rooms()
                .collect::<Vec<_>>(),
            ["room-0"]
        );
        assert_eq!(
            scenario
                .identity(19, scenario.topology(10))
                .rooms()
                .collect::<Vec<_>>(),
            ["room-1"]
        );
        assert_eq!(scenario.topology(10).room_members(15, 0, 100), 10);
        assert_eq!(
            scenario.topology(10).room_members(15, 0, 13),
            3,
            "a partly filled last room"
        );
        let mut spec = Builtin::Im.spec();
        spec.rooms_per_user = 3;
        let three = Scenario::compile(&spec, Path::new(".")).expect("valid");
        let identity = three.identity(31, three.topology(10));
        let rooms: Vec<&str> = identity.rooms().collect();
        assert_eq!(rooms.len(), 3);
        assert_eq!(
            rooms[0], "room-9",
            "block 1 (users 30..60) holds rooms 9..18"
        );
        spec.rooms_per_user = 17;
        let err = Scenario::compile(&spec, Path::new("."))
            .expect_err("17 rooms")
            .to_string();
        assert!(
            err.contains("rooms_per_user") && err.contains("17"),
            "{err}"
        );
    }

    #[test]
    fn vars_use_one_another_in_any_order_but_not_in_a_circle() {
        let choice: ScenarioChoice = serde_norway::from_str(
            "{extends: socketio, vars: {auth: '{\"user\":\"{{user_id}}\",\"token\":\"{{token}}\"}', token: 't-{{zz}}', zz: '{{user}}'}}",
        )
        .expect("parses");
        let scenario = Scenario::compile(&choice.spec(), Path::new(".")).expect("valid");
        let identity = scenario.identity(7, scenario.topology(10));
        let connect = scenario.login[1]
            .send
            .as_ref()
            .expect("CONNECT")
            .render(&identity.values("", 0, 0, 0));
        assert_eq!(connect, r#"40{"user":"u7","token":"t-7"}"#);
        let circle: ScenarioSpec =
            serde_norway::from_str("{vars: {a: '{{b}}', b: 'x{{c}}', c: '{{a}}'}}")
                .expect("parses");
        let err = Scenario::compile(&circle, Path::new("."))
            .expect_err("a circle")
            .to_string();
        assert!(
            err.contains("circle") && err.contains("a -> b -> c -> a"),
            "{err}"
        );
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
        let bob = scenario.identity(3, scenario.topology(10));
        assert_eq!(&*bob.user_id, "bob");
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
        let alice = scenario.identity(0, scenario.topology(4));
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
